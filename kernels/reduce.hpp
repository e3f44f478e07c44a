// Small reductions and elementwise helpers shared by the step (loss, bias gradients, norms).
#pragma once
#include "kernels/optim.hpp"
#include "kernels/tiling.hpp"

namespace saescale::kernels {

// sum of v(i)^2: float lanes over blocks of 4096 (vectorisable), blocks summed in double.
inline double sum_squares(const char* label, const Vector& v) {
  constexpr int64_t kBlock = 4096;
  const int64_t n = v.extent(0);
  double s = 0;
  Kokkos::parallel_reduce(
      label, Kokkos::RangePolicy<ExecSpace>(0, (n + kBlock - 1) / kBlock),
      KOKKOS_LAMBDA(int64_t blk, double& acc) {
        const int64_t begin = blk * kBlock, len = begin + kBlock < n ? kBlock : n - begin;
        acc += dot_lanes(v.data() + begin, v.data() + begin, len);
      },
      s);
  return s;
}

// Entries that are NaN or +-Inf (|v| <= FLT_MAX is false for both).
inline int64_t count_non_finite(const char* label, const Vector& v) {
  int64_t n = 0;
  Kokkos::parallel_reduce(
      label, Kokkos::RangePolicy<ExecSpace>(0, v.extent(0)),
      KOKKOS_LAMBDA(int64_t i, int64_t & acc) { acc += !(kmath::fabs(v(i)) <= 3.402823466e38f); },
      n);
  return n;
}

// sum of v(i): the per-latent counts summed (L0's numerator).
inline int64_t sum(const char* label, const CountVector& v) {
  int64_t total = 0;
  Kokkos::parallel_reduce(
      label, Kokkos::RangePolicy<ExecSpace>(0, v.extent(0)),
      KOKKOS_LAMBDA(int64_t i, int64_t & acc) { acc += v(i); }, total);
  return total;
}

// Entries of v that are not zero (e.g. dead-latent flags).
inline int64_t count_nonzero(const char* label, const CountVector& v) {
  int64_t n = 0;
  Kokkos::parallel_reduce(
      label, Kokkos::RangePolicy<ExecSpace>(0, v.extent(0)),
      KOKKOS_LAMBDA(int64_t i, int64_t & acc) { acc += v(i) != 0; }, n);
  return n;
}

// sum of a(i) * b(i): per-latent sums (double) weighted by a float vector.
inline double dot(const char* label, const AccVector& a, const Vector& b) {
  double total = 0;
  Kokkos::parallel_reduce(
      label, Kokkos::RangePolicy<ExecSpace>(0, a.extent(0)),
      KOKKOS_LAMBDA(int64_t i, double& acc) { acc += a(i) * b(i); }, total);
  return total;
}

// a(i) *= b(i)
inline void multiply(const char* label, const Vector& a, const Vector& b) {
  Kokkos::parallel_for(
      label, Kokkos::RangePolicy<ExecSpace>(0, a.extent(0)),
      KOKKOS_LAMBDA(int64_t i) { a(i) *= b(i); });
}

// to(i) = from(i) as a kernel (BabelStream's copy: what this build's kernels get from memory,
// where deep_copy would measure the runtime's memcpy).
inline void stream_copy(const char* label, const Vector& from, const Vector& to) {
  Kokkos::parallel_for(
      label, Kokkos::RangePolicy<ExecSpace>(0, to.extent(0)),
      KOKKOS_LAMBDA(int64_t i) { to(i) = from(i); });
}

inline double sum_squares(const char* label, const Matrix& m) {
  return sum_squares(label, Vector(m.data(), m.size()));
}

// out(j) = scale * sum_b m(b, j), tiled like the activation kernels (see tiling.hpp).
struct ColumnSums {
  Matrix m;
  SlotView<double> acc;
  KOKKOS_INLINE_FUNCTION void tile(int64_t r0, int64_t r1, int64_t c0, int64_t c1,
                                   int64_t s) const {
    double* a = &acc(s, 0);
    for (int64_t j = c0; j < c1; ++j) a[j] = 0;
    for (int64_t b = r0; b < r1; ++b) {
      const real* row = &m(b, 0);
      for (int64_t j = c0; j < c1; ++j) a[j] += row[j];
    }
  }
};

inline void column_sums(const char* label, const Matrix& m, real scale, const Vector& out,
                        const SlotView<double>& scratch) {
  for_each_tile(label, m.extent(0), m.extent(1), ColumnSums{m, scratch});
  Kokkos::parallel_for(
      label, Kokkos::RangePolicy<ExecSpace>(0, out.extent(0)), KOKKOS_LAMBDA(int64_t j) {
        double sum = 0;
        for (int64_t s = 0; s < static_cast<int64_t>(scratch.extent(0)); ++s) sum += scratch(s, j);
        out(j) = static_cast<real>(scale * sum);
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
        n(i) = static_cast<real>(kmath::sqrt(dot_lanes(&w(i, 0), &w(i, 0), w.extent(1))));
      });
}

inline void fill(const char* label, const Vector& v, real value) {
  Kokkos::parallel_for(
      label, Kokkos::RangePolicy<ExecSpace>(0, v.extent(0)),
      KOKKOS_LAMBDA(int64_t i) { v(i) = value; });
}

}  // namespace saescale::kernels
