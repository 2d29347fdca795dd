// Flash attention on tensor cores (the FlashAttention-2 algorithm): causal, varlen, GQA,
// optionally within a sliding window (query i sees keys i - w < j <= i), forward and backward, for 16-bit storage (bf16 from sm_80, f16 from sm_75) and head dims
// 64, 80, 96, 128 and 256. Twin of src/cpu/attention.rs; the host (src/cuda/flash.rs) picks
// it over attention.cu's paths where it applies.
//
// Layouts as attention.cu: q, dq, out, dout (N, hq, D); k, v, dk, dv (N, hkv, D); lse and
// Dsum (N, hq), f32. Query head h reads kv head h / (hq / hkv).
//
// Forward: a block owns 64 FM queries of one head, 16 FM per warp (FM = 2 up to head dim 128:
// each K and V fragment read from shared memory then feeds two products). Keys and values of its
// sequence stream through shared memory in tiles of BC rows, the next tile's copy in flight
// (cp.async from sm_80) while the current one is used. S = Q K^T and O += P V run on
// mma.sync (m16n8k16; two m16n8k8 for f16 on sm_75) with f32 accumulators; the softmax is
// online (a running max and sum per row, exp2 with the scale folded in), so no score leaves
// registers. Writes out and lse, the natural log-sum-exp of each row's scaled scores.
//
// Backward, deterministic (no atomics), in two kernels after Dsum = rowsum(dO * O):
// - flash_bwd_dkv: a block owns BK = 64 keys of one kv head (16 per warp) and walks every
//   query tile at or after them, for each query head of its GQA group: S^T = K Q^T, P^T from
//   the saved lse, dP^T = V dO^T, dS^T = P^T (dP^T - Dsum); dV += P^T dO and dK += dS^T Q in
//   registers. Head dims above 128 accumulate dK and dV in column chunks of DC (grid z),
//   recomputing S and dP for each chunk.
// - flash_bwd_dq: a block owns 64 FM queries of one head and walks their keys: S, P, dP and
//   dS again, dQ += dS K.
//
// tiles: three u32 per block, (first token of the sequence, its length, first row of the
// block's tile within the sequence); the host orders them heaviest first. window: the sliding
// window in tokens, 0 for none; key tiles wholly outside every row's window are not visited.
#include "common.cuh"
#include "flash_common.cuh"

// Soft-capped scores (Gemma 2's attn_logit_softcapping): the scaled score x becomes
// cap * tanh(x / cap) before the softmax. `FaCap` holds the constants of one launch: cs =
// scale / cap and cl2 = cap * log2(e), so the capped score in the exp2 domain is cl2 * tanh(cs s)
// for the raw product s; its slope with respect to the scaled score is 1 - tanh^2.
struct FaCap {
    float cs, cl2;
};
__device__ __forceinline__ FaCap fa_cap(float scale, float cap) {
    return FaCap{scale / cap, cap * FA_LOG2E};
}

// ---- forward ----

