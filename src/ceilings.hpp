// Measurements a run makes besides its steps, at its own shapes on its own machine: what the
// hardware can do (the GEMM floor, memory bandwidth) and where --sparse auto should switch paths.
#pragma once
#include <functional>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "model.hpp"

namespace saescale {

// The median of `repetitions` fenced runs of `work` after one warm-up, the max over ranks
// (collective over every rank).
double fenced_median(comm::Communicator& comm, const std::function<void()>& work, int repetitions);

// The step's five products as GEMMs on this rank's shapes, timed alone (the GEMM floor, the
// slowest rank's; floor_ratio = step_median / floor), and a BabelStream-style copy kernel. Nulls
// when step_median <= 0 (no step was timed).
nlohmann::json measure_ceilings(Model& m, Precision precision, int repetitions, double step_median);

// --sparse auto: the sparse products must take at most 1 - kSparseMustSave of their GEMMs' time
// to be chosen (calibration noise then costs a little speed instead of picking the slower path).
constexpr double kSparseMustSave = 0.1;

// The entries per row up to which the sparse products pay, from their time over the GEMMs' at
// growing sizes (ascending; the last may not pay): 0 if the first does not pay, the largest if all
// do, else interpolated linearly to where the ratio reaches required_ratio.
double sparse_crossover(const std::vector<std::pair<int64_t, double>>& sparse_over_dense,
                        double required_ratio);

// --sparse auto: times the sparse products against their GEMMs on random rows of growing size up
// to the capacity and sets the crossover (entries per row) as m's sparse limit. Collective; m must
// have sparse products.
nlohmann::json calibrate_sparse(Model& m, const Hyper& h, Precision precision, int64_t capacity,
                                uint64_t seed);

}  // namespace saescale
