#include "metrics/timers.hpp"

#include <algorithm>

namespace saescale {

nlohmann::json summarize(std::vector<double> v) {
  if (v.empty()) return {{"n", 0}};
  std::sort(v.begin(), v.end());
  auto quantile = [&](double q) {
    const double pos = q * (v.size() - 1);
    const size_t lo = static_cast<size_t>(pos);
    const size_t hi = std::min(lo + 1, v.size() - 1);
    return v[lo] + (pos - lo) * (v[hi] - v[lo]);
  };
  return {{"median", quantile(0.5)}, {"p10", quantile(0.1)}, {"p90", quantile(0.9)},
          {"min", v.front()},        {"max", v.back()},      {"n", v.size()}};
}

void PhaseTimers::begin_step() {
  if (fence_) ExecSpace().fence();
  current_.clear();
  step_start_ = Clock::now();
}

double PhaseTimers::end_step(bool timed) {
  if (fence_) ExecSpace().fence();
  const double total = std::chrono::duration<double>(Clock::now() - step_start_).count();
  if (timed) {
    steps_.push_back(total);
    for (const auto& [phase, t] : current_) phases_[phase].push_back(t);
  }
  return total;
}

nlohmann::json PhaseTimers::phases_json() const {
  nlohmann::json out = nlohmann::json::object();
  for (const auto& phase : order_) {
    auto it = phases_.find(phase);
    if (it != phases_.end()) out[phase] = summarize(it->second);
  }
  return out;
}

}  // namespace saescale
