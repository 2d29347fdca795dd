// 4-bit (NF4 / FP4) and 8-bit blockwise quantisation. Twins of crates/temper-quant (Rust,
// CPU), which is bit-exact with bitsandbytes 0.50's reference ops; these kernels must give the
// same bits as their twin on every input:
//
//   kernel                        CPU twin (temper_quant::)                   launch
//   quantize_4bit_f32             quantize_4bit                                A
//   dequantize_4bit_f32           dequantize_4bit_into                         B
//   dequantize_4bit_bf16          dequantize_4bit_into, then bf16::from_f32    B
//   dequantize_4bit_nested_f32    QuantState::dequantize_into (Absmax::Nested) B
//   dequantize_4bit_nested_bf16   the same, then bf16::from_f32                B
//   quantize_blockwise_f32        quantize_blockwise (offset 0);               A
//                                 double_quant_with_offset (absmax, offset)
//   dequantize_blockwise_f32      dequantize_blockwise_into                    B
//
//   A: one thread block per quantisation block, grid-stride over blocks: blockDim.x a
//      multiple of 32 (256 suggested), any gridDim.x (e.g. min(blocks, 65535)).
//   B: grid-stride over packed bytes / codes: any geometry (e.g. 256 threads,
//      min(ceil(bytes / 256), 65535) blocks).
//
// Double quantisation on the device: compute offset = temper_quant::torch_mean(absmax) on the
// host (PyTorch's summation order; the absmax are few), then quantize_blockwise_f32 over the
// absmax with that offset and the signed dynamic map.
//
// Bit-exactness rules: every multiply / add / divide uses the _rn intrinsics so NVRTC never
// fuses them (the CPU rounds each one); full blocks scale by the correctly rounded 1/absmax,
// the partial last block of a tensor divides by absmax (as bitsandbytes' CPU ops do); absmax
// is clamped below at 1e-38 for scaling only. Code tables come in device memory: 16 floats
// (temper_quant::NF4 / FP4, any order) or 256 sorted floats (temper_quant::dynamic_map).
// No denormal flushing: compile without --use_fast_math / -ftz.
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

// value / absmax in [-1, 1]: times the reciprocal for a full block, divided for a partial one.
__device__ __forceinline__ float quant_scale(float x, float a, float r, bool partial) {
    const float s = partial ? __fdiv_rn(x, a) : __fmul_rn(x, r);
    return fminf(fmaxf(s, -1.0f), 1.0f);
}

// f32 -> bf16 bits, round to nearest even, NaN kept quiet (half::bf16::from_f32).
__device__ __forceinline__ unsigned short quant_f32_to_bf16(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}

// x (n) -> absmax (ceil(n / blocksize)), packed (ceil(n / 2)): two codes per byte, element 2j
// in the high nibble; an odd n pads the last low nibble with the code of 0. code: 16 floats.
// blocksize: a power of two, 32..4096.
extern "C" __global__ void quantize_4bit_f32(const float* __restrict__ x, const float* __restrict__ code, float* __restrict__ absmax, unsigned char* __restrict__ packed, unsigned long long n, unsigned int blocksize) {
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
        for (unsigned int i = threadIdx.x; i < len; i += blockDim.x) m = fmaxf(m, fabsf(x[start + i]));
        m = block_max(m, scratch);
        if (threadIdx.x == 0) absmax[b] = m;
        const float a = fmaxf(m, 1e-38f);
        const float r = __fdiv_rn(1.0f, a);
        const bool partial = len < blocksize;
        for (unsigned int j = threadIdx.x; j < (len + 1) / 2; j += blockDim.x) {
            const unsigned char hi = quant_code16(bounds, order, quant_scale(x[start + 2 * j], a, r, partial));
            const unsigned char lo = 2 * j + 1 < len
                ? quant_code16(bounds, order, quant_scale(x[start + 2 * j + 1], a, r, partial))
                : pad;
            packed[start / 2 + j] = (unsigned char)((hi << 4) | lo);
        }
    }
}

// The f32 absmax of block blk: plain, or double-quantised (code256[q] * nested[blk / 256] + offset).
__device__ __forceinline__ float quant_absmax(const float* absmax, const unsigned char* absmax_codes, const float* nested_absmax, const float* code256, float offset, unsigned long long blk) {
    if (absmax_codes == nullptr) return absmax[blk];
    return __fadd_rn(__fmul_rn(code256[absmax_codes[blk]], nested_absmax[blk >> 8]), offset);
}

