// mla_decode.cu -- one launch per DeepSeek-V2/V3 MLA block per decode step (docs/kernel-contract.md,
// cf_compile/ops/mla.py for the semantics), with W_UK / W_UV absorbed: the cached latent is never
// expanded through kv_b_proj.
//
// Choice: a ONE-WAVE grid (one 256-thread CTA per SM, grid = SM count from the launcher) whose phases
// hand off through global memory behind grid barriers (an arrival counter + generation word). Why not
// redundant recomputation per cluster: every head needs the whole q_a / kv_a / merged latent, so each
// cluster would re-read the q/kv_a weights (V2-Lite: 15 MB) -- far more bytes than the ~1 us a grid
// barrier costs. Co-residency: __launch_bounds__(256, 1) and at most 227 KB of shared memory always fit
// one CTA per SM, so a grid of `SM count` CTAs is resident at once on an otherwise idle device (the
// launcher never asks for more CTAs than SMs). No clusters are needed: every exchange is grid-wide.
//
// Phases (B batch rows, NH heads, NOPE/ROPE/V head dims, LORA = 512 latent, LAT = LORA + ROPE = 576):
//   0. every CTA: RMS of each x row; live range [first True, last True] of each mask row ([0, pos] when
//      there is no mask) -- as attention_decode.cu does.
//   1. rows of [W_q | W_q_a] and W_kv_a over h = RMSNorm(x) (computed on the fly), split over all warps of
//      the grid, fp32 into scratch s1 [B, R1].                                                 | barrier
//  1b. (q LoRA) rows of W_q_b over RMSNorm(q_a) (statistics recomputed by every CTA)  -> sq | barrier
//   2. warps of the grid take jobs: absorbed query q_lat[b,h,:512] = scale*log2e * q_nope[b,h] . W_UK[h]
//      (one warp per (head, 8 latent columns), lanes over the NOPE rows, fixed butterfly sum); q_pe
//      roped and scaled into q_lat[b,h,512:]; per batch row: kv_a_layernorm of c_kv and RoPE of k_pe,
//      rounded once to the model dtype and written into the cache slot at `pos`.              | barrier
//   3. split-K flash decoding over the latent cache: work items (b, head group of 16, chunk); the chunk
//      count NCH = max(1, CTAs / (B * head groups)) comes from the launcher. A CTA streams its chunk of
//      c_kv|k_pe in tiles of 64 positions (cp.async, two stages) ONCE for all 16 heads of its group:
//      scores = q_lat . [c_kv|k_pe] (exp2 domain), online softmax, o_lat += P . c_kv, all fp32 on CUDA
//      cores. Partials (o_lat unnormalised, m, l) go to scratch.                               | barrier
//   4. merge of the NCH partials of each (b, h) in chunk order (deterministic) -> o_lat [B, NH, 512]. | barrier
//   5. rows of W_UV (NH*V rows of 512) over o_lat of their head -> attn [B, NH*V] fp32.      | barrier
//   6. rows of W_o over attn, + residual, rounded once -> out.
// Every dot product is owned by one warp (fixed lane order, butterfly reduction), or (CF_MLA_MMA) by the warps
// of one CTA summed in shared memory in a fixed order: no float atomics, bitwise deterministic. Barrier counters return to zero at every barrier, so launches replay in CUDA
// graphs with no reset. Scratch layout: mla.py `_scratch_floats` mirrors `ScratchLayout` below.
#include "common.cuh"
#include "mma.cuh"

