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

namespace saescale {

// median, p10, p90, min, max, n of a sample (linear interpolation between order statistics).
nlohmann::json summarize(std::vector<double> samples);

class PhaseTimers {
 public:
  explicit PhaseTimers(bool fence = true) : fence_(fence) {}

  template <class Work>
  void run(const char* phase, Work&& work) {
    if (fence_) ExecSpace().fence();
    const auto t0 = Clock::now();
    work();
    if (fence_) ExecSpace().fence();
    current_[phase] += std::chrono::duration<double>(Clock::now() - t0).count();
    if (!seen_.count(phase)) seen_.insert(phase), order_.push_back(phase);
  }

  void begin_step();
  // Ends the step; its times enter the statistics only when `timed` (warm-up steps are not).
  double end_step(bool timed);

  const std::vector<double>& step_times() const { return steps_; }
  nlohmann::json phases_json() const;
  nlohmann::json steps_json() const { return summarize(steps_); }

 private:
  using Clock = std::chrono::steady_clock;
  bool fence_;
  Clock::time_point step_start_;
  std::map<std::string, double> current_;
  std::map<std::string, std::vector<double>> phases_;
  std::vector<std::string> order_;
  std::set<std::string> seen_;
  std::vector<double> steps_;
};

}  // namespace saescale
