// ReLU SAE activation (sae-variants.md §1): f = ReLU(pi + b_enc).
#pragma once
#include "kernels/activations/latent_stats.hpp"

namespace saescale::kernels {

// pi_raw = x W_enc without the bias: the GEMM writes it, forward and backward both add b_enc,
// which saves a B x M write pass.
struct ReluForward {
  Matrix pi_raw;
  Vector b_enc;
  Matrix f;
  LatentStats stats;

  KOKKOS_INLINE_FUNCTION void tile(int64_t r0, int64_t r1, int64_t c0, int64_t c1,
                                   int64_t s) const {
    int64_t* active = &stats.active(s, 0);
    int64_t* fired = &stats.fired(s, 0);
    double* sum = &stats.f_sum(s, 0);
    const real* bias = b_enc.data();
    for (int64_t i = c0; i < c1; ++i) active[i] = fired[i] = 0, sum[i] = 0;
    for (int64_t b = r0; b < r1; ++b) {
      const real* p = &pi_raw(b, 0);
      real* out = &f(b, 0);
      for (int64_t i = c0; i < c1; ++i) {
        const real pre = p[i] + bias[i];
        const real v = pre > 0 ? pre : real(0);
        out[i] = v;
        active[i] += v != 0;
        fired[i] += v > kFireThreshold;
        sum[i] += v;
      }
    }
  }
};

// g_pi = (g_f + (lambda/B) ||W_dec[i]||) * 1[pi > 0], in place over g; per-slot sums of g_pi.
struct ReluBackward {
  Matrix pi_raw;
  Vector b_enc;
  Vector dec_norm;
  real penalty_scale;  // lambda / B
  Matrix g;            // in: g_f, out: g_pi
  SlotView<double> g_b_enc;

  KOKKOS_INLINE_FUNCTION void tile(int64_t r0, int64_t r1, int64_t c0, int64_t c1,
                                   int64_t s) const {
    double* gb = &g_b_enc(s, 0);
    const real* bias = b_enc.data();
    const real* norm = dec_norm.data();
    for (int64_t i = c0; i < c1; ++i) gb[i] = 0;
    for (int64_t b = r0; b < r1; ++b) {
      const real* p = &pi_raw(b, 0);
      real* grow = &g(b, 0);
      for (int64_t i = c0; i < c1; ++i) {
        const real gp = p[i] + bias[i] > 0 ? grow[i] + penalty_scale * norm[i] : real(0);
        grow[i] = gp;
        gb[i] += gp;
      }
    }
  }
};

// The sparse path (kernels/sparse.hpp, rows_from_rule): the active entries straight from pi, with
// ReluForward's expressions.
struct ReluRows {
  Matrix pi_raw;
  Vector b_enc;
  KOKKOS_INLINE_FUNCTION bool keep(int64_t b, int64_t i) const {
    return pi_raw(b, i) + b_enc(i) > 0;
  }
  KOKKOS_INLINE_FUNCTION real value(int64_t b, int64_t i) const { return pi_raw(b, i) + b_enc(i); }
};

}  // namespace saescale::kernels
