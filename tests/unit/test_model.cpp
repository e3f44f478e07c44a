// Library-level tests: weights round trip, initialisation, normalisation, data sources.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>
#include <tuple>

#include "ceilings.hpp"
#include "data/source.hpp"
#include "data/synthetic.hpp"
#include "error.hpp"
#include "io/npy.hpp"
#include "io/safetensors.hpp"
#include "model.hpp"
#include "support/random.hpp"
#include "trainer.hpp"

namespace saescale {
namespace {

std::string scratch(const std::string& name) {
  const auto dir = std::filesystem::temp_directory_path() /
                   ("saescale_model_" + name + "_" + std::to_string(testing_support::test_seed()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir.string();
}

// Random, non-trivial parameters (not the structured initialisation).
void randomize(Model& m) {
  std::mt19937 rng(testing_support::test_seed());
  std::normal_distribution<float> n(0, 0.5f);
  auto h = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), m.params().values());
  for (size_t i = 0; i < h.size(); ++i) h(i) = n(rng);
  Kokkos::deep_copy(m.params().values(), h);
}

Hyper hyper() { return {0.1, 0.01, 0.05, 1.0, 8, 16}; }

TEST(Weights, RoundTripThroughFilesIsExact) {
  for (const std::string variant : {"relu", "jumprelu"}) {
    Model m(variant, 12, 40);
    m.initialize(hyper(), 7);
    randomize(m);
    const std::string dir = scratch("weights_" + variant);
    save_weights(dir, m, 1.0, {}, 8);
    SavedSae saved = read_saved_sae(dir);
    auto& tensors = saved.tensors;
    const nlohmann::json& cfg = saved.cfg;
    auto exported = m.export_tensors(1.0);
    ASSERT_EQ(tensors.size(), exported.size());
    for (size_t i = 0; i < tensors.size(); ++i) {
      EXPECT_EQ(tensors[i].name, exported[i].name);
      EXPECT_EQ(tensors[i].shape, exported[i].shape);
      EXPECT_EQ(tensors[i].values, exported[i].values) << tensors[i].name;  // bitwise
    }
    EXPECT_EQ(cfg["d_in"], 12);
    EXPECT_EQ(cfg["d_sae"], 40);
    EXPECT_EQ(cfg["architecture"], variant == "jumprelu" ? "jumprelu" : "standard");
    EXPECT_EQ(saved.variant, variant);
    EXPECT_FALSE(cfg.contains("k"));  // only TopK's file says a k
    // Loading into a fresh model gives back the same parameters (thresholds through exp/log: 2
    // ulp).
    Model back(variant, 12, 40);
    back.import_tensors(std::move(tensors), 1.0, dir);
    auto a = back.params().to_tensors(), b = m.params().to_tensors();
    for (size_t i = 0; i < a.size(); ++i)
      for (size_t k = 0; k < a[i].values.size(); ++k) {
        if (a[i].name == "log_threshold")
          ASSERT_NEAR(a[i].values[k], b[i].values[k], 4e-7 * (1 + std::abs(b[i].values[k])));
        else
          ASSERT_EQ(a[i].values[k], b[i].values[k]) << a[i].name << "[" << k << "]";
      }
  }
}

// The loss of one forward pass of `m` on a fixed random batch (the SAE's function of x).
double loss_on_random_batch(Model& m, const Hyper& h, int64_t B) {
  m.allocate(B);
  std::mt19937 rng(testing_support::test_seed() + 11);
  std::normal_distribution<float> n(0.3f, 1.0f);
  auto x = Kokkos::create_mirror_view(Kokkos::HostSpace(), m.buffers().x);
  for (size_t i = 0; i < x.size(); ++i) x.data()[i] = n(rng);
  Kokkos::deep_copy(m.buffers().x, x);
  return m.forward(h, Precision::fp32).mse;
}

// SAELens files may encode x - b_dec where saescale's variant encodes x, or the reverse
// (apply_b_dec_to_input): loading moves b_dec W_enc into the encoder biases, so the loaded SAE is
// the same function of x. A TopK file's k replaces the default k unless --k was given.
TEST(Weights, SaelensFoldersWithTheOtherBiasConventionLoadAsTheSameSae) {
  const int64_t d = 10, M = 24, B = 16;
  for (const std::string variant : {"relu", "jumprelu", "gated", "topk"}) {
    Model m(variant, d, M);
    const Hyper h = hyper();
    m.initialize(h, 5);
    randomize(m);
    if (variant == "jumprelu") {  // thresholds near the pre-activations, so some latents fire
      auto t = m.params().vector("log_threshold");
      Kokkos::deep_copy(t, static_cast<real>(std::log(0.2)));
    }
    auto tensors = m.export_tensors(1.0);
    // The same SAE written with the other convention: b' = b -/+ b_dec W_enc.
    const bool subtracts = m.variant().traits().subtracts_decoder_bias;
    const auto find = [&](const char* name) -> io::NamedTensor& {
      for (auto& t : tensors)
        if (t.name == name) return t;
      throw Error(std::string("no ") + name);
    };
    const auto& W_enc = find("W_enc").values;
    const auto& b_dec = find("b_dec").values;
    for (const char* bias : {"b_enc", "b_gate", "b_mag"}) {
      if (variant == "gated" ? std::string(bias) == "b_enc" : std::string(bias) != "b_enc")
        continue;
      auto& b = find(bias).values;
      for (int64_t i = 0; i < M; ++i) {
        double v = 0;
        for (int64_t c = 0; c < d; ++c) v += double(b_dec[c]) * W_enc[c * M + i];
        if (std::string(bias) == "b_mag") v *= std::exp(double(find("r_mag").values[i]));
        // File encodes x - b_dec (variant does not): its bias is b + v; the reverse: b - v.
        b[i] = static_cast<float>(b[i] + (subtracts ? -v : v));
      }
    }
    const std::string dir = scratch("saelens_" + variant);
    io::write_safetensors(dir + "/sae_weights.safetensors", tensors, {{"format", "pt"}});
    nlohmann::json cfg = {{"architecture", m.variant().traits().architecture},
                          {"d_in", d},
                          {"d_sae", M},
                          {"dtype", "float32"},
                          {"apply_b_dec_to_input", !subtracts},
                          {"normalize_activations", "none"}};
    if (variant == "topk") cfg["k"] = 5;
    std::ofstream(dir + "/cfg.json") << cfg.dump();

    SavedSae saved = read_saved_sae(dir);
    ASSERT_EQ(saved.variant, variant);
    ASSERT_EQ(saved.applies_b_dec, !subtracts);
    Config options;
    options.variant = "jumprelu";  // the default: the file's layout decides
    options.init = dir;
    const Config run = with_saved_sae(options, saved);
    EXPECT_EQ(run.variant, variant);
    EXPECT_EQ(run.k, variant == "topk" ? 5 : options.k);
    options.given = {"k"};
    options.k = 7;
    EXPECT_EQ(with_saved_sae(options, saved).k, 7) << "a given --k wins";
    options.given = {"variant"};
    if (variant != "jumprelu") EXPECT_THROW(with_saved_sae(options, saved), Error);

    Model loaded(variant, d, M);
    loaded.initialize(h, 9);
    loaded.import_tensors(std::move(saved.tensors), 1.0, dir, saved.applies_b_dec);
    const double expected = loss_on_random_batch(m, h, B);
    const double got = loss_on_random_batch(loaded, h, B);
    ASSERT_GT(expected, 0) << variant;
    EXPECT_NEAR(got, expected, 1e-5 * expected) << variant;
  }
}

TEST(Weights, NormalisationIsFoldedOnExportAndUnfoldedOnImport) {
  Model m("jumprelu", 6, 10);
  m.initialize(hyper(), 3);
  randomize(m);
  const double s = 0.37;
  auto raw = m.params().to_tensors();
  auto folded = m.export_tensors(s);
  for (size_t i = 0; i < raw.size(); ++i) {
    const std::string& name = raw[i].name;
    for (size_t k = 0; k < raw[i].values.size(); ++k) {
      const double v = raw[i].values[k];
      const double want = name == "W_enc"                        ? v * s
                          : (name == "W_dec" || name == "b_dec") ? v / s
                          : name == "log_threshold"              ? std::exp(v)
                                                                 : v;
      ASSERT_NEAR(folded[i].values[k], want, 1e-6 * (1 + std::abs(want))) << name;
    }
  }
  // Folded weights on raw x give the same pre-activations as raw weights on s x.
  Model back("jumprelu", 6, 10);
  back.import_tensors(folded, s, "test");
  auto again = back.params().to_tensors();
  for (size_t i = 0; i < raw.size(); ++i)
    for (size_t k = 0; k < raw[i].values.size(); ++k)
      ASSERT_NEAR(again[i].values[k], raw[i].values[k], 1e-5 * (1 + std::abs(raw[i].values[k])));
}

TEST(Weights, ShapeMismatchNamesTheTensor) {
  Model m("relu", 8, 16), other("relu", 8, 32);
  m.initialize(hyper(), 1);
  try {
    other.import_tensors(m.export_tensors(1.0), 1.0, "w.safetensors");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("W_enc"), std::string::npos) << e.what();
  }
}

TEST(Initialisation, UnitDecoderRowsAndTiedEncoder) {
  Model m("jumprelu", 16, 50);
  m.initialize(hyper(), 11);
  auto t = m.params().to_tensors();
  const auto& w_enc = t[0].values;
  const auto& w_dec = t[2].values;
  for (int i = 0; i < 50; ++i) {
    double n = 0;
    for (int c = 0; c < 16; ++c) {
      n += double(w_dec[i * 16 + c]) * w_dec[i * 16 + c];
      ASSERT_EQ(w_enc[c * 50 + i], w_dec[i * 16 + c]);
    }
    EXPECT_NEAR(n, 1.0, 1e-5);
  }
  for (float th : t[4].values) EXPECT_NEAR(std::exp(th), 0.05, 1e-7);
  Model r("relu", 16, 50);
  r.initialize({0.1, 0.01, 0.05, 0.1, 8, 16}, 11);
  auto rt = r.params().to_tensors();
  double n = 0;
  for (int c = 0; c < 16; ++c) n += double(rt[2].values[c]) * rt[2].values[c];
  EXPECT_NEAR(std::sqrt(n), 0.1, 1e-6);
}

TEST(Normalisation, ScalarsMeetTheirDefinitions) {
  std::mt19937 rng(testing_support::test_seed());
  std::normal_distribution<float> nd(0.3f, 2.0f);
  const int64_t n = 500, d = 24;
  std::vector<float> x(n * d);
  for (auto& v : x) v = nd(rng);
  const double s = estimate_norm_scale("unit-msq", x, n, d);
  const double q = estimate_norm_scale("sqrt-d", x, n, d);
  double msq = 0, mean_norm = 0;
  for (int64_t r = 0; r < n; ++r) {
    double ss = 0;
    for (int64_t c = 0; c < d; ++c) ss += double(x[r * d + c]) * x[r * d + c];
    msq += s * s * ss / n;
    mean_norm += q * std::sqrt(ss) / n;
  }
  EXPECT_NEAR(msq, 1.0, 1e-9);
  EXPECT_NEAR(mean_norm, std::sqrt(double(d)), 1e-9);
  EXPECT_EQ(estimate_norm_scale("none", x, n, d), 1.0);
}

TEST(Synthetic, DeterministicAndAddressableByTokenIndex) {
  auto spec = SyntheticSpec::parse("synthetic:features=64,l0=4,noise=0.01", 16, 5);
  SyntheticData a(spec), b(spec);
  std::vector<float> x(20 * 16), y(10 * 16);
  a.generate(0, 20, x.data());
  b.generate(10, 10, y.data());
  for (int i = 0; i < 10 * 16; ++i) ASSERT_EQ(x[10 * 16 + i], y[i]);
  EXPECT_EQ(a.dictionary(), b.dictionary());
  auto other = SyntheticSpec::parse("synthetic:features=64,l0=4,noise=0.01,seed=6", 16, 5);
  std::vector<float> z(20 * 16);
  SyntheticData(other).generate(0, 20, z.data());
  EXPECT_NE(x, z);
}

TEST(Synthetic, ActiveFeaturesHaveMeanL0AndPowerLawFrequencies) {
  auto spec = SyntheticSpec::parse("synthetic:features=200,l0=5,alpha=0.8", 8,
                                   testing_support::test_seed());
  SyntheticData gen(spec);
  const int64_t n = 100000;
  std::vector<float> x(n * 8);
  std::vector<int64_t> counts(200, 0);
  gen.generate(0, n, x.data(), &counts);
  int64_t total = 0;
  for (auto c : counts) total += c;
  EXPECT_NEAR(double(total) / n, 5.0, 0.05);  // Poisson(5): std of the mean is 0.007
  // Draws follow p_j ~ (j+1)^-0.8: feature 9 is 100^0.8/10^0.8 = 6.3 times as frequent as
  // feature 99 (features this rare are not saturated by drawing without replacement).
  EXPECT_NEAR(double(counts[9]) / counts[99], std::pow(10.0, 0.8), 1.3);
  // Rows are offset + features + noise: not all equal, not zero.
  EXPECT_NE(std::vector<float>(x.begin(), x.begin() + 8),
            std::vector<float>(x.begin() + 8, x.begin() + 16));
}

TEST(Synthetic, BadSpecsAreOneLineErrors) {
  for (const char* bad :
       {"synthetic:features=abc", "synthetic:foo=1", "synthetic:l0=0", "synthetic:noise"})
    EXPECT_THROW(SyntheticSpec::parse(bad, 8, 1), Error) << bad;
  EXPECT_THROW(SyntheticSpec::parse("synthetic", 0, 1), Error);
}

TEST(FileSource, ShuffledRowsComeFromTheDataAndAreDeterministic) {
  const std::string dir = scratch("files");
  const int64_t n = 300, d = 5;
  std::vector<float> rows(n * d);
  for (int64_t r = 0; r < n; ++r)
    for (int64_t c = 0; c < d; ++c) rows[r * d + c] = float(r) + 0.1f * c;
  io::write_npy(dir + "/a.npy", rows.data(), {200, d});
  io::write_npy(dir + "/b.npy", rows.data() + 200 * d, {100, d});
  DataOptions o{dir + "/*.npy", 0, 3, 64, 50, ""};
  auto src = open_data_source(o), again = open_data_source(o);
  EXPECT_EQ(src->dim(), d);
  EXPECT_EQ(src->total_rows(), n);
  std::vector<float> batch(100 * d), batch2(100 * d);
  src->next_batch(batch.data(), 100, 0, 100);
  again->next_batch(batch2.data(), 100, 0, 100);
  EXPECT_EQ(batch, batch2);
  bool shuffled = false;
  for (int64_t r = 0; r < 100; ++r) {
    const float row = batch[r * d];
    ASSERT_LT(row, 250) << "a training row came from the held-out evaluation rows";
    for (int64_t c = 0; c < d; ++c) ASSERT_FLOAT_EQ(batch[r * d + c], row + 0.1f * c);
    shuffled |= row != float(r);
  }
  EXPECT_TRUE(shuffled);
  std::vector<float> eval(50 * d);
  ASSERT_EQ(src->eval_set(eval.data(), 50), 50);
  EXPECT_EQ(eval[0], 250.0f);  // the last fifth is held out
}

// Data parallelism: rank r of n reads rows [r B/n, (r+1) B/n) of the same global batch, so the
// slices of every rank put together are the one-rank batch, step after step.
TEST(DataSources, RankSlicesMakeUpTheGlobalBatch) {
  const std::string dir = scratch("slices");
  const int64_t n = 400, d = 3;
  std::vector<float> rows(n * d);
  std::mt19937 rng(testing_support::test_seed());
  std::uniform_real_distribution<float> uniform(-1, 1);
  for (auto& v : rows) v = uniform(rng);
  io::write_npy(dir + "/x.npy", rows.data(), {n, d});
  for (const std::string spec : {dir + "/x.npy", std::string("synthetic:features=16")}) {
    DataOptions o{spec, d, 7, 32, 16, ""};
    auto whole = open_data_source(o);
    const int64_t B = 24, ranks = 4, local = B / ranks;
    std::vector<std::unique_ptr<DataSource>> rank_sources;
    for (int64_t r = 0; r < ranks; ++r) rank_sources.push_back(open_data_source(o));
    for (int step = 0; step < 3; ++step) {
      std::vector<float> expected(B * d), got(B * d);
      whole->next_batch(expected.data(), B, 0, B);
      for (int64_t r = 0; r < ranks; ++r)
        rank_sources[r]->next_batch(got.data() + r * local * d, B, r * local, local);
      EXPECT_EQ(got, expected) << spec << " step " << step;
    }
  }
}

// ---- the sparse-aware path (--sparse on) ------------------------------------------------------

// Non-zeros per row of a [B, M] matrix on the host.
std::vector<int64_t> row_counts(const Matrix& a, double above = 0) {
  auto h = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), a);
  std::vector<int64_t> n(h.extent(0), 0);
  for (size_t b = 0; b < h.extent(0); ++b)
    for (size_t m = 0; m < h.extent(1); ++m) n[b] += std::abs(h(b, m)) > above;
  return n;
}

