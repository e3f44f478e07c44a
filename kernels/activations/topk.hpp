// TopK / BatchTopK (sae-variants.md §3-§4): the selection itself is in kernels/select/; these are
// the passes around it. The selection is a constant mask in backward: the gradient reaches pi only
// on the selected entries (and, for AuxK, on the selected dead entries), times ReLU's derivative.
#pragma once
#include "kernels/activations/latent_stats.hpp"

namespace saescale::kernels {

// In place over g: g_pi = g_f 1[f > 0] (+ g_z 1[z > 0] when AuxK is on); per slot: sum_b g_pi.
struct TopkBackward {
  Matrix f, z, g_z;  // z, g_z: AuxK activations and their gradient (ignored when !auxk)
  bool auxk;
  Matrix g;
  SlotView<double> g_pi_sum;

  KOKKOS_INLINE_FUNCTION void tile(int64_t r0, int64_t r1, int64_t c0, int64_t c1,
                                   int64_t s) const {
    double* sum = &g_pi_sum(s, 0);
    for (int64_t i = c0; i < c1; ++i) sum[i] = 0;
    for (int64_t b = r0; b < r1; ++b) {
      const real* frow = &f(b, 0);
      real* grow = &g(b, 0);
      if (auxk) {
        const real* zrow = &z(b, 0);
        const real* gzrow = &g_z(b, 0);
        for (int64_t i = c0; i < c1; ++i) {
          const real gp = (frow[i] > 0 ? grow[i] : real(0)) + (zrow[i] > 0 ? gzrow[i] : real(0));
          grow[i] = gp;
          sum[i] += gp;
        }
      } else {
        for (int64_t i = c0; i < c1; ++i) {
          const real gp = frow[i] > 0 ? grow[i] : real(0);
          grow[i] = gp;
          sum[i] += gp;
        }
      }
    }
  }
};

}  // namespace saescale::kernels
