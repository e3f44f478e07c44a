// The sparse kernels (kernels/sparse.hpp) against dense double-precision host references, on fresh
// random rows: a row with no entries, rows exactly at capacity, rows over capacity, a "hot" latent
// present in most rows (a large bucket for the by-latent sort), values never zero.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "benchmarks/lab/decoder_gradient_atomic.hpp"
#include "kernels/sparse.hpp"
#include "support/random_views.hpp"

namespace saescale {
namespace {

using testing_support::random_matrix;
using testing_support::rng;

Matrix nan_matrix(int64_t rows, int64_t cols) {
  Matrix m("nan", rows, cols);
  Kokkos::deep_copy(m, std::numeric_limits<float>::quiet_NaN());
  return m;
}

template <class View>
auto host(const View& v) {
  auto h = Kokkos::create_mirror(Kokkos::HostSpace(), v);
  Kokkos::deep_copy(h, v);
  return h;
}

constexpr int64_t kB = 61, kD = 37, kM = 301, kCap = 9, kHot = 7;

// Host rows: per row a set of distinct latents in increasing order and non-zero values.
struct HostRows {
  std::vector<std::vector<int64_t>> latents;
  std::vector<std::vector<float>> values;
  int64_t over = 0;  // rows with more than kCap entries
};

HostRows random_rows() {
  HostRows r;
  r.latents.resize(kB);
  r.values.resize(kB);
  std::vector<int64_t> all(kM);
  std::iota(all.begin(), all.end(), 0);
  std::uniform_int_distribution<int64_t> count(1, kCap);
  std::normal_distribution<double> value(0, 1);
  for (int64_t b = 0; b < kB; ++b) {
    int64_t n = b == 0 ? 0 : b <= 3 ? kCap : b <= 6 ? kCap + b : count(rng());
    std::shuffle(all.begin(), all.end(), rng());
    std::vector<int64_t> chosen(all.begin(), all.begin() + n);
    if (n > 0 && b % 4 != 1 && std::find(chosen.begin(), chosen.end(), kHot) == chosen.end())
      chosen[0] = kHot;  // the hot latent: in about three quarters of the rows
    std::sort(chosen.begin(), chosen.end());
    r.latents[b] = chosen;
    for (size_t j = 0; j < chosen.size(); ++j) {
      const double v = value(rng());
      r.values[b].push_back(static_cast<float>(v < 0 ? v - 0.05 : v + 0.05));  // never zero
    }
    r.over += n > kCap;
  }
  return r;
}

Matrix dense(const HostRows& r) {
  Matrix f("f", kB, kM);
  auto h = Kokkos::create_mirror_view(f);
  for (int64_t b = 0; b < kB; ++b)
    for (int64_t m = 0; m < kM; ++m) h(b, m) = 0;
  for (int64_t b = 0; b < kB; ++b)
    for (size_t j = 0; j < r.latents[b].size(); ++j) h(b, r.latents[b][j]) = r.values[b][j];
  Kokkos::deep_copy(f, h);
  return f;
}

// The dense [B, M] matrix of the entries a SparseRows holds (double), read back from the device.
std::vector<double> dense_of(const sparse::SparseRows& rows, int64_t M) {
  auto idx = host(rows.idx);
  auto val = host(rows.val);
  auto count = host(rows.count);
  std::vector<double> f(rows.rows() * M, 0.0);
  for (int64_t b = 0; b < rows.rows(); ++b)
    for (int64_t j = 0; j < count(b); ++j) f[b * M + idx(b, j)] = val(b, j);
  return f;
}

struct Fixture {
  HostRows h = random_rows();
  sparse::SparseRows rows = sparse::SparseRows::allocate("rows", kB, kCap);
  Fixture() { sparse::compact_rows(dense(h), rows); }
};

TEST(Sparse, CompactRowsKeepsFirstEntriesInLatentOrderAndCountsOverflow) {
  Fixture fx;
  EXPECT_GT(fx.h.over, 0);
  EXPECT_EQ(sparse::overflow_rows(fx.rows), fx.h.over);
  auto idx = host(fx.rows.idx);
  auto val = host(fx.rows.val);
  auto count = host(fx.rows.count);
  EXPECT_EQ(count(0), 0);
  for (int64_t b = 0; b < kB; ++b) {
    const int64_t n = static_cast<int64_t>(fx.h.latents[b].size());
    ASSERT_EQ(count(b), std::min(n, kCap)) << "row " << b;
    for (int64_t j = 0; j < count(b); ++j) {
      ASSERT_EQ(idx(b, j), fx.h.latents[b][j]) << b << "," << j;
      ASSERT_EQ(val(b, j), fx.h.values[b][j]) << b << "," << j;
    }
  }
  // A capacity that fits every row: no overflow (and the counter is reset, not accumulated).
  auto wide = sparse::SparseRows::allocate("wide", kB, 2 * kCap);
  sparse::compact_rows(dense(fx.h), wide);
  EXPECT_EQ(sparse::overflow_rows(wide), 0);
  sparse::compact_rows(dense(fx.h), fx.rows);
  EXPECT_EQ(sparse::overflow_rows(fx.rows), fx.h.over);
}

// compact then scatter gives back the dense matrix (rows within capacity), zeros elsewhere even
// where the destination held something before.
TEST(Sparse, ScatterRowsRoundTrip) {
  Fixture fx;
  Matrix out = nan_matrix(kB, kM);
  sparse::scatter_rows(fx.rows, out);
  const auto expected = dense_of(fx.rows, kM);
  auto got = host(out);
  for (int64_t b = 0; b < kB; ++b)
    for (int64_t m = 0; m < kM; ++m) ASSERT_EQ(got(b, m), expected[b * kM + m]) << b << "," << m;
}

TEST(Sparse, DecodeMatchesDenseReference) {
  Fixture fx;
  const auto f = dense_of(fx.rows, kM);
  const Matrix W = random_matrix(kM, kD);
  auto w = host(W);
  for (const float beta : {0.0f, 1.0f, 0.7f}) {
    const float alpha = beta == 1 ? -1.0f : 1.3f;  // the step's decode: e -= f W_dec
    const Matrix out = beta == 0 ? nan_matrix(kB, kD) : random_matrix(kB, kD);
    auto out0 = host(out);
    sparse::sparse_decode(fx.rows, W, out, beta, alpha);
    auto o = host(out);
    for (int64_t b = 0; b < kB; ++b)
      for (int64_t c = 0; c < kD; ++c) {
        double s = 0;
        for (int64_t m = 0; m < kM; ++m) s += f[b * kM + m] * w(m, c);
        const double want = (beta == 0 ? 0.0 : beta * double(out0(b, c))) + alpha * s;
        ASSERT_NEAR(o(b, c), want, 1e-5 * (1 + std::abs(want))) << beta << " " << b << "," << c;
      }
  }
}

TEST(Sparse, LatentIndexGroupsEntriesByLatentInRowOrder) {
  Fixture fx;
  auto index = sparse::LatentIndex::allocate("index", kM, kB, kCap);
  for (int rep = 0; rep < 2; ++rep) {  // a second build on the same buffers gives the same index
    sparse::build_latent_index(fx.rows, index);
    auto off = host(index.offsets);
    auto ent = host(index.entries);
    auto idx = host(fx.rows.idx);
    auto count = host(fx.rows.count);
    int64_t nnz = 0;
    for (int64_t b = 0; b < kB; ++b) nnz += count(b);
    ASSERT_EQ(off(0), 0);
    ASSERT_EQ(off(kM), nnz);
    EXPECT_GT(off(kHot + 1) - off(kHot), kB / 2) << "the hot latent's bucket";
    for (int64_t m = 0; m < kM; ++m) {
      ASSERT_LE(off(m), off(m + 1));
      for (int64_t a = off(m); a < off(m + 1); ++a) {
        const int64_t e = ent(a), b = e / kCap, j = e % kCap;
        ASSERT_LT(j, count(b));
        ASSERT_EQ(idx(b, j), m);
        if (a > off(m)) ASSERT_LT(ent(a - 1), e) << "bucket " << m << " not in entry order";
      }
    }
  }
}

TEST(Sparse, DecoderGradientAtomicAndSortedMatchReferenceAndEachOther) {
  Fixture fx;
  const auto f = dense_of(fx.rows, kM);
  const Matrix G = random_matrix(kB, kD);
  auto gh = host(G);
  auto index = sparse::LatentIndex::allocate("index", kM, kB, kCap);
  sparse::build_latent_index(fx.rows, index);
  for (const float beta : {0.0f, 0.5f}) {
    const float alpha = -2.0f / kB;
    const Matrix g0 = beta == 0 ? nan_matrix(kM, kD) : random_matrix(kM, kD, 0.01);
    auto start = host(g0);
    Matrix atomic("atomic", kM, kD), sorted("sorted", kM, kD), sorted2("sorted2", kM, kD);
    Kokkos::deep_copy(atomic, g0);
    Kokkos::deep_copy(sorted, g0);
    Kokkos::deep_copy(sorted2, g0);
    sparse::lab::sparse_decoder_gradient_atomic(fx.rows, G, alpha, beta, atomic);
    sparse::sparse_decoder_gradient_sorted(fx.rows, index, G, alpha, beta, sorted);
    sparse::build_latent_index(fx.rows, index);
    sparse::sparse_decoder_gradient_sorted(fx.rows, index, G, alpha, beta, sorted2);
    auto a = host(atomic);
    auto s = host(sorted);
    auto s2 = host(sorted2);
    EXPECT_EQ(std::memcmp(s.data(), s2.data(), sizeof(float) * kM * kD), 0)
        << "sorted is deterministic: bitwise equal on a second run";
    for (int64_t m = 0; m < kM; ++m)
      for (int64_t c = 0; c < kD; ++c) {
        double sum = 0;
        for (int64_t b = 0; b < kB; ++b) sum += f[b * kM + m] * gh(b, c);
        const double want = (beta == 0 ? 0.0 : beta * double(start(m, c))) + alpha * sum;
        const double tol = 1e-6 * (1 + std::abs(want));
        ASSERT_NEAR(a(m, c), want, tol) << "atomic " << beta << " " << m << "," << c;
        ASSERT_NEAR(s(m, c), want, tol) << "sorted " << beta << " " << m << "," << c;
        ASSERT_NEAR(a(m, c), s(m, c), 1e-6 * (1 + std::abs(want)));
      }
  }
}

TEST(Sparse, ActivationGradientAtEntriesMatchesDenseProduct) {
  Fixture fx;
  const Matrix G = random_matrix(kB, kD), W = random_matrix(kM, kD);
  const Matrix out = nan_matrix(kB, kCap);
  const float alpha = -2.0f / kB;
  sparse::sparse_activation_gradient(fx.rows, G, W, alpha, out);
  auto o = host(out);
  auto gh = host(G);
  auto w = host(W);
  auto idx = host(fx.rows.idx);
  auto count = host(fx.rows.count);
  for (int64_t b = 0; b < kB; ++b)
    for (int64_t j = 0; j < kCap; ++j) {
      if (j >= count(b)) continue;  // unused slots: unspecified, never read
      double dot = 0;               // (G W^T)(b, idx): the dense g_f at this entry
      for (int64_t c = 0; c < kD; ++c) dot += double(gh(b, c)) * w(idx(b, j), c);
      const double want = alpha * dot;
      ASSERT_NEAR(o(b, j), want, 1e-6 * (1 + std::abs(want))) << b << "," << j;
    }
}

TEST(Sparse, EncoderGradientMatchesDenseReference) {
  Fixture fx;
  // g_pi at f's entries: f's index and entry set, other values.
  const Matrix g_val = random_matrix(kB, kCap, 0.1);
  const auto g_pi_rows = fx.rows.with_values(g_val);
  const auto g_pi = dense_of(g_pi_rows, kM);
  auto index = sparse::LatentIndex::allocate("index", kM, kB, kCap);
  sparse::build_latent_index(fx.rows, index);
  const Matrix X = random_matrix(kB, kD);
  auto x = host(X);
  for (const float beta : {0.0f, 0.25f}) {
    const float alpha = 1.5f;
    const Matrix g = beta == 0 ? nan_matrix(kD, kM) : random_matrix(kD, kM, 0.01);
    auto g0 = host(g);
    sparse::sparse_encoder_gradient(g_pi_rows, index, X, alpha, beta, g);
    Matrix again("again", kD, kM);
    Kokkos::deep_copy(again, g0);
    sparse::sparse_encoder_gradient(g_pi_rows, index, X, alpha, beta, again);
    auto gh = host(g);
    auto ah = host(again);
    EXPECT_EQ(std::memcmp(gh.data(), ah.data(), sizeof(float) * kD * kM), 0);
    for (int64_t c = 0; c < kD; ++c)
      for (int64_t m = 0; m < kM; ++m) {
        double s = 0;
        for (int64_t b = 0; b < kB; ++b) s += double(x(b, c)) * g_pi[b * kM + m];
        const double want = (beta == 0 ? 0.0 : beta * double(g0(c, m))) + alpha * s;
        ASSERT_NEAR(gh(c, m), want, 1e-5 * (1 + std::abs(want))) << beta << " " << c << "," << m;
      }
  }
}

TEST(Sparse, ShapeMismatchesAndCapacityLimitsAreErrors) {
  Fixture fx;
  EXPECT_THROW(sparse::SparseRows::allocate("big", int64_t(1) << 20, int64_t(1) << 12),
               std::exception);
  EXPECT_THROW(sparse::compact_rows(random_matrix(kB + 1, kM), fx.rows), std::exception);
  EXPECT_THROW(sparse::sparse_decode(fx.rows, random_matrix(kM, kD + 1), random_matrix(kB, kD), 0),
               std::exception);
  EXPECT_THROW(fx.rows.with_values(random_matrix(kB, kCap + 1)), std::exception);
}

}  // namespace
}  // namespace saescale
