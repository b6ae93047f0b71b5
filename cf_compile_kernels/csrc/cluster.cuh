// cluster.cuh -- deterministic fp32 collectives over distributed shared memory (DSMEM).
//
// Every function here is called by ALL threads of ALL CTAs of the cluster (the cluster barrier is
// `.aligned`), with 1-D thread indexing (threadIdx.x / blockDim.x), cluster size N in 1..16 (any
// size, powers of two or not; more than 8 needs NON_PORTABLE_CLUSTER_SIZE_ALLOWED, which
// LoadedKernel.launch sets). N must equal the launched cluster size: checked, it traps otherwise.
//
// Protocol (simplest correct one; two cluster-barrier phases per call):
//   phase A  "publish": each CTA has written its contribution into `send` (its own smem) with
//            ordinary stores; every thread does barrier.cluster.arrive.release + wait.acquire,
//            after which every CTA's `send` is visible to the whole cluster.
//   read     each thread reads its share of elements from every rank through mapa +
//            ld.shared::cluster, in rank order 0..N-1, and writes the result into `recv`.
//            The combine order is fixed, so all CTAs hold bitwise-identical results, run after run.
//   phase B  "release": arrive.release (+ wait.acquire), so that no CTA overwrites its `send` --
//            or exits, which frees its smem -- while a peer may still be reading it.
//
// Buffer rules:
//   * `send` and `recv` are separate buffers (`recv` is written while peers read `send`).
//   * `send` lives in this CTA's shared memory; `recv` may be shared or global memory.
//   * with len % 4 == 0 (for merge: D % 4 == 0) the accesses are 16-byte vectors: `send` and
//     `recv` must then be 16-byte aligned.
//   * Tail::kSync (default): the call ends with arrive + wait; afterwards `send` may be reused and
//     `recv` read by any thread of the CTA.
//   * Tail::kArriveOnly: the call ends with arrive only, so independent work can overlap peers'
//     reads. The caller MUST call cluster::wait() (exactly once) before writing `send` again,
//     before reading `recv` elements written by other threads, before the next collective, and
//     before the CTA exits.
// No async proxy is involved (only generic ld/st.shared::cluster), so no fence.proxy.async is
// needed here; a bulk-copy (cp.async.bulk) variant would need one before its copies.
#pragma once

#include "common.cuh"

namespace cf {
namespace cluster {

constexpr int kMaxSize = 16;          // hardware limit of CTAs per cluster on sm_90
constexpr int kMaxPortableSize = 8;   // above this the kernel needs the non-portable attribute
constexpr int kFloatsPerVector = 4;   // one 16-byte ld.shared::cluster.v4.f32

/// @brief How a collective ends (see the buffer rules above).
enum class Tail { kSync, kArriveOnly };

/// @brief This CTA's rank in its cluster.
__device__ __forceinline__ unsigned rank() {
  unsigned r;
  asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
  return r;
}

/// @brief Number of CTAs in this cluster.
__device__ __forceinline__ unsigned num_ctas() {
  unsigned n;
  asm volatile("mov.u32 %0, %%cluster_nctarank;" : "=r"(n));
  return n;
}

/// @brief Arrive on the cluster barrier, releasing this thread's prior memory accesses.
__device__ __forceinline__ void arrive() { asm volatile("barrier.cluster.arrive.release.aligned;" ::: "memory"); }

/// @brief Wait for the cluster barrier phase, acquiring every arrived thread's accesses.
__device__ __forceinline__ void wait() { asm volatile("barrier.cluster.wait.acquire.aligned;" ::: "memory"); }

/// @brief Full cluster barrier (arrive + wait).
__device__ __forceinline__ void sync() {
  arrive();
  wait();
}

/// @brief shared::cluster address of the object at `local` (this CTA's smem) in CTA `peer`.
__device__ __forceinline__ unsigned peer_addr(const void* local, unsigned peer) {
  unsigned out;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(out) : "r"(smem_u32(local)), "r"(peer));
  return out;
}

/// @brief Load one float from a shared::cluster address.
__device__ __forceinline__ float load(unsigned addr) {
  float v;
  asm volatile("ld.shared::cluster.f32 %0, [%1];" : "=f"(v) : "r"(addr) : "memory");
  return v;
}

/// @brief Load four floats (16-byte aligned) from a shared::cluster address.
__device__ __forceinline__ float4 load4(unsigned addr) {
  float4 v;
  asm volatile("ld.shared::cluster.v4.f32 {%0, %1, %2, %3}, [%4];"
               : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w)
               : "r"(addr)
               : "memory");
  return v;
}

