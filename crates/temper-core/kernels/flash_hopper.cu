// Flash attention on Hopper's warpgroup tensor cores (wgmma): the kernels of
// flash_attention.cu, same algorithm, arguments (the sliding window included) and layouts, for head dims 64 and 128 on
// sm_90 (H100, H200). Compiled for compute_90a only; the host (src/cuda/flash.rs) uses these
// entry points in place of the mma.sync ones there, and falls back to those elsewhere.
//
// Each block is one warpgroup (four warps, 128 threads) that owns 64 rows of the product it
// accumulates; warp w holds rows 16w.. in the mma.m16n8 accumulator layout, so the softmax,
// masks and stores are those of flash_attention.cu with one block of 16 rows per warp.
// Operands in shared memory are read by the tensor cores directly (no ldmatrix; the tiles'
// swizzled layout is described at tile_off below). P and dS go from the accumulators to the A
// operand in registers, as in FlashAttention-2.
//
// Each iteration issues its products, waits for them, then does the softmax: the overlap of
// tensor cores and ALU comes from the second block each SM holds (shared memory and registers
// are sized for two).
#include "common.cuh"
#include "flash_common.cuh"

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)

// ---- warpgroup products ----

// Tiles in shared memory, ROWS rows of D values, are stored as 64-column halves of ROWS rows of
// 128 bytes, the 16-byte chunks of row r permuted by XOR with r % 8: the 128-byte swizzle the
// tensor cores undo as they read, which spreads the eight rows of a chunk column over all
// banks (unswizzled 8 x 8 blocks were 1.7x slower for their bank conflicts). A tile serves as a
// K-major operand (rows are M or N, columns K: S = Q K^T) and as an MN-major one (rows are K,
// columns N: O += P V), so nothing is transposed. Tiles start at multiples of 1024 bytes.

// Element offset of chunk c (8 values) of row r.
template <int ROWS>
__device__ __forceinline__ int tile_off(int r, int c) {
    return (c >> 3) * ROWS * 64 + r * 64 + (((c & 7) ^ (r & 7)) << 3);
}

// A shared-memory matrix descriptor with the 128-byte swizzle: start address, then the byte
// distances between swizzle atoms adjacent along K (leading) and along M or N (stride), as in
// PTX's canonical layouts.
__device__ __forceinline__ unsigned long long wg_desc(const void* p, unsigned int lbo, unsigned int sbo) {
    return (unsigned long long)((smem_u32(p) & 0x3FFFF) >> 4) | ((unsigned long long)(lbo >> 4) << 16) |
           ((unsigned long long)(sbo >> 4) << 32) | (1ull << 62);
}

// K-major operand: rows m0.. (a multiple of 8) of a ROWS-row tile, columns 16 kk.. (k-step kk).
// Within a 128-byte line the k-step moves the start by 32 bytes; the swizzle is applied to the
// addresses the tensor cores form, so the atoms (8 rows, 1024 bytes) stay aligned.
template <int ROWS, typename T>
__device__ __forceinline__ unsigned long long desc_k(const T* s, int m0, int kk) {
    return wg_desc(s + (kk >> 2) * ROWS * 64 + m0 * 64 + (kk & 3) * 16, 16, 1024);
}

// MN-major operand: rows 16 kk.. of a ROWS-row tile are K, columns from c0 (a multiple of 64) N.
template <int ROWS, typename T>
__device__ __forceinline__ unsigned long long desc_mn(const T* s, int kk, int c0) {
    return wg_desc(s + (c0 >> 6) * ROWS * 64 + kk * 16 * 64, ROWS * 128, 1024);
}

__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
template <int pending>
__device__ __forceinline__ void wg_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(pending) : "memory");
}
// This thread's completed shared-memory writes (cp.async included) made visible to the tensor
// cores' reads, which go through the async proxy; a barrier must follow.
__device__ __forceinline__ void fence_shared_async() { asm volatile("fence.proxy.async.shared::cta;" ::: "memory"); }

// Keeps the compiler from moving accumulators across the asynchronous window of a product.
template <int N>
__device__ __forceinline__ void pin(float (&d)[N][4]) {
#pragma unroll
    for (int i = 0; i < N; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) asm volatile("" : "+f"(d[i][e])::"memory");
}

