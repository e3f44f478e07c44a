// `saescale eval`: fidelity of saved weights on data (and ground-truth recovery if known).
#include <algorithm>
#include <cstdio>

#include "checked.hpp"
#include "cli/commands.hpp"
#include "data/source.hpp"
#include "error.hpp"
#include "host_memory.hpp"
#include "io/results.hpp"
#include "trainer.hpp"

namespace saescale::cli {

int eval(const Config& cfg) {
  if (cfg.init.empty())
    throw Error("eval needs --init WEIGHTS (a directory with cfg.json, or .safetensors)");
  check_output_path(cfg.out, cfg.force, input_files(cfg));
  const Precision precision = parse_precision(cfg.precision);
  check_precision_supported(precision);
  SavedSae saved = read_saved_sae(cfg.init);
  // The variant and k come from cfg.json when it has them (saescale's or SAELens'); --variant
  // and --k otherwise (a given --k wins: a TopK SAE can be evaluated at another k).
  const Config run = with_saved_sae(cfg, saved);
  const std::string& variant = run.variant;
  auto& weights = saved.tensors;
  int64_t width = 0, d = 0;
  for (const auto& t : weights)
    if (t.name == "W_enc" && t.shape.size() == 2) d = t.shape[0], width = t.shape[1];
  if (width == 0) throw Error(cfg.init + ": no 2-D tensor 'W_enc' in the weights");

  // Weights are stored for raw activations (the scalar folded in), so evaluate without scaling.
  if (cfg.d_model && cfg.d_model != d)
    throw Error("--d-model " + std::to_string(cfg.d_model) + " but the weights in " + cfg.init +
                " have d_in = " + std::to_string(d));
  // Files say their own d (checked below); synthetic data is generated at the weights' d.
  const bool synthetic = cfg.data == "synthetic" || cfg.data.rfind("synthetic:", 0) == 0;
  auto data = open_data_source(
      {cfg.data, synthetic ? d : 0, cfg.seed, 1, cfg.eval_tokens, cfg.ground_truth});
  if (data->dim() != d)
    throw Error(cfg.data + ": rows have d = " + std::to_string(data->dim()) +
                " but the weights in " + cfg.init + " have d_in = " + std::to_string(d));
  const int64_t total = data->total_rows();
  const int64_t n = total < 0 ? cfg.eval_tokens : std::min(cfg.eval_tokens, total);
  const int64_t row_floats = checked_elements(n, d, "--eval-tokens x d");
  checked_elements(std::min(cfg.batch_size, n), width, "--batch-size x latents");
  check_host_memory(4 * row_floats, "--eval-tokens " + std::to_string(n),
                    "evaluate fewer tokens (--eval-tokens)");
  std::vector<float> rows(row_floats);
  data->read_rows(total < 0 ? (int64_t(1) << 50) : 0, n, rows.data());

  Model model(variant, d, width);
  const Resolved r = resolve_hyper(run, model.variant().traits().defaults);
  const Hyper h = make_hyper(run, r, width);
  model.allocate(std::min(cfg.batch_size, n));
  if (cfg.sparse != "off") model.enable_sparse(run.sparse_capacity_or_default());
  model.initialize(h, cfg.seed);
  model.import_tensors(std::move(weights), 1.0, cfg.init, saved.applies_b_dec);
  Fidelity f = evaluate(model, h, precision, rows, n);
  if (const auto* truth = data->ground_truth()) ground_truth_recovery(model, *truth, f);

  std::printf("eval %s (%s, d=%lld, M=%lld) on %lld tokens: FVU %.5f  L0 %.3f  shrinkage %.4f",
              cfg.init.c_str(), variant.c_str(), (long long)d, (long long)width, (long long)n,
              f.fvu, f.l0, f.shrinkage);
  if (f.mmcs) std::printf("  MMCS %.4f  recovered %.1f%%", *f.mmcs, 100 * *f.recovered_fraction);
  std::printf("\n");
  if (!cfg.out.empty()) {
    // What was evaluated: the first n rows (the train/eval split of `train` does not apply).
    nlohmann::json described = data->describe();
    described.erase("train_rows");
    described.erase("eval_rows");
    described["rows_evaluated"] = n;
    nlohmann::json out = {{"schema", "saescale.eval/1"},
                          {"weights", cfg.init},
                          {"variant", variant},
                          {"k", run.k},
                          {"data", described},
                          {"fidelity", f.to_json()},
                          {"context", run_context(1, 1, 1)}};
    write_results(cfg.out, out, cfg.force);
  }
  return 0;
}

}  // namespace saescale::cli