/// @brief Combine operators (fp32). Max uses fmaxf: a NaN operand is ignored, not propagated.
struct Sum {
  __device__ __forceinline__ static float apply(float a, float b) { return a + b; }
};
struct Max {
  __device__ __forceinline__ static float apply(float a, float b) { return fmaxf(a, b); }
};

/// @brief Floats of the `send` buffer of cluster_merge_softmax: o [rows*d], then m [rows], l [rows].
template <int ROWS, int D>
constexpr int kMergeSendFloats = ROWS * D + 2 * ROWS;

namespace detail {

template <int N>
__device__ __forceinline__ void check_size() {
  static_assert(N >= 1 && N <= kMaxSize, "cluster size must be in 1..16");
  if (num_ctas() != static_cast<unsigned>(N)) __trap();  // template N must match the launch
}

template <int N>
__device__ __forceinline__ void map_ranks(const void* local, unsigned (&base)[N]) {
#pragma unroll
  for (int r = 0; r < N; ++r) base[r] = peer_addr(local, r);
}

template <class Op>
__device__ __forceinline__ float4 apply4(float4 a, float4 b) {
  return make_float4(Op::apply(a.x, b.x), Op::apply(a.y, b.y), Op::apply(a.z, b.z), Op::apply(a.w, b.w));
}

__device__ __forceinline__ void finish(Tail tail) {
  if (tail == Tail::kSync) {
    sync();
  } else {
    arrive();
  }
}

}  // namespace detail

/// @brief recv[i] = Op(send_0[i], send_1[i], ..., send_{N-1}[i]) for i < LEN, combined in rank order.
/// @param send this CTA's contribution (LEN floats, own smem, written before the call)
/// @param recv result (LEN floats), not aliasing send
template <int N, int LEN, class Op>
__device__ __forceinline__ void reduce(const float* send, float* recv, Tail tail = Tail::kSync) {
  static_assert(LEN > 0, "empty reduction");
  detail::check_size<N>();
  unsigned base[N];
  detail::map_ranks<N>(send, base);
  sync();  // phase A: all contributions published
  if constexpr (LEN % kFloatsPerVector == 0) {
    constexpr int kVecs = LEN / kFloatsPerVector;
    for (int v = threadIdx.x; v < kVecs; v += blockDim.x) {
      const unsigned offset = v * kFloatsPerVector * sizeof(float);
      float4 part[N];
#pragma unroll
      for (int r = 0; r < N; ++r) part[r] = load4(base[r] + offset);  // N loads in flight
      float4 acc = part[0];
#pragma unroll
      for (int r = 1; r < N; ++r) acc = detail::apply4<Op>(acc, part[r]);
      reinterpret_cast<float4*>(recv)[v] = acc;
    }
  } else {
    for (int i = threadIdx.x; i < LEN; i += blockDim.x) {
      const unsigned offset = i * sizeof(float);
      float part[N];
#pragma unroll
      for (int r = 0; r < N; ++r) part[r] = load(base[r] + offset);
      float acc = part[0];
#pragma unroll
      for (int r = 1; r < N; ++r) acc = Op::apply(acc, part[r]);
      recv[i] = acc;
    }
  }
  detail::finish(tail);  // phase B
}

/// @brief Cluster all-reduce sum of LEN floats; every CTA gets the same bits.
template <int N, int LEN>
__device__ __forceinline__ void cluster_reduce_sum(const float* send, float* recv, Tail tail = Tail::kSync) {
  reduce<N, LEN, Sum>(send, recv, tail);
}

/// @brief Cluster all-reduce max of LEN floats.
template <int N, int LEN>
__device__ __forceinline__ void cluster_reduce_max(const float* send, float* recv, Tail tail = Tail::kSync) {
  reduce<N, LEN, Max>(send, recv, tail);
}

/// @brief All-gather: recv[r * LEN + i] = send_r[i] for every rank r (recv holds N * LEN floats).
template <int N, int LEN>
__device__ __forceinline__ void cluster_gather(const float* send, float* recv, Tail tail = Tail::kSync) {
  static_assert(LEN > 0, "empty gather");
  detail::check_size<N>();
  unsigned base[N];
  detail::map_ranks<N>(send, base);
  sync();  // phase A
  if constexpr (LEN % kFloatsPerVector == 0) {
    constexpr int kVecs = LEN / kFloatsPerVector;
    for (int v = threadIdx.x; v < kVecs; v += blockDim.x) {
      const unsigned offset = v * kFloatsPerVector * sizeof(float);
      float4 part[N];
#pragma unroll
      for (int r = 0; r < N; ++r) part[r] = load4(base[r] + offset);
#pragma unroll
      for (int r = 0; r < N; ++r) reinterpret_cast<float4*>(recv + r * LEN)[v] = part[r];
    }
  } else {
    for (int i = threadIdx.x; i < LEN; i += blockDim.x) {
      float part[N];
#pragma unroll
      for (int r = 0; r < N; ++r) part[r] = load(base[r] + i * sizeof(float));
#pragma unroll
      for (int r = 0; r < N; ++r) recv[r * LEN + i] = part[r];
    }
  }
  detail::finish(tail);  // phase B
}

