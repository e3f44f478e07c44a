#include "metrics/timers.hpp"

#include <algorithm>
#include <functional>

#include "comm/communicator.hpp"
#include "error.hpp"

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
  double sum = 0;
  for (const double x : v) sum += x;
  return {{"median", quantile(0.5)},
          {"p10", quantile(0.1)},
          {"p90", quantile(0.9)},
          {"min", v.front()},
          {"max", v.back()},
          {"mean", sum / v.size()},
          {"n", v.size()}};
}

// The step itself is always fenced at both ends: only the fences between phases are optional.
void PhaseTimers::begin_step() {
  ExecSpace().fence();
  current_.clear();
  nested_.clear();
  step_start_ = Clock::now();
}

double PhaseTimers::end_step(bool timed) {
  ExecSpace().fence();
  const double total = std::chrono::duration<double>(Clock::now() - step_start_).count();
  // The rest of the step: host code between phases and the waits for the fences that start them
  // (microseconds each on a GPU: a visible share of a short step). The phases then add up to it.
  double phases = 0;
  for (const auto& [phase, seconds] : current_) phases += seconds;
  current_[kBetweenPhases] = total - phases;
  if (!seen_.count(kBetweenPhases)) seen_.insert(kBetweenPhases), order_.push_back(kBetweenPhases);
  if (timed) {
    steps_.push_back(total);
    for (const auto& phase : order_) {  // aligned with steps_: 0 where a phase did not run
      auto& v = phases_[phase];
      v.resize(steps_.size() - 1, 0.0);
      auto it = current_.find(phase);
      v.push_back(it == current_.end() ? 0.0 : it->second);
    }
  }
  return total;
}

void PhaseTimers::reduce_across_ranks(comm::Communicator& comm) {
  const auto world = comm::Group::world;
  if (!comm.grid().uses_mpi()) return;  // no ranks to compare
  const int ranks = comm.size(world);
  // Every rank runs the same phases in the same order; check before reducing aligned arrays.
  std::string names;
  for (const auto& phase : order_) names += phase + ";";
  const int64_t hash = static_cast<int64_t>(std::hash<std::string>{}(names) ^ steps_.size());
  std::vector<int64_t> hashes(ranks);
  comm.allgather_host("timing", world, &hash, 1, hashes.data());
  for (const int64_t h : hashes)
    if (h != hash) throw Error("internal error: ranks timed different phases or step counts");
  const int n = static_cast<int>(steps_.size());
  comm.allreduce_host_max("timing", world, steps_.data(), n);
  for (const auto& phase : order_) {
    auto& v = phases_[phase];
    v.resize(n, 0.0);
    auto& lo_v = phases_min_[phase] = v;
    auto& mean_v = phases_mean_[phase] = v;
    comm.allreduce_host_min("timing", world, lo_v.data(), n);
    comm.allreduce_host_sum("timing", world, mean_v.data(), n);
    for (auto& t : mean_v) t /= ranks;
    comm.allreduce_host_max("timing", world, v.data(), n);
  }
}

nlohmann::json PhaseTimers::phases_json() const {
  nlohmann::json out = nlohmann::json::object();
  for (const auto& phase : order_) {
    auto it = phases_.find(phase);
    if (it == phases_.end()) continue;
    out[phase] = summarize(it->second);
    auto lo = phases_min_.find(phase), mean = phases_mean_.find(phase);
    if (lo != phases_min_.end() && !it->second.empty())
      out[phase]["ranks"] = {{"min", summarize(lo->second)["median"]},
                             {"mean", summarize(mean->second)["median"]},
                             {"max", out[phase]["median"]}};
  }
  return out;
}

nlohmann::json PhaseTimers::save_state() const {
  return {{"steps", steps_}, {"phases", phases_}, {"order", order_}};
}

void PhaseTimers::load_state(const nlohmann::json& state) {
  steps_ = state.at("steps").get<std::vector<double>>();
  phases_ = state.at("phases").get<std::map<std::string, std::vector<double>>>();
  order_ = state.at("order").get<std::vector<std::string>>();
  seen_ = std::set<std::string>(order_.begin(), order_.end());
}

}  // namespace saescale
