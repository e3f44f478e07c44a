// Every kernel of the step against a plain host reference, on fresh random inputs whose shapes
// are not multiples of the column block (so edge blocks are exercised).
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "kernels/activations/gated.hpp"
#include "kernels/activations/jumprelu.hpp"
#include "kernels/activations/relu.hpp"
#include "kernels/activations/topk.hpp"
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
  const float scale = 0.013f;
  const kernels::ReluRule rule{pi, b_enc, norms, scale, gb};
  kernels::dense_forward("test", rule, f, {}, stats);
  kernels::dense_backward("test", rule, g, kernels::gradient_slots<kernels::ReluRule>("s", kM));
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
  const kernels::JumpReluRule rule(pi, b_enc, theta, eps, l0_scale, gb, gt);
  kernels::dense_forward("test", rule, f, {}, stats);
  kernels::dense_backward("test", rule, g, kernels::gradient_slots<kernels::JumpReluRule>("s", kM));
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

TEST(Activation, GatedForwardAndBackward) {
  Matrix p = random_matrix(kB, kM), f("f", kB, kM), gate("gate", kB, kM);
  Matrix g = random_matrix(kB, kM, 0.1), g_aux = random_matrix(kB, kM, 0.05);
  Vector b_gate = random_vector(kM, 0.3), r_mag = random_vector(kM, 0.2), scale("scale", kM);
  Vector b_mag = random_vector(kM, 0.3);
  Vector gb_gate("gbg", kM), gb_mag("gbm", kM), gr_mag("grm", kM), gp_sum("gps", kM);
  auto g_in = host(g);
  auto stats = make_stats(kM);
  const float l1_scale = 0.017f;
  kernels::magnitude_scales(r_mag, scale);
  const kernels::GatedRule rule{p,     b_gate,  scale,  b_mag,  l1_scale,
                                g_aux, gb_gate, gb_mag, gr_mag, gp_sum};
  kernels::dense_forward("test", rule, f, gate, stats);
  kernels::dense_backward("test", rule, g, kernels::gradient_slots<kernels::GatedRule>("s", kM));
  auto ph = host(p), fh = host(f), gateh = host(gate), gh = host(g), gah = host(g_aux);
  auto bg = host(b_gate), rm = host(r_mag), bm = host(b_mag);
  auto gbg = host(gb_gate), gbm = host(gb_mag), grm = host(gr_mag), gps = host(gp_sum);
  auto act = host(stats.active_total());
  auto l1 = host(stats.f_sum_total());
  int64_t gated_off = 0;
  for (int64_t i = 0; i < kM; ++i) {
    const double sc = std::exp(double(rm(i)));
    int64_t a = 0;
    double l1_sum = 0, s_gate = 0, s_mag = 0, s_r = 0, s_p = 0;
    for (int64_t b = 0; b < kB; ++b) {
      const double pi_gate = double(ph(b, i)) + bg(i), pi_mag = sc * ph(b, i) + bm(i);
      const bool open = pi_gate > 0, on = open && pi_mag > 0;
      gated_off += !open && pi_mag > 0;
      ASSERT_NEAR(fh(b, i), on ? pi_mag : 0.0, 1e-5) << b << "," << i;
      ASSERT_NEAR(gateh(b, i), open ? pi_gate : 0.0, 1e-6);
      a += fh(b, i) != 0;
      l1_sum += open ? pi_gate : 0;
      const double g_mag = on ? g_in(b, i) : 0, g_gate = open ? gah(b, i) + l1_scale : 0;
      const double g_p = sc * g_mag + g_gate;
      ASSERT_NEAR(gh(b, i), g_p, 1e-5 * (1 + std::abs(g_p)));
      s_gate += g_gate, s_mag += g_mag, s_r += g_mag * ph(b, i), s_p += g_p;
    }
    EXPECT_EQ(act(i), a);
    EXPECT_NEAR(l1(i), l1_sum, 1e-4 * (1 + l1_sum));
    EXPECT_NEAR(gbg(i), s_gate, 1e-4 * (1 + std::abs(s_gate)));
    EXPECT_NEAR(gbm(i), s_mag, 1e-4 * (1 + std::abs(s_mag)));
    EXPECT_NEAR(grm(i), sc * s_r, 1e-4 * (1 + std::abs(sc * s_r)));
    EXPECT_NEAR(gps(i), s_p, 1e-4 * (1 + std::abs(s_p)));
  }
  EXPECT_GT(gated_off, 0) << "the test needs entries the gate closes although pi_mag > 0";
}

