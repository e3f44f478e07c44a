#include "results.hpp"

#include <algorithm>
#include <cstdio>

namespace saescale {

namespace {
// Every phase's work (metrics/work_model.hpp; communication: the bytes sent) and the rates its
// median achieved, on this rank's shapes. Unfenced phase times are launch times: no rates then.
void annotate_phases(nlohmann::json& timing, const std::map<std::string, metrics::Work>& work,
                     bool fenced) {
  for (auto& [phase, stats] : timing["phases_s"].items()) {
    double flops = 0, bytes = 0;
    if (auto it = work.find(phase); it != work.end()) {
      flops = it->second.flops, bytes = it->second.bytes;
    } else if (timing["communication"].contains(phase)) {
      bytes = timing["communication"][phase]["sent_bytes_per_step"].get<double>();
    } else {
      continue;
    }
    const double median = stats.value("median", 0.0);
    const bool rates = fenced && median > 0;
    stats["flops"] = flops;
    stats["bytes"] = bytes;
    stats["gflops_per_s"] = rates && flops > 0 ? nlohmann::json(flops / median / 1e9) : nullptr;
    stats["gbytes_per_s"] = rates ? nlohmann::json(bytes / median / 1e9) : nullptr;
  }
}
}  // namespace

nlohmann::json timing_json(const RunRecord& r) {
  nlohmann::json timing;
  timing["step_s"] = r.step_s;
  timing["phases_s"] = r.phases_s;
  const double median = r.step_s.value("median", 0.0);
  timing["tokens_per_s"] = median > 0 ? nlohmann::json(r.batch_size / median) : nullptr;
  timing["flops_per_step"] = r.flops_per_step;  // the whole step's, all ranks (work model)
  timing["warmup_steps"] = r.warmup_steps;
  timing["total_train_s"] = r.total_train_s;
  timing["data_s"] = r.data_s;
  timing["fenced"] = r.fenced;
  timing["auxiliary_ran"] = r.auxiliary_ran;  // AuxK found dead latents in some step
  timing["sparse"] = r.sparse;
  timing["communication"] = r.communication;
  timing["ceilings"] = r.ceilings;
  timing["gemm_floor_s"] = r.ceilings["gemm_floor_s"];
  timing["floor_ratio"] = r.ceilings["floor_ratio"];
  annotate_phases(timing, r.phase_work, r.fenced);
  return timing;
}

nlohmann::json fidelity_json(const RunRecord& r) {
  nlohmann::json fidelity = r.fidelity.to_json();
  fidelity["dead_fraction"] = r.dead_fraction;
  fidelity["dead_window_tokens"] = r.dead_window_tokens;
  fidelity["trained_tokens"] = r.steps * r.batch_size;
  fidelity["final_train_loss"] = r.log.back().loss;
  fidelity["eval_curve"] = r.eval_curve;
  nlohmann::json curve = nlohmann::json::array();
  const int64_t points = std::min<int64_t>(r.loss_curve_points, r.steps);
  for (int64_t k = 0; k < points; ++k) {
    const auto& l = r.log[points == 1 ? r.steps - 1 : k * (r.steps - 1) / (points - 1)];
    curve.push_back({{"step", l.step}, {"loss", l.loss}, {"mse", l.mse}, {"l0", l.l0}});
  }
  fidelity["loss_curve"] = curve;
  nlohmann::json targets = nlohmann::json::array();
  for (const auto& t : r.targets) {
    const auto opt = [&](auto v) { return t.step ? nlohmann::json(v) : nlohmann::json(); };
    targets.push_back({{"target_fvu", t.target},
                       {"reached", t.step.has_value()},
                       {"step", opt(t.step.value_or(0))},
                       {"tokens", opt(t.step.value_or(0) * r.batch_size)},
                       {"train_s", opt(t.train_s)},
                       {"wall_s", opt(t.wall_s)}});
  }
  fidelity["time_to_fidelity"] = targets;
  return fidelity;
}

// One Google Benchmark iteration record per timed step (benchmarks/compare.py reads them).
nlohmann::json benchmarks_json(const RunRecord& r) {
  nlohmann::json benchmarks = nlohmann::json::array();
  const std::string name = "saescale/" + r.variant + "/step";
  for (size_t i = 0; i < r.step_times.size(); ++i)
    benchmarks.push_back({{"name", name},
                          {"run_name", name},
                          {"run_type", "iteration"},
                          {"repetitions", r.step_times.size()},
                          {"repetition_index", i},
                          {"threads", r.ranks},
                          {"iterations", 1},
                          {"real_time", r.step_times[i] * 1e3},
                          {"cpu_time", r.step_times[i] * 1e3},
                          {"time_unit", "ms"}});
  return benchmarks;
}

nlohmann::json results_json(const RunRecord& r) {
  return {{"schema", "saescale.result/1"},   {"status", "ok"},     {"config", r.config},
          {"timing", timing_json(r)},        {"memory", r.memory}, {"fidelity", fidelity_json(r)},
          {"benchmarks", benchmarks_json(r)}};
}

nlohmann::json stopped_result(const std::string& status, const std::string& reason, int64_t step,
                              const nlohmann::json& config) {
  return {{"schema", "saescale.result/1"},
          {"status", status},
          {"reason", reason},
          {status == "failed" ? "failed_step" : "stopped_step", step},
          {"config", config}};
}

void print_summary(const RunRecord& r) {
  const double median = r.step_s.value("median", 0.0);
  const Fidelity& fid = r.fidelity;
  std::printf("done: FVU %.4f  L0 %.2f  dead %.1f%%  ", fid.fvu, fid.l0, 100.0 * r.dead_fraction);
  if (median > 0)
    std::printf("step median %.2f ms  %.0f tok/s", median * 1e3, r.batch_size / median);
  else  // every step was a warm-up step
    std::printf("no step timed (all %lld were --warmup-steps)", (long long)r.steps);
  if (fid.mmcs)
    std::printf("  MMCS %.3f  recovered %.1f%%", *fid.mmcs, 100 * *fid.recovered_fraction);
  if (r.ceilings["floor_ratio"].is_number())
    std::printf("  floor_ratio %.3f", r.ceilings["floor_ratio"].get<double>());
  std::printf("\n");
}

}  // namespace saescale