// grid (tiles, hq), block FA_THREADS; shared (64 FM + 2 FA_STAGES BC) (D + FA_PAD) values. Each
// warp owns 16 FM queries (FM blocks of 16 rows), so every K and V fragment it reads from
// shared memory feeds FM products.
template <typename T, int D, int BC, int FM, bool CAP>
__device__ void flash_forward(T* out, float* lse, const T* q, const T* k, const T* v, const unsigned int* tiles,
                              unsigned int hq, unsigned int hkv, float scale, unsigned int window, float cap) {
    constexpr int SD = D + FA_PAD, KT = D / 16, NB = BC / 8, NO = D / 8, WR = 16 * FM, BRF = 4 * WR;
    extern __shared__ __align__(16) unsigned char fa_smem[];
    T* Qs = reinterpret_cast<T*>(fa_smem);  // (BRF, SD)
    T* Ks = Qs + BRF * SD;                  // (STAGES, BC, SD)
    T* Vs = Ks + FA_STAGES * BC * SD;       // (STAGES, BC, SD)
    const int a = tiles[3 * blockIdx.x], len = tiles[3 * blockIdx.x + 1], q0 = tiles[3 * blockIdx.x + 2];
    const unsigned int h = blockIdx.y, hk = h / (hq / hkv);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const unsigned long long qstride = (unsigned long long)hq * D, kstride = (unsigned long long)hkv * D;
    const T* qb = q + (unsigned long long)a * qstride + h * D;
    const T* kb = k + (unsigned long long)a * kstride + hk * D;
    const T* vb = v + (unsigned long long)a * kstride + hk * D;
    const int w = fa_window(window);
    const int kend = min(len, q0 + BRF);  // keys before kend are seen by some row of the tile
    const int ntiles = (kend + BC - 1) / BC;
    const int jstart = max(0, q0 - w + 1) / BC;  // the first key tile inside the first row's window
    const int row0 = q0 + warp * WR;  // the warp's first query
    const bool warp_live = row0 < len;
    const float sl2 = scale * FA_LOG2E;
    const FaCap fc = CAP ? fa_cap(scale, cap) : FaCap{0.0f, 0.0f};

    load_rows<T, D, SD, BRF>(Qs, qb, qstride, q0, len);
    {
        const int s0 = FA_STAGES == 1 ? 0 : (jstart & 1);
        load_rows<T, D, SD, BC>(Ks + s0 * BC * SD, kb, kstride, jstart * BC, len);
        load_rows<T, D, SD, BC>(Vs + s0 * BC * SD, vb, kstride, jstart * BC, len);
    }
    copies_commit();

    float o[FM][NO][4];
#pragma unroll
    for (int f = 0; f < FM; ++f)
#pragma unroll
        for (int i = 0; i < NO; ++i) o[f][i][0] = o[f][i][1] = o[f][i][2] = o[f][i][3] = 0.0f;
    float m[FM][2], l[FM][2];
#pragma unroll
    for (int f = 0; f < FM; ++f) m[f][0] = m[f][1] = -INFINITY, l[f][0] = l[f][1] = 0.0f;

    for (int j = jstart; j < ntiles; ++j) {
        const int stage = FA_STAGES == 1 ? 0 : (j & 1);
        if (FA_STAGES == 1) {
            if (j > jstart) {
                load_rows<T, D, SD, BC>(Ks, kb, kstride, j * BC, len);
                load_rows<T, D, SD, BC>(Vs, vb, kstride, j * BC, len);
            }
            copies_wait<0>();
        } else if (j + 1 < ntiles) {
            const int next = (j + 1) & 1;
            load_rows<T, D, SD, BC>(Ks + next * BC * SD, kb, kstride, (j + 1) * BC, len);
            load_rows<T, D, SD, BC>(Vs + next * BC * SD, vb, kstride, (j + 1) * BC, len);
            copies_commit();
            copies_wait<1>();
        } else {
            copies_wait<0>();
        }
        __syncthreads();
        const int k0 = j * BC;
        // Skip a warp whose queries all precede the tile's keys, or whose windows all begin
        // after them (or that lies past the sequence).
        if (warp_live && k0 <= row0 + WR - 1 && k0 + BC - 1 > row0 - w) {
            const T* Kt = Ks + stage * BC * SD;
            const T* Vt = Vs + stage * BC * SD;
            float s[FM][NB][4];
#pragma unroll
            for (int f = 0; f < FM; ++f)
#pragma unroll
                for (int i = 0; i < NB; ++i) s[f][i][0] = s[f][i][1] = s[f][i][2] = s[f][i][3] = 0.0f;
            mma_rows_nk_fm<T, SD, KT, NB, FM>(s, Qs, warp * WR, Kt, 0, lane);
#pragma unroll
            for (int f = 0; f < FM; ++f) {
                const int frow0 = row0 + 16 * f;
                const bool mask = k0 + BC - 1 > frow0 || k0 + BC > len || k0 <= frow0 + 15 - w;
                float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
                for (int nt = 0; nt < NB; ++nt) {
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        float x = CAP ? fc.cl2 * tanhf(s[f][nt][e] * fc.cs) : s[f][nt][e] * sl2;
                        if (mask) {
                            const int key = k0 + nt * 8 + 2 * t + (e & 1), row = frow0 + g + 8 * (e >> 1);
                            if (key > row || key >= len || key <= row - w) x = -INFINITY;
                        }
                        s[f][nt][e] = x;
                        mx[e >> 1] = fmaxf(mx[e >> 1], x);
                    }
                }
                float base[2], corr[2];
#pragma unroll
                for (int i = 0; i < 2; ++i) {
                    mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 1));
                    mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 2));
                    const float nm = fmaxf(m[f][i], mx[i]);
                    base[i] = nm == -INFINITY ? 0.0f : nm;
                    corr[i] = fast_exp2(m[f][i] - base[i]);
                    m[f][i] = nm;
                    l[f][i] *= corr[i];
                }
