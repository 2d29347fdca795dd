// Elementwise ops; twins of src/cpu/elementwise.rs and src/cpu/swiglu.rs. Each entry point
// exists once per storage type (suffix _f32, _bf16, _f16); the math is f32.
#include "common.cuh"

template <typename T>
__device__ void fill(T* y, float v, unsigned long long n) {
    const T tv = from_f32<T>(v);
    GRID_STRIDE(i, n) y[i] = tv;
}

// y += alpha * x
template <typename T>
__device__ void axpy(T* y, float alpha, const T* x, unsigned long long n) {
    GRID_STRIDE8(i, n) {
        float a[8], b[8];
        load8(y + i, a);
        load8(x + i, b);
        for (int k = 0; k < 8; ++k) a[k] = a[k] + alpha * b[k];
        store8(y + i, a);
    }
    TAIL8(i, n) y[i] = from_f32<T>(to_f32(y[i]) + alpha * to_f32(x[i]));
}

template <typename T>
__device__ void scale(T* y, float alpha, unsigned long long n) {
    GRID_STRIDE8(i, n) {
        float a[8];
        load8(y + i, a);
        for (int k = 0; k < 8; ++k) a[k] = a[k] * alpha;
        store8(y + i, a);
    }
    TAIL8(i, n) y[i] = from_f32<T>(to_f32(y[i]) * alpha);
}

// y (rows, c) += bias (c)
template <typename T>
__device__ void add_bias(T* y, const T* bias, unsigned long long n, unsigned int c) {
    GRID_STRIDE(i, n) y[i] = from_f32<T>(to_f32(y[i]) + to_f32(bias[i % c]));
}

