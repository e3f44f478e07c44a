// cuBLAS backend, plain host C++ (no Kokkos), so it compiles wherever the CUDA toolkit's headers
// are installed. cuBLAS itself is opened at run time (gemm_cublas.cpp): SAESCALE_CUBLAS_LIBRARY,
// else libcublas.so.<major> on the loader's path (the GPU bundle's lib/ first), $CUDA_HOME/lib64,
// /usr/local/cuda/lib64. Row-major calls are mapped onto column-major cuBLAS (C^T = B^T A^T).
#pragma once
#include <cstdint>

#include <nlohmann/json.hpp>

namespace saescale::cublas {

// Numeric codes of saescale::Precision: 0 fp32, 1 tf32, 2 bf16 (A and B then hold bf16 bits).
#ifdef SAESCALE_HAVE_CUBLAS
void gemm_row_major(bool ta, bool tb, int m, int n, int k, float alpha, const void* A, int lda,
                    const void* B, int ldb, float beta, float* C, int ldc, int precision,
                    void* stream);
void gemv_row_major(bool ta, int rows, int cols, float alpha, const float* A, const float* x,
                    float beta, float* y, void* stream);
void finalize();
// Throws a one-line Error saying where cuBLAS was looked for, unless it is loaded.
void require_loaded();
// {compiled_for, library, version, error}: what `saescale info` and the results report.
nlohmann::json describe();
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
inline void require_loaded() { unavailable(); }
inline nlohmann::json describe() { return {{"compiled_for", nullptr}, {"error", "not built"}}; }
#endif

}  // namespace saescale::cublas
