// The saescale command line end to end: happy paths through every subcommand, and bad input giving
// one clear line on stderr, a non-zero exit and no output file.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "io/npy.hpp"
#include "io/safetensors.hpp"
#include "support/process.hpp"
#include "support/random.hpp"
#include "support/validate.hpp"

namespace {

namespace fs = std::filesystem;
namespace ts = testing_support;

class Cli : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = (fs::temp_directory_path() /
            ("saescale_cli_" +
             std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()) + "_" +
             std::to_string(ts::test_seed())))
               .string();
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  ts::Result saescale(const std::string& args) {
    return ts::run("timeout -s KILL 600 " + ts::saescale() + " " + args, dir_);  // a hang: 137
  }

  // A failing command: non-zero exit, exactly one line on stderr containing `needle`, and no
  // results file left behind.
  void expect_error(const std::string& args, const std::string& needle) {
    const std::string out = dir_ + "/should_not_exist.json";
    const auto r = saescale(args + " --out " + out);
    EXPECT_NE(r.code, 0) << args;
    EXPECT_NE(r.err.find(needle), std::string::npos) << "stderr: " << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << "stderr: " << r.err;
    EXPECT_FALSE(fs::exists(out)) << args;
  }

  std::string write_random_npy(const std::string& name, int64_t rows, int64_t d) {
    std::mt19937 rng(ts::test_seed());
    std::normal_distribution<float> n(0, 1);
    std::vector<float> x(rows * d);
    for (auto& v : x) v = n(rng);
    const std::string path = dir_ + "/" + name;
    saescale::io::write_npy(path, x.data(), {rows, d});
    return path;
  }

  std::string dir_;
  const std::string small_ =
      " --width 32 --batch-size 64 --steps 3 --warmup-steps 1 --eval-tokens 64 ";
};

TEST_F(Cli, HelpForEverySubcommand) {
  for (const char* sub : {"", "train", "grad", "eval", "gen-data", "info"}) {
    const auto r = saescale(std::string(sub) + " --help");
    EXPECT_EQ(r.code, 0) << sub;
    EXPECT_NE(r.out.find("Usage"), std::string::npos) << sub;
  }
}

TEST_F(Cli, VersionPrintsAndSucceeds) {
  const auto r = saescale("--version");
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out.rfind("saescale ", 0), 0u) << r.out;
  EXPECT_EQ(r.err, "");
}

// Every step a warm-up step: the summary says that no step was timed (not "0 tok/s").
TEST_F(Cli, NoTimedStepIsSaidSo) {
  const auto r = saescale(
      "train --d-model 16 --width 64 --batch-size 64 --steps 3 --warmup-steps 3 --eval-tokens 64 "
      "--no-gemm-floor --out " +
      dir_ + "/r.json");
  ASSERT_EQ(r.code, 0) << r.err;
  const std::string done = r.out.substr(r.out.find("done:"));
  EXPECT_NE(done.find("no step timed (all 3 were --warmup-steps)"), std::string::npos) << r.out;
  EXPECT_EQ(done.find("tok/s"), std::string::npos) << r.out;
  const auto j = nlohmann::json::parse(std::ifstream(dir_ + "/r.json"));  // no rate, not a 0
  EXPECT_TRUE(j["timing"]["tokens_per_s"].is_null()) << j["timing"].dump();
}

// The fault plan of the tests (src/testing/faults.hpp) comes from the environment; a malformed
// one is one clear error, not a run without the faults it asked for.
TEST_F(Cli, AMalformedFaultPlanIsOneLine) {
  for (const char* plan : {"not json", R"([{"site": "nowhere", "action": "throw"}])",
                           R"([{"site": "step", "action": "explode", "step": 1}])"}) {
    const ts::FaultPlan faults(plan);
    const auto r = saescale("train --d-model 8" + small_ + "--steps 3 --out " + dir_ + "/r.json");
    EXPECT_EQ(r.code, 1) << plan;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_NE(r.err.find("SAESCALE_FAULTS"), std::string::npos) << r.err;
    EXPECT_FALSE(fs::exists(dir_ + "/r.json")) << plan;
  }
}

TEST_F(Cli, InfoIsJson) {
  const auto r = saescale("info");
  ASSERT_EQ(r.code, 0);
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_TRUE(j.contains("kokkos_version"));
  EXPECT_TRUE(j.contains("mpi_library"));
  EXPECT_TRUE(j.contains("git_commit"));
}