// The sparse products (decode, the decoder and encoder gradients, g_f at the entries backward
// reads) give the dense path's loss and gradients for every variant, on random parameters with
// every encoder bias negative, b_dec zero and a few inputs scaled down so that some rows have no
// active latent, and with the capacity set to the largest row so that some rows are exactly at it.
// One entry less and the products that no longer fit fall back to the dense GEMMs, with the same
// result.
TEST(SparsePath, MatchesTheDenseProductsForEveryVariant) {
  const int64_t d = 24, M = 96, B = 40;
  // TopK and BatchTopK also with dead latents: AuxK runs, and its gradient takes the dense
  // backward.
  for (const auto& [name, dead_latents] :
       std::vector<std::pair<std::string, bool>>{{"relu", false},
                                                 {"jumprelu", false},
                                                 {"gated", false},
                                                 {"topk", false},
                                                 {"topk", true},
                                                 {"batchtopk", false},
                                                 {"batchtopk", true}}) {
    // Copies: lambdas below capture them, and capturing structured bindings is C++20.
    const std::string variant = name;
    const bool with_dead = dead_latents;
    SCOPED_TRACE(variant + (with_dead ? " with dead latents" : ""));
    Hyper h = hyper();
    h.k = 6;
    std::mt19937 rng(testing_support::test_seed());
    std::normal_distribution<float> n(0, 1);
    std::vector<float> x(B * d);
    for (int64_t i = 0; i < B * d; ++i) x[i] = n(rng) * (i / d < 3 ? 1e-3f : 1.0f);
    auto setup = [&](Model& m) {
      m.allocate(B);
      m.initialize(h, 7);
      randomize(m);
      for (const char* bias : {"b_enc", "b_gate", "b_mag"}) {
        if (!m.params().has(bias)) continue;
        auto v = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), m.params().vector(bias));
        for (size_t i = 0; i < v.extent(0); ++i) v(i) = -std::abs(v(i)) - 0.05f;
        Kokkos::deep_copy(m.params().vector(bias), v);
      }
      Kokkos::deep_copy(m.params().vector("b_dec"), 0.f);  // TopK/BatchTopK encode x - b_dec
      auto dead = Kokkos::create_mirror_view(Kokkos::HostSpace(), m.buffers().dead);
      for (int64_t i = 0; i < M; ++i) dead(i) = with_dead && i % 3 == 0;
      Kokkos::deep_copy(m.buffers().dead, dead);
      auto hx = Kokkos::create_mirror_view(Kokkos::HostSpace(), m.buffers().x);
      std::copy(x.begin(), x.end(), hx.data());
      Kokkos::deep_copy(m.buffers().x, hx);
    };
    Model dense(variant, d, M);
    setup(dense);
    const LossParts expected = dense.forward_backward(h, Precision::fp32);
    EXPECT_EQ(expected.auxiliary > 0, with_dead || variant == "gated") << "AuxK ran";
    const auto want = dense.params().to_tensors(true);
    // The largest row of every entry set the sparse path builds: f, g_pi and (JumpReLU) the
    // entries of g_f inside the straight-through window, u > -eps/2.
    const auto f_rows = row_counts(dense.buffers().f), g_pi_rows = row_counts(dense.buffers().g);
    int64_t capacity = 0;
    for (int64_t b = 0; b < B; ++b) capacity = std::max({capacity, f_rows[b], g_pi_rows[b]});
    if (variant == "jumprelu") {
      auto pi = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), dense.buffers().pi);
      auto bias =
          Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), dense.params().vector("b_enc"));
      auto t = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(),
                                                   dense.params().vector("log_threshold"));
      for (int64_t b = 0; b < B; ++b) {
        int64_t marked = 0;
        for (int64_t m = 0; m < M; ++m)
          marked += pi(b, m) + bias(m) - std::exp(t(m)) > -h.bandwidth / 2;
        capacity = std::max(capacity, marked);
      }
    }
    EXPECT_EQ(*std::min_element(f_rows.begin(), f_rows.end()), 0) << variant << ": no empty row";
    ASSERT_LT(capacity, M) << variant << ": not sparse enough to test anything";

    // Rows that fit; rows one entry short (they grow); the dense fallback (a limit no row meets).
    enum Case { fits, grows, falls_back };
    for (const Case c : {fits, grows, falls_back}) {
      const int64_t cap = c == grows ? capacity - 1 : capacity;
      Model sparse(variant, d, M);
      setup(sparse);
      sparse.enable_sparse(cap);
      if (c == falls_back) sparse.sparse()->set_limit(0);
      const LossParts got = sparse.forward_backward(h, Precision::fp32);
      EXPECT_NEAR(got.total(), expected.total(), 1e-6 * std::abs(expected.total())) << variant;
      // The per-latent counts (L0, dead latents) whichever way the rows were made.
      for (const auto& [name, want_counts, have_counts] :
           {std::tuple{"active", dense.buffers().stats.active_total(),
                       sparse.buffers().stats.active_total()},
            std::tuple{"fired", dense.buffers().stats.fired_total(),
                       sparse.buffers().stats.fired_total()}}) {
        auto a = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), want_counts);
        auto c = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), have_counts);
        for (int64_t m = 0; m < M; ++m)
          ASSERT_EQ(c(m), a(m)) << variant << " capacity " << cap << ": " << name << "[" << m
                                << "]";
      }
      // Readers outside the step see the dense f either way.
      sparse.materialize_f();
      auto f_want = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), dense.buffers().f);
      auto f_have = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), sparse.buffers().f);
      for (int64_t i = 0; i < B * M; ++i)
        ASSERT_EQ(f_have.data()[i], f_want.data()[i]) << variant << " capacity " << cap << ": f";
      const auto have = sparse.params().to_tensors(true);
      for (size_t t = 0; t < want.size(); ++t) {
        double scale = 0;
        for (float v : want[t].values) scale = std::max(scale, double(std::abs(v)));
        for (size_t i = 0; i < want[t].values.size(); ++i)
          ASSERT_NEAR(have[t].values[i], want[t].values[i], 1e-5 * scale + 1e-12)
              << variant << " capacity " << cap << ": d" << want[t].name << "[" << i << "]";
      }
      int64_t sparse_products = 0, dense_products = 0;
      for (const auto& [product, c] : sparse.sparse()->counts())
        sparse_products += c.sparse, dense_products += c.dense;
      if (c == falls_back) {  // at least one product ran as its GEMM
        EXPECT_GT(dense_products, 0) << variant;
      } else {  // all four products ran sparse, after the rows grew if they had to
        EXPECT_EQ(sparse_products, 4) << variant << " case " << c;
        EXPECT_EQ(dense_products, 0) << variant << " case " << c;
        EXPECT_EQ(sparse.sparse()->growths() > 0, c == grows) << variant;
        EXPECT_GE(sparse.sparse()->capacity(), capacity) << variant;
      }
    }
  }
}

