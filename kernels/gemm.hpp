// GEMM dispatch: CBLAS on host memory spaces, cuBLAS (cublasGemmEx) when Kokkos runs on CUDA.
//
//   C = alpha * op(A) op(B) + beta * C,   all row-major (LayoutRight) rank-2 views.
#pragma once
#include <string>

#include "kernels/types.hpp"

namespace saescale {

// fp32: full fp32. tf32: fp32 storage, TF32 tensor-core math (cuBLAS only). bf16: inputs rounded to
// bf16, fp32 accumulation and output (cuBLAS only). Host BLAS supports fp32 only.
enum class Precision { fp32, tf32, bf16 };
Precision parse_precision(const std::string& name);
const char* precision_name(Precision p);

enum class Trans { N, T };

// Throws saescale::Error when this backend cannot run GEMMs at this precision: host BLAS runs fp32
// only; a CUDA build needs cuBLAS to load (kernels/gemm_cublas.hpp says where it is looked for).
void check_precision_supported(Precision p);

// Shapes are taken from the views; mismatches throw saescale::Error (a bug, not a user error).
void gemm(Trans ta, Trans tb, real alpha, const Matrix& A, const Matrix& B, real beta,
          const Matrix& C, Precision precision = Precision::fp32);

// y = alpha * op(A) x + beta * y
void gemv(Trans ta, real alpha, const Matrix& A, const Vector& x, real beta, const Vector& y);

const char* gemm_backend_name();

// Frees backend handles (cuBLAS) before Kokkos finalises; safe to call when none exist.
void gemm_finalize();

}  // namespace saescale