// --tag KEY=VALUE labels a run: the study tooling (runs/, the report) groups results by them.
TEST_F(Cli, TagsGoIntoTheContext) {
  const auto r =
      saescale("train --d-model 8" + small_ +
               "--tag sweep=weak --tag row=dp-jumprelu --tag note=a=b --out " + dir_ + "/t.json");
  ASSERT_EQ(r.code, 0) << r.err;
  const auto j = nlohmann::json::parse(std::ifstream(dir_ + "/t.json"));
  EXPECT_EQ(j["context"]["tags"],
            (nlohmann::json{{"sweep", "weak"}, {"row", "dp-jumprelu"}, {"note", "a=b"}}));
  ts::expect_valid_results(dir_ + "/t.json");
  const auto untagged = saescale("train --d-model 8" + small_ + "--out " + dir_ + "/u.json");
  ASSERT_EQ(untagged.code, 0) << untagged.err;
  EXPECT_EQ(nlohmann::json::parse(std::ifstream(dir_ + "/u.json"))["context"]["tags"],
            nlohmann::json::object());
}

// --sparse on: TopK's rows never overflow capacity k, so every product of every step runs on the
// sparse rows, and the results say so (and still validate).
TEST_F(Cli, SparsePathIsRecorded) {
  const auto r = saescale("train --variant topk --k 4 --d-model 8" + small_ + "--sparse on --out " +
                          dir_ + "/s.json");
  ASSERT_EQ(r.code, 0) << r.err;
  const auto j = nlohmann::json::parse(std::ifstream(dir_ + "/s.json"));
  const auto& sparse = j["timing"]["sparse"];
  EXPECT_EQ(sparse["capacity"].get<int>(), 4);
  for (const char* product :
       {"decode", "decoder_gradient", "activation_gradient", "encoder_gradient"}) {
    EXPECT_GE(sparse["products"][product]["sparse"].get<int>(), 3) << product;
    EXPECT_EQ(sparse["products"][product]["dense"].get<int>(), 0) << product;
  }
  EXPECT_FALSE(j["timing"]["phases_s"]["decode_gemm"].contains("flops"));  // not the dense work
  EXPECT_TRUE(j["timing"]["phases_s"].contains("sparse_compact"));
  ts::expect_valid_results(dir_ + "/s.json");
}

// --sparse auto times the products at start and records the crossover it found. What that
// crossover is depends on the machine and its load, so nothing here asserts on its value (the
// limit's effect is tested deterministically in test_model's SparsePath tests, the crossover's
// arithmetic in SparseAuto): only that it is recorded as the calibration's rule says (sizes 8, 32,
// ... up to the capacity, stopping after the first that does not save 10%; the crossover within the
// sizes measured), that every product ran every step one way or the other, and the one implication
// that holds on any machine: rows of at most k = 4 entries under a crossover of at least 4 run
// sparse.
TEST_F(Cli, SparseAutoFollowsItsCalibration) {
  // --aux-k 0: no AuxK, whose gradient to dead latents would send the backward to the dense path.
  const std::string shape =
      " --d-model 64 --width 2048 --batch-size 256 --steps 6 --warmup-steps 1"
      " --eval-tokens 256 --no-gemm-floor --sparse auto --aux-k 0 ";
  auto products = [&](const std::string& args, const std::string& name, double* crossover) {
    const auto r = saescale("train" + shape + args + " --out " + dir_ + "/" + name);
    EXPECT_EQ(r.code, 0) << r.err;
    const auto j = nlohmann::json::parse(std::ifstream(dir_ + "/" + name));
    const auto& cal = j["timing"]["sparse"]["calibration"];
    EXPECT_GT(cal["dense_products_s"].get<double>(), 0);
    std::vector<std::pair<int64_t, double>> ratios;  // by entries per row, ascending
    for (const auto& [entries, ratio] : cal["sparse_over_dense"].items()) {
      ratios.emplace_back(std::stoll(entries), ratio.get<double>());
      EXPECT_GT(cal["sparse_products_s"][entries].get<double>(), 0) << entries;
    }
    std::sort(ratios.begin(), ratios.end());
    EXPECT_EQ(cal["sparse_products_s"].size(), ratios.size());
    // the rule's sizes for this capacity; those measured are a prefix, cut after the first that
    // did not pay
    const int64_t capacity = j["timing"]["sparse"]["initial_capacity"].get<int64_t>();
    std::vector<int64_t> sizes;
    for (int64_t entries = 8; entries < capacity; entries *= 4) sizes.push_back(entries);
    sizes.push_back(capacity);
    const double required = 1 - cal["required_saving"].get<double>();
    EXPECT_FALSE(ratios.empty());
    EXPECT_LE(ratios.size(), sizes.size());
    for (size_t i = 0; i < ratios.size() && i < sizes.size(); ++i) {
      EXPECT_EQ(ratios[i].first, sizes[i]) << cal.dump();
      if (i + 1 < ratios.size()) EXPECT_LE(ratios[i].second, required) << cal.dump();
    }
    if (!ratios.empty() && ratios.size() < sizes.size())
      EXPECT_GT(ratios.back().second, required) << cal.dump();
    *crossover = cal["crossover_entries_per_row"].get<double>();
    EXPECT_GE(*crossover, 0);
    if (!ratios.empty()) EXPECT_LE(*crossover, ratios.back().first);  // never extrapolated
    for (const auto& [product, c] : j["timing"]["sparse"]["products"].items())  // + evaluation
      EXPECT_GE(c["sparse"].get<int>() + c["dense"].get<int>(), 6) << product;
    return j["timing"]["sparse"]["products"];
  };
  double crossover = 0;
  const auto topk = products("--variant topk --k 4", "topk.json", &crossover);
  if (crossover >= 4)
    for (const auto& [product, c] : topk.items()) EXPECT_EQ(c["dense"].get<int>(), 0) << product;
  products("--variant jumprelu --sparse-capacity 2048", "j.json", &crossover);
}