namespace mla {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kVec = 8;                   // 2-byte elements per 16-byte vector
constexpr int kLora = 512;                // kv_lora_rank (DeepSeek-V2, V2-Lite, V3)
constexpr int kRope = 64;                 // qk_rope_head_dim
constexpr int kLat = kLora + kRope;       // one cached position: c_kv then roped k_pe
constexpr int kRopePairs = kRope / 2;     // one rotation pair per lane
constexpr int kHeadGroup = 16;            // heads whose q_lat / o_lat one CTA holds during attention
constexpr int kTile = 64;                 // cached positions per shared-memory tile
constexpr int kTileLd = kLat + kVec;      // padded row: 16-byte reads of 8 consecutive rows hit all banks
constexpr int kChunksPerRow = kLat / kVec;       // 16-byte copies per cached position
constexpr int kLoraChunks = kLora / kVec;
constexpr int kColsPerThread = 4;                // o_lat columns one thread accumulates
constexpr int kColGroups = kLora / kColsPerThread;           // 128 threads cover the latent
constexpr int kHeadsPerThread = kHeadGroup * kColGroups / kThreads;  // 8 heads x 4 columns per thread
constexpr int kScoreHeads = 4;                   // heads per thread in the score step
constexpr int kScoreHeadQuads = kHeadGroup / kScoreHeads;
constexpr int kSoftmaxHeads = kHeadGroup / kWarps;  // heads per warp in the softmax step
constexpr int kRowsPerWarp = 4;                  // GEMV rows sharing one activation load
constexpr int kStepsInFlight = 2;                // GEMV k-steps whose weight loads are issued together
constexpr int kMergeUnroll = 4;  // CF_MLA_MERGE: chunk partials loaded before combining
constexpr float kLog2e = 1.4426950408889634f;
static_assert(kScoreHeadQuads * 2 == kWarps && kTile == 64, "score step: 8 warps = 4 head quads x 2 halves");
static_assert(kHeadsPerThread * kColGroups * kHeadGroup / kHeadsPerThread == kHeadGroup * kColGroups, "");
static_assert(kSoftmaxHeads * kWarps == kHeadGroup, "softmax step: whole heads per warp");

// ------------------------------------------------------------------ variants (mla.py VARIANTS)
// Each knob is a -D define; 0 is the run-1 code. The launcher picks a named set of them (default "base").
//   CF_MLA_BARRIER  1: one atom.add.release per CTA on a single word whose top bit flips per barrier
//                   (CTA 0 adds 2^31 - (grid - 1)), spin on ld.acquire with no sleep. Run 1's barrier takes
//                   an acquire load, a fence, the atomic and -- for the last arriver -- an exchange, a fence
//                   and a second atomic, in series, and its waiters sleep between polls.
//   CF_MLA_MERGE    1: the chunk merge is spread one warp per CTA first (not 8 whole CTAs at batch 1) and
//                   loads kMergeUnroll chunks before combining them (run 1: a serial loop over 132 chunks).
#ifndef CF_MLA_BARRIER
#define CF_MLA_BARRIER 0
#endif
#ifndef CF_MLA_MERGE
#define CF_MLA_MERGE 0
#endif
//   CF_MLA_SPLIT    1: attention items hold kSliceHeads heads (not 16), so at batch 1-4 the launcher's chunks
//                   (mla.py Variant.item_heads / min_chunk) put an item on every CTA: run 2's `chunk` gave the
//                   attention to 16 CTAs at B=1 S=1024 (17 us wait). The score step maps 4 threads per cached
//                   row (work in proportion to the live rows), and the merge is one warp per (b, head,
//                   latent quarter) with every chunk's load issued at once (merge_slices).
#ifndef CF_MLA_SPLIT
#define CF_MLA_SPLIT 0
#endif
//   CF_MLA_MMA      1: at batch buckets >= kMmaMinBucket the GEMVs of phases 1, 1b, 5 and 6 run on the tensor
//                   cores (grid_gemv_mma: mma.sync m16n8k16, weights = A, batch = N, cf::mma as the attention
//                   kernel's kMma). A CTA takes 16-row tiles round-robin and cuts each tile's k-steps over its
//                   warps; the parts are summed through shared memory in part order (deterministic, but not
//                   bitwise the CUDA-core GEMV: the activations are rounded to T, the sum order differs). Phase 1's
//                   kv_a rows (the cache slot's c_kv and k_pe) stay on the CUDA cores, bitwise split's.
//                   2: at every bucket. At batch 1 the MMA is 7/8 padding, but the layout is what counts: every
//                   CTA streams its tiles with all 8 warps and up to kMmaLongDepth k-steps (16 x 16 B per lane)
//                   in flight, where the CUDA-core GEMV gives W_UV and o_proj (2048 rows = 512 groups of 4) to
//                   the warps of CTAs 0-63 only, each with 4 dependent round trips per 2048-wide row.
#ifndef CF_MLA_MMA
#define CF_MLA_MMA 0
#endif

// Split attention (CF_MLA_SPLIT): heads per item; 4 threads per cached row share its 576-wide dot product.
constexpr int kSliceHeads = 4;
constexpr int kItemHeads = CF_MLA_SPLIT ? kSliceHeads : kHeadGroup;  // heads per attention item (scratch)
constexpr int kRowSlices = kThreads / kTile;                 // threads per cached row in the score step
constexpr int kRowsPerScoreWarp = 32 / kRowSlices;           // rows one warp scores
constexpr int kSliceVecs = kLat / kVec / kRowSlices;         // 16-byte vectors of a row per thread
constexpr int kSliceCols = kLora / kThreads;                 // o_lat columns per thread (all slice heads)
constexpr int kMergeParts = 4;                               // warps per (b, head) in merge_slices
constexpr int kMergeVecs = kLora / 4 / kMergeParts;          // float4 columns per merge warp: one per lane
constexpr int kMergeBatch = 16;                              // chunk partials one merge lane loads at once
constexpr int kCounterWords = 32;  // barrier words before the per-slice arrival counters (own 128-B line)
static_assert(kRowSlices * kTile == kThreads && kRowsPerScoreWarp * kWarps == kTile, "score step: 64 x 4 threads");
static_assert(kSliceVecs * kRowSlices * kVec == kLat, "score step: whole vectors per thread");
static_assert(kSliceCols == 2 && kSliceHeads % 4 == 0 && kSliceHeads <= kWarps, "accumulate: 2 columns x heads");
static_assert(kMergeVecs == 32, "merge_slices: one float4 column per lane");

// ------------------------------------------------------------------ optional phase timeline
// -DCF_MLA_PHASES=1: thread 0 of every CTA writes %globaltimer (ns) at each phase boundary, before and
// after every grid barrier, into stamps[cta][phase] (benchmarks/mla.py --phases; mla.py PHASES mirrors this
// enum). Off (default): `stamps` is unused and no code is emitted.
enum Phase : int {
  kPhStart = 0,   // kernel entry
  kPhStats,       // x row statistics and mask ranges in shared memory
  kPhProj,        // this CTA's [q | q_a | kv_a] rows done
  kPhProjSync,    // after the barrier
  kPhQb,          // q_b rows done (q LoRA; equals kPhProjSync without)
  kPhQbSync,
  kPhAbsorb,      // absorbed queries, roped q_pe, cache slot written
  kPhAbsorbSync,
  kPhAttn,        // this CTA's attention items done
  kPhAttnSync,
  kPhMerge,       // chunk merge done
  kPhMergeSync,
  kPhUv,          // W_UV rows done
  kPhUvSync,
  kPhEnd,         // o_proj rows done
  kPhaseCount
};
#ifndef CF_MLA_PHASES
#define CF_MLA_PHASES 0
#endif

__device__ __forceinline__ void stamp(unsigned long long* stamps, int phase) {
  if constexpr (CF_MLA_PHASES != 0) {
    if (threadIdx.x == 0) {
      unsigned long long t;
      asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
      stamps[static_cast<size_t>(blockIdx.x) * kPhaseCount + phase] = t;
    }
  }
}

enum RopeForm : int { kComplex = 0, kInterleave = 1, kNeox = 2 };

struct Params {
  const void* x;            // [B, H]
  const void* norm_w;       // [H]
  const void* wq;           // [NH*QH, H] (q_proj) or [QL, H] (q_a_proj)
  const void* wq_b;         // [NH*QH, QL] or null
  const void* q_norm_w;     // [QL] or null
  const void* wkv_a;        // [LAT, H]
  const void* kv_norm_w;    // [LORA]
  const void* wkv_b;        // [NH*(NOPE+V), LORA]
  const void* wo;           // [H, NH*V]
  const void* cos;          // rope tables (see the launcher): element (b, i) at b*cos_bstride + i*cos_estride
  const void* sin;
  const long long* cache_position;  // [1]
  void* k_cache;            // [B, 1, L, LORA]
  void* v_cache;            // [B, 1, L, ROPE]
  const unsigned char* mask;  // [B, L] rows of stride mask_stride, or null (attend j <= pos)
  void* out;                // [B, H]
  float* scratch;           // ScratchLayout
  unsigned* barrier;        // [kCounterWords + B * head slices]: arrivals, generation (zero between barriers)
  float eps, q_eps, kv_eps, q_scale;  // q_scale = softmax scale * log2(e)
  int batch, hidden, num_heads, nope, v_dim, q_lora, max_cache_len;
  long long mask_stride, cos_bstride;
  int cos_estride, cos_kind, rope_form, unit_offset, add_residual, chunks;
  unsigned long long* stamps;  // [CTAs, kPhaseCount] with CF_MLA_PHASES, else unused
};

// ------------------------------------------------------------------ small helpers

// Shared decode helpers (common.cuh).
using cf::ld_stream;
using cf::pair_to_float2;
using cf::load_scalar;
using cf::load_table;
using cf::softmax_rescale;
using cf::unpack8;
using cf::warp_sum;
using cf::warp_max;

// Scratch written by other CTAs in this launch: read at L2, never from a stale L1 line.
__device__ __forceinline__ void ld_scratch8(const float* p, float (&f)[kVec]) {
  const float4 a = __ldcg(reinterpret_cast<const float4*>(p)), b = __ldcg(reinterpret_cast<const float4*>(p) + 1);
  f[0] = a.x; f[1] = a.y; f[2] = a.z; f[3] = a.w; f[4] = b.x; f[5] = b.y; f[6] = b.z; f[7] = b.w;
}


__device__ __forceinline__ unsigned ld_acquire(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

// Grid-wide barrier of a one-wave grid, run 1 (CF_MLA_BARRIER 0): arrival counter + generation word. The
// last arriver resets the counter before bumping the generation, so the counter is zero whenever no
// barrier is in progress (graph replays need no reset).
__device__ __forceinline__ void grid_sync_generation(unsigned* bar) {
  __syncthreads();
  if (threadIdx.x == 0) {
    const unsigned gen = ld_acquire(bar + 1);
    __threadfence();
    if (atomicAdd(bar, 1u) == gridDim.x - 1) {
      atomicExch(bar, 0u);
      __threadfence();
      atomicAdd(bar + 1, 1u);
    } else {
      while (ld_acquire(bar + 1) == gen) __nanosleep(32);
    }
    __threadfence();
  }
  __syncthreads();
}

constexpr unsigned kFlipBit = 0x80000000u;

__device__ __forceinline__ unsigned atom_add_release(unsigned* p, unsigned v) {
  unsigned old;
  asm volatile("atom.add.release.gpu.global.u32 %0, [%1], %2;" : "=r"(old) : "l"(p), "r"(v) : "memory");
  return old;
}

// CF_MLA_BARRIER 1: one word, one release atomic per CTA. The CTA arrivals sum to exactly kFlipBit
// (CTA 0 adds kFlipBit - (grid - 1), the others 1), so the top bit flips once every CTA has arrived and the
// low bits are zero again between barriers (graph replays need no reset). The release atomic after
// bar.sync is cumulative over the CTA's writes; the acquire poll (then bar.sync) makes the others' visible.
__device__ __forceinline__ void grid_sync_flip(unsigned* bar) {
  __syncthreads();
  if (threadIdx.x == 0) {
    const unsigned add = blockIdx.x == 0 ? kFlipBit - (gridDim.x - 1) : 1u;
    const unsigned old = atom_add_release(bar, add);
    while (((ld_acquire(bar) ^ old) & kFlipBit) == 0) {
    }
  }
  __syncthreads();
}

__device__ __forceinline__ void grid_sync(unsigned* bar) {
  if constexpr (CF_MLA_BARRIER == 1) {
    grid_sync_flip(bar);
  } else {
    grid_sync_generation(bar);
  }
}

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(cf::smem_u32(smem)), "l"(gmem) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory"); }

__device__ __forceinline__ unsigned dynamic_smem_size() {
  unsigned r;
  asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(r));
  return r;
}

__host__ __device__ constexpr long long align4(long long n) { return (n + 3) & ~3LL; }

// ------------------------------------------------------------------ scratch (fp32, global)

struct ScratchLayout {
  float* s1;       // [B, R1]: q (or q_a) rows, then kv_a rows (c_kv, k_pe)
  float* q;        // [B, NH*QH]: q rows (aliases s1 without q LoRA; row stride ldq)
  float* q_lat;    // [B, NH, LAT]: absorbed, scaled query
  float* part_o;   // [items, kItemHeads, LORA]
  float* part_ml;  // [items, kItemHeads, 2]
  float* o_lat;    // [B, NH, LORA]
  float* attn;     // [B, NH*V]
  int r1, ldq, qh, items, head_groups;  // head_groups: of kItemHeads heads (16, or kSliceHeads with SPLIT)
};

__device__ ScratchLayout scratch_layout(const Params& p) {
  ScratchLayout s;
  const int B = p.batch, NH = p.num_heads;
  s.qh = p.nope + kRope;
  const int q_rows = p.q_lora > 0 ? p.q_lora : NH * s.qh;
  s.r1 = q_rows + kLat;
  s.head_groups = cf::ceil_div(NH, kItemHeads);
  s.items = B * s.head_groups * p.chunks;
  float* f = p.scratch;
  s.s1 = f; f += align4(static_cast<long long>(B) * s.r1);
  if (p.q_lora > 0) {
    s.q = f; f += align4(static_cast<long long>(B) * NH * s.qh);
    s.ldq = NH * s.qh;
  } else {
    s.q = s.s1;
    s.ldq = s.r1;
  }
  s.q_lat = f; f += align4(static_cast<long long>(B) * NH * kLat);
  s.part_o = f; f += static_cast<long long>(s.items) * kItemHeads * kLora;
  s.part_ml = f; f += align4(static_cast<long long>(s.items) * kItemHeads * 2);
  s.o_lat = f; f += static_cast<long long>(B) * NH * kLora;
  s.attn = f;
  return s;
}

// ------------------------------------------------------------------ shared memory (mla.py `_smem_bytes`)

struct Smem {
  float* rstd;      // [16] x rows
  float* rstd_q;    // [16] q_a rows
  int* range;       // [16, 2]
  float* q;         // [16, LAT] q_lat of the head group
  float* scores;    // [16, kTile]
  float* probs;     // [kTile, 16]
  float* ml;        // [3, 16]: running max, running sum, correction of this tile
  unsigned short* tiles;  // [2, kTile, kTileLd] model dtype
  unsigned char* end;
};

__device__ Smem plan_smem(unsigned char* base) {
  Smem s;
  unsigned char* at = base;
  s.rstd = reinterpret_cast<float*>(at); at += 16 * 4;
  s.rstd_q = reinterpret_cast<float*>(at); at += 16 * 4;
  s.range = reinterpret_cast<int*>(at); at += 16 * 2 * 4;
  s.q = reinterpret_cast<float*>(at); at += kHeadGroup * kLat * 4;
  s.scores = reinterpret_cast<float*>(at); at += kHeadGroup * kTile * 4;
  s.probs = reinterpret_cast<float*>(at); at += kTile * kHeadGroup * 4;
  s.ml = reinterpret_cast<float*>(at); at += 3 * kHeadGroup * 4;
  s.tiles = reinterpret_cast<unsigned short*>(at); at += 2 * kTile * kTileLd * 2;
  s.end = at;
  return s;
}

// ------------------------------------------------------------------ grid GEMV
// y[r, b] = sum_k row_ptr(r)[k] * act(r0, b, k) for rows r < nrows, split over nw warps of which this one is gw:
// a warp takes kRowsPerWarp consecutive rows, its lanes stride over 16-byte weight vectors with
// kStepsInFlight * kRowsPerWarp loads issued before the first FMA; lanes reduce by a fixed butterfly, so a
// row's sum is the same bits whichever warp computes it. act(r0, b, k, f) fills 8 fp32 activations (zeros for
// padding rows b >= B); sink(r, b, v) gets sums.
template <typename T, int BB, typename RowPtr, typename Act, typename Sink>
__device__ __forceinline__ void grid_gemv_warps(int gw, int nw, RowPtr row_ptr, int nrows, int K, Act act,
                                                Sink sink) {
  constexpr int RB = kRowsPerWarp, KU = kStepsInFlight;
  const int lane = threadIdx.x & 31;
  for (int r0 = gw * RB; r0 < nrows; r0 += nw * RB) {
    const T* w[RB];
    float acc[RB][BB];
#pragma unroll
    for (int r = 0; r < RB; ++r) {
      w[r] = static_cast<const T*>(row_ptr(min(r0 + r, nrows - 1)));
#pragma unroll
      for (int b = 0; b < BB; ++b) acc[r][b] = 0.f;
    }
    for (int k0 = lane * kVec; k0 < K; k0 += 32 * kVec * KU) {
      uint4 wv[KU][RB];
#pragma unroll
      for (int u = 0; u < KU; ++u) {
        const int k = k0 + u * 32 * kVec;
#pragma unroll
        for (int r = 0; r < RB; ++r) wv[u][r] = k < K ? ld_stream(w[r] + k) : make_uint4(0, 0, 0, 0);
      }
#pragma unroll
      for (int u = 0; u < KU; ++u) {
        const int k = k0 + u * 32 * kVec;
        if (k < K) {
          float wf[RB][kVec];
#pragma unroll
          for (int r = 0; r < RB; ++r) unpack8<T>(wv[u][r], wf[r]);
#pragma unroll
          for (int b = 0; b < BB; ++b) {
            float a[kVec];
            act(r0, b, k, a);
#pragma unroll
            for (int r = 0; r < RB; ++r) {
#pragma unroll
              for (int e = 0; e < kVec; ++e) acc[r][b] = fmaf(wf[r][e], a[e], acc[r][b]);
            }
          }
        }
      }
    }
#pragma unroll
    for (int r = 0; r < RB; ++r) {
#pragma unroll
      for (int b = 0; b < BB; ++b) acc[r][b] = warp_sum(acc[r][b]);
      if (lane == 0 && r0 + r < nrows) {
#pragma unroll
        for (int b = 0; b < BB; ++b) sink(r0 + r, b, acc[r][b]);
      }
    }
  }
}

// grid_gemv_warps over every warp of the grid.
template <typename T, int BB, typename RowPtr, typename Act, typename Sink>
__device__ __forceinline__ void grid_gemv(RowPtr row_ptr, int nrows, int K, Act act, Sink sink) {
  const int gw = blockIdx.x * kWarps + (threadIdx.x >> 5), nw = gridDim.x * kWarps;
  grid_gemv_warps<T, BB>(gw, nw, row_ptr, nrows, K, act, sink);
}

// ------------------------------------------------------------------ grid GEMV on the tensor cores (CF_MLA_MMA)
// Same contract as grid_gemv (act(r0, b, k, f) with r0 the first row of a 16-row tile; sink(r, b, v) once per
// row and batch row b < BB), on mma.sync m16n8k16 (cf::mma: weights = A, 16 rows per tile; batch = N, tiles of
// 8). Tile i goes to CTA i % grid; a CTA takes its tiles kWarps at a time and cuts each tile's k-steps into
// ks = kWarps / (tiles this round) contiguous parts, one warp each. The parts' accumulators meet in shared
// memory `red` (kWarps * 32 * BT * 4 floats) and warp part 0 adds them in part order: fixed sums, no atomics.
// All threads of the CTA must call it (the CTA barriers). K: a multiple of 8. act's 8 values are rounded to T.
constexpr int kMmaMinBucket = CF_MLA_MMA >= 2 ? 1 : 4;  // below: the CUDA-core GEMV (MMA 3/4 padding or more)
constexpr int kMmaLongDepth = 8;  // k-steps (32 columns) of weight loads a lane issues before its first MMA
constexpr int kMmaShortDepth = 2;  // W_UV: 512 columns = 16 steps over 8 warps

template <int BB>
__host__ __device__ constexpr int mma_red_floats() {
  return kWarps * 32 * ((BB + cf::mma::kTileCols - 1) / cf::mma::kTileCols) * 4;
}

static_assert(mma_red_floats<16>() <= kHeadGroup * kLat, "grid_gemv_mma: partials fit in Smem::q");

template <typename T, int BB, int DEPTH, typename RowPtr, typename Act, typename Sink>
__device__ __forceinline__ void grid_gemv_mma(RowPtr row_ptr, int nrows, int K, Act act, Sink sink, float* red) {
  namespace mm = cf::mma;
  constexpr int BT = (BB + mm::kTileCols - 1) / mm::kTileCols;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane / mm::kLanesPerGroup, t = lane % mm::kLanesPerGroup;
  const int tiles = cf::ceil_div(nrows, mm::kTileRows), steps = cf::ceil_div(K, mm::kStepK);
  const int mine = static_cast<int>(blockIdx.x) < tiles ? cf::ceil_div(tiles - blockIdx.x, gridDim.x) : 0;
  const uint4 zero = make_uint4(0, 0, 0, 0);
  for (int base = 0; base < mine; base += kWarps) {  // CTA-uniform
    const int nt = min(kWarps, mine - base), ks = kWarps / nt;
    const int lt = warp / ks, part = warp % ks;
    const int tile = blockIdx.x + (base + lt) * gridDim.x, r0 = tile * mm::kTileRows;
    float acc[BT][4];
#pragma unroll
    for (int bt = 0; bt < BT; ++bt) {
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[bt][j] = 0.f;
    }
    if (lt < nt) {
      const int s0 = part * steps / ks, s1 = (part + 1) * steps / ks;
      mm::tile_accumulate<T, BT, DEPTH>(acc, row_ptr, r0, nrows, s0, s1, K, [&](int k, int, int bt) -> uint4 {
        const int b = g + bt * mm::kTileCols;
        if (k >= K || b >= BB) return zero;  // zero, never garbage: 0 * NaN
        float a[kVec];
        act(r0, b, k, a);
        return make_uint4(mm::pack2<T>(a[0], a[1]), mm::pack2<T>(a[2], a[3]), mm::pack2<T>(a[4], a[5]),
                          mm::pack2<T>(a[6], a[7]));
      });
    }
    if (ks > 1) {  // CTA-uniform
      float* mine_red = red + (warp * 32 + lane) * BT * 4;
#pragma unroll
      for (int bt = 0; bt < BT; ++bt) {
#pragma unroll
        for (int j = 0; j < 4; ++j) mine_red[bt * 4 + j] = acc[bt][j];
      }
      __syncthreads();
      if (part == 0 && lt < nt) {
        for (int q = 1; q < ks; ++q) {
          const float* other = red + ((warp + q) * 32 + lane) * BT * 4;
#pragma unroll
          for (int bt = 0; bt < BT; ++bt) {
#pragma unroll
            for (int j = 0; j < 4; ++j) acc[bt][j] += other[bt * 4 + j];
          }
        }
      }
    }
    if (part == 0 && lt < nt) {
#pragma unroll
      for (int bt = 0; bt < BT; ++bt) {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const int r = r0 + g + (j / 2) * mm::kGroups, b = bt * mm::kTileCols + 2 * t + j % 2;
          if (r < nrows && b < BB) sink(r, b, acc[bt][j]);
        }
      }
    }
    if (ks > 1) __syncthreads();  // `red` is rewritten by the next round
  }
}

