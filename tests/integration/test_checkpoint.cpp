// Checkpoint and resume, preemption, and a kill while a checkpoint is being written: the resumed
// run ends bitwise where the uninterrupted one does (weights, optimizer state, dead-latent
// counters), on one rank and on two (dp and lp).
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "io/checkpoint.hpp"
#include "io/npy.hpp"
#include "support/process.hpp"
#include "support/random.hpp"
#include "support/validate.hpp"

namespace {

namespace fs = std::filesystem;
namespace ts = testing_support;

class Checkpoint : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = (fs::temp_directory_path() /
            ("saescale_checkpoint_" +
             std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()) + "_" +
             std::to_string(ts::test_seed())))
               .string();
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  // `ranks` 0: without mpiexec.
  ts::Result saescale(const std::string& args, int ranks = 0) {
    const std::string launcher =
        ranks > 0 ? std::string(SAESCALE_MPIEXEC) + " " + std::to_string(ranks) + " " : "";
    // Under a timeout: a hang ends the test, killed (exit 137).
    return ts::run("timeout -s KILL 300 " + launcher + ts::saescale() + " " + args, dir_);
  }
  // The run's state that must match bitwise: the named sections of every rank's final checkpoint.
  static std::vector<std::vector<char>> final_state(const std::string& checkpoint_dir) {
    const auto manifest = saescale::io::latest_checkpoint(checkpoint_dir);
    EXPECT_TRUE(manifest.has_value());
    std::vector<std::vector<char>> out;
    for (int r = 0; r < manifest->at("ranks").get<int>(); ++r) {
      const saescale::io::CheckpointReader reader(
          saescale::io::checkpoint_rank_file(manifest->at("path"), r),
          {r, manifest->at("step").get<int64_t>(), manifest->at("grid")},
          saescale::io::manifest_record(*manifest, r));
      for (const char* name : {"params", "adam_m", "adam_v", "tokens_since_fired", "dead"}) {
        std::vector<char> bytes(reader.size(name));
        reader.read(name, bytes.data(), bytes.size());
        out.push_back(std::move(bytes));
      }
    }
    return out;
  }
  void expect_same_run(const std::string& a, const std::string& b) {
    EXPECT_EQ(ts::slurp(dir_ + "/" + a + "/weights/sae_weights.safetensors"),
              ts::slurp(dir_ + "/" + b + "/weights/sae_weights.safetensors"))
        << "weights differ";
    EXPECT_TRUE(final_state(dir_ + "/" + a + "/ckpt") == final_state(dir_ + "/" + b + "/ckpt"))
        << "optimizer state or statistics differ";
  }
  std::string run_args(const std::string& name, const std::string& extra) {
    fs::create_directories(dir_ + "/" + name);
    return "train " + extra + " --checkpoint-dir " + dir_ + "/" + name + "/ckpt --save-weights " +
           dir_ + "/" + name + "/weights --out " + dir_ + "/" + name + "/r.json --force";
  }
  std::string dir_;
};

// A run stopped at step 9 as a SIGTERM would stop it (through the real handler), on `rank`.
template <class Run>
ts::Result preempted_at_9(const Run& run, int rank = 0) {
  const ts::FaultPlan stop(R"([{"site": "step", "action": "sigterm", "step": 9, "rank": )" +
                           std::to_string(rank) + "}]");
  return run();
}

const std::string kRun =
    "--d-model 16 --width 64 --batch-size 64 --steps 20 --warmup-steps 2 --k 4 --aux-k 8 "
    "--dead-window-tokens 200 --eval-tokens 128 --no-gemm-floor ";
// Runs compared bit for bit take their products' path from the rows alone: --sparse auto (the
// default) takes it from a timing, which two runs need not share (docs/design.md, Determinism).
const std::string kSamePath = "--sparse on ";