// The decision itself, with the crossover given instead of measured (--sparse-crossover): rows of
// at most k = 4 entries run sparse under a crossover of 4.5 and dense under 0.5, every step.
TEST_F(Cli, SparseAutoFollowsAGivenCrossover) {
  for (const auto& [crossover, path] :
       {std::pair<double, const char*>{4.5, "sparse"}, {0.5, "dense"}}) {
    const std::string name = std::string(path) + ".json";
    const auto r = saescale(
        "train --variant topk --k 4 --aux-k 0 --d-model 64 --width 2048 --batch-size 256 "
        "--steps 6 --warmup-steps 1 --eval-tokens 256 --no-gemm-floor --sparse auto "
        "--sparse-crossover " +
        std::to_string(crossover) + " --out " + dir_ + "/" + name);
    ASSERT_EQ(r.code, 0) << r.err;
    const auto j = nlohmann::json::parse(std::ifstream(dir_ + "/" + name));
    const auto& sparse = j["timing"]["sparse"];
    EXPECT_TRUE(sparse["calibration"]["given"].get<bool>());
    EXPECT_EQ(sparse["calibration"]["crossover_entries_per_row"].get<double>(), crossover);
    EXPECT_TRUE(sparse["calibration"]["dense_products_s"].is_null());
    for (const auto& [product, c] : sparse["products"].items()) {
      const int other = c[std::string(path) == "sparse" ? "dense" : "sparse"].get<int>();
      EXPECT_GE(c[path].get<int>(), 6) << product << " at crossover " << crossover;
      EXPECT_EQ(other, 0) << product << " at crossover " << crossover;
    }
    ts::expect_valid_results(dir_ + "/" + name);
  }
}