// Phase 1 splits its rows: [q | q_a] on the tensor cores, the kv_a (cache) rows on the CUDA cores (mla_decode_body).
template <int BB>
constexpr bool kMmaProj = CF_MLA_MMA != 0 && BB >= kMmaMinBucket;

// Either GEMV: the tensor cores with CF_MLA_MMA at buckets >= kMmaMinBucket (and `mma_ok`), else the CUDA cores.
template <typename T, int BB, int DEPTH, typename RowPtr, typename Act, typename Sink>
__device__ __forceinline__ void grid_gemv_any(RowPtr row_ptr, int nrows, int K, Act act, Sink sink, float* red,
                                              bool mma_ok = true) {
  if constexpr (CF_MLA_MMA != 0 && BB >= kMmaMinBucket) {
    if (mma_ok) {
      grid_gemv_mma<T, BB, DEPTH>(row_ptr, nrows, K, act, sink, red);
      return;
    }
  }
  grid_gemv<T, BB>(row_ptr, nrows, K, act, sink);
}

// ------------------------------------------------------------------ RoPE (one pair per lane)
// Lane i rotates one pair of the 64 rope lanes as the HF form does: out[o0] = t[a]*c0 - t[b]*s0,
// out[o1] = t[b]*c1 + t[a]*s1 (complex: pairs (2i, 2i+1) in place; interleave: even/odd lanes out to
// halves; neox: rotate_half pairs (i, i+32) with per-lane tables).
struct RopePair {
  int a, b, o0, o1;
  float c0, s0, c1, s1;
};