// ---- the measurement harness ------------------------------------------------------------------

Config harness_config(const std::string& variant) {
  Config cfg;
  cfg.variant = variant;
  cfg.d_model = 64;
  cfg.width = 2048;
  cfg.batch_size = 256;
  cfg.steps = 12;
  cfg.warmup_steps = 2;
  cfg.k = 16;
  cfg.aux_k = 64;
  cfg.dead_window_tokens = 512;  // AuxK runs from the third step
  cfg.data = "synthetic:features=256,l0=8";
  cfg.eval_tokens = 512;
  cfg.norm_tokens = 1024;
  cfg.progress_every = 1000;
  cfg.gemm_floor = false;
  return cfg;
}

// Every moment of a fenced step is in exactly one phase: the phases' mean times add up to the
// mean step time (means add, medians need not). What is left is the timers' own bookkeeping.
// Every step's time is booked: to the method's phases, and what lies between them to
// between_phases (so the phases' means add up to the step's, whatever the machine's load; how
// large between_phases is depends on the machine and is reported, not asserted).
TEST(Harness, PhaseTimesAddUpToTheFencedStep) {
  const std::vector<std::string> every_step = {"encode_gemm",
                                               "activation",
                                               "decode_gemm",
                                               "loss",
                                               "backward_decoder_gemm",
                                               "backward_activation_gemm",
                                               "variant_backward",
                                               "backward_encoder_gemm",
                                               "bias_gradients",
                                               "optimizer",
                                               "statistics",
                                               "between_phases"};
  for (const std::string variant : {"relu", "jumprelu", "gated", "topk", "batchtopk"}) {
    comm::Communicator alone;
    Trainer trainer(harness_config(variant), alone);
    const auto timing = trainer.run()["timing"];
    double phases = 0;
    for (const auto& [name, s] : timing["phases_s"].items()) phases += s["mean"].get<double>();
    const double step = timing["step_s"]["mean"].get<double>();
    EXPECT_NEAR(phases / step, 1.0, 1e-9)
        << variant << ": phases " << phases << " s, step " << step << " s";
    for (const auto& phase : every_step)
      EXPECT_TRUE(timing["phases_s"].contains(phase)) << variant << ": no " << phase;
    EXPECT_GE(timing["phases_s"]["between_phases"]["min"].get<double>(), -1e-6) << variant;
  }
}

