// Learning on synthetic data with a known dictionary: each variant must reach a low FVU at an L0
// near the true one and recover most true features. The thresholds are set so that a wrong
// gradient, a missing chain factor or a broken optimiser fails (see the README's notes).
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "support/process.hpp"

namespace {

namespace fs = std::filesystem;
namespace ts = testing_support;

struct Case {
  const char* variant;
  const char* args;
  double max_fvu, min_recovered, l0_ratio;
};

// Shared problem: d = 64, 128 true features, true L0 = 4.
constexpr double kTrueL0 = 4.0;
const char* kProblem =
    " --d-model 64 --width 256 --batch-size 1024 --data synthetic:features=128,l0=4,noise=0.02"
    " --no-gemm-floor --progress-every 1000 --eval-tokens 8192 --seed 3 ";

std::vector<nlohmann::json>& table() {
  static std::vector<nlohmann::json> rows;
  return rows;
}

class Learning : public ::testing::TestWithParam<Case> {};

TEST_P(Learning, ReachesLowFvuNearTrueL0AndRecoversFeatures) {
  const Case c = GetParam();
  const std::string dir = (fs::temp_directory_path() / "saescale_learning").string();
  fs::create_directories(dir);
  const std::string out = dir + "/" + c.variant + ".json";
  const auto r = ts::run(ts::saescale() + " train --variant " + c.variant + kProblem + c.args +
                             " --force --out " + out,
                         dir);
  ASSERT_EQ(r.code, 0) << r.err;
  std::ifstream in(out);
  const auto res = nlohmann::json::parse(in);
  const auto& f = res["fidelity"];
  table().push_back({{"variant", c.variant},
                     {"fvu", f["fvu"]},
                     {"l0", f["l0"]},
                     {"mmcs", f["mmcs"]},
                     {"recovered", f["recovered_fraction"]},
                     {"step_ms", res["timing"]["step_s"]["median"].get<double>() * 1e3}});
  EXPECT_LT(f["fvu"].get<double>(), c.max_fvu);
  EXPECT_GT(f["recovered_fraction"].get<double>(), c.min_recovered);
  EXPECT_GT(f["l0"].get<double>(), kTrueL0 / c.l0_ratio);
  EXPECT_LT(f["l0"].get<double>(), kTrueL0 * c.l0_ratio);
}

INSTANTIATE_TEST_SUITE_P(
    Variants, Learning,
    // Measured on this problem (seed 3): relu FVU 0.146, L0 7.1, 84% recovered; jumprelu FVU 0.052,
    // L0 3.7, 80% recovered. ReLU's L1 penalty shrinks activations, hence its higher FVU.
    ::testing::Values(Case{"relu", "--steps 1500 --lr 5e-3 --sparsity-coeff 0.3", 0.20, 0.70, 2.0},
                      Case{"jumprelu",
                           "--steps 2000 --lr 5e-3 --sparsity-coeff 0.01 --threshold-init 0.1 "
                           "--bandwidth 0.05",
                           0.08, 0.70, 2.0},
                      // Measured: FVU 0.055, L0 4.96, 77% recovered.
                      Case{"gated", "--steps 2000 --lr 5e-3 --sparsity-coeff 0.3", 0.09, 0.70,
                           2.0}),
    [](const auto& info) { return std::string(info.param.variant); });

class PrintTable : public ::testing::Environment {
 public:
  void TearDown() override {
    std::printf("\n%-10s %8s %8s %8s %10s %9s   (true L0 %.1f)\n", "variant", "FVU", "L0", "MMCS",
                "recovered", "step ms", kTrueL0);
    for (const auto& row : table())
      std::printf("%-10s %8.4f %8.2f %8.3f %9.1f%% %9.2f\n",
                  row["variant"].get<std::string>().c_str(), row["fvu"].get<double>(),
                  row["l0"].get<double>(), row["mmcs"].get<double>(),
                  100 * row["recovered"].get<double>(), row["step_ms"].get<double>());
  }
};
const auto* const kTable = ::testing::AddGlobalTestEnvironment(new PrintTable);

}  // namespace