#pragma unroll
                for (int nt = 0; nt < NB; ++nt) {
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const float p = fast_exp2(s[f][nt][e] - base[e >> 1]);
                        s[f][nt][e] = p;
                        l[f][e >> 1] += p;
                    }
                }
#pragma unroll
                for (int i = 0; i < NO; ++i) {
                    o[f][i][0] *= corr[0];
                    o[f][i][1] *= corr[0];
                    o[f][i][2] *= corr[1];
                    o[f][i][3] *= corr[1];
                }
            }
            mma_frags_kn_fm<T, SD, BC / 16, NO, FM>(o, s, Vt, 0, lane);
        }
        __syncthreads();
    }
    if (!warp_live) return;
#pragma unroll
    for (int f = 0; f < FM; ++f) {
        const int frow0 = row0 + 16 * f;
        float inv[2];
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            float li = l[f][i];
            li += __shfl_xor_sync(0xffffffffu, li, 1);
            li += __shfl_xor_sync(0xffffffffu, li, 2);
            inv[i] = 1.0f / li;
            const int row = frow0 + g + 8 * i;
            if (t == 0 && row < len) lse[(unsigned long long)(a + row) * hq + h] = (m[f][i] + log2f(li)) * FA_LN2;
        }
        // The warp's rows of Qs are its own from here (no other warp reads them).
        store_rows<T, SD, NO>(Qs, warp * WR + 16 * f, o[f], inv, out + (unsigned long long)a * qstride + h * D,
                              qstride, frow0, 0, len, lane);
    }
}

// ---- backward ----