__device__ __forceinline__ RopePair rope_pair(const Params& p, int batch_row, int i) {
  RopePair r;
  const long long base = static_cast<long long>(batch_row) * p.cos_bstride;
  const long long e0 = base + static_cast<long long>(i) * p.cos_estride;
  r.c0 = load_table(p.cos, p.cos_kind, e0);
  r.s0 = load_table(p.sin, p.cos_kind, e0);
  r.c1 = r.c0;
  r.s1 = r.s0;
  if (p.rope_form == kNeox) {
    r.a = i; r.b = i + kRopePairs; r.o0 = i; r.o1 = i + kRopePairs;
    const long long e1 = base + static_cast<long long>(i + kRopePairs) * p.cos_estride;
    r.c1 = load_table(p.cos, p.cos_kind, e1);
    r.s1 = load_table(p.sin, p.cos_kind, e1);
  } else if (p.rope_form == kInterleave) {
    r.a = 2 * i; r.b = 2 * i + 1; r.o0 = i; r.o1 = i + kRopePairs;
  } else {
    r.a = 2 * i; r.b = 2 * i + 1; r.o0 = 2 * i; r.o1 = 2 * i + 1;
  }
  return r;
}

// ------------------------------------------------------------------ phase 0: row statistics, live ranges

template <typename T>
__device__ void row_stats(const Params& p, const Smem& s, long long pos) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, H = p.hidden;
  const T* x = static_cast<const T*>(p.x);
  for (int b = warp; b < p.batch; b += kWarps) {
    int first = 0x7fffffff, last = -1;
    if (p.mask != nullptr) {
      const unsigned char* row = p.mask + b * p.mask_stride;
      for (int j = lane; j < p.max_cache_len; j += 32)
        if (row[j]) { first = min(first, j); last = j; }
#pragma unroll
      for (int off = 16; off; off >>= 1) {
        first = min(first, __shfl_xor_sync(0xffffffffu, first, off));
        last = max(last, __shfl_xor_sync(0xffffffffu, last, off));
      }
    } else {
      first = 0;
      last = static_cast<int>(min(pos, static_cast<long long>(p.max_cache_len - 1)));
    }
    float ss = 0.f;
    for (int k = lane * kVec; k < H; k += 32 * kVec) {
      float f[kVec];
      unpack8<T>(*reinterpret_cast<const uint4*>(x + static_cast<long long>(b) * H + k), f);
#pragma unroll
      for (int e = 0; e < kVec; ++e) ss = fmaf(f[e], f[e], ss);
    }
    ss = warp_sum(ss);
    if (lane == 0) {
      s.rstd[b] = rsqrtf(ss / H + p.eps);
      s.range[2 * b] = last < 0 ? 0 : first;
      s.range[2 * b + 1] = last + 1;
    }
  }
}

// Statistics of the q_a rows (q LoRA): every CTA recomputes them from scratch (B x QL floats, L2).
__device__ void q_a_stats(const Params& p, const Smem& s, const ScratchLayout& L) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int b = warp; b < p.batch; b += kWarps) {
    float ss = 0.f;
    for (int k = lane * kVec; k < p.q_lora; k += 32 * kVec) {
      float f[kVec];
      ld_scratch8(L.s1 + static_cast<long long>(b) * L.r1 + k, f);
#pragma unroll
      for (int e = 0; e < kVec; ++e) ss = fmaf(f[e], f[e], ss);
    }
    ss = warp_sum(ss);
    if (lane == 0) s.rstd_q[b] = rsqrtf(ss / p.q_lora + p.q_eps);
  }
}

// ------------------------------------------------------------------ phase 2 jobs

// One level of warp_reduce_scatter: lanes with `upper` keep (and receive the partner's copy of) the upper HALF.
template <int N, int HALF, int OFF>
__device__ __forceinline__ void reduce_scatter_level(float (&v)[N], bool upper) {
#pragma unroll
  for (int j = 0; j < HALF; ++j) {
    const float send = upper ? v[j] : v[j + HALF];
    const float keep = upper ? v[j + HALF] : v[j];
    v[j] = keep + __shfl_xor_sync(0xffffffffu, send, OFF);
  }
}

// Sums over the 32 lanes of N values, scattered: afterwards lane l holds in v[0 .. N/32) the sums of values
// l*N/32 .. (l+1)*N/32 (recursive halving in a fixed order: N - N/32 shuffles, not 5 N as N warp_sums).
template <int N>
__device__ __forceinline__ void warp_reduce_scatter(float (&v)[N]) {
  static_assert(N >= 32 && (N & (N - 1)) == 0, "warp_reduce_scatter: a power of two >= 32 values");
  const int lane = threadIdx.x & 31;
  reduce_scatter_level<N, N / 2, 16>(v, lane & 16);
  reduce_scatter_level<N, N / 4, 8>(v, lane & 8);
  reduce_scatter_level<N, N / 8, 4>(v, lane & 4);
  reduce_scatter_level<N, N / 16, 2>(v, lane & 2);
  reduce_scatter_level<N, N / 32, 1>(v, lane & 1);
}

// q_lat[b, h, 8 columns from c0] = q_scale * sum_i q_nope[b, h, i] * W_UK[h][i][c0..c0+8), all b.
// CF_MLA_MMA at buckets >= 4: the BB x 8 lane sums by warp_reduce_scatter, every lane writing N/32 of them
// (run 3 at B=16: 128 warp_sums = 640 shuffles per job and 128 stores from lane 0; absorb 10.8 us).
template <typename T, int BB>
__device__ __forceinline__ void absorb_job(const Params& p, const ScratchLayout& L, int h, int c0) {
  const int lane = threadIdx.x & 31, B = p.batch;
  const T* wk = static_cast<const T*>(p.wkv_b) + static_cast<long long>(h) * (p.nope + p.v_dim) * kLora + c0;
  float acc[BB][kVec];
#pragma unroll
  for (int b = 0; b < BB; ++b) {
#pragma unroll
    for (int e = 0; e < kVec; ++e) acc[b][e] = 0.f;
  }
  for (int i = lane; i < p.nope; i += 32) {
    float wf[kVec];
    unpack8<T>(ld_stream(wk + static_cast<long long>(i) * kLora), wf);
#pragma unroll
    for (int b = 0; b < BB; ++b) {
      const float qv = b < B ? __ldcg(L.q + static_cast<long long>(b) * L.ldq + h * L.qh + i) : 0.f;
#pragma unroll
      for (int e = 0; e < kVec; ++e) acc[b][e] = fmaf(qv, wf[e], acc[b][e]);
    }
  }
  if constexpr (CF_MLA_MMA != 0 && BB >= 4) {
    constexpr int N = BB * kVec, R = N / 32;  // R <= kVec values per lane, all of one batch row
    float v[N];
#pragma unroll
    for (int b = 0; b < BB; ++b) {
#pragma unroll
      for (int e = 0; e < kVec; ++e) v[b * kVec + e] = acc[b][e];
    }
    warp_reduce_scatter<N>(v);
    const int b = lane * R / kVec, e0 = lane * R % kVec;
    if (b < B) {
      float* dst = L.q_lat + (static_cast<long long>(b) * p.num_heads + h) * kLat + c0 + e0;
#pragma unroll
      for (int j = 0; j < R; ++j) dst[j] = v[j] * p.q_scale;
    }
    return;
  }
#pragma unroll
  for (int b = 0; b < BB; ++b) {
#pragma unroll
    for (int e = 0; e < kVec; ++e) acc[b][e] = warp_sum(acc[b][e]);
  }
  if (lane == 0) {
#pragma unroll
    for (int b = 0; b < BB; ++b) {
      if (b < B) {
        float* dst = L.q_lat + (static_cast<long long>(b) * p.num_heads + h) * kLat + c0;
#pragma unroll
        for (int e = 0; e < kVec; ++e) dst[e] = acc[b][e] * p.q_scale;
      }
    }
  }
}

// Roped, scaled q_pe of (b, h) into q_lat[b, h, LORA:].
__device__ __forceinline__ void q_rope_job(const Params& p, const ScratchLayout& L, int b, int h) {
  const int lane = threadIdx.x & 31;
  const float* t = L.q + static_cast<long long>(b) * L.ldq + h * L.qh + p.nope;
  const RopePair r = rope_pair(p, b, lane);
  const float ta = __ldcg(t + r.a), tb = __ldcg(t + r.b);
  float* dst = L.q_lat + (static_cast<long long>(b) * p.num_heads + h) * kLat + kLora;
  dst[r.o0] = (ta * r.c0 - tb * r.s0) * p.q_scale;
  dst[r.o1] = (tb * r.c1 + ta * r.s1) * p.q_scale;
}

