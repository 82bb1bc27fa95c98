// CUDA side of the 4-bit weights (quant/quant4_cuda.h): dequantization, the double-quantized
// block scales, a cuBLASLt GEMM, and a fused dequantize-and-multiply kernel for small batches.
// Products and sums that the CPU oracle (quant4.cpp) rounds one by one use the _rn intrinsics, so
// nvcc cannot contract them into FMAs and the values stay bit-identical to it.
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <climits>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <utility>

#include "kernels/cuda_common.cuh"
#include "quant/quant4_cuda.h"

namespace llmtrain::quant::detail {
namespace {

using ::llmtrain::kernels::cuda::Dequant16;
using ::llmtrain::kernels::cuda::FromFloat;
using ::llmtrain::kernels::cuda::GridFor;
using ::llmtrain::kernels::cuda::LastError;
using ::llmtrain::kernels::cuda::Log2Exact;
using ::llmtrain::kernels::cuda::Pack2;


std::string CudaText(cudaError_t err) { return err == cudaSuccess ? "" : cudaGetErrorString(err); }

// ---------------------------------------------------------------------------------------------
// Double-quantized scales: one thread per block scale.

__global__ void DequantScalesKernel(const uint8_t* __restrict__ q, const float* __restrict__ code,
                                    const float* __restrict__ nested, float offset, int64_t n,
                                    int64_t nested_blocksize, float* __restrict__ out) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const float scale = __fmul_rn(__ldg(code + q[i]), __ldg(nested + i / nested_blocksize));
    out[i] = __fadd_rn(scale, offset);
  }
}

// ---------------------------------------------------------------------------------------------
// cuBLASLt GEMM.

std::string LtText(const char* what, cublasStatus_t status) {
  return std::string(what) + ": " + cublasLtGetStatusString(status);
}

// The largest power of two (up to 256) dividing the address: what the heuristic may assume.
uint32_t Alignment(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  uint32_t align = 256;
  while (align > 1 && a % align != 0) align /= 2;
  return align;
}

// A matmul descriptor, the three layouts and the heuristic's algorithm for one problem; built
// once and only read afterwards, so concurrent calls may share it.
struct LtPlan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
};

using PlanKey = std::tuple<int /*device*/, int /*dtype*/, bool /*w_transposed*/, int64_t, int64_t, int64_t,
                           bool /*beta != 0*/, uint32_t, uint32_t, uint32_t /*alignments of x, w, y*/>;

// Never destroyed: the handles and workspaces would otherwise be freed at exit after the CUDA
// runtime may already have torn down, and a plan's lifetime must cover every call using it.
struct LtCache {
  std::mutex mu;
  std::map<int, cublasLtHandle_t> handles;
  std::map<std::pair<int, cudaStream_t>, std::pair<void*, size_t>> workspaces;
  std::map<PlanKey, std::unique_ptr<LtPlan>> plans;
};

LtCache& Cache() {
  static LtCache* cache = new LtCache;
  return *cache;
}