TEST_F(Checkpoint, StopAndResumeEqualsTheStraightRunBitwise) {
  // Data from files too: the shuffle buffer's position is part of the state.
  std::mt19937 rng(ts::test_seed());
  std::normal_distribution<float> normal(0, 1);
  std::vector<float> x(4096 * 16);
  for (auto& v : x) v = normal(rng);
  saescale::io::write_npy(dir_ + "/x.npy", x.data(), {4096, 16});
  for (const std::string variant : {"jumprelu", "topk", "batchtopk"}) {
    for (const std::string data : {std::string("synthetic"), dir_ + "/x.npy"}) {
      SCOPED_TRACE(variant + " on " + data);
      const std::string base =
          kRun + kSamePath + "--variant " + variant + " --data " + data + " --shuffle-buffer 512 ";
      ASSERT_EQ(saescale(run_args("straight", base)).code, 0);
      // N steps, stopped as a SIGTERM would (test hook), then resumed for the other N.
      const auto stopped = preempted_at_9([&] { return saescale(run_args("resumed", base)); });
      ASSERT_EQ(stopped.code, 3) << stopped.err;
      const auto resumed = saescale(run_args("resumed", base + "--resume"));
      ASSERT_EQ(resumed.code, 0) << resumed.err;
      EXPECT_NE(resumed.out.find("resumed from"), std::string::npos);
      expect_same_run("straight", "resumed");
      ts::expect_valid_results(dir_ + "/resumed/r.json");
    }
  }
}

TEST_F(Checkpoint, GridsResumeBitwiseAndRefuseAnotherGrid) {
  for (const std::string grid : {"--dp 2 --lp 1", "--dp 1 --lp 2"}) {
    SCOPED_TRACE(grid);
    const std::string base = kRun + kSamePath + "--variant topk " + grid + " ";
    ASSERT_EQ(saescale(run_args("straight", base), 2).code, 0);
    ASSERT_EQ(preempted_at_9([&] { return saescale(run_args("resumed", base), 2); }, 1).code, 3);
    const auto resumed = saescale(run_args("resumed", base + "--resume"), 2);
    ASSERT_EQ(resumed.code, 0) << resumed.err;
    expect_same_run("straight", "resumed");
  }
  // The lp checkpoint cannot continue as dp: one clear message naming the grid it needs.
  const auto r = saescale(run_args("resumed", kRun + "--variant topk --dp 2 --lp 1 --resume"), 2);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("written by a grid of dp 1 x lp 2"), std::string::npos) << r.err;
}

// Determinism: the same seed, data and grid give the same bits.
TEST_F(Checkpoint, SameSeedDataAndGridGiveTheSameBits) {
  for (const int ranks : {0, 2}) {
    const std::string base =
        kRun + kSamePath + "--variant batchtopk" + (ranks ? " --lp 2" : "") + " ";
    ASSERT_EQ(saescale(run_args("straight", base), ranks).code, 0);
    ASSERT_EQ(saescale(run_args("again", base), ranks).code, 0);
    expect_same_run("straight", "again");
  }
}

// --sparse auto: a resumed run keeps the crossover its first part calibrated (the same paths,
// hence the same bits, as the run would have taken), and says so.
TEST_F(Checkpoint, ResumeKeepsTheSparseCalibration) {
  const std::string base = kRun + "--variant jumprelu --sparse auto ";
  const auto first = preempted_at_9([&] { return saescale(run_args("run", base)); });
  ASSERT_EQ(first.code, 3) << first.err;
  const auto crossover_printed = [](const std::string& out) {
    const auto at = out.find("rows average <= ");
    return at == std::string::npos ? std::string("none")
                                   : out.substr(at + 16, out.find(' ', at + 16) - at - 16);
  };
  ASSERT_NE(first.out.find("entries (calibrated)"), std::string::npos) << first.out;
  const auto resumed = saescale(run_args("run", base + "--resume"));
  ASSERT_EQ(resumed.code, 0) << resumed.err;
  EXPECT_NE(resumed.out.find("entries (calibrated before the checkpoint)"), std::string::npos)
      << resumed.out;
  EXPECT_EQ(crossover_printed(resumed.out), crossover_printed(first.out));
  const auto results = nlohmann::json::parse(ts::slurp(dir_ + "/run/r.json"));
  const auto& calibration = results["timing"]["sparse"]["calibration"];
  EXPECT_TRUE(calibration["dense_products_s"].is_number()) << calibration.dump();  // measured
  char printed[32];
  std::snprintf(printed, sizeof printed, "%.1f",
                calibration["crossover_entries_per_row"].get<double>());
  EXPECT_EQ(printed, crossover_printed(first.out));
  ts::expect_valid_results(dir_ + "/run/r.json");
}

