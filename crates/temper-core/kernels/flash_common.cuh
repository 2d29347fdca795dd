// Shared by the flash-attention kernels (flash_attention.cu on mma.sync, flash_hopper.cu on
// wgmma): tile constants, asynchronous copies, exp2, tensor-core fragments of mma.m16n8k16
// and the staged store of accumulator rows. Include after common.cuh.
#pragma once

#define FA_PAD 8  // elements of padding per shared row: 8 rows of an ldmatrix hit distinct banks
#define FA_LOG2E 1.4426950408889634f
#define FA_LN2 0.6931471805599453f
#define FA_THREADS 128
#define FA_BK 64  // keys per dkv block

// The sliding window as the kernels take it: query i sees key j iff i - w < j <= i. `window`
// 0 means none (then w is larger than any sequence, and i - w never excludes a key).
__device__ __forceinline__ int fa_window(unsigned int window) {
    return window == 0 || window > (1u << 30) ? (1 << 30) : (int)window;
}

#if __CUDA_ARCH__ >= 800
#define FA_STAGES 2  // tiles in shared memory at once: one in use, the next being copied
#else
#define FA_STAGES 1
#endif

// ---- shared memory, copies and tensor-core fragments ----

// The shared-window address of a pointer into shared memory. Through the intrinsic (not an
// opaque asm block) the compiler keeps addresses as 32-bit offsets and folds the constant parts.
__device__ __forceinline__ unsigned int smem_u32(const void* p) {
    return static_cast<unsigned int>(__cvta_generic_to_shared(p));
}

// 2^x as one MUFU.EX2 (denormal results flush to zero: they are below every probability that
// counts at 16-bit precision).
__device__ __forceinline__ float fast_exp2(float x) {
    float r;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
    return r;
}

// 16 bytes global -> shared, zeros when !valid (src must still be a mapped address).
__device__ __forceinline__ void copy16(void* dst, const void* src, bool valid) {
#if __CUDA_ARCH__ >= 800
    const int n = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(smem_u32(dst)), "l"(src), "r"(n));
#else
    *reinterpret_cast<uint4*>(dst) = valid ? *reinterpret_cast<const uint4*>(src) : make_uint4(0, 0, 0, 0);
#endif
}

// 4 bytes global -> shared, zero when !valid.
__device__ __forceinline__ void copy4(float* dst, const float* src, bool valid) {
#if __CUDA_ARCH__ >= 800
    const int n = valid ? 4 : 0;
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" ::"r"(smem_u32(dst)), "l"(src), "r"(n));
#else
    *dst = valid ? *src : 0.0f;
#endif
}

__device__ __forceinline__ void copies_commit() {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;");
#endif
}

// Waits until at most `pending` committed groups of this thread's copies are in flight.
template <int pending>
__device__ __forceinline__ void copies_wait() {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;" ::"n"(pending));
#endif
}

// Four 8x8 b16 matrices from shared memory; lane i gives the address of row i % 8 of matrix
// i / 8 and receives, of matrix j, row lane / 4, columns 2 (lane % 4) and the next in r[j]
// (transposed: rows 2 (lane % 4) and the next, column lane / 4).
__device__ __forceinline__ void ldsm4(unsigned int r[4], const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p)));
}
__device__ __forceinline__ void ldsm4_t(unsigned int r[4], const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p)));
}

// c (16x8, f32) += a (16x16) b (16x8). Fragments as PTX's mma.m16n8k16 lays them out, with
// g = lane / 4 and t = lane % 4: a = {(g, 2t..), (g+8, 2t..), (g, 2t+8..), (g+8, 2t+8..)},
// b = {(k 2t.., n g), (k 2t+8.., n g)}, c = {(g, 2t), (g, 2t+1), (g+8, 2t), (g+8, 2t+1)}.
__device__ __forceinline__ void mma16816(bf16, float c[4], const unsigned int a[4], unsigned int b0,
                                         unsigned int b1) {
#if __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
    __trap();  // bf16 needs sm_80; the host never launches bf16 kernels below it
#endif
}
__device__ __forceinline__ void mma16816(f16, float c[4], const unsigned int a[4], unsigned int b0,
                                         unsigned int b1) {
#if __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
    // Turing: the k16 product is two k8 products, over a's first and second register pairs.
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(b0));
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[2]), "r"(a[3]), "r"(b1));
#endif
}

