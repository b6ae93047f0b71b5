// attention_decode.cu -- one launch per attention block per decode step (docs/kernel-contract.md).
//
// [residual +] RMSNorm -> q/k/v projections (+bias) -> [per-head q/k RMSNorm] -> NeoX RoPE -> new K/V
// into the static cache at the device-side cache position -> masked attention over the live range of
// the cache only -> o_proj (+bias) -> residual.
//
// Work split (all numbers come from the launcher, attention.py `attention_config`, from the shape and
// the SM count; nothing here assumes a model):
//   grid = (C, P, KVH), cluster = (C, 1, 1).  A cluster owns one KV head and its G = NH/KVH query
//   heads; P clusters share a KV head when KVH*C alone would leave SMs idle (few-KV-head models).
//   1. Each CTA computes the RMS of every batch row itself (x is tiny and L2-resident).
//   2. q/k/v projection split by rows: CTA rank r owns rows [r*RC, (r+1)*RC) of the group's (G+2)*D
//      rows and computes full-length fp32 dot products for all B rows (each weight row is read once
//      per cluster for the whole batch). The normalised activations are staged in shared memory in
//      K chunks of KC columns (KC from the shared-memory budget).
//   3. ClusterGather over DSMEM: every CTA copies its peers' rows, so each holds the fp32 q|k|v of the
//      group; each CTA then applies bias, q/k-norm and RoPE to all of it (redundant, bitwise identical
//      in every CTA; a lane holds both halves of each rotate-half pair, so RoPE needs no exchange).
//      k, v are rounded once to the model dtype; CTA (rank 0, p 0) writes them to the cache slot.
//   4. Attention: the live range [first True, last True] of each mask row (or [0, pos]) is split into
//      P*C token chunks, one per CTA; warps stride over 16-byte K/V vectors, online softmax in fp32
//      (exp2 domain, running max initialised to -inf, masked tokens never loaded). The current token
//      is taken from shared memory (the rounded k/v), never from the slot being written.
//   5. Merge: warps -> CTA in shared memory, CTA -> cluster by reading every peer's (m, l, o) over
//      DSMEM in rank order (identical result in every CTA). With P > 1 each rank writes its cluster's
//      partial to global scratch; the last of the P arrivals per (KV head, rank) merges them in p order.
//   6. o_proj: rank r computes output columns [r*HC, (r+1)*HC) over the group's G*D inputs into fp32
//      partials [KVH, B, H]; the last of the KVH arrivals per column slice sums them in KV-head order,
//      adds o_bias and the residual and writes `out`. Arrival counters are reset by the last arriver,
//      so the kernel is deterministic, needs no pre-zeroing and replays in CUDA graphs.
// Variant bits (enum Variant, attention.py VARIANTS) change who does phase 6 (kWideTail) and who computes
// the q/k/v rows (kSplitQkv); kMma runs the GEMVs of phases 2 and 6 on the tensor cores (mma.sync, batch = N)
// for batch buckets >= 4.
// No floating-point atomics anywhere; integer atomics only count arrivals.
#include <cooperative_groups.h>

#include "common.cuh"
#include "mma.cuh"
#include "pipeline.cuh"

namespace cg = cooperative_groups;

namespace attn {

constexpr int kThreads = 256;               // 8 warps: one CTA per SM, enough loads in flight
constexpr int kWarps = kThreads / 32;
constexpr int kVec = 8;                     // 2-byte elements per 16-byte vector
// Tokens per lane group per attention step (K and V loads in flight per lane = 2x this): as many as the
// q/o registers of HG heads (2 x HG x 8 per lane) leave room for.
template <int HG>
constexpr int kTokenUnroll = HG >= 8 ? 2 : (HG >= 2 ? 4 : 8);
constexpr float kLog2e = 1.4426950408889634f;
#define kNegInf (-__int_as_float(0x7f800000))  // -inf without <cmath> (NVRTC has no host headers)
constexpr int kMaxPairsPerLane = 4;         // head_dim 256 = 32 lanes x 4 rotate-half pairs x 2
constexpr int kMaxCluster = 8;              // portable cluster size: peers' partials merged from registers
constexpr int kMaxSplit = 16;               // clusters per KV head (launcher clamps): merged from registers
constexpr int kMaskChunk = cf::kMaskScanBytes;  // mask bytes per thread per step (one 16-byte load when aligned)
// Phase 5's work item: kMergeRun consecutive elements of one (row, head), read as kMergePairs float2 (the
// partials' row stride D + 2 is even, so pairs are 8-byte aligned; head_dim is a multiple of 64).
constexpr int kMergeRun = 4;
constexpr int kMergePairs = kMergeRun / 2;
// The 8-heads-per-pass builds of batch bucket 4 and up (255 registers) keep the split merge's one-run loop:
// merge_split_runs's code shape costs them 8-44 bytes of spill there (bucket 4: 36 B under NVRTC 13.5, bucket 8:
// 20 B under 13.0, bucket 16: 8 B under 13.5), whatever kN and kItems.
template <int BB, int HG>
constexpr bool kDeepSplitMerge = !(BB >= 4 && HG >= 8);

struct Params {
  const void* x;            // [B, H]
  const void* norm_w;       // [H]
  const void* wq;           // [NH*D, H]
  const void* wk;           // [KVH*D, H]
  const void* wv;           // [KVH*D, H]
  const void* bq;           // [NH*D] or null
  const void* bk;
  const void* bv;
  const void* q_norm_w;     // [D] or null
  const void* k_norm_w;
  const void* cos;          // [B or 1, D] of cos_kind
  const void* sin;
  const long long* cache_position;  // [1]
  void* k_cache;            // [B, KVH, L, D]
  void* v_cache;
  const unsigned char* mask;  // [B, L] rows of stride mask_stride, or null (attend j <= pos)
  const void* wo;           // [H, NH*D]
  const void* bo;           // [H] or null
  void* out;                // [B, H]
  float* attn_partial;      // [KVH, C, P, B, G, D+2] (P > 1 only)
  float* o_partial;         // [KVH, B, H]
  int* arrivals;            // counters (see Counters); zero between launches
  float* qkv_global;        // [KVH, B, (G+2)*D] fp32 q/k/v handed between the P clusters (kSplitQkv, P > 1)
  float eps, qk_eps, scale;
  int batch, hidden, num_heads, num_kv_heads, head_dim, max_cache_len;
  long long mask_stride, cos_stride;  // elements between batch rows (cos_stride 0: shared by the batch)
  int cos_kind, unit_offset, add_residual, k_chunk, prefetch;
  int rows_parallel;        // batch rows attended at once (power of two <= min(B, kWarps))
  int stop_after;           // measurement hook: 0 runs everything; k > 0 returns after phase k (counters left at 0)
  int variant;              // kWideTail | kSplitQkv (one-wave grids only) | kMma bits
};

// Variant bits (attention.py VARIANTS). Both wait on other CTAs of the grid, so both need every CTA
// co-resident: the launcher sets them only when its split is one wave (cuOccupancyMaxActiveClusters).
enum Variant : int {
  // Phase 6 over every CTA: all P clusters of a KV head merge the split partials (after a per-(KV head,
  // rank) wait instead of a last-arriver hand-off), each CTA owns one of P*C output column slices, and
  // the KVH CTAs of a slice each finalise 1/KVH of its columns once all KVH partials have landed.
  kWideTail = 1,
  // Phase 2 without the P-fold redundancy: the q/k/v rows of a KV head are split over all P*C CTAs,
  // written to global memory and gathered by every CTA after a per-KV-head wait (replaces the DSMEM gather).
  kSplitQkv = 2,
  // Phases 2 and 6 on the tensor cores for batch buckets >= kMmaMinBucket: the q/k/v rows and the o_proj
  // slice as mma.sync m16n8k16 (weights = A, batch = N; gemv_mma). fp32 accumulation in a fixed k order,
  // so deterministic, but not bitwise the CUDA-core GEMV (different summation order; the o_proj inputs
  // are rounded to the model dtype, as eager rounds the attention output). Needs no other CTA: the
  // launcher keeps it on splits that are not one wave.
  kMma = 16,
  // Phase 4 with every load of a token step in flight before the first use (arithmetic unchanged, so the
  // outputs are bitwise those without the bit): the mask bytes are loaded beside the K/V vectors and
  // tested only once all of the step's loads are issued. Without it the compiler packs each mask byte into
  // a flag register right after its load, so every token of a step waits one L2 latency in turn
  // (kTokenUnroll serial latencies per step: ~8 x 0.5-1 us on Llama-2-7B's two steps per warp).
  kDeepKv = 32,
  // Phase 4 of one-head-per-pass (MHA) builds of batch buckets 1, 2 and 8: the CTA's K/V token chunks stream
  // through a shared-memory ring. A stage holds kWarps x step tokens: with R batch rows in parallel, R
  // sub-blocks of (kWarps / R) x step tokens, one per row group, each copied by two bulk copies (the K and
  // the V rows of one (row, KV head) are contiguous in the cache) and awaited on the stage's mbarrier; warp
  // w of a row group reads step block w of its sub-block -- the same tokens, in the same order, as without
  // the bit, so the output is bitwise the same. The loads no longer wait in each lane's registers (the K/V
  // stream ran at 1.3-1.8 TB/s). Needs no other CTA. Used only when the launcher sized shared memory for
  // the ring (kRingBytes) and at least two stages fit; otherwise phase 4 runs as without the bit.
  kKvRing = 64,
  // Phase 4 of the several-heads-per-pass (GQA) builds of batch buckets 1-2 at head_dim 64 and 128: the warp's
  // lanes laid out as (query head, slice of D) instead of (token slot, 16-byte vector), so every lane works on
  // the same token and one rolled loop covers all HG heads (attend_heads). The slot layout unrolls HG heads x
  // kTokenUnroll tokens into ~1,100 instructions that the small models run once per warp, fetch-bound at ~13
  // cycles per instruction (round 22), then merges the slots by shuffles. A new summation order (each lane sums
  // D*HG/32 products, then kLph lanes by butterfly; a warp takes runs of consecutive tokens): held to the fp64
  // band, not bitwise the slot layout. Needs no other CTA. Ignored by other builds and head dims.
  kHeadLanes = 128,
};
// kKvRing: kRingDataBytes of stages (K then V of each), as many as fit up to kRingMaxStages: D = 128 at one
// head per pass (16-token steps, 64 KB stages) double-buffers, four heads per pass (8-token steps) 4 stages.
// Either keeps >= 64 KB per CTA in flight, ~3x one SM's share of the copy bandwidth x latency (~23 KB/us x
// ~1 us). The region follows the plan's last field (Smem::flag), 128-byte aligned.
constexpr int kRingMaxStages = 8;
constexpr int kRingDataBytes = 128 * 1024;
constexpr int kRingBarrierBytes = 128;  // kRingMaxStages mbarriers (64 bytes), padded to keep stages aligned
constexpr int kRingBytes = kRingBarrierBytes + kRingDataBytes;  // attention.py RING_BYTES
constexpr int kSpinSleepNs = 32;  // back-off between polls of an arrival counter (one thread per CTA polls)

// ------------------------------------------------------------------ small helpers

// Shared decode helpers (common.cuh).
using cf::ld_stream;
using cf::load_scalar;
using cf::load_table;
using cf::merge_token_slots;
using cf::softmax_rescale;
using cf::unpack8;
using cf::warp_sum;

// Eight activations from shared memory, whether staged in the model dtype or in fp32.
template <typename T>
__device__ __forceinline__ void load_x8(const T* p, float (&f)[kVec]) {
  unpack8<T>(*reinterpret_cast<const uint4*>(p), f);
}
template <typename T>
__device__ __forceinline__ void load_x8(const float* p, float (&f)[kVec]) {
  const float4 a = reinterpret_cast<const float4*>(p)[0], b = reinterpret_cast<const float4*>(p)[1];
  f[0] = a.x; f[1] = a.y; f[2] = a.z; f[3] = a.w; f[4] = b.x; f[5] = b.y; f[6] = b.z; f[7] = b.w;
}

__device__ __forceinline__ void prefetch_l2(const void* p) {
  asm volatile("prefetch.global.L2::evict_last [%0];" ::"l"(p));
}

// ------------------------------------------------------------------ optional per-CTA timeline
// -DCF_ATTN_TIMELINE=1 (benchmarks/attention.py --timeline; attention.py TIMELINE mirrors this enum): thread 0
// of every CTA writes %globaltimer (ns, u64) at each phase boundary and before/after each wait on other CTAs,
// into stamps[cta][kTl*] where cta = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z) and
// stamps = the u64 tail of o_partial past its KVH*B*H floats (the launcher enlarges o_partial, and zeroes the
// tail, for timeline launches only; no extra kernel parameter). "End of phase" stamps are CTA-wide: a
// __syncthreads() first (timeline build only), so they mark the CTA's slowest warp. A stamp a CTA never
// reaches stays 0 (the reduction skips zeros): the split-merge wait without P > 1 or off the last arriver,
// the slice wait off the last arriver (version 3); every CTA stamps kTlEnd when it leaves, early or not
// (stop_after cuts excepted). Off (default): no code is emitted, the kernel is byte-identical.
enum TimelineStamp : int {
  kTlStart = 0,    // kernel entry
  kTlNorm,         // phase 1 done: mask live ranges and row RMS in shared memory
  kTlQkv,          // phase 2 done: this CTA's q/k/v GEMV rows (and the optional L2 prefetch issued)
  kTlQkvArrive,    // before the q/k/v hand-off wait (rows published to global with kSplitQkv; else = kTlQkv)
  kTlQkvWait,      // after it (arrive_and_wait of gather_global, or the first cluster.sync of the DSMEM gather)
  kTlRope,         // phase 3 done: gather copied in, bias / q,k-norm / RoPE, cache slot written
  kTlAttn,         // phase 4 done: attention over this CTA's token chunk, warps merged
  kTlAttnSync,     // after phase 5's first cluster.sync (the cluster's slowest CTA finished phase 4)
  kTlMergeArrive,  // P > 1: before the split-merge wait (partial written to global, cluster synced)
  kTlMergeWait,    // P > 1: after it (kWideTail: every CTA; version 3: the last arriver only)
  kTlMerge,        // phase 5 done: attention output in shared memory (P == 1: after the cluster merge)
  kTlOproj,        // o_proj GEMV of the slice done (= arrival at the slice hand-off)
  kTlSliceWait,    // after the slice wait (kWideTail: arrive_and_wait; version 3: the last arriver only)
  kTlEnd,          // the CTA leaves (after the fix-up, or at an early return)
  kTlCount
};
#ifndef CF_ATTN_TIMELINE
#define CF_ATTN_TIMELINE 0
#endif
constexpr bool kTimeline = CF_ATTN_TIMELINE != 0;

// This CTA's stamp row (nullptr without the timeline): past o_partial's [KVH, B, H] floats, 8-byte aligned
// (H is a multiple of 8).
__device__ __forceinline__ unsigned long long* timeline_row(float* o_partial, int KVH, int B, int H) {
  if constexpr (kTimeline) {
    const size_t cta = blockIdx.x + static_cast<size_t>(gridDim.x) * (blockIdx.y + static_cast<size_t>(gridDim.y) * blockIdx.z);
    return reinterpret_cast<unsigned long long*>(o_partial + static_cast<size_t>(KVH) * B * H) + cta * kTlCount;
  } else {
    return nullptr;
  }
}

// Thread 0 stamps `which` (the timeline build only). cta_wide: every thread of the CTA gets here first.
__device__ __forceinline__ void stamp(unsigned long long* row, int which, bool cta_wide = false) {
  if constexpr (kTimeline) {
    if (cta_wide) __syncthreads();
    if (threadIdx.x == 0) {
      unsigned long long t;
      asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t) :: "memory");
      row[which] = t;
    }
  }
}

