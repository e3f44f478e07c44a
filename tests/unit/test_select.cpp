// Selection kernels against std::partial_sort on thousands of random rows: continuous values,
// heavy ties (small integer values), rows with fewer than k positive values, restricted
// eligibility (AuxK), k up to the row length, and the batch-wide selection of BatchTopK.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>

#include "kernels/select/topk.hpp"
#include "support/random.hpp"

namespace saescale {
namespace {

using kernels::TopkAlgo;

std::mt19937& rng() {
  static std::mt19937 r(testing_support::test_seed());
  return r;
}

enum class Kind { continuous, ties, mostly_negative };

std::vector<float> draw(int64_t n, Kind kind) {
  std::vector<float> v(n);
  std::normal_distribution<float> normal(0, 1);
  std::uniform_int_distribution<int> small(-3, 3);
  for (auto& x : v) {
    if (kind == Kind::continuous)
      x = normal(rng());
    else if (kind == Kind::ties)
      x = 0.5f * small(rng());  // many exact ties, zeros included
    else
      x = normal(rng()) - 2.5f;  // few positives per row
  }
  return v;
}

// Reference: indices ordered by (value desc, index asc) among eligible; the first k are selected.
std::vector<float> reference_rows(const std::vector<float>& v, int64_t rows, int64_t cols,
                                  int64_t k, const std::vector<int64_t>& eligible) {
  std::vector<float> out(v.size(), 0.f);
  for (int64_t b = 0; b < rows; ++b) {
    std::vector<int64_t> idx;
    for (int64_t i = 0; i < cols; ++i)
      if (eligible.empty() || eligible[i]) idx.push_back(i);
    const float* row = v.data() + b * cols;
    std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](int64_t a, int64_t c) {
      return row[a] > row[c] || (row[a] == row[c] && a < c);
    });
    for (int64_t j = 0; j < k; ++j) out[b * cols + idx[j]] = std::max(row[idx[j]], 0.f);
  }
  return out;
}

Matrix to_device(const std::vector<float>& v, int64_t rows, int64_t cols) {
  Matrix m("values", rows, cols);
  auto h = Kokkos::create_mirror_view(m);
  std::copy(v.begin(), v.end(), h.data());
  Kokkos::deep_copy(m, h);
  return m;
}

std::vector<float> to_host(const Matrix& m) {
  auto h = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), m);
  return std::vector<float>(h.data(), h.data() + h.size());
}

class RowSelect : public ::testing::TestWithParam<TopkAlgo> {};

TEST_P(RowSelect, EqualsPartialSortOnRandomRows) {
  const int64_t rows = 1000, cols = 300;
  for (Kind kind : {Kind::continuous, Kind::ties, Kind::mostly_negative})
    for (int64_t k : {int64_t(1), int64_t(7), int64_t(32), int64_t(299), cols}) {
      const auto v = draw(rows * cols, kind);
      Matrix out("out", rows, cols);
      kernels::row_topk(to_device(v, rows, cols), {}, k, GetParam(), out);
      const auto got = to_host(out), want = reference_rows(v, rows, cols, k, {});
      ASSERT_EQ(got, want) << "kind " << int(kind) << " k " << k;
    }
}

