// Per-latent counts that every activation forward kernel produces in the same pass.
#pragma once
#include "kernels/types.hpp"

namespace saescale {

// A latent "fires" on a token when its activation exceeds this (sae-variants.md §0, dead latents).
inline constexpr real kFireThreshold = 1e-3f;

struct LatentStats {
  CountVector active;  // tokens with f != 0 (L0 numerator)
  CountVector fired;   // tokens with f > kFireThreshold (dead-latent statistics)
  AccVector f_sum;     // sum of f over the batch (ReLU's penalty and its decoder gradient)
};

}  // namespace saescale