// ------------------------------------------------------------------ grid-level hand-offs
// Arrival counters, all zero between launches. Layout (ints), mirrored by attention.py `_counter_count`:
// [KVH*C] split-merge arrivals, [KVH*C] their departures, [P*C] output-slice arrivals, [P*C] their
// departures, [KVH] q/k/v arrivals, [KVH] their departures. Version 3 uses only the arrival counters
// (last arriver resets); the variants' waits use arrive/depart pairs (the last to depart resets both).
struct Counters {
  int* merge_arrive;
  int* merge_depart;
  int* slice_arrive;
  int* slice_depart;
  int* qkv_arrive;
  int* qkv_depart;
};

__device__ __forceinline__ Counters counters(int* base, int KVH, int C, int P) {
  Counters c;
  c.merge_arrive = base;
  c.merge_depart = c.merge_arrive + KVH * C;
  c.slice_arrive = c.merge_depart + KVH * C;
  c.slice_depart = c.slice_arrive + P * C;
  c.qkv_arrive = c.slice_depart + P * C;
  c.qkv_depart = c.qkv_arrive + KVH;
  return c;
}

__device__ __forceinline__ int ld_acquire(const int* p) {
  int v;
  asm volatile("ld.acquire.gpu.global.b32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

// Publish this CTA's global writes, count it in, and wait until `expected` CTAs have: a barrier over
// the CTAs sharing `arrive` (all co-resident: the launcher allows the variants only for one-wave grids).
// One thread fences and polls; the CTA barriers make the other threads' writes and reads cumulative.
// Readers of the published data must bypass L1 (__ldcg).
__device__ __forceinline__ void arrive_and_wait(int* arrive, int expected) {
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    atomicAdd(arrive, 1);
    while (ld_acquire(arrive) < expected) __nanosleep(kSpinSleepNs);
    __threadfence();
  }
  __syncthreads();
}

// After this CTA's last read of the data guarded by `arrive`: the last of `expected` departures resets
// both counters (every CTA has passed its wait by then), so the next launch starts from zero.
__device__ __forceinline__ void depart(int* arrive, int* departed, int expected) {
  __syncthreads();
  if (threadIdx.x == 0 && atomicAdd(departed, 1) == expected - 1) {
    atomicExch(arrive, 0);
    atomicExch(departed, 0);
  }
}

// Version 3's hand-off: true in the last of `expected` CTAs to arrive (it resets the counter); the
// others may leave. Their writes are visible to the last arriver after this returns.
__device__ __forceinline__ bool last_to_arrive(int* arrive, int expected, int* flag) {
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    const bool last = atomicAdd(arrive, 1) == expected - 1;
    if (last) atomicExch(arrive, 0);
    *flag = last;
  }
  __syncthreads();
  const bool last = *flag;
  if (last) __threadfence();
  return last;
}

// ------------------------------------------------------------------ shared-memory plan
// Must match attention.py `_smem_bytes`. All regions 16-byte aligned.
__host__ __device__ constexpr int align16(int n) { return (n + 15) & ~15; }

struct Smem {
  float* qkv;              // [BB, (G+2)*D] fp32: gathered projections, then q (scaled), then attention out
  unsigned char* stage;    // union: normalised x chunk [BB, KC] (phase 1) | partials + warp scratch
  float* part;             // [B, G, D+2] the CTA's attention partial (m at D, l at D+1)
  float* wscratch;         // [kWarps, HG, D+2]
  void* knew;              // [B, D] model dtype: the rounded new k
  void* vnew;
  float* rstd;             // [BB]
  int* range;              // [B, 2] first and one-past-last live position
  float4* reduce;          // [kThreads] partial column sums of the distributed fix-up (kWideTail)
  int* flag;               // [1]
};

template <typename T, int BB, int HG>
__device__ Smem plan_smem(unsigned char* base, int B, int G, int D, int KC) {
  Smem s;
  const int qkv_bytes = align16(BB * (G + 2) * D * 4);  // BB rows: the o_proj GEMV reads the bucket
  const int part_bytes = align16(B * G * (D + 2) * 4);
  const int ws_bytes = align16(kWarps * HG * (D + 2) * 4);
  const int x_bytes = align16(BB * KC * static_cast<int>(sizeof(T)));
  const int stage_bytes = x_bytes > part_bytes + ws_bytes ? x_bytes : part_bytes + ws_bytes;
  const int new_bytes = align16(B * D * static_cast<int>(sizeof(T)));
  int off = 0;
  s.qkv = reinterpret_cast<float*>(base + off); off += qkv_bytes;
  s.stage = base + off;
  s.part = reinterpret_cast<float*>(base + off);
  s.wscratch = reinterpret_cast<float*>(base + off + part_bytes);
  off += stage_bytes;
  s.knew = base + off; off += new_bytes;
  s.vnew = base + off; off += new_bytes;
  s.rstd = reinterpret_cast<float*>(base + off); off += align16(BB * 4);
  s.range = reinterpret_cast<int*>(base + off); off += align16(B * 2 * 4);
  s.reduce = reinterpret_cast<float4*>(base + off); off += kThreads * 16;
  s.flag = reinterpret_cast<int*>(base + off); off += 16;
  return s;
}

__device__ __forceinline__ unsigned dynamic_smem_size() {
  unsigned r;
  asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(r));
  return r;
}