// kv_a_layernorm(c_kv) and RoPE(k_pe) of batch row b, rounded once, into the cache slot at pos.
template <typename T>
__device__ __forceinline__ void kv_write_job(const Params& p, const ScratchLayout& L, int b, long long pos) {
  const int lane = threadIdx.x & 31;
  const float* c = L.s1 + static_cast<long long>(b) * L.r1 + (L.r1 - kLat);
  constexpr int kPerLane = kLora / 32;
  float v[kPerLane];
  float ss = 0.f;
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    v[j] = __ldcg(c + lane + 32 * j);
    ss = fmaf(v[j], v[j], ss);
  }
  const float r = rsqrtf(warp_sum(ss) / kLora + p.kv_eps);
  if (pos < 0 || pos >= p.max_cache_len) return;
  const long long slot = static_cast<long long>(b) * p.max_cache_len + pos;
  T* kc = static_cast<T*>(p.k_cache) + slot * kLora;
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    const int i = lane + 32 * j;
    kc[i] = cf::from_float<T>(v[j] * r * load_scalar<T>(p.kv_norm_w, i));
  }
  const RopePair rp = rope_pair(p, b, lane);
  const float ta = __ldcg(c + kLora + rp.a), tb = __ldcg(c + kLora + rp.b);
  T* vc = static_cast<T*>(p.v_cache) + slot * kRope;
  vc[rp.o0] = cf::from_float<T>(ta * rp.c0 - tb * rp.s0);
  vc[rp.o1] = cf::from_float<T>(tb * rp.c1 + ta * rp.s1);
}

template <typename T, int BB>
__device__ void phase2(const Params& p, const ScratchLayout& L, long long pos) {
  const int gw = blockIdx.x * kWarps + (threadIdx.x >> 5), nw = gridDim.x * kWarps;
  const int NH = p.num_heads, B = p.batch;
  const int absorb = NH * kLoraChunks, kv = B, qr = B * NH;
  for (int job = gw; job < absorb + kv + qr; job += nw) {
    if (job < absorb) {
      absorb_job<T, BB>(p, L, job / kLoraChunks, (job % kLoraChunks) * kVec);
    } else if (job < absorb + kv) {
      kv_write_job<T>(p, L, job - absorb, pos);
    } else {
      const int j = job - absorb - kv;
      q_rope_job(p, L, j / NH, j % NH);
    }
  }
}

// ------------------------------------------------------------------ phase 3: split-K attention

template <typename T>
__device__ __forceinline__ void load_tile(const Params& p, unsigned short* tile, int b, int t0, int rows) {
  const T* kc = static_cast<const T*>(p.k_cache);
  const T* vc = static_cast<const T*>(p.v_cache);
  const long long row0 = static_cast<long long>(b) * p.max_cache_len + t0;
  for (int idx = threadIdx.x; idx < rows * kChunksPerRow; idx += kThreads) {
    const int r = idx / kChunksPerRow, ch = idx % kChunksPerRow;
    const T* src = ch < kLoraChunks ? kc + (row0 + r) * kLora + ch * kVec
                                    : vc + (row0 + r) * kRope + (ch - kLoraChunks) * kVec;
    cp_async16(tile + r * kTileLd + ch * kVec, src);
  }
}

// scores[h, j] = q_lat[h] . tile[j] (exp2 domain), -inf where the position is out of range or masked.
template <typename T>
__device__ __forceinline__ void tile_scores(const Params& p, const Smem& s, const unsigned short* tile, int b,
                                            int t0, int rows) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int j = (warp / kScoreHeadQuads) * 32 + lane, h0 = (warp % kScoreHeadQuads) * kScoreHeads;
  const T* row = reinterpret_cast<const T*>(tile) + j * kTileLd;
  float acc[kScoreHeads] = {};
  for (int k = 0; k < kLat; k += kVec) {
    float kf[kVec];
    unpack8<T>(*reinterpret_cast<const uint4*>(row + k), kf);
#pragma unroll
    for (int h = 0; h < kScoreHeads; ++h) {
      const float4 qa = *reinterpret_cast<const float4*>(s.q + (h0 + h) * kLat + k);
      const float4 qb = *reinterpret_cast<const float4*>(s.q + (h0 + h) * kLat + k + 4);
      acc[h] = fmaf(qa.x, kf[0], acc[h]); acc[h] = fmaf(qa.y, kf[1], acc[h]);
      acc[h] = fmaf(qa.z, kf[2], acc[h]); acc[h] = fmaf(qa.w, kf[3], acc[h]);
      acc[h] = fmaf(qb.x, kf[4], acc[h]); acc[h] = fmaf(qb.y, kf[5], acc[h]);
      acc[h] = fmaf(qb.z, kf[6], acc[h]); acc[h] = fmaf(qb.w, kf[7], acc[h]);
    }
  }
  const bool live = j < rows && (p.mask == nullptr || p.mask[b * p.mask_stride + t0 + j] != 0);
#pragma unroll
  for (int h = 0; h < kScoreHeads; ++h) s.scores[(h0 + h) * kTile + j] = live ? acc[h] : cf::neg_inf();
}

// Online-softmax update of the tile: probabilities into s.probs [j, h], running max/sum and this tile's
// correction factor into s.ml. One warp per kSoftmaxHeads heads.
__device__ __forceinline__ void tile_softmax(const Smem& s) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  float* m_run = s.ml;
  float* l_run = s.ml + kHeadGroup;
  float* corr = s.ml + 2 * kHeadGroup;
#pragma unroll
  for (int hh = 0; hh < kSoftmaxHeads; ++hh) {
    const int h = warp * kSoftmaxHeads + hh;
    const float s0 = s.scores[h * kTile + lane], s1 = s.scores[h * kTile + lane + 32];
    const float m_old = m_run[h], l_old = l_run[h];
    const float m_new = fmaxf(m_old, warp_max(fmaxf(s0, s1)));
    float p0 = 0.f, p1 = 0.f, c = 1.f;
    if (m_new != cf::neg_inf()) {
      p0 = exp2f(s0 - m_new);
      p1 = exp2f(s1 - m_new);
      c = softmax_rescale(m_old, m_new);
    }
    const float sum = warp_sum(p0 + p1);
    s.probs[lane * kHeadGroup + h] = p0;
    s.probs[(lane + 32) * kHeadGroup + h] = p1;
    __syncwarp();
    if (lane == 0) {
      m_run[h] = m_new;
      l_run[h] = fmaf(l_old, c, sum);
      corr[h] = c;
    }
  }
}

// o[h][c] = o[h][c] * corr[h] + sum_j probs[j, h] * c_kv[j, c] for this thread's 8 heads x 4 columns.
template <typename T>
__device__ __forceinline__ void tile_accumulate(const Smem& s, const unsigned short* tile, int rows,
                                                float (&o)[kHeadsPerThread][kColsPerThread]) {
  const int cg = threadIdx.x % kColGroups, h0 = (threadIdx.x / kColGroups) * kHeadsPerThread;
  const float* corr = s.ml + 2 * kHeadGroup;
#pragma unroll
  for (int h = 0; h < kHeadsPerThread; ++h) {
    const float c = corr[h0 + h];
#pragma unroll
    for (int e = 0; e < kColsPerThread; ++e) o[h][e] *= c;
  }
  const T* col = reinterpret_cast<const T*>(tile) + cg * kColsPerThread;
  for (int j = 0; j < rows; ++j) {
    const uint2 raw = *reinterpret_cast<const uint2*>(col + j * kTileLd);
    const float2 a = pair_to_float2<T>(raw.x), b = pair_to_float2<T>(raw.y);
    const float v[kColsPerThread] = {a.x, a.y, b.x, b.y};
    const float* pr = s.probs + j * kHeadGroup + h0;
    float pw[kHeadsPerThread];
#pragma unroll
    for (int h = 0; h < kHeadsPerThread; h += 4) {
      const float4 q4 = *reinterpret_cast<const float4*>(pr + h);
      pw[h] = q4.x; pw[h + 1] = q4.y; pw[h + 2] = q4.z; pw[h + 3] = q4.w;
    }
#pragma unroll
    for (int h = 0; h < kHeadsPerThread; ++h) {
#pragma unroll
      for (int e = 0; e < kColsPerThread; ++e) o[h][e] = fmaf(pw[h], v[e], o[h][e]);
    }
  }
}

