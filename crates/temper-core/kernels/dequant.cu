// 4-bit dequantisation of frozen weights (bitsandbytes' NF4 / FP4 layout); twin of
// Quant4::dequantize_into in temper-quant. One thread per packed byte (two values):
// element 2j is the high nibble of byte j, 2j+1 the low one; value = code[q] * absmax[block].
// With double quantisation (absmax == nullptr) the block's absmax is
// map[codes[b]] * nested[b / nested_bs] + offset, rounded after the product as PyTorch does
// (no fused multiply-add, so the CPU twin matches bit for bit).
#include "common.cuh"

__device__ __forceinline__ float block_absmax(unsigned long long b, const float* absmax, const unsigned char* codes,
                                              const float* map, const float* nested, unsigned int nested_bs,
                                              float offset) {
    return absmax ? absmax[b] : __fadd_rn(__fmul_rn(map[codes[b]], nested[b / nested_bs]), offset);
}

// Packed bytes from `first` on, two values per byte (the tail of either kernel below).
template <typename T>
__device__ void dequant4_pairs(T* out, const unsigned char* packed, const float* code_s, const float* absmax,
                               const unsigned char* codes, const float* map, const float* nested,
                               unsigned int nested_bs, float offset, unsigned int blocksize, unsigned long long n,
                               unsigned long long first) {
    const unsigned long long bytes = (n + 1) / 2;
    GRID_STRIDE(t, bytes - first) {
        const unsigned long long j = first + t, i = 2 * j;
        const float a = block_absmax(i / blocksize, absmax, codes, map, nested, nested_bs, offset);
        const unsigned char byte = packed[j];
        out[i] = from_f32<T>(code_s[byte >> 4] * a);
        if (i + 1 < n) out[i + 1] = from_f32<T>(code_s[byte & 15] * a);
    }
}

// Each thread decodes 8 packed bytes (16 values, inside one block since blocksize is a
// multiple of 16 on this path) and writes them with two vector stores; a tail shorter than 16
// values, or a blocksize that is not a multiple of 16, goes value pair by value pair.
template <typename T>
__device__ void dequant4(T* out, const unsigned char* packed, const float* code, const float* absmax,
                         const unsigned char* codes, const float* map, const float* nested, unsigned int nested_bs,
                         float offset, unsigned int blocksize, unsigned long long n) {
    __shared__ float code_s[16];
    if (threadIdx.x < 16) code_s[threadIdx.x] = code[threadIdx.x];
    __syncthreads();
    const bool vec = blocksize % 16 == 0;
    const unsigned long long groups = vec ? n / 16 : 0;
    GRID_STRIDE(g, groups) {
        const unsigned long long i = 16 * g;
        const float a = block_absmax(i / blocksize, absmax, codes, map, nested, nested_bs, offset);
        const uint2 words = reinterpret_cast<const uint2*>(packed)[g];
        float v[16];
#pragma unroll
        for (int k = 0; k < 8; ++k) {
            const unsigned int byte = ((k < 4 ? words.x : words.y) >> (8 * (k & 3))) & 255u;
            v[2 * k] = code_s[byte >> 4] * a;
            v[2 * k + 1] = code_s[byte & 15u] * a;
        }
        store8(out + i, v);
        store8(out + i + 8, v + 8);
    }
    dequant4_pairs(out, packed, code_s, absmax, codes, map, nested, nested_bs, offset, blocksize, n, groups * 8);
}

// The same values as dequant4 (the same products), laid out for memory speed: units of 8
// values (4 packed bytes, inside one block since blocksize is a multiple of 8 on this path);
// thread t of T takes units t, t + T, ... DEQ_UNROLL at a time, so a warp's loads are 128
// contiguous bytes and its stores 512, and each thread has DEQ_UNROLL loads in flight. A tail
// shorter than 8 values, or a blocksize that is not a multiple of 8, goes value pair by value
// pair. Chosen with TEMPER_DEQUANT=units until it is measured faster than dequant4.
#ifndef DEQ_UNROLL
#define DEQ_UNROLL 4
#endif
template <typename T>
__device__ void dequant4_units(T* out, const unsigned char* packed, const float* code, const float* absmax,
                               const unsigned char* codes, const float* map, const float* nested,
                               unsigned int nested_bs, float offset, unsigned int blocksize, unsigned long long n) {
    __shared__ float code_s[16];
    if (threadIdx.x < 16) code_s[threadIdx.x] = code[threadIdx.x];
    __syncthreads();
    const bool vec = blocksize % 8 == 0;
    const unsigned long long units = vec ? n / 8 : 0;
    const unsigned long long stride = gridDim.x * (unsigned long long)blockDim.x;
    const unsigned int* words = reinterpret_cast<const unsigned int*>(packed);
    for (unsigned long long u = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; u < units;
         u += DEQ_UNROLL * stride) {
        unsigned int w[DEQ_UNROLL];
        float a[DEQ_UNROLL];
#pragma unroll
        for (int r = 0; r < DEQ_UNROLL; ++r) {
            const unsigned long long uu = u + r * stride;
            if (uu < units) {
                w[r] = words[uu];
                a[r] = block_absmax(8 * uu / blocksize, absmax, codes, map, nested, nested_bs, offset);
            }
        }
#pragma unroll
        for (int r = 0; r < DEQ_UNROLL; ++r) {
            const unsigned long long uu = u + r * stride;
            if (uu < units) {
                float v[8];
#pragma unroll
                for (int k = 0; k < 4; ++k) {
                    const unsigned int byte = (w[r] >> (8 * k)) & 255u;
                    v[2 * k] = code_s[byte >> 4] * a[r];
                    v[2 * k + 1] = code_s[byte & 15u] * a[r];
                }
                store8(out + 8 * uu, v);
            }
        }
    }
    dequant4_pairs(out, packed, code_s, absmax, codes, map, nested, nested_bs, offset, blocksize, n, units * 4);
}