// Under cache.mu: the plan of `key`, built on first use. The problem is posed in cuBLASLt's
// column-major terms: row-major y(m, n) is column-major yᵀ (n × m), so yᵀ = op(w) · xᵀ with xᵀ the
// column-major view (k × m) of row-major x, and op(w) (n × k) the transpose of the column-major
// view (k × n) of w(n, k), or directly the column-major view of w(k, n).
std::string BuildPlan(cublasLtHandle_t handle, const PlanKey& key, size_t workspace_bytes, LtPlan* plan) {
  const auto [device, dtype, w_transposed, m, n, k, accumulate, align_x, align_w, align_y] = key;
  (void)device;
  (void)accumulate;
  const cudaDataType_t type = dtype == kCudaBf16 ? CUDA_R_16BF : dtype == kCudaF16 ? CUDA_R_16F : CUDA_R_32F;
  cublasStatus_t st = cublasLtMatmulDescCreate(&plan->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F);
  if (st != CUBLAS_STATUS_SUCCESS) return LtText("cublasLtMatmulDescCreate", st);
  const cublasOperation_t trans_a = w_transposed ? CUBLAS_OP_T : CUBLAS_OP_N, trans_b = CUBLAS_OP_N;
  st = cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSA, &trans_a, sizeof(trans_a));
  if (st == CUBLAS_STATUS_SUCCESS) {
    st = cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSB, &trans_b, sizeof(trans_b));
  }
  if (st != CUBLAS_STATUS_SUCCESS) return LtText("cublasLtMatmulDescSetAttribute", st);
  const auto u = [](int64_t v) { return static_cast<uint64_t>(v); };
  st = w_transposed ? cublasLtMatrixLayoutCreate(&plan->a, type, u(k), u(n), k)
                    : cublasLtMatrixLayoutCreate(&plan->a, type, u(n), u(k), n);
  if (st == CUBLAS_STATUS_SUCCESS) st = cublasLtMatrixLayoutCreate(&plan->b, type, u(k), u(m), k);
  if (st == CUBLAS_STATUS_SUCCESS) st = cublasLtMatrixLayoutCreate(&plan->c, type, u(n), u(m), n);
  if (st != CUBLAS_STATUS_SUCCESS) return LtText("cublasLtMatrixLayoutCreate", st);

  cublasLtMatmulPreference_t pref = nullptr;
  st = cublasLtMatmulPreferenceCreate(&pref);
  if (st != CUBLAS_STATUS_SUCCESS) return LtText("cublasLtMatmulPreferenceCreate", st);
  // The heuristic assumes 256-byte aligned buffers unless told otherwise; a slice of a tensor
  // may be less aligned, and an algorithm relying on more would read wrongly or fail.
  const uint64_t ws = workspace_bytes;
  const std::pair<cublasLtMatmulPreferenceAttributes_t, uint32_t> aligns[] = {
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, align_w},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, align_x},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, align_y},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, align_y}};
  st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
  for (const auto& [attr, value] : aligns) {
    if (st == CUBLAS_STATUS_SUCCESS) st = cublasLtMatmulPreferenceSetAttribute(pref, attr, &value, sizeof(value));
  }
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  if (st == CUBLAS_STATUS_SUCCESS) {
    st = cublasLtMatmulAlgoGetHeuristic(handle, plan->desc, plan->a, plan->b, plan->c, plan->c, pref, 1, &result,
                                        &found);
  }
  cublasLtMatmulPreferenceDestroy(pref);
  if (st != CUBLAS_STATUS_SUCCESS) return LtText("cublasLtMatmulAlgoGetHeuristic", st);
  if (found == 0) return "cublasLtMatmulAlgoGetHeuristic: no algorithm for this GEMM";
  plan->algo = result.algo;
  return "";
}

void DestroyPlan(LtPlan* plan) {
  if (plan->c) cublasLtMatrixLayoutDestroy(plan->c);
  if (plan->b) cublasLtMatrixLayoutDestroy(plan->b);
  if (plan->a) cublasLtMatrixLayoutDestroy(plan->a);
  if (plan->desc) cublasLtMatmulDescDestroy(plan->desc);
}

// y = beta · y for k == 0, where cuBLASLt has nothing to multiply.
template <typename T>
__global__ void ScaleKernel(T* y, int64_t count, float beta) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += stride) {
    y[i] = FromFloat<T>(__fmul_rn(beta, static_cast<float>(y[i])));
  }
}

std::string ScaleOutput(void* y, int64_t count, int dtype, float beta, cudaStream_t stream) {
  const size_t elem = dtype == kCudaF32 ? 4 : 2;
  if (beta == 0.0f) return CudaText(cudaMemsetAsync(y, 0, static_cast<size_t>(count) * elem, stream));
  const unsigned grid = GridFor(count, 256);
  switch (dtype) {
    case kCudaF32: ScaleKernel<float><<<grid, 256, 0, stream>>>(static_cast<float*>(y), count, beta); break;
    case kCudaBf16:
      ScaleKernel<__nv_bfloat16><<<grid, 256, 0, stream>>>(static_cast<__nv_bfloat16*>(y), count, beta);
      break;
    default: ScaleKernel<__half><<<grid, 256, 0, stream>>>(static_cast<__half*>(y), count, beta); break;
  }
  return LastError();
}

