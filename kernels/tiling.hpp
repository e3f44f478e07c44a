// Work decomposition for kernels over a row-major [rows, cols] matrix (tokens x latents) that also
// produce per-column sums over the rows (counts and gradients per latent).
//
// A kernel provides `tile(r0, r1, c0, c1, slot)`: visit rows [r0, r1) x columns [c0, c1) row by row
// and write its per-column sums into accumulator row `slot` (initialising it first).
//  - CPUs: one tile per row chunk spanning ALL columns, so every load and store streams
//    contiguously (a column-blocked walk strides by the row length and defeats the prefetcher:
//    measured 1 GB/s instead of ~20). Each chunk owns one accumulator slot; slots are summed after.
//  - GPUs: one tile per column spanning all rows: adjacent threads touch adjacent addresses
//    (coalesced) and own their column, so a single slot suffices.
#pragma once
#include "kernels/types.hpp"

namespace saescale {

// SAESCALE_GPU_MAPPING (a CMake option of that name) compiles the GPU mappings for the host
// backend: CI builds and runs the kernel tests that way, since its Kokkos has no GPU backend.
#if defined(KOKKOS_ENABLE_CUDA) || defined(KOKKOS_ENABLE_HIP) || defined(KOKKOS_ENABLE_SYCL) || \
    defined(SAESCALE_GPU_MAPPING)
inline constexpr bool kColumnTiles = true;
#else
inline constexpr bool kColumnTiles = false;
#endif

template <class T>
using SlotView = Kokkos::View<T**, Kokkos::LayoutRight, MemSpace>;  // [slots, cols]

inline int64_t accumulator_slots() {
  return kColumnTiles ? 1 : static_cast<int64_t>(ExecSpace().concurrency());
}

template <class Kernel>
void for_each_tile(const char* label, int64_t rows, int64_t cols, const Kernel& kernel) {
  if constexpr (kColumnTiles) {
    Kokkos::parallel_for(
        label, Kokkos::RangePolicy<ExecSpace>(0, cols),
        KOKKOS_LAMBDA(int64_t c) { kernel.tile(0, rows, c, c + 1, 0); });
  } else {
    const int64_t slots = accumulator_slots();
    const int64_t chunk = (rows + slots - 1) / slots;
    Kokkos::parallel_for(
        label, Kokkos::RangePolicy<ExecSpace>(0, slots), KOKKOS_LAMBDA(int64_t s) {
          const int64_t r0 = s * chunk < rows ? s * chunk : rows;
          const int64_t r1 = r0 + chunk < rows ? r0 + chunk : rows;
          kernel.tile(r0, r1, 0, cols, s);
        });
  }
}

// Sums accumulator slots into slot 0 (nothing to do with a single slot).
template <class T>
void reduce_slots(const char* label, const SlotView<T>& acc) {
  if (acc.extent(0) <= 1) return;
  Kokkos::parallel_for(
      label, Kokkos::RangePolicy<ExecSpace>(0, acc.extent(1)), KOKKOS_LAMBDA(int64_t c) {
        for (int64_t s = 1; s < static_cast<int64_t>(acc.extent(0)); ++s) acc(0, c) += acc(s, c);
      });
}

// out(c) = sum over slots of acc(s, c), as float (parameter gradients).
inline void sum_slots(const char* label, const SlotView<double>& acc, const Vector& out) {
  Kokkos::parallel_for(
      label, Kokkos::RangePolicy<ExecSpace>(0, out.extent(0)), KOKKOS_LAMBDA(int64_t c) {
        double sum = 0;
        for (int64_t s = 0; s < static_cast<int64_t>(acc.extent(0)); ++s) sum += acc(s, c);
        out(c) = static_cast<real>(sum);
      });
}

}  // namespace saescale
