// Elementwise ops; twins of src/cpu/elementwise.rs and src/cpu/swiglu.rs.
#include "common.cuh"

extern "C" __global__ void fill_f32(float* y, float v, unsigned long long n) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x)
        y[i] = v;
}

// y += alpha * x
extern "C" __global__ void axpy_f32(float* y, float alpha, const float* x, unsigned long long n) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x)
        y[i] += alpha * x[i];
}

extern "C" __global__ void scale_f32(float* y, float alpha, unsigned long long n) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x)
        y[i] *= alpha;
}

// y (rows, c) += bias (c)
extern "C" __global__ void add_bias_f32(float* y, const float* bias, unsigned long long n, unsigned int c) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x)
        y[i] += bias[i % c];
}

// out[0] += sum of x^2, each block's partial sum added in double.
extern "C" __global__ void sum_squares_f32(double* out, const float* x, unsigned long long n) {
    __shared__ float scratch[32];
    float acc = 0.0f;
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x)
        acc += x[i] * x[i];
    acc = block_sum(acc, scratch);
    if (threadIdx.x == 0) atomicAdd(out, (double)acc);
}

// splitmix64 of (seed, index): the same hash as cpu::elementwise::dropout_hash.
__device__ __forceinline__ unsigned long long dropout_hash(unsigned long long seed, unsigned long long index) {
    unsigned long long z = (seed ^ (index * 0x9E3779B97F4A7C15ull)) + 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// y = x * keep / (1 - p), keep iff the top 24 bits of the hash, times 2^-24, are >= p.
extern "C" __global__ void dropout_f32(float* y, const float* x, float p, unsigned long long seed, unsigned long long n) {
    const float scale = 1.0f / (1.0f - p);
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        const float u = (float)(dropout_hash(seed, i) >> 40) * (1.0f / 16777216.0f);
        y[i] = u >= p ? x[i] * scale : 0.0f;
    }
}

// h = silu(g) * u
extern "C" __global__ void swiglu_forward_f32(float* h, const float* g, const float* u, unsigned long long n) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        const float s = 1.0f / (1.0f + expf(-g[i]));
        h[i] = g[i] * s * u[i];
    }
}

// dgate = dh * u * s * (1 + g (1 - s)), dup = dh * g * s
extern "C" __global__ void swiglu_backward_f32(float* dg, float* du, const float* dh, const float* g, const float* u,
                                               unsigned long long n) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        const float s = 1.0f / (1.0f + expf(-g[i]));
        dg[i] = dh[i] * u[i] * s * (1.0f + g[i] * (1.0f - s));
        du[i] = dh[i] * g[i] * s;
    }
}

// One AdamW step with the scalars computed on the host exactly as cpu::adamw does:
// p *= decay; m = lerp(m, g, w1); v = v b2 + (1 - b2) g^2; p += neg_step * m / (sqrt(v)/bc2_sqrt + eps)
extern "C" __global__ void adamw_f32(float* p, const float* g, float* m, float* v, float decay, float w1, float b2,
                                     float one_minus_b2, float neg_step, float bc2_sqrt, float eps, int apply_decay,
                                     unsigned long long n) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        float pi = p[i];
        const float gi = g[i];
        if (apply_decay) pi *= decay;
        float mi = m[i];
        mi = fabsf(w1) < 0.5f ? mi + w1 * (gi - mi) : gi - (gi - mi) * (1.0f - w1);
        float vi = v[i] * b2;
        vi += one_minus_b2 * gi * gi;
        const float denom = sqrtf(vi) / bc2_sqrt + eps;
        pi += neg_step * mi / denom;
        p[i] = pi;
        m[i] = mi;
        v[i] = vi;
    }
}
