// JumpReLU SAE activation (sae-variants.md §5): f = pi * 1[pi > theta], theta = exp(t).
//
// The straight-through estimator uses the rectangle kernel K(u) = 1[-1/2 < u < 1/2] (strict) and
// produces gradients ONLY for t: the L0 term sends nothing to W_enc or b_enc.
#pragma once
#include "kernels/activations/latent_stats.hpp"
#include "kernels/column_block.hpp"

namespace saescale::kernels {

struct JumpReluForward {
  Matrix pi_raw;  // x W_enc, bias added here
  Vector b_enc;
  Vector log_threshold;
  Matrix f;
  LatentStats stats;

  KOKKOS_INLINE_FUNCTION void operator()(int64_t block) const {
    const auto cols = block_range(block, f.extent(1));
    const int64_t n = cols.end - cols.begin, rows = f.extent(0);
    int64_t active[kColumnBlock] = {}, fired[kColumnBlock] = {};
    real theta[kColumnBlock];
    for (int64_t j = 0; j < n; ++j) theta[j] = kmath::exp(log_threshold(cols.begin + j));
    const real* bias = &b_enc(cols.begin);
    for (int64_t b = 0; b < rows; ++b) {
      const real* p = &pi_raw(b, cols.begin);
      real* out = &f(b, cols.begin);
      for (int64_t j = 0; j < n; ++j) {
        const real pre = p[j] + bias[j];
        const real v = pre > theta[j] ? pre : real(0);  // the step is applied to pi, not to f
        out[j] = v;
        active[j] += pre > theta[j];
        fired[j] += v > kFireThreshold;
      }
    }
    for (int64_t j = 0; j < n; ++j) {
      stats.active(cols.begin + j) = active[j];
      stats.fired(cols.begin + j) = fired[j];
      stats.f_sum(cols.begin + j) = 0;  // unused by JumpReLU
    }
  }
};

// In place over g: g_f in, g_pi = g_f * 1[pi > theta] out. Per latent:
//   g_b_enc = sum_b g_pi
//   g_t     = theta * sum_b K((pi - theta)/eps) * ( -(theta/eps) g_f - lambda/(B eps) )
struct JumpReluBackward {
  Matrix pi_raw;
  Vector b_enc;
  Vector log_threshold;
  real bandwidth;  // eps
  real l0_scale;   // lambda / B
  Matrix g;
  Vector g_b_enc;
  Vector g_log_threshold;

  KOKKOS_INLINE_FUNCTION void operator()(int64_t block) const {
    const auto cols = block_range(block, g.extent(1));
    const int64_t n = cols.end - cols.begin, rows = g.extent(0);
    double gb[kColumnBlock] = {}, gtheta[kColumnBlock] = {};
    real theta[kColumnBlock];
    for (int64_t j = 0; j < n; ++j) theta[j] = kmath::exp(log_threshold(cols.begin + j));
    const real half_window = bandwidth / 2, inv_eps = 1 / bandwidth;
    const real* bias = &b_enc(cols.begin);
    for (int64_t b = 0; b < rows; ++b) {
      const real* p = &pi_raw(b, cols.begin);
      real* grow = &g(b, cols.begin);
      for (int64_t j = 0; j < n; ++j) {
        const real pre = p[j] + bias[j];
        const real gf = grow[j];
        const real gp = pre > theta[j] ? gf : real(0);
        grow[j] = gp;
        gb[j] += gp;
        const real u = pre - theta[j];
        const bool in_window = -half_window < u && u < half_window;  // strict rectangle
        gtheta[j] += in_window ? -(theta[j] * inv_eps) * gf - l0_scale * inv_eps : real(0);
      }
    }
    for (int64_t j = 0; j < n; ++j) {
      g_b_enc(cols.begin + j) = static_cast<real>(gb[j]);
      g_log_threshold(cols.begin + j) =
          static_cast<real>(theta[j] * gtheta[j]);  // d/dt = theta d/dtheta
    }
  }
};

}  // namespace saescale::kernels