// ---------------------------------------------------------------------------------------------
// Fused 4-bit GEMM for small M.
//
// A block of 4 warps owns a (16·MF) × (16·NF) tile of y. The warps split K among themselves
// (warp w takes K chunks w, w + 4, …) instead of splitting the tile: at decode sizes a y tile is
// tiny and all the time goes into streaming W, so this keeps N / (16·NF) blocks in flight, each
// warp works on its own shared-memory staging area with no block-wide barrier in the main loop,
// and the four partial tiles are summed once at the end (in a fixed order, so results are
// deterministic). Per chunk a warp loads its x sub-tile (bf16) and its 4-bit W sub-tile into
// registers, writes x and the dequantized W (bf16) to shared memory, issues the next chunk's
// loads, and runs the WMMA products while those loads are in flight.
constexpr int kFusedWarps = 4;

template <int MF, int NF>
struct FusedTile {
  static constexpr int kRowsX = 16 * MF;  // rows of x (M) per block
  static constexpr int kRowsW = 16 * NF;  // rows of W (N) per block
  // K per warp chunk: 128 / MF keeps the x sub-tile at 2048 elements, 8 uint4 per lane.
  static constexpr int kKw = 128 / MF;
  // Shared row stride in bf16: 8 extra elements (16 bytes) put the 8 rows a WMMA load reads at
  // once in different banks.
  static constexpr int kLd = kKw + 8;
  static constexpr int kXUnits = kRowsX * kKw / 8 / 32;   // uint4 (8 bf16) per lane and chunk
  static constexpr int kWUnits = kRowsW * kKw / 16 / 32;  // uint2 (16 nibbles) per lane and chunk
  static constexpr int kWarpElems = (kRowsX + kRowsW) * kLd;
  static constexpr int kStageBytes = kFusedWarps * kWarpElems * 2;
  static constexpr int kReduceBytes = kFusedWarps * kRowsX * kRowsW * 4;
  static constexpr int kSmemBytes = kStageBytes > kReduceBytes ? kStageBytes : kReduceBytes;
  static_assert(kKw % 16 == 0 && kXUnits >= 1 && kWUnits >= 1, "tile shape");
  static_assert(kXUnits * 32 * 8 == kRowsX * kKw && kWUnits * 32 * 16 == kRowsW * kKw, "whole units per lane");
  // WMMA pointers must be 32-byte aligned: every region and fragment offset is a multiple of 32.
  static_assert((kWarpElems * 2) % 32 == 0 && (kRowsX * kLd * 2) % 32 == 0 && (16 * kLd * 2) % 32 == 0, "alignment");
  static_assert(kSmemBytes <= 48 * 1024, "static shared memory");
};

__device__ __forceinline__ uint32_t PackBf16(float lo, float hi) { return Pack2<__nv_bfloat16>(lo, hi); }