// d (64 x N, f32) (+)= A B with A (64 x 16) and B (16 x N) both K-major in shared memory
// (wgmma_ss; `accumulate` 0 overwrites d), or A in registers (the m16n8k16 A fragments of the
// warp's 16 rows) and B MN-major in shared memory (wgmma_rs_tb, always accumulating).
__device__ __forceinline__ void wgmma_ss(float (&d)[8][4], bf16, unsigned long long da, unsigned long long db, int accumulate) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
        "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}, %32, %33, p, 1, 1, 0, 0;\n}\n"
        : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3])
        : "l"(da), "l"(db), "r"(accumulate));
}

__device__ __forceinline__ void wgmma_ss(float (&d)[8][4], f16, unsigned long long da, unsigned long long db, int accumulate) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 "
        "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}, %32, %33, p, 1, 1, 0, 0;\n}\n"
        : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3])
        : "l"(da), "l"(db), "r"(accumulate));
}

__device__ __forceinline__ void wgmma_rs_tb(float (&d)[8][4], bf16, const unsigned int (&a)[4], unsigned long long db) {
    asm volatile(
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
        "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}, {%32,%33,%34,%35}, %36, 1, 1, 1, 1;\n"
        : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db));
}

__device__ __forceinline__ void wgmma_rs_tb(float (&d)[8][4], f16, const unsigned int (&a)[4], unsigned long long db) {
    asm volatile(
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 "
        "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}, {%32,%33,%34,%35}, %36, 1, 1, 1, 1;\n"
        : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db));
}

__device__ __forceinline__ void wgmma_ss(float (&d)[16][4], bf16, unsigned long long da, unsigned long long db, int accumulate) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
        "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}, %64, %65, p, 1, 1, 0, 0;\n}\n"
        : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3]), "+f"(d[8][0]), "+f"(d[8][1]), "+f"(d[8][2]), "+f"(d[8][3]), "+f"(d[9][0]), "+f"(d[9][1]), "+f"(d[9][2]), "+f"(d[9][3]), "+f"(d[10][0]), "+f"(d[10][1]), "+f"(d[10][2]), "+f"(d[10][3]), "+f"(d[11][0]), "+f"(d[11][1]), "+f"(d[11][2]), "+f"(d[11][3]), "+f"(d[12][0]), "+f"(d[12][1]), "+f"(d[12][2]), "+f"(d[12][3]), "+f"(d[13][0]), "+f"(d[13][1]), "+f"(d[13][2]), "+f"(d[13][3]), "+f"(d[14][0]), "+f"(d[14][1]), "+f"(d[14][2]), "+f"(d[14][3]), "+f"(d[15][0]), "+f"(d[15][1]), "+f"(d[15][2]), "+f"(d[15][3])
        : "l"(da), "l"(db), "r"(accumulate));
}

__device__ __forceinline__ void wgmma_ss(float (&d)[16][4], f16, unsigned long long da, unsigned long long db, int accumulate) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 "
        "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}, %64, %65, p, 1, 1, 0, 0;\n}\n"
        : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3]), "+f"(d[8][0]), "+f"(d[8][1]), "+f"(d[8][2]), "+f"(d[8][3]), "+f"(d[9][0]), "+f"(d[9][1]), "+f"(d[9][2]), "+f"(d[9][3]), "+f"(d[10][0]), "+f"(d[10][1]), "+f"(d[10][2]), "+f"(d[10][3]), "+f"(d[11][0]), "+f"(d[11][1]), "+f"(d[11][2]), "+f"(d[11][3]), "+f"(d[12][0]), "+f"(d[12][1]), "+f"(d[12][2]), "+f"(d[12][3]), "+f"(d[13][0]), "+f"(d[13][1]), "+f"(d[13][2]), "+f"(d[13][3]), "+f"(d[14][0]), "+f"(d[14][1]), "+f"(d[14][2]), "+f"(d[14][3]), "+f"(d[15][0]), "+f"(d[15][1]), "+f"(d[15][2]), "+f"(d[15][3])
        : "l"(da), "l"(db), "r"(accumulate));
}

