// JumpReLU SAE activation (sae-variants.md §5): f = pi * 1[pi > theta], theta = exp(t).
//
// The straight-through estimator uses the rectangle kernel K(u) = 1[-1/2 < u < 1/2] (strict) and
// produces gradients ONLY for t: the L0 term sends nothing to W_enc or b_enc.
#pragma once
#include "kernels/activations/latent_stats.hpp"
#include "kernels/sparse.hpp"

namespace saescale::kernels {

// theta = exp(t), once per step rather than once per (token, latent).
inline void thresholds(const Vector& log_threshold, const Vector& theta) {
  Kokkos::parallel_for(
      "saescale::activation::jumprelu_thresholds",
      Kokkos::RangePolicy<ExecSpace>(0, theta.extent(0)),
      KOKKOS_LAMBDA(int64_t i) { theta(i) = kmath::exp(log_threshold(i)); });
}

struct JumpReluForward {
  Matrix pi_raw;  // x W_enc, bias added here
  Vector b_enc;
  Vector theta;
  Matrix f;
  LatentStats stats;

  KOKKOS_INLINE_FUNCTION void tile(int64_t r0, int64_t r1, int64_t c0, int64_t c1,
                                   int64_t s) const {
    int64_t* active = &stats.active(s, 0);
    int64_t* fired = &stats.fired(s, 0);
    const real* bias = b_enc.data();
    const real* th = theta.data();
    for (int64_t i = c0; i < c1; ++i) active[i] = fired[i] = 0, stats.f_sum(s, i) = 0;
    for (int64_t b = r0; b < r1; ++b) {
      const real* p = &pi_raw(b, 0);
      real* out = &f(b, 0);
      for (int64_t i = c0; i < c1; ++i) {
        const real pre = p[i] + bias[i];
        // Branch-free (bitwise &, selects) so the loop vectorises: whether an entry is active is
        // data-dependent and unpredictable. The step is applied to pi, not to f.
        const bool on = pre > th[i];
        out[i] = on ? pre : real(0);
        active[i] += on;
        fired[i] += on & (pre > kFireThreshold);
      }
    }
  }
};

// In place over g: g_f in, g_pi = g_f * 1[pi > theta] out. Per latent (per slot):
//   g_b_enc  = sum_b g_pi
//   g_theta  = sum_b K((pi - theta)/eps) * ( -(theta/eps) g_f - lambda/(B eps) )
// and `finish` applies the chain rule through theta = exp(t): g_t = theta * g_theta.
struct JumpReluBackward {
  Matrix pi_raw;
  Vector b_enc;
  Vector theta;
  real bandwidth;  // eps
  real l0_scale;   // lambda / B
  Matrix g;
  SlotView<double> g_b_enc, g_theta;

  KOKKOS_INLINE_FUNCTION void tile(int64_t r0, int64_t r1, int64_t c0, int64_t c1,
                                   int64_t s) const {
    double* gb = &g_b_enc(s, 0);
    double* gt = &g_theta(s, 0);
    const real* bias = b_enc.data();
    const real* th = theta.data();
    const real half_window = bandwidth / 2, inv_eps = 1 / bandwidth, l0_term = l0_scale * inv_eps;
    for (int64_t i = c0; i < c1; ++i) gb[i] = gt[i] = 0;
    for (int64_t b = r0; b < r1; ++b) {
      const real* p = &pi_raw(b, 0);
      real* grow = &g(b, 0);
      for (int64_t i = c0; i < c1; ++i) {
        const real pre = p[i] + bias[i], gf = grow[i], u = pre - th[i];
        const real gp = u > 0 ? gf : real(0);
        const bool in_window = (-half_window < u) & (u < half_window);  // strict rectangle
        grow[i] = gp;
        gb[i] += gp;
        gt[i] += in_window ? -(th[i] * inv_eps) * gf - l0_term : real(0);
      }
    }
  }

  // Slot sums -> parameter gradients (float), with g_t = theta * g_theta.
  static void finish(const SlotView<double>& gb, const SlotView<double>& gt, const Vector& theta,
                     const Vector& g_b_enc, const Vector& g_log_threshold) {
    Kokkos::parallel_for(
        "saescale::variant_backward::jumprelu_finish",
        Kokkos::RangePolicy<ExecSpace>(0, theta.extent(0)), KOKKOS_LAMBDA(int64_t i) {
          double b = 0, t = 0;
          for (int64_t s = 0; s < static_cast<int64_t>(gb.extent(0)); ++s)
            b += gb(s, i), t += gt(s, i);
          g_b_enc(i) = static_cast<real>(b);
          g_log_threshold(i) = static_cast<real>(theta(i) * t);
        });
  }
};

// The sparse path (kernels/sparse.hpp, rows_from_rule): the entries JumpReLU's backward reads,
// straight from pi — the active ones (u = pi + b_enc - theta > 0, value pi + b_enc) and the
// inactive ones inside the straight-through window (-eps/2 < u <= 0, value 0: they carry g_f to
// the threshold's gradient and add nothing to the decode). The same float expressions as
// JumpReluForward and JumpReluBackward, so both paths make the same decisions.
struct JumpReluRows {
  Matrix pi_raw;
  Vector b_enc, theta;
  real half_window;
  KOKKOS_INLINE_FUNCTION bool keep(int64_t b, int64_t i) const {
    return pi_raw(b, i) + b_enc(i) - theta(i) > -half_window;
  }
  KOKKOS_INLINE_FUNCTION real value(int64_t b, int64_t i) const {
    const real pre = pi_raw(b, i) + b_enc(i);
    return pre > theta(i) ? pre : real(0);
  }
};

// JumpReluBackward over those rows: g_f at the rows' entries in, g_pi at the same entries out, and
// per latent g_b_enc and g_t, each latent summing its own entries (the index) in row order: no
// atomics, deterministic. Latents without entries get zero gradients, as on the dense path.
inline void jumprelu_backward_rows(const sparse::SparseRows& g_f, const sparse::LatentIndex& index,
                                   const Matrix& pi_raw, const Vector& b_enc, const Vector& theta,
                                   real bandwidth, real l0_scale, const Matrix& g_pi_values,
                                   const Vector& g_b_enc, const Vector& g_log_threshold) {
  const int64_t cap = g_f.capacity();
  const Matrix gf = g_f.val;
  const sparse::IndexVector offsets = index.offsets, entries = index.entries;
  const real half_window = bandwidth / 2, inv_eps = 1 / bandwidth, l0_term = l0_scale * inv_eps;
  Kokkos::parallel_for(
      "saescale::variant_backward::jumprelu_rows",
      Kokkos::RangePolicy<ExecSpace>(0, index.latents()), KOKKOS_LAMBDA(int64_t m) {
        const real bias = b_enc(m), th = theta(m);
        double gb = 0, gt = 0;
        for (sparse::Index a = offsets(m); a < offsets(m + 1); ++a) {
          const int64_t e = entries(a), b = e / cap, j = e - b * cap;
          const real u = pi_raw(b, m) + bias - th, g = gf(b, j);
          const real gp = u > 0 ? g : real(0);
          g_pi_values(b, j) = gp;
          gb += gp;
          if ((-half_window < u) & (u < half_window)) gt += -(th * inv_eps) * g - l0_term;
        }
        g_b_enc(m) = static_cast<real>(gb);
        g_log_threshold(m) = static_cast<real>(th * gt);
      });
}

}  // namespace saescale::kernels
