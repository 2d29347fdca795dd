// The per-row half of the fused LM head + cross-entropy (the GEMMs go to cuBLAS); twin of
// src/cpu/cross_entropy.rs. One block per token of the chunk. Logits are f32 whatever the
// storage type; dlogits are written in the storage type of the next GEMM's operands.
#include "common.cuh"

// logits (rows, V) in, loss (rows) out; with write_grad, dlogits (rows, V) =
// (softmax - onehot(target)) * grad_scale (0 for an ignored target). dlogits may alias logits.
// softcap > 0 (Gemma 2's final_logit_softcapping): each logit is first replaced by
// cap * tanh(logit / cap) in place, and dlogits carry the cap's derivative 1 - tanh^2.
template <typename TG>
__device__ void cross_entropy_rows(float* logits, TG* dlogits, float* loss, const int* targets, unsigned int V,
                                   float grad_scale, int write_grad, float softcap) {
    __shared__ float scratch[32];
    __shared__ float target_logit;
    const unsigned long long row = blockIdx.x;
    float* lr = logits + row * V;
    const int target = targets[row];
    if (softcap > 0.0f) {
        for (unsigned int j = threadIdx.x; j < V; j += blockDim.x) lr[j] = softcap * tanhf(lr[j] / softcap);
        __syncthreads();
    }
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
    TG* dr = dlogits + row * V;
    for (unsigned int j = threadIdx.x; j < V; j += blockDim.x) {
        float p = target >= 0 ? (expf(lr[j] - lse) - ((int)j == target ? 1.0f : 0.0f)) * grad_scale : 0.0f;
        if (softcap > 0.0f) {
            const float t = lr[j] / softcap;
            p *= 1.0f - t * t;
        }
        dr[j] = from_f32<TG>(p);
    }
}

#define CROSS_ENTROPY(sfx, T)                                                                                 \
    extern "C" __global__ void cross_entropy_rows_##sfx(float* logits, T* dlogits, float* loss,                 \
                                                        const int* targets, unsigned int V, float grad_scale,  \
                                                        int write_grad, float softcap) {                       \
        cross_entropy_rows<T>(logits, dlogits, loss, targets, V, grad_scale, write_grad, softcap);             \
    }
STORAGE_TYPES(CROSS_ENTROPY)
