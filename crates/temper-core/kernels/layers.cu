// Embedding, RMSNorm and RoPE; twins of src/cpu/{embedding,rmsnorm,rope}.rs. Each entry point
// exists once per storage type of the activations and weights; rstd and the RoPE tables are f32.
#include "common.cuh"

// out (n, c) = table[ids] (V, c); ids were checked on the host.
template <typename T>
__device__ void embedding_forward(T* out, const unsigned int* ids, const T* table, unsigned int n, unsigned int c) {
    const unsigned int row = blockIdx.x;
    if (row >= n) return;
    const T* src = table + (unsigned long long)ids[row] * c;
    T* dst = out + (unsigned long long)row * c;
    for (unsigned int j = threadIdx.x; j < c; j += blockDim.x) dst[j] = src[j];
}

// One block per row: rstd = 1/sqrt(mean(x^2) + eps); y = x * rstd * w. Rows of a multiple of
// eight values go eight at a time.
template <typename T>
__device__ void rmsnorm_forward(T* y, float* rstd, const T* x, const T* w, unsigned int c, float eps) {
    __shared__ float scratch[32];
    const unsigned long long row = blockIdx.x;
    const T* xr = x + row * c;
    T* yr = y + row * c;
    const bool vec = c % 8 == 0;
    float acc = 0.0f;
    if (vec) {
        for (unsigned int j = 8 * threadIdx.x; j < c; j += 8 * blockDim.x) {
            float v[8];
            load8(xr + j, v);
            for (int k = 0; k < 8; ++k) acc += v[k] * v[k];
        }
    } else {
        for (unsigned int j = threadIdx.x; j < c; j += blockDim.x) {
            const float v = to_f32(xr[j]);
            acc += v * v;
        }
    }
    acc = block_sum(acc, scratch);
    const float r = rsqrtf(acc / (float)c + eps);
    if (threadIdx.x == 0) rstd[row] = r;
    if (vec) {
        for (unsigned int j = 8 * threadIdx.x; j < c; j += 8 * blockDim.x) {
            float v[8], wv[8];
            load8(xr + j, v);
            load8(w + j, wv);
            for (int k = 0; k < 8; ++k) v[k] = v[k] * r * wv[k];
            store8(yr + j, v);
        }
    } else {
        for (unsigned int j = threadIdx.x; j < c; j += blockDim.x)
            yr[j] = from_f32<T>(to_f32(xr[j]) * r * to_f32(w[j]));
    }
}

// dx = rstd * (dy*w) - x * rstd^3 * mean(dy*w*x)
template <typename T>
__device__ void rmsnorm_backward(T* dx, const T* dy, const T* x, const T* w, const float* rstd, unsigned int c) {
    __shared__ float scratch[32];
    const unsigned long long row = blockIdx.x;
    const T* xr = x + row * c;
    const T* dyr = dy + row * c;
    T* dxr = dx + row * c;
    const bool vec = c % 8 == 0;
    float acc = 0.0f;
    if (vec) {
        for (unsigned int j = 8 * threadIdx.x; j < c; j += 8 * blockDim.x) {
            float xv[8], dyv[8], wv[8];
            load8(xr + j, xv);
            load8(dyr + j, dyv);
            load8(w + j, wv);
            for (int k = 0; k < 8; ++k) acc += dyv[k] * wv[k] * xv[k];
        }
    } else {
        for (unsigned int j = threadIdx.x; j < c; j += blockDim.x)
            acc += to_f32(dyr[j]) * to_f32(w[j]) * to_f32(xr[j]);
    }
    acc = block_sum(acc, scratch);
    const float r = rstd[row];
    const float coef = r * r * r * acc / (float)c;
    if (vec) {
        for (unsigned int j = 8 * threadIdx.x; j < c; j += 8 * blockDim.x) {
            float xv[8], dyv[8], wv[8];
            load8(xr + j, xv);
            load8(dyr + j, dyv);
            load8(w + j, wv);
            for (int k = 0; k < 8; ++k) xv[k] = r * dyv[k] * wv[k] - xv[k] * coef;
            store8(dxr + j, xv);
        }
    } else {
        for (unsigned int j = threadIdx.x; j < c; j += blockDim.x)
            dxr[j] = from_f32<T>(r * to_f32(dyr[j]) * to_f32(w[j]) - to_f32(xr[j]) * coef);
    }
}

