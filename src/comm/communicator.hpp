// Collectives of the training step over the process grid, each timed as its own phase
// ("comm_<phase>", nested phases are excluded from the phase that encloses them) and counted in
// bytes. Device buffers go through NCCL or MPI (Open MPI stages CUDA buffers through the host; we
// stage explicitly so any MPI works); host scalars always go through MPI. On a group of one rank
// every collective is the identity and costs nothing, so single-rank code paths are unchanged.
#pragma once
#include <map>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "comm/grid.hpp"
#include "comm/nccl.hpp"
#include "kernels/types.hpp"

namespace saescale {
class PhaseTimers;
}

namespace saescale::comm {

enum class Backend { mpi, nccl };
// "auto": NCCL when device buffers are not host memory and NCCL is built in, else MPI.
Backend parse_backend(const std::string& name);
const char* backend_name(Backend b);

// Bytes a collective moves, per rank (the ring algorithms' volumes, as nccl-tests counts them):
// all-reduce of S bytes sends 2(n-1)/n S; all-gather of n blocks of S bytes sends (n-1) S.
double allreduce_sent_bytes(double bytes, int ranks);
double allgather_sent_bytes(double block_bytes, int ranks);

class Communicator {
 public:
  // One process: every collective is the identity.
  Communicator();
  Communicator(const Grid& grid, Backend backend);
  ~Communicator();
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  const Grid& grid() const { return *grid_; }
  int size(Group g) const { return grid_->size(g); }
  int rank(Group g) const { return grid_->rank(g); }
  Backend backend() const { return backend_; }
  // Collectives are timed (as nested phases of `timers`) and counted only while timers are set:
  // the trainer sets them for its steps, so evaluation and setup traffic stay out of the numbers.
  void set_timers(PhaseTimers* timers) { timers_ = timers; }

  // Device buffers: in-place sum over the group.
  void allreduce_sum(const char* phase, Group g, const Vector& data);
  void allreduce_sum(const char* phase, Group g, const CountVector& data);
  void allreduce_sum(const char* phase, Group g, const AccVector& data);
  // Device buffers: recv [size(g) * n] holds every rank's send [n], in group-rank order.
  void allgather(const char* phase, Group g, const Kokkos::View<uint64_t*, MemSpace>& send,
                 const Kokkos::View<uint64_t*, MemSpace>& recv);

  // Host arrays (counts, scalars): in place.
  void allreduce_host_sum(const char* phase, Group g, double* data, int n);
  void allreduce_host_sum(const char* phase, Group g, int64_t* data, int n);
  double allreduce_host_min(const char* phase, Group g, double value);
  void allreduce_host_max(const char* phase, Group g, double* data, int n);
  void allreduce_host_max(const char* phase, Group g, int64_t* data, int n);
  void allreduce_host_min(const char* phase, Group g, double* data, int n);
  void allgather_host(const char* phase, Group g, const int64_t* send, int n, int64_t* recv);
  // recv (on the group's rank 0 only) [size(g) * n] holds every rank's send [n].
  void gather_host_to_root(const char* phase, Group g, const float* send, int64_t n, float* recv);

  // Gradient buckets: start an in-place float sum over `g` that may overlap with the kernels that
  // follow (MPI_Iallreduce, or NCCL on a side stream); wait_buckets completes all of them.
  void start_bucket(const char* phase, Group g, real* data, int64_t n);
  void wait_buckets(const char* phase);

  // Bytes and calls per phase, counted while timers are set: {"<phase>": {calls, payload_bytes,
  // sent_bytes}}, where sent_bytes is the per-rank ring volume (see above).
  struct Volume {
    int64_t calls = 0;
    double payload_bytes = 0, sent_bytes = 0;
  };
  const std::map<std::string, Volume>& volume() const { return volume_; }
  // For checkpoints: the counts so far.
  nlohmann::json save_volume() const;
  void load_volume(const nlohmann::json& state);

 private:
  enum class Kind { f32, f64, i64, u64 };
  void device_allreduce(const char* phase, Group g, void* data, int64_t n, Kind kind);
  void host_allreduce(const char* phase, Group g, void* data, int n, MPI_Datatype type, MPI_Op op);
  template <class Work>
  void timed(const char* phase, Work&& work);
  void count(const char* phase, double payload, double sent);
  nccl::Comm* nccl_comm(Group g) const;
  void join_nccl_buckets();

  std::unique_ptr<Grid> own_grid_;
  const Grid* grid_;
  Backend backend_ = Backend::mpi;
  PhaseTimers* timers_ = nullptr;
  std::map<std::string, Volume> volume_;
  std::vector<MPI_Request> pending_;
  struct Staged {
    real* device;
    Kokkos::View<real*, Kokkos::HostSpace> host;
  };
  std::vector<Staged> staged_;
  bool nccl_pending_ = false;
  nccl::Comm* nccl_[3] = {nullptr, nullptr, nullptr};
};

}  // namespace saescale::comm
