// Embedding, RMSNorm and RoPE; twins of src/cpu/{embedding,rmsnorm,rope}.rs.
#include "common.cuh"

// out (n, c) = table[ids] (V, c); ids were checked on the host.
extern "C" __global__ void embedding_forward_f32(float* out, const unsigned int* ids, const float* table,
                                                 unsigned int n, unsigned int c) {
    const unsigned int row = blockIdx.x;
    if (row >= n) return;
    const float* src = table + (unsigned long long)ids[row] * c;
    float* dst = out + (unsigned long long)row * c;
    for (unsigned int j = threadIdx.x; j < c; j += blockDim.x) dst[j] = src[j];
}

// One block per row: rstd = 1/sqrt(mean(x^2) + eps); y = x * rstd * w.
extern "C" __global__ void rmsnorm_forward_f32(float* y, float* rstd, const float* x, const float* w,
                                               unsigned int c, float eps) {
    __shared__ float scratch[32];
    const unsigned long long row = blockIdx.x;
    const float* xr = x + row * c;
    float acc = 0.0f;
    for (unsigned int j = threadIdx.x; j < c; j += blockDim.x) acc += xr[j] * xr[j];
    acc = block_sum(acc, scratch);
    const float r = rsqrtf(acc / (float)c + eps);
    if (threadIdx.x == 0) rstd[row] = r;
    float* yr = y + row * c;
    for (unsigned int j = threadIdx.x; j < c; j += blockDim.x) yr[j] = xr[j] * r * w[j];
}

// dx = rstd * (dy*w) - x * rstd^3 * mean(dy*w*x)
extern "C" __global__ void rmsnorm_backward_f32(float* dx, const float* dy, const float* x, const float* w,
                                                const float* rstd, unsigned int c) {
    __shared__ float scratch[32];
    const unsigned long long row = blockIdx.x;
    const float* xr = x + row * c;
    const float* dyr = dy + row * c;
    float acc = 0.0f;
    for (unsigned int j = threadIdx.x; j < c; j += blockDim.x) acc += dyr[j] * w[j] * xr[j];
    acc = block_sum(acc, scratch);
    const float r = rstd[row];
    const float coef = r * r * r * acc / (float)c;
    float* dxr = dx + row * c;
    for (unsigned int j = threadIdx.x; j < c; j += blockDim.x) dxr[j] = r * dyr[j] * w[j] - xr[j] * coef;
}

// x (n, h, d) rotated in place, rotate_half layout; cos/sin (P, d/2); sign -1 applies the inverse.
extern "C" __global__ void rope_f32(float* x, const unsigned int* pos, const float* cos_t, const float* sin_t,
                                    unsigned int n, unsigned int h, unsigned int d, float sign) {
    const unsigned int half = d / 2;
    const unsigned long long total = (unsigned long long)n * h * half;
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < total;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        const unsigned int k = i % half;
        const unsigned long long th = i / half;  // token * h + head
        const unsigned int t = th / h;
        const unsigned long long base = th * d;
        const float c = cos_t[(unsigned long long)pos[t] * half + k];
        const float s = sign * sin_t[(unsigned long long)pos[t] * half + k];
        const float x1 = x[base + k], x2 = x[base + k + half];
        x[base + k] = x1 * c - x2 * s;
        x[base + k + half] = x2 * c + x1 * s;
    }
}