// The analytic breakdown (comm/plan.cpp) accounts for every Kokkos allocation of a run: within 10%
// of the peak the allocation tracker measured (metrics/memory.hpp), ground truth included.
TEST(Harness, MemoryBreakdownMatchesTheMeasuredPeak) {
  for (const std::string variant : {"relu", "jumprelu", "gated", "topk", "batchtopk"}) {
    for (const std::string optimizer : {"adam", "sgd"}) {
      comm::Communicator alone;
      Config cfg = harness_config(variant);
      cfg.optimizer = optimizer;
      const auto memory = Trainer(cfg, alone).run()["memory"];
      ASSERT_TRUE(memory["peak_device_bytes"].is_number()) << "allocations were not tracked";
      const double peak = memory["peak_device_bytes"].get<double>();
      const double planned = memory["breakdown_total"].get<double>();
      EXPECT_GT(peak, 4.0 * cfg.batch_size * cfg.width * 3) << "the step's B x M buffers";
      EXPECT_NEAR(planned / peak, 1.0, 0.1) << variant << " " << optimizer << ": planned "
                                            << planned << " B, measured peak " << peak << " B";
    }
  }
}

// Phases carry their work and achieved rates (FLOPs for the GEMMs: 2 B d M each), the step its
// FLOPs, and the ceilings come from the same run; without fences the rates are withheld.
TEST(Harness, PhasesCarryWorkRatesAndCeilings) {
  comm::Communicator alone;
  Config cfg = harness_config("jumprelu");
  cfg.gemm_floor = true;
  cfg.sparse = "off";  // the dense step's work model (products that may run sparse carry none)
  const auto timing = Trainer(cfg, alone).run()["timing"];
  const double B = cfg.batch_size, d = cfg.d_model, M = cfg.width;
  for (const char* gemm : {"encode_gemm", "backward_decoder_gemm", "backward_activation_gemm",
                           "backward_encoder_gemm"}) {
    const auto& p = timing["phases_s"][gemm];
    EXPECT_DOUBLE_EQ(p["flops"].get<double>(), 2 * B * d * M) << gemm;
    EXPECT_NEAR(p["gflops_per_s"].get<double>(),
                p["flops"].get<double>() / p["median"].get<double>() / 1e9, 1e-9);
  }
  EXPECT_GT(timing["flops_per_step"].get<double>(), 5 * 2 * B * d * M);
  EXPECT_GT(timing["ceilings"]["gemm_gflops_per_s"].get<double>(), 0);
  EXPECT_GT(timing["ceilings"]["stream_copy_gbytes_per_s"].get<double>(), 0);
  EXPECT_TRUE(timing["fenced"].get<bool>());

  // The sparse path: a product that ran as its GEMM every step keeps its work (a crossover of 0
  // sends all four dense); one that ran sparse has none (JumpReLU's rows at initialisation fit
  // a capacity of 2,048).
  cfg.gemm_floor = false;
  cfg.sparse = "auto", cfg.sparse_crossover = 0;
  const auto all_dense = Trainer(cfg, alone).run()["timing"];
  cfg.sparse = "on", cfg.sparse_crossover = -1, cfg.sparse_capacity = M;
  const auto all_sparse = Trainer(cfg, alone).run()["timing"];
  for (const char* gemm : {"backward_decoder_gemm", "backward_activation_gemm"}) {
    EXPECT_DOUBLE_EQ(all_dense["phases_s"][gemm]["flops"].get<double>(), 2 * B * d * M) << gemm;
    EXPECT_TRUE(all_sparse["phases_s"][gemm].value("flops", nlohmann::json()).is_null()) << gemm;
  }
  cfg.sparse = "off";

  cfg.fence = false;
  const auto unfenced = Trainer(cfg, alone).run()["timing"];
  EXPECT_FALSE(unfenced["fenced"].get<bool>());
  EXPECT_TRUE(unfenced["phases_s"]["encode_gemm"]["gflops_per_s"].is_null());
  EXPECT_GT(unfenced["step_s"]["median"].get<double>(), 0);
}