// out[0] += sum of x^2, each block's partial sum added in double.
template <typename T>
__device__ void sum_squares(double* out, const T* x, unsigned long long n) {
    __shared__ float scratch[32];
    float acc = 0.0f;
    GRID_STRIDE(i, n) {
        const float v = to_f32(x[i]);
        acc += v * v;
    }
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
template <typename T>
__device__ void dropout(T* y, const T* x, float p, unsigned long long seed, unsigned long long n) {
    const float s = 1.0f / (1.0f - p);
    GRID_STRIDE(i, n) {
        const float u = (float)(dropout_hash(seed, i) >> 40) * (1.0f / 16777216.0f);
        y[i] = from_f32<T>(u >= p ? to_f32(x[i]) * s : 0.0f);
    }
}

// The gated activations h = act(g) * u: SwiGLU (act = silu; twin of src/cpu/swiglu.rs) and
// GeGLU (act = gelu_tanh, g/2 (1 + tanh(sqrt(2/pi) (g + 0.044715 g^3))); twin of
// src/cpu/geglu.rs). Each act gives its value and its slope.
struct Silu {
    static __device__ __forceinline__ float value(float g, float* slope) {
        const float s = 1.0f / (1.0f + expf(-g));
        *slope = s * (1.0f + g * (1.0f - s));
        return g * s;
    }
};
struct GeluTanh {
    static __device__ __forceinline__ float value(float g, float* slope) {
        const float k = 0.7978845608028654f, c = 0.044715f;
        const float t = tanhf(k * (g + c * g * g * g));
        *slope = 0.5f * (1.0f + t) + 0.5f * g * (1.0f - t * t) * k * (1.0f + 3.0f * c * g * g);
        return 0.5f * g * (1.0f + t);
    }
};

// dgate = dh * u * act'(g), dup = dh * act(g)
template <typename Act>
__device__ __forceinline__ void gated_grad(float g, float u, float dh, float* dg, float* du) {
    float slope;
    const float a = Act::value(g, &slope);
    *dg = dh * u * slope;
    *du = dh * a;
}
template <typename T, typename Act>
__device__ void gated_forward(T* h, const T* g, const T* u, unsigned long long n) {
    float slope;
    GRID_STRIDE8(i, n) {
        float gv[8], uv[8];
        load8(g + i, gv);
        load8(u + i, uv);
        for (int k = 0; k < 8; ++k) gv[k] = Act::value(gv[k], &slope) * uv[k];
        store8(h + i, gv);
    }
    TAIL8(i, n) h[i] = from_f32<T>(Act::value(to_f32(g[i]), &slope) * to_f32(u[i]));
}
template <typename T, typename Act>
__device__ void gated_backward(T* dg, T* du, const T* dh, const T* g, const T* u, unsigned long long n) {
    GRID_STRIDE8(i, n) {
        float gv[8], uv[8], dhv[8], dgv[8], duv[8];
        load8(g + i, gv);
        load8(u + i, uv);
        load8(dh + i, dhv);
        for (int k = 0; k < 8; ++k) gated_grad<Act>(gv[k], uv[k], dhv[k], &dgv[k], &duv[k]);
        store8(dg + i, dgv);
        store8(du + i, duv);
    }
    TAIL8(i, n) {
        float a, b;
        gated_grad<Act>(to_f32(g[i]), to_f32(u[i]), to_f32(dh[i]), &a, &b);
        dg[i] = from_f32<T>(a);
        du[i] = from_f32<T>(b);
    }
}

// dst[r, dst_off + c] = src[r, src_off + c] for r < rows, c < width; twin of
// src/cpu/columns.rs (a fused projection's column blocks).
template <typename T>
__device__ void copy_columns(T* dst, unsigned int dst_cols, unsigned int dst_off, const T* src, unsigned int src_cols,
                             unsigned int src_off, unsigned int width, unsigned long long n) {
    GRID_STRIDE(i, n) {
        const unsigned long long r = i / width, c = i % width;
        dst[r * dst_cols + dst_off + c] = src[r * src_cols + src_off + c];
    }
}

#define ELEMENTWISE(sfx, T)                                                                                  \
    extern "C" __global__ void fill_##sfx(T* y, float v, unsigned long long n) { fill<T>(y, v, n); }          \
    extern "C" __global__ void axpy_##sfx(T* y, float alpha, const T* x, unsigned long long n) {              \
        axpy<T>(y, alpha, x, n);                                                                             \
    }                                                                                                        \
    extern "C" __global__ void scale_##sfx(T* y, float alpha, unsigned long long n) { scale<T>(y, alpha, n); } \
    extern "C" __global__ void add_bias_##sfx(T* y, const T* bias, unsigned long long n, unsigned int c) {     \
        add_bias<T>(y, bias, n, c);                                                                          \
    }                                                                                                        \
    extern "C" __global__ void sum_squares_##sfx(double* out, const T* x, unsigned long long n) {            \
        sum_squares<T>(out, x, n);                                                                           \
    }                                                                                                        \
    extern "C" __global__ void dropout_##sfx(T* y, const T* x, float p, unsigned long long seed,             \
                                             unsigned long long n) {                                         \
        dropout<T>(y, x, p, seed, n);                                                                        \
    }                                                                                                        \
    extern "C" __global__ void swiglu_forward_##sfx(T* h, const T* g, const T* u, unsigned long long n) {     \
        gated_forward<T, Silu>(h, g, u, n);                                                                  \
    }                                                                                                        \
    extern "C" __global__ void swiglu_backward_##sfx(T* dg, T* du, const T* dh, const T* g, const T* u,      \
                                                     unsigned long long n) {                                 \
        gated_backward<T, Silu>(dg, du, dh, g, u, n);                                                        \
    }                                                                                                        \
    extern "C" __global__ void geglu_forward_##sfx(T* h, const T* g, const T* u, unsigned long long n) {      \
        gated_forward<T, GeluTanh>(h, g, u, n);                                                              \
    }                                                                                                        \
    extern "C" __global__ void geglu_backward_##sfx(T* dg, T* du, const T* dh, const T* g, const T* u,       \
                                                    unsigned long long n) {                                  \
        gated_backward<T, GeluTanh>(dg, du, dh, g, u, n);                                                    \
    }                                                                                                        \
    extern "C" __global__ void copy_columns_##sfx(T* dst, unsigned int dst_cols, unsigned int dst_off,         \
                                                  const T* src, unsigned int src_cols, unsigned int src_off, \
                                                  unsigned int width, unsigned long long n) {                \
        copy_columns<T>(dst, dst_cols, dst_off, src, src_cols, src_off, width, n);                           \
    }