#define DEQUANT(sfx, T)                                                                                          \
    extern "C" __global__ void dequant4_##sfx(T* out, const unsigned char* packed, const float* code,              \
                                              const float* absmax, const unsigned char* codes, const float* map, \
                                              const float* nested, unsigned int nested_bs, float offset,         \
                                              unsigned int blocksize, unsigned long long n) {                    \
        dequant4<T>(out, packed, code, absmax, codes, map, nested, nested_bs, offset, blocksize, n);             \
    }
STORAGE_TYPES(DEQUANT)

#define DEQUANT_UNITS(sfx, T)                                                                                      \
    extern "C" __global__ void dequant4_units_##sfx(T* out, const unsigned char* packed, const float* code,        \
                                                    const float* absmax, const unsigned char* codes,               \
                                                    const float* map, const float* nested, unsigned int nested_bs, \
                                                    float offset, unsigned int blocksize, unsigned long long n) {  \
        dequant4_units<T>(out, packed, code, absmax, codes, map, nested, nested_bs, offset, blocksize, n);         \
    }
STORAGE_TYPES(DEQUANT_UNITS)

// 8-bit dequantisation of frozen weights (bitsandbytes' LLM.int8 row-wise layout: int8 codes
// (rows, cols) and an f32 absmax per row); twin of Int8Rows::dequantize_into in temper-quant.
// value = code * scale[row] * inv127, the two f32 products rounded in that order as
// bitsandbytes' int8_vectorwise_dequant does (`A * stats.view(-1, 1) * 7.874015718698502e-3`);
// inv127 comes from the host so both twins use the same f32.
// Each thread decodes 8 codes (one 8-byte load; a group may cross row ends, even several
// when cols < 8) and writes them with vector stores; the tail of fewer than 8 goes one by one.
template <typename T>
__device__ void dequant_int8(T* out, const signed char* codes, const float* scales, float inv127,
                             unsigned long long cols, unsigned long long n) {
    const unsigned long long groups = n / 8;
    GRID_STRIDE(g, groups) {
        const unsigned long long i = 8 * g;
        unsigned long long row = i / cols, end = (row + 1) * cols;
        float s = scales[row];
        const uint2 word = reinterpret_cast<const uint2*>(codes)[g];
        float v[8];
        for (int k = 0; k < 8; ++k) {
            // Row ends are at least one element apart: one step crosses at most one.
            if (i + k == end) {
                ++row;
                end += cols;
                s = scales[row];
            }
            const unsigned int w = k < 4 ? word.x : word.y;  // little-endian: byte k & 3
            const signed char q = (signed char)((w >> (8 * (k & 3))) & 255u);
            v[k] = __fmul_rn(__fmul_rn((float)q, s), inv127);
        }
        store8(out + i, v);
    }
    const unsigned long long first = 8 * groups;
    GRID_STRIDE(t, n - first) {
        const unsigned long long i = first + t;
        out[i] = from_f32<T>(__fmul_rn(__fmul_rn((float)codes[i], scales[i / cols]), inv127));
    }
}

#define DEQUANT_INT8(sfx, T)                                                                             \
    extern "C" __global__ void dequant_int8_##sfx(T* out, const signed char* codes, const float* scales, \
                                                  float inv127, unsigned long long cols,                 \
                                                  unsigned long long n) {                                \
        dequant_int8<T>(out, codes, scales, inv127, cols, n);                                            \
    }
STORAGE_TYPES(DEQUANT_INT8)
