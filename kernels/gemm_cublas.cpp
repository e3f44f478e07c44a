#include "kernels/gemm_cublas.hpp"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <string>

#include "src/error.hpp"

#define SAESCALE_CUBLAS_CHECK(call)                                                           \
  do {                                                                                        \
    const cublasStatus_t status_ = (call);                                                    \
    if (status_ != CUBLAS_STATUS_SUCCESS)                                                     \
      throw ::saescale::Error(std::string(__FILE__) + ":" + std::to_string(__LINE__) + ": " + \
                              #call + " failed: " + cublasGetStatusString(status_));          \
  } while (0)

namespace saescale::cublas {
namespace {

cublasHandle_t g_handle = nullptr;

cublasHandle_t handle(void* stream) {
  if (!g_handle) SAESCALE_CUBLAS_CHECK(cublasCreate(&g_handle));
  SAESCALE_CUBLAS_CHECK(cublasSetStream(g_handle, static_cast<cudaStream_t>(stream)));
  return g_handle;
}

}  // namespace

void gemm_row_major(bool ta, bool tb, int m, int n, int k, float alpha, const void* A, int lda,
                    const void* B, int ldb, float beta, float* C, int ldc, int precision,
                    void* stream) {
  // Row-major C[m,n] = op(A) op(B)  <=>  column-major C^T[n,m] = op(B)^T op(A)^T.
  const cublasOperation_t opB = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t opA = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cudaDataType_t in_type = precision == 2 ? CUDA_R_16BF : CUDA_R_32F;
  const cublasComputeType_t compute =
      precision == 1 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  SAESCALE_CUBLAS_CHECK(cublasGemmEx(handle(stream), opB, opA, n, m, k, &alpha, B, in_type, ldb, A,
                                     in_type, lda, &beta, C, CUDA_R_32F, ldc, compute,
                                     CUBLAS_GEMM_DEFAULT));
}

void gemv_row_major(bool ta, int rows, int cols, float alpha, const float* A, const float* x,
                    float beta, float* y, void* stream) {
  // A row-major [rows, cols] is column-major [cols, rows]: transpose flips.
  SAESCALE_CUBLAS_CHECK(cublasSgemv(handle(stream), ta ? CUBLAS_OP_N : CUBLAS_OP_T, cols, rows,
                                    &alpha, A, cols, x, 1, &beta, y, 1));
}

void finalize() {
  if (g_handle) cublasDestroy(g_handle);
  g_handle = nullptr;
}

const char* version() {
  static std::string v = "cuBLAS " + std::to_string(CUBLAS_VER_MAJOR) + "." +
                         std::to_string(CUBLAS_VER_MINOR) + "." + std::to_string(CUBLAS_VER_PATCH);
  return v.c_str();
}

}  // namespace saescale::cublas
