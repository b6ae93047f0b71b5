// gated_ffn_flow.cu -- one launch per gated-FFN block per decode step, as claimed tiles (batch 1..8):
//
//   n   = rmsnorm(x)                    (weight, or 1 + weight; statistics in fp32; n rounded to T once)
//   h   = act(n W_gate^T) * (n W_up^T)  (fp32; rounded to T once, as the cluster kernel does)
//   out = (x if add_residual) + h W_down^T   (fp32 accumulation, one rounding)
//
// Why a second FFN kernel. The cluster kernel (gated_ffn.cu) splits the weights statically over one wave
// of clusters. Its timeline on the H100 (benchmarks/NOTES-ffn.md, runs 4-7) streams each phase at the copy
// bandwidth but loses ~25 us of a 116 us Llama-2-7B launch to fixed costs no static split removes: CTAs of
// one wave stream the same bytes at different speeds (the last ends ~10 us after the median), the cluster
// waits for its slowest CTA at every exchange, and HBM idles while a cluster finishes one phase. Here the
// work is a queue of tiles, claimed in order from one counter, so fast SMs take more tiles and the grid
// ends within about one tile of the bytes:
//   * gate/up tile  = kUnits consecutive intermediate units i: gate row i and up row i, all H columns,
//                     so act(gate) * up is local to the tile. Writes h[:, units] (T) to a scratch buffer.
//   * down tile     = consecutive output rows j of W_down, all I columns, finished in the tile: out[:, j].
//   All gate/up tiles come first in the queue. A CTA whose claim is a down tile first issues that tile's
//   first weight loads, then waits until every gate/up tile has published its h (one counter), so HBM
//   stays busy across the hand-off. No co-residency is assumed: a down tile is claimed only after every
//   gate/up tile has been claimed by a running CTA, and gate/up tiles never wait, so every wait ends.
// Inside a tile, warp w takes row group w / WPR (RPW rows) and k-slice w % WPR of WPR equal slices of the
// row (WPR, warps per row group, is a run-time choice of the host per phase: smaller tiles for shapes
// with few rows). Each lane streams 16-byte weight vectors (kVecsInFlight per chunk, all loads of a chunk
// issued before its FMAs), the batch rows read the activation vector at the same k (n from shared memory,
// h from L1/L2), fp32 FMA; lanes meet in a fixed xor tree, slices in slice order: every output has one
// summation order whatever CTA computes it (bitwise deterministic, no float atomics).
// Scratch (host-allocated once per (I, device)): h [kMaxBatch][I] (T) and kCtrlWords counters, zero before
// the first launch; the last CTA to finish zeroes them (CUDA-graph replay safe). Launches that share them
// must be ordered (one stream), as decoder layers are.
#include "common.cuh"
#include "ffn_math.cuh"
#include "flow.cuh"

