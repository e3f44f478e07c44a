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
using HostMatrix = Matrix::HostMirror;
using CountVector = Kokkos::View<int64_t*, Kokkos::LayoutRight, MemSpace>;

// Accumulators for sums over a batch are double: a B x M sum in float loses the small terms.
using AccVector = Kokkos::View<double*, Kokkos::LayoutRight, MemSpace>;

// Math functions moved from Kokkos::Experimental to Kokkos in 3.7; kmath works with 3.4 and 4.x.
#if KOKKOS_VERSION >= 30700
namespace kmath = ::Kokkos;
#else
namespace kmath = ::Kokkos::Experimental;
#endif

}  // namespace saescale