// f: ReLU of random values with a random mask, as a selection leaves it.
Matrix masked_activations(int64_t rows, int64_t cols, double keep) {
  Matrix f = random_matrix(rows, cols);
  auto h = host(f);
  std::bernoulli_distribution kept(keep);
  for (int64_t b = 0; b < rows; ++b)
    for (int64_t i = 0; i < cols; ++i) h(b, i) = kept(rng()) ? std::abs(h(b, i)) + 0.01f : 0.0f;
  Kokkos::deep_copy(f, h);
  return f;
}

TEST(Activation, TopkBackwardWithAndWithoutAuxk) {
  for (const bool auxk : {false, true}) {
    Matrix f = masked_activations(kB, kM, 0.1), z = masked_activations(kB, kM, 0.05);
    Matrix g = random_matrix(kB, kM), g_z = random_matrix(kB, kM);
    Vector gb("gb", kM), gps("gps", kM);
    auto g_in = host(g);
    const kernels::TopkRule rule{f, z, g_z, auxk, gb, gps};
    kernels::dense_backward("test", rule, g, kernels::gradient_slots<kernels::TopkRule>("s", kM));
    auto fh = host(f), zh = host(z), gzh = host(g_z), gh = host(g);
    auto gbh = host(gb), gpsh = host(gps);
    for (int64_t i = 0; i < kM; ++i) {
      double sum = 0;
      for (int64_t b = 0; b < kB; ++b) {
        const double want =
            (fh(b, i) > 0 ? g_in(b, i) : 0.0) + (auxk && zh(b, i) > 0 ? gzh(b, i) : 0.0);
        ASSERT_NEAR(gh(b, i), want, 1e-6) << auxk;
        sum += want;
      }
      EXPECT_NEAR(gbh(i), sum, 1e-4);
      EXPECT_EQ(gpsh(i), gbh(i));
    }
  }
}

// The sparse rows path of a rule against its dense path: the rows hold exactly the entries the
// rule keeps (the same decisions), valued as the dense f, and the rows backward gives the dense
// g_pi at them and the same per-latent gradients (entries outside the rows contribute nothing).
// make(outputs, g_aux) builds the rule writing its gradients into `outputs`.
template <class Rule>
Kokkos::View<int**, Kokkos::HostSpace> kept_entries(const Rule& rule) {
  Kokkos::View<int**, Kokkos::LayoutRight, MemSpace> keep("keep", kB, kM);
  Kokkos::parallel_for(
      "test", Kokkos::RangePolicy<ExecSpace>(0, kB), KOKKOS_LAMBDA(int64_t b) {
        for (int64_t i = 0; i < kM; ++i) keep(b, i) = rule.keep(b, i);
      });
  return host(keep);
}