// dK and dV of FA_BK keys of kv head blockIdx.y, columns blockIdx.z * DC... grid (tiles, hkv,
// D / DC), block FA_THREADS; shared 2 FA_BK + 2 FA_STAGES BQ rows of (D + FA_PAD) values,
// then 2 FA_STAGES BQ floats.
template <typename T, int D, int BQ, int DC, bool CAP>
__device__ void flash_bwd_dkv(T* dk, T* dv, const T* q, const T* k, const T* v, const T* dout, const float* lse,
                              const float* Dsum, const unsigned int* tiles, unsigned int hq, unsigned int hkv,
                              float scale, unsigned int window, float cap) {
    constexpr int SD = D + FA_PAD, KT = D / 16, NQ = BQ / 8, NC = DC / 8;
    extern __shared__ __align__(16) unsigned char fa_smem[];
    T* Ks = reinterpret_cast<T*>(fa_smem);   // (BK, SD)
    T* Vs = Ks + FA_BK * SD;                 // (BK, SD)
    T* Qs = Vs + FA_BK * SD;                 // (STAGES, BQ, SD)
    T* Os = Qs + FA_STAGES * BQ * SD;        // dO: (STAGES, BQ, SD)
    float* Ls = reinterpret_cast<float*>(Os + FA_STAGES * BQ * SD);  // lse: (STAGES, BQ)
    float* Ds = Ls + FA_STAGES * BQ;                                 // Dsum: (STAGES, BQ)
    const int a = tiles[3 * blockIdx.x], len = tiles[3 * blockIdx.x + 1], k0 = tiles[3 * blockIdx.x + 2];
    const unsigned int hk = blockIdx.y, group = hq / hkv;
    const int c0 = blockIdx.z * DC;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const unsigned long long qstride = (unsigned long long)hq * D, kstride = (unsigned long long)hkv * D;
    const int key0 = k0 + warp * 16;  // the warp's first key
    const bool warp_live = key0 < len;
    const float sl2 = scale * FA_LOG2E;
    const FaCap fc = CAP ? fa_cap(scale, cap) : FaCap{0.0f, 0.0f};
    const int w = fa_window(window);
    const int first_q = (k0 / BQ) * BQ;  // queries before the block's first key see none of its keys
    const int qend = min(len, k0 + FA_BK - 1 + w);  // nor do queries from qend on (the window)
    const int nq = max(0, (qend - first_q + BQ - 1) / BQ);
    const int iters = (int)group * nq;

    // Queries, dO, lse and Dsum of iteration it into stage st.
    auto load_iter = [&](int it, int st) {
        const unsigned int h = hk * group + it / nq;
        const int qi = first_q + (it % nq) * BQ;
        const unsigned long long off = (unsigned long long)a * qstride + h * D;
        load_rows<T, D, SD, BQ>(Qs + st * BQ * SD, q + off, qstride, qi, len);
        load_rows<T, D, SD, BQ>(Os + st * BQ * SD, dout + off, qstride, qi, len);
        if (threadIdx.x < BQ) {
            const int r = qi + threadIdx.x;
            const bool ok = r < len;
            const unsigned long long idx = ok ? (unsigned long long)(a + r) * hq + h : 0ull;
            copy4(Ls + st * BQ + threadIdx.x, lse + idx, ok);
            copy4(Ds + st * BQ + threadIdx.x, Dsum + idx, ok);
        }
    };

    load_rows<T, D, SD, FA_BK>(Ks, k + (unsigned long long)a * kstride + hk * D, kstride, k0, len);
    load_rows<T, D, SD, FA_BK>(Vs, v + (unsigned long long)a * kstride + hk * D, kstride, k0, len);
    if (iters > 0) load_iter(0, 0);
    copies_commit();

    float dka[NC][4], dva[NC][4];
#pragma unroll
    for (int i = 0; i < NC; ++i) {
        dka[i][0] = dka[i][1] = dka[i][2] = dka[i][3] = 0.0f;
        dva[i][0] = dva[i][1] = dva[i][2] = dva[i][3] = 0.0f;
    }

    for (int it = 0; it < iters; ++it) {
        const int stage = FA_STAGES == 1 ? 0 : (it & 1);
        if (FA_STAGES == 1) {
            if (it > 0) load_iter(it, 0);
            copies_wait<0>();
        } else if (it + 1 < iters) {
            load_iter(it + 1, (it + 1) & 1);
            copies_commit();
            copies_wait<1>();
        } else {
            copies_wait<0>();
        }
        __syncthreads();
        const int qi = first_q + (it % nq) * BQ;
        // Skip a warp whose keys all follow the tile's queries, or whose windows all end
        // before them (or that lies past the sequence).
        if (warp_live && qi + BQ - 1 >= key0 && qi < key0 + 15 + w) {
            const T* Qt = Qs + stage * BQ * SD;
            const T* Ot = Os + stage * BQ * SD;
            const float* Lt = Ls + stage * BQ;
            const float* Dt = Ds + stage * BQ;
            float p[NQ][4], ds[NQ][4];
#pragma unroll
            for (int i = 0; i < NQ; ++i) {
                p[i][0] = p[i][1] = p[i][2] = p[i][3] = 0.0f;
                ds[i][0] = ds[i][1] = ds[i][2] = ds[i][3] = 0.0f;
            }
            mma_rows_nk<T, SD, KT, NQ>(p, Ks, warp * 16, Qt, 0, lane);   // S^T (keys, queries)
            mma_rows_nk<T, SD, KT, NQ>(ds, Vs, warp * 16, Ot, 0, lane);  // dP^T
            const bool mask = qi < key0 + 15 || qi + BQ > len || qi + BQ - 1 >= key0 + w;
#pragma unroll
            for (int nt = 0; nt < NQ; ++nt) {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int col = nt * 8 + 2 * t + (e & 1);
                    const float th = CAP ? tanhf(p[nt][e] * fc.cs) : 0.0f;
                    float pv = fast_exp2((CAP ? fc.cl2 * th : p[nt][e] * sl2) - Lt[col] * FA_LOG2E);
                    if (mask) {
                        const int query = qi + col, key = key0 + g + 8 * (e >> 1);
                        if (query < key || query >= len || query >= key + w) pv = 0.0f;
                    }
                    p[nt][e] = pv;
                    ds[nt][e] = pv * (ds[nt][e] - Dt[col]);
                    if (CAP) ds[nt][e] *= 1.0f - th * th;
                }
            }
            mma_frags_kn<T, SD, BQ / 16, NC>(dva, p, Ot, c0, lane);   // dV += P^T dO
            mma_frags_kn<T, SD, BQ / 16, NC>(dka, ds, Qt, c0, lane);  // dK += dS^T Q
        }
        __syncthreads();
    }
    if (!warp_live) return;
    // Ks and Vs are free now (the loop ended on a barrier): each warp stages its own rows.
    const float one[2] = {1.0f, 1.0f}, sc[2] = {scale, scale};
    const unsigned long long off = (unsigned long long)a * kstride + hk * D;
    store_rows<T, SD, NC>(Ks, warp * 16, dka, sc, dk + off, kstride, key0, c0, len, lane);
    store_rows<T, SD, NC>(Vs, warp * 16, dva, one, dv + off, kstride, key0, c0, len, lane);
}