template <int MF, int NF>
__global__ void __launch_bounds__(kFusedWarps * 32)
    FusedNf4GemmKernel(const __nv_bfloat16* __restrict__ x, const uint8_t* __restrict__ packed,
                       const float* __restrict__ scales, const float* __restrict__ code16, int M, int N, int K,
                       int blocksize, int shift, __nv_bfloat16* __restrict__ y) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  namespace wmma = nvcuda::wmma;
  using Tile = FusedTile<MF, NF>;
  constexpr int kXPerRow = Tile::kKw / 8, kWPerRow = Tile::kKw / 16;
  __shared__ __align__(128) unsigned char smem[Tile::kSmemBytes];
  __shared__ float code[16];
  if (threadIdx.x < 16) code[threadIdx.x] = code16[threadIdx.x];
  __syncthreads();

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int m0 = blockIdx.y * Tile::kRowsX, n0 = blockIdx.x * Tile::kRowsW;
  const int blocks_per_row = K / blocksize;
  __nv_bfloat16* xs = reinterpret_cast<__nv_bfloat16*>(smem) + warp * Tile::kWarpElems;
  __nv_bfloat16* ws = xs + Tile::kRowsX * Tile::kLd;

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[MF][NF];
#pragma unroll
  for (int i = 0; i < MF; ++i) {
#pragma unroll
    for (int j = 0; j < NF; ++j) wmma::fill_fragment(acc[i][j], 0.0f);
  }

  uint4 xr[Tile::kXUnits];
  uint2 wr[Tile::kWUnits];
  float sr[Tile::kWUnits];
  // Rows past M or N and columns past K load zeros (a zero scale turns any code into ±0), so the
  // products over the padding add nothing.
  const auto load = [&](int chunk) {
    const int kc = chunk * Tile::kKw;
#pragma unroll
    for (int u = 0; u < Tile::kXUnits; ++u) {
      const int unit = lane + 32 * u, r = unit / kXPerRow, k = kc + 8 * (unit % kXPerRow), m = m0 + r;
      xr[u] = (m < M && k < K) ? __ldg(reinterpret_cast<const uint4*>(x + static_cast<int64_t>(m) * K + k))
                               : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < Tile::kWUnits; ++u) {
      const int unit = lane + 32 * u, r = unit / kWPerRow, k = kc + 16 * (unit % kWPerRow), n = n0 + r;
      if (n < N && k < K) {
        const int64_t e = static_cast<int64_t>(n) * K + k;
        wr[u] = __ldg(reinterpret_cast<const uint2*>(packed + (e >> 1)));
        sr[u] = __ldg(scales + static_cast<int64_t>(n) * blocks_per_row + (shift >= 0 ? k >> shift : k / blocksize));
      } else {
        wr[u] = make_uint2(0, 0);
        sr[u] = 0.0f;
      }
    }
  };

  const int n_chunks = (K + Tile::kKw - 1) / Tile::kKw;
  if (warp < n_chunks) load(warp);
  for (int chunk = warp; chunk < n_chunks; chunk += kFusedWarps) {
#pragma unroll
    for (int u = 0; u < Tile::kXUnits; ++u) {
      const int unit = lane + 32 * u;
      *reinterpret_cast<uint4*>(xs + (unit / kXPerRow) * Tile::kLd + 8 * (unit % kXPerRow)) = xr[u];
    }
#pragma unroll
    for (int u = 0; u < Tile::kWUnits; ++u) {
      const int unit = lane + 32 * u;
      float v[16];
      Dequant16(wr[u], sr[u], code, v);
      uint4* dst = reinterpret_cast<uint4*>(ws + (unit / kWPerRow) * Tile::kLd + 16 * (unit % kWPerRow));
      dst[0] = make_uint4(PackBf16(v[0], v[1]), PackBf16(v[2], v[3]), PackBf16(v[4], v[5]), PackBf16(v[6], v[7]));
      dst[1] = make_uint4(PackBf16(v[8], v[9]), PackBf16(v[10], v[11]), PackBf16(v[12], v[13]),
                          PackBf16(v[14], v[15]));
    }
    __syncwarp();
    if (chunk + kFusedWarps < n_chunks) load(chunk + kFusedWarps);
#pragma unroll
    for (int ks = 0; ks < Tile::kKw / 16; ++ks) {
      // x is row-major (M × K); W stored row-major (N × K) is Wᵀ (K × N) in column-major order.
      wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a[MF];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> b[NF];
#pragma unroll
      for (int i = 0; i < MF; ++i) wmma::load_matrix_sync(a[i], xs + 16 * i * Tile::kLd + 16 * ks, Tile::kLd);
#pragma unroll
      for (int j = 0; j < NF; ++j) wmma::load_matrix_sync(b[j], ws + 16 * j * Tile::kLd + 16 * ks, Tile::kLd);
#pragma unroll
      for (int i = 0; i < MF; ++i) {
#pragma unroll
        for (int j = 0; j < NF; ++j) wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
      }
    }
    __syncwarp();  // the staging area is rewritten by the next chunk
  }

  // The partial tiles go to shared memory (over the staging areas, hence the first barrier) and
  // are summed warp 0 + 1 + 2 + 3.
  __syncthreads();
  constexpr int kTileElems = Tile::kRowsX * Tile::kRowsW;
  float* red = reinterpret_cast<float*>(smem);