// ------------------------------------------------------------------ GEMV over a batch
// Dot products of nrows weight rows (row_ptr(i): first element used of row i) with BB activation rows
// xs[b*ldx + k], k < k_len. LPR lanes share a row (32 for hidden-long rows; 8/16 for the short o_proj
// rows of G*D inputs); each lane group takes RB rows at a time and issues RB*KU 16-byte weight loads
// before the first FMA, so a warp keeps 32*RB*KU*16 bytes in flight (decode GEMVs are latency-bound
// otherwise). Activations are read once per k-step and reused by the RB rows. Each lane accumulates its
// k-slice in a fixed order and the lanes of a row reduce by butterfly: deterministic.
// sink(i, b, value) receives the sums.
template <typename T, int BB, int LPR, int RB, int KU, typename XT, typename RowPtr, typename Sink>
__device__ __forceinline__ void gemv(RowPtr row_ptr, int nrows, const XT* xs, int ldx, int k_len, Sink sink) {
  constexpr int kGroups = 32 / LPR;    // row groups per warp
  constexpr int kStride = LPR * kVec;  // elements a row's lane group covers per load
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int grp = lane / LPR, lig = lane % LPR;
  for (int row0 = warp * kGroups * RB; row0 < nrows; row0 += kWarps * kGroups * RB) {
    const T* w[RB];
    bool live[RB];
    float acc[RB][BB];
#pragma unroll
    for (int r = 0; r < RB; ++r) {
      const int i = row0 + r * kGroups + grp;
      live[r] = i < nrows;
      w[r] = static_cast<const T*>(row_ptr(live[r] ? i : row0));
#pragma unroll
      for (int b = 0; b < BB; ++b) acc[r][b] = 0.f;
    }
    for (int k0 = lig * kVec; k0 < k_len; k0 += kStride * KU) {
      uint4 wv[RB][KU];
#pragma unroll
      for (int r = 0; r < RB; ++r) {
#pragma unroll
        for (int u = 0; u < KU; ++u) {
          const int k = k0 + u * kStride;
          wv[r][u] = (live[r] && k < k_len) ? ld_stream(w[r] + k) : make_uint4(0, 0, 0, 0);
        }
      }
#pragma unroll
      for (int u = 0; u < KU; ++u) {
        const int k = k0 + u * kStride;
        if (k < k_len) {
          float wf[RB][kVec];
#pragma unroll
          for (int r = 0; r < RB; ++r) unpack8<T>(wv[r][u], wf[r]);
#pragma unroll
          for (int b = 0; b < BB; ++b) {
            float xf[kVec];
            load_x8<T>(xs + b * ldx + k, xf);
#pragma unroll
            for (int r = 0; r < RB; ++r) {
#pragma unroll
              for (int e = 0; e < kVec; ++e) acc[r][b] = fmaf(wf[r][e], xf[e], acc[r][b]);
            }
          }
        }
      }
    }
#pragma unroll
    for (int r = 0; r < RB; ++r) {
#pragma unroll
      for (int b = 0; b < BB; ++b) {
#pragma unroll
        for (int off = LPR / 2; off; off >>= 1) acc[r][b] += __shfl_xor_sync(0xffffffffu, acc[r][b], off);
      }
      if (live[r] && lig == 0) {
#pragma unroll
        for (int b = 0; b < BB; ++b) sink(row0 + r * kGroups + grp, b, acc[r][b]);
      }
    }
  }
}

// Rows per lane group and k-steps per load batch: about 16 loads in flight per lane at small batch,
// fewer where BB accumulators per row already fill the registers.
template <int BB>
constexpr int kLongRows = BB <= 2 ? 4 : 2;  // q/k/v rows: hidden-long, KU = kLongSteps k-steps
constexpr int kLongSteps = 4;
template <int BB>
constexpr int kShortRows = BB <= 2 ? 8 : (BB <= 4 ? 4 : 2);  // o_proj rows: G*D inputs, few k-steps
constexpr int kShortSteps = 2;

// Lanes per row for k_len inputs: enough 16-byte vectors per lane to keep every lane busy.
__device__ __forceinline__ int lanes_for(int k_len) {
  const int vectors = k_len / kVec;
  return vectors >= 32 ? 32 : (vectors >= 16 ? 16 : 8);
}

// Lanes per row that cover k_len inputs in one pass of `steps` 16-byte loads per lane (the fewest such,
// so more rows, hence more loads, are in flight per warp); 32 when even 32 lanes need several passes.
// For the short o_proj rows: G*D = 128 inputs -> 8 lanes x 2 loads instead of 16 lanes x 1.
__device__ __forceinline__ int lanes_one_pass(int k_len, int steps) {
  const int vectors = k_len / kVec;
  return vectors <= 8 * steps ? 8 : (vectors <= 16 * steps ? 16 : 32);
}

template <typename T, int BB, int RB, int KU, typename XT, typename RowPtr, typename Sink>
__device__ __forceinline__ void gemv_lanes(int lanes, RowPtr row_ptr, int nrows, const XT* xs, int ldx, int k_len,
                                           Sink sink) {
  if (lanes == 32) gemv<T, BB, 32, RB, KU, XT>(row_ptr, nrows, xs, ldx, k_len, sink);
  else if (lanes == 16) gemv<T, BB, 16, RB, KU, XT>(row_ptr, nrows, xs, ldx, k_len, sink);
  else gemv<T, BB, 8, RB, KU, XT>(row_ptr, nrows, xs, ldx, k_len, sink);
}

template <typename T, int BB, int RB, int KU, typename XT, typename RowPtr, typename Sink>
__device__ __forceinline__ void gemv_any(int k_len_hint, RowPtr row_ptr, int nrows, const XT* xs, int ldx,
                                         int k_len, Sink sink) {
  gemv_lanes<T, BB, RB, KU, XT>(lanes_for(k_len_hint), row_ptr, nrows, xs, ldx, k_len, sink);
}

// ------------------------------------------------------------------ tensor-core GEMV over a batch (kMma)
// Batch buckets below this run the CUDA-core GEMV even with kMma: at B = 1-2 an 8-column MMA would be
// 7/8 (3/4) padding, and the FMA GEMV is not issue-bound there.
constexpr int kMmaMinBucket = 4;
// k-steps (cf::mma::kStepK columns each) whose weight loads a lane issues before the first MMA (template
// DEPTH): 2 x 16 B per step, so a warp keeps DEPTH KB in flight. q/k/v rows (hidden-long): 8 steps, 16
// loads per lane, since a CTA's 96-192 rows are only 6-12 tiles and may leave warps idle (the GEMV kept
// 8 loads per lane on all 8 warps); o_proj rows (G*D inputs: 4-16 steps): 4, the GEMV's 8 loads per lane.
constexpr int kMmaLongDepth = 8;
constexpr int kMmaShortDepth = 4;

// Same contract as gemv (rows row_ptr(i), i < nrows, dotted with the BB activation rows xs[b*ldx + k],
// k < k_len; xs holds BB rows, the padding ones zero), on mma.sync m16n8k16: a warp takes a 16-row tile
// (rows g and g+8 in lane group g) and the batch is the N dimension in ceil(BB/8) tiles of 8. When the
// tiles leave warps idle (tiles < kWarps), each tile's k-steps are cut into ks = kWarps/tiles equal
// contiguous parts, one warp each; the parts are handed to the sink in part order, one part per CTA
// barrier round, so the sum order is fixed. sink(i, b, value, part): part 0 comes first for every (i, b).
// All threads of the CTA must call it (the barrier rounds); k_len a multiple of 8 (16-byte vectors).
template <typename T, int BB, int DEPTH, typename XT, typename RowPtr, typename Sink>
__device__ __forceinline__ void gemv_mma(RowPtr row_ptr, int nrows, const XT* xs, int ldx, int k_len, Sink sink) {
  namespace mm = cf::mma;
  constexpr int BT = (BB + mm::kTileCols - 1) / mm::kTileCols;  // N tiles of 8 batch rows
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane / mm::kLanesPerGroup, t = lane % mm::kLanesPerGroup;
  const int tiles = cf::ceil_div(nrows, mm::kTileRows), steps = cf::ceil_div(k_len, mm::kStepK);
  const int ks = tiles == 0 || tiles >= kWarps ? 1 : kWarps / tiles;  // k parts per tile
  const int items = tiles * ks;
  const uint4 zero = make_uint4(0, 0, 0, 0);

  auto tile_sum = [&](int item, float (&acc)[BT][4]) {
    const int tile = item / ks, part = item % ks;
    const int s0 = part * steps / ks, s1 = (part + 1) * steps / ks;
    const XT* xb = xs + static_cast<long long>(g) * ldx + t * mm::kElemsPerLoad;
#pragma unroll
    for (int bt = 0; bt < BT; ++bt) {
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[bt][j] = 0.f;
    }
    mm::tile_accumulate<T, BT, DEPTH>(acc, row_ptr, tile * mm::kTileRows, nrows, s0, s1, k_len,
                                      [&](int k, int s, int bt) -> uint4 {
      const bool in = k < k_len && g + bt * mm::kTileCols < BB;  // zero, never garbage: 0 * NaN
      return in ? mm::load_b8<T>(xb + static_cast<long long>(bt) * mm::kTileCols * ldx + s * mm::kStepK) : zero;
    });
  };
  auto store = [&](int item, const float (&acc)[BT][4]) {
    const int tile = item / ks, part = item % ks;
#pragma unroll
    for (int bt = 0; bt < BT; ++bt) {
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int i = tile * mm::kTileRows + g + (j / 2) * mm::kGroups;
        const int b = bt * mm::kTileCols + 2 * t + j % 2;
        if (i < nrows && b < BB) sink(i, b, acc[bt][j], part);
      }
    }
  };

  if (ks == 1) {  // whole tiles per warp: every (i, b) written once
    for (int item = warp; item < items; item += kWarps) {
      float acc[BT][4];
      tile_sum(item, acc);
      store(item, acc);
    }
    return;
  }
  float acc[BT][4];  // items <= kWarps: at most one per warp
  const bool mine = warp < items;
  if (mine) tile_sum(warp, acc);
  for (int part = 0; part < ks; ++part) {  // parts in order: a fixed sum order
    if (part) __syncthreads();
    if (mine && warp % ks == part) store(warp, acc);
  }
}

// ------------------------------------------------------------------ hand-offs between the phases

// kSplitQkv: publish this CTA's rows [row0, row0+nrows) of every batch row to the KV head's global
// buffer g [B, rows], wait for all `expected` CTAs of the KV head, and copy the whole [B, rows] back
// into shared memory (own rows included: the same bits). Loads are float4 and independent.
// The rows in sq were written by the GEMV's sink, one lane per row, spread over all warps; the threads
// publishing them here are others (thread idx stores float4 idx), so the CTA barrier must come first.
// Without it (attn3: the v4 run 1 failures) a thread copied rows another warp had not finished: the
// shared memory of the previous kernel on that SM went out as q/k/v (relative errors, NaN).
__device__ __forceinline__ void gather_global(float* sq, float* g, int B, int rows, int row0, int nrows,
                                              int* arrive, int* departed, int expected, unsigned long long* tl) {
  __syncthreads();  // every warp's GEMV sums are in sq before any thread publishes them
  const int n4 = nrows / 4;
  for (int idx = threadIdx.x; idx < B * n4; idx += kThreads) {
    const int off = (idx / n4) * rows + row0 + 4 * (idx % n4);
    __stcg(reinterpret_cast<float4*>(g + off), *reinterpret_cast<const float4*>(sq + off));
  }
  stamp(tl, kTlQkvArrive, true);
  arrive_and_wait(arrive, expected);
  stamp(tl, kTlQkvWait);
  const int all4 = B * rows / 4;
  for (int idx = threadIdx.x; idx < all4; idx += kThreads)
    reinterpret_cast<float4*>(sq)[idx] = __ldcg(reinterpret_cast<const float4*>(g) + idx);
  depart(arrive, departed, expected);
}

