// Measurements a run makes besides its steps, at its own shapes on its own machine: what the
// hardware can do (the GEMM floor, memory bandwidth) and where --sparse auto should switch paths.
#pragma once
#include <functional>

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

// --sparse auto: times the sparse products against their GEMMs on random rows and sets the
// crossover (entries per row) as m's sparse limit. m must have sparse products.
nlohmann::json calibrate_sparse(Model& m, const Hyper& h, Precision precision, int64_t capacity,
                                uint64_t seed);

}  // namespace saescale