// A real SIGTERM in the middle of a run: it finishes the step, leaves a complete checkpoint and a
// "preempted" results file, exits 3; resuming finishes the run where the straight one ends.
TEST_F(Checkpoint, SigtermLeavesACheckpointAndAResumableRun) {
  // Long enough (about 1 ms a step) that the signal lands mid-run.
  const std::string base = kRun + kSamePath +
                           "--variant jumprelu --width 1024 --batch-size 256 "
                           "--steps 3000 --progress-every 10 ";
  ASSERT_EQ(saescale(run_args("straight", base)).code, 0);
  fs::create_directories(dir_ + "/resumed");
  const std::string log = dir_ + "/resumed/log.txt";
  const std::string command =
      ts::saescale() + " " + run_args("resumed", base) + " >" + log + " 2>&1 & echo $!";
  FILE* p = popen(command.c_str(), "r");
  ASSERT_NE(p, nullptr);
  int pid = 0;
  ASSERT_EQ(fscanf(p, "%d", &pid), 1);
  pclose(p);
  // Wait until it is training (a progress line past step 50), then stop it.
  for (int i = 0; i < 600 && ts::slurp(log).find("step     50/") == std::string::npos; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  ASSERT_EQ(kill(pid, SIGTERM), 0);
  int waited = 0;
  while (kill(pid, 0) == 0 && waited++ < 600)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  const auto results = nlohmann::json::parse(ts::slurp(dir_ + "/resumed/r.json"));
  EXPECT_EQ(results["status"], "preempted") << ts::slurp(log);
  EXPECT_TRUE(saescale::io::latest_checkpoint(dir_ + "/resumed/ckpt").has_value());
  ts::expect_valid_results(dir_ + "/resumed/r.json");
  const auto resumed = saescale(run_args("resumed", base + "--resume"));
  ASSERT_EQ(resumed.code, 0) << resumed.err;
  expect_same_run("straight", "resumed");
}

// Killed while writing a checkpoint (after the rank files, before the manifest): the previous
// checkpoint stays the newest complete one and the run resumes from it.
TEST_F(Checkpoint, AKillWhileWritingKeepsThePreviousCheckpoint) {
  const std::string base = kRun + kSamePath + "--variant topk --checkpoint-every 5 ";
  ASSERT_EQ(saescale(run_args("straight", base)).code, 0);
  {
    const ts::FaultPlan crash(R"([{"site": "checkpoint", "action": "exit", "step": 2}])");
    EXPECT_EQ(saescale(run_args("resumed", base)).code, 9);
  }
  const auto manifest = saescale::io::latest_checkpoint(dir_ + "/resumed/ckpt");
  ASSERT_TRUE(manifest.has_value());
  EXPECT_EQ(manifest->at("step"), 5);
  const auto resumed = saescale(run_args("resumed", base + "--resume"));
  ASSERT_EQ(resumed.code, 0) << resumed.err;
  EXPECT_NE(resumed.out.find("at step 5"), std::string::npos) << resumed.out;
  expect_same_run("straight", "resumed");
}

// A checkpoint that is not what was written is refused with one line naming the file: a bit
// flipped in each section of a rank file, rank files swapped between ranks, an edited manifest.
// The run is then resumed from the intact copy, so what was refused was the damage alone.
TEST_F(Checkpoint, DamagedCheckpointsAreRefusedNamingTheFile) {
  const std::string base = kRun + "--variant topk --lp 2 ";
  ASSERT_EQ(preempted_at_9([&] { return saescale(run_args("run", base), 2); }, 1).code, 3);
  const std::string ckpt = dir_ + "/run/ckpt", step = ckpt + "/step-000000010";
  const std::string pristine = dir_ + "/pristine";
  fs::copy(ckpt, pristine, fs::copy_options::recursive);
  const auto restore = [&] {
    fs::remove_all(ckpt);
    fs::copy(pristine, ckpt, fs::copy_options::recursive);
  };
  const auto refused = [&](const std::string& file, const std::string& what) {
    const auto r = saescale(run_args("run", base + "--resume"), 2);
    EXPECT_EQ(r.code, 1) << what;
    // One error line (whatever mpiexec adds after it), naming the file.
    EXPECT_EQ(r.err.find("saescale: error: "), 0u) << what << ": " << r.err;
    EXPECT_EQ(r.err.find("saescale: error: ", 1), std::string::npos) << what << ": " << r.err;
    EXPECT_NE(r.err.substr(0, r.err.find('\n')).find(file), std::string::npos)
        << what << ": " << r.err;
    restore();
  };
  // Each section of rank 1's file: the header says where the sections lie.
  const std::string rank1 = step + "/rank-00001.bin";
  const std::string image = ts::slurp(rank1);
  uint64_t length = 0;
  std::memcpy(&length, image.data() + 8, 8);
  const auto header = nlohmann::json::parse(image.substr(16, length));
  std::mt19937_64 rng(ts::test_seed());
  for (const auto& section : header["sections"]) {
    const uint64_t bytes = section["bytes"];
    if (bytes == 0) continue;
    const size_t at = 16 + length + section["offset"].get<size_t>() + rng() % bytes;
    std::string bad = image;
    bad[at] = static_cast<char>(bad[at] ^ (1 << (rng() % 8)));
    std::ofstream(rank1, std::ios::binary | std::ios::trunc) << bad;
    refused("rank-00001.bin", "a bit flipped in " + section["name"].get<std::string>());
  }
  // A bit of the header (where the sections lie, the rank's identity): the whole file's CRC-32
  // in the manifest.
  {
    std::string bad = image;
    const size_t at = 16 + rng() % length;
    bad[at] = static_cast<char>(bad[at] ^ (1 << (rng() % 8)));
    std::ofstream(rank1, std::ios::binary | std::ios::trunc) << bad;
    refused("rank-00001.bin", "a bit flipped in the header");
  }
  // Rank files swapped.
  fs::rename(step + "/rank-00000.bin", step + "/tmp.bin");
  fs::rename(step + "/rank-00001.bin", step + "/rank-00000.bin");
  fs::rename(step + "/tmp.bin", step + "/rank-00001.bin");
  refused("rank-0000", "swapped rank files");
  // The manifest's step and rank count, edited.
  for (const auto& [key, value] : {std::pair<std::string, int>{"step", 5}, {"ranks", 1}}) {
    auto manifest = nlohmann::json::parse(ts::slurp(step + "/manifest.json"));
    manifest[key] = value;
    std::ofstream(step + "/manifest.json", std::ios::trunc) << manifest.dump(2);
    refused("manifest.json", "the manifest's " + key + " edited");
  }
  const auto resumed = saescale(run_args("run", base + "--resume"), 2);
  EXPECT_EQ(resumed.code, 0) << "the intact checkpoint resumes: " << resumed.err;
}

// --resume refuses every option that would change the training's trajectory, naming it, and
// accepts those that cannot (docs/reliability.md lists them).
TEST_F(Checkpoint, ResumeRefusesOptionsThatChangeTheRun) {
  const std::string base = kRun + "--variant topk ";
  ASSERT_EQ(preempted_at_9([&] { return saescale(run_args("run", base)); }).code, 3);
  struct Change {
    std::string option, value, named, now;  // what is given; the option named, its value shown
  };
  for (const auto& c : std::vector<Change>{
           {"--lr", "0.5", "--lr", "0.5"},
           {"--k", "8", "--k", "8"},
           {"--aux-k", "4", "--aux-k", "4"},
           {"--normalize", "none", "--normalize", "\"none\""},
           {"--norm-tokens", "1000", "--norm-tokens", "1000"},
           {"--eval-tokens", "64", "--eval-tokens", "64"},
           {"--dead-window-tokens", "300", "--dead-window-tokens", "300"},
           {"--steps", "30", "--steps", "30"},
           {"--seed", "7", "--seed", "7"},
           {"--data", "synthetic:features=64", "--data", "\"synthetic:features=64\""},
           {"--precision", "fp32 --sparse on", "--sparse", "\"on\""}}) {
    const auto r = saescale(run_args("run", base + c.option + " " + c.value + " --resume"));
    EXPECT_EQ(r.code, 1) << c.option;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_NE(r.err.find("started with " + c.named + " = "), std::string::npos) << r.err;
    EXPECT_NE(r.err.find(" but this run has " + c.now + ":"), std::string::npos) << r.err;
  }
  // What may change: where results and weights go, evaluation and measurement settings.
  const auto r =
      saescale("train " + base + "--resume --checkpoint-dir " + dir_ + "/run/ckpt --out " + dir_ +
               "/elsewhere.json --eval-every 5 --target-fvu 0.5 --no-fence --warmup-steps 1 "
               "--progress-every 3");
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("resumed from"), std::string::npos) << r.out;
}

}  // namespace