// out[b, n..n+3] = sum over KV heads (acc) + o_bias + residual, rounded once to the model dtype.
template <typename T>
__device__ __forceinline__ void finish_columns(const Params& p, const T* x, int b, int n, float4 acc) {
  T* out = static_cast<T*>(p.out);
  const long long row = static_cast<long long>(b) * p.hidden;
  float r[4] = {acc.x, acc.y, acc.z, acc.w};
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    if (p.bo != nullptr) r[e] += load_scalar<T>(p.bo, n + e);
    if (p.add_residual) r[e] += cf::to_float(x[row + n + e]);
    out[row + n + e] = cf::from_float<T>(r[e]);
  }
}

__device__ __forceinline__ void add4(float4& a, const float4& v) {
  a.x += v.x; a.y += v.y; a.z += v.z; a.w += v.w;
}

// kWideTail fix-up of columns [n0, n0+ncols) for every batch row: the KVH fp32 partials [KVH, B, H]
// summed in a fixed order. Few columns per CTA leave most threads idle, so the KV heads are split over
// hsplit thread groups (each sums heads hs, hs+hsplit, ... with all loads in flight), then the hsplit
// partial sums are added in hs order through shared memory: one or two load latencies, deterministic.
template <typename T>
__device__ __forceinline__ void fixup_tile(const Params& p, const T* x, const float* opart, int n0, int ncols,
                                           float4* red) {
  const int B = p.batch, H = p.hidden, KVH = p.num_kv_heads;
  const int n4 = ncols / 4, items = B * n4;
  if (items == 0) return;
  const int hsplit = max(1, min(KVH, kThreads / items));
  const long long head_stride = static_cast<long long>(B) * H;
  for (int idx = threadIdx.x; idx < items * hsplit; idx += kThreads) {
    const int item = idx % items, hs = idx / items;
    const int b = item / n4, n = n0 + 4 * (item % n4);
    const float* src = opart + static_cast<long long>(b) * H + n;
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll 8
    for (int h = hs; h < KVH; h += hsplit) add4(acc, __ldcg(reinterpret_cast<const float4*>(src + h * head_stride)));
    if (hsplit == 1) finish_columns<T>(p, x, b, n, acc);
    else red[idx] = acc;
  }
  if (hsplit == 1) return;
  __syncthreads();
  for (int item = threadIdx.x; item < items; item += kThreads) {
    float4 acc = red[item];
    for (int hs = 1; hs < hsplit; ++hs) add4(acc, red[hs * items + item]);
    finish_columns<T>(p, x, item / n4, n0 + 4 * (item % n4), acc);
  }
}

// ------------------------------------------------------------------ phase 4 token chunks

// Tokens [begin, end) of batch row b that this CTA attends: the live range [first True, last True] (or
// [0, pos]) cut into `chunks` equal parts; empty (begin >= end) past the range.
struct TokenChunk {
  int begin, end;
};
__device__ __forceinline__ TokenChunk token_chunk(const int* range, int b, int chunks, int chunk_idx) {
  const int last_live = range[2 * b + 1];
  const int lo_pos = last_live < 0 ? 0 : range[2 * b], hi_pos = last_live + 1;
  const int per_chunk = cf::ceil_div(max(hi_pos - lo_pos, 0), chunks);
  const int cs = lo_pos + chunk_idx * per_chunk;
  return {cs, min(hi_pos, cs + per_chunk)};
}

// ------------------------------------------------------------------ phase 4 token loop

// What one lane's token loop reads (phase 4): its batch row's K/V rows (this lane's 16-byte column slice),
// the new token's K/V in shared memory, the mask row, and its place in the warp.
template <typename T>
struct TokenStream {
  const T *kb, *vb, *knew, *vnew;  // cache rows at token 0 / the new token's row, offset to this lane's vector
  const unsigned char* mrow;       // mask row of the batch row (nullptr: no mask)
  int first, end, stride;          // tokens first, first + stride, ... below end (step starts)
  int pos, D, lanes_per_token, token_slots, slot;
  bool own_row;                    // false: the warp group recomputes row B-1 and attends nothing
};

// The token loop of phase 4, one instantiation per kDeepKv value: kDeep differs only in when the mask bytes
// are tested and in the shuffle loop's form (unrolled, branch-free, same offsets and order), not in any
// arithmetic. A template rather than a generic lambda: NVRTC 13.0 treats a generic lambda's call operator
// as a host function ("host functions are not allowed in JIT mode"); 13.5 accepts it.
template <bool kDeep, typename T, int HG>
__device__ __forceinline__ void attend_tokens(const TokenStream<T>& ts, const float (&q)[HG][kVec],
                                              float (&o)[HG][kVec], float (&m)[HG], float (&l)[HG]) {
  for (int t0 = ts.first; ts.own_row && t0 < ts.end; t0 += ts.stride) {
    uint4 kr[kTokenUnroll<HG>], vr[kTokenUnroll<HG>];
    bool ok[kTokenUnroll<HG>];
    unsigned mk[kTokenUnroll<HG>];  // kDeep: the mask byte (0: masked), tested after every load is issued
#pragma unroll
    for (int u = 0; u < kTokenUnroll<HG>; ++u) {
      // K/V loads do not wait for the mask byte: inside [first, last True] a masked token is loaded
      // and dropped (fully masked tiles outside that range are never read).
      const int j = t0 + u * ts.token_slots + ts.slot;
      const bool in = j < ts.end;
      if constexpr (kDeep) {
        mk[u] = in ? 1u : 0u;
      } else {
        ok[u] = in && (ts.mrow == nullptr || ts.mrow[j] != 0);
      }
      kr[u] = vr[u] = make_uint4(0, 0, 0, 0);
      if (in) {
        const bool cur = j == ts.pos;
        if constexpr (kDeep) {
          if (ts.mrow != nullptr) mk[u] = __ldg(ts.mrow + j);
        }
        kr[u] = *reinterpret_cast<const uint4*>(cur ? ts.knew : ts.kb + static_cast<long long>(j) * ts.D);
        vr[u] = *reinterpret_cast<const uint4*>(cur ? ts.vnew : ts.vb + static_cast<long long>(j) * ts.D);
      }
    }
    if constexpr (kDeep) {
#pragma unroll
      for (int u = 0; u < kTokenUnroll<HG>; ++u) ok[u] = mk[u] != 0u;
    }
    float sc[kTokenUnroll<HG>][HG];
#pragma unroll
    for (int u = 0; u < kTokenUnroll<HG>; ++u) {
      float kf[kVec];
      unpack8<T>(kr[u], kf);
#pragma unroll
      for (int h = 0; h < HG; ++h) {
        float d = 0.f;
#pragma unroll
        for (int e = 0; e < kVec; ++e) d = fmaf(q[h][e], kf[e], d);
        if constexpr (kDeep) {  // unrolled, no branch (same offsets, same order): the tokens' chains interleave
#pragma unroll
          for (int off = 16; off; off >>= 1) {
            const float other = __shfl_xor_sync(0xffffffffu, d, off);
            if (off < ts.lanes_per_token) d += other;
          }
        } else {
          for (int off = ts.lanes_per_token / 2; off; off >>= 1) d += __shfl_xor_sync(0xffffffffu, d, off);
        }
        sc[u][h] = ok[u] ? d : kNegInf;
      }
    }
#pragma unroll
    for (int u = 0; u < kTokenUnroll<HG>; ++u) {
      float vf[kVec];
      unpack8<T>(vr[u], vf);
#pragma unroll
      for (int h = 0; h < HG; ++h) {
        const float mx = fmaxf(m[h], sc[u][h]);
        if (mx == kNegInf) continue;  // nothing live yet for this head in this slot
        const float corr = softmax_rescale(m[h], mx), pr = exp2f(sc[u][h] - mx);
        l[h] = fmaf(l[h], corr, pr);
#pragma unroll
        for (int e = 0; e < kVec; ++e) o[h][e] = fmaf(o[h][e], corr, pr * vf[e]);
        m[h] = mx;
      }
    }
  }
}

// ------------------------------------------------------------------ phase 4 token loop, head lanes (kHeadLanes)

// Lanes per query head and the run of consecutive tokens a warp takes per step, for EL = D * HG / 32 elements of
// q, o, K and V per lane: kU * EL = 32 elements of K and of V (64 bytes each) in flight per lane per step.
template <int HG>
constexpr int kLanesPerHead = 32 / HG;
template <int EL>
constexpr int kHeadLaneRun = EL >= 32 ? 1 : 32 / EL;

// The token loop of phase 4 with lanes = (query head h, slice `part` of D): lane h * kLph + part holds head g0 + h's
// scaled q and its o on dims (part + c * kLph) * kVec + i (c < EL / kVec, i < kVec: each 16-byte load of a slice's
// kLph lanes is one contiguous run of the row). All lanes attend the same token at a time. Tokens first, first +
// 1, ... of each run of kU, runs `stride` apart, below end; the new token (pos) from shared memory (rounded
// k/v); masked tokens are loaded and dropped as in attend_tokens. Writes the warp's (o, m, l) per head into w
// ([HG][D + 2]: o, then m at D and l at D + 1), the layout the CTA merge reads, for heads < `heads`.
template <typename T, int HG, int EL>
__device__ __forceinline__ void attend_heads(const float* q_src, const T* kb, const T* vb, const T* knew,
                                             const T* vnew, const unsigned char* mrow, int first, int end,
                                             int stride, long long pos, int D, bool own_row, int heads, float* w) {
  constexpr int kLph = kLanesPerHead<HG>, kChunks = EL / kVec, kU = kHeadLaneRun<EL>;
  static_assert(kChunks * kVec == EL && kLph * HG == 32, "head lanes: EL a multiple of 8, HG divides 32");
  // The lane index read by a volatile mov (%laneid == threadIdx.x & 31: one-dimensional CTAs), so the compiler
  // cannot hoist the lane's q/K/V/w offsets out of phase 4's row and head loops, where they stayed live through
  // the token-slot loop of the same build (the fp16 bucket-4 8-heads-per-pass build spilled 16 B under NVRTC
  // 13.5 with threadIdx.x & 31). Index arithmetic only: the float operations and their order are unchanged.
  unsigned lane_id;
  asm volatile("mov.u32 %0, %%laneid;" : "=r"(lane_id));
  const int lane = static_cast<int>(lane_id), h = lane / kLph, part = lane % kLph;
  float q[EL], o[EL], m = kNegInf, l = 0.f;
#pragma unroll
  for (int c = 0; c < kChunks; ++c) {
#pragma unroll
    for (int i = 0; i < kVec; ++i) {
      q[c * kVec + i] = h < heads ? q_src[h * D + (part + c * kLph) * kVec + i] : 0.f;
      o[c * kVec + i] = 0.f;
    }
  }
  for (int t0 = first; own_row && t0 < end; t0 += stride) {
    uint4 kr[kU][kChunks], vr[kU][kChunks];
    unsigned mk[kU];
#pragma unroll
    for (int u = 0; u < kU; ++u) {  // every load of the run in flight before the first use
      const int j = t0 + u;
      const bool in = j < end;
      mk[u] = in ? 1u : 0u;
      const T* kt = j == pos ? knew : kb + static_cast<long long>(j) * D;
      const T* vt = j == pos ? vnew : vb + static_cast<long long>(j) * D;
#pragma unroll
      for (int c = 0; c < kChunks; ++c) {
        kr[u][c] = vr[u][c] = make_uint4(0, 0, 0, 0);
        if (in) {
          kr[u][c] = *reinterpret_cast<const uint4*>(kt + (part + c * kLph) * kVec);
          vr[u][c] = *reinterpret_cast<const uint4*>(vt + (part + c * kLph) * kVec);
        }
      }
      if (in && mrow != nullptr) mk[u] = __ldg(mrow + j);
    }
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      float d = 0.f;
#pragma unroll
      for (int c = 0; c < kChunks; ++c) {
        float kf[kVec];
        unpack8<T>(kr[u][c], kf);
#pragma unroll
        for (int i = 0; i < kVec; ++i) d = fmaf(q[c * kVec + i], kf[i], d);
      }
#pragma unroll
      for (int off = kLph / 2; off; off >>= 1) d += __shfl_xor_sync(0xffffffffu, d, off);
      const float sc = mk[u] != 0u ? d : kNegInf;
      const float mx = fmaxf(m, sc);
      if (mx == kNegInf) continue;  // nothing live yet
      const float corr = softmax_rescale(m, mx), pr = exp2f(sc - mx);
      l = fmaf(l, corr, pr);
#pragma unroll
      for (int c = 0; c < kChunks; ++c) {
        float vf[kVec];
        unpack8<T>(vr[u][c], vf);
#pragma unroll
        for (int i = 0; i < kVec; ++i) o[c * kVec + i] = fmaf(o[c * kVec + i], corr, pr * vf[i]);
      }
      m = mx;
    }
  }
  if (h < heads) {
    float* wh = w + h * (D + 2);
#pragma unroll
    for (int c = 0; c < kChunks; ++c) {
#pragma unroll
      for (int i = 0; i < kVec; ++i) wh[(part + c * kLph) * kVec + i] = o[c * kVec + i];
    }
    if (part == 0) {
      wh[D] = m;
      wh[D + 1] = l;
    }
  }
}

