// common.cuh -- dtype helpers and small device utilities shared by every kernel.
//
// NVRTC-safe: includes no host header (NVRTC ships none; cuda_fp16/bf16 come from the wheels).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

// CUtensorMap without <cuda.h> (which pulls in stdlib.h, absent under NVRTC). Same layout as the
// driver's: 128 opaque bytes, 64-byte aligned. Kernels take `const __grid_constant__ CUtensorMap`.
#if !defined(CUDA_VERSION)
struct alignas(64) CUtensorMap_st {
  unsigned long long opaque[16];
};
typedef CUtensorMap_st CUtensorMap;
#endif

namespace cf {

/// @brief Integer ceil(a / b) usable in constant expressions (tile counts from shapes).
__host__ __device__ constexpr int ceil_div(int a, int b) { return (a + b - 1) / b; }

/// @brief Bytes moved by one vector access: the widest load/store a thread issues.
constexpr int kVectorBytes = 16;

/// @brief Elements of T in one 16-byte vector access.
template <typename T>
constexpr int kVectorElems = kVectorBytes / static_cast<int>(sizeof(T));

/// @brief -infinity as fp32 (NVRTC has no <cmath> INFINITY): the empty-softmax running max.
__device__ __forceinline__ float neg_inf() { return __int_as_float(0xff800000); }

/// @brief Widen a model-dtype value to fp32 (all accumulation is fp32).
__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

/// @brief Round an fp32 value to T (round to nearest even).
template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

/// @brief Load 16 bytes of T (kVectorElems<T> values) and widen them to fp32. `p` must be 16-byte aligned.
template <typename T>
__device__ __forceinline__ void load_vec_f32(const T* p, float (&out)[kVectorElems<T>]) {
  const uint4 raw = *reinterpret_cast<const uint4*>(p);
  const T* v = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int i = 0; i < kVectorElems<T>; ++i) out[i] = to_float(v[i]);
}

/// @brief Round kVectorElems<T> fp32 values to T and store them as one 16-byte access.
template <typename T>
__device__ __forceinline__ void store_vec_f32(T* p, const float (&in)[kVectorElems<T>]) {
  uint4 raw;
  T* v = reinterpret_cast<T*>(&raw);
#pragma unroll
  for (int i = 0; i < kVectorElems<T>; ++i) v[i] = from_float<T>(in[i]);
  *reinterpret_cast<uint4*>(p) = raw;
}

/// @brief 32-bit shared-state-space address of a generic pointer into this CTA's shared memory.
__device__ __forceinline__ unsigned smem_u32(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

}  // namespace cf