__device__ __forceinline__ void wgmma_rs_tb(float (&d)[16][4], bf16, const unsigned int (&a)[4], unsigned long long db) {
    asm volatile(
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
        "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}, {%64,%65,%66,%67}, %68, 1, 1, 1, 1;\n"
        : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3]), "+f"(d[8][0]), "+f"(d[8][1]), "+f"(d[8][2]), "+f"(d[8][3]), "+f"(d[9][0]), "+f"(d[9][1]), "+f"(d[9][2]), "+f"(d[9][3]), "+f"(d[10][0]), "+f"(d[10][1]), "+f"(d[10][2]), "+f"(d[10][3]), "+f"(d[11][0]), "+f"(d[11][1]), "+f"(d[11][2]), "+f"(d[11][3]), "+f"(d[12][0]), "+f"(d[12][1]), "+f"(d[12][2]), "+f"(d[12][3]), "+f"(d[13][0]), "+f"(d[13][1]), "+f"(d[13][2]), "+f"(d[13][3]), "+f"(d[14][0]), "+f"(d[14][1]), "+f"(d[14][2]), "+f"(d[14][3]), "+f"(d[15][0]), "+f"(d[15][1]), "+f"(d[15][2]), "+f"(d[15][3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db));
}

__device__ __forceinline__ void wgmma_rs_tb(float (&d)[16][4], f16, const unsigned int (&a)[4], unsigned long long db) {
    asm volatile(
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 "
        "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}, {%64,%65,%66,%67}, %68, 1, 1, 1, 1;\n"
        : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3]), "+f"(d[8][0]), "+f"(d[8][1]), "+f"(d[8][2]), "+f"(d[8][3]), "+f"(d[9][0]), "+f"(d[9][1]), "+f"(d[9][2]), "+f"(d[9][3]), "+f"(d[10][0]), "+f"(d[10][1]), "+f"(d[10][2]), "+f"(d[10][3]), "+f"(d[11][0]), "+f"(d[11][1]), "+f"(d[11][2]), "+f"(d[11][3]), "+f"(d[12][0]), "+f"(d[12][1]), "+f"(d[12][2]), "+f"(d[12][3]), "+f"(d[13][0]), "+f"(d[13][1]), "+f"(d[13][2]), "+f"(d[13][3]), "+f"(d[14][0]), "+f"(d[14][1]), "+f"(d[14][2]), "+f"(d[14][3]), "+f"(d[15][0]), "+f"(d[15][1]), "+f"(d[15][2]), "+f"(d[15][3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db));
}

// ---- tiles ----

// ROWS rows of D values from global rows r0.. (row i at base + i * stride) into a tile; rows at
// or past len are zeros. Consecutive threads take consecutive chunks of a row, so a warp reads
// whole rows and the chunks of a line land on distinct banks. A thread's rows are RSTEP apart,
// a multiple of 8, so its chunk's swizzled column is the same in every row it copies.
template <typename T, int D, int ROWS>
__device__ __forceinline__ void load_tile(T* s, const T* base, unsigned long long stride, int r0, int len) {
    constexpr int CH = D / 8, RSTEP = FA_THREADS / CH, PASSES = ROWS / RSTEP;
    static_assert(RSTEP % 8 == 0 && ROWS % RSTEP == 0, "rows per pass: a multiple of 8 dividing the tile");
    const int c = threadIdx.x % CH, r = threadIdx.x / CH;
    T* dst = s + tile_off<ROWS>(r, c);
    const T* src = base + (unsigned long long)(r0 + r) * stride + c * 8;
    const unsigned long long step = RSTEP * stride;
#pragma unroll
    for (int i = 0; i < PASSES; ++i) {
        const bool ok = r0 + r + i * RSTEP < len;
        copy16(dst + i * RSTEP * 64, ok ? src : base, ok);
        src += step;
    }
}

