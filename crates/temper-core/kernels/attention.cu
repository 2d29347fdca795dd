// Causal varlen attention with GQA, forward and backward; twin of src/cpu/attention.rs.
// Simple and exact: one block per (token, head), keys or queries walked in tiles of
// blockDim.x with an online softmax. Flash-style tiling over queries comes later.
//
// Layouts: q (N, hq, d); k, v (N, hkv, d); out (N, hq, d); lse (N, hq).
// starts[t] / ends[t]: first token and one past the last token of t's sequence.
#include "common.cuh"

#define MAX_SLOTS 4  // head dims per thread: d <= MAX_SLOTS * blockDim.x

__device__ __forceinline__ float dot(const float* a, const float* b, unsigned int d) {
    float s = 0.0f;
    for (unsigned int i = 0; i < d; ++i) s += a[i] * b[i];
    return s;
}

// One query row against keys first..=last of kv head g: writes the output row and, when
// lse_out is not null, the row's log-sum-exp. Shared: d + T + 32 floats.
__device__ void attention_row(float* orow, float* lse_out, const float* qrow, const float* k, const float* v,
                              unsigned int first, unsigned int last, unsigned int g, unsigned int hkv,
                              unsigned int d, float scale, float* smem) {
    float* qs = smem;                  // (d)
    float* ps = smem + d;              // (T) scores, then probabilities
    float* scratch = ps + blockDim.x;  // (32)
    const unsigned int T = blockDim.x, tid = threadIdx.x;
    for (unsigned int i = tid; i < d; i += T) qs[i] = qrow[i];
    __syncthreads();
    float m = -INFINITY, l = 0.0f, acc[MAX_SLOTS];
    for (int r = 0; r < MAX_SLOTS; ++r) acc[r] = 0.0f;
    for (unsigned int j0 = first; j0 <= last; j0 += T) {
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
        const unsigned int len = min(T, last + 1 - j0);
        for (int r = 0; r < MAX_SLOTS; ++r) {
            const unsigned int dim = tid + r * T;
            if (dim >= d) break;
            float a = acc[r] * corr;
            for (unsigned int jj = 0; jj < len; ++jj)
                a += ps[jj] * v[((unsigned long long)(j0 + jj) * hkv + g) * d + dim];
            acc[r] = a;
        }
        m = new_m;
        __syncthreads();
    }
    for (int r = 0; r < MAX_SLOTS; ++r) {
        const unsigned int dim = tid + r * T;
        if (dim < d) orow[dim] = acc[r] / l;
    }
    if (tid == 0 && lse_out) *lse_out = m + logf(l);
}

// grid (N, hq), block T threads, shared: d + T + 32 floats
extern "C" __global__ void attention_forward_f32(float* out, float* lse, const float* q, const float* k,
                                                 const float* v, const unsigned int* starts, unsigned int hq,
                                                 unsigned int hkv, unsigned int d, float scale) {
    extern __shared__ float smem[];
    const unsigned int t = blockIdx.x, h = blockIdx.y;
    const unsigned long long row = (unsigned long long)t * hq + h;
    attention_row(out + row * d, lse + row, q + row * d, k, v, starts[t], t, h / (hq / hkv), hkv, d, scale, smem);
}

// Generation: n new queries of one sequence at positions past..past+n against the KV cache
// (cap, hkv, d) whose first past+n rows are filled. grid (n, hq), block T, shared as above.
extern "C" __global__ void attention_decode_f32(float* out, const float* q, const float* k_cache,
                                                const float* v_cache, unsigned int past, unsigned int hq,
                                                unsigned int hkv, unsigned int d, float scale) {
    extern __shared__ float smem[];
    const unsigned int i = blockIdx.x, h = blockIdx.y;
    const unsigned long long row = (unsigned long long)i * hq + h;
    attention_row(out + row * d, nullptr, q + row * d, k_cache, v_cache, 0, past + i, h / (hq / hkv), hkv, d, scale,
                  smem);
}

// D (N, hq) = sum over d of dout * out. grid (N, hq), block 32.
extern "C" __global__ void attention_backward_dot_f32(float* D, const float* dout, const float* out, unsigned int hq,
                                                      unsigned int d) {
    __shared__ float scratch[32];
    const unsigned long long row = (unsigned long long)blockIdx.x * hq + blockIdx.y;
    float s = 0.0f;
    for (unsigned int i = threadIdx.x; i < d; i += blockDim.x) s += dout[row * d + i] * out[row * d + i];
    s = block_sum(s, scratch);
    if (threadIdx.x == 0) D[row] = s;
}

