// gated_ffn.cu -- one launch per gated-FFN block per decode step (docs/kernel-contract.md, "Gated FFN"):
//
//   n   = rmsnorm(x)                    (weight, or 1 + weight; statistics in fp32; n rounded to T as eager)
//   h   = act(n W_gate^T) * (n W_up^T)  (fp32; rounded to T once, as eager, to feed the tensor cores)
//   out = (x if add_residual) + h W_down^T   (fp32 accumulation, one rounding)
//
// Why it is shaped like this. At batch 1..16 the block is bound by the weight bytes (3 * I * H * 2),
// so every weight byte is read exactly once, by every resident SM, with many bytes in flight. The batch
// is the N dimension of mma.sync m16n8k16 ("swap AB"): each weight tile is used for all B rows, and B
// only adds MMAs, never bytes. Two load paths (template STAGES):
//   * staged (STAGES >= 2, the default where it fits): each warp owns a ring of STAGES slots of 16 rows x
//     128 B, filled by cp.async with whole 128-byte lines per row and read by ldmatrix; the first slots of
//     the gate/up and of the down phase are issued before the norm and before the cluster exchange, so
//     the weights keep streaming through those serial steps.
//   * direct (STAGES == 0, for shapes whose ring does not fit, e.g. H 8192 / I 28672 at B 16): 16-byte
//     loads straight into MMA fragments (k permuted alike in A and B), DEPTH steps in flight per warp.
// Measured on H100 (benchmarks/NOTES-ffn.md): both paths stream at ~2.6 TB/s with ~15 us of fixed
// latency per launch; the notes list what to change next.
//
// Work split (all derived from hidden H, intermediate I, cluster size N and the cluster count C, which
// the host takes from the occupancy of this kernel -- one wave, every cluster resident):
//   * the intermediate dimension is cut into units of kUnitRows rows; cluster c owns the contiguous units
//     [c*U/C, (c+1)*U/C) (U = I / kUnitRows): its slice of h, and the matching k-slice of W_down.
//   * gate/up: CTA rank r of the cluster takes the hidden range [r*H/N, (r+1)*H/N) of every row of the
//     cluster's units (split-K across the cluster, so each CTA normalises only its H/N columns of x and
//     all CTAs get the same bytes +-0.7%). One MMA tile = 8 gate rows + the 8 matching up rows, so the
//     accumulator holds gate and up of one row in one thread. Inside the CTA the (unit, k-step) items
//     are split evenly across warps; a unit cut between warps is finished in a fixed order (fold below).
//   * cluster step: partial gate/up sums (fp32, smem) are added over the N ranks in rank order through
//     DSMEM, each rank activating the units u % N == r; the h slices are then gathered over DSMEM.
//   * down: CTA rank r computes output columns [r*H/N, (r+1)*H/N) over the cluster's k-slice, whole
//     16-row tiles per warp, and writes fp32 partials [C][H/16][16][B] to global memory.
//   * fix-up: per 16-column tile an arrival counter; the last of the C clusters to arrive sums the C
//     partials in cluster order (bitwise deterministic, no float atomics), adds the residual, writes out
//     and resets the counter to 0 (CUDA-graph replay safe). Tiles are visited in an order rotated by the
//     cluster index, so the last arrivals -- and the fix-up work -- spread over the clusters.
//
// Scratch: `partials` (C * H * kMaxBatch floats) and `counters` (H / 16 ints, zero before the first
// launch) are allocated once per (shape, device) by the host; launches that share them must be ordered
// (one stream), as decoder layers are.
#include "cluster.cuh"
#include "common.cuh"
#include "ffn_math.cuh"
#include "mma.cuh"

namespace cf {
namespace ffn {

// ------------------------------------------------------------------ shape constants (named, derived)

using bits16 = unsigned short;  // raw fp16/bf16 bits in shared memory

constexpr int kWarpSize = 32;
constexpr int kMmaRows = 16;                       // M of mma.m16n8k16: weight rows per tile
constexpr int kMmaCols = 8;                        // N of mma.m16n8k16: batch rows per MMA
constexpr int kUnitRows = kMmaRows / 2;            // 8 gate rows + 8 up rows fill one MMA tile
constexpr int kLanesPerGroup = 4;                  // threadID_in_group of the MMA fragment layout
constexpr int kElemsPerLoad = 8;                   // one 16-byte load of fp16/bf16
constexpr int kStepK = kLanesPerGroup * kElemsPerLoad;  // 32 columns of k per warp step (2 MMAs of k16)
constexpr int kMaxBatch = 2 * kMmaCols;            // batch 1..16 = at most two N tiles
constexpr int kBankBytes = 128;                    // 32 banks x 4 bytes
constexpr int kRowSkewDirect = kBankBytes / 2;     // direct path: 64 B per row per access, 2 rows a wavefront
constexpr int kRowSkewStaged = 16;                 // staged path: ldmatrix rows 16 B apart mod 128 (8 rows, no conflict)
constexpr int kChunkK = 2 * kStepK;                // staged path: 64 columns = 128 B = one L2 line per row
constexpr int kChunkBytes = kMmaRows * kChunkK * 2;  // one ring slot: 16 rows x 128 B
constexpr int kPiecesPerRow = kChunkK / kElemsPerLoad;  // 8 16-byte pieces per row of a slot
constexpr int kMmaK = 16;

/// @brief How the gate/up work is cut inside a cluster (template MODE; the benchmark times them side by side).
///   kSplitK:           every rank reads H/N columns of all the cluster's units; RMS statistics summed over
///                      the cluster (2 cluster barriers), partials summed over DSMEM (2 more), h gathered.
///   kSplitKLocalStats: as kSplitK, but each CTA squares the whole x row itself (no cluster barrier pair
///                      for the statistics: B*H*2 bytes more from L2 per CTA, a few hundred ns).
///   kWholeUnits:       rank r owns whole units (all H columns; the CTA's share of the grid-wide even
///                      split), so h is complete in the CTA: no DSMEM reduce, one cluster barrier before
///                      the h gather. Costs: the whole n row per CTA in smem, units per CTA differ by one.
enum GateUpMode : int { kSplitK = 0, kSplitKLocalStats = 1, kWholeUnits = 2 };

/// @brief Optional prologue/epilogue changes (template FLAGS, a bit set; Tuning.flags / ffn.FLAGS). Each
/// leaves every sum in the same order, so the output is bitwise the same as without it.
///   kEarlyX:      x (this thread's first vector of every row of the statistics range) and the matching
///                 norm-weight vector are loaded before the ring's first weight slots are issued, so the
///                 statistics do not wait behind ~4 us of queued weight traffic (run 4: start -> stats
///                 8.4 us at Llama-2-7B B=1, 7 us at Qwen). Where the statistics range is the norm range
///                 (split-K, whole units), n is written from those registers: no reload of x.
///   kDeferFixUp:  a warp that arrives last on a down tile only notes it; after its last tile it sums all
///                 those tiles at once (their loads in flight together). A late cluster is last on every
///                 one of its tiles; inline it paid one fix-up round trip per tile, now one for all.
enum Flags : int { kEarlyX = 1, kDeferFixUp = 2 };
constexpr int kFlagsAll = kEarlyX | kDeferFixUp;
constexpr int kMaxDeferredTiles = 32;  // the deferred set is a 32-bit mask of a warp's tile indices

// ------------------------------------------------------------------ optional phase timeline
// -DCF_FFN_PHASES=1: thread 0 of every CTA writes {%globaltimer, clock64} at each phase boundary into
// stamps[cta][phase][2] (benchmarks/ffn.py --phases). Off (default): the stamps argument is unused and the
// kernel is the same code as without it.
enum Phase : int {
  kPhaseStart = 0,  // kernel entry
  kPhaseStats,      // rstd known
  kPhaseNorm,       // n in shared memory
  kPhaseGateUp,     // this CTA's gate/up MMAs done
  kPhaseFold,       // partials folded (and, split-K, visible to the cluster)
  kPhaseH,          // h of the owned units written and visible to the cluster
  kPhaseGather,     // h of the cluster's k-slice complete in this CTA
  kPhaseDown,       // down tiles (and the fix-ups this CTA drew) done
  kPhaseEnd,        // after the exit barrier
  kPhaseCount
};
#ifndef CF_FFN_PHASES
#define CF_FFN_PHASES 0
#endif

__device__ __forceinline__ unsigned long long global_timer_ns() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

/// @brief Record phase `phase` of this CTA (thread 0); compiled out unless CF_FFN_PHASES.
__device__ __forceinline__ void stamp(unsigned long long* stamps, int phase) {
  if constexpr (CF_FFN_PHASES != 0) {
    if (threadIdx.x == 0) {
      unsigned long long* dst = stamps + (static_cast<size_t>(blockIdx.x) * kPhaseCount + phase) * 2;
      dst[0] = global_timer_ns();
      dst[1] = static_cast<unsigned long long>(clock64());
    }
  }
}

/// @brief Elements per smem row of `len` 16-bit values, padded to whole 128-byte lines plus `skew` bytes,
/// so that the rows one fragment load touches fall on different banks.
__host__ __device__ constexpr int padded_row_elems(int len, int skew) {
  return (ceil_div(len * 2, kBankBytes) * kBankBytes + skew) / 2;
}

/// @brief Byte offsets of the dynamic shared memory regions; the host computes the same (ffn.py).
struct SmemLayout {
  int k_range;      // hidden columns of the gate/up rows per CTA: H / N (split-K) or H (whole units)
  int units_max;    // most units any CTA holds gate/up partials for
  int n_stride;     // elements per row of n (gate/up phase)
  int h_stride;     // elements per row of h (down phase), reusing n's region
  int vec_offset;   // region A: n, later h   [kMaxBatch-or-BP rows]
  int part_offset;  // gate/up partials, fp32 [units_max][16][BP]
  int head_offset;  // per-warp unfinished first unit, fp32 [WARPS][16][BP]
  int misc_offset;  // ss send/recv [2][kMaxBatch] fp32, rstd [kMaxBatch], head_unit [WARPS] int,
                    // per-warp sums of squares [WARPS][kMaxBatch] fp32
  int ring_offset;  // staged path: per-warp rings of `stages` weight slots [WARPS][stages][16][128 B]
  int total;

