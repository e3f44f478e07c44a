// Exact top-k selection (docs/variants.md, TopK and BatchTopK): the k largest values per row (TopK,
// AuxK) or over the whole batch (BatchTopK), ties resolved to the LOWER index. Three algorithms,
// selectable with
// --topk-algo, because their cost is what the project measures:
//   radix  — 4 passes of 256-bin histograms over the values' order-preserving 32-bit keys;
//   bisect — bisection on the key (a per-row threshold) with a count per step: 32 passes;
//   filter — one pass (CPUs): scan in index order, keep the entries whose key beats a running
//            threshold tau in a small buffer; when the buffer is full keep its k best (by the
//            unique key: value, then lower index) and raise tau to the k-th's key. Only positive
//            values are candidates (tau starts at order_key(+0)): the output is ReLU after
//            selection, so a selected non-positive value outputs 0 either way. Batch-wide, the
//            radix passes then run over the candidates only. On GPU backends (kColumnTiles) the
//            filter is not implemented: `filter` runs the radix algorithm there.
// radix and bisect find the key T of the k-th largest value and how many values equal to T to
// take; a final pass writes out = ReLU(value) on the selected entries and 0 elsewhere (ReLU after
// selection, so rows with fewer than k positive values have L0 < k). All three select exactly the
// same entries.
#pragma once
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "kernels/types.hpp"

namespace saescale::kernels {

enum class TopkAlgo { radix, bisect, filter };
TopkAlgo parse_topk_algo(const std::string& name);
const char* topk_algo_name(TopkAlgo a);
// The algorithm this build runs for `requested`: filter is a CPU algorithm, so builds with GPU
// mappings (kColumnTiles) run radix for it. Callers record this one, not the requested one.
TopkAlgo effective_topk_algo(TopkAlgo requested);

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
//
// When `entries` is given (non-empty views), it also receives per row the non-zeros of out(b, :)
// in increasing latent order: idx(b, j), val(b, j) for j < count(b) (at most k; slots beyond are
// left as they were). Its views are [rows, capacity] with capacity >= min(k, M), and [rows]
// (kernels/sparse.hpp's SparseRows idx, val and count have these types).
struct SelectedEntries {
  Kokkos::View<int32_t**, Kokkos::LayoutRight, MemSpace> idx;
  Matrix val;
  Kokkos::View<int32_t*, Kokkos::LayoutRight, MemSpace> count;
};
void row_topk(const Matrix& values, const Vector& bias, int64_t k, TopkAlgo algo, const Matrix& out,
              const CountVector& eligible = {}, const CountVector& active = {},
              const CountVector& fired = {}, real fire_threshold = 0,
              const SelectedEntries& entries = {});

// Ranks whose matrices are blocks of one global matrix (data-parallel rows x latent-parallel
// columns) select together: `sum` adds histogram counts over them in place; `tie_offsets` gets
// this rank's count of entries equal to the threshold per local row and returns, per local row,
// how many such entries come before it in the global row-major order. Kernels stay free of MPI:
// the caller supplies these (src/variants/topk.cpp).
struct SelectionGroup {
  std::function<void(int64_t* counts, int n)> sum;
  std::function<std::vector<int64_t>(const std::vector<int64_t>& row_ties)> tie_offsets;
};

// Batch-wide: out = ReLU(v) on the k largest entries of ReLU(v) over the whole matrix (ties: lower
// row-major index), 0 elsewhere; with a group, over the group's global matrix (k is global).
// Returns the smallest selected positive value of this block (0 if none), which BatchTopK's running
// inference threshold follows.
double batch_topk(const Matrix& values, const Vector& bias, int64_t k, TopkAlgo algo,
                  const Matrix& out, const CountVector& active = {}, const CountVector& fired = {},
                  real fire_threshold = 0, const SelectionGroup* group = nullptr);

// ---- Row-wise top-k over latent shards (latent parallelism) -------------------------------------
// Every shard selects its local top-k (row_topk); the positive survivors are the only candidates
// (a value in the global top-k is in its shard's top-k, and ReLU after selection drops the rest).
// Candidates carry a 64-bit key: the value's order key, then the complement of the GLOBAL latent
// index, so keys are unique and ordered as the one-rank selection orders entries (lower index
// first among equal values). After an all-gather of the keys, every shard finds the same k-th key
// per row and keeps its entries at or above it: exactly the one-rank selection.
using KeyVector = Kokkos::View<uint64_t*, Kokkos::LayoutRight, MemSpace>;

KOKKOS_INLINE_FUNCTION uint64_t entry_key(real v, int64_t global_index) {
  return (uint64_t(order_key(v)) << 32) | uint64_t(0xffffffffu - uint32_t(global_index));
}

// cand[b * k + j]: keys of the non-zero entries of row b of `selected` (at most k), 0-padded.
void row_candidates(const Matrix& selected, int64_t k, int64_t latent_offset,
                    const KeyVector& cand);
// keys = [parts][rows][k]: per row, the k-th largest key over all parts (0 when fewer than k are
// non-zero, i.e. every candidate is kept).
void row_kth_key(const KeyVector& keys, int64_t parts, int64_t rows, int64_t k,
                 const KeyVector& kth);
// Zeroes the entries of `selected` whose key is below their row's k-th key; counts the kept
// entries per latent as row_topk does.
void keep_selected(const Matrix& selected, int64_t latent_offset, const KeyVector& kth,
                   const CountVector& active = {}, const CountVector& fired = {},
                   real fire_threshold = 0);

}  // namespace saescale::kernels
