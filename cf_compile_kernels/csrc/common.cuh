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

// ---------------------------------------------------------------- shared by the decode kernels

/// @brief Element type of the RoPE cos/sin tables (fp32 in HF graphs, sometimes the model dtype): a
/// run-time tag, so the tables do not multiply the instantiations. Launchers pass the same codes.
enum CosKind : int { kCosF32 = 0, kCosF16 = 1, kCosBF16 = 2 };

/// @brief Two packed 16-bit values (one 32-bit word) widened to fp32.
template <typename T>
__device__ __forceinline__ float2 pair_to_float2(unsigned u);
template <>
__device__ __forceinline__ float2 pair_to_float2<__half>(unsigned u) {
  return __half22float2(*reinterpret_cast<const __half2*>(&u));
}
template <>
__device__ __forceinline__ float2 pair_to_float2<__nv_bfloat16>(unsigned u) {
  return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u));
}

/// @brief One 16-byte vector of eight 16-bit values widened to fp32.
template <typename T>
__device__ __forceinline__ void unpack8(const uint4& v, float (&f)[8]) {
  const float2 a = pair_to_float2<T>(v.x), b = pair_to_float2<T>(v.y);
  const float2 c = pair_to_float2<T>(v.z), d = pair_to_float2<T>(v.w);
  f[0] = a.x; f[1] = a.y; f[2] = b.x; f[3] = b.y; f[4] = c.x; f[5] = c.y; f[6] = d.x; f[7] = d.y;
}

/// @brief 16 bytes of a weight streamed once per launch: read-only path, kept out of L1.
__device__ __forceinline__ uint4 ld_stream(const void* p) {
  uint4 r;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
      : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
      : "l"(p));
  return r;
}

/// @brief Element i of a table of T, as fp32.
template <typename T>
__device__ __forceinline__ float load_scalar(const void* p, long long i) {
  return to_float(static_cast<const T*>(p)[i]);
}

/// @brief Element i of a RoPE table whose element type is the run-time tag `kind` (CosKind).
__device__ __forceinline__ float load_table(const void* p, int kind, long long i) {
  if (kind == kCosF32) return static_cast<const float*>(p)[i];
  if (kind == kCosF16) return load_scalar<__half>(p, i);
  return load_scalar<__nv_bfloat16>(p, i);
}

/// @brief Sum over the 32 lanes of a warp (xor tree: every lane gets the same bits).
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int off = 16; off; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

/// @brief Maximum over the 32 lanes of a warp.
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int off = 16; off; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
  return v;
}

/// @brief Mask bytes one thread scans per step of a live-range scan (one 16-byte load when aligned).
constexpr int kMaskScanBytes = 16;

/// @brief row[j0, j0 + kMaskScanBytes) into `bytes` (bytes at or past L as zero). `vec`: row + j0 is 16-byte
/// aligned and the chunk lies inside L (one 16-byte load).
__device__ __forceinline__ void load_mask_chunk(const unsigned char* row, int j0, int L, bool vec,
                                                unsigned char (&bytes)[kMaskScanBytes]) {
  if (vec) {
    *reinterpret_cast<uint4*>(bytes) = *reinterpret_cast<const uint4*>(row + j0);
  } else {
#pragma unroll
    for (int e = 0; e < kMaskScanBytes; ++e) bytes[e] = j0 + e < L ? row[j0 + e] : 0;
  }
}

/// @brief First and last nonzero byte of row[j0, j0 + kMaskScanBytes) (load_mask_chunk's bytes); last = -1 and
/// first = INT_MAX if none.
__device__ __forceinline__ void mask_chunk_bounds(const unsigned char* row, int j0, int L, bool vec, int& first_out,
                                                  int& last_out) {
  alignas(16) unsigned char bytes[kMaskScanBytes];
  load_mask_chunk(row, j0, L, vec, bytes);
  int first = 0x7fffffff, last = -1;
#pragma unroll
  for (int e = kMaskScanBytes - 1; e >= 0; --e) {
    if (bytes[e]) {
      first = j0 + e;
      last = max(last, j0 + e);
    }
  }
  first_out = first;
  last_out = last;
}

/// @brief Weight of an online-softmax partial with running max m (exp2 domain) against the merged max M;
/// 0 for an empty partial (m = -inf), which would otherwise give exp2(-inf - -inf) = NaN.
__device__ __forceinline__ float softmax_rescale(float m, float M) { return m == neg_inf() ? 0.f : exp2f(m - M); }

/// @brief Merge the running softmax states (m, l, o) that a warp's token slots kept side by side (slots of
/// `lanes_per_slot` lanes, each lane holding E elements of o per head): a butterfly over the slot bits, after which
/// every slot holds the warp's state (slot 0's lanes are the ones written out).
template <int HG, int E>
__device__ __forceinline__ void merge_token_slots(float (&m)[HG], float (&l)[HG], float (&o)[HG][E],
                                                  int lanes_per_slot) {
  for (int off = lanes_per_slot; off < 32; off <<= 1) {
#pragma unroll
    for (int h = 0; h < HG; ++h) {
      const float m2 = __shfl_xor_sync(0xffffffffu, m[h], off);
      const float l2 = __shfl_xor_sync(0xffffffffu, l[h], off);
      const float M = fmaxf(m[h], m2);
      const float c1 = softmax_rescale(m[h], M), c2 = softmax_rescale(m2, M);
      l[h] = l[h] * c1 + l2 * c2;
#pragma unroll
      for (int e = 0; e < E; ++e) {
        const float o2 = __shfl_xor_sync(0xffffffffu, o[h][e], off);
        o[h][e] = o[h][e] * c1 + o2 * c2;
      }
      m[h] = M;
    }
  }
}

}  // namespace cf
