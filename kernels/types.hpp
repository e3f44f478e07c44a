// View aliases and scalar types, decided once for the whole project.
//
// Matrices are explicitly row-major (LayoutRight): one token per row, and W_enc [d, M] / W_dec [M,
// d] exactly as they appear in SAELens files. Parameters and activations are fp32; reduced
// precision applies to GEMM inputs only (see gemm.hpp).
#pragma once
#include <Kokkos_Core.hpp>
#include <cstdint>

namespace saescale {

using ExecSpace = Kokkos::DefaultExecutionSpace;
using MemSpace = ExecSpace::memory_space;
using real = float;

using Vector = Kokkos::View<real*, Kokkos::LayoutRight, MemSpace>;
using Matrix = Kokkos::View<real**, Kokkos::LayoutRight, MemSpace>;
using HostVector = Vector::HostMirror;
using HostMatrix = Matrix::HostMirror;
using CountVector = Kokkos::View<int64_t*, MemSpace>;

// Accumulators for sums over a batch are double: a B x M sum in float loses the small terms.
using AccVector = Kokkos::View<double*, MemSpace>;

// Column-wise reductions over a row-major [B, M] matrix visit a block of adjacent columns per work
// item, rows outer and columns inner: contiguous, vectorisable loads on CPUs, while on GPUs one
// column per thread keeps adjacent threads on adjacent addresses (coalesced).
#if defined(KOKKOS_ENABLE_CUDA) || defined(KOKKOS_ENABLE_HIP) || defined(KOKKOS_ENABLE_SYCL)
inline constexpr int kColumnBlock = 1;
#else
inline constexpr int kColumnBlock = 256;
#endif

// Math functions moved from Kokkos::Experimental to Kokkos in 3.7; kmath works with 3.4 and 4.x.
#if KOKKOS_VERSION >= 30700
namespace kmath = ::Kokkos;
#else
namespace kmath = ::Kokkos::Experimental;
#endif

inline int64_t column_blocks(int64_t n) { return (n + kColumnBlock - 1) / kColumnBlock; }

}  // namespace saescale
