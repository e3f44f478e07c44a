// The `saescale` subcommands (docs/usage.md). Each returns the process exit code.
#pragma once
#include <CLI/CLI.hpp>

#include "config.hpp"

namespace saescale::cli {

struct GenDataOptions {
  std::string data = "synthetic";
  int64_t d_model = 0;
  int64_t tokens = 65536;
  int64_t shard_tokens = 0;  // 0: one shard
  uint64_t seed = 1;
  std::string out_dir;
  bool force = false;
};

// Exit code of a run stopped by SIGTERM/SIGUSR1 after writing its checkpoint and a "preempted"
// results file (sbatch templates resubmit with --resume on it).
inline constexpr int kExitPreempted = 3;

// Every file a train, grad or eval run reads (data, the --init weights and their cfg.json,
// --ground-truth, --config files): no output of the run may replace one.
std::vector<std::string> input_files(const Config& cfg);

int train(const Config& cfg);
int plan(const Config& cfg);
int grad(const Config& cfg);
int eval(const Config& cfg);
int gen_data(const GenDataOptions& o);
int info();

void add_gen_data_options(CLI::App& app, GenDataOptions& o);

}  // namespace saescale::cli
