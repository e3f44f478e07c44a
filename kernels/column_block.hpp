// Work decomposition for row-major [rows, cols] matrices that need per-column results (sums over
// the batch for every latent). One work item owns kColumnBlock adjacent columns and walks the rows:
// see types.hpp for why. Kernels call `block_range` to find their columns.
#pragma once
#include "kernels/types.hpp"

namespace saescale {

struct ColumnRange {
  int64_t begin, end;
};

KOKKOS_INLINE_FUNCTION ColumnRange block_range(int64_t block, int64_t cols) {
  const int64_t begin = block * kColumnBlock;
  const int64_t end = begin + kColumnBlock < cols ? begin + kColumnBlock : cols;
  return {begin, end};
}

inline Kokkos::RangePolicy<ExecSpace> column_block_policy(int64_t cols) {
  return Kokkos::RangePolicy<ExecSpace>(0, column_blocks(cols));
}

}  // namespace saescale
