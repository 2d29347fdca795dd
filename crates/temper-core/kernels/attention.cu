// Causal varlen attention with GQA, forward and backward; twin of src/cpu/attention.rs.
//
// Two paths, chosen per sequence by the host (src/cuda/attention.rs):
// - direct: one block per (token, head), keys or queries walked in tiles of blockDim.x with
//   an online softmax. Exact and cheap for short sequences; its cost grows with length^2 * d
//   in plain loads, so long sequences take
// - the GEMM path: scores S = scale Q K^T for a chunk of heads by cuBLAS (tensor cores), the
//   row kernels below turn them into probabilities P (causal mask, lse) and, in backward, P
//   and dP into dS; cuBLAS does P V, P^T dO, dO V^T, dS K and dS^T Q.
//
// Layouts: q (N, hq, d); k, v (N, hkv, d); out (N, hq, d); lse, D (N, hq), always f32.
// starts[t] / ends[t]: first token and one past the last token of t's sequence.
#include "common.cuh"

#define MAX_SLOTS 4  // head dims per thread: d <= MAX_SLOTS * blockDim.x

template <typename T>
__device__ __forceinline__ float dot(const float* a, const T* b, unsigned int d) {
    float s = 0.0f;
    for (unsigned int i = 0; i < d; ++i) s += a[i] * to_f32(b[i]);
    return s;
}

// One query row against keys first..=last of kv head g: writes the output row and, when
// lse_out is not null, the row's log-sum-exp. Shared: d + T + 32 floats.
template <typename T>
__device__ void attention_row(T* orow, float* lse_out, const T* qrow, const T* k, const T* v, unsigned int first,
                              unsigned int last, unsigned int g, unsigned int hkv, unsigned int d, float scale,
                              float* smem) {
    float* qs = smem;                  // (d)
    float* ps = smem + d;              // (T) scores, then probabilities
    float* scratch = ps + blockDim.x;  // (32)
    const unsigned int NT = blockDim.x, tid = threadIdx.x;
    for (unsigned int i = tid; i < d; i += NT) qs[i] = to_f32(qrow[i]);
    __syncthreads();
    float m = -INFINITY, l = 0.0f, acc[MAX_SLOTS];
    for (int r = 0; r < MAX_SLOTS; ++r) acc[r] = 0.0f;
    for (unsigned int j0 = first; j0 <= last; j0 += NT) {
        const unsigned int j = j0 + tid;
        float s = -INFINITY;
        if (j <= last) s = dot(qs, k + ((unsigned long long)j * hkv + g) * d, d) * scale;
        const float tile_max = block_max(s, scratch);
        const float new_m = fmaxf(m, tile_max);
        const float corr = m == -INFINITY ? 0.0f : expf(m - new_m);
        const float p = j <= last ? expf(s - new_m) : 0.0f;
        ps[tid] = p;
        const float tile_sum = block_sum(p, scratch);  // syncs, so ps is visible
        l = l * corr + tile_sum;
        const unsigned int len = min(NT, last + 1 - j0);
        for (int r = 0; r < MAX_SLOTS; ++r) {
            const unsigned int dim = tid + r * NT;
            if (dim >= d) break;
            float a = acc[r] * corr;
            for (unsigned int jj = 0; jj < len; ++jj)
                a += ps[jj] * to_f32(v[((unsigned long long)(j0 + jj) * hkv + g) * d + dim]);
            acc[r] = a;
        }
        m = new_m;
        __syncthreads();
    }
    for (int r = 0; r < MAX_SLOTS; ++r) {
        const unsigned int dim = tid + r * NT;
        if (dim < d) orow[dim] = from_f32<T>(acc[r] / l);
    }
    if (tid == 0 && lse_out) *lse_out = m + logf(l);
}

// Tokens tok0.. tok0+gridDim.x. grid (n, hq), block T threads, shared: d + T + 32 floats
template <typename T>
__device__ void attention_forward(T* out, float* lse, const T* q, const T* k, const T* v, const unsigned int* starts,
                                  unsigned int tok0, unsigned int hq, unsigned int hkv, unsigned int d, float scale) {
    extern __shared__ float smem[];
    const unsigned int t = tok0 + blockIdx.x, h = blockIdx.y;
    const unsigned long long row = (unsigned long long)t * hq + h;
    attention_row(out + row * d, lse + row, q + row * d, k, v, starts[t], t, h / (hq / hkv), hkv, d, scale, smem);
}

