#include "preflight.hpp"

#include <algorithm>
#include <cstdio>
#include <fstream>

#include "comm/plan.hpp"
#include "device.hpp"
#include "error.hpp"
#include "host_memory.hpp"
#include "variants/traits.hpp"

namespace saescale {

namespace {
// Bytes this rank can allocate: free device memory on GPUs; on host builds the node's
// MemAvailable shared by the ranks on the node. -1 when unknown.
int64_t available_bytes(const comm::Communicator& comm) {
  if (const auto gpu = device::memory()) return gpu->free_bytes;
  // The node's share, and no more than this process's limits (ulimit -v, -d) leave it.
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  int64_t kib = -1;
  while (meminfo >> key && key != "MemAvailable:") meminfo.ignore(256, '\n');
  const int64_t own = host_available_bytes();
  if (!(meminfo >> kib)) return own;
  const int64_t share = kib * 1024 / std::max(1, comm.grid().local_size());
  return own < 0 ? share : std::min(share, own);
}

int64_t planned_bytes(const Config& cfg, int64_t d, int dp, int lp, bool first_moment,
                      int64_t features) {
  const nlohmann::json plan = comm::memory_plan(cfg, d, dp, lp, first_moment, features);
  int64_t total = 0;
  for (const auto& [kind, bytes] : plan.items()) total += bytes.get<int64_t>();
  return total;
}
}  // namespace

// Memory preflight: before anything is allocated, the run's planned peak per rank (the same plan
// the results report and `saescale plan` prints) against what this rank can get.
void check_memory(const Config& cfg, int64_t d, int64_t features, const comm::Communicator& comm) {
  const int64_t available = available_bytes(comm);
  if (available < 0) return;  // unknown: nothing to check against
  const int dp = comm.size(comm::Group::dp), lp = comm.size(comm::Group::lp);
  const bool first_moment =
      cfg.optimizer == "adam" &&
      cfg.adam_beta1.value_or(variant_traits(cfg.variant).defaults.adam_beta1) != 0;
  const int64_t need = planned_bytes(cfg, d, dp, lp, first_moment, features);
  if (need <= available) return;
  const auto gib = [](int64_t b) {
    char text[32];
    std::snprintf(text, sizeof text, "%.1f GiB", b / 1073741824.0);
    return std::string(text);
  };
  std::string fix = "a smaller --batch-size or --width";
  for (int more = lp * 2; more <= (1 << 16); more *= 2)
    if (cfg.width % more == 0 &&
        planned_bytes(cfg, d, dp, more, first_moment, features) <= available) {
      fix = "--lp " + std::to_string(more) + " (" + std::to_string(dp * more) +
            " ranks) to split the latents, or a smaller --batch-size";
      break;
    }
  throw Error("this run needs about " + gib(need) + " per rank (see `saescale plan`) but " +
              gib(available) + " is available to it: use " + fix);
}

}  // namespace saescale
