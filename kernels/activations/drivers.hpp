// The generic drivers that run every variant's elementwise rule, densely over [B, M] tiles or over
// sparse rows. A rule (kernels/activations/<variant>.hpp) is the variant's math written once:
//
//   Activation forward(b, i)        f at token b, latent i, and the input of its L1 term
//   bool keep(b, i)                 whether the backward reads entry (b, i) (the sparse rows)
//   real backward(b, i, j, g_f, terms)
//                                   g_pi from g_f, and the entry's terms of the kSums per-latent
//                                   sums; j addresses per-entry matrices (the dense column i, or
//                                   the entry's slot in the sparse rows)
//   void finish(i, sums)            the per-latent sums (double) -> parameter gradients, with the
//                                   chain factors through any reparametrisation (exp)
//
//   kSums        how many per-latent sums the backward accumulates (at most kMaxSums)
//   kL1Sum       whether stats.f_sum accumulates Activation::l1 (the L1 term's numerator)
//   kKeepsL1Input  whether dense_forward also stores Activation::l1 (Gated's auxiliary input)
//
// The drivers own the loops, the layouts, the per-latent statistics and the accumulation order;
// the rules own no loop. Both paths therefore make the same decision with the same float
// expression for every entry.
#pragma once
#include "kernels/activations/latent_stats.hpp"
#include "kernels/sparse.hpp"

namespace saescale::kernels {

// What a rule's forward gives for one entry.
struct Activation {
  real f;   // the activation
  real l1;  // the input of the L1 term (ReLU: f; Gated: ReLU(pi_gate)); unused without kL1Sum
};

inline constexpr int kMaxSums = 4;

// [kSums, slots, M]: the dense backward's per-slot, per-latent sums (see tiling.hpp).
using GradientSlots = Kokkos::View<double***, Kokkos::LayoutRight, MemSpace>;

template <class Rule>
GradientSlots gradient_slots(const char* label, int64_t width) {
  return GradientSlots(std::string(label), static_cast<size_t>(Rule::kSums),
                       static_cast<size_t>(accumulator_slots()), static_cast<size_t>(width));
}

// One row of a dense forward tile. Every written stream is __restrict__: with as many streams as
// Gated has, GCC otherwise gives up vectorising ("complicated access pattern").
template <class Rule>
KOKKOS_FUNCTION inline void forward_row(const Rule& rule, int64_t b, real* __restrict__ f,
                                        real* __restrict__ l1_input, int64_t* __restrict__ active,
                                        int64_t* __restrict__ fired, double* __restrict__ l1_sum,
                                        int64_t c0, int64_t c1) {
  for (int64_t i = c0; i < c1; ++i) {
    const Activation a = rule.forward(b, i);
    f[i] = a.f;
    active[i] += a.f != 0;
    fired[i] += a.f > kFireThreshold;
    if constexpr (Rule::kL1Sum) l1_sum[i] += a.l1;
    if constexpr (Rule::kKeepsL1Input) l1_input[i] = a.l1;
  }
}

template <class Rule>
struct ForwardTiles {
  Rule rule;
  Matrix f, l1_input;  // l1_input: [B, M] with kKeepsL1Input, else empty
  LatentStats stats;