template <class Rule, class Make>
void expect_rows_path_matches_dense(int64_t n_outputs, const Matrix& g_aux, bool keeps_inactive,
                                    const Make& make) {
  std::vector<Vector> dense_out, rows_out;
  for (int64_t k = 0; k < n_outputs; ++k)
    dense_out.emplace_back("dense", kM), rows_out.emplace_back("rows", kM);
  Matrix f("f", kB, kM), l1("l1", kB, kM), g = random_matrix(kB, kM, 0.1);
  auto g_in = host(g);
  kernels::dense_forward("test", make(dense_out, g_aux), f, l1, make_stats(kM));
  kernels::dense_backward("test", make(dense_out, g_aux), g,
                          kernels::gradient_slots<Rule>("s", kM));

  auto rows = sparse::SparseRows::allocate("rows", kB, kM);
  kernels::rows_forward("test", make(rows_out, Matrix()), kM, rows, make_stats(kM));
  auto idx = host(rows.idx);
  auto count = host(rows.count);
  auto val = host(rows.val), fh = host(f), gh = host(g);
  // g_f (and the auxiliary gradient) at the rows' entries, from the same dense values.
  Matrix gf_values("gf", kB, kM), aux_values("aux", kB, kM);
  auto gfv = host(gf_values), auxv = host(aux_values);
  auto aux_dense = g_aux.extent(0) ? host(g_aux) : host(Matrix("none", kB, kM));
  int64_t kept_total = 0, inactive_kept = 0;
  const auto keep = kept_entries(make(rows_out, Matrix()));
  for (int64_t b = 0; b < kB; ++b) {
    int64_t j = 0;
    for (int64_t i = 0; i < kM; ++i) {
      if (!keep(b, i)) continue;
      ASSERT_LT(j, count(b)) << "row " << b << " misses latent " << i;
      ASSERT_EQ(idx(b, j), i) << "row " << b;
      ASSERT_NEAR(val(b, j), fh(b, i), 1e-6 * (1 + std::abs(fh(b, i))));
      inactive_kept += fh(b, i) == 0;
      gfv(b, j) = g_in(b, i);
      auxv(b, j) = aux_dense(b, i);
      ++j, ++kept_total;
    }
    ASSERT_EQ(count(b), j) << "row " << b << " holds entries the rule does not keep";
  }
  EXPECT_GT(kept_total, kB) << "the test needs kept entries";
  Kokkos::deep_copy(gf_values, gfv);
  Kokkos::deep_copy(aux_values, auxv);
  auto index = sparse::LatentIndex::allocate("index", kM, kB, kM);
  sparse::build_latent_index(rows, index);
  Matrix g_pi_values("g_pi", kB, kM);
  kernels::rows_backward("test", make(rows_out, aux_values), rows.with_values(gf_values), index,
                         g_pi_values);
  auto gpv = host(g_pi_values);
  for (int64_t b = 0; b < kB; ++b)
    for (int64_t j = 0; j < count(b); ++j)
      ASSERT_NEAR(gpv(b, j), gh(b, idx(b, j)), 1e-6 * (1 + std::abs(gh(b, idx(b, j)))));
  for (int64_t k = 0; k < n_outputs; ++k) {
    auto want = host(dense_out[k]), got = host(rows_out[k]);
    for (int64_t i = 0; i < kM; ++i)
      ASSERT_NEAR(got(i), want(i), 1e-5 * (1 + std::abs(want(i)))) << "output " << k << " " << i;
  }
  if (keeps_inactive)  // JumpReLU's window, Gated's open gates with pi_mag <= 0
    EXPECT_GT(inactive_kept, 0) << "the test needs kept entries with f = 0";
  else
    EXPECT_EQ(inactive_kept, 0) << "only active entries are kept";
}

TEST(Activation, RowsPathMatchesDensePath) {
  const Matrix pi = random_matrix(kB, kM);
  const Vector b_enc = random_vector(kM, 0.3), norms = random_vector(kM, 0.1, 1.0);
  expect_rows_path_matches_dense<kernels::ReluRule>(
      1, Matrix(), false, [&](const std::vector<Vector>& out, const Matrix&) {
        return kernels::ReluRule{pi, b_enc, norms, 0.013f, out[0]};
      });

  Vector theta("theta", kM);
  kernels::thresholds(random_vector(kM, 0.5, -1.0), theta);
  expect_rows_path_matches_dense<kernels::JumpReluRule>(
      2, Matrix(), true, [&](const std::vector<Vector>& out, const Matrix&) {
        return kernels::JumpReluRule(pi, b_enc, theta, 0.3f, 0.02f, out[0], out[1]);
      });

  const Vector b_gate = random_vector(kM, 0.3), b_mag = random_vector(kM, 0.3);
  Vector scale("scale", kM);
  kernels::magnitude_scales(random_vector(kM, 0.2), scale);
  expect_rows_path_matches_dense<kernels::GatedRule>(
      4, random_matrix(kB, kM, 0.05), true, [&](const std::vector<Vector>& out, const Matrix& a) {
        return kernels::GatedRule{pi, b_gate, scale,  b_mag,  0.017f,
                                  a,  out[0], out[1], out[2], out[3]};
      });
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
