// collectives_test.cu -- kernels that exercise cluster.cuh and pipeline.cuh on their own, for the GPU
// tests (tests/gpu/) and the DSMEM microbenchmark (benchmarks/dsmem.py). Not used by the model path.
//
// Grid layout of the collective kernels: 1-D, cluster (N, 1, 1); CTA b = cluster c * N + rank r
// handles row b of the [num_ctas, len] input.
#include "cluster.cuh"
#include "pipeline.cuh"

namespace cf_test {

enum Collective : int { kOpSum = 0, kOpMax = 1, kOpGather = 2 };

/// @brief Float offset rounded up to a whole 16-byte vector, so every smem buffer is 16-byte aligned.
__host__ __device__ constexpr int aligned_floats(int n) { return cf::ceil_div(n, 4) * 4; }

template <int OP>
struct CombineFor {
  using type = cf::cluster::Sum;
};
template <>
struct CombineFor<kOpMax> {
  using type = cf::cluster::Max;
};
template <int OP>
using CombineOp = typename CombineFor<OP>::type;

/// @brief The same exchange as cluster.cuh, but through global memory (the benchmark's baseline):
/// store the contribution to `exchange`, cluster barrier, read the peers' rows (L2, bypassing L1)
/// in rank order, cluster barrier before `exchange` is reused.
template <int N, int LEN, int OP>
__device__ void global_exchange(const float* send, float* recv, float* exchange) {
  const int cta = blockIdx.x;
  const int first = cta - static_cast<int>(cf::cluster::rank());
  for (int i = threadIdx.x; i < LEN; i += blockDim.x) __stcg(exchange + cta * LEN + i, send[i]);
  cf::cluster::sync();
  for (int i = threadIdx.x; i < LEN; i += blockDim.x) {
    float part[N];
#pragma unroll
    for (int r = 0; r < N; ++r) part[r] = __ldcg(exchange + (first + r) * LEN + i);
    if constexpr (OP == kOpGather) {
#pragma unroll
      for (int r = 0; r < N; ++r) recv[r * LEN + i] = part[r];
    } else {
      float acc = part[0];
#pragma unroll
      for (int r = 1; r < N; ++r) acc = CombineOp<OP>::apply(acc, part[r]);
      recv[i] = acc;
    }
  }
  cf::cluster::sync();
}

}  // namespace cf_test

/// @brief out[b] = collective over the cluster of in[b] (sum, max: LEN floats; gather: N * LEN).
/// Runs the collective `iters` times (benchmark); smem: aligned(LEN) + out-length floats.
template <int N, int LEN, int OP, bool kGlobal>
__global__ void collective_test_kernel(const float* __restrict__ in, float* __restrict__ out, float* exchange,
                                       int iters) {
  using namespace cf_test;
  constexpr int kOutLen = OP == kOpGather ? N * LEN : LEN;
  extern __shared__ __align__(16) float smem[];
  float* send = smem;
  float* recv = smem + aligned_floats(LEN);
  const int cta = blockIdx.x;
  for (int i = threadIdx.x; i < LEN; i += blockDim.x) send[i] = in[cta * LEN + i];
  for (int it = 0; it < iters; ++it) {
    if constexpr (kGlobal) {
      global_exchange<N, LEN, OP>(send, recv, exchange);
    } else if constexpr (OP == kOpGather) {
      cf::cluster::cluster_gather<N, LEN>(send, recv);
    } else if constexpr (OP == kOpMax) {
      cf::cluster::cluster_reduce_max<N, LEN>(send, recv);
    } else {
      static_assert(OP == kOpSum, "unknown collective");
      cf::cluster::cluster_reduce_sum<N, LEN>(send, recv);
    }
  }
  if (iters == 0) __syncthreads();
  for (int i = threadIdx.x; i < kOutLen; i += blockDim.x) out[cta * kOutLen + i] = recv[i];
}

/// @brief Online-softmax merge of per-CTA (m, l, o) partials; o_out [ctas, ROWS, D], ml_out [ctas, 2*ROWS].
/// The send tail is used with Tail::kArriveOnly to exercise the deferred-wait path.
template <int N, int ROWS, int D, bool kLog2>
__global__ void merge_softmax_test_kernel(const float* __restrict__ o_in, const float* __restrict__ m_in,
                                          const float* __restrict__ l_in, float* __restrict__ o_out,
                                          float* __restrict__ ml_out, int normalize) {
  using namespace cf_test;
  constexpr int kSend = cf::cluster::kMergeSendFloats<ROWS, D>;
  extern __shared__ __align__(16) float smem[];
  float* send = smem;
  float* recv_o = send + aligned_floats(kSend);
  float* recv_ml = recv_o + aligned_floats(ROWS * D);
  float* scratch = recv_ml + aligned_floats(2 * ROWS);
  const int cta = blockIdx.x;
  for (int i = threadIdx.x; i < ROWS * D; i += blockDim.x) send[i] = o_in[cta * ROWS * D + i];
  for (int j = threadIdx.x; j < ROWS; j += blockDim.x) {
    send[ROWS * D + j] = m_in[cta * ROWS + j];
    send[ROWS * D + ROWS + j] = l_in[cta * ROWS + j];
  }
  cf::cluster::cluster_merge_softmax<N, ROWS, D, kLog2>(send, recv_o, recv_ml, scratch, normalize != 0,
                                                        cf::cluster::Tail::kArriveOnly);
  cf::cluster::wait();  // required after kArriveOnly before reading other threads' results / exiting
  for (int i = threadIdx.x; i < ROWS * D; i += blockDim.x) o_out[cta * ROWS * D + i] = recv_o[i];
  for (int j = threadIdx.x; j < 2 * ROWS; j += blockDim.x) ml_out[cta * 2 * ROWS + j] = recv_ml[j];
}