// dQ of 64 FM queries of head blockIdx.y (16 FM per warp). grid (tiles, hq), block FA_THREADS;
// shared 2 (64 FM) + 2 FA_STAGES BC rows of (D + FA_PAD) values.
template <typename T, int D, int BC, int FM, bool CAP>
__device__ void flash_bwd_dq(T* dq, const T* q, const T* k, const T* v, const T* dout, const float* lse,
                             const float* Dsum, const unsigned int* tiles, unsigned int hq, unsigned int hkv,
                             float scale, unsigned int window, float cap) {
    constexpr int SD = D + FA_PAD, KT = D / 16, NB = BC / 8, NO = D / 8, WR = 16 * FM, BRF = 4 * WR;
    extern __shared__ __align__(16) unsigned char fa_smem[];
    T* Qs = reinterpret_cast<T*>(fa_smem);  // (BRF, SD)
    T* Os = Qs + BRF * SD;                  // dO: (BRF, SD)
    T* Ks = Os + BRF * SD;                  // (STAGES, BC, SD)
    T* Vs = Ks + FA_STAGES * BC * SD;       // (STAGES, BC, SD)
    const int a = tiles[3 * blockIdx.x], len = tiles[3 * blockIdx.x + 1], q0 = tiles[3 * blockIdx.x + 2];
    const unsigned int h = blockIdx.y, hk = h / (hq / hkv);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const unsigned long long qstride = (unsigned long long)hq * D, kstride = (unsigned long long)hkv * D;
    const unsigned long long qoff = (unsigned long long)a * qstride + h * D;
    const T* kb = k + (unsigned long long)a * kstride + hk * D;
    const T* vb = v + (unsigned long long)a * kstride + hk * D;
    const int w = fa_window(window);
    const int kend = min(len, q0 + BRF);
    const int ntiles = (kend + BC - 1) / BC;
    const int jstart = max(0, q0 - w + 1) / BC;
    const int row0 = q0 + warp * WR;
    const bool warp_live = row0 < len;
    const float sl2 = scale * FA_LOG2E;
    const FaCap fc = CAP ? fa_cap(scale, cap) : FaCap{0.0f, 0.0f};
    float lrow[FM][2], drow[FM][2];
#pragma unroll
    for (int f = 0; f < FM; ++f)
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const int row = row0 + 16 * f + g + 8 * i;
            const unsigned long long idx = (unsigned long long)(a + row) * hq + h;
            lrow[f][i] = row < len ? lse[idx] * FA_LOG2E : 0.0f;
            drow[f][i] = row < len ? Dsum[idx] : 0.0f;
        }

    load_rows<T, D, SD, BRF>(Qs, q + qoff, qstride, q0, len);
    load_rows<T, D, SD, BRF>(Os, dout + qoff, qstride, q0, len);
    {
        const int s0 = FA_STAGES == 1 ? 0 : (jstart & 1);
        load_rows<T, D, SD, BC>(Ks + s0 * BC * SD, kb, kstride, jstart * BC, len);
        load_rows<T, D, SD, BC>(Vs + s0 * BC * SD, vb, kstride, jstart * BC, len);
    }
    copies_commit();

    float dqa[FM][NO][4];