// One attention item = (batch row b, group of HEADS heads from h0, chunk of the row's positions): stage the
// heads' latent queries, reset their running max/sum, stream the chunk's kTile-row tiles through the double
// buffer (tile t+1 loads while tile t is used; per_tile(tile, t0, rows) does the scores, softmax and
// accumulation with the barriers between them), then finish() writes the item's output partials and the heads'
// running max/sum go to L.part_ml. Shared by the 16-head items (attention_item) and the split's slices.
template <typename T, int HEADS, typename PerTile, typename Finish>
__device__ __forceinline__ void stream_item(const Params& p, const Smem& s, const ScratchLayout& L, int item,
                                            PerTile per_tile, Finish finish) {
  const int tid = threadIdx.x, NCH = p.chunks;
  const int chunk = item % NCH, hg = (item / NCH) % L.head_groups, b = item / (NCH * L.head_groups);
  const int heads = min(HEADS, p.num_heads - hg * HEADS);
  const int lo = s.range[2 * b], hi = s.range[2 * b + 1];
  const int per = cf::ceil_div(max(hi - lo, 0), NCH);
  const int cs = lo + chunk * per, ce = min(hi, cs + per);
  const int ntiles = ce > cs ? cf::ceil_div(ce - cs, kTile) : 0;
  const float* qsrc = L.q_lat + (static_cast<long long>(b) * p.num_heads + hg * HEADS) * kLat;
  for (int i = tid; i < HEADS * kLat / 4; i += kThreads) {
    const int h = i / (kLat / 4);
    const float4 v = h < heads ? __ldcg(reinterpret_cast<const float4*>(qsrc) + i) : make_float4(0.f, 0.f, 0.f, 0.f);
    reinterpret_cast<float4*>(s.q)[i] = v;
  }
  if (tid < HEADS) {
    s.ml[tid] = cf::neg_inf();
    s.ml[HEADS + tid] = 0.f;
  }
  if (ntiles > 0) load_tile<T>(p, s.tiles, b, cs, min(kTile, ce - cs));
  cp_async_commit();
  for (int t = 0; t < ntiles; ++t) {
    const int t0 = cs + t * kTile, rows = min(kTile, ce - t0);
    if (t + 1 < ntiles) {
      const int n0 = t0 + kTile;
      load_tile<T>(p, s.tiles + ((t + 1) & 1) * kTile * kTileLd, b, n0, min(kTile, ce - n0));
    }
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();  // tile t (and, first time, q and the running state) visible
    per_tile(s.tiles + (t & 1) * kTile * kTileLd, b, t0, rows);
    __syncthreads();  // the buffer of tile t is refilled by the load issued in iteration t + 1
  }
  cp_async_wait<0>();
  __syncthreads();
  finish();
  if (tid < HEADS) {
    float* pml = L.part_ml + (static_cast<long long>(item) * HEADS + tid) * 2;
    pml[0] = s.ml[tid];
    pml[1] = s.ml[HEADS + tid];
  }
  __syncthreads();  // s.q and s.ml are reloaded by the next item
}

template <typename T>
__device__ void attention_item(const Params& p, const Smem& s, const ScratchLayout& L, int item) {
  float o[kHeadsPerThread][kColsPerThread] = {};
  stream_item<T, kHeadGroup>(p, s, L, item, [&](const unsigned short* tile, int b, int t0, int rows) {
    tile_scores<T>(p, s, tile, b, t0, rows);
    __syncthreads();
    tile_softmax(s);
    __syncthreads();
    tile_accumulate<T>(s, tile, rows, o);
  }, [&] {
    const int tid = threadIdx.x, cg = tid % kColGroups, h0 = (tid / kColGroups) * kHeadsPerThread;
    float* po = L.part_o + static_cast<long long>(item) * kHeadGroup * kLora;
#pragma unroll
    for (int h = 0; h < kHeadsPerThread; ++h) {
      *reinterpret_cast<float4*>(po + (h0 + h) * kLora + cg * kColsPerThread) =
          make_float4(o[h][0], o[h][1], o[h][2], o[h][3]);
    }
  });
}

// ------------------------------------------------------------------ phase 4: merge the chunks

__device__ void merge_chunks(const Params& p, const ScratchLayout& L) {
  constexpr int kVecs = kLora / 4;
  const int NH = p.num_heads, NCH = p.chunks;
  const int total = p.batch * NH * kVecs;
  for (int idx = blockIdx.x * kThreads + threadIdx.x; idx < total; idx += gridDim.x * kThreads) {
    const int c4 = idx % kVecs, h = (idx / kVecs) % NH, b = idx / (kVecs * NH);
    const int hl = h % kHeadGroup;
    const long long item0 = (static_cast<long long>(b) * L.head_groups + h / kHeadGroup) * NCH;
    float M = cf::neg_inf();
    for (int c = 0; c < NCH; ++c) M = fmaxf(M, __ldcg(L.part_ml + ((item0 + c) * kHeadGroup + hl) * 2));
    float S = 0.f;
    float4 O = make_float4(0.f, 0.f, 0.f, 0.f);
    for (int c = 0; c < NCH; ++c) {
      const float* ml = L.part_ml + ((item0 + c) * kHeadGroup + hl) * 2;
      const float w = softmax_rescale(__ldcg(ml), M);
      S = fmaf(__ldcg(ml + 1), w, S);
      const float4 v =
          __ldcg(reinterpret_cast<const float4*>(L.part_o + ((item0 + c) * kHeadGroup + hl) * kLora) + c4);
      O = make_float4(fmaf(v.x, w, O.x), fmaf(v.y, w, O.y), fmaf(v.z, w, O.z), fmaf(v.w, w, O.w));
    }
    const float inv = S > 0.f ? 1.f / S : 0.f;
    reinterpret_cast<float4*>(L.o_lat + (static_cast<long long>(b) * NH + h) * kLora)[c4] =
        make_float4(O.x * inv, O.y * inv, O.z * inv, O.w * inv);
  }
}

// CF_MLA_MERGE 1: the same merge per float4 of o_lat, but work goes to warp w of every CTA before warp w + 1
// (batch 1: 64 CTAs each with one warp, not 8 CTAs each with 8 warps), and kMergeUnroll chunks' loads are
// issued before they are combined (run 1: one dependent L2 round trip per chunk, 2 x 132 at batch 1).
__device__ void merge_chunks_spread(const Params& p, const ScratchLayout& L) {
  constexpr int kVecs = kLora / 4;
  const int NH = p.num_heads, NCH = p.chunks, lane = threadIdx.x & 31;
  const int total = p.batch * NH * kVecs;
  const int gw = (threadIdx.x >> 5) * gridDim.x + blockIdx.x, nw = gridDim.x * kWarps;
  for (int idx = gw * 32 + lane; idx < total; idx += nw * 32) {
    const int c4 = idx % kVecs, h = (idx / kVecs) % NH, b = idx / (kVecs * NH);
    const int hl = h % kHeadGroup;
    const long long item0 = (static_cast<long long>(b) * L.head_groups + h / kHeadGroup) * NCH;
    const float* ml0 = L.part_ml + (item0 * kHeadGroup + hl) * 2;
    const float4* o0 = reinterpret_cast<const float4*>(L.part_o + (item0 * kHeadGroup + hl) * kLora) + c4;
    constexpr long long kMlStride = kHeadGroup * 2, kOStride = kHeadGroup * kLora / 4;
    float M = cf::neg_inf();
    for (int c0 = 0; c0 < NCH; c0 += kMergeUnroll) {
      float m[kMergeUnroll];
#pragma unroll
      for (int u = 0; u < kMergeUnroll; ++u) m[u] = c0 + u < NCH ? __ldcg(ml0 + (c0 + u) * kMlStride) : cf::neg_inf();
#pragma unroll
      for (int u = 0; u < kMergeUnroll; ++u) M = fmaxf(M, m[u]);
    }
    float S = 0.f;
    float4 O = make_float4(0.f, 0.f, 0.f, 0.f);
    for (int c0 = 0; c0 < NCH; c0 += kMergeUnroll) {
      float2 ml[kMergeUnroll];
      float4 v[kMergeUnroll];
#pragma unroll
      for (int u = 0; u < kMergeUnroll; ++u) {
        const bool in = c0 + u < NCH;
        ml[u] = in ? __ldcg(reinterpret_cast<const float2*>(ml0 + (c0 + u) * kMlStride))
                   : make_float2(cf::neg_inf(), 0.f);
        v[u] = in ? __ldcg(o0 + (c0 + u) * kOStride) : make_float4(0.f, 0.f, 0.f, 0.f);
      }
#pragma unroll
      for (int u = 0; u < kMergeUnroll; ++u) {
        const float w = softmax_rescale(ml[u].x, M);
        S = fmaf(ml[u].y, w, S);
        O = make_float4(fmaf(v[u].x, w, O.x), fmaf(v[u].y, w, O.y), fmaf(v[u].z, w, O.z), fmaf(v[u].w, w, O.w));
      }
    }
    const float inv = S > 0.f ? 1.f / S : 0.f;
    reinterpret_cast<float4*>(L.o_lat + (static_cast<long long>(b) * NH + h) * kLora)[c4] =
        make_float4(O.x * inv, O.y * inv, O.z * inv, O.w * inv);
  }
}

// ------------------------------------------------------------------ CF_MLA_SPLIT: attention items of kSliceHeads
// heads. Same online softmax as attention_item (exp2 domain, fp32), laid out for few heads per CTA: the
// score step gives each cached row to kRowSlices threads (vectors interleaved so a quarter warp reads 8
// rows at the same column: conflict-free with the padded rows) and skips warps past the live rows; the
// accumulate step gives every thread kSliceCols columns of all slice heads.

// scores[h, j] = q_lat[h] . tile[j] for the slice heads, -inf for rows past `rows` or masked.
template <typename T>
__device__ __forceinline__ void slice_scores(const Params& p, const Smem& s, const unsigned short* tile, int b,
                                             int t0, int rows) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int part = lane / kRowsPerScoreWarp, j = warp * kRowsPerScoreWarp + lane % kRowsPerScoreWarp;
  float acc[kSliceHeads] = {};
  if (warp * kRowsPerScoreWarp < rows) {  // warp-uniform: no dot products for rows that are all past the chunk
    const T* row = reinterpret_cast<const T*>(tile) + j * kTileLd;
#pragma unroll 6
    for (int i = 0; i < kSliceVecs; ++i) {
      const int k = (i * kRowSlices + part) * kVec;
      float kf[kVec];
      unpack8<T>(*reinterpret_cast<const uint4*>(row + k), kf);
#pragma unroll
      for (int h = 0; h < kSliceHeads; ++h) {
        const float4 qa = *reinterpret_cast<const float4*>(s.q + h * kLat + k);
        const float4 qb = *reinterpret_cast<const float4*>(s.q + h * kLat + k + 4);
        acc[h] = fmaf(qa.x, kf[0], acc[h]); acc[h] = fmaf(qa.y, kf[1], acc[h]);
        acc[h] = fmaf(qa.z, kf[2], acc[h]); acc[h] = fmaf(qa.w, kf[3], acc[h]);
        acc[h] = fmaf(qb.x, kf[4], acc[h]); acc[h] = fmaf(qb.y, kf[5], acc[h]);
        acc[h] = fmaf(qb.z, kf[6], acc[h]); acc[h] = fmaf(qb.w, kf[7], acc[h]);
      }
    }
  }
  // The kRowSlices partial dots of a row sit kRowsPerScoreWarp lanes apart: a fixed butterfly over them.
