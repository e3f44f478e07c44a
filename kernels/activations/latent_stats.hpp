// Per-latent counts that every activation forward kernel produces in the same pass.
#pragma once
#include "kernels/tiling.hpp"

namespace saescale {

// A latent "fires" on a token when its activation exceeds this (docs/variants.md, Shared pieces).
inline constexpr real kFireThreshold = 1e-3f;

// [slots, M] accumulators (see tiling.hpp); after `reduce`, slot 0 holds the batch totals.
struct LatentStats {
  SlotView<int64_t> active;  // tokens with f != 0 (L0 numerator)
  SlotView<int64_t> fired;   // tokens with f > kFireThreshold (dead-latent statistics)
  SlotView<double> f_sum;    // sum of f over the batch (ReLU's penalty and its decoder gradient)

  static LatentStats allocate(int64_t width) {
    const int64_t slots = accumulator_slots();
    return {SlotView<int64_t>("saescale::stats::active", slots, width),
            SlotView<int64_t>("saescale::stats::fired", slots, width),
            SlotView<double>("saescale::stats::f_sum", slots, width)};
  }
  void reduce() const {
    reduce_slots("saescale::activation::reduce_active", active);
    reduce_slots("saescale::activation::reduce_fired", fired);
    reduce_slots("saescale::activation::reduce_f_sum", f_sum);
  }
  CountVector active_total() const { return Kokkos::subview(active, 0, Kokkos::ALL); }
  CountVector fired_total() const { return Kokkos::subview(fired, 0, Kokkos::ALL); }
  AccVector f_sum_total() const { return Kokkos::subview(f_sum, 0, Kokkos::ALL); }
};

}  // namespace saescale