// The plan's JSON breaks every communication phase into its collectives (what a latency-bandwidth
// projection needs) and gives the work model on one rank's shapes; the pieces add up to the totals.
TEST_F(Cli, PlanJsonCollectivesAddUp) {
  for (const char* variant : {"jumprelu", "gated", "topk", "batchtopk"}) {
    const auto r = saescale(std::string("plan --variant ") + variant +
                            " --d-model 64 --width 1024 --batch-size 256 --dp 2 --lp 4 "
                            "--force --out " +
                            dir_ + "/plan.json");
    ASSERT_EQ(r.code, 0) << r.err;
    const auto j = nlohmann::json::parse(std::ifstream(dir_ + "/plan.json"));
    EXPECT_EQ(j["local_shape"]["B"].get<double>(), 128);
    EXPECT_EQ(j["local_shape"]["M"].get<double>(), 256);
    EXPECT_GT(j["work_per_step"]["encode_gemm"]["flops"].get<double>(), 2.0 * 128 * 64 * 256 - 1);
    ASSERT_FALSE(j["communication_per_step"].empty());
    for (const auto& [phase, p] : j["communication_per_step"].items()) {
      double calls = 0, payload = 0, sent = 0;
      for (const auto& c : p["collectives"]) {
        const double n = c["ranks"].get<double>(), bytes = c["bytes"].get<double>(),
                     k = c["calls"].get<double>();
        const bool gather = c["kind"] == "allgather";
        EXPECT_TRUE(gather || c["kind"] == "allreduce") << phase;
        EXPECT_EQ(c["ranks"].get<int>(), c["group"] == "dp" ? 2 : c["group"] == "lp" ? 4 : 8);
        calls += k;
        payload += k * bytes * (gather ? n : 1);
        sent += k * bytes * (gather ? n - 1 : 2 * (n - 1) / n);
      }
      EXPECT_DOUBLE_EQ(calls, p["calls"].get<double>()) << variant << " " << phase;
      EXPECT_NEAR(payload, p["payload_bytes"].get<double>(), 1e-9 * payload)
          << variant << " " << phase;
      EXPECT_NEAR(sent, p["sent_bytes"].get<double>(), 1e-9 * sent) << variant << " " << phase;
    }
  }
}

TEST_F(Cli, GenDataTrainSaveEvalRoundTrip) {
  auto r = saescale(
      "gen-data --d-model 16 --tokens 3000 --shard-tokens 1000 --data synthetic:features=32,l0=3 "
      "--out-dir " +
      dir_ + "/data");
  ASSERT_EQ(r.code, 0) << r.err;
  for (const char* f :
       {"shard_0000.npy", "shard_0001.npy", "shard_0002.npy", "dictionary.npy", "meta.json"})
    EXPECT_TRUE(fs::exists(dir_ + "/data/" + f)) << f;
  // TOML config with the command line overriding one of its keys.
  std::ofstream(dir_ + "/run.toml")
      << "variant = \"relu\"\nwidth = 64\nbatch_size = 128\nsteps = 50\n"
         "lr = 1e-3\nwarmup-steps = 2\neval-tokens = 256\n";
  r = saescale("train --config " + dir_ + "/run.toml --steps 20 --data '" + dir_ +
               "/data/shard_*.npy' " + "--ground-truth " + dir_ +
               "/data/dictionary.npy --save-weights " + dir_ + "/w --out " + dir_ + "/r.json");
  ASSERT_EQ(r.code, 0) << r.err;
  ts::expect_valid_results(dir_ + "/r.json");
  std::ifstream in(dir_ + "/r.json");
  const auto res = nlohmann::json::parse(in);
  EXPECT_EQ(res["schema"], "saescale.result/1");
  EXPECT_EQ(res["config"]["variant"], "relu");
  EXPECT_EQ(res["config"]["steps"], 20);  // command line won over the file
  EXPECT_EQ(res["config"]["width"], 64);
  EXPECT_EQ(res["timing"]["step_s"]["n"], 18);  // warm-up excluded
  EXPECT_TRUE(res["fidelity"]["mmcs"].is_number());
  EXPECT_TRUE(fs::exists(dir_ + "/w/sae_weights.safetensors"));
  EXPECT_TRUE(fs::exists(dir_ + "/w/cfg.json"));
  r = saescale("eval --init " + dir_ + "/w --data '" + dir_ +
               "/data/shard_*.npy' --eval-tokens 500 --out " + dir_ + "/e.json");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("FVU"), std::string::npos);
  std::ifstream ein(dir_ + "/e.json");
  const auto ev = nlohmann::json::parse(ein);
  // Same weights, same distribution, a different sample: the same FVU up to sampling noise.
  EXPECT_NEAR(ev["fidelity"]["fvu"].get<double>(), res["fidelity"]["fvu"].get<double>(), 0.1);
  EXPECT_NEAR(ev["fidelity"]["l0"].get<double>(), res["fidelity"]["l0"].get<double>(), 1.0);
}