// Starts the copies of key tile j + 1 (if any) into the stage after tile j's, then waits until
// tile j has landed and is visible to the tensor cores, for every thread of the block.
template <typename T, int D, int BC>
__device__ __forceinline__ void next_kv_tile(T* Ks, T* Vs, const T* kb, const T* vb, unsigned long long kstride,
                                             int j, int ntiles, int len) {
    const int next = (j + 1) & 1;
    if (j + 1 < ntiles) {
        load_tile<T, D, BC>(Ks + next * BC * D, kb, kstride, (j + 1) * BC, len);
        load_tile<T, D, BC>(Vs + next * BC * D, vb, kstride, (j + 1) * BC, len);
        copies_commit();
        copies_wait<1>();
    } else {
        copies_wait<0>();
    }
    fence_shared_async();
    __syncthreads();
}

// Products of a 64-row A tile (K-major, k-steps over D) and a ROWS-row B tile: acc = A B^T.
template <typename T, int D, int ROWS, int N>
__device__ __forceinline__ void product_nt(float (&acc)[N][4], const T* a, const T* b) {
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) wgmma_ss(acc, T{}, desc_k<64>(a, 0, kk), desc_k<ROWS>(b, 0, kk), kk > 0);
}

// acc (64 x D) += P (64 x 16 KS, A fragments) B, B the ROWS-row tile (rows K, columns D).
template <typename T, int KS, int ROWS, int N>
__device__ __forceinline__ void product_pv(float (&acc)[N][4], const unsigned int (&pa)[KS][4], const T* b) {
#pragma unroll
    for (int kk = 0; kk < KS; ++kk) wgmma_rs_tb(acc, T{}, pa[kk], desc_mn<ROWS>(b, kk, 0));
}

// Accumulator fragments (64 x 16 KS) as KS A fragments.
template <typename T, int KS>
__device__ __forceinline__ void to_a(unsigned int (&pa)[KS][4], const float (&c)[2 * KS][4]) {
#pragma unroll
    for (int kk = 0; kk < KS; ++kk) c_to_a<T>(pa[kk], c[2 * kk], c[2 * kk + 1]);
}

// The online-softmax update of one tile's scores s (the warp's 16 queries x BC keys from k0):
// masks, the running max m and sum l, O rescaled, P as A fragments for O += P V.
template <typename T, int D, int BC>
__device__ __forceinline__ void softmax_tile(float (&s)[BC / 8][4], unsigned int (&pa)[BC / 16][4],
                                             float (&o)[D / 8][4], float (&m)[2], float (&l)[2], int k0, int row0,
                                             int len, int w, float sl2, int g, int t) {
    // The max is taken over the raw scores (scaling by sl2 > 0 keeps the order), so each
    // probability is one fused multiply-add and one exp2.
    const bool mask = k0 + BC - 1 > row0 || k0 + BC > len || k0 <= row0 + 15 - w;
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int nt = 0; nt < BC / 8; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            if (mask) {
                const int key = k0 + nt * 8 + 2 * t + (e & 1), row = row0 + g + 8 * (e >> 1);
                if (key > row || key >= len || key <= row - w) s[nt][e] = -INFINITY;
            }
            mx[e >> 1] = fmaxf(mx[e >> 1], s[nt][e]);
        }
    }
    float base[2], corr[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 1));
        mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 2));
        const float nm = fmaxf(m[i], mx[i] * sl2);
        base[i] = nm == -INFINITY ? 0.0f : nm;
        corr[i] = fast_exp2(m[i] - base[i]);
        m[i] = nm;
        l[i] *= corr[i];
    }
#pragma unroll
    for (int nt = 0; nt < BC / 8; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const float p = fast_exp2(fmaf(s[nt][e], sl2, -base[e >> 1]));
            s[nt][e] = p;
            l[e >> 1] += p;
        }
    }
#pragma unroll
    for (int i = 0; i < D / 8; ++i) {
        o[i][0] *= corr[0];
        o[i][1] *= corr[0];
        o[i][2] *= corr[1];
        o[i][3] *= corr[1];
    }
    to_a<T, BC / 16>(pa, s);
}

// ---- forward ----

