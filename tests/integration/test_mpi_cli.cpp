// `saescale train` under mpiexec: bad grids fail on every rank with one message, a failure on one
// rank aborts the job instead of hanging it, and weights saved from a grid match one rank's.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "io/safetensors.hpp"
#include "support/process.hpp"
#include "support/random.hpp"
#include "support/validate.hpp"

namespace {

namespace fs = std::filesystem;
namespace ts = testing_support;

class MpiCli : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = (fs::temp_directory_path() /
            ("saescale_mpi_cli_" +
             std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()) + "_" +
             std::to_string(ts::test_seed())))
               .string();
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  // Every rank reports its own exit code on stderr ("rank exit N"), then exits with it.
  // `wait_for_all`: Open MPI otherwise kills the other ranks as soon as one exits non-zero, and
  // they could not report their own exit codes.
  static constexpr int kHangSeconds = 300;
  ts::Result mpirun(int ranks, const std::string& args, bool wait_for_all = false) {
    const std::string env = wait_for_all ? "OMPI_MCA_orte_abort_on_non_zero_status=0 " : "";
    // Under a timeout: a rank left waiting in a collective ends the test, killed (exit 137).
    return ts::run(env + "timeout -s KILL " + std::to_string(kHangSeconds) + " " +
                       SAESCALE_MPIEXEC + " " + std::to_string(ranks) +
                       " sh -c '\"$0\" \"$@\"; rc=$?; echo \"rank exit $rc\" >&2; exit $rc' " +
                       ts::saescale() + " " + args,
                   dir_);
  }
  static int count(const std::string& text, const std::string& needle) {
    int n = 0;
    for (size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1))
      ++n;
    return n;
  }
  std::string dir_;
  const std::string small_ =
      " --d-model 8 --width 32 --batch-size 64 --steps 3 --warmup-steps 1 --eval-tokens 64 ";
};

TEST_F(MpiCli, BadGridsFailOnEveryRankWithOneMessage) {
  struct Case {
    int ranks;
    std::string args, needle;
  };
  const Case cases[] = {
      {2, "--dp 3", "--dp 3 x --lp 1 = 3 ranks, but the job has 2"},
      {2, "--lp 4", "--lp 4 does not divide the number of ranks"},
      {4, "--dp 2 --lp 3", "--lp 3 does not divide"},
      {2, "--lp 2 --width 33", "--width 33 is not divisible by --lp 2"},
      {4, "--batch-size 30", "--batch-size 30 is not divisible by --dp 4"},
  };
  for (const auto& c : cases) {
    const std::string out = dir_ + "/never.json";
    std::string args = "train" + small_ + c.args + " --out " + out;
    if (c.args.find("--width") != std::string::npos)
      args = "train --d-model 8 --batch-size 64 --steps 3 --eval-tokens 64 " + c.args + " --out " +
             out;
    if (c.args.find("--batch-size") != std::string::npos)
      args = "train --d-model 8 --width 32 --steps 3 --eval-tokens 64 " + c.args + " --out " + out;
    const auto r = mpirun(c.ranks, args, true);  // (mpiexec itself then exits 0)
    EXPECT_EQ(count(r.err, "saescale: error"), 1) << c.args << "\n" << r.err;
    EXPECT_NE(r.err.find(c.needle), std::string::npos) << c.args << "\n" << r.err;
    EXPECT_EQ(count(r.err, "rank exit 1"), c.ranks) << "every rank exits non-zero\n" << r.err;
    EXPECT_FALSE(fs::exists(out));
  }
}

TEST_F(MpiCli, AnErrorOnOneRankAbortsEveryRank) {
  const ts::FaultPlan faults(R"([{"site": "step", "action": "throw", "step": 3, "rank": 1}])");
  const auto r = mpirun(2,
                        "train --d-model 8 --width 32 --batch-size 64 --steps 1000000 "
                        "--lp 2 --no-gemm-floor");
  EXPECT_NE(r.code, 137) << "killed after " << kHangSeconds
                         << " s: the other rank waited in a collective\n"
                         << r.err;
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("rank 1: test fault injected at step 3"), std::string::npos) << r.err;
}