// packed (ceil(n / 2)) -> out (n): code[q] * absmax[i / blocksize]. OUT is float or bf16 bits.
template <bool BF16>
__device__ void quant_dequantize_4bit(const unsigned char* __restrict__ packed, const float* __restrict__ absmax, const unsigned char* __restrict__ absmax_codes, const float* __restrict__ nested_absmax, const float* __restrict__ code256, float offset, const float* __restrict__ code, void* out, unsigned long long n, unsigned int blocksize) {
    __shared__ float c[16];
    for (unsigned int i = threadIdx.x; i < 16; i += blockDim.x) c[i] = code[i];
    __syncthreads();
    const int shift = __ffs(blocksize) - 1;  // blocksize is a power of two
    const unsigned long long bytes = (n + 1) / 2;
    for (unsigned long long j = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; j < bytes;
         j += (unsigned long long)gridDim.x * blockDim.x) {
        const unsigned char p = packed[j];
        // 2j and 2j+1 share a block: blocksize is even.
        const float a = quant_absmax(absmax, absmax_codes, nested_absmax, code256, offset, (2 * j) >> shift);
        const float v0 = __fmul_rn(c[p >> 4], a), v1 = __fmul_rn(c[p & 15], a);
        if (BF16) {
            unsigned short* o = (unsigned short*)out;
            o[2 * j] = quant_f32_to_bf16(v0);
            if (2 * j + 1 < n) o[2 * j + 1] = quant_f32_to_bf16(v1);
        } else {
            float* o = (float*)out;
            o[2 * j] = v0;
            if (2 * j + 1 < n) o[2 * j + 1] = v1;
        }
    }
}

// packed (ceil(n/2)), absmax (ceil(n/blocksize)) f32, code (16) -> out (n) f32.
extern "C" __global__ void dequantize_4bit_f32(const unsigned char* __restrict__ packed, const float* __restrict__ absmax, const float* __restrict__ code, float* __restrict__ out, unsigned long long n, unsigned int blocksize) {
    quant_dequantize_4bit<false>(packed, absmax, nullptr, nullptr, nullptr, 0.0f, code, out, n, blocksize);
}

// As dequantize_4bit_f32, out (n) bf16 bits.
extern "C" __global__ void dequantize_4bit_bf16(const unsigned char* __restrict__ packed, const float* __restrict__ absmax, const float* __restrict__ code, unsigned short* __restrict__ out, unsigned long long n, unsigned int blocksize) {
    quant_dequantize_4bit<true>(packed, absmax, nullptr, nullptr, nullptr, 0.0f, code, out, n, blocksize);
}

// Double-quantised absmax: absmax_codes (blocks) u8, nested_absmax (ceil(blocks/256)) f32,
// code256 (256) the nested map, offset; out (n) f32.
extern "C" __global__ void dequantize_4bit_nested_f32(const unsigned char* __restrict__ packed, const unsigned char* __restrict__ absmax_codes, const float* __restrict__ nested_absmax, const float* __restrict__ code256, float offset, const float* __restrict__ code, float* __restrict__ out, unsigned long long n, unsigned int blocksize) {
    quant_dequantize_4bit<false>(packed, nullptr, absmax_codes, nested_absmax, code256, offset, code, out, n, blocksize);
}

// As dequantize_4bit_nested_f32, out (n) bf16 bits.
extern "C" __global__ void dequantize_4bit_nested_bf16(const unsigned char* __restrict__ packed, const unsigned char* __restrict__ absmax_codes, const float* __restrict__ nested_absmax, const float* __restrict__ code256, float offset, const float* __restrict__ code, unsigned short* __restrict__ out, unsigned long long n, unsigned int blocksize) {
    quant_dequantize_4bit<true>(packed, nullptr, absmax_codes, nested_absmax, code256, offset, code, out, n, blocksize);
}

// x (n) minus offset -> codes (n), absmax (ceil(n / blocksize)) with a sorted 256-entry code.
// offset 0 for plain 8-bit blockwise quantisation (optimizer states); the absmax mean for
// double quantisation (blocksize 256, the signed dynamic map).
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
            m = fmaxf(m, fabsf(__fsub_rn(x[start + i], offset)));
        m = block_max(m, scratch);
        if (threadIdx.x == 0) absmax[b] = m;
        const float a = fmaxf(m, 1e-38f);
        const float r = __fdiv_rn(1.0f, a);
        const bool partial = len < blocksize;
        for (unsigned int i = threadIdx.x; i < len; i += blockDim.x)
            codes[start + i] = quant_code256(bounds, quant_scale(__fsub_rn(x[start + i], offset), a, r, partial));
    }
}

// codes (n), absmax (ceil(n / blocksize)), code256 (256) -> out (n) f32: code256[q] * absmax.
extern "C" __global__ void dequantize_blockwise_f32(const unsigned char* __restrict__ codes, const float* __restrict__ absmax, const float* __restrict__ code256, float* __restrict__ out, unsigned long long n, unsigned int blocksize) {
    __shared__ float c[256];
    for (unsigned int i = threadIdx.x; i < 256; i += blockDim.x) c[i] = code256[i];
    __syncthreads();
    const int shift = __ffs(blocksize) - 1;  // blocksize is a power of two
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x)
        out[i] = __fmul_rn(c[codes[i]], absmax[i >> shift]);
}