// TopK's k travels in cfg.json (SAELens' key): eval and grad use it without --k, a given --k
// wins, and a --variant that contradicts the file is refused.
TEST_F(Cli, TopkFolderCarriesItsK) {
  const std::string data = " --d-model 16 --data synthetic:features=32,l0=3 --seed 3 ";
  auto r = saescale("train --variant topk --k 5 --width 64 --batch-size 128 --steps 10" + data +
                    "--eval-tokens 512 --save-weights " + dir_ + "/w --out " + dir_ + "/r.json");
  ASSERT_EQ(r.code, 0) << r.err;
  std::ifstream cfg_in(dir_ + "/w/cfg.json");
  const auto cfg = nlohmann::json::parse(cfg_in);
  EXPECT_EQ(cfg["architecture"], "topk");
  EXPECT_EQ(cfg["k"], 5);
  EXPECT_EQ(cfg["reshape_activations"], "none");
  EXPECT_EQ(cfg["rescale_acts_by_decoder_norm"], false);
  const auto eval_l0 = [&](const std::string& extra) {
    auto e = saescale("eval --init " + dir_ + "/w --eval-tokens 512" + data + extra +
                      "--force --out " + dir_ + "/e.json");
    EXPECT_EQ(e.code, 0) << e.err;
    std::ifstream in(dir_ + "/e.json");
    return nlohmann::json::parse(in)["fidelity"]["l0"].get<double>();
  };
  EXPECT_LE(eval_l0(""), 5.0);
  EXPECT_GT(eval_l0(""), 4.0);         // k = 5, not the default 32
  EXPECT_LE(eval_l0(" --k 2 "), 2.0);  // a given --k wins
  r = saescale("eval --init " + dir_ + "/w --variant relu" + data + "--out " + dir_ + "/x.json");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("use --variant topk"), std::string::npos) << r.err;
  // grad reads the variant and k from the folder, and names every loss term.
  r = saescale("grad --init " + dir_ +
               "/w --data synthetic:features=32,l0=3,tokens=64 --d-model 16 "
               "--out " +
               dir_ + "/g.safetensors");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("grad: topk"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("auxiliary"), std::string::npos) << r.out;
}

// A short run finds its dead latents: the default window is a tenth of the run's tokens, so
// latents that never fire count as dead and AuxK runs (with 10M tokens it never would here).
TEST_F(Cli, AShortRunFindsItsDeadLatentsAndAuxkRuns) {
  auto r = saescale(
      "train --variant topk --k 2 --width 256 --batch-size 128 --steps 40 --d-model 16 "
      "--data synthetic:features=16,l0=2 --eval-tokens 512 --no-gemm-floor --out " +
      dir_ + "/r.json");
  ASSERT_EQ(r.code, 0) << r.err;
  std::ifstream in(dir_ + "/r.json");
  const auto res = nlohmann::json::parse(in);
  EXPECT_EQ(res["config"]["dead_window_tokens"], 0);
  EXPECT_EQ(res["config"]["resolved"]["dead_window_tokens"], 40 * 128 / 10);
  EXPECT_EQ(res["fidelity"]["dead_window_tokens"], 40 * 128 / 10);
  EXPECT_GT(res["fidelity"]["dead_fraction"].get<double>(), 0);
  EXPECT_GT(res["fidelity"]["eval_never_fired_fraction"].get<double>(), 0);
  EXPECT_TRUE(res["timing"]["auxiliary_ran"].get<bool>());
}

// BatchTopK is exported as a JumpReLU SAE (b_enc folded, one threshold for every latent) that
// `eval` loads as jumprelu and that reconstructs like the trained model.
TEST_F(Cli, BatchTopKExportsAJumpReluSae) {
  const std::string data = " --d-model 32 --data synthetic:features=64,l0=3 --seed 2 ";
  auto r = saescale(
      "train --variant batchtopk --k 3 --width 128 --batch-size 512 --steps 300 --lr 5e-3"
      " --eval-tokens 4096" +
      data + "--save-weights " + dir_ + "/w --out " + dir_ + "/r.json");
  ASSERT_EQ(r.code, 0) << r.err;
  ts::expect_valid_results(dir_ + "/r.json");
  std::ifstream cfg_in(dir_ + "/w/cfg.json");
  const auto cfg = nlohmann::json::parse(cfg_in);
  EXPECT_EQ(cfg["architecture"], "jumprelu");
  EXPECT_EQ(cfg["apply_b_dec_to_input"], false);
  EXPECT_EQ(cfg["saescale"]["trained_as"], "batchtopk");
  bool one_positive_threshold = false;
  for (const auto& t : saescale::io::read_safetensors(dir_ + "/w/sae_weights.safetensors"))
    if (t.name == "threshold")
      one_positive_threshold = std::all_of(t.values.begin(), t.values.end(),
                                           [&](float v) { return v > 0 && v == t.values[0]; });
  EXPECT_TRUE(one_positive_threshold);
  r = saescale("eval --init " + dir_ + "/w --eval-tokens 4096" + data + "--out " + dir_ +
               "/e.json");
  ASSERT_EQ(r.code, 0) << r.err;
  std::ifstream rin(dir_ + "/r.json"), ein(dir_ + "/e.json");
  const auto trained = nlohmann::json::parse(rin), evaluated = nlohmann::json::parse(ein);
  EXPECT_EQ(evaluated["variant"], "jumprelu");
  EXPECT_NEAR(evaluated["fidelity"]["fvu"].get<double>(), trained["fidelity"]["fvu"].get<double>(),
              0.03);
  EXPECT_NEAR(evaluated["fidelity"]["l0"].get<double>(), 3.0, 1.0);
}

