// Every option of the `saescale` subcommands: one struct, bound to CLI11 options whose long names
// are the contract of docs/usage.md, and also readable from a TOML file (`--config`).
#pragma once
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace saescale {

struct Config {
  // model
  std::string variant = "jumprelu";
  int64_t d_model = 0;  // 0: taken from the data file (synthetic data needs it)
  int64_t width = 0;
  // hyper-parameters; unset optionals take the variant's defaults (docs/variants.md)
  std::optional<double> sparsity_coeff, lr, adam_beta1, adam_beta2, adam_eps, clip_norm;
  std::optional<double> bandwidth, threshold_init, lr_decay_frac, decoder_init_norm;
  std::optional<int64_t> lr_warmup_steps, sparsity_warmup_steps;
  int64_t k = 32;
  int64_t aux_k = 512;
  std::string topk_algo = "filter";             // GPU builds run radix for it (effective_topk_algo)
  std::string b_dec_init = "geometric-median";  // TopK/BatchTopK
  double encoder_bias_init = 0;                 // b_enc (Gated: b_gate) at initialisation
  int64_t initial_l0 = 0;  // > 0: ReLU/Gated/JumpReLU start with about this L0 (from the data)
  std::string optimizer = "adam";
  // run
  int64_t batch_size = 4096;
  int64_t steps = 1000;
  int64_t warmup_steps = 5;  // benchmark warm-up: steps run but not timed
  uint64_t seed = 1;
  std::string normalize = "unit-msq";
  int64_t norm_tokens = 65536;
  int64_t dead_window_tokens = 0;  // 0: dead_window_or_default()
  std::string precision = "fp32";
  std::string sparse = "auto";   // sparse-aware products after the encoder: off, on, auto
  int64_t sparse_capacity = 0;   // entries per row; 0: k for TopK, 32 k otherwise
  double sparse_crossover = -1;  // --sparse auto: this crossover instead of a calibration (>= 0)
  int64_t sparse_capacity_or_default() const;
  // A latent is dead after this many tokens without firing: --dead-window-tokens, else a tenth of
  // the run's tokens, at most 10M (OpenAI's window) and at least one batch, so that a short run
  // still finds its dead latents (and AuxK still runs) and a long one keeps the usual window.
  int64_t dead_window_or_default() const;
  int64_t dp = 0, lp = 1;              // dp 0: number of ranks / lp
  std::string comm = "auto";           // collectives on device buffers: auto, mpi, nccl
  std::string batch_scope = "global";  // BatchTopK: global batch or each rank's rows
  // data and files
  std::string data = "synthetic";
  int64_t shuffle_buffer = 65536;
  std::string init, save_weights, out, ground_truth;
  bool force = false;
  // measurement and reporting
  int64_t eval_every = 0;  // 0: evaluate at the end only
  int64_t eval_tokens = 16384;
  int64_t progress_every = 0;  // 0: about 10 progress lines per run
  int64_t loss_curve_points = 50;
  bool gemm_floor = true;
  // checkpoints: directory, how often ("N" steps or "Nm" minutes; 0: at the end and when
  // preempted), and resuming from the newest one there
  std::string checkpoint_dir, checkpoint_every = "0";
  bool resume = false;
  bool fence = true;                  // fence every phase (off: only the step total is meaningful)
  std::vector<double> target_fvu;     // record when the evaluation FVU first reaches each
  std::vector<std::string> tags;      // KEY=VALUE labels copied into the results' context.tags
  std::vector<int64_t> dead_latents;  // grad: the AuxK dead set (AuxK's gradient, validated)
  std::vector<std::string> config_files;  // --config: inputs, which no output may replace

  // The options the command line or a config file set (long names without dashes), so that a
  // saved SAE's own values (cfg.json) can take the place of defaults but not of a given value.
  std::vector<std::string> given;
  bool was_given(const std::string& option) const;

  nlohmann::json to_json() const;
  nlohmann::json tags_json() const;  // context.tags: {KEY: VALUE}
};

// Fills cfg.given from a parsed subcommand.
void record_given_options(const CLI::App& app, Config& cfg);

// Hyper-parameters after applying the variant's defaults and the run length (what is recorded).
struct Resolved {
  double sparsity_coeff, lr, adam_beta1, adam_beta2, adam_eps, clip_norm;
  double bandwidth, threshold_init, lr_decay_frac, decoder_init_norm;
  int64_t lr_warmup_steps, sparsity_warmup_steps;
};

enum class Subcommand { train, grad, eval };

// --checkpoint-every: "N" steps (returned) or "Nm" minutes (in *minutes, 0 steps returned).
int64_t parse_checkpoint_every(const std::string& text, double* minutes);

// Registers the options of `train`, `grad` or `eval` on a CLI11 subcommand.
void add_options(CLI::App& app, Config& cfg, Subcommand which);

// Parses argv with TOML configs expanded: `--config FILE` values become options placed before the
// command line's own, so the command line wins. Unknown TOML keys are errors naming the file.
// Returns the process exit code when parsing ends the program (--help, errors), else -1. The
// files read go to `config_files`.
int parse_command_line(CLI::App& app, int argc, char** argv,
                       std::vector<std::string>* config_files = nullptr);

}  // namespace saescale