/// @brief Merge per-CTA online-softmax partials (m, l, o) of ROWS rows of width D.
///
/// Per CTA r and row j: m_r[j] running max of the logits (-inf when the CTA saw none), l_r[j] =
/// sum exp(s - m_r[j]), o_r[j][:] = sum exp(s - m_r[j]) * v (unnormalised). Result, identical in
/// every CTA: M = max_r m_r, c_r = exp(m_r - M) (0 when m_r = -inf), L = sum_r c_r l_r,
/// O = sum_r c_r o_r (rank order), divided by L when `normalize` (0 where L == 0).
/// With kLog2 the logits are in log2 units and exp2 is used.
/// @param send   kMergeSendFloats<ROWS, D> floats: o [ROWS * D], then m [ROWS], then l [ROWS]
/// @param recv_o ROWS * D floats; @param recv_ml 2 * ROWS floats: M then L
/// @param scratch ROWS * N floats of this CTA's smem (the per-rank scales)
template <int N, int ROWS, int D, bool kLog2 = false>
__device__ __forceinline__ void cluster_merge_softmax(const float* send, float* recv_o, float* recv_ml,
                                                      float* scratch, bool normalize, Tail tail = Tail::kSync) {
  static_assert(ROWS > 0 && D > 0, "empty merge");
  detail::check_size<N>();
  constexpr int kM = ROWS * D;  // offsets inside send
  constexpr int kL = kM + ROWS;
  unsigned base[N];
  detail::map_ranks<N>(send, base);
  sync();  // phase A
  for (int j = threadIdx.x; j < ROWS; j += blockDim.x) {
    float m[N], l[N];
#pragma unroll
    for (int r = 0; r < N; ++r) {
      m[r] = load(base[r] + (kM + j) * sizeof(float));
      l[r] = load(base[r] + (kL + j) * sizeof(float));
    }
    float big = m[0];
#pragma unroll
    for (int r = 1; r < N; ++r) big = fmaxf(big, m[r]);
    float total = 0.0f;
#pragma unroll
    for (int r = 0; r < N; ++r) {
      const float c = (m[r] == neg_inf()) ? 0.0f : (kLog2 ? exp2f(m[r] - big) : expf(m[r] - big));
      scratch[j * N + r] = c;
      total = fmaf(c, l[r], total);
    }
    recv_ml[j] = big;
    recv_ml[ROWS + j] = total;
  }
  __syncthreads();  // scales and L visible to every thread of this CTA
  if constexpr (D % kFloatsPerVector == 0) {
    constexpr int kVecsPerRow = D / kFloatsPerVector;
    for (int v = threadIdx.x; v < ROWS * kVecsPerRow; v += blockDim.x) {
      const int j = v / kVecsPerRow;
      const unsigned offset = v * kFloatsPerVector * sizeof(float);
      float4 part[N];
#pragma unroll
      for (int r = 0; r < N; ++r) part[r] = load4(base[r] + offset);
      float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
      for (int r = 0; r < N; ++r) {
        const float c = scratch[j * N + r];
        acc = make_float4(fmaf(c, part[r].x, acc.x), fmaf(c, part[r].y, acc.y), fmaf(c, part[r].z, acc.z),
                          fmaf(c, part[r].w, acc.w));
      }
      if (normalize) {
        const float total = recv_ml[ROWS + j];
        const float inv = total > 0.0f ? 1.0f / total : 0.0f;
        acc = make_float4(acc.x * inv, acc.y * inv, acc.z * inv, acc.w * inv);
      }
      reinterpret_cast<float4*>(recv_o)[v] = acc;
    }
  } else {
    for (int i = threadIdx.x; i < ROWS * D; i += blockDim.x) {
      const int j = i / D;
      float part[N];
#pragma unroll
      for (int r = 0; r < N; ++r) part[r] = load(base[r] + i * sizeof(float));
      float acc = 0.0f;
#pragma unroll
      for (int r = 0; r < N; ++r) acc = fmaf(scratch[j * N + r], part[r], acc);
      if (normalize) {
        const float total = recv_ml[ROWS + j];
        acc = total > 0.0f ? acc / total : 0.0f;
      }
      recv_o[i] = acc;
    }
  }
  detail::finish(tail);  // phase B
}

}  // namespace cluster
}  // namespace cf
