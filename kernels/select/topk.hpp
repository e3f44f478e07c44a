// Exact top-k selection (sae-variants.md §3-§4): the k largest values per row (TopK, AuxK) or over
// the whole batch (BatchTopK), ties resolved to the LOWER index. Two algorithms, selectable with
// --topk-algo, because their cost is what the project measures:
//   radix  — 4 passes of 256-bin histograms over the values' order-preserving 32-bit keys;
//   bisect — bisection on the key (a per-row threshold) with a count per step: 32 passes.
// Both find the key T of the k-th largest value and how many values equal to T to take; a final
// pass writes out = ReLU(value) on the selected entries and 0 elsewhere (ReLU after selection, so
// rows with fewer than k positive values have L0 < k).
#pragma once
#include <cstring>
#include <string>

#include "kernels/types.hpp"

namespace saescale::kernels {

enum class TopkAlgo { radix, bisect };
TopkAlgo parse_topk_algo(const std::string& name);
const char* topk_algo_name(TopkAlgo a);

// Larger float -> larger key; -0 < +0 (irrelevant after ReLU). Branch-free: negative values flip
// all bits, others only the sign bit (a branch on the sign mispredicts half the time).
KOKKOS_INLINE_FUNCTION uint32_t order_key(real v) {
  uint32_t u;
  memcpy(&u, &v, sizeof u);
  return u ^ (uint32_t(-int32_t(u >> 31)) | 0x80000000u);
}

// Keys of entries that may not be selected (AuxK: latents that are not dead) are 0, below every
// real value's key (order_key of any float except the all-ones NaN pattern is >= 0x00800000).
inline constexpr uint32_t kExcluded = 0;

// The values selected from are values(b, i) + bias(i) (the encoder bias; an empty view: none).
//
// Row-wise: out(b, :) = ReLU(v(b, :)) on the k largest entries of row b whose latent is eligible
// (eligible(i) != 0; an empty view means all), 0 elsewhere. Requires k <= #eligible.
//
// When `active`/`fired` are given ([M], zeroed by the caller), the final pass also counts, per
// latent, the tokens with out != 0 and out > kFire (atomics on the selected entries only).
void row_topk(const Matrix& values, const Vector& bias, int64_t k, TopkAlgo algo, const Matrix& out,
              const CountVector& eligible = {}, const CountVector& active = {},
              const CountVector& fired = {}, real fire_threshold = 0);

// Batch-wide: out = ReLU(v) on the k largest entries of ReLU(v) over the whole matrix (ties: lower
// row-major index), 0 elsewhere. Returns the smallest selected positive value (0 if none), which
// BatchTopK's running inference threshold follows.
double batch_topk(const Matrix& values, const Vector& bias, int64_t k, TopkAlgo algo,
                  const Matrix& out, const CountVector& active = {}, const CountVector& fired = {},
                  real fire_threshold = 0);

}  // namespace saescale::kernels
