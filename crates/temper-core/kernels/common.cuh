// Shared helpers for temper's kernels. No CUDA headers are included: NVRTC compiles these
// sources as they are, for any architecture from sm_75.
#pragma once

#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif

// Sum over a block (blockDim.x a multiple of 32, at most 1024). Every thread gets the result.
__device__ __forceinline__ float block_sum(float v, float* scratch /* 32 floats */) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    const int warps = (blockDim.x + 31) >> 5;
    v = lane < warps ? scratch[lane] : 0.0f;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float block_max(float v, float* scratch /* 32 floats */) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    const int warps = (blockDim.x + 31) >> 5;
    v = lane < warps ? scratch[lane] : -INFINITY;
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// ---- storage types ----
// Activations and frozen weights are stored as f32, bf16 or f16; all math is in f32. No
// cuda_bf16.h / cuda_fp16.h (NVRTC has neither built in): bf16 converts with bit operations
// (round to nearest even, as `half::bf16::from_f32`), f16 with the PTX cvt instructions.
struct bf16 {
    unsigned short bits;
};
struct f16 {
    unsigned short bits;
};

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(bf16 v) { return __uint_as_float(((unsigned int)v.bits) << 16); }
__device__ __forceinline__ float to_f32(f16 v) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v.bits));
    return f;
}

template <typename T>
__device__ __forceinline__ T from_f32(float v);
template <>
__device__ __forceinline__ float from_f32<float>(float v) {
    return v;
}
template <>
__device__ __forceinline__ bf16 from_f32<bf16>(float v) {
    unsigned int u = __float_as_uint(v);
    if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{(unsigned short)((u >> 16) | 0x40u)};  // quiet NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    return bf16{(unsigned short)(u >> 16)};
}
template <>
__device__ __forceinline__ f16 from_f32<f16>(float v) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
    return f16{h};
}

// X(suffix, type) once per storage type: instantiates an extern "C" entry point per type.
#define STORAGE_TYPES(X) X(f32, float) X(bf16, bf16) X(f16, f16)

// A grid-stride loop over n elements.
#define GRID_STRIDE(i, n)                                                                        \
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < (n); \
         i += (unsigned long long)gridDim.x * blockDim.x)

// ---- eight values at a time ----
// Memory-bound kernels move 16 bytes per access: eight 16-bit values, or eight f32 in two
// accesses. Pointers must be 16-byte aligned (the caller checks, or it holds by
// construction: buffers start 256-byte aligned and offsets are multiples of 8 values).
__device__ __forceinline__ void store8(float* out, const float* v) {
    reinterpret_cast<float4*>(out)[0] = make_float4(v[0], v[1], v[2], v[3]);
    reinterpret_cast<float4*>(out)[1] = make_float4(v[4], v[5], v[6], v[7]);
}
template <typename H>
__device__ __forceinline__ void store8_16bit(H* out, const float* v) {
    unsigned int w[4];
    for (int k = 0; k < 4; ++k)
        w[k] = (unsigned int)from_f32<H>(v[2 * k]).bits | ((unsigned int)from_f32<H>(v[2 * k + 1]).bits << 16);
    reinterpret_cast<uint4*>(out)[0] = make_uint4(w[0], w[1], w[2], w[3]);
}
__device__ __forceinline__ void store8(bf16* out, const float* v) { store8_16bit(out, v); }
__device__ __forceinline__ void store8(f16* out, const float* v) { store8_16bit(out, v); }

__device__ __forceinline__ void load8(const float* in, float* v) {
    const float4 a = reinterpret_cast<const float4*>(in)[0], b = reinterpret_cast<const float4*>(in)[1];
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
}
template <typename H>
__device__ __forceinline__ void load8_16bit(const H* in, float* v) {
    const uint4 q = reinterpret_cast<const uint4*>(in)[0];
    const unsigned int w[4] = {q.x, q.y, q.z, q.w};
    for (int k = 0; k < 4; ++k) {
        v[2 * k] = to_f32(H{(unsigned short)(w[k] & 0xffffu)});
        v[2 * k + 1] = to_f32(H{(unsigned short)(w[k] >> 16)});
    }
}
__device__ __forceinline__ void load8(const bf16* in, float* v) { load8_16bit(in, v); }
__device__ __forceinline__ void load8(const f16* in, float* v) { load8_16bit(in, v); }

// A grid-stride loop over the n / 8 whole groups of eight (i is the first element of a group),
// then TAIL8 over the last n % 8 elements one by one.
#define GRID_STRIDE8(i, n)                                                                                  \
    for (unsigned long long i = 8 * (blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x); i + 8 <= (n); \
         i += 8 * (unsigned long long)gridDim.x * blockDim.x)
#define TAIL8(i, n)                                                                                          \
    for (unsigned long long i = ((n) & ~7ull) + blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;     \
         i < (n); i += (unsigned long long)gridDim.x * blockDim.x)