namespace cf {
namespace ffn_flow {

// -DCF_FFN_STREAMED=1 (FlowTuning(streamed=True); opt-in): down warps wait per h segment, not once for all of h.
// H100 bf16 B=1, 2026-12-07 (NOTES-ffn.md round 10), streamed vs one wait, us: Llama-3-8B 123.8 vs 126.0, Llama-2-7B
// 100.1 vs 100.1, Llama-3.2-1B 42.9 vs 42.4, Qwen2.5-0.5B 17.7 vs 17.5: a gain only where each CTA runs several
// gate/up tiles (a long ragged end), a polling cost elsewhere; off by default until a rule is measured.
#ifndef CF_FFN_STREAMED
#define CF_FFN_STREAMED 0
#endif
constexpr int kMaxBatch = 8;  // the h scratch rows; batch 9..16 stays on the cluster kernel
using namespace cf::flow;

/// @brief Words of the control block (int32 each); all zero between launches: ticket, gate/up tiles done, CTAs
/// finished, then one count of finished gate/up tiles per segment of kSegmentUnits intermediate units.
enum Ctrl : int { kTicket = 0, kDone = 1, kFinished = 2, kSegments = 32 };
/// Words between segment counts: one 128-byte line each, so the warps polling one segment do not contend with
/// the producers and pollers of the others (round 27: 2,112 polling warps on two lines cost more than they saved).
constexpr int kSegmentStride = 32;
/// h columns per segment counter. Gate/up tiles hold 1..16 units (a power of two, host-checked), so each tile
/// lies in one segment; a down warp waits only for the segments its next chunk reads (round 10, NOTES-ffn.md).
constexpr int kSegmentUnits = 256;

/// @brief Gate/up tiles in segment s: units [s * kSegmentUnits, +kSegmentUnits) cut at gu_units.
__device__ __forceinline__ int segment_tiles(int s, int inter, int gu_units) {
  return (min(inter, (s + 1) * kSegmentUnits) - s * kSegmentUnits) / gu_units;
}

/// @brief Fused gated FFN as a queue of tiles. Grid: any number of CTAs of kThreads (the host launches the
/// resident count); dynamic shared memory BB * H * sizeof(T) (n).
/// @tparam T    __half or __nv_bfloat16
/// @tparam RPW  weight rows per warp (2 or 4; kVecsInFlight / RPW vectors per row per chunk); even, so a
///              warp's rows pair gate and up of one unit
/// @tparam BB   batch rows computed (1, 2, 4, 8); batch <= BB at run time
/// @tparam HS   h in shared memory: after the hand-off the CTA copies h [batch][I] once into the n region
///              (its gate/up tiles are behind it: the queue puts them first), and its down tiles read it there,
///              not from L1/L2 once per tile and batch row. Same values, same order: the same bits as without.
///              Dynamic shared memory then BB * max(H, I) * sizeof(T).
/// gu_wpr / down_wpr: warps per row group in each phase (1, 2, 4, 8): tile rows RPW * 8 / wpr; the host
/// guarantees I % (gate/up tile rows / 2) == 0 and H % (down tile rows) == 0.
template <typename T, int RPW, int BB, bool HS = false>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm)
    gated_ffn_flow_kernel(const T* __restrict__ x, const T* __restrict__ norm_w, const T* __restrict__ w_gate,
                          const T* __restrict__ w_up, const T* __restrict__ w_down, T* __restrict__ out,
                          T* h_buf, int* ctrl, int hidden, int inter, int batch, float eps, int norm_kind,
                          int activation, int add_residual, int gu_wpr, int down_wpr,
                          unsigned long long* __restrict__ stamps) {
  static_assert(sizeof(T) == 2, "fp16 / bf16 only");
  static_assert(RPW % 2 == 0 && kVecsInFlight % RPW == 0, "rows per warp pair gate and up");
  static_assert(BB >= 1 && BB <= kMaxBatch, "batch bucket 1..8");
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ float red_s[kWarps * RPW * BB];
  __shared__ float ss_s[kWarps * BB];
  __shared__ float rstd_s[BB];
  __shared__ int ticket_s;
  __shared__ int ready_s[kWarps];  // per warp: h segments [its k-slice's first, ready) are known complete
  T* n_s = reinterpret_cast<T*>(smem);

  const int tid = threadIdx.x, warp = tid / kWarpSize, lane = tid % kWarpSize;
  const TileCut gu(RPW, gu_wpr, hidden / kElems, warp);
  const TileCut dn(RPW, down_wpr, inter / kElems, warp);
  const int gu_units = gu.rows / 2;
  const int gu_tiles = inter / gu_units;
  const int total = gu_tiles + hidden / dn.rows;

  constexpr bool kTimeline = CF_FLOW_TIMELINE != 0;
  // Streamed builds: down tiles wait per chunk for their h segments (buckets 1-2 only: the per-chunk gate spills
  // 8 B at bucket 4, NVRTC 13.5, and from there the h-in-shared-memory build is the faster one); else one wait.
  constexpr bool kStreamed = !HS && BB <= 2 && CF_FFN_STREAMED != 0;
  const unsigned long long cta_start = kTimeline ? timer_ns() : 0;
  unsigned long long wait_ns = 0, tile_start = 0;
  if (kStreamed && lane == 0) ready_s[warp] = dn.vec_begin * kElems / kSegmentUnits;  // ordered by first()'s barrier
  const Claims claims{ctrl + kTicket, &ticket_s};
  int t = claims.first();
  bool normed = false, handed_off = false;
  RowDot<T, RPW, BB> dot;
  while (t < total) {
    const int next = claims.ahead();  // claimed now; its round trip hides behind the tile
    if constexpr (kTimeline) tile_start = timer_ns();
    if (t < gu_tiles) {
      // ---- gate/up tile: units [unit0, unit0 + gu_units); row 2j = gate of unit j, row 2j + 1 = up
      const int unit0 = t * gu_units;
      const T* rows[RPW];
#pragma unroll
      for (int r = 0; r < RPW; ++r) {
        const int row = gu.row_group * RPW + r;
        rows[r] = ((row & 1) ? w_up : w_gate) + static_cast<size_t>(unit0 + row / 2) * hidden;
      }
      const auto act = [&](int b, int v) {
        return *reinterpret_cast<const uint4*>(n_s + static_cast<size_t>(b) * hidden + v * kElems);
      };
      dot.run(rows, gu, lane, batch, act, [&] {
        if (!normed) normalise_rows<T, BB>(n_s, x, norm_w, ss_s, rstd_s, hidden, batch, eps,
                                            norm_kind == ffn::kNormUnitOffset);
      });
      normed = true;
      dot.publish(red_s, warp, lane);
      __syncthreads();
      for (int i = tid; i < gu_units * batch; i += kThreads) {
        const int j = i / batch, b = i % batch;
        const float gate = slice_sum<RPW, BB>(red_s, 2 * j, b, gu_wpr);
        const float up = slice_sum<RPW, BB>(red_s, 2 * j + 1, b, gu_wpr);
        h_buf[static_cast<size_t>(b) * inter + unit0 + j] = from_float<T>(ffn::activate(gate, activation) * up);
        store_fence();
      }
      __syncthreads();
      if (tid == 0) {  // the CTA's h stores are ordered before the counts (flow.cuh: fenced or release)
        arrival_release();
        if constexpr (kStreamed) count_published(ctrl + kSegments + unit0 / kSegmentUnits * kSegmentStride);
        count_published(ctrl + kDone);
      }
    } else {
      // ---- down tile: output rows [row0, row0 + dn.rows), all I columns
      const int row0 = (t - gu_tiles) * dn.rows;
      const T* rows[RPW];
#pragma unroll
      for (int r = 0; r < RPW; ++r)
        rows[r] = w_down + static_cast<size_t>(row0 + dn.row_group * RPW + r) * inter;
      // h: written by other CTAs of this launch; plain loads after the acquire below (or the CTA's copy, HS)
      const T* h = HS ? n_s : h_buf;
      const auto act = [&](int b, int v) {
        return *reinterpret_cast<const uint4*>(h + static_cast<size_t>(b) * inter + v * kElems);
      };
      if constexpr (kStreamed) {
        // Streamed hand-off: each warp waits, chunk by chunk, for the segments of h that chunk reads (lane 0
        // acquires the counts, __syncwarp orders the other lanes' h loads after it); segments [slice start,
        // ready) are known complete (the warp keeps its k-slice from tile to tile, so later tiles skip the
        // checks). The order of the sums is the same as with one wait: the same bits.
        dot.run_gated(rows, dn, lane, batch, act, [&](int c, int e) {
          const int last = (e * kElems - 1) / kSegmentUnits, ready = ready_s[warp];
          if (last < ready) return;
          const unsigned long long wait_start = kTimeline ? timer_ns() : 0;
          if (lane == 0) {
            for (int s = max(ready, c * kElems / kSegmentUnits); s <= last; ++s) {
              const int target = segment_tiles(s, inter, gu_units);
              spin_until(ctrl + kSegments + s * kSegmentStride, target);
            }
          }
          __syncwarp();
          if (lane == 0 && c * kElems / kSegmentUnits <= ready) ready_s[warp] = last + 1;
          __syncwarp();
          if constexpr (kTimeline) wait_ns += timer_ns() - wait_start;
        });
      } else {
      dot.run(rows, dn, lane, batch, act, [&] {
        if (!handed_off) {
          if (tid == 0) {
            const unsigned long long wait_start = kTimeline ? timer_ns() : 0;
            spin_until(ctrl + kDone, gu_tiles);
            if constexpr (kTimeline) wait_ns = timer_ns() - wait_start;
          }
          __syncthreads();
          if constexpr (HS) {
            const int row_vecs = inter / kElems;
#pragma unroll 1
            for (int i = tid; i < batch * row_vecs; i += kThreads)
              reinterpret_cast<uint4*>(n_s)[i] = reinterpret_cast<const uint4*>(h_buf)[i];
            __syncthreads();
          }
        }
      });
      handed_off = true;
      }
      dot.publish(red_s, warp, lane);
      __syncthreads();
      for (int i = tid; i < dn.rows * batch; i += kThreads) {
        const int j = i / batch, b = i % batch;
        const float s = slice_sum<RPW, BB>(red_s, j, b, down_wpr);
        const size_t o = static_cast<size_t>(b) * hidden + row0 + j;
        out[o] = from_float<T>(add_residual ? s + to_float(x[o]) : s);
      }
    }
    stamp3(stamps, t, tile_start, kTimeline ? timer_ns() : 0, kTimeline ? sm_id() : 0);
    t = claims.advance(next);
  }
  stamp3(stamps, total + static_cast<int>(blockIdx.x), cta_start, kTimeline ? timer_ns() : 0, wait_ns);
  // Every claim of this launch has been made once all CTAs got here: the last one resets the counters.
  if (tid == 0) {
    __threadfence();
    if (atomicAdd(ctrl + kFinished, 1) == static_cast<int>(gridDim.x) - 1) {
      ctrl[kTicket] = 0;
      ctrl[kDone] = 0;
      ctrl[kFinished] = 0;
      if constexpr (kStreamed) {
        for (int s = 0; s * kSegmentUnits < inter; ++s) ctrl[kSegments + s * kSegmentStride] = 0;
      }
    }
  }
}

}  // namespace ffn_flow
}  // namespace cf

using cf::ffn_flow::gated_ffn_flow_kernel;
