// The per-row half of the fused LM head + cross-entropy (the GEMMs go to cuBLAS); twin of
// src/cpu/cross_entropy.rs. One block per token of the chunk.
#include "common.cuh"

// logits (rows, V) in, loss (rows) out; with write_grad, logits are overwritten by
// dlogits = (softmax - onehot(target)) * grad_scale (0 for an ignored target).
extern "C" __global__ void cross_entropy_rows_f32(float* logits, float* loss, const int* targets, unsigned int V,
                                                  float grad_scale, int write_grad) {
    __shared__ float scratch[32];
    __shared__ float target_logit;
    const unsigned long long row = blockIdx.x;
    float* lr = logits + row * V;
    const int target = targets[row];
    float m = -INFINITY;
    for (unsigned int j = threadIdx.x; j < V; j += blockDim.x) m = fmaxf(m, lr[j]);
    m = block_max(m, scratch);
    float s = 0.0f;
    for (unsigned int j = threadIdx.x; j < V; j += blockDim.x) s += expf(lr[j] - m);
    s = block_sum(s, scratch);
    const float lse = m + logf(s);
    if (threadIdx.x == 0) target_logit = target >= 0 ? lr[target] : 0.0f;
    __syncthreads();
    if (threadIdx.x == 0) loss[row] = target >= 0 ? lse - target_logit : 0.0f;
    if (!write_grad) return;
    for (unsigned int j = threadIdx.x; j < V; j += blockDim.x) {
        const float p = target >= 0 ? (expf(lr[j] - lse) - ((int)j == target ? 1.0f : 0.0f)) * grad_scale : 0.0f;
        lr[j] = p;
    }
}