// With an encoder bias added on the fly, and the fused per-latent counts of selected entries.
TEST_P(RowSelect, BiasAndCountsOfSelectedEntries) {
  const int64_t rows = 400, cols = 300, k = 16;
  const auto v = draw(rows * cols, Kind::continuous);
  const auto b = draw(cols, Kind::continuous);
  std::vector<float> shifted(v.size());
  for (int64_t j = 0; j < rows * cols; ++j) shifted[j] = v[j] + b[j % cols];
  Vector bias("bias", cols);
  auto bh = Kokkos::create_mirror_view(bias);
  std::copy(b.begin(), b.end(), bh.data());
  Kokkos::deep_copy(bias, bh);
  for (bool batch : {false, true}) {
    Matrix out("out", rows, cols);
    CountVector active("active", cols), fired("fired", cols);
    if (batch)
      kernels::batch_topk(to_device(v, rows, cols), bias, k * rows, GetParam(), out, active, fired,
                          0.5f);
    else
      kernels::row_topk(to_device(v, rows, cols), bias, k, GetParam(), out, {}, active, fired,
                        0.5f);
    std::vector<float> relu(shifted.size());
    for (size_t j = 0; j < shifted.size(); ++j) relu[j] = std::max(shifted[j], 0.f);
    const auto want = batch ? reference_rows(relu, 1, rows * cols, k * rows, {})
                            : reference_rows(shifted, rows, cols, k, {});
    ASSERT_EQ(to_host(out), want) << (batch ? "batch" : "rows");
    auto ah = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), active);
    auto fh = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), fired);
    for (int64_t i = 0; i < cols; ++i) {
      int64_t a = 0, f = 0;
      for (int64_t r = 0; r < rows; ++r)
        a += want[r * cols + i] > 0, f += want[r * cols + i] > 0.5f;
      ASSERT_EQ(ah(i), a) << i;
      ASSERT_EQ(fh(i), f) << i;
    }
  }
}

TEST_P(RowSelect, RestrictedToEligibleLatents) {
  const int64_t rows = 500, cols = 257;
  std::vector<int64_t> eligible(cols);
  std::bernoulli_distribution coin(0.3);
  for (auto& e : eligible) e = coin(rng());
  const int64_t n_eligible = std::accumulate(eligible.begin(), eligible.end(), int64_t(0));
  ASSERT_GT(n_eligible, 20);
  CountVector elig("eligible", cols);
  auto eh = Kokkos::create_mirror_view(elig);
  for (int64_t i = 0; i < cols; ++i) eh(i) = eligible[i];
  Kokkos::deep_copy(elig, eh);
  for (Kind kind : {Kind::continuous, Kind::ties})
    for (int64_t k : {int64_t(1), int64_t(16), n_eligible}) {
      const auto v = draw(rows * cols, kind);
      Matrix out("out", rows, cols);
      kernels::row_topk(to_device(v, rows, cols), {}, k, GetParam(), out, elig);
      ASSERT_EQ(to_host(out), reference_rows(v, rows, cols, k, eligible)) << "k " << k;
    }
}

TEST_P(RowSelect, BatchWideSelectionEqualsPartialSort) {
  const int64_t rows = 64, cols = 300;
  for (Kind kind : {Kind::continuous, Kind::ties, Kind::mostly_negative})
    for (int64_t k_per_row : {int64_t(1), int64_t(8), int64_t(100)}) {
      const auto v = draw(rows * cols, kind);
      std::vector<float> relu(v.size());
      for (size_t j = 0; j < v.size(); ++j) relu[j] = std::max(v[j], 0.f);
      Matrix out("out", rows, cols);
      const double smallest =
          kernels::batch_topk(to_device(v, rows, cols), {}, k_per_row * rows, GetParam(), out);
      const auto want = reference_rows(relu, 1, rows * cols, k_per_row * rows, {});
      const auto got = to_host(out);
      ASSERT_EQ(got, want) << "kind " << int(kind) << " k " << k_per_row;
      float min_selected = 0;
      for (float x : want)
        if (x > 0 && (min_selected == 0 || x < min_selected)) min_selected = x;
      EXPECT_EQ(smallest, min_selected);
    }
}

INSTANTIATE_TEST_SUITE_P(Algorithms, RowSelect,
                         ::testing::Values(TopkAlgo::radix, TopkAlgo::bisect),
                         [](const auto& info) {
                           return std::string(kernels::topk_algo_name(info.param));
                         });

TEST(OrderKey, PreservesFloatOrder) {
  const float values[] = {-INFINITY, -3.5f, -1e-30f, -0.0f, 0.0f, 1e-30f, 2.0f, INFINITY};
  for (size_t i = 0; i + 1 < sizeof values / sizeof *values; ++i)
    EXPECT_LE(kernels::order_key(values[i]), kernels::order_key(values[i + 1])) << values[i];
  EXPECT_GT(kernels::order_key(-INFINITY), kernels::kExcluded);
}

}  // namespace
}  // namespace saescale
