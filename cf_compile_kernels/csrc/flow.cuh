// flow.cuh -- building blocks of the claimed-tile ("flow") decode kernels (gated_ffn_flow.cu, attention_flow.cu):
// a CTA claims tiles from one counter in queue order; a tile is RPW weight rows per warp, each row cut into
// WPR k-slices; every lane issues a chunk of kVecsInFlight 16-byte weight vectors before its FMAs; lanes meet
// in a fixed xor tree and slices in slice order, so each output has one summation order whatever CTA computes it.
// Hand-offs between tiles are integer counters read with acquire loads; a tile only waits on tiles that sit
// earlier in the queue, so every wait ends without any co-residency assumption.
#pragma once

#include "common.cuh"

namespace cf {
namespace flow {

constexpr int kWarpSize = 32;
constexpr int kWarps = 8;                     // per CTA; tiles are cut in row groups of warps
constexpr int kThreads = kWarps * kWarpSize;
constexpr int kMinBlocksPerSm = 2;            // two CTAs per SM: one streams while the other claims or reduces
constexpr int kElems = 8;                     // fp16/bf16 values per 16-byte vector
constexpr int kVecsInFlight = 16;             // weight vectors per lane issued before their FMAs (all rows)
constexpr unsigned kSpinSleepNs = 64;         // back-off of the hand-off wait

// ------------------------------------------------------------------ optional timeline
// -DCF_FLOW_TIMELINE=1 (ffn_flow.FlowTuning(timeline=True); benchmarks/ffn.py --phases on flow rows): thread 0
// writes, per tile t, stamps[t] = {claimed ns, done ns, SM id} (%globaltimer), and per CTA c, stamps[tiles + c] =
// {start ns, end ns, ns spent waiting for the hand-off}. Off (default): `stamps` is unused, the code the same.
#ifndef CF_FLOW_TIMELINE
#define CF_FLOW_TIMELINE 0
#endif
constexpr int kStampWords = 3;
// Timeline builds also record, per tile, up to kPhaseMarks times of its inner steps (TileClock::mark; which step
// each mark is belongs to the kernel: attention_flow.PHASE_MARKS), after the tile and CTA records.
constexpr int kPhaseMarks = 5;

__device__ __forceinline__ unsigned long long timer_ns() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

__device__ __forceinline__ unsigned sm_id() {
  unsigned id;
  asm volatile("mov.u32 %0, %%smid;" : "=r"(id));
  return id;
}

/// @brief Thread 0 writes {a, b, c} to record `slot` (timeline builds only).
__device__ __forceinline__ void stamp3(unsigned long long* stamps, int slot, unsigned long long a,
                                       unsigned long long b, unsigned long long c) {
  if constexpr (CF_FLOW_TIMELINE != 0) {
    if (threadIdx.x == 0) {
      unsigned long long* dst = stamps + static_cast<size_t>(slot) * kStampWords;
      dst[0] = a;
      dst[1] = b;
      dst[2] = c;
    }
  }
}

__device__ __forceinline__ int load_acquire(const int* p) {
  int v;
  asm volatile("ld.acquire.gpu.global.b32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

// ------------------------------------------------------------------ hand-off synchronisation
// Fenced form (-DCF_FLOW_LEAN_SYNC=0, this header's default; gated_ffn_flow.cu keeps it inline): every thread
// fences after each store another CTA reads (MEMBAR.SC.GPU), thread 0 fences around its counter atomic, and the
// wait polls with acquire loads (each poll invalidates the SM's L1). Lean form (-DCF_FLOW_LEAN_SYNC=1, round 31,
// attention_flow.cu's default): the CTA barrier orders the CTA's stores before thread 0's release (red.release /
// atom.acq_rel: MEMBAR.ALL.GPU, no SC fence, no per-thread fences), and the wait polls with relaxed loads, then
// one acquire fence (the release/acquire pattern of PTX's memory model: the barrier makes it cumulative). Same
// arithmetic, same bits; fewer round trips on the chain q/k/v -> attention -> merge -> o_proj.
#ifndef CF_FLOW_LEAN_SYNC
#define CF_FLOW_LEAN_SYNC 0
#endif

/// @brief After a store that another CTA will read: the default builds' per-thread fence (lean: nothing, the
/// barrier before the release orders it).
__device__ __forceinline__ void store_fence() {
  if constexpr (CF_FLOW_LEAN_SYNC == 0) __threadfence();
}

/// @brief Thread 0, after arrival_release(): count the CTA's stores published on `counter` (fenced: a plain
/// atomic; lean: a release reduction).
__device__ __forceinline__ void count_published(int* counter) {
  if constexpr (CF_FLOW_LEAN_SYNC != 0) {
    asm volatile("red.release.gpu.global.add.s32 [%0], 1;" : : "l"(counter) : "memory");
  } else {
    atomicAdd(counter, 1);
  }
}

/// @brief Thread 0: an arrival count's three steps -- arrival_release(), count_arrival(counter) (the count before
/// this arrival), arrival_acquire() -- for a last arrival that then reads every earlier arrival's stores (after a
/// CTA barrier). Default builds: a fence, a plain atomic, a fence; lean builds: one acq_rel atomic.
__device__ __forceinline__ void arrival_release() {
  if constexpr (CF_FLOW_LEAN_SYNC == 0) __threadfence();
}
__device__ __forceinline__ int count_arrival(int* counter) {
  if constexpr (CF_FLOW_LEAN_SYNC != 0) {
    int before;
    asm volatile("atom.acq_rel.gpu.global.add.s32 %0, [%1], 1;" : "=r"(before) : "l"(counter) : "memory");
    return before;
  } else {
    return atomicAdd(counter, 1);
  }
}
__device__ __forceinline__ void arrival_acquire() {
  if constexpr (CF_FLOW_LEAN_SYNC == 0) __threadfence();
}
/// @brief Thread 0, after a CTA barrier that follows the CTA's stores: count them published on `counter` (several
/// counters: arrival_release() once, then count_published on each).
__device__ __forceinline__ void publish_count(int* counter) {
  arrival_release();
  count_published(counter);
}

/// @brief Thread 0, after a CTA barrier that follows the CTA's stores: the three steps for one counter.
__device__ __forceinline__ int arrive_count(int* counter) {
  arrival_release();
  const int before = count_arrival(counter);
  arrival_acquire();
  return before;
}

__device__ __forceinline__ int load_relaxed(const int* p) {
  int v;
  asm volatile("ld.relaxed.gpu.global.b32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

/// @brief Spin (backing off) until *counter >= target, then acquire what the counted CTAs published.
__device__ __forceinline__ void spin_until(const int* counter, int target) {
  if constexpr (CF_FLOW_LEAN_SYNC != 0) {
    while (load_relaxed(counter) < target) __nanosleep(kSpinSleepNs);
    asm volatile("fence.acq_rel.gpu;" : : : "memory");
  } else {
    while (load_acquire(counter) < target) __nanosleep(kSpinSleepNs);
  }
}

/// @brief A CTA's timeline (CF_FLOW_TIMELINE builds; in the others every member is dead code): its start, its
/// current tile's claim, and the time thread 0 spent waiting on hand-off counters; written by stamp3.
/// attention_flow.cu uses it. gated_ffn_flow.cu keeps the same steps inline until its next measured change:
/// with this struct its plain builds compile to other instructions (33 of ~4,100 differ, NVRTC 13.5), and its
/// .text is the one measured on the H100 (NOTES-ffn.md round 9).
struct TileClock {
  static constexpr bool kOn = CF_FLOW_TIMELINE != 0;
  unsigned long long start = 0, tile = 0, waited = 0;
  unsigned long long marks[kPhaseMarks] = {};
  __device__ __forceinline__ TileClock() {
    if constexpr (kOn) start = timer_ns();
  }
  __device__ __forceinline__ void tile_claimed() {
    if constexpr (kOn) tile = timer_ns();
  }
  /// @brief Thread 0 only: spin_until(counter, target), timed.
  __device__ __forceinline__ void wait_until(const int* counter, int target) {
    const unsigned long long from = kOn ? timer_ns() : 0;
    spin_until(counter, target);
    if constexpr (kOn) waited += timer_ns() - from;
  }
  /// @brief Thread 0: the time the current tile reached its step `k` (< kPhaseMarks), for phase_done.
  __device__ __forceinline__ void mark(int k) {
    if constexpr (kOn) marks[k] = timer_ns();
  }
  /// @brief Record tile t's step marks in the phase region (after the tile and CTA records), then clear them.
  __device__ __forceinline__ void phases_done(unsigned long long* stamps, int tiles, int t) {
    if constexpr (kOn) {
      if (threadIdx.x == 0) {
        unsigned long long* dst =
            stamps + static_cast<size_t>(tiles + gridDim.x) * kStampWords + static_cast<size_t>(t) * kPhaseMarks;
#pragma unroll
        for (int k = 0; k < kPhaseMarks; ++k) {
          dst[k] = marks[k];
          marks[k] = 0;
        }
      }
    }
  }
  /// @brief Record tile t: {claimed, done, SM}.
  __device__ __forceinline__ void tile_done(unsigned long long* stamps, int t) const {
    stamp3(stamps, t, tile, kOn ? timer_ns() : 0, kOn ? sm_id() : 0);
  }
  /// @brief Record the CTA at `slot` (after the tiles): {start, end, waited}.
  __device__ __forceinline__ void cta_done(unsigned long long* stamps, int slot) const {
    stamp3(stamps, slot, start, kOn ? timer_ns() : 0, waited);
  }
};

/// @brief A CTA's claims on the tile queue: the first, then each next one claimed while the current tile runs
/// (the atomic's round trip hides behind the tile). `slot`: a __shared__ int that hands a claim to the CTA.
struct Claims {
  int* counter;
  int* slot;
  __device__ __forceinline__ int first() const {
    if (threadIdx.x == 0) *slot = atomicAdd(counter, 1);
    __syncthreads();
    return *slot;
  }
  /// @brief Thread 0 claims the tile after the current one (the other threads get 0).
  __device__ __forceinline__ int ahead() const { return threadIdx.x == 0 ? atomicAdd(counter, 1) : 0; }
  /// @brief The whole CTA moves on to thread 0's claim (a CTA barrier).
  __device__ __forceinline__ int advance(int next) const {
    if (threadIdx.x == 0) *slot = next;
    __syncthreads();
    return *slot;
  }
};

/// @brief Tile geometry of one phase: rows per tile and the k-slice of this warp.
struct TileCut {
  int rows;       // weight rows per tile: RPW * (kWarps / wpr)
  int row_group;  // this warp's first row in the tile = row_group * RPW
  int vec_begin;  // this warp's 16-byte vectors of each row: [vec_begin, vec_end)
  int vec_end;
  __device__ TileCut(int rpw, int wpr, int row_vecs, int warp) {
    rows = rpw * (kWarps / wpr);
    row_group = warp / wpr;
    const int slice = warp % wpr;
    vec_begin = slice * row_vecs / wpr;
    vec_end = (slice + 1) * row_vecs / wpr;
  }
};

/// @brief RPW weight rows x a k-slice, dotted with BB activation rows: each lane's chunk of kVecsInFlight
/// 16-byte weight vectors is issued before any of its FMAs.
template <typename T, int RPW, int BB>
struct RowDot {
  static constexpr int kU = kVecsInFlight / RPW;  // vectors per row per chunk
  static constexpr int kChunkVecs = kU * kWarpSize;
  uint4 w[RPW][kU];
  float acc[RPW][BB];

  __device__ __forceinline__ void zero() {
#pragma unroll
    for (int r = 0; r < RPW; ++r)
#pragma unroll
      for (int b = 0; b < BB; ++b) acc[r][b] = 0.f;
  }

  __device__ __forceinline__ void load(const T* const (&rows)[RPW], int c, int end, int lane) {
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      const int v = c + u * kWarpSize + lane;
#pragma unroll
      for (int r = 0; r < RPW; ++r)
        w[r][u] = v < end ? ld_stream(rows[r] + static_cast<size_t>(v) * kElems) : make_uint4(0, 0, 0, 0);
    }
  }

  /// @brief acc[r][b] += w[r] . act(b) over this chunk; `act(b, v)` gives the 16-byte activation vector v.
  template <typename Act>
  __device__ __forceinline__ void consume(int c, int end, int lane, int batch, const Act& act) {
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      const int v = c + u * kWarpSize + lane;
      if (v >= end) continue;
      float wf[RPW][kElems];
#pragma unroll
      for (int r = 0; r < RPW; ++r) unpack8<T>(w[r][u], wf[r]);
#pragma unroll
      for (int b = 0; b < BB; ++b) {
        if (b >= batch) continue;
        float a[kElems];
        unpack8<T>(act(b, v), a);
#pragma unroll
        for (int r = 0; r < RPW; ++r)
#pragma unroll
          for (int e = 0; e < kElems; ++e) acc[r][b] = fmaf(wf[r][e], a[e], acc[r][b]);
      }
    }
  }

  /// @brief The whole slice: first chunk issued, then `before_first()` (the norm or the hand-off wait, with
  /// CTA barriers: every warp calls this once per tile), then chunk after chunk.
  template <typename Act, typename Before>
  __device__ __forceinline__ void run(const T* const (&rows)[RPW], const TileCut& cut, int lane, int batch,
                                      const Act& act, const Before& before_first) {
    zero();
    int c = cut.vec_begin;
    load(rows, c, cut.vec_end, lane);
    before_first();
    for (;;) {
      consume(c, cut.vec_end, lane, batch, act);
      c += kChunkVecs;
      if (c >= cut.vec_end) break;
      load(rows, c, cut.vec_end, lane);
    }
  }

  /// @brief run() with a gate per chunk: `before_chunk(c, e)` runs after chunk [c, e)'s weight loads are issued
  /// and before its activations are read (a per-warp wait for the producers of those activations), so a warp
  /// streams the chunks whose inputs are ready while later ones are still being produced. No CTA barrier.
  template <typename Act, typename Gate>
  __device__ __forceinline__ void run_gated(const T* const (&rows)[RPW], const TileCut& cut, int lane, int batch,
                                            const Act& act, const Gate& before_chunk) {
    zero();
    int c = cut.vec_begin;
    for (;;) {
      load(rows, c, cut.vec_end, lane);
      before_chunk(c, min(c + kChunkVecs, cut.vec_end));
      consume(c, cut.vec_end, lane, batch, act);
      c += kChunkVecs;
      if (c >= cut.vec_end) break;
    }
  }

  /// @brief Lane sums (xor tree), written by lane 0 to red[warp][r][b].
  __device__ __forceinline__ void publish(float* red, int warp, int lane) {
#pragma unroll
    for (int r = 0; r < RPW; ++r)
#pragma unroll
      for (int b = 0; b < BB; ++b) {
        const float s = warp_sum(acc[r][b]);
        if (lane == 0) red[(warp * RPW + r) * BB + b] = s;
      }
  }
};

/// @brief Sum of row `row` (tile-local) for batch row b over the WPR slices, in slice order.
template <int RPW, int BB>
__device__ __forceinline__ float slice_sum(const float* red, int row, int b, int wpr) {
  const int first_warp = (row / RPW) * wpr, r = row % RPW;
  float s = 0.f;
  for (int k = 0; k < wpr; ++k) s += red[((first_warp + k) * RPW + r) * BB + b];
  return s;
}

/// @brief n[b][:] = rmsnorm(x[b][:]) rounded to T into shared memory (rows >= batch zero). Whole CTA.
template <typename T, int BB>
__device__ __forceinline__ void normalise_rows(T* n_s, const T* __restrict__ x, const T* __restrict__ norm_w,
                                               float* ss_s, float* rstd_s, int hidden, int batch, float eps,
                                               bool unit_offset) {
  const int tid = threadIdx.x, warp = tid / kWarpSize, lane = tid % kWarpSize;
  const int row_vecs = hidden / kElems;
#pragma unroll
  for (int b = 0; b < BB; ++b) {
    float s = 0.f;
    if (b < batch) {
      for (int v = tid; v < row_vecs; v += kThreads) {
        float f[kElems];
        unpack8<T>(*reinterpret_cast<const uint4*>(x + static_cast<size_t>(b) * hidden + v * kElems), f);
#pragma unroll
        for (int e = 0; e < kElems; ++e) s = fmaf(f[e], f[e], s);
      }
    }
    s = warp_sum(s);
    if (lane == 0) ss_s[warp * BB + b] = s;
  }
  __syncthreads();
  if (tid < BB) {
    float s = 0.f;
    for (int k = 0; k < kWarps; ++k) s += ss_s[k * BB + tid];
    rstd_s[tid] = rsqrtf(s / static_cast<float>(hidden) + eps);
  }
  __syncthreads();
  const float offset = unit_offset ? 1.f : 0.f;  // Gemma's (1 + w) or Llama's w
  for (int i = tid; i < BB * row_vecs; i += kThreads) {
    const int b = i / row_vecs, v = i % row_vecs;
    float f[kElems];
    if (b < batch) {
      float w[kElems];
      unpack8<T>(*reinterpret_cast<const uint4*>(x + static_cast<size_t>(b) * hidden + v * kElems), f);
      unpack8<T>(*reinterpret_cast<const uint4*>(norm_w + v * kElems), w);
#pragma unroll
      for (int e = 0; e < kElems; ++e) f[e] = (offset + w[e]) * (f[e] * rstd_s[b]);
    } else {
#pragma unroll
      for (int e = 0; e < kElems; ++e) f[e] = 0.f;
    }
    store_vec_f32(n_s + static_cast<size_t>(b) * hidden + v * kElems, f);
  }
  __syncthreads();
}

}  // namespace flow
}  // namespace cf
