// mma.cuh -- mma.sync m16n8k16 helpers for batched decode GEMVs ("swap AB": the weights are the A
// operand, 16 rows per tile; the batch is the N dimension, 8 rows per MMA; fp32 accumulators).
//
// Fragment layout used by every caller (the pattern of gated_ffn.cu's direct path): lane = 4*g + t
// (g = lane / kLanesPerGroup, t = lane % kLanesPerGroup). Per warp step of kStepK = 32 columns of k,
// lane (g, t) loads 16 bytes of weight rows g and g+8 (lo, hi) and 16 bytes of batch row g (+8 per N
// tile), all at columns t*8 .. t*8+7. Those 8 columns are fed to two k16 MMAs as {0,1 | 2,3} and
// {4,5 | 6,7}: A and B use the same permutation of k, so each dot product is unchanged while every load
// stays 16 bytes wide. Accumulator acc[bt] holds (row g, batch 8bt+2t), (row g, 8bt+2t+1),
// (row g+8, 8bt+2t), (row g+8, 8bt+2t+1).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "common.cuh"

namespace cf {
namespace mma {

constexpr int kWarpSize = 32;
constexpr int kTileRows = 16;                             // M of m16n8k16: weight rows per tile
constexpr int kTileCols = 8;                              // N of m16n8k16: batch rows per MMA
constexpr int kLanesPerGroup = 4;                         // threadID_in_group of the fragment layout
constexpr int kGroups = kWarpSize / kLanesPerGroup;       // 8: row g of the tile, batch row g of the N tile
constexpr int kElemsPerLoad = 8;                          // one 16-byte load of fp16/bf16
constexpr int kStepK = kLanesPerGroup * kElemsPerLoad;    // 32 columns of k per warp step (2 MMAs of k16)
static_assert(kGroups * 2 == kTileRows, "lo/hi rows g and g+8 cover the tile");

template <typename T>
struct Op;
template <>
struct Op<__half> {
  // d += a * b, m16n8k16, fp16 inputs, fp32 accumulators.
  __device__ __forceinline__ static void run(float (&d)[4], unsigned a0, unsigned a1, unsigned a2, unsigned a3,
                                             unsigned b0, unsigned b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  }
};
template <>
struct Op<__nv_bfloat16> {
  // d += a * b, m16n8k16, bf16 inputs, fp32 accumulators.
  __device__ __forceinline__ static void run(float (&d)[4], unsigned a0, unsigned a1, unsigned a2, unsigned a3,
                                             unsigned b0, unsigned b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  }
};

// One warp step of k = kStepK for BT N tiles: lo/hi = 8 consecutive k of weight rows g and g+8, b[bt] =
// the same 8 k of batch row g + 8*bt, in the permuted k order described above. k fixed order: the
// first MMA's columns before the second's, every call in the caller's k order (deterministic).
template <typename T, int BT>
__device__ __forceinline__ void step(float (&acc)[BT][4], const uint4& lo, const uint4& hi, const uint4 (&b)[BT]) {
#pragma unroll
  for (int bt = 0; bt < BT; ++bt) {
    Op<T>::run(acc[bt], lo.x, hi.x, lo.y, hi.y, b[bt].x, b[bt].y);
    Op<T>::run(acc[bt], lo.z, hi.z, lo.w, hi.w, b[bt].z, b[bt].w);
  }
}

// Two fp32 values packed into the 32-bit operand register of T (round to nearest).
template <typename T>
__device__ __forceinline__ unsigned pack2(float a, float b);
template <>
__device__ __forceinline__ unsigned pack2<__half>(float a, float b) {
  const __half2 h = __floats2half2_rn(a, b);
  return *reinterpret_cast<const unsigned*>(&h);
}
template <>
__device__ __forceinline__ unsigned pack2<__nv_bfloat16>(float a, float b) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
  return *reinterpret_cast<const unsigned*>(&h);
}

// Batch operand: 8 consecutive activations as one fragment vector, whether staged in the model dtype
// (one 16-byte load) or in fp32 (two 16-byte loads, rounded once to T, as eager rounds its inputs).
template <typename T>
__device__ __forceinline__ uint4 load_b8(const T* p) {
  return *reinterpret_cast<const uint4*>(p);
}
template <typename T>
__device__ __forceinline__ uint4 load_b8(const float* p) {
  const float4 a = reinterpret_cast<const float4*>(p)[0], c = reinterpret_cast<const float4*>(p)[1];
  return make_uint4(pack2<T>(a.x, a.y), pack2<T>(a.z, a.w), pack2<T>(c.x, c.y), pack2<T>(c.z, c.w));
}

// One warp's sum over k-steps [s0, s1) of a 16-row weight tile into acc (not zeroed here): lane (g, t) streams
// rows r0+g and r0+g+8 (rows >= nrows read as zero), DEPTH steps of weight loads in flight before the first MMA,
// and takes the batch operand of step s, N tile bt, at column k from frag(k, s, bt) (zero where it has none).
// The steps go to the MMAs in increasing order: fixed sums. k_len: a multiple of 8.
template <typename T, int BT, int DEPTH, typename RowPtr, typename Frag>
__device__ __forceinline__ void tile_accumulate(float (&acc)[BT][4], RowPtr row_ptr, int r0, int nrows, int s0, int s1,
                                                int k_len, Frag frag) {
  const int lane = threadIdx.x & 31;
  const int g = lane / kLanesPerGroup, t = lane % kLanesPerGroup;
  const int r_lo = r0 + g, r_hi = r_lo + kGroups;
  const bool live_lo = r_lo < nrows, live_hi = r_hi < nrows;
  const T* w_lo = static_cast<const T*>(row_ptr(live_lo ? r_lo : 0)) + t * kElemsPerLoad;
  const T* w_hi = static_cast<const T*>(row_ptr(live_hi ? r_hi : 0)) + t * kElemsPerLoad;
  const uint4 zero = make_uint4(0, 0, 0, 0);
  for (int s = s0; s < s1; s += DEPTH) {
    uint4 lo[DEPTH], hi[DEPTH];
#pragma unroll
    for (int d = 0; d < DEPTH; ++d) {
      const int k = (s + d) * kStepK + t * kElemsPerLoad;
      const bool in = s + d < s1 && k < k_len;
      lo[d] = in && live_lo ? cf::ld_stream(w_lo + (s + d) * kStepK) : zero;
      hi[d] = in && live_hi ? cf::ld_stream(w_hi + (s + d) * kStepK) : zero;
    }
#pragma unroll
    for (int d = 0; d < DEPTH; ++d) {
      if (s + d < s1) {
        const int k = (s + d) * kStepK + t * kElemsPerLoad;
        uint4 b[BT];
#pragma unroll
        for (int bt = 0; bt < BT; ++bt) b[bt] = frag(k, s + d, bt);
        step<T, BT>(acc, lo[d], hi[d], b);
      }
    }
  }
}

}  // namespace mma
}  // namespace cf
