// What one training step communicates and holds in memory, from the shapes alone (nothing is
// allocated): `saescale plan` prints it for any size, and the trainer reports it beside what it
// counted and measured (tests check that the counted bytes equal the plan).
#pragma once
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "config.hpp"

namespace saescale::comm {

// One kind of collective of a phase: `calls` per step, each moving `bytes` (all-reduce: the
// vector; all-gather: one rank's block) among `ranks` ranks of `group`.
struct PlannedCollective {
  std::string kind, group;  // kind: allreduce, allgather; group: dp, lp, world
  int ranks = 0;
  double bytes = 0, calls = 0;
};

struct PlannedPhase {
  std::string group;                                    // the collectives' group(s)
  double calls = 0, payload_bytes = 0, sent_bytes = 0;  // per step; sent: per rank, ring volumes
  std::vector<PlannedCollective> collectives;           // what the totals are made of
};

// Per phase ("comm_decode", ...). AuxK is planned as active (some latents dead, k_aux latents
// selected per row); BatchTopK's bisection as its usual 34 counting rounds; the rare tie path of
// the batch selection (one more all-gather) is left out.
std::map<std::string, PlannedPhase> communication_plan(const Config& cfg, int64_t d, int dp,
                                                       int lp);

// Bytes per rank of every buffer the run allocates, by kind: parameters, gradients, optimizer
// state, activations (the step's B x M and B x d buffers), latent_state (per-latent counters and
// accumulators), evaluation (its temporaries; with a true dictionary of `true_features` rows, the
// cosines too), communication buffers (sharded selection candidates). Needs Kokkos initialised
// (per-thread accumulator slots).
nlohmann::json memory_plan(const Config& cfg, int64_t d, int dp, int lp, bool adam_first_moment,
                           int64_t true_features);

}  // namespace saescale::comm