// grid (tiles, hq), block FA_THREADS; shared (64 + 4 BC) D values: Q, then two stages of K and V.
template <typename T, int D, int BC>
__device__ void flash_forward_wg(T* out, float* lse, const T* q, const T* k, const T* v, const unsigned int* tiles,
                                 unsigned int hq, unsigned int hkv, float scale, unsigned int window) {
    constexpr int NB = BC / 8, NO = D / 8, SD = D + FA_PAD;
    extern __shared__ __align__(1024) unsigned char fa_smem[];
    T* Qs = reinterpret_cast<T*>(fa_smem);  // (64, D)
    T* Ks = Qs + 64 * D;                    // (2, BC, D)
    T* Vs = Ks + 2 * BC * D;                // (2, BC, D)
    const int a = tiles[3 * blockIdx.x], len = tiles[3 * blockIdx.x + 1], q0 = tiles[3 * blockIdx.x + 2];
    const unsigned int h = blockIdx.y, hk = h / (hq / hkv);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const unsigned long long qstride = (unsigned long long)hq * D, kstride = (unsigned long long)hkv * D;
    const T* kb = k + (unsigned long long)a * kstride + hk * D;
    const T* vb = v + (unsigned long long)a * kstride + hk * D;
    const int w = fa_window(window);
    const int kend = min(len, q0 + 64);
    const int ntiles = (kend + BC - 1) / BC;
    const int jstart = max(0, q0 - w + 1) / BC;  // the first key tile inside the first row's window
    const int row0 = q0 + warp * 16;  // the warp's first query
    const float sl2 = scale * FA_LOG2E;

    load_tile<T, D, 64>(Qs, q + (unsigned long long)a * qstride + h * D, qstride, q0, len);
    load_tile<T, D, BC>(Ks + (jstart & 1) * BC * D, kb, kstride, jstart * BC, len);
    load_tile<T, D, BC>(Vs + (jstart & 1) * BC * D, vb, kstride, jstart * BC, len);
    copies_commit();

    float o[NO][4];
#pragma unroll
    for (int i = 0; i < NO; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};

    for (int j = jstart; j < ntiles; ++j) {
        const int stage = j & 1;
        next_kv_tile<T, D, BC>(Ks, Vs, kb, vb, kstride, j, ntiles, len);
        const T* Kt = Ks + stage * BC * D;
        const T* Vt = Vs + stage * BC * D;
        const int k0 = j * BC;
        float s[NB][4];
        wg_fence();
        product_nt<T, D, BC>(s, Qs, Kt);
        wg_commit();
        wg_wait<0>();
        pin(s);
        unsigned int pa[BC / 16][4];
        softmax_tile<T, D, BC>(s, pa, o, m, l, k0, row0, len, w, sl2, g, t);
        wg_fence();
        product_pv<T, BC / 16, BC>(o, pa, Vt);
        wg_commit();
        wg_wait<0>();
        pin(o);
        __syncthreads();  // every product has read this stage before it is refilled
    }
    float inv[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        float li = l[i];
        li += __shfl_xor_sync(0xffffffffu, li, 1);
        li += __shfl_xor_sync(0xffffffffu, li, 2);
        inv[i] = 1.0f / li;
        const int row = row0 + g + 8 * i;
        if (t == 0 && row < len) lse[(unsigned long long)(a + row) * hq + h] = (m[i] + log2f(li)) * FA_LN2;
    }
    if (row0 >= len) return;
    // The stages are free (the loop ended on a barrier): each warp stages its rows there.
    store_rows<T, SD, NO>(Ks, warp * 16, o, inv, out + (unsigned long long)a * qstride + h * D, qstride, row0, 0,
                          len, lane);
}

// ---- backward ----