// ------------------------------------------------------------------ phase 5 split merge
// Merge the n <= kN partials of one (KV head, rank) -- slots slot0 .. slot0 + n - 1 of p.attn_partial, each
// [B*G][D + 2] (o, then m at D and l at D + 1), written by other CTAs this launch, so read through L2 only --
// into attn_out ([B, qkv_rows] rows, head h at columns h*D), in runs of kMergeRun elements with kItems runs'
// loads in flight per thread (one run at a time spent 16 us of Llama-3-8B's batch-16 step in round 14). Per
// element the operations and their order are the one-run loop's: M over the partials in order, then L and O
// accumulated in order (slots beyond n add exact zeros, so kN and kItems change nothing but the sign of an
// all-zero sum). Addresses come from p, not from pointers held across the merge (registers are at the limit).
template <int kN, int kItems>
__device__ __forceinline__ void merge_split_runs(const Params& p, int slot0, int n, int items, int bgs, int D, int G,
                                                 int qkv_rows, float* attn_out) {
  const int runs = D / kMergeRun;
  const long long slot_elems = static_cast<long long>(bgs) * (D + 2);
  for (int first = threadIdx.x; first < items; first += kThreads * kItems) {
    float2 ml[kItems][kN], po[kItems][kN][kMergePairs];
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      const int item = first + i * kThreads, bg = item / runs, d0 = (item % runs) * kMergeRun;
#pragma unroll
      for (int c = 0; c < kN; ++c) {
        ml[i][c] = make_float2(kNegInf, 0.f);
#pragma unroll
        for (int e = 0; e < kMergePairs; ++e) po[i][c][e] = make_float2(0.f, 0.f);
        if (item < items && c < n) {
          const float2* src =
              reinterpret_cast<const float2*>(p.attn_partial + (slot0 + c) * slot_elems + bg * (D + 2));
          ml[i][c] = __ldcg(src + D / 2);
#pragma unroll
          for (int e = 0; e < kMergePairs; ++e) po[i][c][e] = __ldcg(src + d0 / 2 + e);
        }
      }
    }
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      const int item = first + i * kThreads, bg = item / runs, d0 = (item % runs) * kMergeRun;
      if (item >= items) break;
      float M = kNegInf;
#pragma unroll
      for (int c = 0; c < kN; ++c) M = fmaxf(M, ml[i][c].x);
      float L = 0.f;
      float2 O[kMergePairs];
#pragma unroll
      for (int e = 0; e < kMergePairs; ++e) O[e] = make_float2(0.f, 0.f);
#pragma unroll
      for (int c = 0; c < kN; ++c) {
        const float w = softmax_rescale(ml[i][c].x, M);
        L += ml[i][c].y * w;
#pragma unroll
        for (int e = 0; e < kMergePairs; ++e) {
          O[e].x += po[i][c][e].x * w;
          O[e].y += po[i][c][e].y * w;
        }
      }
      float* dst = attn_out + (bg / G) * qkv_rows + (bg % G) * D + d0;
#pragma unroll
      for (int e = 0; e < kMergePairs; ++e) {
        dst[2 * e] = O[e].x / L;
        dst[2 * e + 1] = O[e].y / L;
      }
    }
  }
}

// ------------------------------------------------------------------ the kernel

