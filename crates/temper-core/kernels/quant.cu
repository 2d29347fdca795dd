// Quantisation on the device: 4-bit (NF4 / FP4) and the 8-bit blockwise coding of double
// quantisation. Twins of crates/temper-quant (Rust, CPU), which is bit-exact with bitsandbytes
// 0.50's reference ops; these kernels give the same bits as their twin on every input
// (tests/cuda_quant_twins.rs). The 4-bit kernel exists per storage type of its
// input (suffix f32, bf16, f16); its twin takes the values converted to f32 (exact).
//
//   kernel                     CPU twin (temper_quant::)                              launch
//   quantize_4bit_*            quantize_4bit                                          A
//   quantize_blockwise_f32     double_quant_with_offset (absmax, offset, blocks 256)  A
//   quantize_int8_rows_*       int8_vectorwise_quant (threshold 0) of the values      C
//                              rounded to float16 (what bitsandbytes' Int8Params
//                              quantises); the loader's twin is temper-model's to_int8
//
// Dequantisation is dequant.cu (dequant4_*, which decodes nested scales itself), twin of
// temper_quant::Quant4::dequantize_into.
//
//   A: one thread block per quantisation block, grid-stride over blocks: blockDim.x a
//      multiple of 32 up to 1024, any gridDim.x (e.g. min(blocks, 65535)).
//   C: one thread block per row, grid-stride over rows: blockDim.x a multiple of 32.
//
// Double quantisation on the device: offset = temper_quant::torch_mean(absmax) on the host
// (PyTorch's summation order; the absmax are few), then quantize_blockwise_f32 over the absmax
// with that offset, blocksize 256 and the signed dynamic map.
//
// Bit-exactness rules: every multiply / add / divide uses the _rn intrinsics so NVRTC never
// fuses them (the CPU rounds each one); full blocks scale by the correctly rounded 1/absmax,
// the partial last block of a tensor divides by absmax (as bitsandbytes' CPU ops do); absmax
// is clamped below at 1e-38 for scaling only. A NaN or infinite input makes its block's absmax
// infinite, which the host reports (the CPU twin refuses non-finite input). Code tables come
// in device memory: 16 floats (temper_quant::NF4 / FP4, any order) or 256 sorted floats
// (temper_quant::dynamic_map). No denormal flushing: compile without --use_fast_math / -ftz.
// blocksize: a power of two, 32..4096.
#include "common.cuh"

// Sorted thresholds of a 16-entry code: bounds[i] = (s[i] + s[i+1]) / 2 of the sorted values,
// order[i] = the code of sorted interval i (a stable sort: FP4's two zeros keep code 0 below 8).
// One thread builds them (temper_quant::codes::Bucketizer).
__device__ void quant_build_table16(const float* code, float* bounds, unsigned char* order) {
    for (int i = 0; i < 16; i++) order[i] = (unsigned char)i;
    for (int i = 1; i < 16; i++) {  // insertion sort: stable
        const unsigned char o = order[i];
        int j = i - 1;
        while (j >= 0 && code[order[j]] > code[o]) {
            order[j + 1] = order[j];
            j--;
        }
        order[j + 1] = o;
    }
    for (int i = 0; i < 15; i++)
        bounds[i] = __fmul_rn(__fadd_rn(code[order[i]], code[order[i + 1]]), 0.5f);
}

// The lowest sorted interval whose upper threshold is >= s (torch.bucketize, right=False).
__device__ __forceinline__ unsigned char quant_code16(const float* bounds, const unsigned char* order, float s) {
    int i = 0;
#pragma unroll
    for (int k = 0; k < 15; k++) i += bounds[k] < s;
    return order[i];
}

// The same over 255 thresholds of a sorted 256-entry code (binary search).
__device__ __forceinline__ unsigned char quant_code256(const float* bounds, float s) {
    int lo = 0, hi = 255;
    while (lo < hi) {
        const int mid = (lo + hi) >> 1;
        if (bounds[mid] < s) lo = mid + 1;
        else hi = mid;
    }
    return (unsigned char)lo;
}

// max(m, |v|); a NaN or infinity gives infinity (fmaxf alone would skip a NaN).
__device__ __forceinline__ float quant_absmax_step(float m, float v) {
    const float a = fabsf(v);
    return a <= 3.402823466e38f ? fmaxf(m, a) : INFINITY;
}

// value / absmax in [-1, 1]: times the reciprocal for a full block, divided for a partial one.
__device__ __forceinline__ float quant_scale(float x, float a, float r, bool partial) {
    const float s = partial ? __fdiv_rn(x, a) : __fmul_rn(x, r);
    return fminf(fmaxf(s, -1.0f), 1.0f);
}

