// TopK / BatchTopK: f = ReLU(pi + b_enc) on the selected entries (kernels/select/ chooses them:
// the k largest per row, or the k B largest over the batch), 0 elsewhere.
//
// Derivation (docs/variants.md): the selection is a constant mask in the backward, so the gradient
// reaches pi only on the selected entries, times ReLU's derivative; with AuxK on, its own
// selection z of dead latents adds its gradient the same way:
//   g_pi = g_f 1[f > 0] (+ g_z 1[z > 0]),   g_b_enc = sum_b g_pi (which also reaches b_dec).
// The forward is the selection, not an elementwise rule.
#pragma once
#include "kernels/activations/drivers.hpp"

namespace saescale::kernels {

struct TopkRule {
  static constexpr int kSums = 1;  // g_b_enc
  static constexpr bool kL1Sum = false, kKeepsL1Input = false;

  Matrix f;         // the selected activations
  Matrix z, g_z;    // AuxK's activations and their gradient (read only when auxk)
  bool auxk;        //
  Vector g_b_enc;   // out
  Vector g_pi_sum;  // out: the same sum, for b_dec's gradient through x~

  KOKKOS_INLINE_FUNCTION real backward(int64_t b, int64_t i, int64_t /*j*/, real g_f,
                                       real (&terms)[kSums]) const {
    const real main = f(b, i) > 0 ? g_f : real(0);
    const real g_pi = auxk ? main + (z(b, i) > 0 ? g_z(b, i) : real(0)) : main;
    terms[0] = g_pi;
    return g_pi;
  }
  KOKKOS_INLINE_FUNCTION void finish(int64_t i, const double (&sums)[kSums]) const {
    g_b_enc(i) = g_pi_sum(i) = static_cast<real>(sums[0]);
  }
};

}  // namespace saescale::kernels
