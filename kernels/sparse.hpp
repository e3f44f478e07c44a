// Sparse-aware kernels for the steps after the encoder (--sparse on|auto): once f is sparse
// (L0 of a few dozen out of M latents) every GEMM of the step but the encoder forward can be
// replaced by a gather or a scatter over f's non-zeros, O(B L0 d) instead of O(B M d).
//
//   compact_rows                    dense [B, M] -> SparseRows (per row: latents, values, count)
//   sparse_decode                   out = beta out + alpha f W_dec             (decode_gemm)
//   sparse_decoder_gradient_sorted  g_W_dec = beta g_W_dec + alpha f^T G       (backward_decoder)
//                                   one owner per latent (LatentIndex): no atomics, deterministic
//                                   (benchmarks/lab/ keeps the atomic alternative it was
//                                   measured against)
//   sparse_activation_gradient      g_f = alpha G W_dec^T at chosen entries (backward_activation)
//   sparse_encoder_gradient         g_W_enc = beta g_W_enc + alpha X^T g_pi    (backward_encoder)
//
// Nothing here allocates per call: SparseRows and LatentIndex are allocated once (per shape and
// capacity) and reused every step. Labels are "saescale::sparse::<kernel>". Each kernel has a
// GPU mapping (teams over rows or latents, threads over d: coalesced) and a CPU mapping (one work
// item per row or latent, contiguous d-loops that vectorise), chosen like tiling.hpp does.
#pragma once
#include <string>

#include "kernels/activations/latent_stats.hpp"
#include "kernels/optim.hpp"  // dot_lanes
#include "kernels/tiling.hpp"
#include "src/error.hpp"

namespace saescale::sparse {

using Index = int32_t;  // latent indices and flat entry ids (B * capacity < 2^31)
using IndexMatrix = Kokkos::View<Index**, Kokkos::LayoutRight, MemSpace>;
using IndexVector = Kokkos::View<Index*, Kokkos::LayoutRight, MemSpace>;
using Counter = Kokkos::View<int64_t, MemSpace>;
using Team = Kokkos::TeamPolicy<ExecSpace>::member_type;

// Fixed-capacity ELL rows of a [B, M] matrix: row b's entries are (idx(b, j), val(b, j)) for
// j < count(b), latents strictly increasing (so duplicate-free); slots j >= count(b) are
// unspecified and never read.
//
// The overflow contract: compact_rows keeps at most `capacity` entries per row, the FIRST ones in
// latent order, and stores in `overflow` how many rows had more and in `longest` the most entries
// a row had. A caller that finds overflow > 0 must not use these rows for that step (they are a
// truncation of f): it reallocates with a capacity of at least `longest` and compacts again (what
// Model does), or falls back to the dense path. TopK has at most k non-zeros
// per row (capacity k never overflows); ReLU, JumpReLU, Gated and BatchTopK have a variable count,
// so their capacity is the caller's choice (e.g. a multiple of the running max of L0).
struct SparseRows {
  IndexMatrix idx;    // [B, capacity] latent indices
  Matrix val;         // [B, capacity] values
  IndexVector count;  // [B] entries kept per row (<= capacity)
  Counter overflow;   // rows whose non-zeros exceeded the capacity (set by compact_rows)
  Counter longest;    // the most non-zeros in a row, capacity or not (set by compact_rows)

