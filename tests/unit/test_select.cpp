// Selection kernels against std::partial_sort on thousands of random rows: continuous values,
// heavy ties (small integer values), rows with fewer than k positive values, restricted
// eligibility (AuxK), k up to the row length, and the batch-wide selection of BatchTopK; every
// algorithm selects exactly the same entries.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>

#include "error.hpp"
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

// The optional sparse outputs: per row the non-zeros of out in increasing latent order.
TEST_P(RowSelect, SelectedEntriesAreTheNonZerosInLatentOrder) {
  const int64_t rows = 300, cols = 200;
  for (Kind kind : {Kind::continuous, Kind::ties, Kind::mostly_negative})
    for (int64_t k : {int64_t(1), int64_t(9), int64_t(32), cols})
      for (int64_t extra : {int64_t(0), int64_t(3)}) {
        const int64_t capacity = std::min(k, cols) + extra;
        const auto v = draw(rows * cols, kind);
        Matrix out("out", rows, cols);
        kernels::SelectedEntries e{
            Kokkos::View<int32_t**, Kokkos::LayoutRight, MemSpace>("idx", rows, capacity),
            Matrix("val", rows, capacity),
            Kokkos::View<int32_t*, Kokkos::LayoutRight, MemSpace>("count", rows)};
        Kokkos::deep_copy(e.count, -1);
        kernels::row_topk(to_device(v, rows, cols), {}, k, GetParam(), out, {}, {}, {}, 0, e);
        const auto got = to_host(out);
        ASSERT_EQ(got, reference_rows(v, rows, cols, k, {})) << "kind " << int(kind) << " k " << k;
        auto idx = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), e.idx);
        auto val = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), e.val);
        auto count = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), e.count);
        for (int64_t b = 0; b < rows; ++b) {
          std::vector<int32_t> want_idx, got_idx;
          std::vector<float> want_val, got_val;
          for (int64_t i = 0; i < cols; ++i)
            if (got[b * cols + i] != 0)
              want_idx.push_back(i), want_val.push_back(got[b * cols + i]);
          ASSERT_EQ(count(b), static_cast<int32_t>(want_idx.size())) << "row " << b;
          for (int32_t j = 0; j < count(b); ++j)
            got_idx.push_back(idx(b, j)), got_val.push_back(val(b, j));
          ASSERT_EQ(got_idx, want_idx) << "row " << b << " kind " << int(kind) << " k " << k;
          ASSERT_EQ(got_val, want_val) << "row " << b;
        }
      }
  // Too small a capacity is refused.
  Matrix out("out", 4, cols);
  kernels::SelectedEntries small{
      Kokkos::View<int32_t**, Kokkos::LayoutRight, MemSpace>("idx", 4, 7), Matrix("val", 4, 7),
      Kokkos::View<int32_t*, Kokkos::LayoutRight, MemSpace>("count", 4)};
  EXPECT_THROW(
      kernels::row_topk(Matrix("values", 4, cols), {}, 8, GetParam(), out, {}, {}, {}, 0, small),
      Error);
}

INSTANTIATE_TEST_SUITE_P(Algorithms, RowSelect,
                         ::testing::Values(TopkAlgo::radix, TopkAlgo::bisect, TopkAlgo::filter),
                         [](const auto& info) {
                           return std::string(kernels::topk_algo_name(info.param));
                         });

// ---- filter, radix and bisect agree entry for entry -------------------------------------------

