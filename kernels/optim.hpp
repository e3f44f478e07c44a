// Optimiser kernels over the flat parameter buffer, and the unit-norm decoder constraint
// (docs/variants.md, Shared pieces).
#pragma once
#include "kernels/types.hpp"

namespace saescale::kernels {

struct AdamParams {
  real lr, beta1, beta2, eps;
  int64_t step;  // 1-based, for bias correction
};

// Row dot product with 8 independent float lanes: vectorisable without reassociation flags, and
// summed in double at the end (d is at most a few thousand, so float lanes lose nothing material).
KOKKOS_INLINE_FUNCTION double dot_lanes(const real* a, const real* b, int64_t n) {
  constexpr int L = 8;
  real acc[L] = {};
  int64_t i = 0;
  for (; i + L <= n; i += L)
    for (int l = 0; l < L; ++l) acc[l] += a[i + l] * b[i + l];
  double sum = 0;
  for (int l = 0; l < L; ++l) sum += acc[l];
  for (; i < n; ++i) sum += double(a[i]) * b[i];
  return sum;
}

// Standard Adam with bias correction. With beta1 = 0 the first moment IS the gradient, so `m` is
// not stored or touched (an empty view): 20 instead of 28 bytes of traffic per parameter.
inline void adam_update(const Vector& p, const Vector& g, const Vector& m, const Vector& v,
                        const AdamParams& a) {
  if (a.beta1 == 0) {
    const real c2 = 1 - static_cast<real>(kmath::pow(double(a.beta2), double(a.step)));
    const real lr = a.lr, inv_sqrt_c2 = 1 / kmath::sqrt(c2), b2 = a.beta2, eps = a.eps;
    Kokkos::parallel_for(
        "saescale::optimizer::adam_beta1_0", Kokkos::RangePolicy<ExecSpace>(0, p.extent(0)),
        KOKKOS_LAMBDA(int64_t i) {
          const real gi = g(i);
          const real vi = b2 * v(i) + (1 - b2) * gi * gi;
          v(i) = vi;
          p(i) -= lr * gi / (kmath::sqrt(vi) * inv_sqrt_c2 + eps);
        });
    return;
  }
  const real c1 = 1 - static_cast<real>(kmath::pow(double(a.beta1), double(a.step)));
  const real c2 = 1 - static_cast<real>(kmath::pow(double(a.beta2), double(a.step)));
  const real step_size = a.lr / c1, inv_sqrt_c2 = 1 / kmath::sqrt(c2);
  const real b1 = a.beta1, b2 = a.beta2, eps = a.eps;
  Kokkos::parallel_for(
      "saescale::optimizer::adam", Kokkos::RangePolicy<ExecSpace>(0, p.extent(0)),
      KOKKOS_LAMBDA(int64_t i) {
        const real gi = g(i);
        const real mi = b1 * m(i) + (1 - b1) * gi;
        const real vi = b2 * v(i) + (1 - b2) * gi * gi;
        m(i) = mi;
        v(i) = vi;
        p(i) -= step_size * mi / (kmath::sqrt(vi) * inv_sqrt_c2 + eps);
      });
}

inline void sgd_update(const Vector& p, const Vector& g, real lr) {
  Kokkos::parallel_for(
      "saescale::optimizer::sgd", Kokkos::RangePolicy<ExecSpace>(0, p.extent(0)),
      KOKKOS_LAMBDA(int64_t i) { p(i) -= lr * g(i); });
}

inline void scale(const char* label, const Vector& v, real s) {
  Kokkos::parallel_for(
      label, Kokkos::RangePolicy<ExecSpace>(0, v.extent(0)),
      KOKKOS_LAMBDA(int64_t i) { v(i) *= s; });
}

// g_i <- g_i - (g_i . w_i) w_i / ||w_i||^2 for every decoder row: removes the radial component,
// so the optimiser moves each row along its unit sphere.
inline void project_decoder_gradient(const Matrix& w, const Matrix& g) {
  Kokkos::parallel_for(
      "saescale::decoder_projection::radial", Kokkos::RangePolicy<ExecSpace>(0, w.extent(0)),
      KOKKOS_LAMBDA(int64_t i) {
        const int64_t d = w.extent(1);
        const double dot = dot_lanes(&g(i, 0), &w(i, 0), d),
                     norm2 = dot_lanes(&w(i, 0), &w(i, 0), d);
        const real coef = norm2 > 0 ? static_cast<real>(dot / norm2) : real(0);
        for (int64_t c = 0; c < d; ++c) g(i, c) -= coef * w(i, c);
      });
}

inline void renormalize_rows(const Matrix& w) {
  Kokkos::parallel_for(
      "saescale::renormalize::decoder_rows", Kokkos::RangePolicy<ExecSpace>(0, w.extent(0)),
      KOKKOS_LAMBDA(int64_t i) {
        const int64_t d = w.extent(1);
        const double norm2 = dot_lanes(&w(i, 0), &w(i, 0), d);
        if (norm2 <= 0) return;
        const real inv = static_cast<real>(1 / kmath::sqrt(norm2));
        for (int64_t c = 0; c < d; ++c) w(i, c) *= inv;
      });
}

// Dead-latent bookkeeping in tokens (not steps): a latent that fired resets to 0; it is dead once
// `window` tokens have passed without it firing.
inline void update_tokens_since_fired(const CountVector& since, const CountVector& fired,
                                      int64_t tokens, int64_t window, const CountVector& dead) {
  Kokkos::parallel_for(
      "saescale::statistics::tokens_since_fired",
      Kokkos::RangePolicy<ExecSpace>(0, since.extent(0)), KOKKOS_LAMBDA(int64_t i) {
        since(i) = fired(i) > 0 ? 0 : since(i) + tokens;
        dead(i) = since(i) >= window;
      });
}

}  // namespace saescale::kernels