STORAGE_TYPES(ELEMENTWISE)

// y = x converted between storage types (round to nearest even).
#define CAST_FROM(sfx_to, TO, sfx_from, FROM)                                                              \
    extern "C" __global__ void cast_##sfx_from##_to_##sfx_to(TO* y, const FROM* x, unsigned long long n) {  \
        GRID_STRIDE(i, n) y[i] = from_f32<TO>(to_f32(x[i]));                                               \
    }
#define CAST_TO(sfx, T) CAST_FROM(sfx, T, f32, float) CAST_FROM(sfx, T, bf16, bf16) CAST_FROM(sfx, T, f16, f16)
STORAGE_TYPES(CAST_TO)

// One AdamW step with the scalars computed on the host exactly as cpu::adamw does:
// p *= decay; m = lerp(m, g, w1); v = v b2 + (1 - b2) g^2; p += neg_step * m / (sqrt(v)/bc2_sqrt + eps)
// Parameters, gradients and moments are always f32.
struct AdamWScalars {
    float decay, w1, b2, one_minus_b2, neg_step, bc2_sqrt, eps;
    int apply_decay;
};

__device__ __forceinline__ void adamw_element(float* p, const float* g, float* m, float* v, unsigned long long i,
                                              const AdamWScalars& c) {
    float pi = p[i];
    const float gi = g[i];
    if (c.apply_decay) pi *= c.decay;
    float mi = m[i];
    mi = fabsf(c.w1) < 0.5f ? mi + c.w1 * (gi - mi) : gi - (gi - mi) * (1.0f - c.w1);
    float vi = v[i] * c.b2;
    vi += c.one_minus_b2 * gi * gi;
    const float denom = sqrtf(vi) / c.bc2_sqrt + c.eps;
    pi += c.neg_step * mi / denom;
    p[i] = pi;
    m[i] = mi;
    v[i] = vi;
}

extern "C" __global__ void adamw_f32(float* p, const float* g, float* m, float* v, float decay, float w1, float b2,
                                     float one_minus_b2, float neg_step, float bc2_sqrt, float eps, int apply_decay,
                                     unsigned long long n) {
    const AdamWScalars c{decay, w1, b2, one_minus_b2, neg_step, bc2_sqrt, eps, apply_decay};
    GRID_STRIDE(i, n) adamw_element(p, g, m, v, i, c);
}

// ---- many tensors in one launch ----
// The optimizer's ops run over every adapter tensor of the model (hundreds of small ones): one
// launch covers them all instead of one launch each. A table on the device describes them,
// for T tensors of K pointers each:
//   table[t*K + j]            pointer j of tensor t (f32 values)
//   table[T*K + t]            length of tensor t
//   table[T*(K+1) + 2b], +1   block b's chunk: its tensor and first element
// Block b covers elements [start, start + chunk) of its tensor (less at the tensor's end).
struct TensorChunk {
    unsigned long long tensor, start, end;
};

__device__ __forceinline__ TensorChunk chunk_of_block(const unsigned long long* table, unsigned int tensors,
                                                    unsigned int k, unsigned long long chunk) {
    const unsigned long long* c = table + (unsigned long long)tensors * (k + 1) + 2ull * blockIdx.x;
    const unsigned long long t = c[0], start = c[1];
    const unsigned long long len = table[(unsigned long long)tensors * k + t];
    return {t, start, min(start + chunk, len)};
}