// Rows built to stress the filter's buffer and its strict threshold: a few distinct levels (long
// runs of exact ties, across buffer compactions), rows with fewer than k positive values, rows of
// one repeated value, and special floats (+-0, subnormals, infinities, NaNs of both signs: a
// positive NaN ranks above +inf and is selected, with output 0).
std::vector<float> draw_hard(int64_t rows, int64_t cols, int64_t k) {
  std::vector<float> v(rows * cols);
  std::normal_distribution<float> normal(0, 1);
  std::uniform_int_distribution<int> levels(0, 4), row_kind(0, 5), pick(0, 7);
  const float specials[] = {0.0f,
                            -0.0f,
                            std::numeric_limits<float>::denorm_min(),
                            -std::numeric_limits<float>::denorm_min(),
                            std::numeric_limits<float>::infinity(),
                            -std::numeric_limits<float>::infinity(),
                            std::numeric_limits<float>::quiet_NaN(),
                            -std::numeric_limits<float>::quiet_NaN()};
  for (int64_t b = 0; b < rows; ++b) {
    float* row = v.data() + b * cols;
    const int kind = row_kind(rng());
    for (int64_t i = 0; i < cols; ++i) {
      if (kind == 0)
        row[i] = normal(rng());
      else if (kind == 1)
        row[i] = 0.25f * (levels(rng()) - 1);  // -0.25 .. 0.75: heavy ties
      else if (kind == 2)
        row[i] = normal(rng()) - 3.f;  // fewer than k positive values, often
      else if (kind == 3)
        row[i] = 1.5f;  // one value: every entry ties
      else if (kind == 4)
        row[i] = pick(rng()) == 0 ? specials[pick(rng())] : 0.5f * (levels(rng()) - 2);
      else
        row[i] = i < cols - k / 2 ? -1.f : 2.f;  // the positives at the end of the row
    }
  }
  return v;
}

template <class T>
std::vector<T> host_vector(const Kokkos::View<T*, Kokkos::LayoutRight, MemSpace>& v) {
  auto h = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), v);
  return std::vector<T>(h.data(), h.data() + h.size());
}

struct Selection {
  std::vector<float> out;
  std::vector<int64_t> active, fired;
  double smallest = 0;
  bool operator==(const Selection& o) const {
    // smallest is compared bit for bit through ==; out holds no NaN (ReLU after selection)
    return out == o.out && active == o.active && fired == o.fired && smallest == o.smallest;
  }
};

Selection select_rows(const Matrix& values, const Vector& bias, int64_t k, TopkAlgo algo,
                      const CountVector& eligible) {
  const int64_t cols = values.extent(1);
  Matrix out("out", values.extent(0), cols);
  CountVector active("active", cols), fired("fired", cols);
  kernels::row_topk(values, bias, k, algo, out, eligible, active, fired, 0.5f);
  return {to_host(out), host_vector(active), host_vector(fired), 0};
}

Selection select_batch(const Matrix& values, const Vector& bias, int64_t k, TopkAlgo algo) {
  const int64_t cols = values.extent(1);
  Matrix out("out", values.extent(0), cols);
  CountVector active("active", cols), fired("fired", cols);
  const double smallest = kernels::batch_topk(values, bias, k, algo, out, active, fired, 0.5f);
  return {to_host(out), host_vector(active), host_vector(fired), smallest};
}

TEST(FilterSelect, RowsEqualRadixAndBisect) {
  const int64_t rows = 240;
  for (int64_t cols : {int64_t(37), int64_t(700)})
    for (int64_t k : {int64_t(1), int64_t(2), int64_t(16), int64_t(33), cols})
      for (bool with_bias : {false, true})
        for (bool masked : {false, true}) {
          SCOPED_TRACE("cols " + std::to_string(cols) + " k " + std::to_string(k) +
                       (with_bias ? " bias" : "") + (masked ? " masked" : ""));
          const Matrix values = to_device(draw_hard(rows, cols, k), rows, cols);
          Vector bias;
          if (with_bias) {
            std::vector<float> b(cols);
            std::uniform_int_distribution<int> level(-1, 1);
            for (auto& x : b) x = 0.25f * level(rng());  // keeps the ties tied
            bias = Vector("bias", cols);
            auto h = Kokkos::create_mirror_view(bias);
            std::copy(b.begin(), b.end(), h.data());
            Kokkos::deep_copy(bias, h);
          }
          CountVector eligible;
          int64_t kk = k;
          if (masked) {
            eligible = CountVector("eligible", cols);
            auto h = Kokkos::create_mirror_view(eligible);
            int64_t n = 0;
            for (int64_t i = 0; i < cols; ++i) n += h(i) = rng()() % 3 != 0;
            Kokkos::deep_copy(eligible, h);
            kk = std::min(k, n);  // row_topk requires k <= #eligible
          }
          const auto radix = select_rows(values, bias, kk, TopkAlgo::radix, eligible);
          const auto bisect = select_rows(values, bias, kk, TopkAlgo::bisect, eligible);
          const auto filter = select_rows(values, bias, kk, TopkAlgo::filter, eligible);
          ASSERT_TRUE(radix == bisect);
          ASSERT_TRUE(filter == radix);
        }
}