// x (n) -> absmax (ceil(n / blocksize)), packed (ceil(n / 2)): two codes per byte, element 2j
// in the high nibble; an odd n pads the last low nibble with the code of 0. code: 16 floats.
template <typename T>
__device__ void quant_quantize_4bit(const T* __restrict__ x, const float* __restrict__ code, float* __restrict__ absmax, unsigned char* __restrict__ packed, unsigned long long n, unsigned int blocksize) {
    __shared__ float bounds[15];
    __shared__ unsigned char order[16];
    __shared__ float scratch[32];
    if (threadIdx.x == 0) quant_build_table16(code, bounds, order);
    __syncthreads();
    const unsigned char pad = quant_code16(bounds, order, 0.0f);
    const unsigned long long blocks = (n + blocksize - 1) / blocksize;
    for (unsigned long long b = blockIdx.x; b < blocks; b += gridDim.x) {
        const unsigned long long start = b * blocksize;
        const unsigned int len = (unsigned int)min((unsigned long long)blocksize, n - start);
        float m = 0.0f;
        for (unsigned int i = threadIdx.x; i < len; i += blockDim.x) m = quant_absmax_step(m, to_f32(x[start + i]));
        m = block_max(m, scratch);
        if (threadIdx.x == 0) absmax[b] = m;
        const float a = fmaxf(m, 1e-38f);
        const float r = __fdiv_rn(1.0f, a);
        const bool partial = len < blocksize;
        for (unsigned int j = threadIdx.x; j < (len + 1) / 2; j += blockDim.x) {
            const unsigned char hi = quant_code16(bounds, order, quant_scale(to_f32(x[start + 2 * j]), a, r, partial));
            const unsigned char lo = 2 * j + 1 < len
                ? quant_code16(bounds, order, quant_scale(to_f32(x[start + 2 * j + 1]), a, r, partial))
                : pad;
            packed[start / 2 + j] = (unsigned char)((hi << 4) | lo);
        }
    }
}

#define QUANTIZE_4BIT(sfx, T)                                                                              \
    extern "C" __global__ void quantize_4bit_##sfx(const T* x, const float* code, float* absmax,                \
                                                   unsigned char* packed, unsigned long long n,                \
                                                   unsigned int blocksize) {                                    \
        quant_quantize_4bit<T>(x, code, absmax, packed, n, blocksize);                                          \
    }
STORAGE_TYPES(QUANTIZE_4BIT)

// x (n) minus offset -> codes (n), absmax (ceil(n / blocksize)) with a sorted 256-entry code:
// double quantisation of 4-bit block scales (offset their mean, blocksize 256, the signed
// dynamic map).
extern "C" __global__ void quantize_blockwise_f32(const float* __restrict__ x, float offset, const float* __restrict__ code256, float* __restrict__ absmax, unsigned char* __restrict__ codes, unsigned long long n, unsigned int blocksize) {
    __shared__ float bounds[255];
    __shared__ float scratch[32];
    for (unsigned int i = threadIdx.x; i < 255; i += blockDim.x)
        bounds[i] = __fmul_rn(__fadd_rn(code256[i], code256[i + 1]), 0.5f);
    __syncthreads();
    const unsigned long long blocks = (n + blocksize - 1) / blocksize;
    for (unsigned long long b = blockIdx.x; b < blocks; b += gridDim.x) {
        const unsigned long long start = b * blocksize;
        const unsigned int len = (unsigned int)min((unsigned long long)blocksize, n - start);
        float m = 0.0f;
        for (unsigned int i = threadIdx.x; i < len; i += blockDim.x)
            m = quant_absmax_step(m, __fsub_rn(x[start + i], offset));
        m = block_max(m, scratch);
        if (threadIdx.x == 0) absmax[b] = m;
        const float a = fmaxf(m, 1e-38f);
        const float r = __fdiv_rn(1.0f, a);
        const bool partial = len < blocksize;
        for (unsigned int i = threadIdx.x; i < len; i += blockDim.x)
            codes[start + i] = quant_code256(bounds, quant_scale(__fsub_rn(x[start + i], offset), a, r, partial));
    }
}

// x (rows, cols) -> codes (rows, cols) int8, scales (rows): each value rounded to float16
// first, scale = the row's max |value|, code = round_half_even(value * ((1 / scale) * 127))
// clamped to [-128, 127]; an all-zero row (0 * inf = NaN) codes 0. A value that is not finite
// in float16 makes its row's scale infinite, which the host reports.
template <typename T>
__device__ void quant_quantize_int8_rows(const T* __restrict__ x, signed char* __restrict__ codes, float* __restrict__ scales, unsigned long long rows, unsigned int cols) {
    __shared__ float scratch[32];
    for (unsigned long long r = blockIdx.x; r < rows; r += gridDim.x) {
        const T* row = x + r * cols;
        float m = 0.0f;
        for (unsigned int c = threadIdx.x; c < cols; c += blockDim.x)
            m = quant_absmax_step(m, to_f32(from_f32<f16>(to_f32(row[c]))));
        m = block_max(m, scratch);
        if (threadIdx.x == 0) scales[r] = m;
        const float scale = __fmul_rn(__fdiv_rn(1.0f, m), 127.0f);
        for (unsigned int c = threadIdx.x; c < cols; c += blockDim.x) {
            const float v = __fmul_rn(to_f32(from_f32<f16>(to_f32(row[c]))), scale);
            codes[r * cols + c] = v != v ? (signed char)0 : (signed char)fminf(fmaxf(rintf(v), -128.0f), 127.0f);
        }
    }
}

#define QUANTIZE_INT8_ROWS(sfx, T)                                                                         \
    extern "C" __global__ void quantize_int8_rows_##sfx(const T* x, signed char* codes, float* scales,        \
                                                        unsigned long long rows, unsigned int cols) {          \
        quant_quantize_int8_rows<T>(x, codes, scales, rows, cols);                                              \
    }
STORAGE_TYPES(QUANTIZE_INT8_ROWS)