// --target-fvu: the first evaluation at or below each target is recorded (a target above the
// untrained FVU at the first evaluation; one no run reaches).
TEST(Harness, TimeToFidelityRecordsTheFirstEvaluationBelowEachTarget) {
  comm::Communicator alone;
  Config cfg = harness_config("topk");
  cfg.steps = 20;
  cfg.eval_every = 5;
  cfg.target_fvu = {1e6, 1e-9};
  const auto results = Trainer(cfg, alone).run();
  const auto& targets = results["fidelity"]["time_to_fidelity"];
  ASSERT_EQ(targets.size(), 2u);
  EXPECT_TRUE(targets[0]["reached"].get<bool>());
  EXPECT_EQ(targets[0]["step"], 5);
  EXPECT_EQ(targets[0]["tokens"], 5 * cfg.batch_size);
  EXPECT_GT(targets[0]["train_s"].get<double>(), 0);
  EXPECT_GE(targets[0]["wall_s"].get<double>(), targets[0]["train_s"].get<double>());
  EXPECT_FALSE(targets[1]["reached"].get<bool>());
  EXPECT_TRUE(targets[1]["step"].is_null());
}

// --sparse auto's crossover from measured ratios (sparse time / dense time by entries per row):
// interpolated between the last size that saves enough and the first that does not, never
// extrapolated past the largest size measured, and 0 when even the smallest does not save.
TEST(SparseAuto, CrossoverLiesBetweenMeasuredSizes) {
  std::mt19937 rng(testing_support::test_seed());
  std::uniform_real_distribution<double> slope(1e-3, 2e-2), offset(0.0, 0.05);
  for (int trial = 0; trial < 20; ++trial) {
    const double a = offset(rng), b = slope(rng);  // ratio(L) = a + b L, as a linear cost gives
    std::vector<std::pair<int64_t, double>> measured;
    for (int64_t entries = 8;; entries *= 4) {
      measured.emplace_back(entries, a + b * entries);
      if (a + b * entries > 0.9 || entries >= 2048) break;
    }
    const double want = std::min<double>((0.9 - a) / b, measured.back().first);
    if (measured.front().second > 0.9)
      EXPECT_EQ(sparse_crossover(measured, 0.9), 0.0);
    else
      EXPECT_NEAR(sparse_crossover(measured, 0.9), want, 1e-9 * want) << "a " << a << " b " << b;
  }
  EXPECT_EQ(sparse_crossover({{8, 0.2}, {32, 0.5}}, 0.9), 32.0);  // all pay: up to the largest
  EXPECT_EQ(sparse_crossover({{8, 0.95}}, 0.9), 0.0);             // none pays
  EXPECT_EQ(sparse_crossover({{8, 0.9}}, 0.9), 8.0);              // exactly enough pays
  // noise that makes the ratio fall between sizes still gives a crossover between them
  const double noisy = sparse_crossover({{8, 0.3}, {32, 0.2}, {128, 1.4}}, 0.9);
  EXPECT_GT(noisy, 32.0);
  EXPECT_LT(noisy, 128.0);
}

}  // namespace
}  // namespace saescale