// Generation: n new queries of one sequence at positions past..past+n against the KV cache
// (cap, hkv, d) whose first past+n rows are filled. grid (n, hq), block T, shared as above.
template <typename T>
__device__ void attention_decode(T* out, const T* q, const T* k_cache, const T* v_cache, unsigned int past,
                                 unsigned int hq, unsigned int hkv, unsigned int d, float scale) {
    extern __shared__ float smem[];
    const unsigned int i = blockIdx.x, h = blockIdx.y;
    const unsigned long long row = (unsigned long long)i * hq + h;
    attention_row(out + row * d, (float*)nullptr, q + row * d, k_cache, v_cache, 0, past + i, h / (hq / hkv), hkv, d,
                  scale, smem);
}

// D (N, hq) = sum over d of dout * out. grid (N, hq), block 32.
template <typename T>
__device__ void attention_backward_dot(float* D, const T* dout, const T* out, unsigned int hq, unsigned int d) {
    __shared__ float scratch[32];
    const unsigned long long row = (unsigned long long)blockIdx.x * hq + blockIdx.y;
    float s = 0.0f;
    for (unsigned int i = threadIdx.x; i < d; i += blockDim.x) s += to_f32(dout[row * d + i]) * to_f32(out[row * d + i]);
    s = block_sum(s, scratch);
    if (threadIdx.x == 0) D[row] = s;
}

// dq for one (query t, head h), t from tok0. grid (n, hq), block T, shared: 2d + T floats.
template <typename T>
__device__ void attention_backward_dq(T* dq, const T* dout, const T* q, const T* k, const T* v, const float* lse,
                                      const float* D, const unsigned int* starts, unsigned int tok0, unsigned int hq,
                                      unsigned int hkv, unsigned int d, float scale) {
    extern __shared__ float smem[];
    float* qs = smem;       // (d)
    float* dos = smem + d;  // (d)
    float* dss = dos + d;   // (T)
    const unsigned int t = tok0 + blockIdx.x, h = blockIdx.y, NT = blockDim.x, tid = threadIdx.x;
    const unsigned int g = h / (hq / hkv);
    const unsigned long long row = (unsigned long long)t * hq + h;
    for (unsigned int i = tid; i < d; i += NT) {
        qs[i] = to_f32(q[row * d + i]);
        dos[i] = to_f32(dout[row * d + i]);
    }
    __syncthreads();
    const float lse_t = lse[row], D_t = D[row];
    float acc[MAX_SLOTS];
    for (int r = 0; r < MAX_SLOTS; ++r) acc[r] = 0.0f;
    for (unsigned int j0 = starts[t]; j0 <= t; j0 += NT) {
        const unsigned int j = j0 + tid;
        float ds = 0.0f;
        if (j <= t) {
            const unsigned long long kv = ((unsigned long long)j * hkv + g) * d;
            const float p = expf(dot(qs, k + kv, d) * scale - lse_t);
            ds = p * (dot(dos, v + kv, d) - D_t);
        }
        dss[tid] = ds;
        __syncthreads();
        const unsigned int len = min(NT, t + 1 - j0);
        for (int r = 0; r < MAX_SLOTS; ++r) {
            const unsigned int dim = tid + r * NT;
            if (dim >= d) break;
            float a = acc[r];
            for (unsigned int jj = 0; jj < len; ++jj)
                a += dss[jj] * to_f32(k[((unsigned long long)(j0 + jj) * hkv + g) * d + dim]);
            acc[r] = a;
        }
        __syncthreads();
    }
    for (int r = 0; r < MAX_SLOTS; ++r) {
        const unsigned int dim = tid + r * NT;
        if (dim < d) dq[row * d + dim] = from_f32<T>(scale * acc[r]);
    }
}

