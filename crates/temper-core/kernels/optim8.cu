// AdamW with 8-bit blockwise moments (bitsandbytes' adamw_8bit / paged_adamw_8bit); twin of
// cpu::adamw8bit in src/cpu/adamw8bit.rs, which documents the formulas. One thread block of
// 256 threads per quantisation block of 256 values, one value per thread: dequantise both
// moments, update them and the parameter in f32, reduce the block's new absmax of each moment,
// requantise to the nearest code. Every operation is written with an explicit rounding
// intrinsic (or fmaf where the CPU twin fuses) so NVRTC's default contraction of a*b+c into a
// fused multiply-add cannot make the GPU round differently from the CPU.
// The codes and absmax may live in device memory or in mapped host memory (paged).
#include "common.cuh"

#define QBLOCK 256

// The code of a scaled value: the number of thresholds below it (a value on a threshold
// takes the lower code), by binary search over the 255 thresholds.
__device__ __forceinline__ unsigned char nearest_code(const float* bounds /* 255 */, float x) {
    int lo = 0, hi = 255;
    while (lo < hi) {
        const int mid = (lo + hi) >> 1;
        if (bounds[mid] < x)
            lo = mid + 1;
        else
            hi = mid;
    }
    return (unsigned char)lo;
}

// x scaled by its block's absmax as the CPU quantize_block does: full blocks multiply by the
// correctly rounded reciprocal, the partial last block divides; clamped to [-1, 1].
__device__ __forceinline__ float scale_to_unit(float x, float absmax, bool partial) {
    const float a = fmaxf(absmax, 1e-38f);
    const float s = partial ? __fdiv_rn(x, a) : __fmul_rn(x, __frcp_rn(a));
    return fminf(fmaxf(s, -1.0f), 1.0f);
}

// grid: ceil(n / 256) blocks of 256 threads.
// p, g (n) f32; m_codes, v_codes (n) u8; m_absmax, v_absmax (blocks) f32; m_map, v_map (256).
extern "C" __global__ void adamw8bit_f32(float* p, const float* g, unsigned char* m_codes, float* m_absmax,
                                         const float* m_map, unsigned char* v_codes, float* v_absmax,
                                         const float* v_map, float b1, float w1, float b2, float one_minus_b2,
                                         float neg_step, float bc2_sqrt, float eps, float decay, int apply_decay,
                                         unsigned long long n) {
    __shared__ float map1[QBLOCK], map2[QBLOCK];
    __shared__ float bounds1[QBLOCK - 1], bounds2[QBLOCK - 1];
    __shared__ float scratch1[32], scratch2[32];
    const unsigned int t = threadIdx.x;
    map1[t] = m_map[t];
    map2[t] = v_map[t];
    __syncthreads();
    if (t < QBLOCK - 1) {
        bounds1[t] = __fdiv_rn(__fadd_rn(map1[t], map1[t + 1]), 2.0f);
        bounds2[t] = __fdiv_rn(__fadd_rn(map2[t], map2[t + 1]), 2.0f);
    }
    const unsigned long long start = (unsigned long long)blockIdx.x * QBLOCK;
    const unsigned long long i = start + t;
    const bool live = i < n;
    const bool partial = n - start < QBLOCK;

    float m = 0.0f, v = 0.0f;
    if (live) {
        m = __fmul_rn(map1[m_codes[i]], m_absmax[blockIdx.x]);
        v = __fmul_rn(map2[v_codes[i]], v_absmax[blockIdx.x]);
        const float gi = g[i];
        float pi = p[i];
        m = fmaf(w1, gi, __fmul_rn(m, b1));
        v = fmaf(__fmul_rn(one_minus_b2, gi), gi, __fmul_rn(v, b2));
        const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(v), bc2_sqrt), eps);
        if (apply_decay) pi = __fmul_rn(pi, decay);
        pi = __fadd_rn(pi, __fdiv_rn(__fmul_rn(neg_step, m), denom));
        p[i] = pi;
    }
    // Threads past n hold zeros, which do not change a max of absolute values. block_max
    // synchronises first, so every thread has read the old absmax before thread 0 writes.
    const float am1 = block_max(fabsf(m), scratch1);
    const float am2 = block_max(fabsf(v), scratch2);
    if (live) {
        m_codes[i] = nearest_code(bounds1, scale_to_unit(m, am1, partial));
        v_codes[i] = nearest_code(bounds2, scale_to_unit(v, am2, partial));
    }
    if (t == 0) {
        m_absmax[blockIdx.x] = am1;
        v_absmax[blockIdx.x] = am2;
    }
}