// dK and dV of FA_BK keys of kv head blockIdx.y. grid (tiles, hkv), block FA_THREADS; shared
// (2 FA_BK + 4 BQ) D values (K, V, then two stages of Q and dO), then 4 BQ floats (lse, Dsum).
template <typename T, int D, int BQ>
__device__ void flash_bwd_dkv_wg(T* dk, T* dv, const T* q, const T* k, const T* v, const T* dout, const float* lse,
                                 const float* Dsum, const unsigned int* tiles, unsigned int hq, unsigned int hkv,
                                 float scale, unsigned int window) {
    constexpr int NQ = BQ / 8, NC = D / 8, SD = D + FA_PAD;
    extern __shared__ __align__(1024) unsigned char fa_smem[];
    T* Ks = reinterpret_cast<T*>(fa_smem);  // (BK, D)
    T* Vs = Ks + FA_BK * D;                 // (BK, D)
    T* Qs = Vs + FA_BK * D;                 // (2, BQ, D)
    T* Os = Qs + 2 * BQ * D;                // dO: (2, BQ, D)
    float* Ls = reinterpret_cast<float*>(Os + 2 * BQ * D);  // lse: (2, BQ)
    float* Ds = Ls + 2 * BQ;                                // Dsum: (2, BQ)
    const int a = tiles[3 * blockIdx.x], len = tiles[3 * blockIdx.x + 1], k0 = tiles[3 * blockIdx.x + 2];
    const unsigned int hk = blockIdx.y, group = hq / hkv;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const unsigned long long qstride = (unsigned long long)hq * D, kstride = (unsigned long long)hkv * D;
    const int key0 = k0 + warp * 16;  // the warp's first key
    const float sl2 = scale * FA_LOG2E;
    const int w = fa_window(window);
    const int first_q = (k0 / BQ) * BQ;  // queries before the block's first key see none of its keys
    const int qend = min(len, k0 + FA_BK - 1 + w);  // nor do queries from qend on (the window)
    const int nq = max(0, (qend - first_q + BQ - 1) / BQ);
    const int iters = (int)group * nq;

    auto load_iter = [&](int it, int st) {
        const unsigned int h = hk * group + it / nq;
        const int qi = first_q + (it % nq) * BQ;
        const unsigned long long off = (unsigned long long)a * qstride + h * D;
        load_tile<T, D, BQ>(Qs + st * BQ * D, q + off, qstride, qi, len);
        load_tile<T, D, BQ>(Os + st * BQ * D, dout + off, qstride, qi, len);
        if (threadIdx.x < BQ) {
            const int r = qi + threadIdx.x;
            const bool ok = r < len;
            const unsigned long long idx = ok ? (unsigned long long)(a + r) * hq + h : 0ull;
            copy4(Ls + st * BQ + threadIdx.x, lse + idx, ok);
            copy4(Ds + st * BQ + threadIdx.x, Dsum + idx, ok);
        }
    };

    load_tile<T, D, FA_BK>(Ks, k + (unsigned long long)a * kstride + hk * D, kstride, k0, len);
    load_tile<T, D, FA_BK>(Vs, v + (unsigned long long)a * kstride + hk * D, kstride, k0, len);
    if (iters > 0) load_iter(0, 0);
    copies_commit();

    float dka[NC][4], dva[NC][4];
#pragma unroll
    for (int i = 0; i < NC; ++i) {
        dka[i][0] = dka[i][1] = dka[i][2] = dka[i][3] = 0.0f;
        dva[i][0] = dva[i][1] = dva[i][2] = dva[i][3] = 0.0f;
    }

    for (int it = 0; it < iters; ++it) {
        const int stage = it & 1;
        if (it + 1 < iters) {
            load_iter(it + 1, stage ^ 1);
            copies_commit();
            copies_wait<1>();
        } else {
            copies_wait<0>();
        }
        fence_shared_async();
        __syncthreads();
        const int qi = first_q + (it % nq) * BQ;
        const T* Qt = Qs + stage * BQ * D;
        const T* Ot = Os + stage * BQ * D;
        const float* Lt = Ls + stage * BQ;
        const float* Dt = Ds + stage * BQ;
        float p[NQ][4], ds[NQ][4];
        wg_fence();
        product_nt<T, D, BQ>(p, Ks, Qt);   // S^T (keys, queries)
        product_nt<T, D, BQ>(ds, Vs, Ot);  // dP^T
        wg_commit();
        wg_wait<0>();
        pin(p);
        pin(ds);
        const bool mask = qi < key0 + 15 || qi + BQ > len || qi + BQ - 1 >= key0 + w;
#pragma unroll
        for (int nt = 0; nt < NQ; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int col = nt * 8 + 2 * t + (e & 1);
                float pv = fast_exp2(p[nt][e] * sl2 - Lt[col] * FA_LOG2E);
                if (mask) {
                    const int query = qi + col, key = key0 + g + 8 * (e >> 1);
                    if (query < key || query >= len || query >= key + w) pv = 0.0f;
                }
                p[nt][e] = pv;
                ds[nt][e] = pv * (ds[nt][e] - Dt[col]);
            }
        }
        unsigned int pa[BQ / 16][4], dsa[BQ / 16][4];
        to_a<T, BQ / 16>(pa, p);
        to_a<T, BQ / 16>(dsa, ds);
        wg_fence();
        product_pv<T, BQ / 16, BQ>(dva, pa, Ot);   // dV += P^T dO
        product_pv<T, BQ / 16, BQ>(dka, dsa, Qt);  // dK += dS^T Q
        wg_commit();
        wg_wait<0>();
        pin(dva);
        pin(dka);
        __syncthreads();
    }
    if (key0 >= len) return;
    // The query stages are free (the loop ended on a barrier): each warp stages its own rows.
    const float one[2] = {1.0f, 1.0f}, sc[2] = {scale, scale};
    const unsigned long long off = (unsigned long long)a * kstride + hk * D;
    store_rows<T, SD, NC>(Qs, warp * 16, dka, sc, dk + off, kstride, key0, 0, len, lane);
    store_rows<T, SD, NC>(Qs, 64 + warp * 16, dva, one, dv + off, kstride, key0, 0, len, lane);
}

