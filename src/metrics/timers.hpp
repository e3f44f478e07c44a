// Phase timers for the training step. Each phase is bracketed by execution-space fences (so the
// time is the phase's own work, not queued launches) unless fencing is turned off, in which case
// only the step total is meaningful.
#pragma once
#include <chrono>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kernels/types.hpp"

namespace saescale::comm {
class Communicator;
}

namespace saescale {

// median, p10, p90 (linear interpolation between order statistics), min, max, mean, n of a
// sample. Means add up (the phases' means sum to the step's), medians need not.
nlohmann::json summarize(std::vector<double> samples);

class PhaseTimers {
 public:
  // The phase that holds a step's time outside every named phase.
  static constexpr const char* kBetweenPhases = "between_phases";

  explicit PhaseTimers(bool fence = true) : fence_(fence) {}

  // Times `work` as `phase`. Phases may nest (a collective inside the selection): a nested phase's
  // time is booked to it alone, so the phases of a step add up to the step.
  template <class Work>
  void run(const std::string& phase, Work&& work) {
    if (fence_) ExecSpace().fence();
    const auto t0 = Clock::now();
    nested_.push_back(0.0);
    work();
    if (fence_) ExecSpace().fence();
    const double elapsed = std::chrono::duration<double>(Clock::now() - t0).count();
    const double inner = nested_.back();
    nested_.pop_back();
    if (!nested_.empty()) nested_.back() += elapsed;
    current_[phase] += elapsed - inner;
    if (!seen_.count(phase)) seen_.insert(phase), order_.push_back(phase);
  }

  void begin_step();
  // Ends the step; its times enter the statistics only when `timed` (warm-up steps are not).
  double end_step(bool timed);

  // Across ranks (collective over every rank; no-op without MPI): each step's time becomes the
  // max over ranks; each phase keeps the per-step min, mean and max over ranks (its statistics
  // are those of the max, and `ranks` has the medians of min/mean/max).
  void reduce_across_ranks(comm::Communicator& comm);

  const std::vector<double>& step_times() const { return steps_; }
  // Everything recorded so far, for checkpoints (JSON round-trips doubles exactly).
  nlohmann::json save_state() const;
  void load_state(const nlohmann::json& state);
  nlohmann::json phases_json() const;
  nlohmann::json steps_json() const { return summarize(steps_); }

 private:
  using Clock = std::chrono::steady_clock;
  bool fence_;
  Clock::time_point step_start_;
  std::map<std::string, double> current_;
  std::map<std::string, std::vector<double>> phases_;  // per timed step (0: did not run)
  std::map<std::string, std::vector<double>> phases_min_, phases_mean_;  // after the reduction
  std::vector<std::string> order_;
  std::set<std::string> seen_;
  std::vector<double> steps_;
  std::vector<double> nested_;  // time of nested phases, per open phase
};

}  // namespace saescale