// dk, dv for one (key j, kv head g), j from tok0: sums over the queries i >= j of its
// sequence and the group's query heads. grid (n, hkv), block T, shared: 2d + 2T floats.
template <typename T>
__device__ void attention_backward_dkv(T* dk, T* dv, const T* dout, const T* q, const T* k, const T* v,
                                       const float* lse, const float* D, const unsigned int* ends, unsigned int tok0,
                                       unsigned int hq, unsigned int hkv, unsigned int d, float scale) {
    extern __shared__ float smem[];
    float* ks = smem;               // (d)
    float* vs = smem + d;           // (d)
    float* pss = vs + d;            // (T) probabilities
    float* dss = pss + blockDim.x;  // (T) score gradients
    const unsigned int j = tok0 + blockIdx.x, g = blockIdx.y, NT = blockDim.x, tid = threadIdx.x;
    const unsigned int group = hq / hkv;
    const unsigned long long kvrow = (unsigned long long)j * hkv + g;
    for (unsigned int i = tid; i < d; i += NT) {
        ks[i] = to_f32(k[kvrow * d + i]);
        vs[i] = to_f32(v[kvrow * d + i]);
    }
    __syncthreads();
    // (query, head) pairs: index e -> query j + e / group, head g * group + e % group
    const unsigned int pairs = (ends[j] - j) * group;
    float ak[MAX_SLOTS], av[MAX_SLOTS];
    for (int r = 0; r < MAX_SLOTS; ++r) ak[r] = av[r] = 0.0f;
    for (unsigned int e0 = 0; e0 < pairs; e0 += NT) {
        const unsigned int e = e0 + tid;
        float p = 0.0f, ds = 0.0f;
        if (e < pairs) {
            const unsigned long long qrow = (unsigned long long)(j + e / group) * hq + g * group + e % group;
            p = expf(dot(ks, q + qrow * d, d) * scale - lse[qrow]);
            ds = p * (dot(vs, dout + qrow * d, d) - D[qrow]);
        }
        pss[tid] = p;
        dss[tid] = ds;
        __syncthreads();
        const unsigned int len = min(NT, pairs - e0);
        for (int r = 0; r < MAX_SLOTS; ++r) {
            const unsigned int dim = tid + r * NT;
            if (dim >= d) break;
            float a_k = ak[r], a_v = av[r];
            for (unsigned int ee = 0; ee < len; ++ee) {
                const unsigned int e2 = e0 + ee;
                const unsigned long long qrow = (unsigned long long)(j + e2 / group) * hq + g * group + e2 % group;
                a_v += pss[ee] * to_f32(dout[qrow * d + dim]);
                a_k += dss[ee] * to_f32(q[qrow * d + dim]);
            }
            ak[r] = a_k;
            av[r] = a_v;
        }
        __syncthreads();
    }
    for (int r = 0; r < MAX_SLOTS; ++r) {
        const unsigned int dim = tid + r * NT;
        if (dim < d) {
            dk[kvrow * d + dim] = from_f32<T>(scale * ak[r]);
            dv[kvrow * d + dim] = from_f32<T>(av[r]);
        }
    }
}

// ---- the GEMM path's row kernels ----
// A chunk of `heads` heads of one sequence of L tokens starting at token tok0: scores S
// (heads, L, L) f32, probabilities P (heads, L, L) in the storage type. Chunk head b is query
// head h0 + b * hstep. One block per (row i, chunk head b): grid (L, heads).

// Forward (use_lse = 0): P = softmax over j <= i of S, 0 above the diagonal; writes lse.
// Backward recompute (use_lse = 1): P = exp(S - lse) with the saved lse.
template <typename T>
__device__ void attention_probs(T* P, float* lse, const float* S, unsigned int L, unsigned int tok0, unsigned int hq,
                                unsigned int h0, unsigned int hstep, int use_lse) {
    __shared__ float scratch[32];
    const unsigned int i = blockIdx.x, b = blockIdx.y;
    const unsigned long long off = ((unsigned long long)b * L + i) * L;
    const float* s = S + off;
    T* p = P + off;
    float* lse_row = lse + (unsigned long long)(tok0 + i) * hq + h0 + b * hstep;
    float l;
    if (use_lse) {
        l = *lse_row;
    } else {
        float m = -INFINITY;
        for (unsigned int j = threadIdx.x; j <= i; j += blockDim.x) m = fmaxf(m, s[j]);
        m = block_max(m, scratch);
        float sum = 0.0f;
        for (unsigned int j = threadIdx.x; j <= i; j += blockDim.x) sum += expf(s[j] - m);
        sum = block_sum(sum, scratch);
        l = m + logf(sum);
        if (threadIdx.x == 0) *lse_row = l;
    }
    for (unsigned int j = threadIdx.x; j < L; j += blockDim.x) p[j] = from_f32<T>(j <= i ? expf(s[j] - l) : 0.0f);
}

