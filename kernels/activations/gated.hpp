// Gated SAE activation (sae-variants.md §2), one encoder GEMM thanks to weight sharing:
//   p = x~ W_enc,  pi_gate = p + b_gate,  pi_mag = exp(r_mag) p + b_mag,
//   f = 1[pi_gate > 0] ReLU(pi_mag);  the L1 term and the auxiliary (frozen-decoder)
//   reconstruction both act on ReLU(pi_gate).
#pragma once
#include "kernels/activations/latent_stats.hpp"
#include "kernels/sparse.hpp"

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

// The sparse path (kernels/sparse.hpp, rows_from_rule): the gate's active entries (pi_gate > 0)
// straight from pi, valued f (the magnitude, 0 where pi_mag <= 0). They hold every entry the
// backward reads: the magnitude path's (a subset) and the gate path's (L1 and the auxiliary
// reconstruction). The same expressions as gated_forward_row.
struct GatedRows {
  Matrix p;
  Vector b_gate, scale, b_mag;
  KOKKOS_INLINE_FUNCTION bool keep(int64_t b, int64_t i) const { return p(b, i) + b_gate(i) > 0; }
  KOKKOS_INLINE_FUNCTION real value(int64_t b, int64_t i) const {
    const real pi_gate = p(b, i) + b_gate(i), pi_mag = scale(i) * p(b, i) + b_mag(i);
    return (pi_gate > 0) & (pi_mag > 0) ? pi_mag : real(0);
  }
};

// ReLU(pi_gate) at the rows' entries (the auxiliary reconstruction's input); returns its sum (the
// L1 term's numerator).
inline double gate_values(const sparse::SparseRows& rows, const Matrix& p, const Vector& b_gate,
                          const Matrix& out) {
  const sparse::IndexMatrix idx = rows.idx;
  const sparse::IndexVector count = rows.count;
  double sum = 0;
  Kokkos::parallel_reduce(
      "saescale::activation::gated_gate_values", Kokkos::RangePolicy<ExecSpace>(0, rows.rows()),
      KOKKOS_LAMBDA(int64_t b, double& acc) {
        for (int64_t j = 0; j < count(b); ++j) {
          const real pi_gate = p(b, idx(b, j)) + b_gate(idx(b, j));
          out(b, j) = pi_gate;  // > 0: the rows hold the gate's active entries only
          acc += pi_gate;
        }
      },
      sum);
  return sum;
}

// gated_backward_row over the rows, per latent (the index; in row order, no atomics): g_f and the
// auxiliary gradient at the rows' entries in, g_pi at them out; the per-latent sums as parameter
// gradients (g_r_mag before the chain rule through exp) and g_p_sum.
inline void gated_backward_rows(const sparse::SparseRows& g_f, const Matrix& g_aux,
                                const sparse::LatentIndex& index, const Matrix& p,
                                const Vector& b_gate, const Vector& scale, const Vector& b_mag,
                                real l1_scale, const Matrix& g_pi_values, const Vector& g_b_gate,
                                const Vector& g_b_mag, const Vector& g_r_mag,
                                const Vector& g_p_sum) {
  const int64_t cap = g_f.capacity();
  const Matrix gf = g_f.val;
  const sparse::IndexVector offsets = index.offsets, entries = index.entries;
  Kokkos::parallel_for(
      "saescale::variant_backward::gated_rows", Kokkos::RangePolicy<ExecSpace>(0, index.latents()),
      KOKKOS_LAMBDA(int64_t m) {
        double gb = 0, gm = 0, gr = 0, gs = 0;
        for (sparse::Index a = offsets(m); a < offsets(m + 1); ++a) {
          const int64_t e = entries(a), b = e / cap, j = e - b * cap;
          const real pm = p(b, m), pi_gate = pm + b_gate(m), pi_mag = scale(m) * pm + b_mag(m);
          const real g_mag = (pi_gate > 0) & (pi_mag > 0) ? gf(b, j) : real(0);
          const real g_gate = pi_gate > 0 ? g_aux(b, j) + l1_scale : real(0);
          const real gp = scale(m) * g_mag + g_gate;
          g_pi_values(b, j) = gp;
          gb += g_gate, gm += g_mag, gr += g_mag * pm, gs += gp;
        }
        g_b_gate(m) = static_cast<real>(gb);
        g_b_mag(m) = static_cast<real>(gm);
        g_r_mag(m) = static_cast<real>(gr);
        g_p_sum(m) = static_cast<real>(gs);
      });
}

}  // namespace saescale::kernels