#pragma unroll
    for (int f = 0; f < FM; ++f)
#pragma unroll
        for (int i = 0; i < NO; ++i) dqa[f][i][0] = dqa[f][i][1] = dqa[f][i][2] = dqa[f][i][3] = 0.0f;

    for (int j = jstart; j < ntiles; ++j) {
        const int stage = FA_STAGES == 1 ? 0 : (j & 1);
        if (FA_STAGES == 1) {
            if (j > jstart) {
                load_rows<T, D, SD, BC>(Ks, kb, kstride, j * BC, len);
                load_rows<T, D, SD, BC>(Vs, vb, kstride, j * BC, len);
            }
            copies_wait<0>();
        } else if (j + 1 < ntiles) {
            const int next = (j + 1) & 1;
            load_rows<T, D, SD, BC>(Ks + next * BC * SD, kb, kstride, (j + 1) * BC, len);
            load_rows<T, D, SD, BC>(Vs + next * BC * SD, vb, kstride, (j + 1) * BC, len);
            copies_commit();
            copies_wait<1>();
        } else {
            copies_wait<0>();
        }
        __syncthreads();
        const int k0 = j * BC;
        if (warp_live && k0 <= row0 + WR - 1 && k0 + BC - 1 > row0 - w) {
            const T* Kt = Ks + stage * BC * SD;
            const T* Vt = Vs + stage * BC * SD;
            float p[FM][NB][4], ds[FM][NB][4];
#pragma unroll
            for (int f = 0; f < FM; ++f)
#pragma unroll
                for (int i = 0; i < NB; ++i) {
                    p[f][i][0] = p[f][i][1] = p[f][i][2] = p[f][i][3] = 0.0f;
                    ds[f][i][0] = ds[f][i][1] = ds[f][i][2] = ds[f][i][3] = 0.0f;
                }
            mma_rows_nk_fm<T, SD, KT, NB, FM>(p, Qs, warp * WR, Kt, 0, lane);   // S
            mma_rows_nk_fm<T, SD, KT, NB, FM>(ds, Os, warp * WR, Vt, 0, lane);  // dP
#pragma unroll
            for (int f = 0; f < FM; ++f) {
                const int frow0 = row0 + 16 * f;
                const bool mask =
                    k0 + BC - 1 > frow0 || k0 + BC > len || frow0 + 16 > len || k0 <= frow0 + 15 - w;
#pragma unroll
                for (int nt = 0; nt < NB; ++nt) {
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const int i = e >> 1;
                        const float th = CAP ? tanhf(p[f][nt][e] * fc.cs) : 0.0f;
                        float pv = fast_exp2((CAP ? fc.cl2 * th : p[f][nt][e] * sl2) - lrow[f][i]);
                        if (mask) {
                            const int key = k0 + nt * 8 + 2 * t + (e & 1), row = frow0 + g + 8 * i;
                            if (key > row || key >= len || row >= len || key <= row - w) pv = 0.0f;
                        }
                        ds[f][nt][e] = pv * (ds[f][nt][e] - drow[f][i]);
                        if (CAP) ds[f][nt][e] *= 1.0f - th * th;
                    }
                }
            }
            mma_frags_kn_fm<T, SD, BC / 16, NO, FM>(dqa, ds, Kt, 0, lane);  // dQ += dS K
        }
        __syncthreads();
    }
    if (!warp_live) return;
    const float sc[2] = {scale, scale};
#pragma unroll
    for (int f = 0; f < FM; ++f)
        store_rows<T, SD, NO>(Qs, warp * WR + 16 * f, dqa[f], sc, dq + qoff, qstride, row0 + 16 * f, 0, len, lane);
}

