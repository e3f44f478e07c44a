// The kernel lab: alternatives that were measured against the mainline kernels and lost, kept
// to be re-measured (benchmarks/kernels.cpp) and tested (tests/unit/test_sparse.cpp) against
// them. Nothing in src/ uses them.
#pragma once
#include "kernels/sparse.hpp"

namespace saescale::sparse::lab {

// g [rows, cols] = beta g (0 when beta = 0: g is not read).
inline void scale_matrix(const char* label, const Matrix& g, real beta) {
  if (beta == 1) return;
  Kokkos::parallel_for(
      label, Kokkos::RangePolicy<ExecSpace>(0, g.size()),
      KOKKOS_LAMBDA(int64_t k) { g.data()[k] = beta == 0 ? real(0) : beta * g.data()[k]; });
}

// g_W_dec [M, d] = beta g_W_dec + alpha f^T G, G [B, d] (the step: G = e, alpha = -2/B).
// Every row of g_W_dec is written, touched or not: a first O(M d) pass scales it by beta (zeroes
// it when beta = 0), then each entry adds alpha val G[b, :] to its latent's row with atomics.
// Not deterministic on parallel backends (the order of the atomic adds varies).
inline void sparse_decoder_gradient_atomic(const SparseRows& rows, const Matrix& G, real alpha,
                                           real beta, const Matrix& g_W_dec) {
  const int64_t B = G.extent(0), d = G.extent(1);
  if (rows.rows() != B || static_cast<int64_t>(g_W_dec.extent(1)) != d)
    throw Error("sparse_decoder_gradient_atomic: shapes of rows, G and g_W_dec do not match");
  scale_matrix("saescale::sparse::decoder_gradient_scale", g_W_dec, beta);
  const IndexMatrix idx = rows.idx;
  const Matrix val = rows.val;
  const IndexVector count = rows.count;
  if constexpr (kColumnTiles) {
    Kokkos::parallel_for(
        "saescale::sparse::decoder_gradient_atomic", Kokkos::TeamPolicy<ExecSpace>(B, Kokkos::AUTO),
        KOKKOS_LAMBDA(const Team& team) {
          const int64_t b = team.league_rank();
          for (int64_t j = 0; j < count(b); ++j) {
            const real v = alpha * val(b, j);
            const int64_t m = idx(b, j);
            Kokkos::parallel_for(Kokkos::TeamThreadRange(team, d), [&](int64_t c) {
              Kokkos::atomic_add(&g_W_dec(m, c), v * G(b, c));
            });
          }
        });
  } else {
    Kokkos::parallel_for(
        "saescale::sparse::decoder_gradient_atomic", Kokkos::RangePolicy<ExecSpace>(0, B),
        KOKKOS_LAMBDA(int64_t b) {
          const real* gb = &G(b, 0);
          for (int64_t j = 0; j < count(b); ++j) {
            const real v = alpha * val(b, j);
            real* out = &g_W_dec(idx(b, j), 0);
            for (int64_t c = 0; c < d; ++c) Kokkos::atomic_add(&out[c], v * gb[c]);
          }
        });
  }
}

}  // namespace saescale::sparse::lab
