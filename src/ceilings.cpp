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

// --sparse auto: where the sparse products stop paying on this machine at these shapes. The four
// products the sparse path replaces (Model::decode and the three backward products, as a step
// runs them) are timed on random rows of two sizes, sparse and as their dense fallback; the sparse
// time grows linearly with the entries per row (O(B L d)), so the crossover L* is where that line
// meets the dense time. A step whose rows average more than L* entries runs its products dense.
nlohmann::json calibrate_sparse(Model& m, const Hyper& h, Precision precision, int64_t cap,
                                uint64_t seed) {
  // Rows are filled up to the capacity: two sizes within it (one if the capacity is 1).
  const int64_t large = std::min<int64_t>(cap, 64), small = std::max<int64_t>(1, large / 8);
  SparseProducts& sparse = *m.sparse();
  // The step's phases with only the four products (and what their phases hold) running.
  const std::set<std::string> timed = {"decode_gemm", "backward_decoder_gemm",
                                       "backward_activation_gemm", "backward_encoder_gemm"};
  const PhaseRunner products_only = [&](const char* phase, const std::function<void()>& work) {
    if (timed.count(phase)) work();
  };
  const auto products = [&](int64_t entries, bool sparse_rows) {
    sparse.fill_rows(entries, seed + entries);
    sparse.choose(sparse_rows);
    return fenced_median(
        m.comm(),
        [&] {
          m.forward(h, precision, products_only);
          m.backward(h, precision, products_only);
        },
        3);
  };
  const double dense = products(small, false);
  const double t_small = products(small, true);
  const double t_large = large > small ? products(large, true) : t_small;
  sparse.reset_counts();
  const double per_entry = large > small ? (t_large - t_small) / double(large - small) : 0;
  const double crossover = per_entry > 0     ? std::max(0.0, small + (dense - t_small) / per_entry)
                           : t_small < dense ? double(cap)  // flat: sparse wins up to capacity
                                             : 0.0;
  sparse.set_limit(crossover);
  return {
      {"dense_products_s", dense},
      {"sparse_products_s", {{std::to_string(small), t_small}, {std::to_string(large), t_large}}},
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