template <typename T, int BB, int HG>
__device__ __forceinline__ void attention_decode_body(const Params& p, unsigned char* smem_raw) {
  cg::cluster_group cluster = cg::this_cluster();
  const int C = static_cast<int>(cluster.num_blocks());
  const int rank = static_cast<int>(cluster.block_rank());
  const int P = gridDim.y, part_idx = blockIdx.y, kvh = blockIdx.z;
  const int B = p.batch, H = p.hidden, D = p.head_dim, KVH = p.num_kv_heads;
  const int G = p.num_heads / KVH;
  const int QKV_ROWS = (G + 2) * D, GD = G * D;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  unsigned long long* const tl = timeline_row(p.o_partial, KVH, B, H);  // nullptr without CF_ATTN_TIMELINE
  stamp(tl, kTlStart);
  Smem s = plan_smem<T, BB, HG>(smem_raw, B, G, D, p.k_chunk);
  if (P > kMaxSplit || C > kMaxCluster || p.rows_parallel < 1 || kWarps % p.rows_parallel) __trap();  // the launcher's split exceeds the register merges
  if (tid == 0 && dynamic_smem_size() < static_cast<unsigned>((reinterpret_cast<unsigned char*>(s.flag) + 16) - smem_raw))
    __trap();  // the launcher's shared-memory plan disagrees with this one
  const long long pos = *p.cache_position;
  const T* x = static_cast<const T*>(p.x);

  const bool wide_tail = (p.variant & kWideTail) != 0;
  const bool split_qkv = (p.variant & kSplitQkv) != 0 && P > 1;
  const bool use_mma = (p.variant & kMma) != 0;  // acted on for BB >= kMmaMinBucket only
  const bool deep_kv = (p.variant & kDeepKv) != 0;
  // kHeadLanes: the GQA builds (several heads per pass) of batch buckets 1 and 2 have the head-lane token loop
  // (attention.keeps_head_lanes). From bucket 4 on, a row has 2 warps or fewer, so each warp walks 2-4x the
  // tokens, and there the token-slot loop's deeper K/V stream wins more often than not (round 25, bf16: head
  // lanes at bucket 4/8/16 lost 2-36 us on 8 of 12 rows, Llama-3.2-1B at every batch; at bucket 2 they won 5 of
  // 6 rows, -0.2..-5.1 us)
  constexpr bool kHeadLanesBuild = BB <= 2 && HG >= 4;
  const bool head_lanes = kHeadLanesBuild && (p.variant & kHeadLanes) != 0 && (D == 64 || D == 128);
  const Counters ctr = counters(p.arrivals, KVH, C, P);

  // Output column slice of this CTA (o_proj and the final fix-up): one of C per KV head, done by the last
  // of its P clusters (version 3), or one of P*C, every CTA doing one (kWideTail).
  const int slices = wide_tail ? P * C : C, slice = wide_tail ? part_idx * C + rank : rank;
  const int HC = cf::ceil_div(cf::ceil_div(H, slices), 4) * 4;  // multiple of 4: float4 fix-up
  const int col0 = min(H, slice * HC), ncols = min(H, col0 + HC) - col0;
  const long long wo_ld = static_cast<long long>(p.num_heads) * D;  // o_proj row stride (elements)
  for (int idx = B * QKV_ROWS + tid; idx < BB * QKV_ROWS; idx += kThreads) s.qkv[idx] = 0.f;  // bucket padding

  // ---- 1. live ranges [first True, last True] of the mask rows (all threads, 16-byte chunks, shared-memory
  //         integer min/max: order-independent), and the RMS of every row (warp w takes rows w, w+kWarps, ...)
  for (int b = tid; b < B; b += kThreads) {
    s.range[2 * b] = p.mask != nullptr ? 0x7fffffff : 0;
    s.range[2 * b + 1] = p.mask != nullptr ? -1 : static_cast<int>(min(pos, static_cast<long long>(p.max_cache_len - 1)));
  }
  __syncthreads();
  if (p.mask != nullptr) {
    const int L = p.max_cache_len, chunks = cf::ceil_div(L, kMaskChunk);
    const bool vec = ((reinterpret_cast<unsigned long long>(p.mask) | static_cast<unsigned long long>(p.mask_stride) |
                       static_cast<unsigned long long>(L)) % kMaskChunk) == 0;
    for (int idx = tid; idx < B * chunks; idx += kThreads) {
      const int b = idx / chunks, j0 = (idx % chunks) * kMaskChunk;
      const unsigned char* row = p.mask + b * p.mask_stride;
      int first, last;
      cf::mask_chunk_bounds(row, j0, L, vec, first, last);
      if (last >= 0) {
        atomicMin(&s.range[2 * b], first);
        atomicMax(&s.range[2 * b + 1], last);
      }
    }
  }
  for (int b = warp; b < B; b += kWarps) {
    float ss = 0.f;
    for (int k = lane * kVec; k < H; k += 32 * kVec) {
      float f[kVec];
      unpack8<T>(*reinterpret_cast<const uint4*>(x + static_cast<long long>(b) * H + k), f);
#pragma unroll
      for (int e = 0; e < kVec; ++e) ss = fmaf(f[e], f[e], ss);
    }
    ss = warp_sum(ss);
    if (lane == 0) s.rstd[b] = rsqrtf(ss / H + p.eps);
  }
  stamp(tl, kTlNorm, true);
  if (p.stop_after == 1) return;

  // ---- 2. q/k/v rows [row0, row0+nrows) of this rank (of this CTA among the P*C of the KV head with
  //         kSplitQkv), K-chunked over the staged normalised x
  const int row_parts = split_qkv ? P * C : C, row_part = split_qkv ? part_idx * C + rank : rank;
  const int RC = cf::ceil_div(cf::ceil_div(QKV_ROWS, row_parts), 4) * 4;  // multiple of 4: float4 gather
  const int row0 = min(QKV_ROWS, row_part * RC), nrows = min(QKV_ROWS, row0 + RC) - row0;
  T* xs = reinterpret_cast<T*>(s.stage);
  const int KC = p.k_chunk;
  const T* wq = static_cast<const T*>(p.wq) + static_cast<long long>(kvh) * GD * H;
  const T* wk = static_cast<const T*>(p.wk) + static_cast<long long>(kvh) * D * H;
  const T* wv = static_cast<const T*>(p.wv) + static_cast<long long>(kvh) * D * H;
  for (int k0 = 0; k0 < H; k0 += KC) {
    const int kc = min(KC, H - k0);
    __syncthreads();  // rstd ready (first chunk) / previous chunk consumed
    const int vecs = kc / kVec;
    for (int idx = tid; idx < BB * vecs; idx += kThreads) {
      const int b = idx / vecs, k = k0 + (idx % vecs) * kVec;
      float n[kVec];
      if (b < B) {
        float xf[kVec], wf[kVec];
        unpack8<T>(*reinterpret_cast<const uint4*>(x + static_cast<long long>(b) * H + k), xf);
        unpack8<T>(*reinterpret_cast<const uint4*>(static_cast<const T*>(p.norm_w) + k), wf);
        const float r = s.rstd[b];
#pragma unroll
        for (int e = 0; e < kVec; ++e) n[e] = (p.unit_offset ? 1.f + wf[e] : wf[e]) * (xf[e] * r);
      } else {
#pragma unroll
        for (int e = 0; e < kVec; ++e) n[e] = 0.f;  // padding rows of the batch bucket
      }
      cf::store_vec_f32<T>(xs + b * KC + (k - k0), n);
    }
    __syncthreads();
    const bool first_chunk = k0 == 0;
    auto qkv_row = [&](int i) -> const T* {
      const int r = row0 + i;
      const T* base = r < GD ? wq + static_cast<long long>(r) * H
                             : (r < GD + D ? wk + static_cast<long long>(r - GD) * H
                                           : wv + static_cast<long long>(r - GD - D) * H);
      return base + k0;
    };
    if constexpr (BB >= kMmaMinBucket) {
      if (use_mma) {
        gemv_mma<T, BB, kMmaLongDepth>(qkv_row, nrows, xs, KC, kc, [&](int i, int b, float v, int part) {
          if (b < B) {
            float* dst = s.qkv + b * QKV_ROWS + row0 + i;
            *dst = first_chunk && part == 0 ? v : *dst + v;
          }
        });
        continue;
      }
    }
    gemv_any<T, BB, kLongRows<BB>, kLongSteps>(kc, qkv_row, nrows, xs, KC, kc, [&](int i, int b, float v) {
      if (b < B) {
        float* dst = s.qkv + b * QKV_ROWS + row0 + i;
        *dst = first_chunk ? v : *dst + v;
      }
    });
  }

  if (p.prefetch) {  // o_proj weights into L2 while the gather, syncs and attention leave HBM idle
    const T* wo = static_cast<const T*>(p.wo);
    const int lines_per_row = cf::ceil_div(GD * static_cast<int>(sizeof(T)), 128);
    for (int idx = tid; idx < ncols * lines_per_row; idx += kThreads) {
      const int n = idx / lines_per_row, l = idx % lines_per_row;
      prefetch_l2(reinterpret_cast<const char*>(wo + static_cast<long long>(col0 + n) * p.num_heads * D + kvh * GD) +
                  l * 128);
    }
  }

  stamp(tl, kTlQkv, true);
  if (p.stop_after == 2) return;

  // ---- 3. Gather of the fp32 projections (ClusterGather over DSMEM, or through global memory from all
  //         P*C CTAs of the KV head with kSplitQkv), then bias / q,k-norm / RoPE in every CTA
  if (split_qkv) {
    gather_global(s.qkv, p.qkv_global + static_cast<long long>(kvh) * B * QKV_ROWS, B, QKV_ROWS, row0, nrows,
                  ctr.qkv_arrive + kvh, ctr.qkv_depart + kvh, P * C, tl);
  } else {
    stamp(tl, kTlQkvArrive);
    cluster.sync();
    stamp(tl, kTlQkvWait);
    for (int c = 0; c < C; ++c) {
      if (c == rank) continue;
      const int r0 = min(QKV_ROWS, c * RC), r1 = min(QKV_ROWS, r0 + RC);
      const int n4 = (r1 - r0) / 4;
      const float* peer = cluster.map_shared_rank(s.qkv, c);
      for (int idx = tid; idx < B * n4; idx += kThreads) {
        const int b = idx / n4, v = idx % n4;
        const int off = b * QKV_ROWS + r0 + 4 * v;
        *reinterpret_cast<float4*>(s.qkv + off) = *reinterpret_cast<const float4*>(peer + off);
      }
    }
    cluster.sync();  // peers finished reading our rows before they are rewritten in place
  }

  const bool writer = rank == 0 && part_idx == 0;
  const float q_scale = p.scale * kLog2e;
  const int half = D / 2, pairs_per_lane = half / 32;
  for (int job = warp; job < B * (G + 2); job += kWarps) {
    const int b = job / (G + 2), hh = job % (G + 2);  // hh < G: q head; G: k; G+1: v
    float* t = s.qkv + b * QKV_ROWS + hh * D;
    const void* bias = hh < G ? p.bq : (hh == G ? p.bk : p.bv);
    const long long bias0 = hh < G ? static_cast<long long>(kvh) * GD + hh * D : static_cast<long long>(kvh) * D;
    float lo[kMaxPairsPerLane], hi[kMaxPairsPerLane];
    float ss = 0.f;
#pragma unroll
    for (int j = 0; j < kMaxPairsPerLane; ++j) {
      if (j < pairs_per_lane) {
        const int i = lane + 32 * j;
        lo[j] = t[i];
        hi[j] = t[i + half];
        if (bias != nullptr) {
          lo[j] += load_scalar<T>(bias, bias0 + i);
          hi[j] += load_scalar<T>(bias, bias0 + i + half);
        }
        ss += lo[j] * lo[j] + hi[j] * hi[j];
      }
    }
    if (hh <= G) {  // q and k: optional per-head RMSNorm, then RoPE
      const void* nw = hh < G ? p.q_norm_w : p.k_norm_w;
      float r = 1.f;
      if (nw != nullptr) r = rsqrtf(warp_sum(ss) / D + p.qk_eps);
      const long long cb = static_cast<long long>(b) * p.cos_stride;
#pragma unroll
      for (int j = 0; j < kMaxPairsPerLane; ++j) {
        if (j < pairs_per_lane) {
          const int i = lane + 32 * j;
          float a = lo[j], c = hi[j];
          if (nw != nullptr) {
            a *= r * load_scalar<T>(nw, i);
            c *= r * load_scalar<T>(nw, i + half);
          }
          lo[j] = a * load_table(p.cos, p.cos_kind, cb + i) - c * load_table(p.sin, p.cos_kind, cb + i);
          hi[j] = c * load_table(p.cos, p.cos_kind, cb + i + half) + a * load_table(p.sin, p.cos_kind, cb + i + half);
        }
      }
    }
#pragma unroll
    for (int j = 0; j < kMaxPairsPerLane; ++j) {
      if (j < pairs_per_lane) {
        const int i = lane + 32 * j;
        if (hh < G) {
          t[i] = lo[j] * q_scale;
          t[i + half] = hi[j] * q_scale;
        } else {  // k or v: rounded once to the model dtype; that value is cached and attended
          const T a = cf::from_float<T>(lo[j]), c = cf::from_float<T>(hi[j]);
          T* snew = static_cast<T*>(hh == G ? s.knew : s.vnew) + b * D;
          snew[i] = a;
          snew[i + half] = c;
          if (writer && pos >= 0 && pos < p.max_cache_len) {
            T* cache = static_cast<T*>(hh == G ? p.k_cache : p.v_cache) +
                       ((static_cast<long long>(b) * KVH + kvh) * p.max_cache_len + pos) * D;
            cache[i] = a;
            cache[i + half] = c;
          }
        }
      }
    }
  }
  __syncthreads();
  if (p.stop_after == 3) return;

  stamp(tl, kTlRope, true);

  // ---- 4. attention over this CTA's token chunk, per batch row and group of HG query heads
  const int lanes_per_token = D / kVec;          // one 16-byte vector of K/V per lane
  const int token_slots = 32 / lanes_per_token;  // tokens a warp reads side by side
  const int slot = lane / lanes_per_token, dl = lane % lanes_per_token;
  const int step_tokens = token_slots * kTokenUnroll<HG>;
  const int chunks = P * C, chunk_idx = part_idx * C + rank;
  const T* kc_base = static_cast<const T*>(p.k_cache);
  const T* vc_base = static_cast<const T*>(p.v_cache);
  // R batch rows in parallel (launcher: the largest power of two <= min(B, kWarps)): warp group
  // grp = warp / (kWarps/R) takes row b0 + grp and splits its tokens over its kWarps/R warps, so a large
  // batch does not walk its rows one after another.
  const int R = p.rows_parallel, warps_per_row = kWarps / R;
  const int row_grp = warp / warps_per_row, wig = warp % warps_per_row;
  // kKvRing: the ring region after the plan, if the launcher sized shared memory for it (uniform per CTA)
  unsigned char* const ring_base =
      smem_raw + ((reinterpret_cast<unsigned char*>(s.flag) + 16 - smem_raw + 127) & ~127);
  const int ring_tokens = kWarps * step_tokens;  // tokens per stage: one step block per warp
  const int ring_stages = min(kRingMaxStages, kRingDataBytes / (2 * ring_tokens * D * static_cast<int>(sizeof(T))));
  // one query head per K/V head (MHA) only: there phase 4 is bound by its K/V loads; with G >= 4 heads per pass
  // it is not (round 10: Llama-3-8B 4096 74.3 -> 74.8 us, Qwen2.5-0.5B 32.3 -> 34.4), so the other builds
  // compile without the ring path. Bucket 16's plan leaves no room for two stages (Llama-2-7B: 168 KB + 128 KB).
  // Bucket 4 keeps its register path: built without the ring it already streams K/V at the ring's rate, and
  // the ring path in the build slows the rest (round 20, Llama-2-7B bf16 B=4 4096: 178.6 us without, 186.6 with).
  constexpr bool kRingBuild = (BB == 1 || BB == 2 || BB == 8) && HG == 1;
  const int row_tokens = warps_per_row * step_tokens;  // tokens of one row group's sub-block of a stage
  const bool kv_ring = kRingBuild && (p.variant & kKvRing) != 0 && (BB != 1 || R == 1) && ring_stages >= 2 &&
                       dynamic_smem_size() >= static_cast<unsigned>(ring_base + kRingBytes - smem_raw);
  unsigned long long* const ring_bar = reinterpret_cast<unsigned long long*>(ring_base);
  T* const ring_data = reinterpret_cast<T*>(ring_base + kRingBarrierBytes);
  unsigned ring_seq = 0;  // stages used so far (stage = seq % ring_stages, parity = seq / ring_stages & 1)
  if (kv_ring) {
    if (tid == 0) {
      // one issuer per row group arrives on each stage
      for (int st = 0; st < ring_stages; ++st) cf::pipe::mbarrier_init(ring_bar + st, BB == 1 ? 1 : R);
      cf::pipe::fence_barrier_init();
    }
    __syncthreads();
  }
  for (int b0 = 0; b0 < B; b0 += R) {
    const int b = min(b0 + row_grp, B - 1);  // groups past the batch recompute row B-1 and drop it
    const bool own_row = b0 + row_grp < B;
    const TokenChunk tc = token_chunk(s.range, b, chunks, chunk_idx);
    const int cs = tc.begin, ce = tc.end;
    const long long head_base = (static_cast<long long>(b) * KVH + kvh) * p.max_cache_len;
    const T* kb = kc_base + head_base * D + dl * kVec;
    const T* vb = vc_base + head_base * D + dl * kVec;
    const T* knew = static_cast<const T*>(s.knew) + b * D + dl * kVec;
    const T* vnew = static_cast<const T*>(s.vnew) + b * D + dl * kVec;
    const unsigned char* mrow = p.mask != nullptr ? p.mask + b * p.mask_stride : nullptr;
    for (int g0 = 0; g0 < G; g0 += HG) {
      bool attended = false;  // by the head-lane loop (kHeadLanes); else by the token-slot loop below
      if constexpr (kHeadLanesBuild) {
        if (head_lanes) {
          const float* q_src = s.qkv + b * QKV_ROWS + g0 * D;
          const T* krow = kc_base + head_base * D;
          const T* vrow = vc_base + head_base * D;
          const T* kn = static_cast<const T*>(s.knew) + b * D;
          const T* vn = static_cast<const T*>(s.vnew) + b * D;
          constexpr int kRun64 = kHeadLaneRun<64 * HG / 32>, kRun128 = kHeadLaneRun<128 * HG / 32>;
          const int run = D == 64 ? kRun64 : kRun128;
          const int first = cs + wig * run, stride = warps_per_row * run;
          float* w = s.wscratch + warp * HG * (D + 2);
          const int heads = min(HG, G - g0);
          if (D == 64) {
            attend_heads<T, HG, 64 * HG / 32>(q_src, krow, vrow, kn, vn, mrow, first, ce, stride, pos, D, own_row,
                                              heads, w);
          } else {
            attend_heads<T, HG, 128 * HG / 32>(q_src, krow, vrow, kn, vn, mrow, first, ce, stride, pos, D, own_row,
                                               heads, w);
          }
          attended = true;
        }
      }
      if (!attended) {
        float q[HG][kVec], o[HG][kVec], m[HG], l[HG];
#pragma unroll
        for (int h = 0; h < HG; ++h) {
          m[h] = kNegInf;
          l[h] = 0.f;
#pragma unroll
          for (int e = 0; e < kVec; ++e) {
            o[h][e] = 0.f;
            q[h][e] = g0 + h < G ? s.qkv[b * QKV_ROWS + (g0 + h) * D + dl * kVec + e] : 0.f;
          }
        }
        TokenStream<T> ts;
        ts.kb = kb;
        ts.vb = vb;
        ts.knew = knew;
        ts.vnew = vnew;
        ts.mrow = mrow;
        ts.first = cs + wig * step_tokens;
        ts.end = ce;
        ts.stride = warps_per_row * step_tokens;
        ts.pos = pos;
        ts.D = D;
        ts.lanes_per_token = lanes_per_token;
        ts.token_slots = token_slots;
        ts.slot = slot;
        ts.own_row = own_row;
        if (kRingBuild && kv_ring) {
          // Stream each row group's [cs, ce) through the ring: block i of row group r = its tokens
          // [cs + i*sub_tokens, +sub_tokens), sub-block r of stage (ring_seq + i) % ring_stages; warp wig of the
          // group takes step block wig of its sub-block. Every warp walks the most blocks of any row of the pass
          // (the per-stage CTA barrier); a shorter row's warps attend nothing there. Batch bucket 1 (one row, the
          // whole stage) keeps round 16's issue: thread 0 copies from [cs, ce) directly -- a form that folds R = 1
          // into the general one compiled to other SASS there and ran 3.5 us slower at Llama-2-7B 4096 (round 20).
          // Otherwise lane r of warp 0 issues row group r's copies (the R issuers in parallel, each arriving once
          // on the stage's barrier of count R, with its own byte count).
          constexpr bool kOneRow = BB == 1;
          const int sub_tokens = kOneRow ? ring_tokens : row_tokens;
          int blocks = 0;
          TokenChunk ic{0, 0};  // the issuer's row's chunk (none past the batch: it arrives with no bytes)
          if constexpr (kOneRow) {
            blocks = cf::ceil_div(max(ce - cs, 0), ring_tokens);
          } else {
            for (int r = 0; r < R && b0 + r < B; ++r) {
              const TokenChunk rc = token_chunk(s.range, b0 + r, chunks, chunk_idx);
              blocks = max(blocks, cf::ceil_div(max(rc.end - rc.begin, 0), row_tokens));
            }
            if (warp == 0 && lane < R && b0 + lane < B) ic = token_chunk(s.range, b0 + lane, chunks, chunk_idx);
          }
          const bool issuer = kOneRow ? tid == 0 : warp == 0 && lane < R;
          auto issue = [&](int i) {
            const unsigned st = (ring_seq + i) % ring_stages;
            if constexpr (kOneRow) {
              const int t_first = cs + i * ring_tokens, n = min(ring_tokens, ce - t_first);
              const unsigned bytes = static_cast<unsigned>(n * D) * sizeof(T);
              T* k_dst = ring_data + static_cast<size_t>(st) * 2 * ring_tokens * D;
              cf::pipe::arrive_expect_tx(ring_bar + st, 2 * bytes);
              const T* k_row = kc_base + head_base * D;
              const T* v_row = vc_base + head_base * D;
              cf::pipe::bulk_load(k_dst, k_row + static_cast<long long>(t_first) * D, bytes, ring_bar + st);
              cf::pipe::bulk_load(k_dst + ring_tokens * D, v_row + static_cast<long long>(t_first) * D, bytes,
                                  ring_bar + st);
            } else {
              const int t_first = ic.begin + i * row_tokens, n = max(min(row_tokens, ic.end - t_first), 0);
              const unsigned bytes = static_cast<unsigned>(n * D) * sizeof(T);
              cf::pipe::arrive_expect_tx(ring_bar + st, 2 * bytes);
              if (n == 0) return;
              const long long row_base =
                  ((static_cast<long long>(b0 + lane) * KVH + kvh) * p.max_cache_len + t_first) * D;
              T* k_dst =
                  ring_data + (static_cast<size_t>(st) * 2 * ring_tokens + static_cast<size_t>(lane) * row_tokens) * D;
              cf::pipe::bulk_load(k_dst, kc_base + row_base, bytes, ring_bar + st);
              cf::pipe::bulk_load(k_dst + ring_tokens * D, vc_base + row_base, bytes, ring_bar + st);
            }
          };
          if (issuer) {
            for (int i = 0; i < min(blocks, ring_stages); ++i) issue(i);
          }
          for (int i = 0; i < blocks; ++i) {
            const unsigned seq = ring_seq + i, st = seq % ring_stages;
            const int t_first = cs + i * sub_tokens;
            cf::pipe::wait_parity(ring_bar + st, (seq / ring_stages) & 1u);
            const T* k_stage = ring_data + static_cast<size_t>(st) * 2 * ring_tokens * D +
                               (kOneRow ? 0 : static_cast<size_t>(row_grp) * row_tokens * D);
            ts.kb = k_stage - static_cast<long long>(t_first) * D + dl * kVec;  // indexed by absolute token j
            ts.vb = k_stage + ring_tokens * D - static_cast<long long>(t_first) * D + dl * kVec;
            ts.first = t_first + wig * step_tokens;
            ts.end = min(ce, t_first + sub_tokens);
            if (deep_kv) attend_tokens<true>(ts, q, o, m, l);
            else attend_tokens<false>(ts, q, o, m, l);
            __syncthreads();  // every warp is done with the stage before it is refilled
            if (issuer && i + ring_stages < blocks) issue(i + ring_stages);
          }
          ring_seq += blocks;
        } else if (deep_kv) {
          attend_tokens<true>(ts, q, o, m, l);
        } else {
          attend_tokens<false>(ts, q, o, m, l);
        }
        merge_token_slots<HG, kVec>(m, l, o, lanes_per_token);  // slot 0 keeps the warp's result
        if (slot == 0) {
#pragma unroll
          for (int h = 0; h < HG; ++h) {
            float* w = s.wscratch + (warp * HG + h) * (D + 2);
#pragma unroll
            for (int e = 0; e < kVec; ++e) w[dl * kVec + e] = o[h][e];
            if (dl == 0) {
              w[D] = m[h];
              w[D + 1] = l[h];
            }
          }
        }
      }
      __syncthreads();
      const int heads = min(HG, G - g0);
      for (int idx = tid; idx < R * heads * D; idx += kThreads) {  // each row's warps merged in warp order
        const int r = idx / (heads * D), h = (idx / D) % heads, d = idx % D;
        if (b0 + r >= B) continue;
        const int w0 = r * warps_per_row;
        float M = kNegInf;
        for (int w = w0; w < w0 + warps_per_row; ++w) M = fmaxf(M, s.wscratch[(w * HG + h) * (D + 2) + D]);
        float L = 0.f, O = 0.f;
        for (int w = w0; w < w0 + warps_per_row; ++w) {
          const float* src = s.wscratch + (w * HG + h) * (D + 2);
          const float c = softmax_rescale(src[D], M);
          L += src[D + 1] * c;
          O += src[d] * c;
        }
        float* dst = s.part + ((b0 + r) * G + g0 + h) * (D + 2);
        dst[d] = O;
        if (d == 0) {
          dst[D] = M;
          dst[D + 1] = L;
        }
      }
      __syncthreads();
    }
  }

  stamp(tl, kTlAttn);  // the loop above ends on a CTA barrier
  if (p.stop_after == 4) return;

  // ---- 5. cluster merge in rank order (same bits in every CTA); attention output into s.qkv's q rows
  cluster.sync();
  stamp(tl, kTlAttnSync);
  float* attn_out = s.qkv;  // [B, QKV_ROWS] layout, columns [0, G*D)
  // A work item is a run of kMergeRun consecutive d of one (row, head): each partial's (m, l) is loaded once
  // per item and its o values as float2 (a per-element loop loaded m and l D times over: at batch 16 the
  // cluster merge and the split merge were 16 and 36 us of Llama-3-8B's 216, round 13). Per element the
  // arithmetic and its order are those of the per-element loop, so the result is bitwise the same.
  const int runs = D / kMergeRun, items = B * G * runs;
  for (int item = tid; item < items; item += kThreads) {
    const int bg = item / runs, d0 = (item % runs) * kMergeRun;
    float2 ml[kMaxCluster], po[kMaxCluster][kMergePairs];  // every peer's loads issued before any use
#pragma unroll
    for (int c = 0; c < kMaxCluster; ++c) {
      ml[c] = make_float2(kNegInf, 0.f);
#pragma unroll
      for (int e = 0; e < kMergePairs; ++e) po[c][e] = make_float2(0.f, 0.f);
      if (c < C) {
        const float* src = cluster.map_shared_rank(s.part, c) + bg * (D + 2);
        ml[c] = *reinterpret_cast<const float2*>(src + D);
#pragma unroll
        for (int e = 0; e < kMergePairs; ++e) po[c][e] = *reinterpret_cast<const float2*>(src + d0 + 2 * e);
      }
    }
    float M = kNegInf;
#pragma unroll
    for (int c = 0; c < kMaxCluster; ++c) M = fmaxf(M, ml[c].x);
    float L = 0.f, O[kMergeRun];
#pragma unroll
    for (int e = 0; e < kMergeRun; ++e) O[e] = 0.f;
#pragma unroll
    for (int c = 0; c < kMaxCluster; ++c) {
      const float w = softmax_rescale(ml[c].x, M);
      L += ml[c].y * w;
#pragma unroll
      for (int e = 0; e < kMergePairs; ++e) {
        O[2 * e] += po[c][e].x * w;
        O[2 * e + 1] += po[c][e].y * w;
      }
    }
    if (P == 1) {
      float* dst = attn_out + (bg / G) * QKV_ROWS + (bg % G) * D + d0;
#pragma unroll
      for (int e = 0; e < kMergeRun; ++e) dst[e] = O[e] / L;
    } else {
      float* gpart = p.attn_partial + ((static_cast<long long>(kvh) * C + rank) * P + part_idx) * B * G * (D + 2) +
                     bg * (D + 2);
#pragma unroll
      for (int e = 0; e < kMergePairs; ++e)
        *reinterpret_cast<float2*>(gpart + d0 + 2 * e) = make_float2(O[2 * e], O[2 * e + 1]);
      if (d0 == 0) *reinterpret_cast<float2*>(gpart + D) = make_float2(M, L);
    }
  }
  cluster.sync();  // no CTA leaves or reuses its partial while a peer may still read it
  if (p.stop_after == 5) return;

  if (P > 1) {  // the last of the P clusters of this KV head (per rank) merges them in p order; kWideTail: all
    int* arrive = ctr.merge_arrive + kvh * C + rank;
    stamp(tl, kTlMergeArrive);
    if (wide_tail) arrive_and_wait(arrive, P);
    else if (!last_to_arrive(arrive, P, s.flag)) {
      stamp(tl, kTlEnd);
      return;
    }
    stamp(tl, kTlMergeWait);
    const int slot0 = (kvh * C + rank) * P;
    if constexpr (kDeepSplitMerge<BB, HG>) {  // runs in flight per thread: kN x kItems = 8 partials' loads
      if (P <= 2) merge_split_runs<2, 4>(p, slot0, P, items, B * G, D, G, QKV_ROWS, attn_out);
      else if (P <= 4) merge_split_runs<4, 2>(p, slot0, P, items, B * G, D, G, QKV_ROWS, attn_out);
      else if (P <= 8) merge_split_runs<8, 1>(p, slot0, P, items, B * G, D, G, QKV_ROWS, attn_out);
      else merge_split_runs<kMaxSplit, 1>(p, slot0, P, items, B * G, D, G, QKV_ROWS, attn_out);
    } else {  // one run at a time (merge_split_runs<kMaxSplit, 1> by another code shape)
      const float* all = p.attn_partial + static_cast<long long>(slot0) * B * G * (D + 2);
      for (int item = tid; item < items; item += kThreads) {  // the same runs, over the P partials in global
        const int bg = item / runs, d0 = (item % runs) * kMergeRun;
        float2 ml[kMaxSplit], po[kMaxSplit][kMergePairs];  // all P partials in flight at once
#pragma unroll
        for (int q = 0; q < kMaxSplit; ++q) {
          ml[q] = make_float2(kNegInf, 0.f);
#pragma unroll
          for (int e = 0; e < kMergePairs; ++e) po[q][e] = make_float2(0.f, 0.f);
          if (q < P) {
            const float* src = all + (static_cast<long long>(q) * B * G + bg) * (D + 2);
            ml[q] = __ldcg(reinterpret_cast<const float2*>(src + D));
#pragma unroll
            for (int e = 0; e < kMergePairs; ++e)
              po[q][e] = __ldcg(reinterpret_cast<const float2*>(src + d0 + 2 * e));
          }
        }
        float M = kNegInf;
#pragma unroll
        for (int q = 0; q < kMaxSplit; ++q) M = fmaxf(M, ml[q].x);
        float L = 0.f, O[kMergeRun];
#pragma unroll
        for (int e = 0; e < kMergeRun; ++e) O[e] = 0.f;
#pragma unroll
        for (int q = 0; q < kMaxSplit; ++q) {
          const float w = softmax_rescale(ml[q].x, M);
          L += ml[q].y * w;
#pragma unroll
          for (int e = 0; e < kMergePairs; ++e) {
            O[2 * e] += po[q][e].x * w;
            O[2 * e + 1] += po[q][e].y * w;
          }
        }
        float* dst = attn_out + (bg / G) * QKV_ROWS + (bg % G) * D + d0;
#pragma unroll
        for (int e = 0; e < kMergeRun; ++e) dst[e] = O[e] / L;
      }
    }
    if (wide_tail) depart(arrive, ctr.merge_depart + kvh * C + rank, P);
  }
  __syncthreads();
  stamp(tl, kTlMerge);

  // ---- 6. o_proj slice: columns [col0, col0+ncols) over this group's G*D inputs, then fix-up
  const T* wo = static_cast<const T*>(p.wo) + static_cast<long long>(kvh) * GD;
  float* opart = p.o_partial;
  if (wide_tail && ncols == 0) {  // an empty slice is empty for every KV head: nobody waits on it
    stamp(tl, kTlEnd);
    return;
  }
  auto wo_row = [&](int i) -> const T* { return wo + (col0 + i) * wo_ld; };
  bool o_done = false;
  if constexpr (BB >= kMmaMinBucket) {
    if (use_mma) {  // the attention output (fp32) rounded to T in the B fragments
      gemv_mma<T, BB, kMmaShortDepth>(wo_row, ncols, attn_out, QKV_ROWS, GD, [&](int i, int b, float v, int part) {
        if (b < B) {
          float* dst = opart + (static_cast<long long>(kvh) * B + b) * H + col0 + i;
          *dst = part == 0 ? v : *dst + v;  // parts > 0 read this CTA's own earlier store (CTA barrier between)
        }
      });
      o_done = true;
    }
  }
  if (!o_done) {
    gemv_lanes<T, BB, kShortRows<BB>, kShortSteps>(
        wide_tail ? lanes_one_pass(GD, kShortSteps) : lanes_for(GD), wo_row, ncols, attn_out, QKV_ROWS, GD,
        [&](int i, int b, float v) {
          if (b < B) opart[(static_cast<long long>(kvh) * B + b) * H + col0 + i] = v;
        });
  }
  stamp(tl, kTlOproj, true);
  if (wide_tail) {  // the KVH CTAs of this slice each finalise 1/KVH of its columns once all have landed
    int* arrive = ctr.slice_arrive + slice;
    arrive_and_wait(arrive, KVH);
    stamp(tl, kTlSliceWait);
    const int tile = cf::ceil_div(ncols / 4, KVH) * 4;
    const int t0 = min(ncols, kvh * tile), tn = min(ncols, t0 + tile) - t0;
    fixup_tile<T>(p, x, opart, col0 + t0, tn, s.reduce);
    depart(arrive, ctr.slice_depart + slice, KVH);
    stamp(tl, kTlEnd);  // depart's CTA barrier follows the fix-up; thread 0 stamps after its atomics
    return;
  }
  if (!last_to_arrive(ctr.slice_arrive + rank, KVH, s.flag)) {
    stamp(tl, kTlEnd);
    return;
  }
  stamp(tl, kTlSliceWait);
  const int n4 = ncols / 4;
  for (int idx = tid; idx < B * n4; idx += kThreads) {  // 4 columns per thread, KV heads in fixed order
    const int b = idx / n4, n = col0 + 4 * (idx % n4);
    const float* src = opart + static_cast<long long>(b) * H + n;
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll 8
    for (int h = 0; h < KVH; ++h) {
      const float4 v = __ldcg(reinterpret_cast<const float4*>(src + static_cast<long long>(h) * B * H));
      acc.x += v.x; acc.y += v.y; acc.z += v.z; acc.w += v.w;
    }
    finish_columns<T>(p, x, b, n, acc);
  }
  stamp(tl, kTlEnd, true);
}

}  // namespace attn