#pragma unroll
  for (int i = 0; i < MF; ++i) {
#pragma unroll
    for (int j = 0; j < NF; ++j) {
      wmma::store_matrix_sync(red + warp * kTileElems + 16 * i * Tile::kRowsW + 16 * j, acc[i][j], Tile::kRowsW,
                              wmma::mem_row_major);
    }
  }
  __syncthreads();
  for (int t = threadIdx.x; t < kTileElems; t += kFusedWarps * 32) {
    const int m = m0 + t / Tile::kRowsW, n = n0 + t % Tile::kRowsW;
    if (m >= M || n >= N) continue;
    float s = red[t];
#pragma unroll
    for (int w = 1; w < kFusedWarps; ++w) s += red[w * kTileElems + t];
    y[static_cast<int64_t>(m) * N + n] = __float2bfloat16_rn(s);
  }
#else
  __trap();  // the host side refuses devices below compute capability 8.0
#endif
}

template <int MF, int NF>
std::string LaunchFused(const void* x, int M, int N, int K, const uint8_t* packed, const float* scales,
                        const float* code16, int blocksize, void* y, cudaStream_t stream) {
  using Tile = FusedTile<MF, NF>;
  const int64_t grid_y = (M + Tile::kRowsX - 1) / Tile::kRowsX;
  if (grid_y > 65535) return "FusedNf4GemmCuda: M is too large for one launch";
  const dim3 grid(static_cast<unsigned>((N + Tile::kRowsW - 1) / Tile::kRowsW), static_cast<unsigned>(grid_y));
  FusedNf4GemmKernel<MF, NF><<<grid, kFusedWarps * 32, 0, stream>>>(
      static_cast<const __nv_bfloat16*>(x), packed, scales, code16, M, N, K, blocksize, Log2Exact(blocksize),
      static_cast<__nv_bfloat16*>(y));
  return LastError();
}

}  // namespace

bool CudaDeviceAvailable() {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    cudaGetLastError();  // no driver / no device: leave no error behind for later checks
    return false;
  }
  return count > 0;
}

std::string DequantizeScalesCuda(const uint8_t* absmax_codes, const float* nested_code, const float* nested_absmax,
                                 float offset, int64_t n_blocks, int64_t nested_blocksize, float* scales_out,
                                 void* stream) {
  if (n_blocks < 0 || nested_blocksize <= 0) return "DequantizeScalesCuda: bad n_blocks or nested_blocksize";
  if (n_blocks == 0) return "";
  DequantScalesKernel<<<GridFor(n_blocks, 256), 256, 0, static_cast<cudaStream_t>(stream)>>>(
      absmax_codes, nested_code, nested_absmax, offset, n_blocks, nested_blocksize, scales_out);
  return LastError();
}

