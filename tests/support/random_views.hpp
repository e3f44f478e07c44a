// Random device views for kernel tests: one generator per test binary, seeded by test_seed().
#pragma once
#include <random>

#include "kernels/types.hpp"
#include "support/random.hpp"

namespace testing_support {

inline std::mt19937& rng() {
  static std::mt19937 r(test_seed());
  return r;
}

// [rows, cols] of N(0, scale^2) floats.
inline saescale::Matrix random_matrix(int64_t rows, int64_t cols, double scale = 1.0) {
  saescale::Matrix m("m", rows, cols);
  auto h = Kokkos::create_mirror_view(m);
  std::normal_distribution<double> n(0, scale);
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) h(i, j) = static_cast<float>(n(rng()));
  Kokkos::deep_copy(m, h);
  return m;
}

}  // namespace testing_support
