#include "kernels/gemm.hpp"

#include <cstring>

#if !defined(KOKKOS_ENABLE_CUDA)
#include <cblas.h>  // host builds only: a CUDA build links no host BLAS
#endif

#include "kernels/gemm_cublas.hpp"
#include "src/error.hpp"

namespace saescale {

Precision parse_precision(const std::string& name) {
  if (name == "fp32") return Precision::fp32;
  if (name == "tf32") return Precision::tf32;
  if (name == "bf16") return Precision::bf16;
  throw Error("unknown precision '" + name + "' (choose fp32, tf32 or bf16)");
}

const char* precision_name(Precision p) {
  switch (p) {
    case Precision::fp32:
      return "fp32";
    case Precision::tf32:
      return "tf32";
    case Precision::bf16:
      return "bf16";
  }
  return "?";
}

namespace {

#if defined(KOKKOS_ENABLE_CUDA)
constexpr bool kDeviceGemm = true;
static_assert(std::is_same<ExecSpace, Kokkos::Cuda>::value,
              "a CUDA build runs its kernels and GEMMs on Kokkos::Cuda");
#else
constexpr bool kDeviceGemm = false;
#endif

void check_shapes(Trans ta, Trans tb, const Matrix& A, const Matrix& B, const Matrix& C) {
  const auto m = ta == Trans::N ? A.extent(0) : A.extent(1);
  const auto ka = ta == Trans::N ? A.extent(1) : A.extent(0);
  const auto kb = tb == Trans::N ? B.extent(0) : B.extent(1);
  const auto n = tb == Trans::N ? B.extent(1) : B.extent(0);
  if (ka != kb || C.extent(0) != m || C.extent(1) != n)
    throw Error("internal error: GEMM shape mismatch (" + std::string(A.label()) + ", " +
                B.label() + " -> " + C.label() + ")");
}

void* device_stream() {
#if defined(KOKKOS_ENABLE_CUDA)
  if constexpr (kDeviceGemm) return ExecSpace().cuda_stream();
#endif
  return nullptr;
}

// bf16 copies of GEMM inputs (bit patterns, round to nearest even), grown on demand.
using Bf16Buffer = Kokkos::View<uint16_t*, MemSpace>;
Bf16Buffer bf16_scratch_a, bf16_scratch_b;

const Bf16Buffer& to_bf16(const Matrix& M, Bf16Buffer& buf) {
  const size_t n = M.size();
  if (buf.extent(0) < n)
    buf = Bf16Buffer(
        Kokkos::view_alloc(Kokkos::WithoutInitializing, std::string("saescale::gemm::bf16")), n);
  auto src = M;
  auto dst = buf;
  Kokkos::parallel_for(
      "saescale::gemm::to_bf16", Kokkos::RangePolicy<ExecSpace>(0, n), KOKKOS_LAMBDA(size_t i) {
        const real v = src.data()[i];
        uint32_t bits;
        memcpy(&bits, &v, sizeof bits);
        if ((bits & 0x7fffffffu) > 0x7f800000u) {
          dst(i) = static_cast<uint16_t>((bits >> 16) | 0x40u);  // quiet NaN
        } else {
          dst(i) = static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
        }
      });
  return buf;
}

}  // namespace

const char* gemm_backend_name() { return kDeviceGemm ? "cublas" : "cblas"; }

void check_precision_supported(Precision p) {
  if constexpr (kDeviceGemm) {
    cublas::require_loaded();  // before the first step: where cuBLAS was looked for, if missing
  } else if (p != Precision::fp32) {
    throw Error(std::string("--precision ") + precision_name(p) +
                " needs the cuBLAS backend (a CUDA build of Kokkos); this build uses " +
                gemm_backend_name() + ": use --precision fp32");
  }
}

void gemm(Trans ta, Trans tb, real alpha, const Matrix& A, const Matrix& B, real beta,
          const Matrix& C, Precision precision) {
  check_shapes(ta, tb, A, B, C);
  const int m = static_cast<int>(C.extent(0));
  const int n = static_cast<int>(C.extent(1));
  const int k = static_cast<int>(ta == Trans::N ? A.extent(1) : A.extent(0));
  if constexpr (kDeviceGemm) {
    const void* a = A.data();
    const void* b = B.data();
    if (precision == Precision::bf16) {  // round the inputs once; accumulation stays fp32
      a = to_bf16(A, bf16_scratch_a).data();
      b = to_bf16(B, bf16_scratch_b).data();
    }
    cublas::gemm_row_major(ta == Trans::T, tb == Trans::T, m, n, k, alpha, a,
                           static_cast<int>(A.extent(1)), b, static_cast<int>(B.extent(1)), beta,
                           C.data(), n, static_cast<int>(precision), device_stream());
  } else {
    check_precision_supported(precision);
#if !defined(KOKKOS_ENABLE_CUDA)
    cblas_sgemm(CblasRowMajor, ta == Trans::N ? CblasNoTrans : CblasTrans,
                tb == Trans::N ? CblasNoTrans : CblasTrans, m, n, k, alpha, A.data(),
                static_cast<int>(A.extent(1)), B.data(), static_cast<int>(B.extent(1)), beta,
                C.data(), n);
#endif
  }
}

void gemv(Trans ta, real alpha, const Matrix& A, const Vector& x, real beta, const Vector& y) {
  const auto rows = A.extent(0), cols = A.extent(1);
  const auto in = ta == Trans::N ? cols : rows, out = ta == Trans::N ? rows : cols;
  if (x.extent(0) != in || y.extent(0) != out)
    throw Error("internal error: GEMV shape mismatch (" + std::string(A.label()) + ")");
  if constexpr (kDeviceGemm) {
    cublas::gemv_row_major(ta == Trans::T, static_cast<int>(rows), static_cast<int>(cols), alpha,
                           A.data(), x.data(), beta, y.data(), device_stream());
  } else {
#if !defined(KOKKOS_ENABLE_CUDA)
    cblas_sgemv(CblasRowMajor, ta == Trans::N ? CblasNoTrans : CblasTrans, static_cast<int>(rows),
                static_cast<int>(cols), alpha, A.data(), static_cast<int>(cols), x.data(), 1, beta,
                y.data(), 1);
#endif
  }
}

void gemm_finalize() {
  bf16_scratch_a = {};
  bf16_scratch_b = {};
  if constexpr (kDeviceGemm) cublas::finalize();
}

}  // namespace saescale

#ifndef SAESCALE_HAVE_CUBLAS
namespace saescale::cublas {
void unavailable() { throw Error("this binary was built without the cuBLAS backend"); }
}  // namespace saescale::cublas
#endif