// dQ of 64 queries of head blockIdx.y. grid (tiles, hq), block FA_THREADS; shared (128 + 4 BC)
// D values: Q, dO, then two stages of K and V.
template <typename T, int D, int BC>
__device__ void flash_bwd_dq_wg(T* dq, const T* q, const T* k, const T* v, const T* dout, const float* lse,
                                const float* Dsum, const unsigned int* tiles, unsigned int hq, unsigned int hkv,
                                float scale, unsigned int window) {
    constexpr int NB = BC / 8, NO = D / 8, SD = D + FA_PAD;
    extern __shared__ __align__(1024) unsigned char fa_smem[];
    T* Qs = reinterpret_cast<T*>(fa_smem);  // (64, D)
    T* Os = Qs + 64 * D;                    // dO: (64, D)
    T* Ks = Os + 64 * D;                    // (2, BC, D)
    T* Vs = Ks + 2 * BC * D;                // (2, BC, D)
    const int a = tiles[3 * blockIdx.x], len = tiles[3 * blockIdx.x + 1], q0 = tiles[3 * blockIdx.x + 2];
    const unsigned int h = blockIdx.y, hk = h / (hq / hkv);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const unsigned long long qstride = (unsigned long long)hq * D, kstride = (unsigned long long)hkv * D;
    const unsigned long long qoff = (unsigned long long)a * qstride + h * D;
    const T* kb = k + (unsigned long long)a * kstride + hk * D;
    const T* vb = v + (unsigned long long)a * kstride + hk * D;
    const int w = fa_window(window);
    const int kend = min(len, q0 + 64);
    const int ntiles = (kend + BC - 1) / BC;
    const int jstart = max(0, q0 - w + 1) / BC;
    const int row0 = q0 + warp * 16;
    const float sl2 = scale * FA_LOG2E;
    float lrow[2], drow[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const int row = row0 + g + 8 * i;
        const unsigned long long idx = (unsigned long long)(a + row) * hq + h;
        lrow[i] = row < len ? lse[idx] * FA_LOG2E : 0.0f;
        drow[i] = row < len ? Dsum[idx] : 0.0f;
    }

    load_tile<T, D, 64>(Qs, q + qoff, qstride, q0, len);
    load_tile<T, D, 64>(Os, dout + qoff, qstride, q0, len);
    load_tile<T, D, BC>(Ks + (jstart & 1) * BC * D, kb, kstride, jstart * BC, len);
    load_tile<T, D, BC>(Vs + (jstart & 1) * BC * D, vb, kstride, jstart * BC, len);
    copies_commit();

    float dqa[NO][4];
#pragma unroll
    for (int i = 0; i < NO; ++i) dqa[i][0] = dqa[i][1] = dqa[i][2] = dqa[i][3] = 0.0f;

    for (int j = jstart; j < ntiles; ++j) {
        const int stage = j & 1;
        next_kv_tile<T, D, BC>(Ks, Vs, kb, vb, kstride, j, ntiles, len);
        const int k0 = j * BC;
        const T* Kt = Ks + stage * BC * D;
        const T* Vt = Vs + stage * BC * D;
        float p[NB][4], ds[NB][4];
        wg_fence();
        product_nt<T, D, BC>(p, Qs, Kt);   // S
        product_nt<T, D, BC>(ds, Os, Vt);  // dP
        wg_commit();
        wg_wait<0>();
        pin(p);
        pin(ds);
        const bool mask = k0 + BC - 1 > row0 || k0 + BC > len || row0 + 16 > len || k0 <= row0 + 15 - w;
#pragma unroll
        for (int nt = 0; nt < NB; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int i = e >> 1;
                float pv = fast_exp2(p[nt][e] * sl2 - lrow[i]);
                if (mask) {
                    const int key = k0 + nt * 8 + 2 * t + (e & 1), row = row0 + g + 8 * i;
                    if (key > row || key >= len || row >= len || key <= row - w) pv = 0.0f;
                }
                ds[nt][e] = pv * (ds[nt][e] - drow[i]);
            }
        }
        unsigned int dsa[BC / 16][4];
        to_a<T, BC / 16>(dsa, ds);
        wg_fence();
        product_pv<T, BC / 16, BC>(dqa, dsa, Kt);  // dQ += dS K
        wg_commit();
        wg_wait<0>();
        pin(dqa);
        __syncthreads();
    }
    if (row0 >= len) return;
    const float sc[2] = {scale, scale};
    store_rows<T, SD, NO>(Ks, warp * 16, dqa, sc, dq + qoff, qstride, row0, 0, len, lane);
}

