// ReLU SAE (Anthropic, April 2024): f = ReLU(pi + b_enc), L1 penalty weighted by each decoder
// row's norm, (lambda/B) sum_b sum_i f_bi ||W_dec[i]||.
//
// Derivation (docs/variants.md): d penalty / d f_bi = (lambda/B) ||W_dec[i]||, so
//   g_pi = (g_f + (lambda/B) ||W_dec[i]||) 1[pi + b_enc > 0],   g_b_enc = sum_b g_pi.
// The decoder-norm term of W_dec's gradient is the variant's (src/variants/relu.cpp).
#pragma once
#include "kernels/activations/drivers.hpp"

namespace saescale::kernels {

struct ReluRule {
  static constexpr int kSums = 1;  // g_b_enc
  static constexpr bool kL1Sum = true, kKeepsL1Input = false;

  Matrix pi;           // x W_enc, without the bias (both passes add it: no B x M write pass)
  Vector b_enc;        //
  Vector dec_norm;     // ||W_dec[i]|| (backward)
  real penalty_scale;  // lambda / B (backward)
  Vector g_b_enc;      // out (backward)

  KOKKOS_INLINE_FUNCTION real pre(int64_t b, int64_t i) const { return pi(b, i) + b_enc(i); }

  KOKKOS_INLINE_FUNCTION Activation forward(int64_t b, int64_t i) const {
    const real p = pre(b, i);
    const real f = p > 0 ? p : real(0);
    return {f, f};
  }
  KOKKOS_INLINE_FUNCTION bool keep(int64_t b, int64_t i) const { return pre(b, i) > 0; }

  KOKKOS_INLINE_FUNCTION real backward(int64_t b, int64_t i, int64_t /*j*/, real g_f,
                                       real (&terms)[kSums]) const {
    const real g_pi = pre(b, i) > 0 ? g_f + penalty_scale * dec_norm(i) : real(0);
    terms[0] = g_pi;
    return g_pi;
  }
  KOKKOS_INLINE_FUNCTION void finish(int64_t i, const double (&sums)[kSums]) const {
    g_b_enc(i) = static_cast<real>(sums[0]);
  }
};

}  // namespace saescale::kernels
