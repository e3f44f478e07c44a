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

// One row of the forward pass. A separate function with __restrict__ pointers: inlined into the
// tile, GCC gave up vectorising this many streams ("complicated access pattern"); as is, it does.
KOKKOS_FUNCTION inline void gated_forward_row(
    const real* __restrict__ p, const real* __restrict__ b_gate, const real* __restrict__ scale,
    const real* __restrict__ b_mag, real* __restrict__ f, real* __restrict__ gate,
    int64_t* __restrict__ active, int64_t* __restrict__ fired, double* __restrict__ gate_sum,
    int64_t c0, int64_t c1) {
  for (int64_t i = c0; i < c1; ++i) {
    const real pi_gate = p[i] + b_gate[i], pi_mag = scale[i] * p[i] + b_mag[i];
    const real v = (pi_gate > 0) & (pi_mag > 0) ? pi_mag : real(0);
    const real relu_gate = pi_gate > 0 ? pi_gate : real(0);
    f[i] = v;
    gate[i] = relu_gate;
    active[i] += v != 0;
    fired[i] += v > kFireThreshold;
    gate_sum[i] += relu_gate;
  }
}

// f and gate_act = ReLU(pi_gate); stats.f_sum holds sum_b ReLU(pi_gate) (the L1 term).
struct GatedForward {
  Matrix p;  // x~ W_enc
  Vector b_gate, scale, b_mag;
  Matrix f, gate_act;
  LatentStats stats;

  KOKKOS_INLINE_FUNCTION void tile(int64_t r0, int64_t r1, int64_t c0, int64_t c1,
                                   int64_t s) const {
    for (int64_t i = c0; i < c1; ++i)
      stats.active(s, i) = stats.fired(s, i) = 0, stats.f_sum(s, i) = 0;
    for (int64_t b = r0; b < r1; ++b)
      gated_forward_row(&p(b, 0), b_gate.data(), scale.data(), b_mag.data(), &f(b, 0),
                        &gate_act(b, 0), &stats.active(s, 0), &stats.fired(s, 0),
                        &stats.f_sum(s, 0), c0, c1);
  }
};

// One row of the backward pass (see gated_forward_row for why a separate function).
KOKKOS_FUNCTION inline void gated_backward_row(
    const real* __restrict__ p, const real* __restrict__ b_gate, const real* __restrict__ scale,
    const real* __restrict__ b_mag, real l1_scale, real* __restrict__ g,
    const real* __restrict__ g_aux, double* __restrict__ g_b_gate, double* __restrict__ g_b_mag,
    double* __restrict__ g_r_mag, double* __restrict__ g_p_sum, int64_t c0, int64_t c1) {
  for (int64_t i = c0; i < c1; ++i) {
    const real pi_gate = p[i] + b_gate[i], pi_mag = scale[i] * p[i] + b_mag[i];
    const real g_mag = (pi_gate > 0) & (pi_mag > 0) ? g[i] : real(0);
    const real g_gate = pi_gate > 0 ? g_aux[i] + l1_scale : real(0);
    const real gp = scale[i] * g_mag + g_gate;
    g[i] = gp;
    g_b_gate[i] += g_gate;
    g_b_mag[i] += g_mag;
    g_r_mag[i] += g_mag * p[i];
    g_p_sum[i] += gp;
  }
}

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
    for (int64_t i = c0; i < c1; ++i)
      g_b_gate(s, i) = g_b_mag(s, i) = g_r_mag(s, i) = g_p_sum(s, i) = 0;
    for (int64_t b = r0; b < r1; ++b)
      gated_backward_row(&p(b, 0), b_gate.data(), scale.data(), b_mag.data(), l1_scale, &g(b, 0),
                         &g_aux(b, 0), &g_b_gate(s, 0), &g_b_mag(s, 0), &g_r_mag(s, 0),
                         &g_p_sum(s, 0), c0, c1);
  }
};

}  // namespace saescale::kernels
