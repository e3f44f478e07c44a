// Small reductions and elementwise helpers shared by the step (loss, bias gradients, norms).
#pragma once
#include "kernels/column_block.hpp"

namespace saescale::kernels {

// sum of v(i)^2 in double.
inline double sum_squares(const char* label, const Vector& v) {
  double s = 0;
  Kokkos::parallel_reduce(
      label, Kokkos::RangePolicy<ExecSpace>(0, v.extent(0)),
      KOKKOS_LAMBDA(int64_t i, double& acc) { acc += double(v(i)) * v(i); }, s);
  return s;
}

inline double sum_squares(const char* label, const Matrix& m) {
  return sum_squares(label, Vector(m.data(), m.size()));
}

// out(j) = scale * sum_b m(b, j)
inline void column_sums(const char* label, const Matrix& m, real scale, const Vector& out) {
  Kokkos::parallel_for(
      label, column_block_policy(m.extent(1)), KOKKOS_LAMBDA(int64_t block) {
        const auto cols = block_range(block, m.extent(1));
        const int64_t n = cols.end - cols.begin;
        double acc[kColumnBlock] = {};
        for (int64_t b = 0; b < static_cast<int64_t>(m.extent(0)); ++b)
          for (int64_t j = 0; j < n; ++j) acc[j] += m(b, cols.begin + j);
        for (int64_t j = 0; j < n; ++j) out(cols.begin + j) = static_cast<real>(scale * acc[j]);
      });
}

// e = x - b (row broadcast): the decoder GEMM then accumulates e -= f W_dec in place.
inline void subtract_row(const char* label, const Matrix& x, const Vector& b, const Matrix& e) {
  const int64_t d = x.extent(1);
  Kokkos::parallel_for(
      label, Kokkos::RangePolicy<ExecSpace>(0, x.size()),
      KOKKOS_LAMBDA(int64_t k) { e.data()[k] = x.data()[k] - b(k % d); });
}

// n(i) = || w(i, :) ||
inline void row_norms(const char* label, const Matrix& w, const Vector& n) {
  Kokkos::parallel_for(
      label, Kokkos::RangePolicy<ExecSpace>(0, w.extent(0)), KOKKOS_LAMBDA(int64_t i) {
        double s = 0;
        for (int64_t c = 0; c < static_cast<int64_t>(w.extent(1)); ++c)
          s += double(w(i, c)) * w(i, c);
        n(i) = static_cast<real>(kmath::sqrt(s));
      });
}

inline void fill(const char* label, const Vector& v, real value) {
  Kokkos::parallel_for(
      label, Kokkos::RangePolicy<ExecSpace>(0, v.extent(0)),
      KOKKOS_LAMBDA(int64_t i) { v(i) = value; });
}

}  // namespace saescale::kernels