  __host__ __device__ SmemLayout(int hidden, int inter, int cluster, int clusters, int bp, int warps, int stages,
                                 bool whole_units) {
    const int skew = stages > 0 ? kRowSkewStaged : kRowSkewDirect;
    const int k_item = stages > 0 ? kChunkK : kStepK;
    const int cluster_units_max = ceil_div(inter / kUnitRows, clusters);
    k_range = whole_units ? hidden : hidden / cluster;
    units_max = whole_units ? ceil_div(cluster_units_max, cluster) : cluster_units_max;  // = ceil(U / (C*N))
    n_stride = padded_row_elems(ceil_div(k_range, k_item) * k_item, skew);
    h_stride = padded_row_elems(ceil_div(cluster_units_max * kUnitRows, k_item) * k_item, skew);
    const int region_a = bp * (n_stride > h_stride ? n_stride : h_stride) * 2;
    vec_offset = 0;
    part_offset = ceil_div(region_a, 16) * 16;
    head_offset = part_offset + units_max * kMmaRows * bp * 4;
    misc_offset = head_offset + warps * kMmaRows * bp * 4;
    ring_offset = ceil_div(misc_offset + (3 * kMaxBatch + warps + warps * kMaxBatch) * 4, kBankBytes) * kBankBytes;
    total = ring_offset + warps * stages * kChunkBytes;
  }
};

// ------------------------------------------------------------------ small device helpers

// Optional L2 sector-promotion hint on weight loads and copies (-DCF_FFN_L2_HINT=128|256): one request then fills
// that many bytes of the row into L2, so the next steps of the same row hit L2 (more bytes in flight).
#ifndef CF_FFN_L2_HINT
#define CF_FFN_L2_HINT 0
#endif
#if CF_FFN_L2_HINT == 256
#define CF_FFN_LOAD_QUALIFIERS ".L1::no_allocate.L2::256B"
#define CF_FFN_COPY_QUALIFIERS ".L2::256B"
#elif CF_FFN_L2_HINT == 128
#define CF_FFN_LOAD_QUALIFIERS ".L1::no_allocate.L2::128B"
#define CF_FFN_COPY_QUALIFIERS ".L2::128B"
#else
#define CF_FFN_LOAD_QUALIFIERS ".L1::no_allocate"
#define CF_FFN_COPY_QUALIFIERS ""
#endif

/// @brief 16-byte streaming load of read-only weights: no L1 allocation (each byte is used once).
__device__ __forceinline__ uint4 load_weights(const void* p) {
  uint4 v;
  asm("ld.global.nc" CF_FFN_LOAD_QUALIFIERS ".v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(p));
  return v;
}

/// @brief 16-byte load of read-only activations, volatile so that it stays ahead (in issue order) of the
/// ring's cp.async copies that follow it in program order.
__device__ __forceinline__ uint4 load_early(const void* p) {
  uint4 v;
  asm volatile("ld.global.nc.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
  return v;
}

/// @brief The 8 values of one 16-byte vector of T, widened to fp32.
template <typename T>
__device__ __forceinline__ void unpack_f32(const uint4& raw, float (&out)[kElemsPerLoad]) {
  const T* v = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int i = 0; i < kElemsPerLoad; ++i) out[i] = to_float(v[i]);
}

/// @brief Ask L2 to fetch `bytes` (multiple of 16, 16-byte aligned) ahead of the loads that need them.
__device__ __forceinline__ void prefetch_l2(const void* p, unsigned bytes) {
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p), "r"(bytes) : "memory");
}

/// @brief Dynamic shared memory the launch provided (checked against the layout: a mismatch traps).
__device__ __forceinline__ unsigned dynamic_smem_size() {
  unsigned v;
  asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(v));
  return v;
}

