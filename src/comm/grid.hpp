// The process grid dp x lp (docs/parallel.md): data-parallel replicas, each split into lp
// latent shards. World rank r is dp rank r / lp and lp rank r % lp, so the lp ranks of one replica
// are neighbours (on one node whenever lp divides the ranks per node: the B x d all-reduce of the
// forward pass is the latency-critical collective).
#pragma once
#include <mpi.h>

#include <functional>
#include <string>

#include <nlohmann/json.hpp>

namespace saescale::comm {

enum class Group { world, dp, lp };
const char* group_name(Group g);

class Grid {
 public:
  // One process, no MPI calls (unit tests, grad, eval).
  Grid() = default;
  // The grid over MPI_COMM_WORLD (collective). dp 0: ranks / lp. Throws on every rank, with the
  // same message, when dp x lp != ranks.
  static Grid create(int64_t dp, int64_t lp);
  Grid(const Grid&) = delete;
  Grid& operator=(const Grid&) = delete;
  Grid(Grid&& other) noexcept;
  Grid& operator=(Grid&& other) noexcept;
  ~Grid();

  int size(Group g) const { return g == Group::world ? world_size_ : g == Group::dp ? dp_ : lp_; }
  int rank(Group g) const {
    return g == Group::world ? world_rank_ : g == Group::dp ? dp_rank_ : lp_rank_;
  }
  MPI_Comm comm(Group g) const {
    return g == Group::world ? world_ : g == Group::dp ? dp_comm_ : lp_comm_;
  }
  bool uses_mpi() const { return world_ != MPI_COMM_NULL; }
  int dp() const { return dp_; }
  int lp() const { return lp_; }
  int dp_rank() const { return dp_rank_; }
  int lp_rank() const { return lp_rank_; }
  int world_rank() const { return world_rank_; }
  int world_size() const { return world_size_; }
  int local_rank() const { return local_rank_; }  // rank among the ranks of this node
  int local_size() const { return local_size_; }
  const std::string& host() const { return host_; }

  // Every rank's placement (rank, dp/lp coordinates, host, local rank, device), gathered on all.
  nlohmann::json placement(int device_id) const;

 private:
  void release();
  MPI_Comm world_ = MPI_COMM_NULL, dp_comm_ = MPI_COMM_NULL, lp_comm_ = MPI_COMM_NULL;
  int world_rank_ = 0, world_size_ = 1, dp_ = 1, lp_ = 1, dp_rank_ = 0, lp_rank_ = 0;
  int local_rank_ = 0, local_size_ = 1;
  std::string host_ = "localhost";
};

// Validates a grid before any collective: the same checks give the same message on every rank.
void check_grid(int ranks, int64_t dp, int64_t lp);

// Runs `setup` (which must not call collectives) on every rank, then agrees on the outcome: if any
// rank failed, every rank throws the message of the lowest failing rank, so the job reports one
// error (printed by rank 0) and no rank is left waiting in a later collective.
void agree(const Grid& grid, const std::function<void()>& setup);

// For failures after setup, when other ranks may be inside a collective: prints the error with the
// rank and aborts every rank (MPI_Abort) instead of letting them hang.
[[noreturn]] void abort_all(const Grid& grid, const std::string& message);

// The GPU this rank uses (by local rank, set in main before Kokkos starts; -1: none).
void set_device_id(int id);
int device_id();

}  // namespace saescale::comm