__device__ __forceinline__ float* tensor_ptr(const unsigned long long* table, unsigned int k, unsigned long long t,
                                             unsigned int j) {
    return reinterpret_cast<float*>(table[t * k + j]);
}

// adamw_f32 over every (param, grad, m, v) of the table (K = 4).
extern "C" __global__ void adamw_multi_f32(const unsigned long long* table, unsigned int tensors,
                                           unsigned long long chunk, float decay, float w1, float b2,
                                           float one_minus_b2, float neg_step, float bc2_sqrt, float eps,
                                           int apply_decay) {
    const AdamWScalars c{decay, w1, b2, one_minus_b2, neg_step, bc2_sqrt, eps, apply_decay};
    const TensorChunk ch = chunk_of_block(table, tensors, 4, chunk);
    float* p = tensor_ptr(table, 4, ch.tensor, 0);
    const float* g = tensor_ptr(table, 4, ch.tensor, 1);
    float* m = tensor_ptr(table, 4, ch.tensor, 2);
    float* v = tensor_ptr(table, 4, ch.tensor, 3);
    for (unsigned long long i = ch.start + threadIdx.x; i < ch.end; i += blockDim.x) adamw_element(p, g, m, v, i, c);
}

// dst = src over every (dst, src) pair of the table (K = 2), src f32, dst stored as T.
template <typename T>
__device__ void cast_multi(const unsigned long long* table, unsigned int tensors, unsigned long long chunk) {
    const TensorChunk ch = chunk_of_block(table, tensors, 2, chunk);
    T* dst = reinterpret_cast<T*>(table[ch.tensor * 2]);
    const float* src = reinterpret_cast<const float*>(table[ch.tensor * 2 + 1]);
    for (unsigned long long i = ch.start + threadIdx.x; i < ch.end; i += blockDim.x) dst[i] = from_f32<T>(src[i]);
}
#define CAST_MULTI(sfx, T)                                                                                    \
    extern "C" __global__ void cast_multi_##sfx(const unsigned long long* table, unsigned int tensors,        \
                                                unsigned long long chunk) {                                   \
        cast_multi<T>(table, tensors, chunk);                                                                 \
    }
STORAGE_TYPES(CAST_MULTI)

// y = value over every tensor of the table (K = 1).
extern "C" __global__ void fill_multi_f32(const unsigned long long* table, unsigned int tensors,
                                          unsigned long long chunk, float value) {
    const TensorChunk ch = chunk_of_block(table, tensors, 1, chunk);
    float* y = tensor_ptr(table, 1, ch.tensor, 0);
    for (unsigned long long i = ch.start + threadIdx.x; i < ch.end; i += blockDim.x) y[i] = value;
}

// y *= alpha over every tensor of the table (K = 1), as scale_f32 does each.
extern "C" __global__ void scale_multi_f32(const unsigned long long* table, unsigned int tensors,
                                           unsigned long long chunk, float alpha) {
    const TensorChunk ch = chunk_of_block(table, tensors, 1, chunk);
    float* y = tensor_ptr(table, 1, ch.tensor, 0);
    for (unsigned long long i = ch.start + threadIdx.x; i < ch.end; i += blockDim.x) y[i] = y[i] * alpha;
}

// out[0] += the sum of squares of every tensor of the table (K = 1), each block's partial
// sum added in double, as sum_squares_f32 does for one.
extern "C" __global__ void sum_squares_multi_f32(double* out, const unsigned long long* table, unsigned int tensors,
                                                 unsigned long long chunk) {
    __shared__ float scratch[32];
    const TensorChunk ch = chunk_of_block(table, tensors, 1, chunk);
    const float* x = tensor_ptr(table, 1, ch.tensor, 0);
    float acc = 0.0f;
    for (unsigned long long i = ch.start + threadIdx.x; i < ch.end; i += blockDim.x) {
        const float v = x[i];
        acc += v * v;
    }
    acc = block_sum(acc, scratch);
    if (threadIdx.x == 0) atomicAdd(out, (double)acc);
}
