// Optimiser kernels over the flat parameter buffer, and the unit-norm decoder constraint
// (sae-variants.md §0).
#pragma once
#include "kernels/types.hpp"

namespace saescale::kernels {

struct AdamParams {
  real lr, beta1, beta2, eps;
  int64_t step;  // 1-based, for bias correction
};

// Standard Adam with bias correction; beta1 = 0 makes m = g and its correction 1.
inline void adam_update(const Vector& p, const Vector& g, const Vector& m, const Vector& v,
                        const AdamParams& a) {
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
        double dot = 0, norm2 = 0;
        for (int64_t c = 0; c < d; ++c) {
          dot += double(g(i, c)) * w(i, c);
          norm2 += double(w(i, c)) * w(i, c);
        }
        const real coef = norm2 > 0 ? static_cast<real>(dot / norm2) : real(0);
        for (int64_t c = 0; c < d; ++c) g(i, c) -= coef * w(i, c);
      });
}

inline void renormalize_rows(const Matrix& w) {
  Kokkos::parallel_for(
      "saescale::renormalize::decoder_rows", Kokkos::RangePolicy<ExecSpace>(0, w.extent(0)),
      KOKKOS_LAMBDA(int64_t i) {
        const int64_t d = w.extent(1);
        double norm2 = 0;
        for (int64_t c = 0; c < d; ++c) norm2 += double(w(i, c)) * w(i, c);
        if (norm2 <= 0) return;
        const real inv = static_cast<real>(1 / kmath::sqrt(norm2));
        for (int64_t c = 0; c < d; ++c) w(i, c) *= inv;
      });
}

// Dead-latent bookkeeping in tokens (not steps): a latent that fired resets to 0.
inline void update_tokens_since_fired(const CountVector& since, const CountVector& fired,
                                      int64_t tokens) {
  Kokkos::parallel_for(
      "saescale::statistics::tokens_since_fired",
      Kokkos::RangePolicy<ExecSpace>(0, since.extent(0)),
      KOKKOS_LAMBDA(int64_t i) { since(i) = fired(i) > 0 ? 0 : since(i) + tokens; });
}

}  // namespace saescale::kernels