// Entry points per storage type and head dim, with the tile sizes each head dim uses: forward
// key tile and blocks of 16 queries per warp, dkv query tile and column chunk, dq key tile and
// blocks of 16 queries per warp. The host (src/cuda/flash.rs) reads the FLASH_DIMS and
// FLASH_CAP_DIMS lines below for the same numbers (grids and shared memory), so they are
// written only here. The soft-capped entry points (infix cap_, one more argument: the cap) are
// separate instantiations, so the uncapped kernels carry none of the cap's work or registers;
// they exist for the head dims of the models that cap their scores (Gemma 2: 256 and 128; 64 for small test models).
#define FLASH_ENTRIES(name, T, D, FWD_BC, FWD_FM, DKV_BQ, DKV_DC, DQ_BC, DQ_FM, CAP, CAP_PARAM, CAP_ARG)              \
    extern "C" __global__ void __launch_bounds__(FA_THREADS)                                                       \
        flash_fwd_##name##_d##D(T* out, float* lse, const T* q, const T* k, const T* v, const unsigned int* tiles, \
                                unsigned int hq, unsigned int hkv, float scale, unsigned int window CAP_PARAM) {   \
        flash_forward<T, D, FWD_BC, FWD_FM, CAP>(out, lse, q, k, v, tiles, hq, hkv, scale, window, CAP_ARG);         \
    }                                                                                                              \
    extern "C" __global__ void __launch_bounds__(FA_THREADS)                                                       \
        flash_bwd_dkv_##name##_d##D(T* dk, T* dv, const T* q, const T* k, const T* v, const T* dout,              \
                                    const float* lse, const float* Dsum, const unsigned int* tiles,                \
                                    unsigned int hq, unsigned int hkv, float scale, unsigned int window CAP_PARAM) { \
        flash_bwd_dkv<T, D, DKV_BQ, DKV_DC, CAP>(dk, dv, q, k, v, dout, lse, Dsum, tiles, hq, hkv, scale, window,  \
                                                 CAP_ARG);                                                          \
    }                                                                                                              \
    extern "C" __global__ void __launch_bounds__(FA_THREADS)                                                       \
        flash_bwd_dq_##name##_d##D(T* dq, const T* q, const T* k, const T* v, const T* dout, const float* lse,    \
                                   const float* Dsum, const unsigned int* tiles, unsigned int hq, unsigned int hkv, \
                                   float scale, unsigned int window CAP_PARAM) {                                   \
        flash_bwd_dq<T, D, DQ_BC, DQ_FM, CAP>(dq, q, k, v, dout, lse, Dsum, tiles, hq, hkv, scale, window, CAP_ARG);  \
    }

#define FA_NO_PARAM
#define FA_CAP_PARAM , float cap
#define FLASH(sfx, T, D, FWD_BC, FWD_FM, DKV_BQ, DKV_DC, DQ_BC, DQ_FM) \
    FLASH_ENTRIES(sfx, T, D, FWD_BC, FWD_FM, DKV_BQ, DKV_DC, DQ_BC, DQ_FM, false, FA_NO_PARAM, 0.0f)
#define FLASH_CAP(sfx, T, D, FWD_BC, FWD_FM, DKV_BQ, DKV_DC, DQ_BC, DQ_FM) \
    FLASH_ENTRIES(cap_##sfx, T, D, FWD_BC, FWD_FM, DKV_BQ, DKV_DC, DQ_BC, DQ_FM, true, FA_CAP_PARAM, cap)

#define FLASH_DIMS(sfx, T)                   \
    FLASH(sfx, T, 64, 64, 2, 64, 64, 32, 2)   \
    FLASH(sfx, T, 80, 64, 2, 32, 80, 32, 2)   \
    FLASH(sfx, T, 96, 64, 2, 32, 96, 32, 2)   \
    FLASH(sfx, T, 128, 64, 2, 64, 128, 32, 2) \
    FLASH(sfx, T, 256, 32, 1, 32, 128, 32, 1)

#define FLASH_CAP_DIMS(sfx, T)                   \
    FLASH_CAP(sfx, T, 64, 64, 2, 64, 64, 32, 2)   \
    FLASH_CAP(sfx, T, 128, 64, 1, 64, 128, 32, 1) \
    FLASH_CAP(sfx, T, 256, 32, 1, 32, 128, 32, 1)

FLASH_DIMS(bf16, bf16)
FLASH_DIMS(f16, f16)
FLASH_CAP_DIMS(bf16, bf16)
FLASH_CAP_DIMS(f16, f16)