#define WG_BODY(call) call
#else
#define WG_BODY(call) __trap()
#endif

// Entry points per storage type and head dim, with their tiles: forward key tile, dK/dV query
// tile, dQ key tile (64 rows per block throughout). The host (src/cuda/flash.rs) reads the
// FLASH_WG lines below.
#define FLASH_WG(sfx, T, D, FWD_BC, DKV_BQ, DQ_BC)                                                                  \
    extern "C" __global__ void __launch_bounds__(FA_THREADS)                                                       \
        flash_fwd_wg_##sfx##_d##D(T* out, float* lse, const T* q, const T* k, const T* v,                         \
                                  const unsigned int* tiles, unsigned int hq, unsigned int hkv, float scale,       \
                                  unsigned int window) {                                                           \
        WG_BODY((flash_forward_wg<T, D, FWD_BC>(out, lse, q, k, v, tiles, hq, hkv, scale, window)));               \
    }                                                                                                              \
    extern "C" __global__ void __launch_bounds__(FA_THREADS)                                                       \
        flash_bwd_dkv_wg_##sfx##_d##D(T* dk, T* dv, const T* q, const T* k, const T* v, const T* dout,            \
                                      const float* lse, const float* Dsum, const unsigned int* tiles,              \
                                      unsigned int hq, unsigned int hkv, float scale, unsigned int window) {       \
        WG_BODY((flash_bwd_dkv_wg<T, D, DKV_BQ>(dk, dv, q, k, v, dout, lse, Dsum, tiles, hq, hkv, scale, window))); \
    }                                                                                                              \
    extern "C" __global__ void __launch_bounds__(FA_THREADS)                                                       \
        flash_bwd_dq_wg_##sfx##_d##D(T* dq, const T* q, const T* k, const T* v, const T* dout, const float* lse,  \
                                     const float* Dsum, const unsigned int* tiles, unsigned int hq,                \
                                     unsigned int hkv, float scale, unsigned int window) {                         \
        WG_BODY((flash_bwd_dq_wg<T, D, DQ_BC>(dq, q, k, v, dout, lse, Dsum, tiles, hq, hkv, scale, window)));      \
    }

#define FLASH_WG_DIMS(sfx, T)          \
    FLASH_WG(sfx, T, 64, 64, 64, 64)   \
    FLASH_WG(sfx, T, 128, 64, 64, 64)

FLASH_WG_DIMS(bf16, bf16)
FLASH_WG_DIMS(f16, f16)
