// Checks a run makes before it allocates anything.
#pragma once
#include "comm/communicator.hpp"
#include "config.hpp"

namespace saescale {

// Refuses (one clear error, suggesting --lp) a run whose planned memory per rank (the plan the
// results report and `saescale plan` prints) exceeds what the rank can allocate.
void check_memory(const Config& cfg, int64_t d, int64_t true_features,
                  const comm::Communicator& comm);

}  // namespace saescale