// Two f32 as one register of two 16-bit values, lo in the low half (round to nearest even).
__device__ __forceinline__ unsigned int pack2(bf16, float lo, float hi) {
#if __CUDA_ARCH__ >= 800
    unsigned int r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
#else
    return (unsigned int)from_f32<bf16>(lo).bits | ((unsigned int)from_f32<bf16>(hi).bits << 16);
#endif
}
__device__ __forceinline__ unsigned int pack2(f16, float lo, float hi) {
#if __CUDA_ARCH__ >= 800
    unsigned int r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
#else
    return (unsigned int)from_f32<f16>(lo).bits | ((unsigned int)from_f32<f16>(hi).bits << 16);
#endif
}

// Four accumulator fragments of a 16 x 16 block (n tiles 2kk and 2kk+1), as the A operand of
// the next product (the FlashAttention-2 register reuse of P).
template <typename T>
__device__ __forceinline__ void c_to_a(unsigned int a[4], const float c0[4], const float c1[4]) {
    a[0] = pack2(T{}, c0[0], c0[1]);
    a[1] = pack2(T{}, c0[2], c0[3]);
    a[2] = pack2(T{}, c1[0], c1[1]);
    a[3] = pack2(T{}, c1[2], c1[3]);
}

// Row addresses each lane hands to ldsm4 for a 16 x 16 block at (r0, c0) of a shared tile
// with row stride SD: as an A operand (rows = m), as a B operand stored (n, k), and as a B
// operand stored (k, n) (read transposed).
template <typename T, int SD>
__device__ __forceinline__ const T* frag_a(const T* s, int r0, int c0, int lane) {
    return s + (r0 + (lane & 15)) * SD + c0 + (lane >> 4) * 8;
}
template <typename T, int SD>
__device__ __forceinline__ const T* frag_b_nk(const T* s, int n0, int k0, int lane) {
    return s + (n0 + (lane & 7) + ((lane >> 4) << 3)) * SD + k0 + ((lane >> 3) & 1) * 8;
}
template <typename T, int SD>
__device__ __forceinline__ const T* frag_b_kn(const T* s, int k0, int n0, int lane) {
    return s + (k0 + (lane & 7) + ((lane >> 3) & 1) * 8) * SD + n0 + (lane >> 4) * 8;
}

// acc (16 x 8*NT) += A (16 x 16*KT, rows r0.. of tile a) B^T, B stored (n, k) in tile b from
// row n0 (A and B both read from shared memory along k).
template <typename T, int SD, int KT, int NT>
__device__ __forceinline__ void mma_rows_nk(float acc[NT][4], const T* a, int r0, const T* b, int n0, int lane) {
#pragma unroll
    for (int kk = 0; kk < KT; ++kk) {
        unsigned int af[4];
        ldsm4(af, frag_a<T, SD>(a, r0, kk * 16, lane));
#pragma unroll
        for (int np = 0; np < NT / 2; ++np) {
            unsigned int bf[4];
            ldsm4(bf, frag_b_nk<T, SD>(b, n0 + np * 16, kk * 16, lane));
            mma16816(T{}, acc[2 * np], af, bf[0], bf[1]);
            mma16816(T{}, acc[2 * np + 1], af, bf[2], bf[3]);
        }
    }
}

// acc (16 x 8*NT) += P (16 x 16*KT, accumulator fragments) B, B stored (k, n) in tile b from
// row 0, columns c0.. (read transposed).
template <typename T, int SD, int KT, int NT>
__device__ __forceinline__ void mma_frags_kn(float acc[NT][4], const float p[2 * KT][4], const T* b, int c0, int lane) {
#pragma unroll
    for (int kk = 0; kk < KT; ++kk) {
        unsigned int pa[4];
        c_to_a<T>(pa, p[2 * kk], p[2 * kk + 1]);
#pragma unroll
        for (int dp = 0; dp < NT / 2; ++dp) {
            unsigned int bf[4];
            ldsm4_t(bf, frag_b_kn<T, SD>(b, kk * 16, c0 + dp * 16, lane));
            mma16816(T{}, acc[2 * dp], pa, bf[0], bf[1]);
            mma16816(T{}, acc[2 * dp + 1], pa, bf[2], bf[3]);
        }
    }
}