/// @brief 16-byte global -> shared copy that bypasses L1 (zero-fills when `bytes` is 0).
__device__ __forceinline__ void cp_async_16(unsigned dst, const void* src, int bytes) {
  asm volatile("cp.async.cg.shared.global" CF_FFN_COPY_QUALIFIERS " [%0], [%1], 16, %2;" ::"r"(dst), "l"(src),
               "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

__device__ __forceinline__ void ldmatrix_x4(unsigned (&r)[4], unsigned addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x2(unsigned (&r)[2], unsigned addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];" : "=r"(r[0]), "=r"(r[1]) : "r"(addr));
}

// The mma.sync m16n8k16 instruction (fp16/bf16 in, fp32 accumulate) and the k-permuted warp step live in
// mma.cuh, shared with the attention and MLA kernels.
template <typename T>
using MmaOp = mma::Op<T>;

/// @brief Batch fragment: 8 consecutive values of rows g (and g + 8) of an smem [row][stride] array;
/// zero for rows past the batch (their products are never stored).
template <int BT>
__device__ __forceinline__ void load_batch_frag(uint4 (&b)[BT], const bits16* base, int stride, int g,
                                                int batch) {
#pragma unroll
  for (int bt = 0; bt < BT; ++bt) {
    const int row = g + bt * kMmaCols;
    b[bt] = row < batch ? *reinterpret_cast<const uint4*>(base + row * stride) : make_uint4(0, 0, 0, 0);
  }
}

/// @brief Staged path: copy one 16-row x 64-column weight tile into a ring slot with full-line requests
/// (each warp instruction moves 4 rows x 128 B). Rows 0-7 come from `lo`, rows 8-15 from `hi`, both with
/// row stride `stride`; columns from `col`; pieces at or past `valid` columns are zero-filled. Slot rows
/// are 128 B with the 16-byte pieces XOR-swizzled by row, so ldmatrix reads them without bank conflicts.
template <typename T>
__device__ __forceinline__ void issue_chunk(unsigned slot, const T* lo, const T* hi, int stride, int col,
                                            int valid, int lane) {
  const int piece = lane % kPiecesPerRow;
  const int k = col + piece * kElemsPerLoad;
  constexpr int kRowsPerPass = kWarpSize / kPiecesPerRow;  // 4
#pragma unroll
  for (int i = 0; i < kMmaRows / kRowsPerPass; ++i) {
    const int r = lane / kPiecesPerRow + kRowsPerPass * i;
    const T* row = r < kUnitRows ? lo + r * stride : hi + (r - kUnitRows) * stride;
    const unsigned dst = slot + r * (kChunkK * 2) + ((piece ^ (r % kUnitRows)) * 16);
    const bool live = k < valid;
    cp_async_16(dst, live ? row + k : lo, live ? 16 : 0);
  }
}

/// @brief Staged path: acc += slot tile (16 x 64) x batch^T over `kk_count` blocks of k16. The batch rows
/// come from smem [row][stride] (n or h) at columns `col`...; ldmatrix gives both operands in the
/// standard m16n8k16 fragment layouts.
template <typename T, int BT>
__device__ __forceinline__ void mma_chunk(float (&acc)[BT][4], unsigned slot, unsigned vec, int stride, int col,
                                          int kk_count, int lane) {
  const int q = lane / kUnitRows, r8 = lane % kUnitRows;
#pragma unroll
  for (int kk = 0; kk < kChunkK / kMmaK; ++kk) {
    if (kk < kk_count) {
      unsigned a[4];
      const int row = (q & 1) * kUnitRows + r8, piece = kk * 2 + (q >> 1);
      ldmatrix_x4(a, slot + row * (kChunkK * 2) + ((piece ^ r8) * 16));
#pragma unroll
      for (int bt = 0; bt < BT; ++bt) {
        unsigned b[2];
        const int brow = bt * kMmaCols + r8, bcol = col + kk * kMmaK + (q & 1) * kElemsPerLoad;
        ldmatrix_x2(b, vec + (brow * stride + bcol) * 2);
        MmaOp<T>::run(acc[bt], a[0], a[1], a[2], a[3], b[0], b[1]);
      }
    }
  }
}

template <int BT>
__device__ __forceinline__ void zero(float (&acc)[BT][4]) {
#pragma unroll
  for (int bt = 0; bt < BT; ++bt) acc[bt][0] = acc[bt][1] = acc[bt][2] = acc[bt][3] = 0.f;
}

/// @brief Store a warp's 16 x (8*BT) accumulator tile as fp32 [16 rows][bp] (row-major) at `dst`.
template <int BT>
__device__ __forceinline__ void store_tile_smem(float* dst, const float (&acc)[BT][4], int g, int t, int bp) {
#pragma unroll
  for (int bt = 0; bt < BT; ++bt) {
    const int col = bt * kMmaCols + 2 * t;
    *reinterpret_cast<float2*>(dst + g * bp + col) = make_float2(acc[bt][0], acc[bt][1]);
    *reinterpret_cast<float2*>(dst + (g + kUnitRows) * bp + col) = make_float2(acc[bt][2], acc[bt][3]);
  }
}

constexpr int kFixUpFloatsPerVec = 4;  // float4 loads of the partials
constexpr int kFixUpElemsPerLane = 2;  // 16 rows x 16 batch / 4 floats = 64 vectors = 2 per lane

/// @brief Lanes that share one partial vector of the fix-up (they split the clusters, then a fixed xor tree
/// combines them): as many as leave no lane idle for one tile, a power of two. A function of the batch only,
/// so every fix-up path adds an element's C partials in the same order (the same bits).
__device__ __forceinline__ int fix_up_group(int vecs) {
  int group = 1;
  while (group * kFixUpElemsPerLane * vecs <= kWarpSize) group *= 2;
  return group;
}

/// @brief The end of every fix-up path for one partial vector: the `group` lanes sharing it combine their
/// cluster sums by a fixed xor tree (every lane executes the shuffles), then its first lane adds the
/// residual and writes the vector's kFixUpFloatsPerVec outputs of output tile `jt` (vector `v` of the
/// tile's [16 rows x batch] partials). One definition, so every path forms each element identically.
template <typename T>
__device__ __forceinline__ void fix_up_store(float4 acc, bool write, int group, int jt, int v, int batch,
                                             int hidden, const T* x, T* out, int add_residual) {
  for (int off = group / 2; off > 0; off /= 2) {
    acc.x += __shfl_xor_sync(0xffffffffu, acc.x, off);
    acc.y += __shfl_xor_sync(0xffffffffu, acc.y, off);
    acc.z += __shfl_xor_sync(0xffffffffu, acc.z, off);
    acc.w += __shfl_xor_sync(0xffffffffu, acc.w, off);
  }
  if (!write) return;
  const float sums[kFixUpFloatsPerVec] = {acc.x, acc.y, acc.z, acc.w};
#pragma unroll
  for (int f = 0; f < kFixUpFloatsPerVec; ++f) {
    const int e = v * kFixUpFloatsPerVec + f;
    const size_t o = static_cast<size_t>(e % batch) * hidden + jt * kMmaRows + e / batch;
    out[o] = from_float<T>(add_residual ? sums[f] + to_float(x[o]) : sums[f]);
  }
}

/// @brief Final sum of one 16-column output tile by the warp that arrived last: the C cluster partials
/// [C][tiles][16][batch] are added in cluster order 0..C-1 (split over `group` lanes as q = sub, sub +
/// group, ... and combined by a fixed xor tree: the same bits every run), plus the residual; then the
/// tile's counter is reset. 16-byte loads and two independent elements per lane keep ~16 loads in flight,
/// so the tail costs a few L2 round trips at any batch.
template <typename T>
__device__ __forceinline__ void fix_up_tile(int jt, const float* partials, int clusters, int col_tiles, int batch,
                                         int hidden, const T* x, T* out, int* counters, int add_residual,
                                         int lane) {
  constexpr int kFloatsPerVec = kFixUpFloatsPerVec;
  constexpr int kElemsPerLane = kFixUpElemsPerLane;
  __threadfence();  // acquire side of the arrival counter
  const int vecs = kMmaRows * batch / kFloatsPerVec;
  const int group = fix_up_group(vecs);
  const int sub = lane % group, slot = lane / group, slots = kWarpSize / group;
  const float4* src = reinterpret_cast<const float4*>(partials) + static_cast<size_t>(jt) * vecs;
  const size_t cluster_stride = static_cast<size_t>(col_tiles) * vecs;
  for (int base = 0; base < vecs; base += kElemsPerLane * slots) {
    float4 acc[kElemsPerLane];
    bool active[kElemsPerLane];
#pragma unroll
    for (int i = 0; i < kElemsPerLane; ++i) {
      acc[i] = make_float4(0.f, 0.f, 0.f, 0.f);
      active[i] = base + i * slots + slot < vecs;
    }
#pragma unroll 8
    for (int q = sub; q < clusters; q += group) {
#pragma unroll
      for (int i = 0; i < kElemsPerLane; ++i) {
        if (active[i]) {
          const float4 v = __ldcg(src + q * cluster_stride + base + i * slots + slot);
          acc[i].x += v.x, acc[i].y += v.y, acc[i].z += v.z, acc[i].w += v.w;
        }
      }
    }
#pragma unroll
    for (int i = 0; i < kElemsPerLane; ++i)
      fix_up_store(acc[i], active[i] && sub == 0, group, jt, base + i * slots + slot, batch, hidden, x, out,
                   add_residual);
  }
  __syncwarp();
  if (lane == 0) atomicExch(counters + jt, 0);  // ready for the next launch / graph replay
}

/// @brief kDeferFixUp: fix_up_tile for every tile of `mask` (bit m: this warp's m-th tile, output tile
/// tile_index(m)) at once -- the (tile, vector) items of all of them share the lanes, so their partial
/// loads are in flight together (one L2 round trip for a late warp's whole set, not one per tile). Each
/// element's sum is formed exactly as in fix_up_tile (same lane group, same cluster order, same xor tree).
template <typename T, typename TileIndex>
__device__ __forceinline__ void fix_up_tiles(unsigned mask, TileIndex tile_index, const float* partials,
                                             int clusters, int col_tiles, int batch, int hidden, const T* x,
                                             T* out, int* counters, int add_residual, int lane) {
  constexpr int kFloatsPerVec = kFixUpFloatsPerVec;
  constexpr int kElemsPerLane = kFixUpElemsPerLane;
  __threadfence();  // acquire side of the arrival counters
  const int vecs = kMmaRows * batch / kFloatsPerVec;
  const int group = fix_up_group(vecs);
  const int sub = lane % group, slot = lane / group, slots = kWarpSize / group;
  const int items = __popc(mask) * vecs;
  const float4* src4 = reinterpret_cast<const float4*>(partials);
  const size_t cluster_stride = static_cast<size_t>(col_tiles) * vecs;
  for (int base = 0; base < items; base += kElemsPerLane * slots) {
    float4 acc[kElemsPerLane];
    int jt[kElemsPerLane], v[kElemsPerLane];
    bool active[kElemsPerLane];
#pragma unroll
    for (int i = 0; i < kElemsPerLane; ++i) {
      const int item = base + i * slots + slot;
      acc[i] = make_float4(0.f, 0.f, 0.f, 0.f);
      active[i] = item < items;
      jt[i] = active[i] ? tile_index(static_cast<int>(__fns(mask, 0, item / vecs + 1))) : 0;
      v[i] = item % vecs;
    }
#pragma unroll 8
    for (int q = sub; q < clusters; q += group) {
#pragma unroll
      for (int i = 0; i < kElemsPerLane; ++i) {
        if (active[i]) {
          const float4 p = __ldcg(src4 + q * cluster_stride + static_cast<size_t>(jt[i]) * vecs + v[i]);
          acc[i].x += p.x, acc[i].y += p.y, acc[i].z += p.z, acc[i].w += p.w;
        }
      }
    }
#pragma unroll
    for (int i = 0; i < kElemsPerLane; ++i)
      fix_up_store(acc[i], active[i] && sub == 0, group, jt[i], v[i], batch, hidden, x, out, add_residual);
  }
  __syncwarp();
  if (lane < __popc(mask)) atomicExch(counters + tile_index(static_cast<int>(__fns(mask, 0, lane + 1))), 0);
}

/// @brief This thread's share of the statistics pass over `vecs` 16-byte vectors of each x row from column
/// `col0`: warp w takes the w-th contiguous share of every row (so B = 1 spreads over all warps), lanes
/// stride it. The first of them (one vector per row) is what kEarlyX loads ahead of the ring.
template <int WARPS>
struct StatsShare {
  int v_begin, v_end, v_first;
  __device__ __forceinline__ StatsShare(int vecs, int warp, int lane)
      : v_begin(warp * vecs / WARPS), v_end((warp + 1) * vecs / WARPS), v_first(v_begin + lane) {}
  __device__ __forceinline__ bool has_first() const { return v_first < v_end; }
};

/// @brief kEarlyX: load this thread's first x vector of every row (and, with `w`, the matching norm-weight
/// vector) now, ahead of the ring's weight copies.
template <typename T, int WARPS, int ROWS>
__device__ __forceinline__ void load_first_x(uint4 (&first)[ROWS], uint4& w_first, const StatsShare<WARPS>& share,
                                             const T* x, const T* norm_w, int hidden, int col0, int batch) {
  if (!share.has_first()) return;
  const int col = col0 + share.v_first * kElemsPerLoad;
#pragma unroll
  for (int b = 0; b < ROWS; ++b) {
    if (b < batch) first[b] = load_early(x + static_cast<size_t>(b) * hidden + col);
  }
  if (norm_w != nullptr) w_first = load_early(norm_w + col);
}

/// @brief Per-warp sums of squares of this warp's share of every x row; a fixed xor tree combines the lanes;
/// ss_warp[w][b] gets the result. Every row's loads are issued together (one L2 round trip per 32 vectors,
/// not one per row). With kFirstLoaded the first vector of each row comes from `first` (kEarlyX), the same
/// values in the same order. Fixed order: the same bits in every CTA and run.
template <typename T, int WARPS, int ROWS, bool kFirstLoaded>
__device__ __forceinline__ void row_sum_squares(float* ss_warp, const uint4 (&first)[ROWS],
                                                const StatsShare<WARPS>& share, const T* x, int hidden, int col0,
                                                int batch, int warp, int lane) {
  float s[ROWS];
#pragma unroll
  for (int b = 0; b < ROWS; ++b) s[b] = 0.f;
  int v = share.v_first;
  if constexpr (kFirstLoaded) {
    if (v < share.v_end) {
#pragma unroll
      for (int b = 0; b < ROWS; ++b) {
        if (b < batch) {
          float f[kElemsPerLoad];
          unpack_f32<T>(first[b], f);
#pragma unroll
          for (int e = 0; e < kElemsPerLoad; ++e) s[b] = fmaf(f[e], f[e], s[b]);
        }
      }
    }
    v += kWarpSize;
  }
  for (; v < share.v_end; v += kWarpSize) {
#pragma unroll
    for (int b = 0; b < ROWS; ++b) {
      if (b < batch) {
        float f[kElemsPerLoad];
        load_vec_f32(x + static_cast<size_t>(b) * hidden + col0 + v * kElemsPerLoad, f);
#pragma unroll
        for (int e = 0; e < kElemsPerLoad; ++e) s[b] = fmaf(f[e], f[e], s[b]);
      }
    }
  }
#pragma unroll
  for (int b = 0; b < ROWS; ++b) {
    if (b < batch) {
#pragma unroll
      for (int off = kWarpSize / 2; off > 0; off /= 2) s[b] += __shfl_xor_sync(0xffffffffu, s[b], off);
      if (lane == 0) ss_warp[warp * kMaxBatch + b] = s[b];
    }
  }
}

/// @brief n = (offset + w) * (x * rstd) of one 16-byte vector of row b, rounded to T, into smem (as eager).
template <typename T>
__device__ __forceinline__ void normalise_vec(bits16* n_row, const uint4& x_raw, const uint4& w_raw, float rstd,
                                              float offset) {
  float f[kElemsPerLoad], w[kElemsPerLoad];
  unpack_f32<T>(x_raw, f);
  unpack_f32<T>(w_raw, w);
#pragma unroll
  for (int e = 0; e < kElemsPerLoad; ++e) f[e] = (offset + w[e]) * (f[e] * rstd);
  store_vec_f32(reinterpret_cast<T*>(n_row), f);
}

// ------------------------------------------------------------------ the kernel

/// @brief Fused gated FFN, one launch per step. Grid: C clusters of CLUSTER CTAs (1-D), WARPS warps each.
/// @tparam T          __half or __nv_bfloat16
/// @tparam CLUSTER    CTAs per cluster (N); must divide H / 32
/// @tparam BT         batch tiles of 8 (1: batch <= 8, 2: batch <= 16)
/// @tparam WARPS      warps per CTA (one CTA per SM)
/// @tparam DEPTH      direct path: 16-byte weight loads in flight per thread and row pair
/// @tparam STAGES     0: direct path (16-byte loads straight into MMA fragments, 64 B per row per request);
///                    >= 2: staged path (per-warp ring of STAGES slots filled by cp.async with full 128-byte
///                    lines per row, read by ldmatrix; STAGES - 1 slots in flight, also across the phase
///                    boundaries). The host picks staged when its ring fits in shared memory.
/// @tparam MODE       GateUpMode: how gate/up is cut inside the cluster (default: split-K)
/// @tparam FLAGS      Flags bit set: early x loads, deferred fix-ups (default: none; same bits either way)
template <typename T, int CLUSTER, int BT, int WARPS, int DEPTH, int STAGES, int MODE = kSplitK, int FLAGS = 0>
__global__ void __launch_bounds__(WARPS* kWarpSize, 1)
    gated_ffn_kernel(const T* __restrict__ x, const T* __restrict__ norm_w, const T* __restrict__ w_gate,
                     const T* __restrict__ w_up, const T* __restrict__ w_down, T* __restrict__ out,
                     float* __restrict__ partials, int* __restrict__ counters, int hidden, int inter, int batch,
                     float eps, int norm_kind, int activation, int add_residual,
                     unsigned long long* __restrict__ stamps) {
  static_assert(sizeof(T) == 2, "fp16 / bf16 only");
  static_assert(BT == 1 || BT == 2, "batch tiles: 1 or 2 (batch <= 16)");
  static_assert(STAGES == 0 || STAGES >= 2, "staged path needs at least two ring slots");
  static_assert(MODE == kSplitK || MODE == kSplitKLocalStats || MODE == kWholeUnits, "unknown gate/up mode");
  static_assert((FLAGS & ~kFlagsAll) == 0, "unknown flag");
  constexpr bool kStaged = STAGES > 0;
  constexpr bool kWhole = MODE == kWholeUnits;
  constexpr bool kLocalStats = MODE != kSplitK;  // whole units need the whole row's statistics anyway
  constexpr bool kEarly = (FLAGS & kEarlyX) != 0;
  constexpr bool kDefer = (FLAGS & kDeferFixUp) != 0;
  // kEarlyX: the statistics range is the norm range (split-K: the CTA's k-slice; whole units: the row),
  // so the thread that squares x[b][v] also normalises it, from the same registers
  constexpr bool kNormFromRegs = kEarly && MODE != kSplitKLocalStats;
  constexpr int kThreads = WARPS * kWarpSize;
  constexpr int kBp = BT * kMmaCols;               // padded batch: row count of the fp32 tiles
  constexpr int kItemK = kStaged ? kChunkK : kStepK;  // k columns per work item

  extern __shared__ __align__(16) unsigned char smem[];
  const int clusters = gridDim.x / CLUSTER;
  stamp(stamps, kPhaseStart);
  const SmemLayout L(hidden, inter, CLUSTER, clusters, kBp, WARPS, STAGES, kWhole);
  if (cluster::num_ctas() != CLUSTER || dynamic_smem_size() < static_cast<unsigned>(L.total)) __trap();

  bits16* vec_s = reinterpret_cast<bits16*>(smem + L.vec_offset);  // n, then h (raw T bits)
  float* part_s = reinterpret_cast<float*>(smem + L.part_offset);
  float* head_s = reinterpret_cast<float*>(smem + L.head_offset);
  float* ss_send = reinterpret_cast<float*>(smem + L.misc_offset);
  float* ss_recv = ss_send + kMaxBatch;
  float* rstd_s = ss_recv + kMaxBatch;
  int* head_unit = reinterpret_cast<int*>(rstd_s + kMaxBatch);
  float* ss_warp = reinterpret_cast<float*>(head_unit + WARPS);  // [WARPS][kMaxBatch]

  const int tid = threadIdx.x, warp = tid / kWarpSize, lane = tid % kWarpSize;
  const int g = lane / kLanesPerGroup, t = lane % kLanesPerGroup;  // MMA fragment coordinates
  const int rank = static_cast<int>(cluster::rank());
  const int c = blockIdx.x / CLUSTER;
  const int kr = hidden / CLUSTER, k_begin = rank * kr;  // down: this rank's output columns
  const int units = inter / kUnitRows;
  const int unit0 = static_cast<int>(static_cast<long long>(c) * units / clusters);
  const int unit_count = static_cast<int>(static_cast<long long>(c + 1) * units / clusters) - unit0;
  const int kc = unit_count * kUnitRows;  // this cluster's k-slice of W_down
  const int k0 = unit0 * kUnitRows;
  // Whole units: CTA (c, r) owns the grid-wide even split [(cN+r)U/(CN), (cN+r+1)U/(CN)); for r = 0 that
  // is exactly the cluster's unit0, so the ranks tile the cluster's units. Cluster-relative here.
  auto rank_unit_begin = [&](int r) {
    const long long cta = static_cast<long long>(c) * CLUSTER + r;
    return static_cast<int>(cta * units / (static_cast<long long>(clusters) * CLUSTER)) - unit0;
  };
  const int gu_begin = kWhole ? 0 : k_begin;   // gate/up: first hidden column of this CTA
  const int gu_range = L.k_range;               // gate/up: hidden columns of this CTA
  const int gu_unit0 = kWhole ? rank_unit_begin(rank) : 0;                  // first unit of this CTA
  const int gu_units = kWhole ? rank_unit_begin(rank + 1) - gu_unit0 : unit_count;
  const int items_per_unit = ceil_div(gu_range, kItemK);  // k items of one unit in this CTA's hidden range

  // ---- gate/up work of this warp: items [i_begin, i_end) of (unit, k item), unit-major; units counted
  // from gu_unit0 (the index into part_s)
  const int items_gu = gu_units * items_per_unit;
  const int i_begin = static_cast<int>(static_cast<long long>(warp) * items_gu / WARPS);
  const int i_end = static_cast<int>(static_cast<long long>(warp + 1) * items_gu / WARPS);
  const size_t unit_stride = static_cast<size_t>(kUnitRows) * hidden;
  const size_t gu_row0 = static_cast<size_t>(k0 + gu_unit0 * kUnitRows) * hidden + gu_begin;
  const T* gate_rows = w_gate + gu_row0;  // row 0 of this CTA's unit 0, its columns
  const T* up_rows = w_up + gu_row0;

  // ---- down work of this warp: whole 16-row tiles of its rank's columns, visited in an order rotated
  // by the cluster index (so the last arrivals, and the fix-ups, spread over the clusters)
  const int tiles_per_cta = kr / kMmaRows;
  const int my_tiles = warp < tiles_per_cta ? ceil_div(tiles_per_cta - warp, WARPS) : 0;
  const int items_per_tile = max(1, ceil_div(kc, kItemK));  // >= 1: a cluster without units still arrives
  const int items_d = my_tiles * items_per_tile;
  const int col_tiles = hidden / kMmaRows;
  auto tile_of = [&](int m) { return warp + WARPS * ((m + c) % my_tiles); };
  auto down_rows = [&](int m) {
    return w_down + static_cast<size_t>(k_begin + tile_of(m) * kMmaRows) * inter + k0;
  };

  // this cluster's partial of one down tile -> global, arrive; the last of the C arrivals fixes it up
  // (kDeferFixUp: notes it in `deferred`, bit m, and fixes up all of them after its last tile)
  unsigned deferred = 0;
  auto finish_tile = [&](int m, float (&acc)[BT][4]) {
    const int jt = rank * tiles_per_cta + tile_of(m);
    float* dst = partials + (static_cast<size_t>(c) * col_tiles + jt) * kMmaRows * batch;
#pragma unroll
    for (int bt = 0; bt < BT; ++bt) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int row = g + (i / 2) * kUnitRows, col = bt * kMmaCols + 2 * t + i % 2;
        if (col < batch) dst[row * batch + col] = acc[bt][i];
      }
    }
    zero(acc);
    __threadfence();  // release: the partial is visible before the arrival is
    __syncwarp();
    int old = 0;
    if (lane == 0) old = atomicAdd(counters + jt, 1);
    old = __shfl_sync(0xffffffffu, old, 0);
    if (old == clusters - 1) {
      if (kDefer && m < kMaxDeferredTiles) {
        deferred |= 1u << m;  // summed with the warp's other last arrivals after its last tile
      } else {
        fix_up_tile<T>(jt, partials, clusters, col_tiles, batch, hidden, x, out, counters, add_residual, lane);
      }
    }
  };
  // a unit's gate/up partial (or this warp's piece of it) -> smem; the first piece of a unit that began
  // in an earlier warp goes to this warp's head slot (added in warp order by the fold)
  auto flush_unit = [&](int u, bool head, float (&acc)[BT][4]) {
    float* dst = head ? head_s + warp * kMmaRows * kBp : part_s + u * kMmaRows * kBp;
    store_tile_smem<BT>(dst, acc, g, t, kBp);
    zero(acc);
  };

  // ---- 0. kEarlyX: x (and the norm weight) requested before any weight traffic is queued
  const int stats_col0 = kLocalStats ? 0 : k_begin;  // the statistics range: the row, or this CTA's k-slice
  const StatsShare<WARPS> share((kLocalStats ? hidden : kr) / kElemsPerLoad, warp, lane);
  uint4 x_first[kBp], w_first = make_uint4(0, 0, 0, 0);
  if constexpr (kEarly) {
    load_first_x<T, WARPS, kBp>(x_first, w_first, share, x, kNormFromRegs ? norm_w : nullptr, hidden, stats_col0,
                                batch);
  }

  unsigned ring = 0;
  if constexpr (kStaged) {
    // Staged: start streaming this warp's first gate/up slots now; the norm runs while they land.
    ring = smem_u32(smem + L.ring_offset) + warp * STAGES * kChunkBytes;
    int u = i_begin / items_per_unit, ci = i_begin % items_per_unit;
#pragma unroll
    for (int f = 0; f < STAGES - 1; ++f) {
      if (i_begin + f < i_end) {
        issue_chunk<T>(ring + f * kChunkBytes, gate_rows + u * unit_stride, up_rows + u * unit_stride, hidden,
                       ci * kChunkK, gu_range, lane);
        if (++ci == items_per_unit) ci = 0, ++u;
      }
      cp_async_commit();
    }
  } else {
    // Direct: warm L2 with this warp's first steps while the norm runs (each lane one row of the tile).
    if (i_begin < i_end && lane < kMmaRows) {
      const int u = i_begin / items_per_unit, s = i_begin % items_per_unit;
      const int steps = min(i_end - i_begin, min(items_per_unit - s, 2 * DEPTH));
      const T* base = (lane < kUnitRows ? gate_rows : up_rows) + u * unit_stride +
                      static_cast<size_t>(lane % kUnitRows) * hidden + s * kStepK;
      prefetch_l2(base, steps * kStepK * sizeof(T));
    }
  }

  // ---- 1. RMS statistics. Split-K: each CTA squares its own H/N columns, the cluster adds them in rank
  // order. Local: each CTA squares the whole row (same order in every CTA: the same bits everywhere).
  const int vecs_per_row = gu_range / kElemsPerLoad;  // the columns this CTA normalises
  if constexpr (kLocalStats) {
    row_sum_squares<T, WARPS, kBp, kEarly>(ss_warp, x_first, share, x, hidden, stats_col0, batch, warp, lane);
    __syncthreads();
    if (tid < batch) {
      float s = 0.f;
      for (int w = 0; w < WARPS; ++w) s += ss_warp[w * kMaxBatch + tid];
      rstd_s[tid] = rsqrtf(s / static_cast<float>(hidden) + eps);
    }
  } else {
    row_sum_squares<T, WARPS, kBp, kEarly>(ss_warp, x_first, share, x, hidden, stats_col0, batch, warp, lane);
    __syncthreads();
    if (tid < kMaxBatch) {
      float s = 0.f;
      for (int w = 0; w < WARPS && tid < batch; ++w) s += ss_warp[w * kMaxBatch + tid];
      ss_send[tid] = s;
    }
    cluster::cluster_reduce_sum<CLUSTER, kMaxBatch>(ss_send, ss_recv);
    if (tid < batch) rstd_s[tid] = rsqrtf(ss_recv[tid] / static_cast<float>(hidden) + eps);
  }
  __syncthreads();
  stamp(stamps, kPhaseStats);

  // ---- 2. n = rmsnorm(x) over this CTA's columns, rounded to T (as eager), into smem [batch][n_stride]
  if constexpr (kNormFromRegs) {
    // the statistics pass's vectors: the first from registers, any further ones (range > WARPS * 32
    // vectors) reloaded
    const float offset = norm_kind == kNormUnitOffset ? 1.f : 0.f;
    for (int v = share.v_first; v < share.v_end; v += kWarpSize) {
      const bool first = v == share.v_first;
      const uint4 w_raw = first ? w_first : load_early(norm_w + gu_begin + v * kElemsPerLoad);
#pragma unroll
      for (int b = 0; b < kBp; ++b) {
        if (b < batch) {
          const uint4 x_raw = first ? x_first[b] : load_early(x + static_cast<size_t>(b) * hidden + gu_begin + v * kElemsPerLoad);
          normalise_vec<T>(vec_s + b * L.n_stride + v * kElemsPerLoad, x_raw, w_raw, rstd_s[b], offset);
        }
      }
    }
  }
  for (int idx = tid; !kNormFromRegs && idx < batch * vecs_per_row; idx += kThreads) {
    const int b = idx / vecs_per_row, v = idx % vecs_per_row;
    float f[kElemsPerLoad], w[kElemsPerLoad];
    load_vec_f32(x + static_cast<size_t>(b) * hidden + gu_begin + v * kElemsPerLoad, f);
    load_vec_f32(norm_w + gu_begin + v * kElemsPerLoad, w);
    const float offset = norm_kind == kNormUnitOffset ? 1.f : 0.f;
#pragma unroll
    for (int e = 0; e < kElemsPerLoad; ++e) f[e] = (offset + w[e]) * (f[e] * rstd_s[b]);
    store_vec_f32(reinterpret_cast<T*>(vec_s) + b * L.n_stride + v * kElemsPerLoad, f);
  }
  if (tid < WARPS) head_unit[tid] = -1;
  __syncthreads();
  stamp(stamps, kPhaseNorm);

  // ---- 3. gate/up over this warp's items
  {
    float acc[BT][4];
    zero(acc);
    int u = i_begin / items_per_unit, s = i_begin % items_per_unit;
    bool in_head = s != 0 && i_begin < i_end;  // first piece continues a unit begun by an earlier warp
    if (in_head && lane == 0) head_unit[warp] = u;
    if constexpr (kStaged) {
      const unsigned n_vec = smem_u32(vec_s);
      int iu = u, ic = s;  // issue cursor, STAGES - 1 items ahead of the compute cursor
      for (int f = 0; f < STAGES - 1 && i_begin + f < i_end; ++f) {
        if (++ic == items_per_unit) ic = 0, ++iu;
      }
      for (int it = 0; it < i_end - i_begin; ++it) {
        cp_async_wait<STAGES - 2>();
        __syncwarp();
        const int col = s * kChunkK;
        mma_chunk<T, BT>(acc, ring + (it % STAGES) * kChunkBytes, n_vec, L.n_stride, col,
                         min(kChunkK, gu_range - col) / kMmaK, lane);
        if (s == items_per_unit - 1 || it == i_end - i_begin - 1) {
          flush_unit(u, in_head, acc);
          in_head = false;
        }
        if (++s == items_per_unit) s = 0, ++u;
        __syncwarp();  // every lane is done with the slot before it is refilled
        if (it + STAGES - 1 < i_end - i_begin) {
          issue_chunk<T>(ring + ((it + STAGES - 1) % STAGES) * kChunkBytes, gate_rows + iu * unit_stride,
                         up_rows + iu * unit_stride, hidden, ic * kChunkK, gu_range, lane);
          if (++ic == items_per_unit) ic = 0, ++iu;
        }
        cp_async_commit();
      }
      // Start the down projection's first slots now: they stream while the cluster exchanges h.
      cp_async_wait<0>();
      __syncwarp();
#pragma unroll
      for (int f = 0; f < STAGES - 1; ++f) {
        if (f < items_d) {
          const int m = f / items_per_tile, ci = f % items_per_tile;
          const T* rows = down_rows(m);
          issue_chunk<T>(ring + f * kChunkBytes, rows, rows + kUnitRows * static_cast<size_t>(inter), inter,
                         ci * kChunkK, kc, lane);
        }
        cp_async_commit();
      }
    } else {
      const size_t lane_off = static_cast<size_t>(g) * hidden + t * kElemsPerLoad;
      const bits16* n_base = vec_s + t * kElemsPerLoad;
      for (int remaining = i_end - i_begin; remaining > 0; remaining -= DEPTH) {
        uint4 lo[DEPTH], hi[DEPTH];
        {
          int uu = u, ss = s;
#pragma unroll
          for (int d = 0; d < DEPTH; ++d) {
            if (d < remaining) {
              const size_t off = uu * unit_stride + lane_off + ss * kStepK;
              lo[d] = load_weights(gate_rows + off);
              hi[d] = load_weights(up_rows + off);
              if (++ss == items_per_unit) ss = 0, ++uu;
            }
          }
        }
#pragma unroll
        for (int d = 0; d < DEPTH; ++d) {
          if (d < remaining) {
            uint4 b[BT];
            load_batch_frag<BT>(b, n_base + s * kStepK, L.n_stride, g, batch);
            mma::step<T, BT>(acc, lo[d], hi[d], b);
            if (s == items_per_unit - 1 || d == remaining - 1) {  // unit (or this warp's share) done
              flush_unit(u, in_head, acc);
              in_head = false;
            }
            if (++s == items_per_unit) s = 0, ++u;
          }
        }
      }
      // Warm L2 with this warp's first down-projection tile while the cluster exchanges h.
      if (my_tiles > 0 && kc > 0 && lane < kMmaRows) {
        prefetch_l2(down_rows(0) + static_cast<size_t>(lane) * inter, kc * sizeof(T));
      }
    }
  }
  __syncthreads();
  stamp(stamps, kPhaseGateUp);

  // ---- 4. fold units cut between warps: head pieces added after the unit's first piece, warp order
  for (int e = tid; e < kMmaRows * kBp; e += kThreads) {
    for (int w = 0; w < WARPS; ++w) {
      const int hu = head_unit[w];
      if (hu >= 0) part_s[hu * kMmaRows * kBp + e] += head_s[w * kMmaRows * kBp + e];
    }
  }
  if constexpr (kWhole) {
    __syncthreads();  // this CTA's partials are complete: nobody else reads them
  } else {
    cluster::sync();  // every rank's gate/up partials complete and visible
  }
  stamp(stamps, kPhaseFold);

  // ---- 5. h for the units this rank owns, activated. Whole units: its own [gu_unit0, +gu_units), from
  // its own partials. Split-K: u % N == rank, partials summed over the ranks in rank order.
  bits16* h_s = vec_s;  // n is dead: h[b][k] (k relative to the cluster's slice), stride h_stride
  if constexpr (kWhole) {
    for (int idx = tid; idx < gu_units * kUnitRows * batch; idx += kThreads) {
      const int b = idx % batch, row = (idx / batch) % kUnitRows, j = idx / (batch * kUnitRows);
      const float* tile = part_s + j * kMmaRows * kBp;
      const float gate = tile[row * kBp + b], up = tile[(row + kUnitRows) * kBp + b];
      reinterpret_cast<T*>(h_s)[b * L.h_stride + (gu_unit0 + j) * kUnitRows + row] =
          from_float<T>(activate(gate, activation) * up);
    }
  } else {
    const int owned = unit_count > rank ? ceil_div(unit_count - rank, CLUSTER) : 0;
    unsigned peer_part[CLUSTER];
#pragma unroll
    for (int q = 0; q < CLUSTER; ++q) peer_part[q] = cluster::peer_addr(part_s, q);
    for (int idx = tid; idx < owned * kUnitRows * batch; idx += kThreads) {
      const int b = idx % batch, row = (idx / batch) % kUnitRows, u = rank + CLUSTER * (idx / (batch * kUnitRows));
      const unsigned gate_off = ((u * kMmaRows + row) * kBp + b) * sizeof(float);
      const unsigned up_off = gate_off + kUnitRows * kBp * sizeof(float);
      float gate = 0.f, up = 0.f;
#pragma unroll
      for (int q = 0; q < CLUSTER; ++q) {
        gate += cluster::load(peer_part[q] + gate_off);
        up += cluster::load(peer_part[q] + up_off);
      }
      reinterpret_cast<T*>(h_s)[b * L.h_stride + u * kUnitRows + row] = from_float<T>(activate(gate, activation) * up);
    }
  }
  {
    // zero the k tail up to a whole item, so the last down item multiplies zeros
    const int kc_pad = max(1, ceil_div(kc, kItemK)) * kItemK;
    for (int idx = tid; idx < batch * (kc_pad - kc); idx += kThreads) {
      const int b = idx / (kc_pad - kc);
      h_s[b * L.h_stride + kc + idx % (kc_pad - kc)] = 0;
    }
  }
  cluster::sync();  // owned h slices visible; every peer is done reading our partials
  stamp(stamps, kPhaseH);

  // ---- 6. gather the h units owned by the other ranks (16 bytes = one unit of one batch row per load)
  {
    auto owner = [&](int u) {
      if constexpr (kWhole) {
        int q = 0;
#pragma unroll
        for (int r = 1; r < CLUSTER; ++r) q += rank_unit_begin(r) <= u ? 1 : 0;  // begins are sorted
        return q;
      } else {
        return u % CLUSTER;
      }
    };
    for (int idx = tid; idx < unit_count * batch; idx += kThreads) {
      const int u = idx / batch, b = idx % batch;
      const int q = owner(u);
      if (q == rank) continue;
      bits16* dst = h_s + b * L.h_stride + u * kUnitRows;
      const float4 v = cluster::load4(cluster::peer_addr(dst, q));
      *reinterpret_cast<float4*>(dst) = v;
    }
    __syncthreads();
    cluster::arrive();  // done reading peers; matched by the wait before exit
  }
  stamp(stamps, kPhaseGather);

  // ---- 7. down projection over this warp's tiles
  {
    float acc[BT][4];
    zero(acc);
    if constexpr (kStaged) {
      const unsigned h_vec = smem_u32(h_s);
      for (int it = 0; it < items_d; ++it) {
        cp_async_wait<STAGES - 2>();
        __syncwarp();
        const int m = it / items_per_tile, ci = it % items_per_tile;
        const int col = ci * kChunkK;
        mma_chunk<T, BT>(acc, ring + (it % STAGES) * kChunkBytes, h_vec, L.h_stride, col,
                         max(0, min(kChunkK, ceil_div(kc - col, kMmaK) * kMmaK)) / kMmaK, lane);
        __syncwarp();  // every lane is done with the slot before it is refilled
        const int next = it + STAGES - 1;
        if (next < items_d) {
          const int nm = next / items_per_tile, nc = next % items_per_tile;
          const T* rows = down_rows(nm);
          issue_chunk<T>(ring + (next % STAGES) * kChunkBytes, rows, rows + kUnitRows * static_cast<size_t>(inter),
                         inter, nc * kChunkK, kc, lane);
        }
        cp_async_commit();
        if (ci == items_per_tile - 1) finish_tile(m, acc);
      }
    } else {
      // A batch of DEPTH steps never crosses a tile, so the end of a tile (partial store, arrival, maybe
      // the fix-up) comes after the batch, when no loaded weights are held in registers.
      const bits16* h_base = h_s + t * kElemsPerLoad;
      const size_t half_tile = static_cast<size_t>(kUnitRows) * inter;
      for (int m = 0; m < my_tiles; ++m) {
        const T* p = down_rows(m) + static_cast<size_t>(g) * inter + t * kElemsPerLoad;
        for (int s0 = 0; s0 < items_per_tile; s0 += DEPTH) {
          const int count = min(DEPTH, items_per_tile - s0);
          uint4 lo[DEPTH], hi[DEPTH];
#pragma unroll
          for (int d = 0; d < DEPTH; ++d) {
            if (d < count) {
              const int k = (s0 + d) * kStepK;
              const bool live = k + t * kElemsPerLoad < kc;
              lo[d] = live ? load_weights(p + k) : make_uint4(0, 0, 0, 0);
              hi[d] = live ? load_weights(p + half_tile + k) : make_uint4(0, 0, 0, 0);
            }
          }
#pragma unroll
          for (int d = 0; d < DEPTH; ++d) {
            if (d < count) {
              uint4 b[BT];
              load_batch_frag<BT>(b, h_base + (s0 + d) * kStepK, L.h_stride, g, batch);
              mma::step<T, BT>(acc, lo[d], hi[d], b);
            }
          }
        }
        finish_tile(m, acc);
      }
    }
  }
  if constexpr (kDefer) {
    if (deferred != 0) {
      auto tile_index = [&](int m) { return rank * tiles_per_cta + tile_of(m); };
      fix_up_tiles<T>(deferred, tile_index, partials, clusters, col_tiles, batch, hidden, x, out, counters,
                      add_residual, lane);
    }
  }
  if constexpr (CF_FFN_PHASES != 0) __syncthreads();  // instrumented: the stamp marks the CTA's last tile
  stamp(stamps, kPhaseDown);
  cluster::wait();  // peers finished reading our h before our shared memory goes away
  stamp(stamps, kPhaseEnd);
}

}  // namespace ffn
}  // namespace cf

using cf::ffn::gated_ffn_kernel;
