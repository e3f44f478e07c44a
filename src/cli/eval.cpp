// `saescale eval`: fidelity of saved weights on data (and ground-truth recovery if known).
#include <cstdio>

#include "cli/commands.hpp"
#include "data/source.hpp"
#include "error.hpp"
#include "io/outputs.hpp"
#include "io/results.hpp"
#include "trainer.hpp"

namespace saescale::cli {

int eval(const Config& cfg) {
  if (cfg.init.empty())
    throw Error("eval needs --init WEIGHTS (a directory with cfg.json, or .safetensors)");
  std::vector<std::string> inputs = data_files(cfg.data);
  for (const auto& f : io::weights_files(cfg.init)) inputs.push_back(f);
  check_output_path(cfg.out, cfg.force, inputs);
  const Precision precision = parse_precision(cfg.precision);
  check_precision_supported(precision);
  nlohmann::json file_cfg;
  auto weights = read_weights(cfg.init, &file_cfg);
  // The variant comes from cfg.json when present (saescale's own entry, else SAELens'
  // architecture); --variant otherwise.
  std::string variant = cfg.variant;
  if (file_cfg.contains("saescale")) {
    variant = file_cfg["saescale"].value("variant", variant);
  } else if (const std::string arch = file_cfg.value("architecture", ""); !arch.empty()) {
    variant = variant_for_architecture(arch);
    if (variant.empty())
      throw Error(cfg.init + ": cfg.json's architecture '" + arch +
                  "' is not one saescale reads (standard, jumprelu, gated, topk)");
  }
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
  std::vector<float> rows(n * d);
  data->read_rows(total < 0 ? (int64_t(1) << 50) : 0, n, rows.data());

  Model model(variant, d, width);
  const Resolved r = resolve_hyper(cfg, model.variant().traits().defaults);
  const Hyper h = make_hyper(cfg, r, width);
  model.allocate(std::min(cfg.batch_size, n));
  if (cfg.sparse != "off") model.enable_sparse(cfg.sparse_capacity_or_default());
  model.initialize(h, cfg.seed);
  model.import_tensors(std::move(weights), 1.0, cfg.init);
  Fidelity f = evaluate(model, h, precision, rows, n);
  if (const auto* truth = data->ground_truth()) ground_truth_recovery(model, *truth, f);

  std::printf("eval %s (%s, d=%lld, M=%lld) on %lld tokens: FVU %.5f  L0 %.3f  shrinkage %.4f",
              cfg.init.c_str(), variant.c_str(), (long long)d, (long long)width, (long long)n,
              f.fvu, f.l0, f.shrinkage);
  if (f.mmcs) std::printf("  MMCS %.4f  recovered %.1f%%", *f.mmcs, 100 * *f.recovered_fraction);
  std::printf("\n");
  if (!cfg.out.empty()) {
    nlohmann::json out = {{"schema", "saescale.eval/1"}, {"weights", cfg.init},
                          {"variant", variant},          {"data", data->describe()},
                          {"fidelity", f.to_json()},     {"context", run_context(1, 1, 1)}};
    write_results(cfg.out, out, cfg.force);
  }
  return 0;
}

}  // namespace saescale::cli