/// @brief Copies a [rows, cols] tensor tile by tile through TMA: CTA (x, y) loads the box at column
/// x * BOX_COLS, row y * BOX_ROWS into smem and writes its in-bounds part to dst. With kSwizzle128
/// (inner box row exactly 128 bytes) the smem tile is read back through the 128B swizzle pattern.
template <typename T, int BOX_ROWS, int BOX_COLS, bool kSwizzle128>
__global__ void tma_copy_2d_kernel(const __grid_constant__ CUtensorMap src, T* __restrict__ dst, int rows, int cols) {
  constexpr int kRowBytes = BOX_COLS * static_cast<int>(sizeof(T));
  constexpr int kSwizzleBytes = 128;       // span of one swizzled row
  constexpr int kSwizzleUnit = 16;         // bytes permuted as a unit
  constexpr int kSwizzleRows = 8;          // rows after which the pattern repeats
  constexpr int kSwizzleAlign = 1024;      // smem alignment TMA needs for the 128B pattern
  static_assert(!kSwizzle128 || kRowBytes == kSwizzleBytes, "128B swizzle test needs 128-byte box rows");
  __shared__ __align__(kSwizzleAlign) unsigned char tile[BOX_ROWS * kRowBytes];
  __shared__ __align__(8) unsigned long long bar;
  if (threadIdx.x == 0) {
    cf::pipe::prefetch_tensor_map(&src);
    cf::pipe::mbarrier_init(&bar, 1);
    cf::pipe::fence_barrier_init();
  }
  __syncthreads();
  const int x0 = blockIdx.x * BOX_COLS;
  const int y0 = blockIdx.y * BOX_ROWS;
  if (threadIdx.x == 0) {
    cf::pipe::arrive_expect_tx(&bar, sizeof(tile));  // out-of-bounds parts are zero-filled and still counted
    cf::pipe::tma_load_2d(tile, &src, &bar, x0, y0);
  }
  cf::pipe::wait_parity(&bar, 0);
  for (int i = threadIdx.x; i < BOX_ROWS * BOX_COLS; i += blockDim.x) {
    const int r = i / BOX_COLS;
    const int c = i % BOX_COLS;
    int byte = r * kRowBytes + c * static_cast<int>(sizeof(T));
    if constexpr (kSwizzle128) {
      const int unit = (byte % kSwizzleBytes) / kSwizzleUnit;
      byte = r * kRowBytes + ((unit ^ (r % kSwizzleRows)) * kSwizzleUnit) + byte % kSwizzleUnit;
    }
    if (y0 + r < rows && x0 + c < cols) dst[(y0 + r) * cols + (x0 + c)] = *reinterpret_cast<const T*>(tile + byte);
  }
}

/// @brief 3-D TMA copy: CTA (x, y, z) moves the box at (x * BX, y * BY, z * BZ) of a [d0, d1, d2] tensor.
template <typename T, int BZ, int BY, int BX>
__global__ void tma_copy_3d_kernel(const __grid_constant__ CUtensorMap src, T* __restrict__ dst, int d0, int d1,
                                   int d2) {
  __shared__ __align__(128) T tile[BZ * BY * BX];
  __shared__ __align__(8) unsigned long long bar;
  if (threadIdx.x == 0) {
    cf::pipe::mbarrier_init(&bar, 1);
    cf::pipe::fence_barrier_init();
  }
  __syncthreads();
  const int x0 = blockIdx.x * BX, y0 = blockIdx.y * BY, z0 = blockIdx.z * BZ;
  if (threadIdx.x == 0) {
    cf::pipe::arrive_expect_tx(&bar, sizeof(tile));
    cf::pipe::tma_load_3d(tile, &src, &bar, x0, y0, z0);
  }
  cf::pipe::wait_parity(&bar, 0);
  for (int i = threadIdx.x; i < BZ * BY * BX; i += blockDim.x) {
    const int z = i / (BY * BX), y = (i / BX) % BY, x = i % BX;
    if (z0 + z < d0 && y0 + y < d1 && x0 + x < d2) dst[((z0 + z) * d1 + (y0 + y)) * d2 + (x0 + x)] = tile[i];
  }
}

/// @brief Writes 1.0f to out[i] for i < n: the launch-overhead probe of the GPU tests.
extern "C" __global__ void fill_ones_kernel(float* out, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = 1.0f;
}
