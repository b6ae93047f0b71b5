// attention_flow.cu -- the attention block of one decode step (batch 1) as claimed tiles (flow.cuh):
//
//   n = rmsnorm(x) (rounded to T) -> q|k|v = n W^T (fp32) -> +bias -> NeoX RoPE (q scaled by scale*log2 e; k, v
//   rounded to T once, written to the static cache at the device-side position) -> attention over the live
//   range of the mask (or [0, pos]) -> o rounded to T -> out = [x +] o W_o^T [+ b_o] (fp32, one rounding).
//
// Why. The cluster kernel (attention_decode.cu) runs this block as seven phases of one static grid with three
// grid-wide hand-offs; at the small models its ~27 us are fixed costs (rounds 7 and 22 of NOTES-attention.md:
// each phase's first instructions cold, every hand-off waits for the slowest CTA). The FFN block went from
// 20.7 to 17.0 us (Qwen2.5-0.5B) and from 111 to 98.5 us (Llama-2-7B) as claimed tiles (NOTES-ffn.md, round 9).
// Here the same queue, in three tile kinds; a tile waits only on tiles earlier in the queue, and each wait is
// per KV group where the data allows it:
//   * q/k/v tiles: R rows of one head of [W_q; W_k; W_v] (whole rows), fp32 dot products into a global scratch;
//     per KV group a counter of finished tiles.
//   * attention tiles (group g, chunk c): wait for group g's q/k/v tiles only; bias, RoPE and the k/v rounding
//     for the group (redundant in its NC tiles, identical bits); chunk 0 writes the cache slot; attend over
//     chunk c of the live range (the new token from shared memory, never from the slot being written); the
//     tile's (m, l, o) per head to a global scratch; the last of the group's NC tiles merges them in chunk
//     order, writes o (T) and counts the group done.
//   * o_proj tiles: R rows of W_o; the first weight chunk is issued, then the tile waits for every group.
// Deterministic: each sum has one order (lanes: xor tree; warps, slices and chunks: index order).
// Hand-offs (flow.cuh): release/acquire by default here (round 31, H100 bf16 B=1: 1-2 us off every block, the
// per-thread SC fences and acquire polls gone); -DCF_FLOW_LEAN_SYNC=0 (CF_ATTN_FLOW_LEAN_SYNC=0): the fenced form.
#ifndef CF_FLOW_LEAN_SYNC
#define CF_FLOW_LEAN_SYNC 1
#endif
#include "common.cuh"
#include "flow.cuh"