TEST(FilterSelect, BatchEqualsRadixAndBisect) {
  for (int64_t rows : {int64_t(1), int64_t(40)})
    for (int64_t cols : {int64_t(29), int64_t(500)})
      for (bool with_bias : {false, true}) {
        const int64_t n = rows * cols;
        const Matrix values = to_device(draw_hard(rows, cols, 8), rows, cols);
        Vector bias;
        if (with_bias) {
          bias = Vector("bias", cols);
          auto h = Kokkos::create_mirror_view(bias);
          for (int64_t i = 0; i < cols; ++i) h(i) = 0.25f * (int(rng()() % 3) - 1);
          Kokkos::deep_copy(bias, h);
        }
        for (int64_t k : {int64_t(1), int64_t(3), rows, 8 * rows, n / 3, n / 2, n - 1, n}) {
          if (k < 1) continue;
          SCOPED_TRACE("rows " + std::to_string(rows) + " cols " + std::to_string(cols) + " k " +
                       std::to_string(k) + (with_bias ? " bias" : ""));
          const auto radix = select_batch(values, bias, k, TopkAlgo::radix);
          const auto bisect = select_batch(values, bias, k, TopkAlgo::bisect);
          const auto filter = select_batch(values, bias, k, TopkAlgo::filter);
          ASSERT_TRUE(radix == bisect);
          ASSERT_TRUE(filter == radix);
        }
      }
}

// Ties at the threshold that the filter dropped from its buffer: a long run of equal values after
// k of them were kept; the selection must still take them lowest index first.
TEST(FilterSelect, BatchTiesDroppedFromTheBufferAreCounted) {
  const int64_t rows = 50, cols = 400;
  for (float low : {0.5f, 1.0f})
    for (int64_t k : {int64_t(5), int64_t(100), int64_t(399), int64_t(1000), int64_t(4000)}) {
      std::vector<float> v(rows * cols, 1.0f);  // rows * cols ties at 1
      for (int64_t j = 0; j < rows * cols; j += 7) v[j] = low;
      for (int64_t j = 3; j < rows * cols; j += 97) v[j] = 2.0f;  // above the ties
      const Matrix values = to_device(v, rows, cols);
      const auto radix = select_batch(values, {}, k, TopkAlgo::radix);
      ASSERT_TRUE(select_batch(values, {}, k, TopkAlgo::filter) == radix) << "k " << k;
      std::vector<float> relu = v;
      ASSERT_EQ(radix.out, reference_rows(relu, 1, rows * cols, k, {})) << "k " << k;
    }
}

TEST(FilterSelect, ParsesAndNames) {
  EXPECT_EQ(kernels::parse_topk_algo("filter"), TopkAlgo::filter);
  EXPECT_STREQ(kernels::topk_algo_name(TopkAlgo::filter), "filter");
  EXPECT_THROW(kernels::parse_topk_algo("heap"), Error);
}

TEST(OrderKey, PreservesFloatOrder) {
  const float values[] = {-INFINITY, -3.5f, -1e-30f, -0.0f, 0.0f, 1e-30f, 2.0f, INFINITY};
  for (size_t i = 0; i + 1 < sizeof values / sizeof *values; ++i)
    EXPECT_LE(kernels::order_key(values[i]), kernels::order_key(values[i + 1])) << values[i];
  EXPECT_GT(kernels::order_key(-INFINITY), kernels::kExcluded);
}

}  // namespace
}  // namespace saescale
