// Every kernel of the step against a plain host reference, on fresh random inputs whose shapes
// are not multiples of the column block (so edge blocks are exercised).
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "kernels/activations/jumprelu.hpp"
#include "kernels/activations/relu.hpp"
#include "kernels/gemm.hpp"
#include "kernels/optim.hpp"
#include "kernels/reduce.hpp"
#include "support/random_views.hpp"

namespace saescale {
namespace {

using testing_support::random_matrix;
using testing_support::rng;

Vector random_vector(int64_t n, double scale = 1.0, double mean = 0.0) {
  Vector v("v", n);
  auto h = Kokkos::create_mirror_view(v);
  std::normal_distribution<double> d(mean, scale);
  for (int64_t i = 0; i < n; ++i) h(i) = static_cast<float>(d(rng()));
  Kokkos::deep_copy(v, h);
  return v;
}

// Always a separate host copy (a mirror *view* would alias the data on host backends, and the
// kernels under test work in place).
template <class View>
auto host(const View& v) {
  auto h = Kokkos::create_mirror(Kokkos::HostSpace(), v);
  Kokkos::deep_copy(h, v);
  return h;
}

LatentStats make_stats(int64_t m) { return LatentStats::allocate(m); }
SlotView<double> slots(int64_t m) { return SlotView<double>("slots", accumulator_slots(), m); }

constexpr int64_t kB = 57, kD = 23, kM = 301;  // 301 = one full 256-column block + an edge

TEST(Gemm, AllTransposeCombinationsMatchNaive) {
  for (auto ta : {Trans::N, Trans::T})
    for (auto tb : {Trans::N, Trans::T}) {
      const int64_t m = 37, n = 29, k = 41;
      Matrix A = ta == Trans::N ? random_matrix(m, k) : random_matrix(k, m);
      Matrix B = tb == Trans::N ? random_matrix(k, n) : random_matrix(n, k);
      Matrix C = random_matrix(m, n);
      auto c0 = host(C);
      const float alpha = 0.7f, beta = -0.3f;
      gemm(ta, tb, alpha, A, B, beta, C);
      auto a = host(A);
      auto b = host(B);
      auto c = host(C);
      for (int64_t i = 0; i < m; ++i)
        for (int64_t j = 0; j < n; ++j) {
          double s = 0;
          for (int64_t l = 0; l < k; ++l)
            s += double(ta == Trans::N ? a(i, l) : a(l, i)) * (tb == Trans::N ? b(l, j) : b(j, l));
          const double want = alpha * s + beta * c0(i, j);
          ASSERT_NEAR(c(i, j), want, 1e-4 * (1 + std::abs(want)))
              << int(ta) << int(tb) << " " << i << "," << j;
        }
    }
}

TEST(Gemm, ShapeMismatchIsAnError) {
  EXPECT_THROW(
      gemm(Trans::N, Trans::N, 1, random_matrix(3, 4), random_matrix(5, 2), 0, random_matrix(3, 2)),
      std::exception);
}

TEST(Gemm, ReducedPrecisionNeedsCublasOnHost) {
  if (std::string(gemm_backend_name()) != "cblas") GTEST_SKIP() << "device backend";
  EXPECT_THROW(check_precision_supported(Precision::bf16), std::exception);
  EXPECT_NO_THROW(check_precision_supported(Precision::fp32));
}

TEST(Activation, ReluForwardAndBackward) {
  Matrix pi = random_matrix(kB, kM), f("f", kB, kM), g = random_matrix(kB, kM);
  Vector b_enc = random_vector(kM, 0.3), norms = random_vector(kM, 0.1, 1.0), gb("gb", kM);
  auto g_in = host(g);
  auto stats = make_stats(kM);
  for_each_tile("test", kB, kM, kernels::ReluForward{pi, b_enc, f, stats});
  stats.reduce();
  const float scale = 0.013f;
  auto gb_slots = slots(kM);
  for_each_tile("test", kB, kM, kernels::ReluBackward{pi, b_enc, norms, scale, g, gb_slots});
  sum_slots("test", gb_slots, gb);
  auto p = host(pi);
  auto fh = host(f);
  auto gh = host(g);
  auto bh = host(b_enc);
  auto nh = host(norms);
  auto gbh = host(gb);
  auto act = host(stats.active_total());
  auto fired = host(stats.fired_total());
  auto fsum = host(stats.f_sum_total());
  for (int64_t i = 0; i < kM; ++i) {
    int64_t a = 0, fi = 0;
    double s = 0, gsum = 0;
    for (int64_t b = 0; b < kB; ++b) {
      const double pre = double(p(b, i)) + bh(i);
      const double want = pre > 0 ? pre : 0;
      ASSERT_NEAR(fh(b, i), want, 1e-6);
      a += want != 0;
      fi += want > 1e-3;
      s += want;
      const double gp = pre > 0 ? g_in(b, i) + scale * nh(i) : 0;
      ASSERT_NEAR(gh(b, i), gp, 1e-6);
      gsum += gp;
    }
    EXPECT_EQ(act(i), a);
    EXPECT_EQ(fired(i), fi);
    EXPECT_NEAR(fsum(i), s, 1e-4);
    EXPECT_NEAR(gbh(i), gsum, 1e-4);
  }
}

TEST(Activation, JumpReluForwardAndBackward) {
  Matrix pi = random_matrix(kB, kM), f("f", kB, kM), g = random_matrix(kB, kM, 0.1);
  Vector b_enc = random_vector(kM, 0.3), log_theta = random_vector(kM, 0.5, -1.0);
  Vector gb("gb", kM), gt("gt", kM);
  auto g_in = host(g);
  auto stats = make_stats(kM);
  const float eps = 0.3f, l0_scale = 0.02f;
  Vector theta("theta", kM);
  kernels::thresholds(log_theta, theta);
  for_each_tile("test", kB, kM, kernels::JumpReluForward{pi, b_enc, theta, f, stats});
  stats.reduce();
  auto gb_slots = slots(kM), gt_slots = slots(kM);
  for_each_tile("test", kB, kM,
                kernels::JumpReluBackward{pi, b_enc, theta, eps, l0_scale, g, gb_slots, gt_slots});
  kernels::JumpReluBackward::finish(gb_slots, gt_slots, theta, gb, gt);
  auto p = host(pi);
  auto fh = host(f);
  auto gh = host(g);
  auto bh = host(b_enc);
  auto th = host(log_theta);
  auto gbh = host(gb);
  auto gth = host(gt);
  auto act = host(stats.active_total());
  int64_t in_window_total = 0;
  auto theta_f = host(theta);
  for (int64_t i = 0; i < kM; ++i) {
    const double theta_d = theta_f(i);
    ASSERT_NEAR(theta_d, std::exp(double(th(i))), 1e-6 * theta_d);
    int64_t a = 0;
    double gsum = 0, gtheta = 0;
    for (int64_t b = 0; b < kB; ++b) {
      // Which side of theta and of the window edges an entry falls on is decided in float, as the
      // kernel does (entries within rounding of an edge would otherwise flip); sums are double.
      const float pre_f = p(b, i) + bh(i), u_f = pre_f - theta_f(i);
      const bool on = u_f > 0, in_window = -eps / 2 < u_f && u_f < eps / 2;
      const double pre = pre_f;
      ASSERT_NEAR(fh(b, i), on ? pre : 0.0, 1e-6);
      a += on;
      const double gp = on ? g_in(b, i) : 0;
      ASSERT_NEAR(gh(b, i), gp, 1e-7);
      gsum += gp;
      if (in_window) {
        gtheta += -(theta_d / eps) * g_in(b, i) - l0_scale / eps;
        ++in_window_total;
      }
    }
    EXPECT_EQ(act(i), a);
    EXPECT_NEAR(gbh(i), gsum, 1e-4);
    EXPECT_NEAR(gth(i), theta_d * gtheta, 1e-4 * (1 + std::abs(theta_d * gtheta)));
  }
  EXPECT_GT(in_window_total, kM) << "the window test needs pre-activations inside the window";
}

TEST(Optim, AdamMatchesReferenceWithAndWithoutMomentum) {
  for (double beta1 : {0.0, 0.9}) {
    const int64_t n = 1001;
    Vector p = random_vector(n), m = random_vector(n, 0.01), v("v", n), g = random_vector(n);
    Kokkos::deep_copy(v, 0.5f);
    auto p0 = host(p);
    auto m0 = host(m);
    auto g0 = host(g);
    const kernels::AdamParams a{1e-2f, float(beta1), 0.999f, 1e-8f, 3};
    kernels::adam_update(p, g, m, v, a);
    auto ph = host(p);
    auto mh = host(m);
    auto vh = host(v);
    for (int64_t i = 0; i < n; ++i) {
      const double mi = beta1 * m0(i) + (1 - beta1) * g0(i);
      const double vi = 0.999 * 0.5 + 0.001 * g0(i) * g0(i);
      const double mhat = mi / (1 - std::pow(beta1, 3)), vhat = vi / (1 - std::pow(0.999, 3));
      const double want = p0(i) - 1e-2 * mhat / (std::sqrt(vhat) + 1e-8);
      // beta1 = 0: the first moment is the gradient itself and m is never read or written.
      ASSERT_NEAR(mh(i), beta1 == 0 ? m0(i) : mi, 1e-6);
      ASSERT_NEAR(vh(i), vi, 1e-6);
      ASSERT_NEAR(ph(i), want, 1e-5) << "beta1 " << beta1 << " i " << i;
    }
  }
}

TEST(Optim, DecoderProjectionRemovesRadialComponentAndRenormalizeMakesUnitRows) {
  Matrix w = random_matrix(kM, kD), g = random_matrix(kM, kD);
  auto g0 = host(g);
  auto w0 = host(w);
  kernels::project_decoder_gradient(w, g);
  auto gh = host(g);
  for (int64_t i = 0; i < kM; ++i) {
    double dot = 0, wn = 0, g0dot = 0;
    for (int64_t c = 0; c < kD; ++c) {
      dot += double(gh(i, c)) * w0(i, c);
      wn += double(w0(i, c)) * w0(i, c);
      g0dot += double(g0(i, c)) * w0(i, c);
    }
    EXPECT_NEAR(dot, 0.0, 1e-4 * (1 + std::abs(g0dot)));
    for (int64_t c = 0; c < kD; ++c) ASSERT_NEAR(gh(i, c), g0(i, c) - g0dot / wn * w0(i, c), 1e-5);
  }
  kernels::renormalize_rows(w);
  auto wh = host(w);
  for (int64_t i = 0; i < kM; ++i) {
    double n = 0, dir = 0, n0 = 0;
    for (int64_t c = 0; c < kD; ++c)
      n += double(wh(i, c)) * wh(i, c), n0 += double(w0(i, c)) * w0(i, c);
    for (int64_t c = 0; c < kD; ++c) dir += double(wh(i, c)) * w0(i, c);
    EXPECT_NEAR(n, 1.0, 1e-5);
    EXPECT_NEAR(dir, std::sqrt(n0), 1e-4 * std::sqrt(n0));  // same direction
  }
}

TEST(Reduce, ColumnSumsSumSquaresResidualAndRowNorms) {
  Matrix m = random_matrix(kB, kM);
  Vector out("out", kM), b = random_vector(kM), norms("n", kB);
  kernels::column_sums("test", m, 0.5f, out, slots(kM));
  const double ss = kernels::sum_squares("test", m);
  Matrix e("e", kB, kM);
  kernels::subtract_row("test", m, b, e);
  kernels::row_norms("test", m, norms);
  auto mh = host(m);
  auto oh = host(out);
  auto bh = host(b);
  auto eh = host(e);
  auto nh = host(norms);
  double want_ss = 0;
  for (int64_t j = 0; j < kM; ++j) {
    double s = 0;
    for (int64_t i = 0; i < kB; ++i) {
      s += mh(i, j);
      want_ss += double(mh(i, j)) * mh(i, j);
      ASSERT_FLOAT_EQ(eh(i, j), mh(i, j) - bh(j));
    }
    EXPECT_NEAR(oh(j), 0.5 * s, 1e-4);
  }
  EXPECT_NEAR(ss, want_ss, 1e-6 * want_ss);  // float lanes, double across blocks
  for (int64_t i = 0; i < kB; ++i) {
    double n = 0;
    for (int64_t j = 0; j < kM; ++j) n += double(mh(i, j)) * mh(i, j);
    EXPECT_NEAR(nh(i), std::sqrt(n), 1e-4);
  }
}

TEST(Statistics, TokensSinceFiredCountsTokensAndResets) {
  const int64_t n = 10;
  CountVector since("since", n), fired("fired", n), dead("dead", n);
  auto f = Kokkos::create_mirror_view(fired);
  for (int64_t i = 0; i < n; ++i) f(i) = i % 3 == 0 ? 2 : 0;
  Kokkos::deep_copy(fired, f);
  kernels::update_tokens_since_fired(since, fired, 512, 1000, dead);
  EXPECT_EQ(host(dead)(1), 0);  // 512 tokens < window
  kernels::update_tokens_since_fired(since, fired, 512, 1000, dead);
  auto s = host(since);
  auto dh = host(dead);
  for (int64_t i = 0; i < n; ++i) {
    EXPECT_EQ(s(i), i % 3 == 0 ? 0 : 1024);
    EXPECT_EQ(dh(i), i % 3 == 0 ? 0 : 1);
  }
}

}  // namespace
}  // namespace saescale
