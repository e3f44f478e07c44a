// Gated SAE (Rajamanoharan et al. 2024) with weight sharing, so one encoder GEMM serves both
// paths: p = x~ W_enc (x~ = x - b_dec),
//   pi_gate = p + b_gate,   pi_mag = exp(r_mag) p + b_mag,   f = 1[pi_gate > 0] ReLU(pi_mag).
// The L1 term (lambda/B) sum ReLU(pi_gate) and the auxiliary reconstruction of x from
// ReLU(pi_gate) through the frozen decoder both act on the gate.
//
// Derivation (docs/variants.md): the gate's step passes no gradient, so
//   g_pi_mag  = g_f 1[pi_gate > 0] 1[pi_mag > 0]
//   g_pi_gate = (g_aux + lambda/B) 1[pi_gate > 0]          (g_aux: the auxiliary loss's gradient)
//   g_p       = exp(r_mag) g_pi_mag + g_pi_gate            (both paths read p)
// and per latent: g_b_gate = sum g_pi_gate, g_b_mag = sum g_pi_mag,
// g_r_mag = exp(r_mag) sum g_pi_mag p (chain rule through exp), and sum g_p (b_dec, through x~).
#pragma once
#include "kernels/activations/drivers.hpp"

namespace saescale::kernels {

// exp(r_mag), once per step.
inline void magnitude_scales(const Vector& r_mag, const Vector& scale) {
  Kokkos::parallel_for(
      "saescale::activation::gated_scales", Kokkos::RangePolicy<ExecSpace>(0, scale.extent(0)),
      KOKKOS_LAMBDA(int64_t i) { scale(i) = kmath::exp(r_mag(i)); });
}

struct GatedRule {
  static constexpr int kSums = 4;  // g_b_gate, g_b_mag, g_r_mag (before exp's chain factor), g_p
  static constexpr bool kL1Sum = true, kKeepsL1Input = true;

  Matrix p;                     // x~ W_enc
  Vector b_gate, scale, b_mag;  // scale = exp(r_mag), from magnitude_scales()
  real l1_scale;                // lambda / B (backward)
  Matrix g_aux;  // the auxiliary loss's gradient w.r.t. ReLU(pi_gate), per entry (backward)
  Vector g_b_gate, g_b_mag, g_r_mag, g_p_sum;  // out (backward)

  KOKKOS_INLINE_FUNCTION real pi_gate(int64_t b, int64_t i) const { return p(b, i) + b_gate(i); }
  KOKKOS_INLINE_FUNCTION real pi_mag(int64_t b, int64_t i) const {
    return scale(i) * p(b, i) + b_mag(i);
  }

  KOKKOS_INLINE_FUNCTION Activation forward(int64_t b, int64_t i) const {
    const real gate = pi_gate(b, i), mag = pi_mag(b, i);
    return {(gate > 0) & (mag > 0) ? mag : real(0), gate > 0 ? gate : real(0)};
  }
  // The gate's active entries: every entry the backward reads (the magnitude path's are a subset).
  KOKKOS_INLINE_FUNCTION bool keep(int64_t b, int64_t i) const { return pi_gate(b, i) > 0; }

  KOKKOS_INLINE_FUNCTION real backward(int64_t b, int64_t i, int64_t j, real g_f,
                                       real (&terms)[kSums]) const {
    const real gate = pi_gate(b, i), mag = pi_mag(b, i);
    const real g_mag = (gate > 0) & (mag > 0) ? g_f : real(0);
    const real g_gate = gate > 0 ? g_aux(b, j) + l1_scale : real(0);
    const real g_p = scale(i) * g_mag + g_gate;
    terms[0] = g_gate;
    terms[1] = g_mag;
    terms[2] = g_mag * p(b, i);
    terms[3] = g_p;
    return g_p;
  }
  KOKKOS_INLINE_FUNCTION void finish(int64_t i, const double (&sums)[kSums]) const {
    g_b_gate(i) = static_cast<real>(sums[0]);
    g_b_mag(i) = static_cast<real>(sums[1]);
    g_r_mag(i) = static_cast<real>(sums[2]) * scale(i);  // d/dr = exp(r) d/d(exp r)
    g_p_sum(i) = static_cast<real>(sums[3]);
  }
};

}  // namespace saescale::kernels
