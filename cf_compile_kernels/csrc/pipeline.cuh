// pipeline.cuh -- mbarrier and TMA (cp.async.bulk.tensor) stage helpers for sm_90.
//
// Usage pattern for a TMA stage (one elected thread issues, every consumer waits):
//   init:     if (tid == 0) { mbarrier_init(&bar, 1); fence_barrier_init(); }  __syncthreads();
//   produce:  if (tid == 0) { arrive_expect_tx(&bar, bytes); tma_load_2d(dst, &map, &bar, x, y); }
//   consume:  wait_parity(&bar, phase); ... phase ^= 1 when the stage's buffer is refilled.
// Generic-proxy writes to smem that a later TMA store (async proxy) reads need fence_proxy_async()
// in the writing threads before the barrier that precedes the store.
#pragma once

#include "common.cuh"

namespace cf {
namespace pipe {

/// @brief Initialise an mbarrier expecting `count` arrivals per phase.
__device__ __forceinline__ void mbarrier_init(unsigned long long* bar, unsigned count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_u32(bar)), "r"(count) : "memory");
}

/// @brief Make mbarrier initialisation visible to the async proxy and to the cluster.
__device__ __forceinline__ void fence_barrier_init() {
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
}

/// @brief Order this thread's generic-proxy smem writes before later async-proxy (TMA/bulk) accesses.
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;" ::: "memory"); }

/// @brief Arrive once and announce `bytes` of transaction that TMA will complete on this phase.
__device__ __forceinline__ void arrive_expect_tx(unsigned long long* bar, unsigned bytes) {
  asm volatile("mbarrier.arrive.expect_tx.release.cta.shared::cta.b64 _, [%0], %1;" ::"r"(smem_u32(bar)), "r"(bytes)
               : "memory");
}

/// @brief Plain arrival (no transaction bytes).
__device__ __forceinline__ void arrive(unsigned long long* bar) {
  asm volatile("mbarrier.arrive.release.cta.shared::cta.b64 _, [%0];" ::"r"(smem_u32(bar)) : "memory");
}

/// @brief True once the phase with parity `phase` has completed.
__device__ __forceinline__ bool try_wait_parity(unsigned long long* bar, unsigned phase) {
  unsigned done;
  asm volatile(
      "{\n .reg .pred p;\n mbarrier.try_wait.parity.acquire.cta.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}"
      : "=r"(done)
      : "r"(smem_u32(bar)), "r"(phase)
      : "memory");
  return done != 0;
}

/// @brief Block until the phase with parity `phase` has completed.
__device__ __forceinline__ void wait_parity(unsigned long long* bar, unsigned phase) {
  while (!try_wait_parity(bar, phase)) {
  }
}

/// @brief One bulk copy of `bytes` contiguous bytes from global to this CTA's shared memory, completing `bytes` of
/// transaction on `bar` (announce them first with arrive_expect_tx). `bytes` a multiple of 16, both addresses
/// 16-byte aligned. No tensor map: for ranges that are contiguous in global memory (a run of cache rows).
__device__ __forceinline__ void bulk_load(void* dst, const void* src, unsigned bytes, unsigned long long* bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
               ::"r"(smem_u32(dst)), "l"(src), "r"(bytes), "r"(smem_u32(bar))
               : "memory");
}

/// @brief Prefetch a tensor map (a __grid_constant__ parameter) into the descriptor cache.
__device__ __forceinline__ void prefetch_tensor_map(const CUtensorMap* map) {
  asm volatile("prefetch.tensormap [%0];" ::"l"(reinterpret_cast<unsigned long long>(map)) : "memory");
}

/// @brief TMA load of one 2-D box at (x = inner coordinate, y = outer) into smem, completing on `bar`.
__device__ __forceinline__ void tma_load_2d(void* dst, const CUtensorMap* map, unsigned long long* bar, int x, int y) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4}], [%2];" ::"r"(
          smem_u32(dst)),
      "l"(reinterpret_cast<unsigned long long>(map)), "r"(smem_u32(bar)), "r"(x), "r"(y)
      : "memory");
}

/// @brief TMA load of one 3-D box at (x inner, y, z outer).
__device__ __forceinline__ void tma_load_3d(void* dst, const CUtensorMap* map, unsigned long long* bar, int x, int y,
                                            int z) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, %5}], "
      "[%2];" ::"r"(smem_u32(dst)),
      "l"(reinterpret_cast<unsigned long long>(map)), "r"(smem_u32(bar)), "r"(x), "r"(y), "r"(z)
      : "memory");
}

/// @brief TMA store of one 2-D box from smem (call fence_proxy_async() + a barrier after writing src).
__device__ __forceinline__ void tma_store_2d(const CUtensorMap* map, const void* src, int x, int y) {
  asm volatile("cp.async.bulk.tensor.2d.global.shared::cta.tile.bulk_group [%0, {%2, %3}], [%1];" ::"l"(
                   reinterpret_cast<unsigned long long>(map)),
               "r"(smem_u32(src)), "r"(x), "r"(y)
               : "memory");
}

/// @brief Commit outstanding TMA stores and wait until their smem sources may be reused.
__device__ __forceinline__ void tma_store_wait_read() {
  asm volatile("cp.async.bulk.commit_group;\n cp.async.bulk.wait_group.read 0;" ::: "memory");
}

/// @brief Commit outstanding TMA stores and wait until they are complete in global memory.
__device__ __forceinline__ void tma_store_wait_all() {
  asm volatile("cp.async.bulk.commit_group;\n cp.async.bulk.wait_group 0;" ::: "memory");
}

}  // namespace pipe
}  // namespace cf