// A NaN in one latent shard's gradient (rank 1 only) stops every rank at the same step, cleanly:
// no abort, one message, a "failed" results file from rank 0.
TEST_F(MpiCli, ANonFiniteGradientOnOneShardStopsEveryRank) {
  const std::string out = dir_ + "/failed.json";
  const ts::FaultPlan faults(R"([{"site": "gradients", "action": "nan", "step": 2, "rank": 1}])");
  const auto r = mpirun(
      2, "train --d-model 8 --width 32 --batch-size 64 --steps 10 --lp 2 --out " + out, true);
  EXPECT_EQ(count(r.err, "saescale: error: step 3: the gradient of W_dec"), 1) << r.err;
  EXPECT_EQ(count(r.err, "rank exit 1"), 2) << r.err;
  EXPECT_EQ(count(r.err, "MPI_ABORT"), 0) << r.err;
  const auto results = nlohmann::json::parse(ts::slurp(out));
  EXPECT_EQ(results["status"], "failed");
  ts::expect_valid_results(out);
}

TEST_F(MpiCli, WeightsSavedFromAGridMatchOneRank) {
  const std::string common =
      "train --variant topk --k 4 --aux-k 8 --d-model 16 --width 64 --batch-size 32 --steps 4 "
      "--warmup-steps 1 --data synthetic:features=32 --optimizer sgd --lr 0.05 "
      "--dead-window-tokens 48 --eval-tokens 64 --no-gemm-floor ";
  ASSERT_EQ(mpirun(1, common + "--save-weights " + dir_ + "/one").code, 0);
  for (const std::string grid : {"--dp 2 --lp 1", "--dp 1 --lp 2"}) {
    const std::string out = dir_ + "/r.json", weights = dir_ + "/grid";
    const auto r =
        mpirun(2, common + grid + " --save-weights " + weights + " --out " + out + " --force");
    ASSERT_EQ(r.code, 0) << r.err;
    ts::expect_valid_results(out);
    const auto want = saescale::io::read_safetensors(dir_ + "/one/sae_weights.safetensors");
    const auto got = saescale::io::read_safetensors(weights + "/sae_weights.safetensors");
    ASSERT_EQ(got.size(), want.size());
    for (size_t t = 0; t < got.size(); ++t) {
      ASSERT_EQ(got[t].shape, want[t].shape);
      for (size_t i = 0; i < got[t].values.size(); ++i)
        ASSERT_NEAR(got[t].values[i], want[t].values[i], 1e-5) << grid << " " << got[t].name;
    }
    // The results file: the grid, and the bytes of the forward all-reduce (B x d floats over lp
    // per step: the ring sends 2 (n-1)/n of it, = all of it for n = 2).
    const auto results = nlohmann::json::parse(ts::slurp(out));
    EXPECT_EQ(results["context"]["ranks"], 2);
    EXPECT_EQ(results["context"]["placement"].size(), 2u);
    const auto& comm = results["timing"]["communication"];
    if (grid == "--dp 1 --lp 2") {
      EXPECT_EQ(results["context"]["grid"]["lp"], 2);
      EXPECT_DOUBLE_EQ(comm["comm_decode"]["payload_bytes_per_step"].get<double>(), 32 * 16 * 4);
      EXPECT_DOUBLE_EQ(comm["comm_decode"]["sent_bytes_per_step"].get<double>(), 32 * 16 * 4);
      EXPECT_TRUE(comm.contains("comm_selection"));
      EXPECT_FALSE(comm.contains("comm_gradients"));
    } else {
      EXPECT_EQ(results["context"]["grid"]["dp"], 2);
      EXPECT_FALSE(comm.contains("comm_decode"));
      // The whole gradient buffer once per step: W_enc, b_enc, W_dec, b_dec.
      const double params = 16 * 64 + 64 + 64 * 16 + 16;
      EXPECT_DOUBLE_EQ(comm["comm_gradients"]["payload_bytes_per_step"].get<double>(), params * 4);
    }
    EXPECT_TRUE(results["timing"]["phases_s"]["encode_gemm"].contains("ranks"));
  }
}

}  // namespace