#pragma unroll
  for (int h = 0; h < kSliceHeads; ++h) {
#pragma unroll
    for (int off = kRowsPerScoreWarp; off < 32; off <<= 1) acc[h] += __shfl_xor_sync(0xffffffffu, acc[h], off);
  }
  if (part == 0) {
    const bool live = j < rows && (p.mask == nullptr || p.mask[b * p.mask_stride + t0 + j] != 0);
#pragma unroll
    for (int h = 0; h < kSliceHeads; ++h) s.scores[h * kTile + j] = live ? acc[h] : cf::neg_inf();
  }
}

// Online-softmax update for the slice heads, one warp per head: probs [j, h], running max/sum, correction.
__device__ __forceinline__ void slice_softmax(const Smem& s) {
  const int lane = threadIdx.x & 31, h = threadIdx.x >> 5;
  if (h >= kSliceHeads) return;
  float* m_run = s.ml;
  float* l_run = s.ml + kSliceHeads;
  float* corr = s.ml + 2 * kSliceHeads;
  const float s0 = s.scores[h * kTile + lane], s1 = s.scores[h * kTile + lane + 32];
  const float m_old = m_run[h], l_old = l_run[h];
  const float m_new = fmaxf(m_old, warp_max(fmaxf(s0, s1)));
  float p0 = 0.f, p1 = 0.f, c = 1.f;
  if (m_new != cf::neg_inf()) {
    p0 = exp2f(s0 - m_new);
    p1 = exp2f(s1 - m_new);
    c = softmax_rescale(m_old, m_new);
  }
  const float sum = warp_sum(p0 + p1);
  s.probs[lane * kSliceHeads + h] = p0;
  s.probs[(lane + 32) * kSliceHeads + h] = p1;
  __syncwarp();
  if (lane == 0) {
    m_run[h] = m_new;
    l_run[h] = fmaf(l_old, c, sum);
    corr[h] = c;
  }
}

// o[h][e] = o[h][e] * corr[h] + sum_j probs[j, h] * c_kv[j, c0 + e] for this thread's kSliceCols columns.
template <typename T>
__device__ __forceinline__ void slice_accumulate(const Smem& s, const unsigned short* tile, int rows,
                                                 float (&o)[kSliceHeads][kSliceCols]) {
  const float* corr = s.ml + 2 * kSliceHeads;
#pragma unroll
  for (int h = 0; h < kSliceHeads; ++h) {
    const float c = corr[h];
#pragma unroll
    for (int e = 0; e < kSliceCols; ++e) o[h][e] *= c;
  }
  const T* col = reinterpret_cast<const T*>(tile) + threadIdx.x * kSliceCols;
#pragma unroll 4
  for (int j = 0; j < rows; ++j) {
    const float2 v = pair_to_float2<T>(*reinterpret_cast<const unsigned*>(col + j * kTileLd));
#pragma unroll
    for (int h = 0; h < kSliceHeads; h += 4) {
      const float4 pw = *reinterpret_cast<const float4*>(s.probs + j * kSliceHeads + h);
      const float w[4] = {pw.x, pw.y, pw.z, pw.w};
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        o[h + u][0] = fmaf(w[u], v.x, o[h + u][0]);
        o[h + u][1] = fmaf(w[u], v.y, o[h + u][1]);
      }
    }
  }
}

// Item = (batch row, head slice, chunk): stream the chunk's tiles once for the slice's heads; partials out.
template <typename T>
__device__ void slice_item(const Params& p, const Smem& s, const ScratchLayout& L, int item) {
  float o[kSliceHeads][kSliceCols] = {};
  stream_item<T, kSliceHeads>(p, s, L, item, [&](const unsigned short* tile, int b, int t0, int rows) {
    slice_scores<T>(p, s, tile, b, t0, rows);
    __syncthreads();
    slice_softmax(s);
    __syncthreads();
    slice_accumulate<T>(s, tile, rows, o);
  }, [&] {
    float* po = L.part_o + static_cast<long long>(item) * kSliceHeads * kLora + threadIdx.x * kSliceCols;
#pragma unroll
    for (int h = 0; h < kSliceHeads; ++h) *reinterpret_cast<float2*>(po + h * kLora) = make_float2(o[h][0], o[h][1]);
  });
}

// One merge unit = (b, head, latent quarter), one warp, lane = float4 column. Per block of 32 chunks: lane c
// loads chunk c's (m, l) (one round trip for all), the block max and the weights follow by fixed butterflies;
// then the o partials are loaded kMergeBatch chunks at a time (one round trip for up to 16 chunks) and folded
// in chunk order. Run 2's merge made 2 x NCH / kMergeUnroll dependent round trips (12.6 us for 64 chunks).
__device__ __forceinline__ void merge_unit(const Params& p, const ScratchLayout& L, int unit) {
  const int lane = threadIdx.x & 31, NH = p.num_heads, NCH = p.chunks;
  const int part = unit % kMergeParts, h = (unit / kMergeParts) % NH, b = unit / (kMergeParts * NH);
  const long long item0 = (static_cast<long long>(b) * L.head_groups + h / kSliceHeads) * NCH;
  const long long row0 = item0 * kSliceHeads + h % kSliceHeads;
  constexpr long long kMlStride = kSliceHeads * 2, kOStride = kSliceHeads * kLora / 4;
  const float* ml0 = L.part_ml + row0 * 2;
  const float4* o0 = reinterpret_cast<const float4*>(L.part_o + row0 * kLora) + part * kMergeVecs + lane;
  float M = cf::neg_inf(), S = 0.f;
  float4 O = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll 1  // rolled: at batch bucket 16 an unrolled merge spills (the GEMVs leave no registers)
  for (int cb = 0; cb < NCH; cb += 32) {
    const int c = cb + lane;
    const float2 ml = c < NCH ? __ldcg(reinterpret_cast<const float2*>(ml0 + c * kMlStride))
                              : make_float2(cf::neg_inf(), 0.f);
    const float Mn = fmaxf(M, warp_max(ml.x));
    const float keep = softmax_rescale(M, Mn);  // 0 before the first block (O, S are 0 then)
    const float w = softmax_rescale(ml.x, Mn);
    S = fmaf(S, keep, warp_sum(ml.y * w));
    O = make_float4(O.x * keep, O.y * keep, O.z * keep, O.w * keep);
    const int n = min(32, NCH - cb);
#pragma unroll 1
    for (int u0 = 0; u0 < n; u0 += kMergeBatch) {
      float4 v[kMergeBatch];
#pragma unroll
      for (int u = 0; u < kMergeBatch; ++u)
        v[u] = u0 + u < n ? __ldcg(o0 + (cb + u0 + u) * kOStride) : make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
      for (int u = 0; u < kMergeBatch; ++u) {
        const float wu = __shfl_sync(0xffffffffu, w, (u0 + u) & 31);
        O = make_float4(fmaf(v[u].x, wu, O.x), fmaf(v[u].y, wu, O.y), fmaf(v[u].z, wu, O.z), fmaf(v[u].w, wu, O.w));
      }
    }
    M = Mn;
  }
  const float inv = S > 0.f ? 1.f / S : 0.f;
  reinterpret_cast<float4*>(L.o_lat + (static_cast<long long>(b) * NH + h) * kLora)[part * kMergeVecs + lane] =
      make_float4(O.x * inv, O.y * inv, O.z * inv, O.w * inv);
}

// Phase 4 (SPLIT): every merge unit of the launch, warp w of every CTA before warp w + 1.
__device__ void merge_slices(const Params& p, const ScratchLayout& L) {
  const int units = p.batch * p.num_heads * kMergeParts;
  const int gw = (threadIdx.x >> 5) * gridDim.x + blockIdx.x, nw = gridDim.x * kWarps;
  for (int u = gw; u < units; u += nw) merge_unit(p, L, u);
}

// ------------------------------------------------------------------ the kernel

