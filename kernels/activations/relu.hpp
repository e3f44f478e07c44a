// ReLU SAE activation (sae-variants.md §1): f = ReLU(pi + b_enc).
#pragma once
#include "kernels/activations/latent_stats.hpp"
#include "kernels/column_block.hpp"

namespace saescale::kernels {

// pi_raw = x W_enc without the bias: the GEMM writes it, forward and backward both add b_enc,
// which saves a B x M write pass.
struct ReluForward {
  Matrix pi_raw;
  Vector b_enc;
  Matrix f;
  LatentStats stats;

  KOKKOS_INLINE_FUNCTION void operator()(int64_t block) const {
    const auto cols = block_range(block, f.extent(1));
    const int64_t n = cols.end - cols.begin, rows = f.extent(0);
    int64_t active[kColumnBlock] = {}, fired[kColumnBlock] = {};
    double sum[kColumnBlock] = {};
    const real* bias = &b_enc(cols.begin);
    for (int64_t b = 0; b < rows; ++b) {
      const real* p = &pi_raw(b, cols.begin);
      real* out = &f(b, cols.begin);
      for (int64_t j = 0; j < n; ++j) {
        const real v = p[j] + bias[j] > 0 ? p[j] + bias[j] : real(0);
        out[j] = v;
        active[j] += v != 0;
        fired[j] += v > kFireThreshold;
        sum[j] += v;
      }
    }
    for (int64_t j = 0; j < n; ++j) {
      stats.active(cols.begin + j) = active[j];
      stats.fired(cols.begin + j) = fired[j];
      stats.f_sum(cols.begin + j) = sum[j];
    }
  }
};

// g_pi = (g_f + (lambda/B) ||W_dec[i]||) * 1[pi > 0], in place over g; g_b_enc = sum_b g_pi.
struct ReluBackward {
  Matrix pi_raw;
  Vector b_enc;
  Vector dec_norm;
  real penalty_scale;  // lambda / B
  Matrix g;            // in: g_f, out: g_pi
  Vector g_b_enc;

  KOKKOS_INLINE_FUNCTION void operator()(int64_t block) const {
    const auto cols = block_range(block, g.extent(1));
    const int64_t n = cols.end - cols.begin, rows = g.extent(0);
    double gb[kColumnBlock] = {};
    real penalty[kColumnBlock];
    for (int64_t j = 0; j < n; ++j) penalty[j] = penalty_scale * dec_norm(cols.begin + j);
    const real* bias = &b_enc(cols.begin);
    for (int64_t b = 0; b < rows; ++b) {
      const real* p = &pi_raw(b, cols.begin);
      real* grow = &g(b, cols.begin);
      for (int64_t j = 0; j < n; ++j) {
        const real gp = p[j] + bias[j] > 0 ? grow[j] + penalty[j] : real(0);
        grow[j] = gp;
        gb[j] += gp;
      }
    }
    for (int64_t j = 0; j < n; ++j) g_b_enc(cols.begin + j) = static_cast<real>(gb[j]);
  }
};

}  // namespace saescale::kernels