  static SparseRows allocate(const std::string& label, int64_t rows, int64_t capacity) {
    if (rows <= 0 || capacity <= 0 || rows * capacity >= (int64_t(1) << 31))
      throw Error("sparse rows '" + label + "': rows x capacity must be in [1, 2^31)");
    return {IndexMatrix(label + "_idx", rows, capacity), Matrix(label + "_val", rows, capacity),
            IndexVector(label + "_count", rows), Counter(label + "_overflow"),
            Counter(label + "_longest")};
  }
  // The same entry set (idx, count) with other values, e.g. g_pi at f's entries.
  SparseRows with_values(const Matrix& values) const {
    if (values.extent(0) != val.extent(0) || values.extent(1) != val.extent(1))
      throw Error("SparseRows::with_values: values must be [rows, capacity]");
    return {idx, values, count, overflow, longest};
  }
  int64_t rows() const { return idx.extent(0); }
  int64_t capacity() const { return idx.extent(1); }
};

// Rows that overflowed at the last compact_rows (a device-to-host copy: a synchronisation).
inline int64_t overflow_rows(const SparseRows& rows) {
  int64_t n = 0;
  Kokkos::deep_copy(n, rows.overflow);
  return n;
}

// The most entries a row had at the last compact_rows, kept or not (a synchronisation).
inline int64_t longest_row(const SparseRows& rows) {
  int64_t n = 0;
  Kokkos::deep_copy(n, rows.longest);
  return n;
}

// count(b) holds row b's full count: records the overflow and the longest row, then clips the
// counts to the capacity.
inline void clip_counts(const SparseRows& rows) {
  const IndexVector count = rows.count;
  const int64_t cap = rows.capacity();
  Kokkos::parallel_reduce(
      "saescale::sparse::overflow", Kokkos::RangePolicy<ExecSpace>(0, rows.rows()),
      KOKKOS_LAMBDA(int64_t b, int64_t & n) { n += count(b) > cap; }, rows.overflow);
  Kokkos::parallel_reduce(
      "saescale::sparse::longest", Kokkos::RangePolicy<ExecSpace>(0, rows.rows()),
      KOKKOS_LAMBDA(int64_t b, int64_t & n) { n = count(b) > n ? count(b) : n; },
      Kokkos::Max<int64_t, MemSpace>(rows.longest));
  Kokkos::parallel_for(
      "saescale::sparse::clip_counts", Kokkos::RangePolicy<ExecSpace>(0, rows.rows()),
      KOKKOS_LAMBDA(int64_t b) { count(b) = count(b) < cap ? count(b) : static_cast<Index>(cap); });
}

// Mean entries per row (a reduction and a device-to-host copy).
inline double mean_count(const SparseRows& rows) {
  const IndexVector count = rows.count;
  int64_t total = 0;
  Kokkos::parallel_reduce(
      "saescale::sparse::mean_count", Kokkos::RangePolicy<ExecSpace>(0, rows.rows()),
      KOKKOS_LAMBDA(int64_t b, int64_t & acc) { acc += count(b); }, total);
  return double(total) / double(rows.rows());
}

// rows <- the entries of a [B, M] matrix that `rule` defines instead of storing it: entry (b, i) is
// kept when rule.keep(b, i), in increasing latent order, with value rule.value(b, i) (see the
// overflow contract above). keep() runs B M times and must be cheap: on CPUs it is evaluated over
// blocks of kBlock latents in a loop that vectorises, and only blocks with a kept entry are
// visited again entry by entry (one read pass of whatever keep() reads, instead of a dense matrix
// written and read back). With `stats` (zeroed here) the kept entries with a non-zero value are
// counted per latent as the dense activation kernels count them: active (!= 0), fired
// (> kFireThreshold), f_sum.
template <class Rule>
void rows_from_rule(const char* label, int64_t B, int64_t M, const Rule& rule,
                    const SparseRows& rows, const LatentStats* stats = nullptr) {
  if (rows.rows() != B || M >= (int64_t(1) << 31))
    throw Error(std::string(label) + ": " + std::to_string(B) + " rows, the sparse rows have " +
                std::to_string(rows.rows()));
  const int64_t cap = rows.capacity();
  const IndexMatrix idx = rows.idx;
  const Matrix val = rows.val;
  const IndexVector count = rows.count;
  const bool counting = stats != nullptr;
  const LatentStats st = counting ? *stats : LatentStats{};
  if (counting) {
    Kokkos::deep_copy(st.active, 0);
    Kokkos::deep_copy(st.fired, 0);
    Kokkos::deep_copy(st.f_sum, 0.0);
  }
  if constexpr (kColumnTiles) {
    // A team per row; an exclusive scan over the row gives each kept entry its slot.
    Kokkos::parallel_for(
        label, Kokkos::TeamPolicy<ExecSpace>(B, Kokkos::AUTO), KOKKOS_LAMBDA(const Team& team) {
          const int64_t b = team.league_rank();
          Kokkos::parallel_scan(Kokkos::TeamThreadRange(team, M),
                                [&](int64_t i, int64_t& before, bool final) {
                                  const bool keep = rule.keep(b, i);
                                  if (final && keep) {
                                    const real v = rule.value(b, i);
                                    if (before < cap) idx(b, before) = static_cast<Index>(i);
                                    if (before < cap) val(b, before) = v;
                                    if (counting && v != 0) {
                                      Kokkos::atomic_add(&st.active(0, i), int64_t(1));
                                      if (v > kFireThreshold)
                                        Kokkos::atomic_add(&st.fired(0, i), int64_t(1));
                                      Kokkos::atomic_add(&st.f_sum(0, i), double(v));
                                    }
                                  }
                                  before += keep;
                                  if (final && i == M - 1) count(b) = static_cast<Index>(before);
                                });
        });
  } else {
    // A work item per chunk of rows (one accumulator slot each, as for_each_tile).
    constexpr int64_t kBlock = 32;
    const int64_t slots = accumulator_slots(), chunk = (B + slots - 1) / slots;
    Kokkos::parallel_for(
        label, Kokkos::RangePolicy<ExecSpace>(0, slots), KOKKOS_LAMBDA(int64_t slot) {
          const int64_t r0 = slot * chunk < B ? slot * chunk : B;
          const int64_t r1 = r0 + chunk < B ? r0 + chunk : B;
          for (int64_t b = r0; b < r1; ++b) {
            int64_t n = 0;
            for (int64_t i0 = 0; i0 < M; i0 += kBlock) {
              const int64_t i1 = i0 + kBlock < M ? i0 + kBlock : M;
              int kept = 0;
              for (int64_t i = i0; i < i1; ++i) kept += rule.keep(b, i);
              if (kept == 0) continue;
              for (int64_t i = i0; i < i1; ++i) {
                if (!rule.keep(b, i)) continue;
                const real v = rule.value(b, i);
                if (n < cap) idx(b, n) = static_cast<Index>(i), val(b, n) = v;
                ++n;
                if (counting && v != 0) {
                  st.active(slot, i) += 1;
                  st.fired(slot, i) += v > kFireThreshold;
                  st.f_sum(slot, i) += v;
                }
              }
            }
            count(b) = static_cast<Index>(n);
          }
        });
  }
  clip_counts(rows);
  if (counting) st.reduce();
}

// The stored non-zeros of f [B, M] as a rule.
struct NonZeros {
  Matrix f;
  KOKKOS_INLINE_FUNCTION bool keep(int64_t b, int64_t i) const { return f(b, i) != 0; }
  KOKKOS_INLINE_FUNCTION real value(int64_t b, int64_t i) const { return f(b, i); }
};

// rows <- the non-zeros of f [B, M] in increasing latent order (see the overflow contract above).
// Reads all of f: a dense O(B M) pass (activation kernels that emit rows directly avoid it).
inline void compact_rows(const Matrix& f, const SparseRows& rows) {
  rows_from_rule("saescale::sparse::compact_rows", f.extent(0), f.extent(1), NonZeros{f}, rows);
}

// out [B, d] = beta out + alpha f W_dec, f given by `rows` (gather-sum: O(B L0 d)). beta = 0 does
// not read out (as BLAS). The step's decode is alpha = -1, beta = 1 on out = x - b_dec.
inline void sparse_decode(const SparseRows& rows, const Matrix& W_dec, const Matrix& out, real beta,
                          real alpha = 1) {
  const int64_t B = out.extent(0), d = out.extent(1);
  if (rows.rows() != B || static_cast<int64_t>(W_dec.extent(1)) != d)
    throw Error("sparse_decode: shapes of rows, W_dec and out do not match");
  const IndexMatrix idx = rows.idx;
  const Matrix val = rows.val;
  const IndexVector count = rows.count;
  if constexpr (kColumnTiles) {
    Kokkos::parallel_for(
        "saescale::sparse::decode", Kokkos::TeamPolicy<ExecSpace>(B, Kokkos::AUTO),
        KOKKOS_LAMBDA(const Team& team) {
          const int64_t b = team.league_rank();
          const int64_t n = count(b);
          Kokkos::parallel_for(Kokkos::TeamThreadRange(team, d), [&](int64_t c) {
            real acc = 0;
            for (int64_t j = 0; j < n; ++j) acc += val(b, j) * W_dec(idx(b, j), c);
            out(b, c) = (beta == 0 ? real(0) : beta * out(b, c)) + alpha * acc;
          });
        });
  } else {
    Kokkos::parallel_for(
        "saescale::sparse::decode", Kokkos::RangePolicy<ExecSpace>(0, B), KOKKOS_LAMBDA(int64_t b) {
          real* o = &out(b, 0);
          if (beta == 0)
            for (int64_t c = 0; c < d; ++c) o[c] = 0;
          else if (beta != 1)
            for (int64_t c = 0; c < d; ++c) o[c] *= beta;
          for (int64_t j = 0; j < count(b); ++j) {
            const real v = alpha * val(b, j);
            const real* w = &W_dec(idx(b, j), 0);
            for (int64_t c = 0; c < d; ++c) o[c] += v * w[c];
          }
        });
  }
}

// dense [B, M] = 0 but at the rows' entries: dense(b, idx(b, j)) = val(b, j). Puts g_f back in
// the dense layout the variants' backward kernels read (one O(B M) write pass).
inline void scatter_rows(const SparseRows& rows, const Matrix& dense) {
  if (static_cast<int64_t>(dense.extent(0)) != rows.rows())
    throw Error("scatter_rows: the dense matrix and the sparse rows differ in rows");
  Kokkos::deep_copy(dense, real(0));
  const IndexMatrix idx = rows.idx;
  const Matrix val = rows.val;
  const IndexVector count = rows.count;
  Kokkos::parallel_for(
      "saescale::sparse::scatter_rows", Kokkos::RangePolicy<ExecSpace>(0, rows.rows()),
      KOKKOS_LAMBDA(int64_t b) {
        for (int64_t j = 0; j < count(b); ++j) dense(b, idx(b, j)) = val(b, j);
      });
}

// The entries of a SparseRows grouped by latent (a counting sort): latent m's entries are the
// flat entry ids e = b * capacity + j in entries[offsets(m), offsets(m + 1)), in increasing e
// (i.e. increasing row) order. Depends only on idx and count, so f's index serves every matrix
// with f's entry set (g_pi of TopK, BatchTopK, ReLU, JumpReLU, Gated's magnitude path).
struct LatentIndex {
  IndexVector offsets;  // [M + 1] exclusive scan of the histogram
  IndexVector cursor;   // [M] histogram, then scatter cursor (0 again after a build)
  IndexVector entries;  // [B * capacity] entry ids grouped by latent