// Entry point for NVRTC name expressions: attention_decode<T, BB, HG>. One parameter per Params field,
// in field order (the launcher passes flat pointers and ctypes scalars), gathered into a Params.
template <typename T, int BB, int HG>
__global__ void __launch_bounds__(attn::kThreads, 1) attention_decode(
    const void* x, const void* norm_w, const void* wq, const void* wk, const void* wv, const void* bq,
    const void* bk, const void* bv, const void* q_norm_w, const void* k_norm_w, const void* cos,
    const void* sin, const long long* cache_position, void* k_cache, void* v_cache, const unsigned char* mask,
    const void* wo, const void* bo, void* out, float* attn_partial, float* o_partial, int* arrivals,
    float* qkv_global, float eps,
    float qk_eps, float scale, int batch, int hidden, int num_heads, int num_kv_heads, int head_dim,
    int max_cache_len, long long mask_stride, long long cos_stride, int cos_kind, int unit_offset,
    int add_residual, int k_chunk, int prefetch, int rows_parallel, int stop_after, int variant) {
  static_assert(BB >= 1 && BB <= 16, "batch bucket is 1..16");
  static_assert(HG >= 1 && HG <= 8, "query heads per register pass is 1..8");
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const attn::Params p{x, norm_w, wq, wk, wv, bq, bk, bv, q_norm_w, k_norm_w, cos, sin, cache_position,
                       k_cache, v_cache, mask, wo, bo, out, attn_partial, o_partial, arrivals, qkv_global, eps,
                       qk_eps,
                       scale, batch, hidden, num_heads, num_kv_heads, head_dim, max_cache_len, mask_stride,
                       cos_stride, cos_kind, unit_offset, add_residual, k_chunk, prefetch, rows_parallel,
                       stop_after, variant};
  attn::attention_decode_body<T, BB, HG>(p, smem_raw);
}