  KOKKOS_INLINE_FUNCTION void tile(int64_t r0, int64_t r1, int64_t c0, int64_t c1,
                                   int64_t s) const {
    for (int64_t i = c0; i < c1; ++i)
      stats.active(s, i) = stats.fired(s, i) = 0, stats.f_sum(s, i) = 0;
    for (int64_t b = r0; b < r1; ++b)
      forward_row(rule, b, &f(b, 0), Rule::kKeepsL1Input ? &l1_input(b, 0) : nullptr,
                  &stats.active(s, 0), &stats.fired(s, 0), &stats.f_sum(s, 0), c0, c1);
  }
};

// f [B, M] (and l1_input) from the rule; stats filled and reduced.
template <class Rule>
void dense_forward(const char* label, const Rule& rule, const Matrix& f, const Matrix& l1_input,
                   const LatentStats& stats) {
  for_each_tile(label, f.extent(0), f.extent(1), ForwardTiles<Rule>{rule, f, l1_input, stats});
  stats.reduce();
}

// The rule's entries as a rows_from_rule rule: the entries its backward reads, valued f.
template <class Rule>
struct EntriesOf {
  Rule rule;
  KOKKOS_INLINE_FUNCTION bool keep(int64_t b, int64_t i) const { return rule.keep(b, i); }
  KOKKOS_INLINE_FUNCTION real value(int64_t b, int64_t i) const { return rule.forward(b, i).f; }
};

// rows <- the entries the rule's backward reads, valued f, without the dense f (the sparse path);
// stats counted from the values as dense_forward counts them (f_sum: sum of f).
template <class Rule>
void rows_forward(const char* label, const Rule& rule, int64_t latents,
                  const sparse::SparseRows& rows, const LatentStats& stats) {
  sparse::rows_from_rule(label, rows.rows(), latents, EntriesOf<Rule>{rule}, rows, &stats);
}

// out(b, j) = the rule's L1 input at the rows' entries; returns their sum (the L1 term's numerator
// on the sparse path, where no dense pass sums it).
template <class Rule>
double rows_l1_input(const char* label, const Rule& rule, const sparse::SparseRows& rows,
                     const Matrix& out) {
  const sparse::IndexMatrix idx = rows.idx;
  const sparse::IndexVector count = rows.count;
  double sum = 0;
  Kokkos::parallel_reduce(
      label, Kokkos::RangePolicy<ExecSpace>(0, rows.rows()),
      KOKKOS_LAMBDA(int64_t b, double& acc) {
        for (int64_t j = 0; j < count(b); ++j) {
          const real l1 = rule.forward(b, idx(b, j)).l1;
          out(b, j) = l1;
          acc += l1;
        }
      },
      sum);
  return sum;
}

// One row of a dense backward tile, in place over g (g_f in, g_pi out); the sums' streams are
// __restrict__ for the reason forward_row gives.
template <class Rule>
KOKKOS_FUNCTION inline void backward_row(const Rule& rule, int64_t b, real* __restrict__ g,
                                         double* __restrict__ s0, double* __restrict__ s1,
                                         double* __restrict__ s2, double* __restrict__ s3,
                                         int64_t c0, int64_t c1) {
  static_assert(Rule::kSums >= 1 && Rule::kSums <= kMaxSums);
  for (int64_t i = c0; i < c1; ++i) {
    real terms[Rule::kSums];
    g[i] = rule.backward(b, i, i, g[i], terms);
    s0[i] += terms[0];
    if constexpr (Rule::kSums > 1) s1[i] += terms[1];
    if constexpr (Rule::kSums > 2) s2[i] += terms[2];
    if constexpr (Rule::kSums > 3) s3[i] += terms[3];
  }
}

template <class Rule>
struct BackwardTiles {
  Rule rule;
  Matrix g;
  GradientSlots sums;

  KOKKOS_INLINE_FUNCTION double* slot(int k, int64_t s) const {
    return k < Rule::kSums ? &sums(k, s, 0) : nullptr;
  }
  KOKKOS_INLINE_FUNCTION void tile(int64_t r0, int64_t r1, int64_t c0, int64_t c1,
                                   int64_t s) const {
    for (int k = 0; k < Rule::kSums; ++k)
      for (int64_t i = c0; i < c1; ++i) sums(k, s, i) = 0;
    for (int64_t b = r0; b < r1; ++b)
      backward_row(rule, b, &g(b, 0), slot(0, s), slot(1, s), slot(2, s), slot(3, s), c0, c1);
  }
};

// g_pi from g_f in place over the dense g [B, M]; per-latent sums over the batch (slots summed in
// slot order, in double) handed to rule.finish.
template <class Rule>
void dense_backward(const char* label, const Rule& rule, const Matrix& g,
                    const GradientSlots& sums) {
  for_each_tile(label, g.extent(0), g.extent(1), BackwardTiles<Rule>{rule, g, sums});
  Kokkos::parallel_for(
      label, Kokkos::RangePolicy<ExecSpace>(0, g.extent(1)), KOKKOS_LAMBDA(int64_t i) {
        double total[Rule::kSums];
        for (int k = 0; k < Rule::kSums; ++k) {
          total[k] = 0;
          for (int64_t s = 0; s < static_cast<int64_t>(sums.extent(1)); ++s)
            total[k] += sums(k, s, i);
        }
        rule.finish(i, total);
      });
}

// The same backward over the sparse rows: g_f at the rows' entries in, g_pi at them out
// (g_pi_values), each latent summing its own entries (the index) in row order: no atomics,
// deterministic. Latents without entries finish with zero sums, as on the dense path.
template <class Rule>
void rows_backward(const char* label, const Rule& rule, const sparse::SparseRows& g_f,
                   const sparse::LatentIndex& index, const Matrix& g_pi_values) {
  const int64_t cap = g_f.capacity();
  const Matrix gf = g_f.val;
  const sparse::IndexVector offsets = index.offsets, entries = index.entries;
  Kokkos::parallel_for(
      label, Kokkos::RangePolicy<ExecSpace>(0, index.latents()), KOKKOS_LAMBDA(int64_t m) {
        double total[Rule::kSums];
        for (int k = 0; k < Rule::kSums; ++k) total[k] = 0;
        for (sparse::Index a = offsets(m); a < offsets(m + 1); ++a) {
          const int64_t e = entries(a), b = e / cap, j = e - b * cap;
          real terms[Rule::kSums];
          g_pi_values(b, j) = rule.backward(b, m, j, gf(b, j), terms);
          for (int k = 0; k < Rule::kSums; ++k) total[k] += terms[k];
        }
        rule.finish(m, total);
      });
}

}  // namespace saescale::kernels