std::string GemmBf16Cuda(const void* x, const void* w, void* y, int64_t m, int64_t n, int64_t k, bool w_transposed,
                         int dtype, float beta, void* stream) {
  if (dtype != kCudaF32 && dtype != kCudaBf16 && dtype != kCudaF16) {
    return "GemmBf16Cuda: dtype must be 0 (float32), 1 (bfloat16) or 2 (float16)";
  }
  if (m < 0 || n < 0 || k < 0) return "GemmBf16Cuda: negative dimension";
  if (m == 0 || n == 0) return "";
  const auto s = static_cast<cudaStream_t>(stream);
  if (k == 0) return ScaleOutput(y, m * n, dtype, beta, s);

  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return CudaText(err);
  const PlanKey key{device, dtype, w_transposed, m, n, k, beta != 0.0f, Alignment(x), Alignment(w), Alignment(y)};
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  const LtPlan* plan = nullptr;
  {
    LtCache& cache = Cache();
    const std::lock_guard<std::mutex> lock(cache.mu);
    auto h = cache.handles.find(device);
    if (h == cache.handles.end()) {
      const cublasStatus_t st = cublasLtCreate(&handle);
      if (st != CUBLAS_STATUS_SUCCESS) return LtText("cublasLtCreate", st);
      h = cache.handles.emplace(device, handle).first;
    }
    handle = h->second;
    auto ws = cache.workspaces.find({device, s});
    if (ws == cache.workspaces.end()) {
      // Hopper's fastest kernels want a larger workspace (split-K, stream-K).
      int major = 0;
      err = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
      if (err != cudaSuccess) return CudaText(err);
      const size_t bytes = (major >= 9 ? 32u : 8u) << 20;
      void* mem = nullptr;
      err = cudaMalloc(&mem, bytes);
      if (err != cudaSuccess) return CudaText(err);
      ws = cache.workspaces.emplace(std::make_pair(device, s), std::make_pair(mem, bytes)).first;
    }
    workspace = ws->second.first;
    workspace_bytes = ws->second.second;
    // Every workspace of a device has the same size, so a plan fits whichever stream reuses it.
    auto p = cache.plans.find(key);
    if (p == cache.plans.end()) {
      auto fresh = std::make_unique<LtPlan>();
      const std::string error = BuildPlan(handle, key, workspace_bytes, fresh.get());
      if (!error.empty()) {
        DestroyPlan(fresh.get());
        return error;
      }
      p = cache.plans.emplace(key, std::move(fresh)).first;
    }
    plan = p->second.get();
  }
  const float alpha = 1.0f;
  const cublasStatus_t st = cublasLtMatmul(handle, plan->desc, &alpha, w, plan->a, x, plan->b, &beta, y, plan->c, y,
                                           plan->c, &plan->algo, workspace, workspace_bytes, s);
  if (st != CUBLAS_STATUS_SUCCESS) return LtText("cublasLtMatmul", st);
  return "";
}

std::string FusedNf4GemmCuda(const void* x, int64_t M, int64_t K, const uint8_t* packed, const float* scales,
                             const float* code16, int64_t N, int64_t blocksize, void* y, void* stream) {
  if (M < 0 || N < 0 || K <= 0 || blocksize <= 0) return "FusedNf4GemmCuda: bad M, N, K or blocksize";
  if (K % blocksize != 0 || blocksize % 16 != 0) {
    return "FusedNf4GemmCuda: needs K % blocksize == 0 and blocksize % 16 == 0 (K = " + std::to_string(K) +
           ", blocksize = " + std::to_string(blocksize) + ")";
  }
  if (M > INT_MAX || N > INT_MAX || K > INT_MAX) return "FusedNf4GemmCuda: M, N and K must be below 2^31";
  if (reinterpret_cast<uintptr_t>(x) % 16 != 0 || reinterpret_cast<uintptr_t>(packed) % 8 != 0) {
    return "FusedNf4GemmCuda: x must be 16-byte and packed 8-byte aligned";
  }
  if (M == 0 || N == 0) return "";
  int device = 0, major = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  if (err != cudaSuccess) return CudaText(err);
  if (major < 8) return "FusedNf4GemmCuda: needs compute capability 8.0 or newer (bfloat16 tensor cores)";
  const auto s = static_cast<cudaStream_t>(stream);
  const int m = static_cast<int>(M), n = static_cast<int>(N), k = static_cast<int>(K), bs = static_cast<int>(blocksize);
  // Wider tiles as M grows: every block re-reads its rows of x, so a block covering more of N
  // halves that traffic once x is more than a few rows.
  if (m <= 16) return LaunchFused<1, 1>(x, m, n, k, packed, scales, code16, bs, y, s);
  if (m <= 32) return LaunchFused<2, 2>(x, m, n, k, packed, scales, code16, bs, y, s);
  return LaunchFused<4, 2>(x, m, n, k, packed, scales, code16, bs, y, s);
}

}  // namespace llmtrain::quant::detail