TEST_F(Cli, TruncatedNpyIsOneLineError) {
  const std::string path = write_random_npy("x.npy", 100, 8);
  fs::resize_file(path, fs::file_size(path) - 10);
  expect_error("train --data " + path + small_, "truncated");
}

TEST_F(Cli, CorruptSafetensorsIsOneLineError) {
  const std::string path = dir_ + "/x.safetensors";
  std::ofstream(path, std::ios::binary)
      << std::string("\x10\x00\x00\x00\x00\x00\x00\x00{not json}xxxxx", 24);
  expect_error("train --data " + path + small_, "x.safetensors");
}

TEST_F(Cli, WrongTensorNameInSafetensors) {
  std::vector<float> x(64 * 8, 0.5f);
  saescale::io::write_safetensors(dir_ + "/x.safetensors", {{"acts", {64, 8}, x}});
  expect_error("train --data " + dir_ + "/x.safetensors" + small_, "activations");
}

TEST_F(Cli, DataDimensionMismatch) {
  const std::string path = write_random_npy("x.npy", 400, 8);
  expect_error("train --data " + path + " --d-model 16" + small_, "d = 8");
}

TEST_F(Cli, MissingDataFile) {
  expect_error("train --data " + dir_ + "/nope.npy" + small_, "nope.npy");
}

TEST_F(Cli, UnknownVariantAndOption) {
  expect_error("train --variant sparsemax --d-model 8" + small_, "sparsemax");
  expect_error("train --d-model 8 --widht 3" + small_, "--widht");
}

TEST_F(Cli, UnknownConfigKey) {
  std::ofstream(dir_ + "/bad.toml") << "variant = \"relu\"\nlearning_rate = 0.1\n";
  expect_error("train --config " + dir_ + "/bad.toml --d-model 8" + small_, "learning_rate");
}

TEST_F(Cli, ImpossibleValues) {
  expect_error("train --d-model 8 --lr -1" + small_, "--lr");
  expect_error("train --d-model 8 --width 0 --steps 2", "width");
  expect_error("train --d-model 8 --precision bf16" + small_, "bf16");
  expect_error("train --d-model 8 --lp 2" + small_, "--lp");
  expect_error("train --d-model 8 --comm nccl" + small_, "--comm nccl");
  expect_error("train --d-model 8 --variant topk --k 64" + small_, "--k");
}