namespace cf {
namespace attn_flow {

using namespace cf::flow;

constexpr float kLog2e = 1.4426950408889634f;
// Consecutive tokens per warp step: their K and V loads are in flight together, and their GM * run scores are
// reduced side by side; builds holding few heads per KV group take longer runs to keep that count up, GM = 8
// a shorter one to stay inside 128 registers (run 4 spills 8 B there, NVRTC 13.5).
template <int GM>
constexpr int kTokenRun = GM <= 2 ? 8 : (GM <= 4 ? 4 : 2);

// o_proj split by head segment (round 30; -DCF_ATTN_O_SPLIT=1, attention_flow.Knobs.o_split, opt-in until
// measured): an o_proj tile is rows x the columns of one segment of o_seg_groups KV groups, so it waits only for
// those groups and W_o streams while later groups still attend (round 28's timeline: at Llama-2-7B o_proj ran
// 13 us after the last group, its tiles holding only 32 KB of W_o each while they waited). Each tile writes its
// segment's fp32 partial of its rows; the last of a row block's segments sums them in segment order (+ bias,
// + residual) and rounds once: deterministic, another summation order than the default build's (same band).
#ifndef CF_ATTN_O_SPLIT
#define CF_ATTN_O_SPLIT 0
#endif

// Token-parallel lanes (round 30; -DCF_ATTN_TOKEN_LANES=1, attention_flow.Knobs.token_lanes, opt-in until
// measured): a group of kLanesPerToken<D, GM> lanes holds one K/V row (kRowElems elements per lane, one 16- or
// 8-byte load), a warp step covers kTokensPerStep tokens (kGroupsPerWarp groups x kGroupRun<GM> tokens each), and a
// score is reduced over log2(kLanesPerToken) xor levels that serve every group at once (round 29: the 32-lane,
// 5-level tree per score, 2 elements per lane at D = 64, was the attention tile's cost). Each group keeps its own
// running (m, l, o); the groups merge once per tile. kRowElems: 8 where q and o fit 64 registers, else 4.
#ifndef CF_ATTN_TOKEN_LANES
#define CF_ATTN_TOKEN_LANES 0
#endif

// Dense live range (round 31; the default, -DCF_ATTN_DENSE_MASK=0 / CF_ATTN_FLOW_DENSE_MASK=0 turns it off):
// the CTA's one scan of the mask row also counts its live tokens; where every token of [first, last] is live
// (a causal or padding-free row: the decode step's usual mask), the token loop skips its per-token mask loads
// (each an L2 round trip inside the loop's dependence chain). Same live set, same bits.
#ifndef CF_ATTN_DENSE_MASK
#define CF_ATTN_DENSE_MASK 1
#endif

// Merge stage (round 32; -DCF_ATTN_MERGE_STAGE=1, attention_flow.Knobs.merge_stage, opt-in until measured): the
// merging tile first copies the group's partials (count x GM x (D + 2) floats, count <= kSingleMergeMax) into
// shared memory with every load in flight, then merges from there. Round 31's step marks: the merge took 5-7 us
// at Qwen2.5-0.5B and Llama-3-8B (two passes of dependent L2 loads, 8 in flight, per output element). Same
// arithmetic in the same order: the same bits.
#ifndef CF_ATTN_MERGE_STAGE
#define CF_ATTN_MERGE_STAGE 0
#endif

// K/V prefetch (round 33; -DCF_ATTN_KV_PREFETCH=1, attention_flow.Knobs.kv_prefetch, opt-in until measured): an
// attention tile asks L2 for its chunk's K and V lines (prefetch.global.L2, no registers) as soon as it is
// claimed, before it waits for its group's q/k/v, so the token loop's dependent steps read L2, not HBM.
#ifndef CF_ATTN_KV_PREFETCH
#define CF_ATTN_KV_PREFETCH 0
#endif
constexpr int kLineBytes = 128;  // one L2 prefetch request

// Pipelined token-lane walk (round 33; -DCF_ATTN_WALK_PIPELINE=1, attention_flow.Knobs.walk_pipeline, opt-in until
// measured): each warp step issues the next step's K loads (packed: 2-4 registers per row part; with V too the
// GM = 8 build spilled 22 B) before the current step's scores, so the K round trip overlaps a step's arithmetic
// instead of preceding it; V's load still goes out at the step's start and hides behind the scores (round 31:
// ~1.3 us per step at Qwen, the walk 5.4 us of the tile at 1024 and 22 us at 4096). Same arithmetic: the same bits.
#ifndef CF_ATTN_WALK_PIPELINE
#define CF_ATTN_WALK_PIPELINE 0
#endif
template <int GM>
constexpr int kRowElems = GM * 8 <= 32 ? 8 : 4;
template <int D, int GM>
constexpr int kLanesPerToken = D / kRowElems<GM>;
template <int D, int GM>
constexpr int kGroupsPerWarp = 32 / kLanesPerToken<D, GM>;
template <int GM>
constexpr int kGroupRun = GM <= 2 ? 2 : 1;  // tokens per lane group per step (their loads go out together)

/// @brief Control words (int32, zero between launches): ticket, exit count, groups merged, then per KV group
/// its q/k/v tiles done and its attention tiles (or, two-level, its merged blocks) done, then (two-level only)
/// per KV group and block of kMergeFanIn chunks, the block's tiles done.
enum Ctrl : int { kTicket = 0, kFinished = 1, kGroupsDone = 2, kPerGroup = 3 };
/// Up to this many chunks per KV group, the group's last tile merges all of them (one serial pass: the landed
/// cap, attention_flow.MAX_CHUNKS). Above it the merge is two-level: the last tile of each block of kMergeFanIn
/// chunks merges the block, the last block's merger merges the blocks, so no tile reads more than
/// max(kMergeFanIn, NC / kMergeFanIn) partials (round 28: a cap of 64 cost 6 us at 1024 with one serial pass).
constexpr int kSingleMergeMax = 16;
constexpr int kMergeFanIn = 8;

/// @brief A partial's word: from L2 (written by other CTAs of this launch), or from the merge stage (generic load).
__device__ __forceinline__ float ld_partial(const float* p) {
  if constexpr (CF_ATTN_MERGE_STAGE != 0) {
    return *p;
  } else {
    return __ldcg(p);
  }
}

/// @brief Merge `count` (m, l, o) partials of one KV group (stride GM * (D + 2) floats, heads < G), in index
/// order, by the whole CTA: to `dst` as an (m, l, o) partial, or, with `ao`, to o rounded to T.
template <typename T, int D, int GM>
__device__ __forceinline__ void merge_partials(const float* base, int count, int G, float* stage, float* dst,
                                               T* ao) {
  if constexpr (CF_ATTN_MERGE_STAGE != 0) {
    if (count <= kSingleMergeMax) {  // the partials are contiguous: one coalesced copy, then shared-memory reads
      const int words = count * GM * (D + 2);
      const int vecs = (reinterpret_cast<unsigned long long>(base) % 16 == 0) ? words / 4 : 0;  // GM = 1: odd rows
      for (int i = threadIdx.x; i < vecs; i += kThreads)
        reinterpret_cast<float4*>(stage)[i] = __ldcg(reinterpret_cast<const float4*>(base) + i);
      for (int i = vecs * 4 + static_cast<int>(threadIdx.x); i < words; i += kThreads) stage[i] = __ldcg(base + i);
      __syncthreads();
      base = stage;
    }
  }
  for (int idx = threadIdx.x; idx < G * D; idx += kThreads) {
    const int h = idx / D, d = idx % D;
    float M = neg_inf();
#pragma unroll 8
    for (int k = 0; k < count; ++k) M = fmaxf(M, ld_partial(base + (k * GM + h) * (D + 2) + D));
    float O = 0.f, S = 0.f;
#pragma unroll 8
    for (int k = 0; k < count; ++k) {
      const float* pk = base + (k * GM + h) * (D + 2);
      const float f = softmax_rescale(ld_partial(pk + D), M);
      O = fmaf(ld_partial(pk + d), f, O);
      S = fmaf(ld_partial(pk + D + 1), f, S);
    }
    if (ao != nullptr) {
      ao[h * D + d] = from_float<T>(S > 0.f ? O / S : 0.f);
    } else {
      dst[h * (D + 2) + d] = O;
      if (d == 0) {
        dst[h * (D + 2) + D] = M;
        dst[h * (D + 2) + D + 1] = S;
      }
    }
    store_fence();
  }
}

/// @brief The live range [lo, hi) (range_s = [first, last]; empty: last < 0) and its chunk c of NC equal parts.
struct Chunk {
  int lo, hi, cs, ce;
};
__device__ __forceinline__ Chunk chunk_of(const int* range_s, int NC, int c) {
  const int lo = range_s[1] < 0 ? 0 : range_s[0], hi = range_s[1] + 1;
  const int cs = lo + c * ceil_div(max(hi - lo, 0), NC);
  return {lo, hi, cs, min(hi, cs + ceil_div(max(hi - lo, 0), NC))};
}

/// @brief Ask L2 for rows [cs, ce) of one K or V cache head (`row_bytes` each), the CTA's threads in turn.
__device__ __forceinline__ void prefetch_rows_l2(const void* head, int cs, int ce, int row_bytes) {
  const char* const base = static_cast<const char*>(head) + static_cast<size_t>(cs) * row_bytes;
  const int lines = max(ce - cs, 0) * row_bytes / kLineBytes;
  for (int i = threadIdx.x; i < lines; i += kThreads)
    asm volatile("prefetch.global.L2 [%0];" : : "l"(base + static_cast<size_t>(i) * kLineBytes));
}

/// @brief Nonzero bytes of row[j0, j0 + kMaskScanBytes) (load_mask_chunk's; L1 hits after mask_chunk_bounds read
/// the same 16 bytes: once per CTA, off the hand-off chain).
__device__ __forceinline__ int live_bytes(const unsigned char* row, int j0, int L, bool vec) {
  alignas(16) unsigned char bytes[kMaskScanBytes];
  load_mask_chunk(row, j0, L, vec, bytes);
  int n = 0;
#pragma unroll
  for (int e = 0; e < kMaskScanBytes; ++e) n += bytes[e] != 0;
  return n;
}

/// @brief The live range [first, last] of the mask row [L] (null: [0, min(pos, L - 1)]), into range_s[0..1];
/// CF_ATTN_DENSE_MASK builds also count the live tokens into range_s[2].
__device__ __forceinline__ void live_range(const unsigned char* mask, int L, long long pos, int* range_s) {
  const int tid = threadIdx.x;
  if (tid == 0) {
    range_s[0] = mask != nullptr ? 0x7fffffff : 0;
    range_s[1] = mask != nullptr ? -1 : static_cast<int>(min(pos, static_cast<long long>(L - 1)));
    if constexpr (CF_ATTN_DENSE_MASK != 0) range_s[2] = 0;
  }
  __syncthreads();
  if (mask != nullptr) {
    const bool vec = ((reinterpret_cast<unsigned long long>(mask) | static_cast<unsigned long long>(L)) %
                      kMaskScanBytes) == 0;
    for (int j0 = tid * kMaskScanBytes; j0 < L; j0 += kThreads * kMaskScanBytes) {
      int first, last;
      mask_chunk_bounds(mask, j0, L, vec, first, last);
      if (last >= 0) {
        atomicMin(range_s, first);
        atomicMax(range_s + 1, last);
        if constexpr (CF_ATTN_DENSE_MASK != 0) atomicAdd(range_s + 2, live_bytes(mask, j0, L, vec));
      }
    }
  }
  __syncthreads();
}

/// @brief The packed form of E fp16/bf16 elements: one 4-, 8- or 16-byte load (E = 2, 4 or 8).
template <int E>
struct PackedPart;
template <>
struct PackedPart<2> {
  unsigned v;
};
template <>
struct PackedPart<4> {
  uint2 v;
};
template <>
struct PackedPart<8> {
  uint4 v;
};

/// @brief Elements [part * E, +E) of one K or V row, still packed (load_row_part; the pipelined walk's next step).
template <int E, typename T>
__device__ __forceinline__ PackedPart<E> load_packed(const T* row, int part) {
  PackedPart<E> p;
  p.v = *reinterpret_cast<const decltype(p.v)*>(row + part * E);
  return p;
}

/// @brief Elements [part * E, +E) of one K or V row (E = 2, 4 or 8: one 4-, 8- or 16-byte load), widened to fp32.
template <typename T, int E>
__device__ __forceinline__ void load_row_part(const T* row, int part, float (&f)[E]) {
  static_assert(E == 2 || E == 4 || E == 8, "2, 4 or 8 elements per lane");
  if constexpr (E == 8) {
    unpack8<T>(*reinterpret_cast<const uint4*>(row + part * 8), f);
  } else if constexpr (E == 2) {
    const float2 a = pair_to_float2<T>(*reinterpret_cast<const unsigned*>(row + part * 2));
    f[0] = a.x;
    f[1] = a.y;
  } else {
    const uint2 u = *reinterpret_cast<const uint2*>(row + part * 4);
    const float2 a = pair_to_float2<T>(u.x), b = pair_to_float2<T>(u.y);
    f[0] = a.x;
    f[1] = a.y;
    f[2] = b.x;
    f[3] = b.y;
  }
}

/// @brief A packed part widened to fp32: load_row_part's widening, read from the registers of `p`.
template <typename T, int E>
__device__ __forceinline__ void unpack_part(const PackedPart<E>& p, float (&f)[E]) {
  load_row_part<T, E>(reinterpret_cast<const T*>(&p.v), 0, f);
}

/// @brief A walk's registers before its first token: q of heads [h0, h0 + GM) (elements [part * E, +E); heads >= G
/// zero), o = 0, l = 0, m = -inf.
template <int GM, int E, int D>
__device__ __forceinline__ void start_walk(const float* q_s, int h0, int G, int part, float (&q)[GM][E],
                                           float (&o)[GM][E], float (&m)[GM], float (&l)[GM]) {
#pragma unroll
  for (int h = 0; h < GM; ++h) {
    m[h] = neg_inf();
    l[h] = 0.f;
#pragma unroll
    for (int e = 0; e < E; ++e) {
      q[h][e] = h0 + h < G ? q_s[(h0 + h) * D + part * E + e] : 0.f;
      o[h][e] = 0.f;
    }
  }
}

/// @brief Scores of a step's RUN tokens for every head the walk holds, over this lane's E elements (heads >= G
/// have q = 0: computed, never written), then one xor tree per level from FIRST_OFF down over all of them at once:
/// RUN * GM independent shuffles per level instead of RUN * GM dependent chains (round 27).
template <int RUN, int GM, int E, int FIRST_OFF>
__device__ __forceinline__ void step_scores(const float (&q)[GM][E], const float (&kf)[RUN][E],
                                            float (&sc)[RUN][GM]) {
#pragma unroll
  for (int u = 0; u < RUN; ++u)
#pragma unroll
    for (int h = 0; h < GM; ++h) {
      float d = 0.f;
#pragma unroll
      for (int e = 0; e < E; ++e) d = fmaf(q[h][e], kf[u][e], d);
      sc[u][h] = d;
    }
#pragma unroll
  for (int off = FIRST_OFF; off; off >>= 1)
#pragma unroll
    for (int u = 0; u < RUN; ++u)
#pragma unroll
      for (int h = 0; h < GM; ++h) sc[u][h] += __shfl_xor_sync(0xffffffffu, sc[u][h], off);
}

/// @brief One online-softmax step per head over a step's RUN tokens: their maximum, one rescale, their
/// probabilities in token order (dead tokens weigh 0).
template <int RUN, int GM, int E>
__device__ __forceinline__ void online_step(const float (&sc)[RUN][GM], const bool (&live)[RUN],
                                            const float (&vf)[RUN][E], float (&m)[GM], float (&l)[GM],
                                            float (&o)[GM][E]) {
#pragma unroll
  for (int h = 0; h < GM; ++h) {
    float mx = m[h];
#pragma unroll
    for (int u = 0; u < RUN; ++u) mx = live[u] ? fmaxf(mx, sc[u][h]) : mx;
    const float corr = softmax_rescale(m[h], mx);
    float p[RUN];
#pragma unroll
    for (int u = 0; u < RUN; ++u) p[u] = live[u] ? exp2f(sc[u][h] - mx) : 0.f;
    float ls = l[h] * corr;
#pragma unroll
    for (int u = 0; u < RUN; ++u) ls += p[u];
    l[h] = ls;
#pragma unroll
    for (int e = 0; e < E; ++e) {
      float a = o[h][e] * corr;
#pragma unroll
      for (int u = 0; u < RUN; ++u) a = fmaf(p[u], vf[u][e], a);
      o[h][e] = a;
    }
    m[h] = mx;
  }
}

/// Query heads one token-parallel walk holds: GM = 8 walks the chunk twice, 4 heads each (8 heads' q and o in
/// registers spill at 128 registers; the second walk's K/V rows come from L1/L2).
template <int GM>
constexpr int kHeadsPerWalk = GM < 4 ? GM : 4;

/// @brief The token-parallel walk of one attention tile's chunk [cs, ce) (CF_ATTN_TOKEN_LANES) for query heads
/// [h0, h0 + GM) of the group (G in all): this warp's (m, l, o) per head into its slots of wo_s / wm_s / wl_s
/// (GS heads per warp slot: the build's).
template <typename T, int D, int GM, int GS>
__device__ __forceinline__ void attend_token_lanes(const float* q_s, const T* kc, const T* vc, const T* knew_s,
                                                   const T* vnew_s, const unsigned char* mask, long long pos,
                                                   int cs, int ce, int h0, int G, int warp, int lane, float* wo_s,
                                                   float* wm_s, float* wl_s) {
  constexpr int E = kRowElems<GM>, LPT = kLanesPerToken<D, GM>, GPW = kGroupsPerWarp<D, GM>;
  constexpr int kStep = GPW * kGroupRun<GM>;  // tokens per warp step
  const int group = lane / LPT, part = lane % LPT;
  float q[GM][E], o[GM][E], m[GM], l[GM];
  start_walk<GM, E, D>(q_s, h0, G, part, q, o, m, l);
  // the row token `tok` reads: its cache row, or the new token's (shared memory) at pos and past the chunk
  const auto k_row = [&](int tok) { return tok < ce && tok != pos ? kc + static_cast<size_t>(tok) * D : knew_s; };
  const auto v_row = [&](int tok) { return tok < ce && tok != pos ? vc + static_cast<size_t>(tok) * D : vnew_s; };
  if constexpr (CF_ATTN_WALK_PIPELINE != 0) {
    PackedPart<E> kp[kGroupRun<GM>];  // K only: V is first needed after the scores, its load hides behind them
#pragma unroll
    for (int u = 0; u < kGroupRun<GM>; ++u) kp[u] = load_packed<E>(k_row(cs + warp * kStep + u * GPW + group), part);
    for (int t0 = cs + warp * kStep; t0 < ce; t0 += kWarps * kStep) {
      float kf[kGroupRun<GM>][E], vf[kGroupRun<GM>][E];
      bool live[kGroupRun<GM>];
#pragma unroll
      for (int u = 0; u < kGroupRun<GM>; ++u) {
        const int tok = t0 + u * GPW + group;
        live[u] = tok < ce && (mask == nullptr || mask[tok] != 0);
        load_row_part<T, E>(v_row(tok), part, vf[u]);
        unpack_part<T, E>(kp[u], kf[u]);
        kp[u] = load_packed<E>(k_row(tok + kWarps * kStep), part);  // the next step's K, before this step's math
      }
      float sc[kGroupRun<GM>][GM];
      step_scores<kGroupRun<GM>, GM, E, LPT / 2>(q, kf, sc);
      online_step<kGroupRun<GM>, GM, E>(sc, live, vf, m, l, o);
    }
  } else {
  for (int t0 = cs + warp * kStep; t0 < ce; t0 += kWarps * kStep) {
    float kf[kGroupRun<GM>][E], vf[kGroupRun<GM>][E];
    bool live[kGroupRun<GM>];
#pragma unroll
    for (int u = 0; u < kGroupRun<GM>; ++u) {  // this group's tokens t0 + u * GPW + group: a step reads kStep rows
      const int tok = t0 + u * GPW + group;
      live[u] = tok < ce && (mask == nullptr || mask[tok] != 0);
      const bool cached = tok < ce && tok != pos;
      load_row_part<T, E>(cached ? kc + static_cast<size_t>(tok) * D : knew_s, part, kf[u]);
      load_row_part<T, E>(cached ? vc + static_cast<size_t>(tok) * D : vnew_s, part, vf[u]);
    }
    float sc[kGroupRun<GM>][GM];
    step_scores<kGroupRun<GM>, GM, E, LPT / 2>(q, kf, sc);
    online_step<kGroupRun<GM>, GM, E>(sc, live, vf, m, l, o);
  }
  }  // CF_ATTN_WALK_PIPELINE
  merge_token_slots<GM, E>(m, l, o, LPT);  // group 0's lanes hold the warp's result
  if (group == 0) {
#pragma unroll
    for (int h = 0; h < GM; ++h) {
#pragma unroll
      for (int e = 0; e < E; ++e) wo_s[(warp * GS + h0 + h) * D + part * E + e] = o[h][e];
      if (part == 0) {
        wm_s[warp * GS + h0 + h] = m[h];
        wl_s[warp * GS + h0 + h] = l[h];
      }
    }
  }
}

/// @brief Attention block of one decode step (batch 1) as a queue of tiles. Grid: any CTA count of kThreads;
/// dynamic shared memory: H * sizeof(T) (n) + the attention tile's scratch (attention_flow.py smem_bytes).
/// @tparam T   __half or __nv_bfloat16
/// @tparam D   head_dim (64 or 128)
/// @tparam GM  query heads per KV head the build holds (1, 2, 4, 8); G = NH / KVH <= GM at run time
/// @tparam RPW weight rows per warp of the q/k/v and o_proj tiles (2 or 4)
template <typename T, int D, int GM, int RPW>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm) attention_flow_kernel(
    const void* x, const void* norm_w, const void* wq, const void* wk, const void* wv, const void* bq, const void* bk,
    const void* bv, const void* cos, const void* sin, const long long* cache_position, void* k_cache, void* v_cache,
    const unsigned char* mask, const void* wo, const void* bo, void* out, float* qkv, float* part, void* attn_o,
    int* ctrl, unsigned long long* stamps, float eps, float scale, int hidden, int num_heads, int num_kv_heads,
    int max_cache_len, int chunks, int cos_kind, int unit_offset, int add_residual, int qkv_wpr, int o_wpr,
    float* o_part, int o_seg_groups) {
  static_assert(sizeof(T) == 2, "fp16 / bf16 only");
  static_assert(GM == 1 || GM == 2 || GM == 4 || GM == 8, "query heads per KV head: 1, 2, 4 or 8");
  constexpr int kLaneElems = D / 32;
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ float red_s[kWarps * RPW];
  __shared__ float ss_s[kWarps];
  __shared__ float rstd_s[1];
  __shared__ int ticket_s, last_s, last_block_s, range_s[CF_ATTN_DENSE_MASK != 0 ? 3 : 2];  // first, last[, live count]

  const int tid = threadIdx.x, warp = tid / kWarpSize, lane = tid % kWarpSize;
  const int H = hidden, NH = num_heads, KVH = num_kv_heads, G = NH / KVH, NC = chunks;
  const int L = max_cache_len;
  // shared memory: n [H] (T) | q [GM][D] fp32 | k_new, v_new [D] (T) | warp partials o [kWarps][GM][D], m, l
  // [| merge stage (CF_ATTN_MERGE_STAGE)]
  T* n_s = reinterpret_cast<T*>(smem);
  float* q_s = reinterpret_cast<float*>(smem + ceil_div(H * 2, 16) * 16);
  T* knew_s = reinterpret_cast<T*>(q_s + GM * D);
  T* vnew_s = knew_s + D;
  float* wo_s = reinterpret_cast<float*>(vnew_s + D);
  float* wm_s = wo_s + kWarps * GM * D;
  float* wl_s = wm_s + kWarps * GM;
  float* stage = wl_s + kWarps * GM;  // CF_ATTN_MERGE_STAGE: kSingleMergeMax x GM x (D + 2) floats (16-B aligned)

  const TileCut qc(RPW, qkv_wpr, H / kElems, warp);
  const TileCut oc(RPW, o_wpr, NH * D / kElems, warp);
  const int qkv_rows = (NH + 2 * KVH) * D;
  const int qkv_tiles = qkv_rows / qc.rows, qkv_per_group = (G + 2) * D / qc.rows;
  // CF_ATTN_O_SPLIT: NS segments of o_seg_groups KV groups; o_proj tiles segment-major over row blocks
  const int NS = CF_ATTN_O_SPLIT != 0 ? KVH / o_seg_groups : 1;
  const int seg_cols = CF_ATTN_O_SPLIT != 0 ? o_seg_groups * G * D : 0;
  const int attn_tiles = KVH * NC, o_tiles = H / oc.rows * NS;
  const int total = qkv_tiles + attn_tiles + o_tiles;
  int* const qkv_done = ctrl + kPerGroup;
  int* const attn_done = qkv_done + KVH;
  const int NB = NC > kSingleMergeMax ? ceil_div(NC, kMergeFanIn) : 0;  // merge blocks per group (two-level)
  int* const block_done = attn_done + KVH;
  int* const seg_done = block_done + KVH * NB;  // CF_ATTN_O_SPLIT: per segment its merged groups
  int* const row_done = seg_done + NS;          // ... and per o_proj row block its finished segments
  const T* const xs = static_cast<const T*>(x);

  TileClock clock;
  const Claims claims{ctrl + kTicket, &ticket_s};
  int t = claims.first();
  bool normed = false, ranged = false, o_ready = false;
  RowDot<T, RPW, 1> dot;
  const long long pos = *cache_position;
  while (t < total) {
    const int next = claims.ahead();
    clock.tile_claimed();
    if (t < qkv_tiles) {
      // ---- q/k/v tile: rows [row0, row0 + rows) of one head of [W_q; W_k; W_v]. Tiles run group by group (the
      // group's G query heads, then its k and v head), so the first groups' attention can start while the
      // last groups' rows still stream; row0 indexes the q | k | v layout of the scratch and the weights.
      const int group = t / qkv_per_group, local = (t % qkv_per_group) * qc.rows;
      const int hh = local / D, in_head = local % D;  // hh < G: query head group * G + hh; G: k; G + 1: v
      const int row0 = (hh < G ? (group * G + hh) : (hh == G ? NH + group : NH + KVH + group)) * D + in_head;
      const T* rows[RPW];
#pragma unroll
      for (int r = 0; r < RPW; ++r) {
        const int row = row0 + qc.row_group * RPW + r;
        const T* w = row < NH * D ? static_cast<const T*>(wq) + static_cast<size_t>(row) * H
                     : row < (NH + KVH) * D ? static_cast<const T*>(wk) + static_cast<size_t>(row - NH * D) * H
                                            : static_cast<const T*>(wv) + static_cast<size_t>(row - (NH + KVH) * D) * H;
        rows[r] = w;
      }
      const auto act = [&](int, int v) { return *reinterpret_cast<const uint4*>(n_s + v * kElems); };
      dot.run(rows, qc, lane, 1, act, [&] {
        if (!normed) {
          normalise_rows<T, 1>(n_s, xs, static_cast<const T*>(norm_w), ss_s, rstd_s, H, 1, eps,
                               unit_offset != 0);
        }
      });
      normed = true;
      clock.mark(0);  // q/k/v: rows summed
      dot.publish(red_s, warp, lane);
      __syncthreads();
      for (int j = tid; j < qc.rows; j += kThreads) {
        qkv[row0 + j] = slice_sum<RPW, 1>(red_s, j, 0, qkv_wpr);
        store_fence();
      }
      __syncthreads();
      if (tid == 0) publish_count(qkv_done + group);
      clock.mark(1);  // q/k/v: counted
    } else if (t < qkv_tiles + attn_tiles) {
      // ---- attention tile: KV group g, chunk c of the live range
      const int g = (t - qkv_tiles) / NC, c = (t - qkv_tiles) % NC;
      if (!ranged) live_range(mask, L, pos, range_s);  // once per CTA: the range is the launch's
      ranged = true;
      // the chunk, asked of L2 before the wait; chunk_of runs again after it (kept live across the wait, the chunk
      // reorders the default build's instructions)
      if constexpr (CF_ATTN_KV_PREFETCH != 0) {
        const Chunk ch = chunk_of(range_s, NC, c);
        const size_t head = static_cast<size_t>(g) * L * D * sizeof(T);
        prefetch_rows_l2(static_cast<const char*>(k_cache) + head, ch.cs, ch.ce, D * sizeof(T));
        prefetch_rows_l2(static_cast<const char*>(v_cache) + head, ch.cs, ch.ce, D * sizeof(T));
      }
      if (tid == 0) clock.wait_until(qkv_done + g, qkv_per_group);
      __syncthreads();
      clock.mark(0);  // attention: q/k/v of the group ready
      // bias, RoPE (q scaled into the exp2 domain; k, v rounded to T once), every tile of the group alike
      const float q_scale = scale * kLog2e;
      const int half = D / 2;
      for (int idx = tid; idx < (G + 2) * half; idx += kThreads) {
        const int hh = idx / half, i = idx % half;  // hh < G: q head; G: k; G + 1: v
        const int row = hh < G ? (g * G + hh) * D : (hh == G ? (NH + g) * D : (NH + KVH + g) * D);
        const void* bias = hh < G ? bq : (hh == G ? bk : bv);
        const int brow = hh < G ? (g * G + hh) * D : g * D;
        float a = __ldcg(qkv + row + i), b = __ldcg(qkv + row + i + half);
        if (bias != nullptr) {
          a += load_scalar<T>(bias, brow + i);
          b += load_scalar<T>(bias, brow + i + half);
        }
        if (hh <= G) {
          const float ra = a * load_table(cos, cos_kind, i) - b * load_table(sin, cos_kind, i);
          const float rb = b * load_table(cos, cos_kind, i + half) + a * load_table(sin, cos_kind, i + half);
          a = ra;
          b = rb;
        }
        if (hh < G) {
          q_s[hh * D + i] = a * q_scale;
          q_s[hh * D + i + half] = b * q_scale;
        } else {
          T* dst = hh == G ? knew_s : vnew_s;
          dst[i] = from_float<T>(a);
          dst[i + half] = from_float<T>(b);
          if (c == 0 && pos >= 0 && pos < L) {
            T* cache = static_cast<T*>(hh == G ? k_cache : v_cache) + (static_cast<size_t>(g) * L + pos) * D;
            cache[i] = dst[i];
            cache[i + half] = dst[i + half];
          }
        }
      }
      __syncthreads();
      clock.mark(1);  // attention: bias, RoPE, cache slot done
      const Chunk ch = chunk_of(range_s, NC, c);
      const int cs = ch.cs, ce = ch.ce;
      // CF_ATTN_DENSE_MASK: every token of [lo, hi) live -> the loop reads no mask byte
      const unsigned char* const walk_mask =
          CF_ATTN_DENSE_MASK != 0 && ch.hi > ch.lo && range_s[2] == ch.hi - ch.lo ? nullptr : mask;
      if constexpr (CF_ATTN_TOKEN_LANES != 0) {
        constexpr int HW = kHeadsPerWalk<GM>;
#pragma unroll 1
        for (int h0 = 0; h0 < GM; h0 += HW)
          attend_token_lanes<T, D, HW, GM>(q_s, static_cast<const T*>(k_cache) + static_cast<size_t>(g) * L * D,
                                           static_cast<const T*>(v_cache) + static_cast<size_t>(g) * L * D, knew_s,
                                           vnew_s, walk_mask, pos, cs, ce, h0, G, warp, lane, wo_s, wm_s, wl_s);
      } else {
      float q[GM][kLaneElems], o[GM][kLaneElems], m[GM], l[GM];
      start_walk<GM, kLaneElems, D>(q_s, 0, G, lane, q, o, m, l);
      const T* kc = static_cast<const T*>(k_cache) + static_cast<size_t>(g) * L * D;
      const T* vc = static_cast<const T*>(v_cache) + static_cast<size_t>(g) * L * D;
      for (int t0 = cs + warp * kTokenRun<GM>; t0 < ce; t0 += kWarps * kTokenRun<GM>) {
        float kf[kTokenRun<GM>][kLaneElems], vf[kTokenRun<GM>][kLaneElems];
        bool live[kTokenRun<GM>];
#pragma unroll
        for (int u = 0; u < kTokenRun<GM>; ++u) {  // every load of the run issued before any use
          const int tok = t0 + u;
          live[u] = tok < ce && (walk_mask == nullptr || walk_mask[tok] != 0);
          const bool cached = tok < ce && tok != pos;
          const T* krow = cached ? kc + static_cast<size_t>(tok) * D : knew_s;
          const T* vrow = cached ? vc + static_cast<size_t>(tok) * D : vnew_s;
          load_row_part<T, kLaneElems>(krow, lane, kf[u]);
          load_row_part<T, kLaneElems>(vrow, lane, vf[u]);
        }
        float sc[kTokenRun<GM>][GM];
        step_scores<kTokenRun<GM>, GM, kLaneElems, kWarpSize / 2>(q, kf, sc);
        online_step<kTokenRun<GM>, GM, kLaneElems>(sc, live, vf, m, l, o);
      }
      // warps -> tile, in warp order
#pragma unroll
      for (int h = 0; h < GM; ++h) {
#pragma unroll
        for (int e = 0; e < kLaneElems; ++e) wo_s[(warp * GM + h) * D + lane * kLaneElems + e] = o[h][e];
        if (lane == 0) {
          wm_s[warp * GM + h] = m[h];
          wl_s[warp * GM + h] = l[h];
        }
      }
      }  // CF_ATTN_TOKEN_LANES
      __syncthreads();
      clock.mark(2);  // attention: the chunk walked
      float* const gpart = part + (static_cast<size_t>(g) * NC + c) * GM * (D + 2);
      for (int idx = tid; idx < G * D; idx += kThreads) {
        const int h = idx / D, d = idx % D;
        float M = neg_inf();
        for (int w = 0; w < kWarps; ++w) M = fmaxf(M, wm_s[w * GM + h]);
        float O = 0.f, S = 0.f;
        for (int w = 0; w < kWarps; ++w) {
          const float f = softmax_rescale(wm_s[w * GM + h], M);
          O = fmaf(wo_s[(w * GM + h) * D + d], f, O);
          S = fmaf(wl_s[w * GM + h], f, S);
        }
        gpart[h * (D + 2) + d] = O;
        if (d == 0) {
          gpart[h * (D + 2) + D] = M;
          gpart[h * (D + 2) + D + 1] = S;
        }
        store_fence();
      }
      __syncthreads();
      const bool two_level = NC > kSingleMergeMax;
      const int block = c / kMergeFanIn, in_block = min(kMergeFanIn, NC - block * kMergeFanIn);
      if (tid == 0) {
        arrival_release();
        last_s = two_level ? count_arrival(block_done + g * NB + block) == in_block - 1
                           : count_arrival(attn_done + g) == NC - 1;
        arrival_acquire();
      }
      __syncthreads();
      clock.mark(3);  // attention: partial published and counted
      if (last_s) {  // the last tile of the group (one level) or of its block (two levels) merges, chunk order
        T* const ao = static_cast<T*>(attn_o) + static_cast<size_t>(g) * G * D;
        const float* const base = part + static_cast<size_t>(g) * NC * GM * (D + 2);
        bool merged = !two_level;
        if (two_level) {
          float* const blocks = part + static_cast<size_t>(KVH) * NC * GM * (D + 2) +
                                static_cast<size_t>(g) * NB * GM * (D + 2);
          merge_partials<T, D, GM>(base + static_cast<size_t>(block) * kMergeFanIn * GM * (D + 2), in_block, G,
                                   stage, blocks + static_cast<size_t>(block) * GM * (D + 2), nullptr);
          __syncthreads();
          if (tid == 0) {
            arrival_release();
            last_block_s = count_arrival(attn_done + g) == NB - 1;
            arrival_acquire();
          }
          __syncthreads();
          if (last_block_s) merge_partials<T, D, GM>(blocks, NB, G, stage, nullptr, ao);
          merged = last_block_s;
        } else {
          merge_partials<T, D, GM>(base, NC, G, stage, nullptr, ao);
        }
        __syncthreads();
        if (merged && tid == 0) {
          if constexpr (CF_ATTN_O_SPLIT != 0) {
            publish_count(seg_done + g / o_seg_groups);
          } else {
            publish_count(ctrl + kGroupsDone);
          }
        }
        clock.mark(4);  // attention: the group merged (the last tile only)
      }
    } else {
      if constexpr (CF_ATTN_O_SPLIT != 0) {
        // ---- o_proj tile: output rows [row0, row0 + rows) x the columns of segment seg
        const int o_t = t - qkv_tiles - attn_tiles, blocks = H / oc.rows;
        const int seg = o_t / blocks, block = o_t % blocks, row0 = block * oc.rows;
        const TileCut segc(RPW, o_wpr, seg_cols / kElems, warp);
        const T* rows[RPW];
#pragma unroll
        for (int r = 0; r < RPW; ++r)
          rows[r] = static_cast<const T*>(wo) + static_cast<size_t>(row0 + segc.row_group * RPW + r) * NH * D +
                    static_cast<size_t>(seg) * seg_cols;
        const T* ao = static_cast<const T*>(attn_o) + static_cast<size_t>(seg) * seg_cols;  // L2 loads (.cg)
        const auto act = [&](int, int v) { return __ldcg(reinterpret_cast<const uint4*>(ao + v * kElems)); };
        dot.run(rows, segc, lane, 1, act, [&] {
          if (tid == 0) clock.wait_until(seg_done + seg, o_seg_groups);
          __syncthreads();
          clock.mark(0);  // o_proj: its segment's groups merged
        });
        clock.mark(1);  // o_proj: rows summed
        dot.publish(red_s, warp, lane);
        __syncthreads();
        for (int j = tid; j < segc.rows; j += kThreads) {
          o_part[static_cast<size_t>(seg) * H + row0 + j] = slice_sum<RPW, 1>(red_s, j, 0, o_wpr);
          store_fence();
        }
        __syncthreads();
        if (tid == 0) last_s = arrive_count(row_done + block) == NS - 1;
        __syncthreads();
        if (last_s) {  // the row block's last segment: the segments' partials in segment order, one rounding
          for (int j = tid; j < segc.rows; j += kThreads) {
            float s = 0.f;
            for (int k = 0; k < NS; ++k) s += __ldcg(o_part + static_cast<size_t>(k) * H + row0 + j);
            if (bo != nullptr) s += load_scalar<T>(bo, row0 + j);
            if (add_residual) s += to_float(xs[row0 + j]);
            static_cast<T*>(out)[row0 + j] = from_float<T>(s);
          }
        }
      } else {
        // ---- o_proj tile: output rows [row0, row0 + rows), all NH*D columns
        const int row0 = (t - qkv_tiles - attn_tiles) * oc.rows;
        const T* rows[RPW];
#pragma unroll
        for (int r = 0; r < RPW; ++r)
          rows[r] = static_cast<const T*>(wo) + static_cast<size_t>(row0 + oc.row_group * RPW + r) * NH * D;
        const T* ao = static_cast<const T*>(attn_o);  // written by other CTAs of this launch: L2 loads (.cg)
        const auto act = [&](int, int v) { return __ldcg(reinterpret_cast<const uint4*>(ao + v * kElems)); };
        dot.run(rows, oc, lane, 1, act, [&] {
          if (!o_ready) {
            if (tid == 0) clock.wait_until(ctrl + kGroupsDone, KVH);
            __syncthreads();
          }
          clock.mark(0);  // o_proj: every group merged
        });
        clock.mark(1);  // o_proj: rows summed
        o_ready = true;
        dot.publish(red_s, warp, lane);
        __syncthreads();
        for (int j = tid; j < oc.rows; j += kThreads) {
          float s = slice_sum<RPW, 1>(red_s, j, 0, o_wpr);
          if (bo != nullptr) s += load_scalar<T>(bo, row0 + j);
          if (add_residual) s += to_float(xs[row0 + j]);
          static_cast<T*>(out)[row0 + j] = from_float<T>(s);
        }
      }
    }
    clock.tile_done(stamps, t);
    clock.phases_done(stamps, total, t);
    t = claims.advance(next);
  }
  clock.cta_done(stamps, total + static_cast<int>(blockIdx.x));
  if (tid == 0) {  // every claim of this launch is made once all CTAs got here: the last one resets the counters
    __threadfence();
    if (atomicAdd(ctrl + kFinished, 1) == static_cast<int>(gridDim.x) - 1) {
      const int split_words = CF_ATTN_O_SPLIT != 0 ? NS + H / oc.rows : 0;  // segments, then row blocks
      for (int i = 0; i < kPerGroup + 2 * KVH + KVH * NB + split_words; ++i) ctrl[i] = 0;
    }
  }
}

}  // namespace attn_flow
}  // namespace cf

using cf::attn_flow::attention_flow_kernel;