// x (n, h, d) rotated in place, rotate_half layout; cos/sin (P, d/2); sign -1 applies the inverse.
// Each thread rotates eight pairs when rot/2 is a multiple of eight, one pair otherwise.
__device__ __forceinline__ void rotate(float* x1, float* x2, float c, float s) {
    const float a = *x1, b = *x2;
    *x1 = a * c - b * s;
    *x2 = b * c + a * s;
}
// RoPE over the first `rot` values of each head of d (cos, sin tables (P, rot/2)); the
// other d - rot values pass through (a partial rotary factor; rot == d rotates all).
template <typename T>
__device__ void rope(T* x, const unsigned int* pos, const float* cos_t, const float* sin_t, unsigned int n,
                     unsigned int h, unsigned int d, unsigned int rot, float sign) {
    const unsigned int half = rot / 2;
    if (half % 8 == 0) {
        const unsigned int groups = half / 8;
        const unsigned long long total = (unsigned long long)n * h * groups;
        GRID_STRIDE(i, total) {
            const unsigned int k = (i % groups) * 8;
            const unsigned long long th = i / groups;  // token * h + head
            const unsigned int t = th / h;
            T* row = x + th * d;
            const unsigned long long at = (unsigned long long)pos[t] * half + k;
            float c[8], s[8], x1[8], x2[8];
            load8(cos_t + at, c);
            load8(sin_t + at, s);
            load8(row + k, x1);
            load8(row + k + half, x2);
            for (int j = 0; j < 8; ++j) rotate(&x1[j], &x2[j], c[j], sign * s[j]);
            store8(row + k, x1);
            store8(row + k + half, x2);
        }
        return;
    }
    const unsigned long long total = (unsigned long long)n * h * half;
    GRID_STRIDE(i, total) {
        const unsigned int k = i % half;
        const unsigned long long th = i / half;  // token * h + head
        const unsigned int t = th / h;
        const unsigned long long base = th * d;
        const float c = cos_t[(unsigned long long)pos[t] * half + k];
        const float s = sign * sin_t[(unsigned long long)pos[t] * half + k];
        float x1 = to_f32(x[base + k]), x2 = to_f32(x[base + k + half]);
        rotate(&x1, &x2, c, s);
        x[base + k] = from_f32<T>(x1);
        x[base + k + half] = from_f32<T>(x2);
    }
}

#define LAYERS(sfx, T)                                                                                           \
    extern "C" __global__ void embedding_forward_##sfx(T* out, const unsigned int* ids, const T* table,            \
                                                       unsigned int n, unsigned int c) {                         \
        embedding_forward<T>(out, ids, table, n, c);                                                             \
    }                                                                                                            \
    extern "C" __global__ void rmsnorm_forward_##sfx(T* y, float* rstd, const T* x, const T* w, unsigned int c,    \
                                                     float eps) {                                                \
        rmsnorm_forward<T>(y, rstd, x, w, c, eps);                                                               \
    }                                                                                                            \
    extern "C" __global__ void rmsnorm_backward_##sfx(T* dx, const T* dy, const T* x, const T* w,                 \
                                                      const float* rstd, unsigned int c) {                       \
        rmsnorm_backward<T>(dx, dy, x, w, rstd, c);                                                              \
    }                                                                                                            \
    extern "C" __global__ void rope_##sfx(T* x, const unsigned int* pos, const float* cos_t, const float* sin_t,   \
                                          unsigned int n, unsigned int h, unsigned int d, unsigned int rot,      \
                                          float sign) {                                                          \
        rope<T>(x, pos, cos_t, sin_t, n, h, d, rot, sign);                                                       \
    }
STORAGE_TYPES(LAYERS)