// A Kokkos tool the user loads (KOKKOS_TOOLS_LIBS: a memory high-water mark, Caliper, NVTX
// ranges) keeps seeing every allocation and every named kernel while saescale tracks memory
// through the same callbacks: the probe tool's peak per memory space is the one saescale reports
// (the same events), every saescale allocation is freed by the end, and the step's kernels reach
// it by name, the optimiser's once per step.
TEST_F(Cli, AUserToolStillSeesEveryAllocationAndKernel) {
  const std::string probe = dir_ + "/probe.json", out = dir_ + "/tool.json";
  const int steps = 6;
  // Kokkos 4 reads KOKKOS_TOOLS_LIBS, Kokkos 3 KOKKOS_PROFILE_LIBRARY.
  const auto r =
      ts::run(std::string("KOKKOS_TOOLS_LIBS=") + SAESCALE_TOOL_PROBE +
                  " KOKKOS_PROFILE_LIBRARY=" + SAESCALE_TOOL_PROBE +
                  " SAESCALE_TOOL_PROBE_OUT=" + probe + " timeout -s KILL 600 " + ts::saescale() +
                  " train --variant topk --d-model 32 --width 256 --batch-size 128"
                  " --steps " +
                  std::to_string(steps) +
                  " --warmup-steps 1 --eval-tokens 256 --no-gemm-floor --out " + out,
              dir_);
  ASSERT_EQ(r.code, 0) << r.err;
  const auto seen = nlohmann::json::parse(ts::slurp(probe));
  const auto tracked = nlohmann::json::parse(ts::slurp(out))["memory"]["tracked"];
  ASSERT_TRUE(tracked.is_object()) << "saescale stopped tracking: " << tracked.dump();
  ASSERT_FALSE(tracked.empty());
  for (const auto& [space, peak] : tracked.items())
    EXPECT_EQ(seen["peak"].value(space, -1), peak.get<int64_t>()) << space << ": " << seen.dump();
  EXPECT_GT(seen["allocations"].get<int64_t>(), 0);
  for (const auto& label : seen["live_at_finalize"])  // only Kokkos' own (Serial's scratch)
    EXPECT_EQ(label.get<std::string>().rfind("Kokkos::", 0), 0u) << label;
  EXPECT_GE(seen["kernels"].value("saescale::optimizer::adam", 0), steps) << seen["kernels"].dump();
  EXPECT_GE(seen["kernels"].value("saescale::renormalize::decoder_rows", 0), steps);
}

// Memory preflight: a run whose planned memory per rank exceeds what the machine has is refused
// before anything is allocated, with the fix.
TEST_F(Cli, RunsThatCannotFitAreRefusedUpFront) {
  expect_error("train --d-model 4096 --width 4194304 --batch-size 4096 --steps 2",
               "per rank (see `saescale plan`)");
  const std::string out = dir_ + "/never.json";
  const auto r =
      saescale("train --d-model 4096 --width 4194304 --batch-size 4096 --steps 2 --out " + out);
  EXPECT_NE(r.err.find("use --lp"), std::string::npos) << r.err;
}

// A NaN in the data (the loss) or in a gradient stops the run at that step: exit 1, one line naming
// the step and the term, and a results file with "status": "failed" and the reason.
TEST_F(Cli, NonFiniteLossOrGradientFailsTheRun) {
  struct Case {
    std::string target, needle;
  };
  for (const Case& c : {Case{"data", "step 4: the loss is not finite in the reconstruction"},
                        Case{"gradient", "step 4: the gradient of W_dec has 1 non-finite"}}) {
    const std::string out = dir_ + "/failed_" + c.target + ".json";
    const ts::FaultPlan faults(R"([{"site": ")" +
                               std::string(c.target == "data" ? "batch" : "gradients") +
                               R"(", "action": "nan", "step": 3}])");
    const auto r = saescale("train --d-model 8" + small_ + "--steps 10 --out " + out);
    EXPECT_EQ(r.code, 1) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_NE(r.err.find(c.needle), std::string::npos) << r.err;
    ASSERT_TRUE(fs::exists(out));
    const auto results = nlohmann::json::parse(ts::slurp(out));
    EXPECT_EQ(results["status"], "failed");
    EXPECT_EQ(results["failed_step"], 4);
    EXPECT_NE(results["reason"].get<std::string>().find(c.needle), std::string::npos);
    ts::expect_valid_results(out);
  }
}

TEST_F(Cli, ExistingResultsNeedForce) {
  const std::string out = dir_ + "/r.json";
  std::ofstream(out) << "precious";
  const auto r = saescale("train --d-model 8" + small_ + "--out " + out);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("--force"), std::string::npos) << r.err;
  EXPECT_EQ(ts::slurp(out), "precious");
  ASSERT_EQ(saescale("train --d-model 8" + small_ + "--out " + out + " --force").code, 0);
  EXPECT_NE(ts::slurp(out), "precious");
  ts::expect_valid_results(out);
}

TEST_F(Cli, GradNeedsOutputAndFiniteData) {
  const auto r = saescale("grad --d-model 8 --width 16");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("--out"), std::string::npos) << r.err;
  expect_error("grad --data synthetic --d-model 8 --width 16", "finite");
}

}  // namespace
