#include "config.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <limits>
#include <map>

#include <toml++/toml.h>

#include <cstdio>
#include <sstream>

#include "error.hpp"
#include "variants/traits.hpp"

namespace saescale {

// --checkpoint-every: "N" steps or "Nm" minutes (0: only at the end and on preemption).
int64_t parse_checkpoint_every(const std::string& text, double* minutes) {
  *minutes = 0;
  char* end = nullptr;
  const double value = std::strtod(text.c_str(), &end);
  const std::string unit = end ? std::string(end) : "";
  if (end == text.c_str() || !(value >= 0) || (unit != "" && unit != "m" && unit != "min"))
    throw Error("'" + text + "': give steps (100) or minutes (30m)");
  // A year of minutes, or steps beyond any run (1e23 would not even convert to an integer).
  if (value > (unit.empty() ? 1e15 : 525600.0))
    throw Error("'" + text + "' is beyond any run: give at most " +
                (unit.empty() ? std::string("1e15 steps") : std::string("525600 minutes")));
  if (unit.empty()) {
    if (value != std::floor(value)) throw Error("'" + text + "': steps must be a whole number");
    return static_cast<int64_t>(value);
  }
  *minutes = value;
  return 0;
}

namespace {

// Numeric checks with one short message ("--width: must be positive, got 0"); CLI11's own range
// validators print the whole range of a double. Every value must also be finite as a float (the
// kernels' type): --lr 1e39 or --sparsity-coeff inf would otherwise fail only at the first step.
enum class Sign { positive, non_negative, any };
CLI::Validator numeric_check(Sign sign) {
  return CLI::Validator(
      [sign](std::string& text) -> std::string {
        char* end = nullptr;
        const double v = std::strtod(text.c_str(), &end);
        if (end == text.c_str() || *end != '\0') return "must be a number, got '" + text + "'";
        if (!(std::fabs(v) <= std::numeric_limits<float>::max()))
          return "must be a finite number (within float range), got " + text;
        if (sign == Sign::positive && !(v > 0)) return "must be positive, got " + text;
        if (sign == Sign::non_negative && !(v >= 0)) return "must be >= 0, got " + text;
        return "";
      },
      sign == Sign::positive       ? "POSITIVE"
      : sign == Sign::non_negative ? "NONNEGATIVE"
                                   : "FINITE");
}
const CLI::Validator kPositive = numeric_check(Sign::positive);
const CLI::Validator kNonNegative = numeric_check(Sign::non_negative);
const CLI::Validator kFinite = numeric_check(Sign::any);
// A whole number >= 0 written as digits (a seed: "-5" would wrap to 2^64 - 5 in an unsigned).
const CLI::Validator kWholeNumber(
    [](std::string& text) -> std::string {
      if (text.empty() || text.find_first_not_of("0123456789") != std::string::npos)
        return "must be a whole number >= 0, got '" + text + "'";
      return "";
    },
    "WHOLE");
const CLI::Validator kCheckpointEvery(
    [](std::string& text) -> std::string {
      try {
        double minutes = 0;
        parse_checkpoint_every(text, &minutes);
      } catch (const Error& e) {
        return e.what();
      }
      return "";
    },
    "N|Nm");

template <class T>
nlohmann::json opt(const std::optional<T>& v) {
  return v ? nlohmann::json(*v) : nlohmann::json(nullptr);
}

void add_model_options(CLI::App& app, Config& c) {
  app.add_option("--variant", c.variant, "SAE variant")
      ->check(CLI::IsMember(variant_names()))
      ->capture_default_str();
  app.add_option("--d-model", c.d_model, "activation dimension d (default: from the data)");
  app.add_option("--width", c.width, "number of latents M")->check(kPositive);
  app.add_option("--sparsity-coeff", c.sparsity_coeff, "lambda for relu/gated/jumprelu")
      ->check(kNonNegative);
  app.add_option("--k", c.k, "active latents per token (topk, batchtopk)")
      ->check(kPositive)
      ->capture_default_str();
  app.add_option("--aux-k", c.aux_k, "AuxK latents (topk, batchtopk); 0 turns AuxK off")
      ->check(kNonNegative)
      ->capture_default_str();
  app.add_option("--topk-algo", c.topk_algo,
                 "exact top-k selection: radix|bisect|filter (topk, batchtopk); filter, the "
                 "fastest on CPUs, runs radix on GPU builds")
      ->check(CLI::IsMember({"radix", "bisect", "filter"}))
      ->capture_default_str();
  app.add_option("--encoder-bias-init", c.encoder_bias_init,
                 "initial encoder bias (b_enc; gated: b_gate) [0]; a negative value starts ReLU "
                 "and Gated SAEs sparse (measuring --sparse without training them there)")
      ->check(kFinite);
  app.add_option("--initial-l0", c.initial_l0,
                 "relu, gated, jumprelu: start with about this many active latents per token (the "
                 "encoder bias, or JumpReLU's threshold, set from the first batch's "
                 "pre-activations); compare with topk/batchtopk at --k of the same value")
      ->check(kPositive);
  app.add_option("--b-dec-init", c.b_dec_init, "b_dec initialisation for topk/batchtopk")
      ->check(CLI::IsMember({"geometric-median", "mean", "zero"}))
      ->capture_default_str();
  app.add_option("--bandwidth", c.bandwidth, "JumpReLU straight-through bandwidth eps [0.001]")
      ->check(kPositive);
  app.add_option("--threshold-init", c.threshold_init, "JumpReLU initial threshold [0.001]")
      ->check(kPositive);
  app.add_option("--normalize", c.normalize, "input normalisation scalar")
      ->check(CLI::IsMember({"unit-msq", "sqrt-d", "none"}))
      ->capture_default_str();
  app.add_option("--norm-tokens", c.norm_tokens, "tokens used to estimate the scalar")
      ->check(kPositive)
      ->capture_default_str();
  app.add_option("--data", c.data,
                 "activations: .npy/.safetensors path or glob, or synthetic[:key=value,...]")
      ->capture_default_str();
  app.add_option("--precision", c.precision, "GEMM precision (tf32/bf16 need cuBLAS)")
      ->check(CLI::IsMember({"fp32", "tf32", "bf16"}))
      ->capture_default_str();
  app.add_option("--sparse", c.sparse,
                 "sparse-aware decode and backward products over f's non-zeros (a product whose "
                 "rows exceed --sparse-capacity runs dense that step); auto: also dense while the "
                 "rows average more entries than a calibration at start measured to pay")
      ->check(CLI::IsMember({"off", "on", "auto"}))
      ->capture_default_str();
  app.add_option("--sparse-crossover", c.sparse_crossover,
                 "--sparse auto: run the products sparse while rows average at most this many "
                 "entries, instead of calibrating at start (a crossover measured before, or "
                 "reproducible runs)")
      ->check(kNonNegative);
  app.add_option("--sparse-capacity", c.sparse_capacity,
                 "entries kept per row on the sparse path (default: k for topk, 32 k otherwise: "
                 "their rows vary)")
      ->check(kNonNegative);
  app.add_option("--seed", c.seed, "random seed (data, init, shuffling)")
      ->check(kWholeNumber)
      ->capture_default_str();
  app.add_option("--init", c.init, "start from these weights (.safetensors with cfg.json)");
  app.add_option("--out", c.out, "results file to write (JSON)");
  app.add_flag("--force", c.force, "overwrite an existing output file");
}

void add_train_options(CLI::App& app, Config& c) {
  app.add_option("--batch-size", c.batch_size, "global batch size in tokens")
      ->check(kPositive)
      ->capture_default_str();
  app.add_option("--steps", c.steps, "training steps")->check(kPositive)->capture_default_str();
  app.add_option("--warmup-steps", c.warmup_steps,
                 "benchmark warm-up: steps run but excluded from timing statistics")
      ->check(kNonNegative)
      ->capture_default_str();
  app.add_option("--lr", c.lr, "learning rate (default: the variant's)")->check(kPositive);
  app.add_option("--optimizer", c.optimizer, "optimiser")
      ->check(CLI::IsMember({"adam", "sgd"}))
      ->capture_default_str();
  app.add_option("--adam-beta1", c.adam_beta1, "Adam beta1 (0 allowed)")->check(kNonNegative);
  app.add_option("--adam-beta2", c.adam_beta2, "Adam beta2")->check(kNonNegative);
  app.add_option("--adam-eps", c.adam_eps, "Adam epsilon")->check(kPositive);
  app.add_option("--clip-norm", c.clip_norm, "global gradient-norm clip, 0 = off")
      ->check(kNonNegative);
  app.add_option("--lr-warmup-steps", c.lr_warmup_steps, "linear LR warm-up steps");
  app.add_option("--lr-decay-frac", c.lr_decay_frac, "linear LR decay over this last fraction")
      ->check(kNonNegative);
  app.add_option("--sparsity-warmup-steps", c.sparsity_warmup_steps,
                 "linear warm-up of the sparsity coefficient from 0");
  app.add_option("--decoder-init-norm", c.decoder_init_norm, "initial decoder row norm")
      ->check(kPositive);
  app.add_option("--dead-window-tokens", c.dead_window_tokens,
                 "a latent is dead after this many tokens without firing [a tenth of the run's "
                 "tokens, at most 10M]")
      ->check(kPositive);
  app.add_option("--shuffle-buffer", c.shuffle_buffer, "rows in the file-data shuffle buffer")
      ->check(kPositive)
      ->capture_default_str();
  app.add_option("--dp", c.dp, "data-parallel ranks (default: all ranks)");
  app.add_option("--lp", c.lp, "latent-parallel ranks (each holds width / lp latents)")
      ->check(kPositive)
      ->capture_default_str();
  app.add_option("--comm", c.comm,
                 "collectives on device buffers: NCCL (GPU builds) or MPI; auto picks NCCL "
                 "for device memory")
      ->check(CLI::IsMember({"auto", "mpi", "nccl"}))
      ->capture_default_str();
  app.add_option("--batch-scope", c.batch_scope,
                 "BatchTopK selects over the global batch (all ranks) or each rank's rows")
      ->check(CLI::IsMember({"global", "local"}))
      ->capture_default_str();
  app.add_option("--eval-every", c.eval_every, "evaluate every N steps (0: at the end only)")
      ->check(kNonNegative)
      ->capture_default_str();
  app.add_option("--eval-tokens", c.eval_tokens, "tokens in the evaluation set")
      ->check(kPositive)
      ->capture_default_str();
  app.add_option("--progress-every", c.progress_every, "progress line every N steps (0: auto)")
      ->check(kNonNegative);
  app.add_option("--loss-curve-points", c.loss_curve_points, "points kept in the loss curve")
      ->check(kPositive)
      ->capture_default_str();
  app.add_option("--ground-truth", c.ground_truth,
                 "true dictionary (.npy [F, d]) for MMCS when training on files");
  app.add_option("--save-weights", c.save_weights, "write weights (.safetensors + cfg.json)");
  app.add_flag("!--no-gemm-floor", c.gemm_floor,
               "skip the in-run ceilings (the GEMMs alone: floor_ratio; the stream copy)");
  app.add_option("--checkpoint-dir", c.checkpoint_dir,
                 "write checkpoints here (one file per rank and a manifest; the newest kept)");
  app.add_option("--checkpoint-every", c.checkpoint_every,
                 "checkpoint every N steps or every N minutes (30m); 0: at the end and when "
                 "preempted (SIGTERM/SIGUSR1)")
      ->check(kCheckpointEvery)
      ->capture_default_str();
  app.add_flag("--resume", c.resume, "continue from the newest checkpoint in --checkpoint-dir");
  app.add_flag("!--no-fence", c.fence,
               "no fences between phases: the step time without them (phase times then measure "
               "launches only)");
  app.add_option("--target-fvu", c.target_fvu,
                 "record the wall time and tokens at which the evaluation FVU first falls to X "
                 "(repeatable or comma-separated; evaluates every 5% of the run unless "
                 "--eval-every)")
      ->delimiter(',')
      ->check(kPositive)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  app.add_option("--tag", c.tags,
                 "label the run: KEY=VALUE copied into the results' context.tags (repeatable; "
                 "studies use study, sweep, row, system)")
      ->check(CLI::Validator(
          [](std::string& tag) -> std::string {
            const auto eq = tag.find('=');
            if (eq == std::string::npos || eq == 0) return "--tag '" + tag + "': give KEY=VALUE";
            for (const char ch : tag.substr(0, eq))
              if (!std::isalnum(static_cast<unsigned char>(ch)) && ch != '_' && ch != '-' &&
                  ch != '.')
                return "--tag '" + tag + "': KEY may hold letters, digits, '_', '-', '.'";
            return "";
          },
          "KEY=VALUE"))
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
}

}  // namespace

int64_t Config::sparse_capacity_or_default() const {
  return sparse_capacity > 0 ? sparse_capacity : variant_traits(variant).default_sparse_capacity(k);
}

int64_t Config::dead_window_or_default() const {
  if (dead_window_tokens > 0) return dead_window_tokens;
  const int64_t tenth = steps / 10 * batch_size + (steps % 10) * batch_size / 10;
  return std::max(batch_size, std::min<int64_t>(10'000'000, tenth));
}

nlohmann::json Config::tags_json() const {
  nlohmann::json out = nlohmann::json::object();
  for (const auto& tag : tags) {
    const auto eq = tag.find('=');
    const std::string key = tag.substr(0, eq);
    if (out.contains(key)) throw Error("--tag " + key + " given twice");
    out[key] = tag.substr(eq + 1);
  }
  return out;
}

bool Config::was_given(const std::string& option) const {
  return std::find(given.begin(), given.end(), option) != given.end();
}

void record_given_options(const CLI::App& app, Config& cfg) {
  for (const CLI::Option* option : app.get_options())
    if (option->count() > 0) cfg.given.push_back(option->get_single_name());
}

nlohmann::json Config::to_json() const {
  return {{"variant", variant},
          {"d_model", d_model},
          {"width", width},
          {"sparsity_coeff", opt(sparsity_coeff)},
          {"k", k},
          {"aux_k", aux_k},
          {"topk_algo", topk_algo},
          {"b_dec_init", b_dec_init},
          {"encoder_bias_init", encoder_bias_init},
          {"initial_l0", initial_l0},
          {"bandwidth", opt(bandwidth)},
          {"threshold_init", opt(threshold_init)},
          {"optimizer", optimizer},
          {"lr", opt(lr)},
          {"adam_beta1", opt(adam_beta1)},
          {"adam_beta2", opt(adam_beta2)},
          {"adam_eps", opt(adam_eps)},
          {"clip_norm", opt(clip_norm)},
          {"lr_warmup_steps", opt(lr_warmup_steps)},
          {"lr_decay_frac", opt(lr_decay_frac)},
          {"sparsity_warmup_steps", opt(sparsity_warmup_steps)},
          {"decoder_init_norm", opt(decoder_init_norm)},
          {"batch_size", batch_size},
          {"steps", steps},
          {"warmup_steps", warmup_steps},
          {"seed", seed},
          {"normalize", normalize},
          {"norm_tokens", norm_tokens},
          {"dead_window_tokens", dead_window_tokens},
          {"precision", precision},
          {"sparse", sparse},
          {"sparse_capacity", sparse_capacity},
          {"sparse_crossover", sparse_crossover >= 0 ? nlohmann::json(sparse_crossover) : nullptr},
          {"dp", dp},
          {"lp", lp},
          {"comm", comm},
          {"batch_scope", batch_scope},
          {"data", data},
          {"shuffle_buffer", shuffle_buffer},
          {"init", init},
          {"save_weights", save_weights},
          {"out", out},
          {"eval_every", eval_every},
          {"eval_tokens", eval_tokens},
          {"gemm_floor", gemm_floor},
          {"fence", fence},
          {"checkpoint_dir", checkpoint_dir},
          {"checkpoint_every", checkpoint_every},
          {"resume", resume},
          {"target_fvu", target_fvu}};
}

void add_options(CLI::App& app, Config& cfg, Subcommand which) {
  add_model_options(app, cfg);
  if (which == Subcommand::train) add_train_options(app, cfg);
  if (which == Subcommand::grad)
    app.add_option("--dead-latents", cfg.dead_latents,
                   "latents AuxK treats as dead (comma-separated; default none): validates AuxK's "
                   "gradient")
        ->delimiter(',');
  if (which == Subcommand::eval) {
    app.add_option("--eval-tokens", cfg.eval_tokens, "tokens to evaluate on")
        ->check(kPositive)
        ->capture_default_str();
    app.add_option("--ground-truth", cfg.ground_truth, "true dictionary (.npy [F, d]) for MMCS");
    app.add_option("--batch-size", cfg.batch_size, "evaluation batch size")
        ->check(kPositive)
        ->capture_default_str();
  }
}

namespace {

std::string toml_value_to_string(const toml::node& node, const std::string& where) {
  std::ostringstream s;
  if (auto v = node.as_string()) return v->get();
  if (auto v = node.as_integer()) return std::to_string(v->get());
  if (auto v = node.as_floating_point()) {
    char buf[40];
    std::snprintf(buf, sizeof buf, "%.17g", v->get());
    return buf;
  }
  if (auto v = node.as_boolean()) return v->get() ? "true" : "false";
  throw Error(where + ": only strings, numbers, booleans and arrays of them are accepted");
}

// The TOML file's keys become `--key=value` arguments (snake_case accepted for kebab-case names).
std::vector<std::string> toml_to_args(const CLI::App& sub, const std::string& path,
                                      std::map<std::string, std::string>& origin) {
  if (std::filesystem::is_directory(path))
    throw Error(path + ": --config needs a TOML file, not a directory");
  // A FIFO or a device would block the reader or never end: only regular files.
  if (std::filesystem::exists(path) && !std::filesystem::is_regular_file(path))
    throw Error(path + ": --config needs a regular file");
  toml::table table;
  try {
    table = toml::parse_file(path);
  } catch (const toml::parse_error& e) {
    const auto& where = e.source().begin;
    throw Error(path + ":" + std::to_string(where.line) +
                ": invalid TOML: " + std::string(e.description()));
  } catch (const std::exception& e) {
    throw Error(path + ": cannot read config: " + e.what());
  }
  std::vector<std::string> args;
  std::map<std::string, std::string> spelled;  // option -> the key that set it
  for (const auto& [key_view, node] : table) {
    std::string key(key_view.str());
    for (auto& ch : key)
      if (ch == '_') ch = '-';
    const std::string where = path + ": key '" + std::string(key_view.str()) + "'";
    if (const auto [it, fresh] = spelled.emplace(key, std::string(key_view.str())); !fresh)
      throw Error(path + ": keys '" + it->second + "' and '" + std::string(key_view.str()) +
                  "' both set --" + key + ": keep one");
    if (key == "config" || key == "help") throw Error(where + " is not allowed in a config file");
    const CLI::Option* option = nullptr;
    try {
      option = sub.get_option("--" + key);
    } catch (const CLI::OptionNotFound&) {
      throw Error(where + " is not an option of '" + sub.get_name() + "' (see " + sub.get_name() +
                  " --help)");
    }
    origin["--" + key] = path + " (key '" + std::string(key_view.str()) + "')";
    if (auto array = node.as_array()) {
      if (option->get_items_expected_max() <= 1)
        throw Error(where + " takes one value, not an array");
      for (const auto& item : *array)
        args.push_back("--" + key + "=" + toml_value_to_string(item, where));
    } else if (option->get_expected_max() == 0) {  // a flag: true gives it, false leaves it out
      const auto b = node.as_boolean();
      if (!b) throw Error(where + " is a flag: use true or false");
      if (b->get()) args.push_back("--" + key);
    } else {
      const std::string type = option->get_type_name();
      // CLI11 names an integer option's type INT or UINT (":POSITIVE" etc. after a validator).
      if (node.is_floating_point() && (type.rfind("INT", 0) == 0 || type.rfind("UINT", 0) == 0))
        throw Error(where + " takes a whole number, not the float " +
                    toml_value_to_string(node, where));
      args.push_back("--" + key + "=" + toml_value_to_string(node, where));
    }
  }
  return args;
}

}  // namespace

int parse_command_line(CLI::App& app, int argc, char** argv,
                       std::vector<std::string>* config_files) {
  std::vector<std::string> args(argv + 1, argv + argc);
  // Find the subcommand and an optional --config FILE / --config=FILE after it.
  CLI::App* sub = nullptr;
  size_t sub_pos = 0;
  for (size_t i = 0; i < args.size() && !sub; ++i) {
    for (auto* s : app.get_subcommands({}))
      if (s->get_name() == args[i]) sub = s, sub_pos = i;
  }
  std::vector<std::string> expanded;
  std::map<std::string, std::string> origin;  // option -> the config file (and key) it came from
  for (size_t i = 0; i < args.size(); ++i) {
    std::string file;
    if (sub && i > sub_pos && args[i] == "--config") {
      if (i + 1 >= args.size()) throw Error("--config needs a file name");
      file = args[++i];
    } else if (sub && i > sub_pos && args[i].rfind("--config=", 0) == 0) {
      file = args[i].substr(9);
    } else {
      continue;
    }
    auto from_file = toml_to_args(*sub, file, origin);
    if (config_files) config_files->push_back(file);
    expanded.insert(expanded.end(), from_file.begin(), from_file.end());
  }
  std::vector<std::string> final_args;
  for (size_t i = 0; i < args.size(); ++i) {
    if (sub && i > sub_pos && args[i] == "--config") {
      ++i;
      continue;
    }
    if (sub && i > sub_pos && args[i].rfind("--config=", 0) == 0) continue;
    final_args.push_back(args[i]);
    if (sub && i == sub_pos) final_args.insert(final_args.end(), expanded.begin(), expanded.end());
  }
  // CLI11 wants the arguments in reverse order when given a vector.
  std::reverse(final_args.begin(), final_args.end());
  try {
    app.parse(final_args);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {  // --version: printed on stdout, exit 0
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::string msg = e.what();
    for (auto& ch : msg)
      if (ch == '\n') ch = ' ';
    // A bad value from a config file: say which file and key it came from (CLI11 names the
    // option at the start, "--steps: ...", or inside, "Could not convert: --steps = 2.5").
    for (const auto& [option, where] : origin)
      for (const char* after : {":", " ", "="})
        if (msg.find(option + after) != std::string::npos) throw Error(where + ": " + msg);
    throw Error(msg + " (see --help)");
  } catch (const std::exception& e) {  // CLI11 lets std::stoll's out_of_range through (flags)
    throw Error(std::string("cannot read the command line: ") + e.what() +
                " (a value out of range, or a value given to a flag?)");
  }
  return -1;
}

}  // namespace saescale