template <typename T, int BB>
__device__ __forceinline__ void mla_decode_body(const Params& p, unsigned char* smem_raw) {
  const Smem s = plan_smem(smem_raw);
  if (threadIdx.x == 0 && dynamic_smem_size() < static_cast<unsigned>(s.end - smem_raw)) __trap();
  const ScratchLayout L = scratch_layout(p);
  const long long pos = *p.cache_position;
  const int B = p.batch, H = p.hidden, NH = p.num_heads;
  const T* x = static_cast<const T*>(p.x);

  // ---- 0 + 1: projections of RMSNorm(x): [q | q_a] rows then kv_a rows
  stamp(p.stamps, kPhStart);
  row_stats<T>(p, s, pos);
  __syncthreads();
  stamp(p.stamps, kPhStats);
  const int q_rows = L.r1 - kLat;
  const T* wq = static_cast<const T*>(p.wq);
  const T* wkv_a = static_cast<const T*>(p.wkv_a);
  // h = RMSNorm(x) in fp32 (not rounded: the CUDA-core GEMV's activations, as split has always used them)
  const auto act_h = [&](int, int b, int k, float (&a)[kVec]) {
    if (b >= B) {
#pragma unroll
      for (int e = 0; e < kVec; ++e) a[e] = 0.f;
      return;
    }
    float xf[kVec], wf[kVec];
    unpack8<T>(__ldg(reinterpret_cast<const uint4*>(x + static_cast<long long>(b) * H + k)), xf);
    unpack8<T>(__ldg(reinterpret_cast<const uint4*>(static_cast<const T*>(p.norm_w) + k)), wf);
    const float r = s.rstd[b];
#pragma unroll
    for (int e = 0; e < kVec; ++e) a[e] = xf[e] * r * (p.unit_offset ? 1.f + wf[e] : wf[e]);
  };
  const auto sink_s1 = [&](int r, int b, float v) {
    if (b < B) L.s1[static_cast<long long>(b) * L.r1 + r] = v;
  };
  if constexpr (kMmaProj<BB>) {
    // The [q | q_a] rows on the tensor cores (h rounded to T, as eager's linear takes it). The kv_a rows feed
    // the cache slot (kv_a_layernorm of c_kv, RoPE of k_pe, rounded once): they stay on the CUDA cores with h in
    // fp32 and the same per-row lane order as split, so the slot is bitwise split's (an fp16 h moved c_kv by up
    // to ~2^-11 |h| |w_row| through cancellation: more than an ulp of the small latents, the failed cache test).
    // Their warps are those of the CTAs holding the fewest q tiles (tile i -> CTA i % grid: the last ones).
    grid_gemv_mma<T, BB, kMmaLongDepth>([&](int r) { return wq + static_cast<long long>(r) * H; }, q_rows, H,
                                        act_h, sink_s1, s.q);
    const int grid = gridDim.x, light = grid - cf::ceil_div(q_rows, cf::mma::kTileRows) % grid;
    const int rank = grid - 1 - static_cast<int>(blockIdx.x);
    if (rank < light) {
      grid_gemv_warps<T, BB>(
          rank + (threadIdx.x >> 5) * light, light * kWarps,
          [&](int r) { return wkv_a + static_cast<long long>(r) * H; }, kLat, H, act_h,
          [&](int r, int b, float v) { sink_s1(q_rows + r, b, v); });
    }
  } else {
    grid_gemv_any<T, BB, kMmaLongDepth>(
        [&](int r) { return r < q_rows ? wq + static_cast<long long>(r) * H : wkv_a + static_cast<long long>(r - q_rows) * H; },
        L.r1, H, act_h, sink_s1, s.q);
  }
  stamp(p.stamps, kPhProj);
  grid_sync(p.barrier);
  stamp(p.stamps, kPhProjSync);

  // ---- 1b: q_b over RMSNorm(q_a) (q LoRA only)
  if (p.q_lora > 0) {
    q_a_stats(p, s, L);
    __syncthreads();
    const T* wq_b = static_cast<const T*>(p.wq_b);
    const T* qnw = static_cast<const T*>(p.q_norm_w);
    const int QL = p.q_lora;
    grid_gemv_any<T, BB, kMmaLongDepth>(
        [&](int r) { return wq_b + static_cast<long long>(r) * QL; }, NH * L.qh, QL,
        [&](int, int b, int k, float (&a)[kVec]) {
          if (b >= B) {
#pragma unroll
            for (int e = 0; e < kVec; ++e) a[e] = 0.f;
            return;
          }
          float qf[kVec], wf[kVec];
          ld_scratch8(L.s1 + static_cast<long long>(b) * L.r1 + k, qf);
          unpack8<T>(__ldg(reinterpret_cast<const uint4*>(qnw + k)), wf);
          const float r = s.rstd_q[b];
#pragma unroll
          for (int e = 0; e < kVec; ++e) a[e] = qf[e] * r * wf[e];
        },
        [&](int r, int b, float v) {
          if (b < B) L.q[static_cast<long long>(b) * L.ldq + r] = v;
        },
        s.q);
    stamp(p.stamps, kPhQb);
    grid_sync(p.barrier);
  } else {
    stamp(p.stamps, kPhQb);
  }
  stamp(p.stamps, kPhQbSync);

  // ---- 2: absorbed queries, roped q_pe, cache write
  phase2<T, BB>(p, L, pos);
  stamp(p.stamps, kPhAbsorb);
  grid_sync(p.barrier);
  stamp(p.stamps, kPhAbsorbSync);

  // ---- 3: split-K attention over the latent cache
  for (int item = blockIdx.x; item < L.items; item += gridDim.x) {
    if constexpr (CF_MLA_SPLIT == 1) {
      slice_item<T>(p, s, L, item);
    } else {
      attention_item<T>(p, s, L, item);
    }
  }
  stamp(p.stamps, kPhAttn);
  grid_sync(p.barrier);
  stamp(p.stamps, kPhAttnSync);

  // ---- 4: merge the chunks of every (b, h)
  if constexpr (CF_MLA_SPLIT == 1) {
    merge_slices(p, L);
  } else if constexpr (CF_MLA_MERGE == 1) {
    merge_chunks_spread(p, L);
  } else {
    merge_chunks(p, L);
  }
  stamp(p.stamps, kPhMerge);
  grid_sync(p.barrier);
  stamp(p.stamps, kPhMergeSync);

  // ---- 5: W_UV per head: attn[b, h*V + v] = o_lat[b, h] . W_UV[h][v]
  const int V = p.v_dim, NOPE = p.nope;
  const T* wkv_b = static_cast<const T*>(p.wkv_b);
  // (tensor cores: a 16-row tile must lie inside one head, the act's r0 / V)
  grid_gemv_any<T, BB, kMmaShortDepth>(
      [&](int r) { return wkv_b + (static_cast<long long>(r / V) * (NOPE + V) + NOPE + r % V) * kLora; }, NH * V,
      kLora,
      [&](int r0, int b, int k, float (&a)[kVec]) {
        if (b >= B) {
#pragma unroll
          for (int e = 0; e < kVec; ++e) a[e] = 0.f;
          return;
        }
        ld_scratch8(L.o_lat + (static_cast<long long>(b) * NH + r0 / V) * kLora + k, a);
      },
      [&](int r, int b, float v) {
        if (b < B) L.attn[static_cast<long long>(b) * NH * V + r] = v;
      },
      s.q, V % cf::mma::kTileRows == 0);
  stamp(p.stamps, kPhUv);
  grid_sync(p.barrier);
  stamp(p.stamps, kPhUvSync);

  // ---- 6: o_proj + residual
  const T* wo = static_cast<const T*>(p.wo);
  T* out = static_cast<T*>(p.out);
  const int OK = NH * V;
  grid_gemv_any<T, BB, kMmaLongDepth>(
      [&](int r) { return wo + static_cast<long long>(r) * OK; }, H, OK,
      [&](int, int b, int k, float (&a)[kVec]) {
        if (b >= B) {
#pragma unroll
          for (int e = 0; e < kVec; ++e) a[e] = 0.f;
          return;
        }
        ld_scratch8(L.attn + static_cast<long long>(b) * OK + k, a);
      },
      [&](int r, int b, float v) {
        if (b < B) {
          const long long i = static_cast<long long>(b) * H + r;
          out[i] = cf::from_float<T>(p.add_residual ? v + cf::to_float(x[i]) : v);
        }
      },
      s.q);
  if constexpr (CF_MLA_PHASES != 0) __syncthreads();  // instrumented: the stamp marks the CTA's last row
  stamp(p.stamps, kPhEnd);
}

}  // namespace mla

// Entry point for NVRTC name expressions: mla_decode<T, BB>. One parameter per Params field, in field
// order (the launcher passes flat pointers and ctypes scalars), gathered into a Params.
template <typename T, int BB>
__global__ void __launch_bounds__(mla::kThreads, 1) mla_decode(
    const void* x, const void* norm_w, const void* wq, const void* wq_b, const void* q_norm_w, const void* wkv_a,
    const void* kv_norm_w, const void* wkv_b, const void* wo, const void* cos, const void* sin,
    const long long* cache_position, void* k_cache, void* v_cache, const unsigned char* mask, void* out,
    float* scratch, unsigned* barrier, float eps, float q_eps, float kv_eps, float q_scale, int batch, int hidden,
    int num_heads, int nope, int v_dim, int q_lora, int max_cache_len, long long mask_stride,
    long long cos_bstride, int cos_estride, int cos_kind, int rope_form, int unit_offset, int add_residual,
    int chunks, unsigned long long* stamps) {
  static_assert(BB >= 1 && BB <= 16, "batch bucket is 1..16");
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const mla::Params p{x, norm_w, wq, wq_b, q_norm_w, wkv_a, kv_norm_w, wkv_b, wo, cos, sin, cache_position,
                      k_cache, v_cache, mask, out, scratch, barrier, eps, q_eps, kv_eps, q_scale, batch, hidden,
                      num_heads, nope, v_dim, q_lora, max_cache_len, mask_stride, cos_bstride, cos_estride,
                      cos_kind, rope_form, unit_offset, add_residual, chunks, stamps};
  mla::mla_decode_body<T, BB>(p, smem_raw);
}
