#include "comm/grid.hpp"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#include "comm/mpi_check.hpp"
#include "error.hpp"

namespace saescale::comm {

const char* group_name(Group g) {
  return g == Group::world ? "world" : g == Group::dp ? "dp" : "lp";
}

void check_grid(int ranks, int64_t dp, int64_t lp) {
  const std::string launch =
      " (" + std::to_string(ranks) + " rank" + (ranks == 1 ? "" : "s") + " from the launcher)";
  if (lp < 1) throw Error("--lp must be >= 1" + launch);
  if (dp < 0) throw Error("--dp must be >= 1 (or 0: ranks / lp)" + launch);
  if (ranks % lp != 0)
    throw Error("--lp " + std::to_string(lp) + " does not divide the number of ranks" + launch);
  const int64_t resolved = dp == 0 ? ranks / lp : dp;
  if (resolved * lp != ranks)
    throw Error("--dp " + std::to_string(resolved) + " x --lp " + std::to_string(lp) + " = " +
                std::to_string(resolved * lp) + " ranks, but the job has " + std::to_string(ranks) +
                ": make dp x lp equal the number of ranks");
}

Grid Grid::create(int64_t dp, int64_t lp) {
  Grid g;
  SAESCALE_MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &g.world_size_));
  SAESCALE_MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &g.world_rank_));
  check_grid(g.world_size_, dp, lp);
  g.world_ = MPI_COMM_WORLD;
  g.lp_ = static_cast<int>(lp);
  g.dp_ = g.world_size_ / g.lp_;
  g.dp_rank_ = g.world_rank_ / g.lp_;
  g.lp_rank_ = g.world_rank_ % g.lp_;
  // dp group: the same latent shard in every replica; lp group: the shards of one replica.
  SAESCALE_MPI_CHECK(MPI_Comm_split(MPI_COMM_WORLD, g.lp_rank_, g.dp_rank_, &g.dp_comm_));
  SAESCALE_MPI_CHECK(MPI_Comm_split(MPI_COMM_WORLD, g.dp_rank_, g.lp_rank_, &g.lp_comm_));
  MPI_Comm node = MPI_COMM_NULL;
  SAESCALE_MPI_CHECK(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, g.world_rank_,
                                         MPI_INFO_NULL, &node));
  SAESCALE_MPI_CHECK(MPI_Comm_rank(node, &g.local_rank_));
  SAESCALE_MPI_CHECK(MPI_Comm_size(node, &g.local_size_));
  SAESCALE_MPI_CHECK(MPI_Comm_free(&node));
  char host[256] = {};
  if (gethostname(host, sizeof host - 1) == 0) g.host_ = host;
  return g;
}

Grid::Grid(Grid&& o) noexcept { *this = std::move(o); }

Grid& Grid::operator=(Grid&& o) noexcept {
  if (this == &o) return *this;
  release();
  world_ = std::exchange(o.world_, MPI_COMM_NULL);
  dp_comm_ = std::exchange(o.dp_comm_, MPI_COMM_NULL);
  lp_comm_ = std::exchange(o.lp_comm_, MPI_COMM_NULL);
  world_rank_ = o.world_rank_, world_size_ = o.world_size_, dp_ = o.dp_, lp_ = o.lp_;
  dp_rank_ = o.dp_rank_, lp_rank_ = o.lp_rank_, local_rank_ = o.local_rank_;
  local_size_ = o.local_size_, host_ = o.host_;
  return *this;
}

Grid::~Grid() { release(); }

void Grid::release() {
  int finalized = 1;
  MPI_Finalized(&finalized);
  if (finalized) return;
  for (MPI_Comm* c : {&dp_comm_, &lp_comm_})
    if (*c != MPI_COMM_NULL) MPI_Comm_free(c);  // unchecked: a destructor must not throw
}

nlohmann::json Grid::placement(int device_id) const {
  struct Entry {
    char host[64];
    int local_rank, device;
  };
  Entry mine{};
  std::strncpy(mine.host, host_.c_str(), sizeof mine.host - 1);
  mine.local_rank = local_rank_;
  mine.device = device_id;
  std::vector<Entry> all(world_size_);
  if (uses_mpi())
    SAESCALE_MPI_CHECK(
        MPI_Allgather(&mine, sizeof(Entry), MPI_BYTE, all.data(), sizeof(Entry), MPI_BYTE, world_));
  else
    all[0] = mine;
  nlohmann::json out = nlohmann::json::array();
  for (int r = 0; r < world_size_; ++r)
    out.push_back({{"rank", r},
                   {"dp_rank", r / lp_},
                   {"lp_rank", r % lp_},
                   {"host", all[r].host},
                   {"local_rank", all[r].local_rank},
                   {"device", all[r].device}});
  return out;
}

void agree(const Grid& grid, const std::function<void()>& setup) {
  std::string message;
  bool failed = false;
  try {
    setup();
  } catch (const std::exception& e) {
    failed = true;
    message = is_allocation_failure(e) ? out_of_memory_message(e.what()) : e.what();
  }
  if (!grid.uses_mpi()) {
    if (failed) throw Error(message);
    return;
  }
  int first = failed ? grid.world_rank() : std::numeric_limits<int>::max();
  SAESCALE_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &first, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD));
  if (first == std::numeric_limits<int>::max()) return;
  int length = static_cast<int>(message.size());
  SAESCALE_MPI_CHECK(MPI_Bcast(&length, 1, MPI_INT, first, MPI_COMM_WORLD));
  message.resize(length);
  SAESCALE_MPI_CHECK(MPI_Bcast(message.data(), length, MPI_CHAR, first, MPI_COMM_WORLD));
  throw Error(first == 0 ? message : "rank " + std::to_string(first) + ": " + message);
}

void abort_all(const Grid& grid, const std::string& message) {
  std::fprintf(stderr, "saescale: error: rank %d: %s (aborting all %d ranks)\n", grid.world_rank(),
               message.c_str(), grid.world_size());
  std::fflush(stderr);
  MPI_Abort(MPI_COMM_WORLD, 1);
  std::abort();  // MPI_Abort does not return; if it did, do not continue
}

namespace {
int g_device_id = -1;
}
void set_device_id(int id) { g_device_id = id; }
int device_id() { return g_device_id; }

}  // namespace saescale::comm