  static LatentIndex allocate(const std::string& label, int64_t latents, int64_t rows,
                              int64_t capacity) {
    if (latents <= 0 || latents >= (int64_t(1) << 31) || rows * capacity >= (int64_t(1) << 31))
      throw Error("latent index '" + label + "': latents and rows x capacity must be < 2^31");
    return {IndexVector(label + "_offsets", latents + 1), IndexVector(label + "_cursor", latents),
            IndexVector(label + "_entries", rows * capacity)};
  }
  int64_t latents() const { return cursor.extent(0); }
};

// Counting sort of rows' entries by latent: clear, histogram (integer atomics: exact), exclusive
// scan, scatter (atomic slots), then each latent sorts its own bucket by entry id, so the result
// (and everything summed in its order) is deterministic. The sort is an insertion sort: linear
// when the scatter already ran in order (CPUs), quadratic in the bucket size otherwise (a latent
// active in every row of a GPU batch would cost B^2/4 steps on one thread).
inline void build_latent_index(const SparseRows& rows, const LatentIndex& index) {
  const int64_t cap = rows.capacity(), n_entries = rows.rows() * cap, M = index.latents();
  if (static_cast<int64_t>(index.entries.extent(0)) < n_entries)
    throw Error("build_latent_index: the index holds fewer entries than rows x capacity");
  const IndexMatrix idx = rows.idx;
  const IndexVector count = rows.count, offsets = index.offsets, cursor = index.cursor,
                    entries = index.entries;
  Kokkos::parallel_for(
      "saescale::sparse::latent_index_clear", Kokkos::RangePolicy<ExecSpace>(0, M),
      KOKKOS_LAMBDA(int64_t m) { cursor(m) = 0; });
  // GPUs: a thread per slot (most are empty, but the loop is flat and coalesced). CPUs: a work
  // item per row, over its entries only (B L0 instead of B x capacity iterations).
  if constexpr (kColumnTiles) {
    Kokkos::parallel_for(
        "saescale::sparse::latent_index_histogram", Kokkos::RangePolicy<ExecSpace>(0, n_entries),
        KOKKOS_LAMBDA(int64_t e) {
          const int64_t b = e / cap, j = e - b * cap;
          if (j < count(b)) Kokkos::atomic_add(&cursor(idx(b, j)), Index(1));
        });
  } else {
    Kokkos::parallel_for(
        "saescale::sparse::latent_index_histogram", Kokkos::RangePolicy<ExecSpace>(0, rows.rows()),
        KOKKOS_LAMBDA(int64_t b) {
          for (int64_t j = 0; j < count(b); ++j) Kokkos::atomic_add(&cursor(idx(b, j)), Index(1));
        });
  }
  Kokkos::parallel_scan(
      "saescale::sparse::latent_index_scan", Kokkos::RangePolicy<ExecSpace>(0, M),
      KOKKOS_LAMBDA(int64_t m, int64_t & before, bool final) {
        const Index c = cursor(m);
        if (final) {
          offsets(m) = static_cast<Index>(before);
          if (m == M - 1) offsets(M) = static_cast<Index>(before + c);
        }
        before += c;
      });
  // The cursor counts down from the bucket size: slot offsets(m + 1) - cursor, i.e. the bucket
  // fills from its start, in entry order when the loop runs in order.
  const auto place = KOKKOS_LAMBDA(int64_t b, int64_t j) {
    const Index m = idx(b, j);
    entries(offsets(m + 1) - Kokkos::atomic_fetch_sub(&cursor(m), Index(1))) =
        static_cast<Index>(b * cap + j);
  };
  if constexpr (kColumnTiles) {
    Kokkos::parallel_for(
        "saescale::sparse::latent_index_scatter", Kokkos::RangePolicy<ExecSpace>(0, n_entries),
        KOKKOS_LAMBDA(int64_t e) {
          const int64_t b = e / cap, j = e - b * cap;
          if (j < count(b)) place(b, j);
        });
  } else {
    Kokkos::parallel_for(
        "saescale::sparse::latent_index_scatter", Kokkos::RangePolicy<ExecSpace>(0, rows.rows()),
        KOKKOS_LAMBDA(int64_t b) {
          for (int64_t j = 0; j < count(b); ++j) place(b, j);
        });
  }
  Kokkos::parallel_for(
      "saescale::sparse::latent_index_sort", Kokkos::RangePolicy<ExecSpace>(0, M),
      KOKKOS_LAMBDA(int64_t m) {
        const Index begin = offsets(m), end = offsets(m + 1);
        for (Index a = begin + 1; a < end; ++a) {
          const Index e = entries(a);
          Index p = a;
          for (; p > begin && entries(p - 1) > e; --p) entries(p) = entries(p - 1);
          entries(p) = e;
        }
      });
}

// sum over the entry ids entries[begin, end) of val(entry) X[row(entry), c] (the GPU mapping's
// per-thread column of a by-latent gradient).
KOKKOS_INLINE_FUNCTION real entry_column_sum(const IndexVector& entries, Index begin, Index end,
                                             const Matrix& val, int64_t cap, const Matrix& X,
                                             int64_t c) {
  real acc = 0;
  for (Index a = begin; a < end; ++a) {
    const int64_t e = entries(a), b = e / cap;
    acc += val(b, e - b * cap) * X(b, c);
  }
  return acc;
}

// g [M, d] = beta g + alpha sum over latent m's entries of val(e) X[row(e), :], one owner per
// latent (no atomics; summed in row order: deterministic on a given backend). Every row is written
// (rows of latents without entries become beta g: zero when beta = 0, g not read), in the same
// pass: the O(M d) write the dense GEMM's output also costs. Shared by the decoder gradient
// (X = G) and, with W_enc stored [M, d], the encoder gradient (X = X_in, values g_pi).
inline void sparse_gradient_by_latent(const char* label, const SparseRows& rows,
                                      const LatentIndex& index, const Matrix& X, real alpha,
                                      real beta, const Matrix& g) {
  const int64_t M = g.extent(0), d = g.extent(1), cap = rows.capacity();
  if (index.latents() != M || static_cast<int64_t>(X.extent(1)) != d ||
      static_cast<int64_t>(X.extent(0)) != rows.rows())
    throw Error(std::string(label) + ": shapes of rows, index, X and the gradient do not match");
  const Matrix val = rows.val;
  const IndexVector offsets = index.offsets, entries = index.entries;
  if constexpr (kColumnTiles) {
    Kokkos::parallel_for(
        label, Kokkos::TeamPolicy<ExecSpace>(M, Kokkos::AUTO), KOKKOS_LAMBDA(const Team& team) {
          const int64_t m = team.league_rank();
          const Index begin = offsets(m), end = offsets(m + 1);
          Kokkos::parallel_for(Kokkos::TeamThreadRange(team, d), [&](int64_t c) {
            const real acc = entry_column_sum(entries, begin, end, val, cap, X, c);
            g(m, c) = (beta == 0 ? real(0) : beta * g(m, c)) + alpha * acc;
          });
        });
  } else {
    Kokkos::parallel_for(
        label, Kokkos::RangePolicy<ExecSpace>(0, M), KOKKOS_LAMBDA(int64_t m) {
          real* out = &g(m, 0);
          if (beta == 0)
            for (int64_t c = 0; c < d; ++c) out[c] = 0;
          else if (beta != 1)
            for (int64_t c = 0; c < d; ++c) out[c] *= beta;
          for (Index a = offsets(m); a < offsets(m + 1); ++a) {
            const int64_t e = entries(a), b = e / cap;
            const real v = alpha * val(b, e - b * cap);
            const real* x = &X(b, 0);
            for (int64_t c = 0; c < d; ++c) out[c] += v * x[c];
          }
        });
  }
}

// g_W_dec [M, d] = beta g_W_dec + alpha f^T G, from an index built on rows (build_latent_index).
inline void sparse_decoder_gradient_sorted(const SparseRows& rows, const LatentIndex& index,
                                           const Matrix& G, real alpha, real beta,
                                           const Matrix& g_W_dec) {
  sparse_gradient_by_latent("saescale::sparse::decoder_gradient_sorted", rows, index, G, alpha,
                            beta, g_W_dec);
}

// out_val(b, j) = alpha dot(G[b, :], W_dec[idx(b, j), :]) for j < count(b) (other slots: 0 on
// GPUs, unwritten on CPUs — never read):
// g_f = alpha G W_dec^T only at the entries of `rows` (O(nnz d)). The entry set is the caller's:
// f's active entries (ReLU, TopK, BatchTopK, Gated), or for JumpReLU the active entries plus the
// inactive ones inside the straight-through window (its threshold gradient needs g_f there).
inline void sparse_activation_gradient(const SparseRows& rows, const Matrix& G, const Matrix& W_dec,
                                       real alpha, const Matrix& out_val) {
  const int64_t B = G.extent(0), d = G.extent(1), cap = rows.capacity();
  if (rows.rows() != B || static_cast<int64_t>(W_dec.extent(1)) != d ||
      static_cast<int64_t>(out_val.extent(0)) != B ||
      static_cast<int64_t>(out_val.extent(1)) != cap)
    throw Error("sparse_activation_gradient: shapes of rows, G, W_dec and out_val do not match");
  const IndexMatrix idx = rows.idx;
  const IndexVector count = rows.count;
  if constexpr (kColumnTiles) {
    // A team per row, a thread per entry, vector lanes over d (a warp-wide dot product).
    Kokkos::parallel_for(
        "saescale::sparse::activation_gradient", Kokkos::TeamPolicy<ExecSpace>(B, Kokkos::AUTO, 32),
        KOKKOS_LAMBDA(const Team& team) {
          const int64_t b = team.league_rank();
          const int64_t n = count(b);
          Kokkos::parallel_for(Kokkos::TeamThreadRange(team, cap), [&](int64_t j) {
            real dot = 0;
            if (j < n) {
              const int64_t m = idx(b, j);
              Kokkos::parallel_reduce(
                  Kokkos::ThreadVectorRange(team, d),
                  [&](int64_t c, real& acc) { acc += G(b, c) * W_dec(m, c); }, dot);
            }
            Kokkos::single(Kokkos::PerThread(team), [&]() { out_val(b, j) = alpha * dot; });
          });
        });
  } else {
    Kokkos::parallel_for(
        "saescale::sparse::activation_gradient", Kokkos::RangePolicy<ExecSpace>(0, B),
        KOKKOS_LAMBDA(int64_t b) {
          for (int64_t j = 0; j < count(b); ++j)
            out_val(b, j) =
                static_cast<real>(alpha * kernels::dot_lanes(&G(b, 0), &W_dec(idx(b, j), 0), d));
        });
  }
}

// g_W_enc [d, M] = beta g_W_enc + alpha X_in^T g_pi over the non-zeros of g_pi (rows_of_g_pi, with
// `index` built on its entry set — f's index when g_pi has f's entries), one owner per latent
// column: no atomics, deterministic, every column written (beta-scaled or zeroed as above).
//
// W_enc is row-major [d, M] (SAELens' layout), so column m is strided by M: each owner writes d
// scattered floats (one cache line or 32-byte sector each). Storing W_enc transposed, [M, d]
// (docs/variants.md, Shared pieces allows it; the encoder forward then calls the GEMM with Trans::T
// at no cost), makes this a contiguous row write: exactly sparse_gradient_by_latent with X = X_in,
// the same kernel as the decoder gradient.
inline void sparse_encoder_gradient(const SparseRows& rows_of_g_pi, const LatentIndex& index,
                                    const Matrix& X_in, real alpha, real beta,
                                    const Matrix& g_W_enc) {
  const int64_t d = g_W_enc.extent(0), M = g_W_enc.extent(1), cap = rows_of_g_pi.capacity();
  if (index.latents() != M || static_cast<int64_t>(X_in.extent(1)) != d ||
      static_cast<int64_t>(X_in.extent(0)) != rows_of_g_pi.rows())
    throw Error("sparse_encoder_gradient: shapes of rows, index, X_in and g_W_enc do not match");
  const Matrix val = rows_of_g_pi.val;
  const IndexVector offsets = index.offsets, entries = index.entries;
  if constexpr (kColumnTiles) {
    Kokkos::parallel_for(
        "saescale::sparse::encoder_gradient", Kokkos::TeamPolicy<ExecSpace>(M, Kokkos::AUTO),
        KOKKOS_LAMBDA(const Team& team) {
          const int64_t m = team.league_rank();
          const Index begin = offsets(m), end = offsets(m + 1);
          Kokkos::parallel_for(Kokkos::TeamThreadRange(team, d), [&](int64_t c) {
            const real acc = entry_column_sum(entries, begin, end, val, cap, X_in, c);
            g_W_enc(c, m) = (beta == 0 ? real(0) : beta * g_W_enc(c, m)) + alpha * acc;
          });
        });
  } else {
    // A work item owns kTile consecutive latents (one 64-byte line of a row of g_W_enc) and walks
    // d in chunks of kChunk, accumulating in a local [kTile][kChunk] block (contiguous X reads
    // that vectorise), then writes each row's kTile floats at once. One latent per work item (4
    // bytes per line, each line re-fetched up to 16 times) took 113 ms instead of 25 at d = 512,
    // M = 32768, B = 2048, k = 32 on one core.
    constexpr int64_t kTile = 16, kChunk = 64;
    Kokkos::parallel_for(
        "saescale::sparse::encoder_gradient",
        Kokkos::RangePolicy<ExecSpace>(0, (M + kTile - 1) / kTile), KOKKOS_LAMBDA(int64_t t) {
          const int64_t m0 = t * kTile, tile = m0 + kTile < M ? kTile : M - m0;
          for (int64_t c0 = 0; c0 < d; c0 += kChunk) {
            const int64_t len = c0 + kChunk < d ? kChunk : d - c0;
            real acc[kTile][kChunk] = {};
            for (int64_t l = 0; l < tile; ++l)
              for (Index a = offsets(m0 + l); a < offsets(m0 + l + 1); ++a) {
                const int64_t e = entries(a), b = e / cap;
                const real v = val(b, e - b * cap);
                const real* x = &X_in(b, c0);
                for (int64_t c = 0; c < len; ++c) acc[l][c] += v * x[c];
              }
            for (int64_t c = 0; c < len; ++c) {
              real* out = &g_W_enc(c0 + c, m0);
              for (int64_t l = 0; l < tile; ++l)
                out[l] = (beta == 0 ? real(0) : beta * out[l]) + alpha * acc[l][c];
            }
          }
        });
  }
}

}  // namespace saescale::sparse