// FM row blocks of 16 at once: acc[f] (16 x 8*NT) += A (rows r0 + 16 f.., 16*KT columns) B^T,
// B stored (n, k) from row n0. Each B fragment read from shared memory serves all FM blocks.
template <typename T, int SD, int KT, int NT, int FM>
__device__ __forceinline__ void mma_rows_nk_fm(float acc[FM][NT][4], const T* a, int r0, const T* b, int n0,
                                               int lane) {
#pragma unroll
    for (int kk = 0; kk < KT; ++kk) {
        unsigned int af[FM][4];
#pragma unroll
        for (int f = 0; f < FM; ++f) ldsm4(af[f], frag_a<T, SD>(a, r0 + 16 * f, kk * 16, lane));
#pragma unroll
        for (int np = 0; np < NT / 2; ++np) {
            unsigned int bf[4];
            ldsm4(bf, frag_b_nk<T, SD>(b, n0 + np * 16, kk * 16, lane));
#pragma unroll
            for (int f = 0; f < FM; ++f) {
                mma16816(T{}, acc[f][2 * np], af[f], bf[0], bf[1]);
                mma16816(T{}, acc[f][2 * np + 1], af[f], bf[2], bf[3]);
            }
        }
    }
}

// FM row blocks of 16 at once: acc[f] (16 x 8*NT) += P[f] (16 x 16*KT, accumulator fragments) B,
// B stored (k, n) from row 0, columns c0.. (read transposed, each fragment once for all FM).
template <typename T, int SD, int KT, int NT, int FM>
__device__ __forceinline__ void mma_frags_kn_fm(float acc[FM][NT][4], const float p[FM][2 * KT][4], const T* b,
                                                int c0, int lane) {
#pragma unroll
    for (int kk = 0; kk < KT; ++kk) {
        unsigned int pa[FM][4];
#pragma unroll
        for (int f = 0; f < FM; ++f) c_to_a<T>(pa[f], p[f][2 * kk], p[f][2 * kk + 1]);
#pragma unroll
        for (int dp = 0; dp < NT / 2; ++dp) {
            unsigned int bf[4];
            ldsm4_t(bf, frag_b_kn<T, SD>(b, kk * 16, c0 + dp * 16, lane));
#pragma unroll
            for (int f = 0; f < FM; ++f) {
                mma16816(T{}, acc[f][2 * dp], pa[f], bf[0], bf[1]);
                mma16816(T{}, acc[f][2 * dp + 1], pa[f], bf[2], bf[3]);
            }
        }
    }
}

// ROWS rows of D values from global rows r0.. (row i at base + i * stride) into a shared tile
// with row stride SD; rows at or past len are zeros.
template <typename T, int D, int SD, int ROWS>
__device__ __forceinline__ void load_rows(T* s, const T* base, unsigned long long stride, int r0, int len) {
    constexpr int CH = D / 8;  // 16-byte chunks per row
#pragma unroll 4
    for (int i = threadIdx.x; i < ROWS * CH; i += FA_THREADS) {
        const int r = i / CH, c = i % CH;
        const bool ok = r0 + r < len;
        copy16(s + r * SD + c * 8, base + (ok ? (unsigned long long)(r0 + r) * stride : 0ull) + c * 8, ok);
    }
}

// Writes 16 rows x (8*NT) columns of accumulators, times mul, into a warp's own rows of a
// shared tile (row stride SD) from row r0; then the warp copies the rows below len to global
// rows (row i at base + i * stride, columns c0..) with 16-byte stores.
template <typename T, int SD, int NT>
__device__ __forceinline__ void store_rows(T* s, int r0, const float acc[NT][4], const float mul[2], T* base,
                                          unsigned long long stride, int grow0, int c0, int len, int lane) {
    const int g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
        const int col = nt * 8 + 2 * t;
        *reinterpret_cast<unsigned int*>(s + (r0 + g) * SD + col) = pack2(T{}, acc[nt][0] * mul[0], acc[nt][1] * mul[0]);
        *reinterpret_cast<unsigned int*>(s + (r0 + g + 8) * SD + col) =
            pack2(T{}, acc[nt][2] * mul[1], acc[nt][3] * mul[1]);
    }
    __syncwarp();
    constexpr int CH = NT;  // 8 values = 16 bytes per chunk
    for (int i = lane; i < 16 * CH; i += 32) {
        const int r = i / CH, c = i % CH;
        if (grow0 + r < len)
            *reinterpret_cast<uint4*>(base + (unsigned long long)(grow0 + r) * stride + c0 + c * 8) =
                *reinterpret_cast<const uint4*>(s + (r0 + r) * SD + c * 8);
    }
}