// dS = P * (dP - D_i) * scale, written over P. Same geometry as attention_probs.
template <typename T>
__device__ void attention_dscores(T* P, const float* dP, const float* D, unsigned int L, unsigned int tok0,
                                  unsigned int hq, unsigned int h0, unsigned int hstep, float scale) {
    const unsigned int i = blockIdx.x, b = blockIdx.y;
    const unsigned long long off = ((unsigned long long)b * L + i) * L;
    const float Di = D[(unsigned long long)(tok0 + i) * hq + h0 + b * hstep];
    T* p = P + off;
    const float* dp = dP + off;
    for (unsigned int j = threadIdx.x; j < L; j += blockDim.x)
        p[j] = from_f32<T>(j <= i ? to_f32(p[j]) * (dp[j] - Di) * scale : 0.0f);
}

#define ATTENTION(sfx, T)                                                                                          \
    extern "C" __global__ void attention_forward_##sfx(T* out, float* lse, const T* q, const T* k, const T* v,      \
                                                       const unsigned int* starts, unsigned int tok0,             \
                                                       unsigned int hq, unsigned int hkv, unsigned int d,         \
                                                       float scale) {                                             \
        attention_forward<T>(out, lse, q, k, v, starts, tok0, hq, hkv, d, scale);                                  \
    }                                                                                                              \
    extern "C" __global__ void attention_decode_##sfx(T* out, const T* q, const T* k_cache, const T* v_cache,      \
                                                      unsigned int past, unsigned int hq, unsigned int hkv,        \
                                                      unsigned int d, float scale) {                               \
        attention_decode<T>(out, q, k_cache, v_cache, past, hq, hkv, d, scale);                                    \
    }                                                                                                              \
    extern "C" __global__ void attention_backward_dot_##sfx(float* D, const T* dout, const T* out, unsigned int hq, \
                                                            unsigned int d) {                                      \
        attention_backward_dot<T>(D, dout, out, hq, d);                                                            \
    }                                                                                                              \
    extern "C" __global__ void attention_backward_dq_##sfx(                                                        \
        T* dq, const T* dout, const T* q, const T* k, const T* v, const float* lse, const float* D,               \
        const unsigned int* starts, unsigned int tok0, unsigned int hq, unsigned int hkv, unsigned int d,          \
        float scale) {                                                                                             \
        attention_backward_dq<T>(dq, dout, q, k, v, lse, D, starts, tok0, hq, hkv, d, scale);                      \
    }                                                                                                              \
    extern "C" __global__ void attention_backward_dkv_##sfx(                                                       \
        T* dk, T* dv, const T* dout, const T* q, const T* k, const T* v, const float* lse, const float* D,        \
        const unsigned int* ends, unsigned int tok0, unsigned int hq, unsigned int hkv, unsigned int d,            \
        float scale) {                                                                                             \
        attention_backward_dkv<T>(dk, dv, dout, q, k, v, lse, D, ends, tok0, hq, hkv, d, scale);                   \
    }                                                                                                              \
    extern "C" __global__ void attention_probs_##sfx(T* P, float* lse, const float* S, unsigned int L,             \
                                                     unsigned int tok0, unsigned int hq, unsigned int h0,          \
                                                     unsigned int hstep, int use_lse) {                            \
        attention_probs<T>(P, lse, S, L, tok0, hq, h0, hstep, use_lse);                                            \
    }                                                                                                              \
    extern "C" __global__ void attention_dscores_##sfx(T* P, const float* dP, const float* D, unsigned int L,       \
                                                       unsigned int tok0, unsigned int hq, unsigned int h0,        \
                                                       unsigned int hstep, float scale) {                          \
        attention_dscores<T>(P, dP, D, L, tok0, hq, h0, hstep, scale);                                             \
    }
STORAGE_TYPES(ATTENTION)
