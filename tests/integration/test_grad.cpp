// `saescale grad` against central finite differences of an independent double-precision loss
// (tests/support/reference_sae.hpp), for every parameter of ReLU and JumpReLU. JumpReLU's
// log_threshold has no finite-difference gradient (the loss is a step function of it): its
// straight-through estimator is checked against its definition, with pre-activations placed inside
// the window on both sides of the threshold.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <random>

#include "io/npy.hpp"
#include "io/safetensors.hpp"
#include "support/process.hpp"
#include "support/random.hpp"
#include "support/reference_sae.hpp"

namespace {

using reference::Params;
using reference::Problem;
using reference::Tensor;
namespace ts = testing_support;

constexpr int kB = 32, kD = 16, kM = 64;

struct Fixture {
  std::string dir;
  Problem problem;
  Params params;
  std::vector<int> dead;  // AuxK's dead set (empty: no AuxK)
};

constexpr int kTopK = 8, kAuxK = 6;

float round_f(double v) { return static_cast<float>(v); }

// Smallest gap between a selected and an unselected eligible value (per row, or over the batch of
// ReLU(pi)): float and double select the same entries when it is not tiny.
double selection_margin(const Tensor& pi, const std::vector<int>& mask, bool batch,
                        const std::vector<int>& eligible) {
  double margin = 1e9;
  const int rows = batch ? 1 : kB, cols = batch ? kB * kM : kM;
  for (int r = 0; r < rows; ++r) {
    double lowest_in = 1e9, highest_out = -1e9;
    for (int j = 0; j < cols; ++j) {
      const int flat = r * cols + j;
      if (!eligible.empty() && !eligible[flat % kM]) continue;
      const double v = batch ? reference::relu(pi[flat]) : pi[flat];
      if (mask[flat])
        lowest_in = std::min(lowest_in, v);
      else
        highest_out = std::max(highest_out, v);
    }
    if (batch && lowest_in <= 0) continue;  // fewer positives than k*B: zeros tie harmlessly
    margin = std::min(margin, lowest_in - highest_out);
  }
  return margin;
}

// Masks (and AuxK's frozen target) at the unperturbed point, redrawing b_enc until every decision
// has a margin of 1e-4.
void fix_selection(Fixture& fx, std::mt19937& rng) {
  std::normal_distribution<double> normal(0, 1);
  const bool batch = fx.problem.variant == "batchtopk";
  for (int attempt = 0; attempt < 1000; ++attempt) {
    const Tensor pi = reference::centred_preactivations(fx.problem, fx.params);
    fx.problem.selected = reference::select_mask(pi, kB, kM, kTopK, batch);
    double margin = selection_margin(pi, fx.problem.selected, batch, {});
    if (!fx.dead.empty()) {
      fx.problem.aux_selected = reference::select_mask(pi, kB, kM, kAuxK, false, fx.dead);
      margin = std::min(margin, selection_margin(pi, fx.problem.aux_selected, false, fx.dead));
    }
    double kink = 1e9;
    for (double v : pi) kink = std::min(kink, std::abs(v));
    if (margin > 1e-4 && kink > 1e-4) break;
    for (auto& v : fx.params["b_enc"]) v = round_f(v + 1e-3 * normal(rng));
  }
  if (fx.dead.empty()) return;
  const Tensor pi = reference::centred_preactivations(fx.problem, fx.params);
  const Tensor xhat =
      reference::masked_decode(fx.problem, fx.params, pi, fx.problem.selected, true);
  Tensor& e = fx.problem.aux_target;
  e.resize(kB * kD);
  std::vector<double> mean(kD, 0.0);
  for (int j = 0; j < kB * kD; ++j) e[j] = fx.problem.x[j] - xhat[j], mean[j % kD] += e[j] / kB;
  fx.problem.aux_denominator = 0;
  for (int j = 0; j < kB * kD; ++j)
    fx.problem.aux_denominator += (e[j] - mean[j % kD]) * (e[j] - mean[j % kD]);
}

// Smallest |pre-activation| at a ReLU kink over the batch.
double min_kink_distance(const Fixture& fx) {
  const auto& w = fx.params;
  double closest = 1e9;
  for (int b = 0; b < kB; ++b)
    for (int i = 0; i < kM; ++i) {
      double proj = 0;
      for (int c = 0; c < kD; ++c) {
        const double x = fx.problem.x[b * kD + c] - (w.count("b_gate") ? w.at("b_dec")[c] : 0.0);
        proj += x * w.at("W_enc")[c * kM + i];
      }
      if (w.count("b_gate")) {
        closest = std::min(closest, std::abs(proj + w.at("b_gate")[i]));
        closest = std::min(closest, std::abs(std::exp(w.at("r_mag")[i]) * proj + w.at("b_mag")[i]));
      } else {
        closest = std::min(closest, std::abs(proj + w.at("b_enc")[i]));
      }
    }
  return closest;
}

// Random problem whose values are exactly representable in float (what the files hold).
Fixture make_problem(std::string variant, double lambda, double bandwidth, unsigned seed) {
  const bool auxk = variant == "topk+auxk";
  if (auxk) variant = "topk";
  std::mt19937 rng(seed);
  std::normal_distribution<double> normal(0, 1);
  auto draw = [&](size_t n, double scale) {
    Tensor t(n);
    for (auto& v : t) v = round_f(scale * normal(rng));
    return t;
  };
  Fixture fx;
  fx.dir = (std::filesystem::temp_directory_path() /
            ("saescale_grad_" + variant + "_" + std::to_string(seed)))
               .string();
  std::filesystem::remove_all(fx.dir);
  std::filesystem::create_directories(fx.dir);
  fx.problem = {kB, kD, kM, variant, lambda, bandwidth, draw(kB * kD, 1.0)};
  fx.params["W_enc"] = draw(kD * kM, 0.3);
  fx.params["W_dec"] = draw(kM * kD, 0.3);
  fx.params["b_dec"] = draw(kD, 0.1);
  if (variant == "gated") {
    fx.params["b_gate"] = draw(kM, 0.1);
    fx.params["r_mag"] = draw(kM, 0.3);
    fx.params["b_mag"] = draw(kM, 0.1);
    fx.problem.frozen_W_dec = fx.params["W_dec"];
    fx.problem.frozen_b_dec = fx.params["b_dec"];
  } else {
    fx.params["b_enc"] = draw(kM, 0.1);
  }
  if (auxk)
    for (int i = 0; i < kM; ++i) fx.dead.push_back(i % 3 == 0);
  if (variant == "topk" || variant == "batchtopk") {
    fix_selection(fx, rng);
    return fx;
  }
  // Keep every ReLU kink (pi = 0; Gated: pi_gate = 0 and pi_mag = 0) at least 1e-4 away, so float
  // and double agree on every activation's side and finite differences never cross a kink.
  for (int attempt = 0; attempt < 1000 && variant != "jumprelu"; ++attempt) {
    if (min_kink_distance(fx) > 1e-4) break;
    for (const char* bias : {"b_enc", "b_gate", "b_mag"})
      if (fx.params.count(bias))
        for (auto& v : fx.params[bias]) v = round_f(v + 1e-4 * normal(rng));
  }
  if (variant == "jumprelu") {
    // Thresholds next to one of each latent's positive pre-activations (inside the window), kept
    // at least 1e-4 away from every pre-activation (finite differences never cross the jump) and
    // from every window edge (float and double never disagree about who is inside).
    const Tensor pi = reference::preactivations(fx.problem, fx.params);
    std::uniform_real_distribution<double> offset(-0.4 * bandwidth, 0.4 * bandwidth);
    Tensor t(kM);
    for (int i = 0; i < kM; ++i) {
      double theta = 0.3;
      for (int b = 0; b < kB; ++b)
        if (pi[b * kM + i] > 0.1 && pi[b * kM + i] < 0.7) theta = pi[b * kM + i] + offset(rng);
      for (int attempt = 0; attempt < 100; ++attempt) {
        double closest = 1;
        for (int b = 0; b < kB; ++b)
          for (double edge : {0.0, -bandwidth / 2, bandwidth / 2})
            closest = std::min(closest, std::abs(pi[b * kM + i] - theta - edge));
        if (closest > 1e-4) break;
        theta += 3e-4;
      }
      t[i] = std::log(double(round_f(theta)));  // saescale reads float thresholds
    }
    fx.params["log_threshold"] = t;
  }
  return fx;
}

std::vector<float> to_float(const Tensor& t) { return std::vector<float>(t.begin(), t.end()); }

// Parameter names in file order, per variant.
std::vector<std::string> parameter_names(const std::string& variant) {
  if (variant == "gated") return {"W_enc", "b_gate", "r_mag", "b_mag", "W_dec", "b_dec"};
  return {"W_enc", "b_enc", "W_dec", "b_dec"};
}

std::vector<int64_t> shape_of(const std::string& name) {
  if (name == "W_enc") return {kD, kM};
  if (name == "W_dec") return {kM, kD};
  if (name == "b_dec") return {kD};
  return {kM};
}

std::map<std::string, std::vector<float>> run_grad(const Fixture& fx, double lambda) {
  const auto& p = fx.params;
  std::vector<saescale::io::NamedTensor> weights;
  for (const auto& name : parameter_names(fx.problem.variant))
    weights.push_back({name, shape_of(name), to_float(p.at(name))});
  if (p.count("log_threshold")) {
    std::vector<float> theta;
    for (double t : p.at("log_threshold")) theta.push_back(round_f(std::exp(t)));
    weights.push_back({"threshold", {kM}, theta});
  }
  saescale::io::write_safetensors(fx.dir + "/weights.safetensors", weights);
  saescale::io::write_npy(fx.dir + "/x.npy", to_float(fx.problem.x).data(), {kB, kD});
  const std::string out = fx.dir + "/grads_" + std::to_string(lambda) + ".safetensors";
  char args[512];
  std::snprintf(args, sizeof args,
                " grad --variant %s --init %s/weights.safetensors --data %s/x.npy --out %s "
                "--sparsity-coeff %.17g --bandwidth %.17g --k %d --aux-k %d --force",
                fx.problem.variant.c_str(), fx.dir.c_str(), fx.dir.c_str(), out.c_str(), lambda,
                fx.problem.bandwidth, kTopK, kAuxK);
  std::string dead;
  for (int i = 0; i < kM; ++i)
    if (!fx.dead.empty() && fx.dead[i]) dead += (dead.empty() ? "" : ",") + std::to_string(i);
  const auto r = ts::run("timeout -s KILL 600 " + ts::saescale() + args +
                             (dead.empty() ? "" : " --dead-latents " + dead),
                         fx.dir);
  EXPECT_EQ(r.code, 0) << r.err;
  std::map<std::string, std::vector<float>> grads;
  for (auto& t : saescale::io::read_safetensors(out)) grads[t.name] = t.values;
  return grads;
}

// |got - want| <= atol + rtol |want|, with atol relative to the tensor's largest entry.
void expect_close(const std::string& what, const std::vector<float>& got, const Tensor& want,
                  double rtol = 1e-3, double atol_frac = 1e-4) {
  ASSERT_EQ(got.size(), want.size()) << what;
  double scale = 0;
  for (double w : want) scale = std::max(scale, std::abs(w));
  ASSERT_GT(scale, 0) << what << ": the reference gradient is all zero; the test would be vacuous";
  int bad = 0;
  for (size_t k = 0; k < got.size(); ++k) {
    const double tol = atol_frac * scale + rtol * std::abs(want[k]);
    if (std::abs(got[k] - want[k]) > tol && bad++ < 5)
      ADD_FAILURE() << what << "[" << k << "]: saescale " << got[k] << " vs reference " << want[k];
  }
  EXPECT_EQ(bad, 0) << what << ": " << bad << " of " << got.size() << " entries differ";
}

class GradTest : public ::testing::TestWithParam<std::string> {};

TEST_P(GradTest, MatchesFiniteDifferencesForEveryParameter) {
  const std::string variant = GetParam();
  const double lambda = 0.37, bandwidth = 0.2;
  const Fixture fx = make_problem(variant, lambda, bandwidth, ts::test_seed());
  auto grads = run_grad(fx, lambda);

  ASSERT_EQ(grads.count("loss"), 1u);
  EXPECT_NEAR(grads["loss"][0], reference::loss(fx.problem, fx.params),
              1e-5 * reference::loss(fx.problem, fx.params));
  for (const auto& name : parameter_names(variant)) {
    SCOPED_TRACE(variant + " " + name);
    expect_close(name, grads.at(name),
                 reference::finite_differences(fx.problem, fx.params, name, 1e-6));
  }
  if (variant == "jumprelu") {
    const Tensor estimator = reference::jumprelu_log_threshold_grad(fx.problem, fx.params);
    int nonzero = 0;
    for (double g : estimator) nonzero += g != 0;
    EXPECT_GT(nonzero, kM / 2) << "too few pre-activations inside the window to test the estimator";
    expect_close("log_threshold", grads.at("log_threshold"), estimator);
  }
}

INSTANTIATE_TEST_SUITE_P(Variants, GradTest,
                         ::testing::Values("relu", "jumprelu", "gated", "topk", "batchtopk",
                                           "topk+auxk"),
                         [](const auto& info) {
                           std::string n = info.param;
                           return n == "topk+auxk" ? std::string("topk_auxk") : n;
                         });

// The L0 term of JumpReLU reaches only the thresholds: every other gradient is independent of
// lambda.
TEST(JumpReluGrad, SparsityTermSendsNothingToEncoderOrDecoder) {
  const Fixture fx = make_problem("jumprelu", 1.0, 0.2, ts::test_seed() + 1);
  auto without = run_grad(fx, 0.0);
  auto with = run_grad(fx, 3.0);
  for (const char* name : {"W_enc", "b_enc", "W_dec", "b_dec"})
    EXPECT_EQ(without.at(name), with.at(name)) << name;
  EXPECT_NE(without.at("log_threshold"), with.at("log_threshold"));
}

}  // namespace
