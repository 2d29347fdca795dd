// 4-bit dequantisation of frozen weights (bitsandbytes' NF4 / FP4 layout); twin of
// Quant4::dequantize_into in src/quant4.rs. One thread per packed byte (two values):
// element 2j is the high nibble of byte j, 2j+1 the low one; value = code[q] * absmax[block].
// With double quantisation (absmax == nullptr) the block's absmax is
// map[codes[b]] * nested[b / nested_bs] + offset, rounded after the product as PyTorch does
// (no fused multiply-add, so the CPU twin matches bit for bit).
#include "common.cuh"

template <typename T>
__device__ void dequant4(T* out, const unsigned char* packed, const float* code, const float* absmax,
                         const unsigned char* codes, const float* map, const float* nested, unsigned int nested_bs,
                         float offset, unsigned int blocksize, unsigned long long n) {
    __shared__ float code_s[16];
    if (threadIdx.x < 16) code_s[threadIdx.x] = code[threadIdx.x];
    __syncthreads();
    const unsigned long long bytes = (n + 1) / 2;
    GRID_STRIDE(j, bytes) {
        const unsigned long long i = 2 * j;
        const unsigned long long b = i / blocksize;
        const float a = absmax ? absmax[b] : __fadd_rn(__fmul_rn(map[codes[b]], nested[b / nested_bs]), offset);
        const unsigned char byte = packed[j];
        out[i] = from_f32<T>(code_s[byte >> 4] * a);
        if (i + 1 < n) out[i + 1] = from_f32<T>(code_s[byte & 15] * a);
    }
}

#define DEQUANT(sfx, T)                                                                                          \
    extern "C" __global__ void dequant4_##sfx(T* out, const unsigned char* packed, const float* code,              \
                                              const float* absmax, const unsigned char* codes, const float* map, \
                                              const float* nested, unsigned int nested_bs, float offset,         \
                                              unsigned int blocksize, unsigned long long n) {                    \
        dequant4<T>(out, packed, code, absmax, codes, map, nested, nested_bs, offset, blocksize, n);             \
    }
STORAGE_TYPES(DEQUANT)
