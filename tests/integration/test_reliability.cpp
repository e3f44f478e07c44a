// Nothing lost, nothing silently wrong, while a run goes: what happens to a run when the world
// changes under it. Each case runs the real binary in a subprocess under a timeout (a hang fails
// the case instead of stopping the suite) and checks the exit code, that the message is one line,
// what the results file says, and that no file was lost or left half-written.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "io/checkpoint.hpp"
#include "io/npy.hpp"
#include "support/process.hpp"
#include "support/random.hpp"

namespace {

namespace fs = std::filesystem;
namespace ts = testing_support;
using Clock = std::chrono::steady_clock;

// A run in the background: started through the shell (stdout and stderr to files), waited for
// with a deadline, killed if it passes it.
class Background {
 public:
  Background(const std::string& dir, const std::string& args, const std::string& prefix = "")
      : out_(dir + "/bg.out"), err_(dir + "/bg.err") {
    const std::string command = "cd " + dir + " && exec " + prefix + ts::saescale() + " " + args +
                                " >" + out_ + " 2>" + err_;
    pid_ = fork();
    if (pid_ == 0) {
      execl("/bin/sh", "sh", "-c", command.c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
  }
  ~Background() {
    if (pid_ > 0 && !done_) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }
  // Until `text` appears in stdout (true) or the process ends or `seconds` pass (false).
  bool wait_for_output(const std::string& text, double seconds = 120) {
    const auto end = Clock::now() + std::chrono::duration<double>(seconds);
    while (Clock::now() < end) {
      if (ts::slurp(out_).find(text) != std::string::npos) return true;
      if (waitpid(pid_, &status_, WNOHANG) == pid_) return done_ = true, false;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
  }
  // The exit code (-1 if killed at the deadline or by a signal).
  int wait(double seconds = 120) {
    const auto end = Clock::now() + std::chrono::duration<double>(seconds);
    while (!done_ && Clock::now() < end) {
      if (waitpid(pid_, &status_, WNOHANG) == pid_) done_ = true;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    if (!done_) {
      kill(pid_, SIGKILL);
      waitpid(pid_, &status_, 0);
      done_ = true;
      return -1;
    }
    return WIFEXITED(status_) ? WEXITSTATUS(status_) : -1;
  }
  pid_t pid() const { return pid_; }
  std::string err() const { return ts::slurp(err_); }
  std::string out() const { return ts::slurp(out_); }

 private:
  std::string out_, err_;
  pid_t pid_ = -1;
  int status_ = 0;
  bool done_ = false;
};

class Reliability : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = (fs::temp_directory_path() /
            ("saescale_reliability_" +
             std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()) + "_" +
             std::to_string(getpid())))
               .string();
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override {
    if (!HasFailure()) fs::remove_all(dir_);
  }
  void write_data(const std::string& name, int64_t rows, int64_t d) {
    std::mt19937 rng(ts::test_seed());
    std::normal_distribution<float> normal(0, 1);
    std::vector<float> x(rows * d);
    for (auto& v : x) v = normal(rng);
    saescale::io::write_npy(dir_ + "/" + name, x.data(), {rows, d});
  }
  static void expect_one_line_error(const std::string& err, const std::string& needle) {
    EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << err;
    EXPECT_EQ(err.rfind("saescale: error: ", 0), 0u) << err;
    EXPECT_NE(err.find(needle), std::string::npos) << err;
  }
  // Whether this process may make a private mount namespace (root, unshare -m).
  bool mount_namespaces() const {
    return std::system(("cd " + dir_ + " && unshare -m true >/dev/null 2>&1").c_str()) == 0;
  }
  // `saescale args` with a tmpfs of `size` at disk/ in a private mount namespace; what
  // disk/`listed` holds at the end (ls -A) is kept in listing.txt before the mount goes.
  ts::Result on_small_disk(const std::string& size, const std::string& listed,
                           const std::string& args) const {
    fs::create_directories(dir_ + "/disk");
    return ts::run("cd " + dir_ +
                       " && timeout -s KILL 120 unshare -m sh -c 'mount -t tmpfs -o size=" + size +
                       " tmpfs disk && \"$0\" \"$@\"; rc=$?; ls -A disk/" + listed +
                       " > listing.txt; exit $rc' " + ts::saescale() + " " + args,
                   dir_);
  }
  nlohmann::json results(const std::string& name) const {
    return nlohmann::json::parse(ts::slurp(dir_ + "/" + name));
  }
  std::string dir_;
};

// Long enough that the change below lands mid-run (well under a millisecond a step).
const std::string kLong =
    "train --d-model 16 --width 64 --batch-size 64 --steps 2000000 --warmup-steps 0 "
    "--eval-tokens 64 --no-gemm-floor --progress-every 200 ";

// The data file shrinks while training reads it: a mapping would kill the process (SIGBUS); the
// run ends "failed" with a results file saying why, and one line on stderr.
TEST_F(Reliability, DataFileTruncatedMidRunFailsTheRunWithAResult) {
  write_data("x.npy", 4000, 16);
  Background run(dir_, kLong + "--data x.npy --out r.json");
  ASSERT_TRUE(run.wait_for_output("step ")) << run.err();
  fs::resize_file(dir_ + "/x.npy", 4096);  // the header and a few rows remain
  EXPECT_EQ(run.wait(), 1) << run.err();
  expect_one_line_error(run.err(), "x.npy: the file shrank while it was being read");
  const auto r = results("r.json");
  EXPECT_EQ(r["status"], "failed");
  EXPECT_NE(r["reason"].get<std::string>().find("shrank"), std::string::npos) << r["reason"];
}

// The same on two ranks: the rank that reads the shrunk file and the one that does not stop at
// the same step, together, with one results file saying why.
TEST_F(Reliability, DataFileTruncatedMidRunFailsBothRanks) {
  write_data("x.npy", 4000, 16);
  Background run(dir_, kLong + "--dp 2 --data x.npy --out r.json",
                 std::string(SAESCALE_MPIEXEC) + " 2 ");
  ASSERT_TRUE(run.wait_for_output("step ")) << run.err();
  fs::resize_file(dir_ + "/x.npy", 4096);
  EXPECT_EQ(run.wait(), 1) << run.err();
  EXPECT_NE(run.err().find("the file shrank while it was being read"), std::string::npos)
      << run.err();
  // One error line for the run (the ranks agree on the failure; rank 0 reports it), whatever
  // mpiexec adds.
  const std::string err = run.err();
  EXPECT_EQ(err.find("saescale: error: "), err.rfind("saescale: error: ")) << err;
  const auto r = results("r.json");
  EXPECT_EQ(r["status"], "failed");
  EXPECT_NE(r["reason"].get<std::string>().find("shrank"), std::string::npos) << r["reason"];
}

// A results file that appears while the run goes (another run with the same --out) is not
// replaced: the run's results are kept beside it and the error says where.
TEST_F(Reliability, AResultsFileThatAppearsDuringTheRunIsNotReplaced) {
  Background run(dir_, kLong + "--steps 3000 --out r.json");
  ASSERT_TRUE(run.wait_for_output("step ")) << run.err();
  std::ofstream(dir_ + "/r.json") << "{\"precious\": true}\n";
  EXPECT_EQ(run.wait(), 1) << run.err();
  expect_one_line_error(run.err(), "r.json appeared while this run was going");
  EXPECT_EQ(ts::slurp(dir_ + "/r.json"), "{\"precious\": true}\n");
  const std::string err = run.err();
  const auto at = err.find("output is in ");
  ASSERT_NE(at, std::string::npos) << err;
  const std::string kept = dir_ + "/" + err.substr(at + 13, err.find('\n') - at - 13);
  EXPECT_EQ(nlohmann::json::parse(ts::slurp(kept))["status"], "ok") << kept;
}

// Two runs cannot share a checkpoint directory: the second is refused at start, naming the first.
TEST_F(Reliability, TwoRunsCannotShareACheckpointDirectory) {
  Background first(dir_, kLong + "--checkpoint-dir ckpt --out first.json");
  ASSERT_TRUE(first.wait_for_output("step ")) << first.err();
  const auto second = ts::run("cd " + dir_ + " && timeout -s KILL 120 " + ts::saescale() + " " +
                                  kLong + "--steps 10 --checkpoint-dir ckpt --out second.json",
                              dir_);
  EXPECT_EQ(second.code, 1);
  expect_one_line_error(second.err,
                        "ckpt is in use by another run (pid " + std::to_string(first.pid()) + ",");
  EXPECT_FALSE(fs::exists(dir_ + "/second.json"));
  // Refused before its setup: the lock comes before the data is read (a data file that does not
  // exist is not reached).
  const auto third = ts::run("cd " + dir_ + " && timeout -s KILL 120 " + ts::saescale() + " " +
                                 kLong + "--steps 10 --data missing.npy --checkpoint-dir ckpt",
                             dir_);
  EXPECT_EQ(third.code, 1);
  expect_one_line_error(third.err, "ckpt is in use by another run (pid ");
  kill(first.pid(), SIGTERM);
  EXPECT_EQ(first.wait(), 3) << first.err();  // preempted, with a checkpoint
  EXPECT_EQ(results("first.json")["status"], "preempted");
}

// A full disk when a periodic checkpoint is written: the run ends "failed" with its results, the
// half-written checkpoint is removed and the previous one stays the newest. The disk is a small
// tmpfs in a private mount namespace (root), sized for one checkpoint but not two.
TEST_F(Reliability, AFullDiskFailsTheRunAndKeepsThePreviousCheckpoint) {
  if (!mount_namespaces()) GTEST_SKIP() << "no private mount namespaces here: no small disk";
  // The checkpoint (parameters and Adam's second moment: about 540 KB) fits once, not twice.
  const auto r = on_small_disk("800k", "ckpt",
                               "train --d-model 64 --width 512 --batch-size 256 --steps 40 "
                               "--eval-tokens 256 --no-gemm-floor --checkpoint-dir disk/ckpt "
                               "--checkpoint-every 10 --out r.json");
  EXPECT_EQ(r.code, 1);
  expect_one_line_error(r.err, "the checkpoint of step 20 failed");
  EXPECT_NE(r.err.find("No space left on device"), std::string::npos) << r.err;
  const auto res = results("r.json");
  EXPECT_EQ(res["status"], "failed");
  EXPECT_EQ(res["failed_step"], 20);
  // Only the step-10 checkpoint is there (the mount is gone after the run: its listing was kept).
  EXPECT_EQ(ts::slurp(dir_ + "/listing.txt"), "latest\nstep-000000010\n");
}

// The same when the weights do not fit at the end: the run ends "failed" with its results and the
// half-written weights directory is removed.
TEST_F(Reliability, AFullDiskFailsTheWeightsAndLeavesNoneBehind) {
  if (!mount_namespaces()) GTEST_SKIP() << "no private mount namespaces here: no small disk";
  // W_enc and W_dec alone are 262 KB: more than the disk.
  const auto r = on_small_disk("100k", "",
                               "train --d-model 64 --width 512 --batch-size 256 --steps 5 "
                               "--eval-tokens 256 --no-gemm-floor --save-weights disk/weights "
                               "--out r.json");
  EXPECT_EQ(r.code, 1);
  expect_one_line_error(r.err, "saving the weights failed");
  EXPECT_NE(r.err.find("No space left on device"), std::string::npos) << r.err;
  const auto res = results("r.json");
  EXPECT_EQ(res["status"], "failed");
  EXPECT_NE(res["reason"].get<std::string>().find("saving the weights failed"), std::string::npos)
      << res["reason"];
  EXPECT_EQ(ts::slurp(dir_ + "/listing.txt"), "") << "the disk still holds files";
}

// SIGTERM while the run is still setting up (here: estimating the normalisation from 4 million
// rows) ends it "preempted" with exit 3, so Slurm's resubmission runs it again; the handler is
// installed when `train` starts (seen in /proc before the signal is sent).
TEST_F(Reliability, ASignalDuringSetupEndsItPreempted) {
  for (const auto& [signal, name] : {std::pair{SIGTERM, "SIGTERM"}, {SIGUSR1, "SIGUSR1"}}) {
    SCOPED_TRACE(name);
    fs::remove(dir_ + "/r.json");
    Background run(dir_,
                   "train --d-model 32 --width 64 --batch-size 64 --steps 10 "
                   "--norm-tokens 4000000 --eval-tokens 64 --no-gemm-floor --out r.json");
    const auto caught = [&, signal = signal] {  // SigCgt: the signals with a handler, a hex mask
      std::ifstream status("/proc/" + std::to_string(run.pid()) + "/status");
      std::string key, mask;
      while (status >> key)
        if (key == "SigCgt:" && status >> mask)
          return (std::stoull(mask, nullptr, 16) >> (signal - 1)) & 1;
      return 0ull;
    };
    for (int i = 0; i < 6000 && !caught(); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    ASSERT_TRUE(caught()) << "the handler was never installed";
    ASSERT_EQ(run.out().find("saescale train:"), std::string::npos) << "setup ended too soon";
    kill(run.pid(), signal);
    EXPECT_EQ(run.wait(), 3) << run.err();
    const auto r = results("r.json");
    EXPECT_EQ(r["status"], "preempted");
    EXPECT_NE(r["reason"].get<std::string>().find(std::string(name) + " during setup"),
              std::string::npos)
        << r["reason"];
  }
}

}  // namespace
