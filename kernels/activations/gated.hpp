// Gated SAE activation (sae-variants.md §2), one encoder GEMM thanks to weight sharing:
//   p = x~ W_enc,  pi_gate = p + b_gate,  pi_mag = exp(r_mag) p + b_mag,
//   f = 1[pi_gate > 0] ReLU(pi_mag);  the L1 term and the auxiliary (frozen-decoder)
//   reconstruction both act on ReLU(pi_gate).
#pragma once
#include "kernels/activations/latent_stats.hpp"

namespace saescale::kernels {

// exp(r_mag), once per step.
inline void magnitude_scales(const Vector& r_mag, const Vector& scale) {
  Kokkos::parallel_for(
      "saescale::activation::gated_scales", Kokkos::RangePolicy<ExecSpace>(0, scale.extent(0)),
      KOKKOS_LAMBDA(int64_t i) { scale(i) = kmath::exp(r_mag(i)); });
}

// f and gate_act = ReLU(pi_gate); stats.f_sum holds sum_b ReLU(pi_gate) (the L1 term).
struct GatedForward {
  Matrix p;  // x~ W_enc
  Vector b_gate, scale, b_mag;
  Matrix f, gate_act;
  LatentStats stats;

  KOKKOS_INLINE_FUNCTION void tile(int64_t r0, int64_t r1, int64_t c0, int64_t c1,
                                   int64_t s) const {
    int64_t* active = &stats.active(s, 0);
    int64_t* fired = &stats.fired(s, 0);
    double* gate_sum = &stats.f_sum(s, 0);
    const real *bg = b_gate.data(), *sc = scale.data(), *bm = b_mag.data();
    for (int64_t i = c0; i < c1; ++i) active[i] = fired[i] = 0, gate_sum[i] = 0;
    for (int64_t b = r0; b < r1; ++b) {
      const real* prow = &p(b, 0);
      real* out = &f(b, 0);
      real* gate = &gate_act(b, 0);
      for (int64_t i = c0; i < c1; ++i) {
        const real pi_gate = prow[i] + bg[i], pi_mag = sc[i] * prow[i] + bm[i];
        const real v = (pi_gate > 0) & (pi_mag > 0) ? pi_mag : real(0);
        const real relu_gate = pi_gate > 0 ? pi_gate : real(0);
        out[i] = v;
        gate[i] = relu_gate;
        active[i] += v != 0;
        fired[i] += v > kFireThreshold;
        gate_sum[i] += relu_gate;
      }
    }
  }
};

// In place over g: g_f in, g_p = exp(r_mag) g_pi_mag + g_pi_gate out, with
//   g_pi_mag  = g_f 1[pi_gate > 0] 1[pi_mag > 0]           (the gate passes no gradient)
//   g_pi_gate = (g_aux + lambda/B) 1[pi_gate > 0]          (L1 and auxiliary terms)
// Per latent (per slot): sum g_pi_gate (b_gate), sum g_pi_mag (b_mag), sum g_pi_mag p (r_mag,
// before the chain factor exp(r_mag)), sum g_p (b_dec through x~).
struct GatedBackward {
  Matrix p;
  Vector b_gate, scale, b_mag;
  real l1_scale;  // lambda / B
  Matrix g, g_aux;
  SlotView<double> g_b_gate, g_b_mag, g_r_mag, g_p_sum;

  KOKKOS_INLINE_FUNCTION void tile(int64_t r0, int64_t r1, int64_t c0, int64_t c1,
                                   int64_t s) const {
    double *gbg = &g_b_gate(s, 0), *gbm = &g_b_mag(s, 0), *grm = &g_r_mag(s, 0);
    double* gps = &g_p_sum(s, 0);
    const real *bg = b_gate.data(), *sc = scale.data(), *bm = b_mag.data();
    for (int64_t i = c0; i < c1; ++i) gbg[i] = gbm[i] = grm[i] = gps[i] = 0;
    for (int64_t b = r0; b < r1; ++b) {
      const real* prow = &p(b, 0);
      const real* aux = &g_aux(b, 0);
      real* grow = &g(b, 0);
      for (int64_t i = c0; i < c1; ++i) {
        const real pi_gate = prow[i] + bg[i], pi_mag = sc[i] * prow[i] + bm[i];
        const real g_mag = (pi_gate > 0) & (pi_mag > 0) ? grow[i] : real(0);
        const real g_gate = pi_gate > 0 ? aux[i] + l1_scale : real(0);
        const real gp = sc[i] * g_mag + g_gate;
        grow[i] = gp;
        gbg[i] += g_gate;
        gbm[i] += g_mag;
        grm[i] += g_mag * prow[i];
        gps[i] += gp;
      }
    }
  }
};

}  // namespace saescale::kernels
