// The results file of a training run (schema saescale.result/1), assembled from a plain record of
// what the run measured: the trainer fills a RunRecord and knows nothing of the file's layout.
#pragma once
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "metrics/fidelity.hpp"
#include "metrics/work_model.hpp"

namespace saescale {

struct StepLog {
  int64_t step;
  double loss, mse, l0;
};

// --target-fvu: when the evaluation FVU first reached `target`.
struct FidelityTarget {
  double target;
  std::optional<int64_t> step;
  double train_s = 0, wall_s = 0;
};

struct RunRecord {
  nlohmann::json config;  // every option, the resolved hyper-parameters, the data source
  std::string variant;
  int64_t steps = 0, batch_size = 0, warmup_steps = 0;
  int ranks = 1;
  // Timing, reduced over ranks (metrics/timers.hpp).
  nlohmann::json step_s, phases_s;
  std::vector<double> step_times;
  std::map<std::string, metrics::Work> phase_work;  // per phase on this rank's shapes
  double flops_per_step = 0, total_train_s = 0, data_s = 0;
  bool fenced = true, auxiliary_ran = false;
  nlohmann::json sparse, communication, ceilings, memory;
  // Fidelity.
  Fidelity fidelity;
  double dead_fraction = 0;
  int64_t dead_window_tokens = 0, loss_curve_points = 0;
  std::vector<StepLog> log;  // every step
  nlohmann::json eval_curve = nlohmann::json::array();
  std::vector<FidelityTarget> targets;
};

// Each phase's work and the rates its median achieved; the step's timing, ceilings included.
nlohmann::json timing_json(const RunRecord& r);
nlohmann::json fidelity_json(const RunRecord& r);
// The whole file of a run that finished ("status": "ok").
nlohmann::json results_json(const RunRecord& r);
// A run that stopped early: "failed" (with failed_step) or "preempted" (with stopped_step).
nlohmann::json stopped_result(const std::string& status, const std::string& reason, int64_t step,
                              const nlohmann::json& config);
// The one-line summary rank 0 prints at the end.
void print_summary(const RunRecord& r);

}  // namespace saescale
