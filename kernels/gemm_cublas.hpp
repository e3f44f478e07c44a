// cuBLAS backend, plain host C++ (no Kokkos), so it compiles and links wherever the CUDA toolkit
// is installed. Row-major calls are mapped onto column-major cuBLAS by computing C^T = B^T A^T.
#pragma once
#include <cstdint>

namespace saescale::cublas {

// Numeric codes of saescale::Precision: 0 fp32, 1 tf32, 2 bf16 (A and B then hold bf16 bits).
#ifdef SAESCALE_HAVE_CUBLAS
void gemm_row_major(bool ta, bool tb, int m, int n, int k, float alpha, const void* A, int lda,
                    const void* B, int ldb, float beta, float* C, int ldc, int precision,
                    void* stream);
void gemv_row_major(bool ta, int rows, int cols, float alpha, const float* A, const float* x,
                    float beta, float* y, void* stream);
void finalize();
const char* version();
#else
[[noreturn]] void unavailable();
inline void gemm_row_major(bool, bool, int, int, int, float, const void*, int, const void*, int,
                           float, float*, int, int, void*) {
  unavailable();
}
inline void gemv_row_major(bool, int, int, float, const float*, const float*, float, float*,
                           void*) {
  unavailable();
}
inline void finalize() {}
inline const char* version() { return "not built"; }
#endif

}  // namespace saescale::cublas