// dq for one (query t, head h). grid (N, hq), block T, shared: 2d + T floats.
extern "C" __global__ void attention_backward_dq_f32(float* dq, const float* dout, const float* q, const float* k,
                                                     const float* v, const float* lse, const float* D,
                                                     const unsigned int* starts, unsigned int hq, unsigned int hkv,
                                                     unsigned int d, float scale) {
    extern __shared__ float smem[];
    float* qs = smem;        // (d)
    float* dos = smem + d;   // (d)
    float* dss = dos + d;    // (T)
    const unsigned int t = blockIdx.x, h = blockIdx.y, T = blockDim.x, tid = threadIdx.x;
    const unsigned int g = h / (hq / hkv);
    const unsigned long long row = (unsigned long long)t * hq + h;
    for (unsigned int i = tid; i < d; i += T) {
        qs[i] = q[row * d + i];
        dos[i] = dout[row * d + i];
    }
    __syncthreads();
    const float lse_t = lse[row], D_t = D[row];
    float acc[MAX_SLOTS];
    for (int r = 0; r < MAX_SLOTS; ++r) acc[r] = 0.0f;
    for (unsigned int j0 = starts[t]; j0 <= t; j0 += T) {
        const unsigned int j = j0 + tid;
        float ds = 0.0f;
        if (j <= t) {
            const unsigned long long kv = ((unsigned long long)j * hkv + g) * d;
            const float p = expf(dot(qs, k + kv, d) * scale - lse_t);
            ds = p * (dot(dos, v + kv, d) - D_t);
        }
        dss[tid] = ds;
        __syncthreads();
        const unsigned int len = min(T, t + 1 - j0);
        for (int r = 0; r < MAX_SLOTS; ++r) {
            const unsigned int dim = tid + r * T;
            if (dim >= d) break;
            float a = acc[r];
            for (unsigned int jj = 0; jj < len; ++jj) a += dss[jj] * k[((unsigned long long)(j0 + jj) * hkv + g) * d + dim];
            acc[r] = a;
        }
        __syncthreads();
    }
    for (int r = 0; r < MAX_SLOTS; ++r) {
        const unsigned int dim = tid + r * T;
        if (dim < d) dq[row * d + dim] = scale * acc[r];
    }
}

// dk, dv for one (key j, kv head g): sums over the queries i >= j of its sequence and the
// group's query heads. grid (N, hkv), block T, shared: 2d + 2T floats.
extern "C" __global__ void attention_backward_dkv_f32(float* dk, float* dv, const float* dout, const float* q,
                                                      const float* k, const float* v, const float* lse,
                                                      const float* D, const unsigned int* ends, unsigned int hq,
                                                      unsigned int hkv, unsigned int d, float scale) {
    extern __shared__ float smem[];
    float* ks = smem;       // (d)
    float* vs = smem + d;   // (d)
    float* pss = vs + d;    // (T) probabilities
    float* dss = pss + blockDim.x;  // (T) score gradients
    const unsigned int j = blockIdx.x, g = blockIdx.y, T = blockDim.x, tid = threadIdx.x;
    const unsigned int group = hq / hkv;
    const unsigned long long kvrow = (unsigned long long)j * hkv + g;
    for (unsigned int i = tid; i < d; i += T) {
        ks[i] = k[kvrow * d + i];
        vs[i] = v[kvrow * d + i];
    }
    __syncthreads();
    // (query, head) pairs: index e -> query j + e / group, head g * group + e % group
    const unsigned int pairs = (ends[j] - j) * group;
    float ak[MAX_SLOTS], av[MAX_SLOTS];
    for (int r = 0; r < MAX_SLOTS; ++r) ak[r] = av[r] = 0.0f;
    for (unsigned int e0 = 0; e0 < pairs; e0 += T) {
        const unsigned int e = e0 + tid;
        float p = 0.0f, ds = 0.0f;
        if (e < pairs) {
            const unsigned long long qrow = (unsigned long long)(j + e / group) * hq + g * group + e % group;
            p = expf(dot(q + qrow * d, ks, d) * scale - lse[qrow]);
            ds = p * (dot(dout + qrow * d, vs, d) - D[qrow]);
        }
        pss[tid] = p;
        dss[tid] = ds;
        __syncthreads();
        const unsigned int len = min(T, pairs - e0);
        for (int r = 0; r < MAX_SLOTS; ++r) {
            const unsigned int dim = tid + r * T;
            if (dim >= d) break;
            float a_k = ak[r], a_v = av[r];
            for (unsigned int ee = 0; ee < len; ++ee) {
                const unsigned int e2 = e0 + ee;
                const unsigned long long qrow = (unsigned long long)(j + e2 / group) * hq + g * group + e2 % group;
                a_v += pss[ee] * dout[qrow * d + dim];
                a_k += dss[ee] * q[qrow * d + dim];
            }
            ak[r] = a_k;
            av[r] = a_v;
        }
        __syncthreads();
    }
    for (int r = 0; r < MAX_SLOTS; ++r) {
        const unsigned int dim = tid + r * T;
        if (dim < d) {
            dk[kvrow * d + dim] = scale * ak[r];
            dv[kvrow * d + dim] = av[r];
        }
    }
}
