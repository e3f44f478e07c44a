#include "ceilings.hpp"

#include <algorithm>
#include <chrono>
#include <set>

#include "kernels/reduce.hpp"
#include "metrics/timers.hpp"
#include "metrics/work_model.hpp"

namespace saescale {

// The median of `repetitions` fenced runs of `work` after one warm-up, the max over ranks (the
// step waits for the slowest rank).
double fenced_median(comm::Communicator& comm, const std::function<void()>& work, int repetitions) {
  std::vector<double> times;
  for (int r = 0; r < repetitions + 1; ++r) {
    ExecSpace().fence();
    const auto t0 = std::chrono::steady_clock::now();
    work();
    ExecSpace().fence();
    if (r > 0)  // the first is a warm-up
      times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  double median = summarize(times)["median"].get<double>();
  comm.allreduce_host_max("ceilings", comm::Group::world, &median, 1);
  return median;
}

double sparse_crossover(const std::vector<std::pair<int64_t, double>>& sparse_over_dense,
                        double required_ratio) {
  double below = 0, below_ratio = 0;  // the last size that paid (none yet: 0 entries)
  for (const auto& [entries, ratio] : sparse_over_dense) {
    if (ratio > required_ratio) {
      if (below == 0) return 0;  // not even the smallest size paid: dense
      // linear in between (the sparse time is linear in the entries, the dense one constant)
      return below + (entries - below) * (required_ratio - below_ratio) / (ratio - below_ratio);
    }
    below = double(entries), below_ratio = ratio;
  }
  return below;  // every measured size paid: up to the largest (never extrapolated beyond)
}

// --sparse auto: up to how many entries per row the sparse products pay on this machine at these
// shapes. The four products the sparse path replaces (Model::decode and the three backward
// products, as a step runs them) run on random rows of 8, 32, 128, ... entries up to the capacity,
// stopping at the first size that does not pay. Each repetition times the dense fallback and then
// the sparse products back to back, so that a co-runner slows both alike, and the size's ratio is
// the median over repetitions. The crossover is interpolated between measured sizes, never
// extrapolated, where sparse saves kSparseMustSave of the dense time.
nlohmann::json calibrate_sparse(Model& m, const Hyper& h, Precision precision, int64_t cap,
                                uint64_t seed) {
  constexpr int kRepetitions = 3;
  SparseProducts& sparse = *m.sparse();
  // The step's phases with only the four products (and what their phases hold) running.
  const std::set<std::string> timed = {"decode_gemm", "backward_decoder_gemm",
                                       "backward_activation_gemm", "backward_encoder_gemm"};
  const PhaseRunner products_only = [&](const char* phase, const std::function<void()>& work) {
    if (timed.count(phase)) work();
  };
  const auto seconds = [&](bool sparse_rows) {
    sparse.choose(sparse_rows);
    ExecSpace().fence();
    const auto t0 = std::chrono::steady_clock::now();
    m.forward(h, precision, products_only);
    m.backward(h, precision, products_only);
    ExecSpace().fence();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  std::vector<int64_t> sizes;
  for (int64_t entries = 8; entries < cap; entries *= 4) sizes.push_back(entries);
  sizes.push_back(cap);
  std::vector<std::pair<int64_t, double>> ratios;
  std::vector<double> dense_times;
  nlohmann::json sparse_times = nlohmann::json::object(), ratio_json = nlohmann::json::object();
  for (const int64_t entries : sizes) {
    sparse.fill_rows(entries, seed + entries);
    if (ratios.empty()) seconds(false), seconds(true);  // warm-up
    std::vector<double> pair_ratios, sparse_s;
    for (int r = 0; r < kRepetitions; ++r) {
      double t[2] = {seconds(false), seconds(true)};
      m.comm().allreduce_host_max("calibration", comm::Group::world, t, 2);  // the slowest rank
      dense_times.push_back(t[0]), sparse_s.push_back(t[1]), pair_ratios.push_back(t[1] / t[0]);
    }
    const double ratio = summarize(pair_ratios)["median"].get<double>();
    ratios.emplace_back(entries, ratio);
    sparse_times[std::to_string(entries)] = summarize(sparse_s)["median"];
    ratio_json[std::to_string(entries)] = ratio;
    if (ratio > 1 - kSparseMustSave) break;
  }
  sparse.reset_counts();
  const double crossover = sparse_crossover(ratios, 1 - kSparseMustSave);
  sparse.set_limit(crossover);
  return {{"dense_products_s", summarize(dense_times)["median"]},
          {"sparse_products_s", sparse_times},
          {"sparse_over_dense", ratio_json},
          {"required_saving", kSparseMustSave},
          {"crossover_entries_per_row", crossover}};
}

// What this machine can do, measured in the same run: the step's five GEMMs on this rank's
// shapes timed alone (the GEMM floor; the slowest rank's) and a BabelStream-style copy kernel
// (memory bandwidth as this build's Kokkos kernels see it).
nlohmann::json measure_ceilings(Model& m, Precision precision, int repetitions,
                                double step_median) {
  nlohmann::json out = {{"gemm_floor_s", nullptr},
                        {"floor_ratio", nullptr},
                        {"gemm_gflops_per_s", nullptr},
                        {"stream_copy_gbytes_per_s", nullptr},
                        {"stream_copy_bytes", nullptr}};
  if (step_median <= 0) return out;
  const auto& s = m.buffers();
  m.materialize_f();  // the last step's f, as the GEMMs would read it
  Products gemms;     // the step's products as GEMMs, whatever path the run took
  ParamStore& p = m.params();
  const double floor = fenced_median(
      m.comm(),
      [&] {
        gemms.encode(p, s, precision);
        gemms.decode(p, s, precision);
        gemms.decoder_gradient(p, s, 1, precision);
        gemms.activation_gradient(p, s, 1, precision);
        gemms.encoder_gradient(p, s, precision);
      },
      repetitions);
  const double B = double(m.batch()), d = double(m.d()), M = double(m.width());
  out["gemm_floor_s"] = floor;
  out["floor_ratio"] = step_median / floor;
  out["gemm_gflops_per_s"] = 5 * metrics::gemm_work(B, M, d).flops / floor / 1e9;
  // BabelStream's default size (2^25 elements), far beyond any last-level cache: DRAM (HBM).
  const int64_t n = int64_t(1) << 25;
  Vector a("saescale::ceilings::copy_a", n), b("saescale::ceilings::copy_b", n);
  const double copy = fenced_median(
      m.comm(), [&] { kernels::stream_copy("saescale::ceilings::stream_copy", a, b); }, 5);
  out["stream_copy_bytes"] = 2.0 * n * sizeof(real);
  out["stream_copy_gbytes_per_s"] = 2.0 * n * sizeof(real) / copy / 1e9;
  return out;
}

}  // namespace saescale
