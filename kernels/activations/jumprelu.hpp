// JumpReLU SAE (Rajamanoharan et al. 2024): f = pre 1[pre > theta], pre = pi + b_enc, with a
// trainable threshold theta = exp(t) per latent and an L0 penalty (lambda/B) sum_bi 1[pre > theta].
//
// Derivation (docs/variants.md): the step has no useful derivative, so the threshold's gradient
// is a straight-through estimate with the rectangle kernel K(u) = 1[-1/2 < u < 1/2] (strict) of
// bandwidth eps, u = pre - theta:
//   g_pi    = g_f 1[u > 0]                                      (the L0 term reaches nothing else)
//   g_theta = sum_b K(u/eps) ( -(theta/eps) g_f - lambda/(B eps) )
//   g_t     = theta g_theta                                     (chain rule through exp)
//   g_b_enc = sum_b g_pi
#pragma once
#include "kernels/activations/drivers.hpp"

namespace saescale::kernels {

// theta = exp(t), once per step rather than once per (token, latent).
inline void thresholds(const Vector& log_threshold, const Vector& theta) {
  Kokkos::parallel_for(
      "saescale::activation::jumprelu_thresholds",
      Kokkos::RangePolicy<ExecSpace>(0, theta.extent(0)),
      KOKKOS_LAMBDA(int64_t i) { theta(i) = kmath::exp(log_threshold(i)); });
}

struct JumpReluRule {
  static constexpr int kSums = 2;  // g_b_enc, g_theta
  static constexpr bool kL1Sum = false, kKeepsL1Input = false;

  Matrix pi;  // x W_enc, without the bias
  Vector b_enc;
  Vector theta;                        // exp(t), from thresholds()
  real half_window, inv_eps, l0_term;  // eps/2, 1/eps, lambda/(B eps): constants, so
                                       // every path rounds the same products
  Vector g_b_enc, g_log_threshold;     // out (backward)

  JumpReluRule(Matrix pi_, Vector b_enc_, Vector theta_, real bandwidth, real l0_scale,
               Vector g_b_enc_ = {}, Vector g_log_threshold_ = {})
      : pi(pi_),
        b_enc(b_enc_),
        theta(theta_),
        half_window(bandwidth / 2),
        inv_eps(1 / bandwidth),
        l0_term(l0_scale * (1 / bandwidth)),
        g_b_enc(g_b_enc_),
        g_log_threshold(g_log_threshold_) {}

  KOKKOS_INLINE_FUNCTION real pre(int64_t b, int64_t i) const { return pi(b, i) + b_enc(i); }

  // Branch-free (selects) so the dense loop vectorises: whether an entry is active is
  // data-dependent and unpredictable.
  KOKKOS_INLINE_FUNCTION Activation forward(int64_t b, int64_t i) const {
    const real p = pre(b, i);
    return {p > theta(i) ? p : real(0), 0};
  }
  // The active entries and the inactive ones inside the window (-eps/2 < u <= 0): those carry g_f
  // to the threshold's gradient (value 0, nothing added to the decode).
  KOKKOS_INLINE_FUNCTION bool keep(int64_t b, int64_t i) const {
    return pre(b, i) - theta(i) > -half_window;
  }

  KOKKOS_INLINE_FUNCTION real backward(int64_t b, int64_t i, int64_t /*j*/, real g_f,
                                       real (&terms)[kSums]) const {
    const real u = pre(b, i) - theta(i);
    const real g_pi = u > 0 ? g_f : real(0);
    const bool in_window = (-half_window < u) & (u < half_window);  // strict rectangle
    terms[0] = g_pi;
    terms[1] = in_window ? -(theta(i) * inv_eps) * g_f - l0_term : real(0);
    return g_pi;
  }
  KOKKOS_INLINE_FUNCTION void finish(int64_t i, const double (&sums)[kSums]) const {
    g_b_enc(i) = static_cast<real>(sums[0]);
    g_log_threshold(i) = static_cast<real>(theta(i) * sums[1]);
  }
};

}  // namespace saescale::kernels
