#include "comm/communicator.hpp"

#include <limits>

#include "comm/mpi_check.hpp"
#include "error.hpp"
#include "metrics/timers.hpp"

namespace saescale::comm {

namespace {
// Device buffers that MPI may read directly (host memory, or CUDA UVM).
constexpr bool kHostAccessible =
    Kokkos::SpaceAccessibility<Kokkos::HostSpace, MemSpace>::accessible;
constexpr bool kNcclBuilt =
#ifdef SAESCALE_HAVE_NCCL
    true;
#else
    false;
#endif

void* device_stream() {
#ifdef KOKKOS_ENABLE_CUDA
  return ExecSpace().cuda_stream();
#else
  return nullptr;
#endif
}
}  // namespace

Backend parse_backend(const std::string& name) {
  if (name == "mpi") return Backend::mpi;
  if (name == "nccl") {
    if (!kNcclBuilt)
      throw Error(
          "--comm nccl: this binary was built without NCCL (needs the CUDA toolkit's NCCL)");
    if (kHostAccessible)
      throw Error(
          std::string("--comm nccl needs device buffers, but this build's memory space is ") +
          MemSpace::name() + " (use --comm mpi)");
    return Backend::nccl;
  }
  if (name == "auto") return kNcclBuilt && !kHostAccessible ? Backend::nccl : Backend::mpi;
  throw Error("unknown --comm '" + name + "' (choose auto, mpi or nccl)");
}

const char* backend_name(Backend b) { return b == Backend::nccl ? "nccl" : "mpi"; }

double allreduce_sent_bytes(double bytes, int ranks) {
  return ranks > 1 ? 2.0 * (ranks - 1) / ranks * bytes : 0.0;
}
double allgather_sent_bytes(double block_bytes, int ranks) {
  return ranks > 1 ? (ranks - 1) * block_bytes : 0.0;
}

Communicator::Communicator() : own_grid_(std::make_unique<Grid>()), grid_(own_grid_.get()) {}

Communicator::Communicator(const Grid& grid, Backend backend) : grid_(&grid), backend_(backend) {
  if (backend_ == Backend::nccl)
    for (Group g : {Group::world, Group::dp, Group::lp})
      if (grid.size(g) > 1) nccl_[static_cast<int>(g)] = nccl::create(grid.comm(g));
}

Communicator::~Communicator() {
  for (auto* c : nccl_) nccl::destroy(c);
}

nccl::Comm* Communicator::nccl_comm(Group g) const { return nccl_[static_cast<int>(g)]; }

template <class Work>
void Communicator::timed(const char* phase, Work&& work) {
  if (timers_)
    timers_->run(std::string("comm_") + phase, work);
  else
    work();
}

void Communicator::count(const char* phase, double payload, double sent) {
  if (!timers_) return;  // only collectives of timed steps are counted
  auto& v = volume_[std::string("comm_") + phase];
  v.calls += 1;
  v.payload_bytes += payload;
  v.sent_bytes += sent;
}

namespace {
MPI_Datatype mpi_type(int kind) {
  static const MPI_Datatype types[] = {MPI_FLOAT, MPI_DOUBLE, MPI_INT64_T, MPI_UINT64_T};
  return types[kind];
}
constexpr size_t kSize[] = {4, 8, 8, 8};

int mpi_count(int64_t n) {
  if (n > std::numeric_limits<int>::max())
    throw Error("a message of " + std::to_string(n) +
                " elements exceeds MPI's int count: use more --lp shards");
  return static_cast<int>(n);
}
}  // namespace

void Communicator::device_allreduce(const char* phase, Group g, void* data, int64_t n, Kind kind) {
  const int ranks = size(g);
  if (ranks == 1 || n == 0) return;
  const int k = static_cast<int>(kind);
  const double bytes = double(n) * kSize[k];
  count(phase, bytes, allreduce_sent_bytes(bytes, ranks));
  timed(phase, [&] {
    if (backend_ == Backend::nccl) {
      join_nccl_buckets();  // two communicators' kernels at once can deadlock (NCCL's rule)
      nccl::allreduce_sum(nccl_comm(g), data, n, static_cast<nccl::Type>(k), device_stream());
      return;
    }
    ExecSpace().fence();  // the buffer's producers have finished
    if constexpr (kHostAccessible) {
      SAESCALE_MPI_CHECK(
          MPI_Allreduce(MPI_IN_PLACE, data, mpi_count(n), mpi_type(k), MPI_SUM, grid_->comm(g)));
    } else {
      Kokkos::View<char*, MemSpace, Kokkos::MemoryUnmanaged> dev(static_cast<char*>(data),
                                                                 n * kSize[k]);
      Kokkos::View<char*, Kokkos::HostSpace> host("saescale::comm::staging", n * kSize[k]);
      Kokkos::deep_copy(host, dev);
      SAESCALE_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, host.data(), mpi_count(n), mpi_type(k),
                                       MPI_SUM, grid_->comm(g)));
      Kokkos::deep_copy(dev, host);
    }
  });
}

void Communicator::allreduce_sum(const char* phase, Group g, const Vector& data) {
  device_allreduce(phase, g, data.data(), data.size(), Kind::f32);
}
void Communicator::allreduce_sum(const char* phase, Group g, const CountVector& data) {
  device_allreduce(phase, g, data.data(), data.size(), Kind::i64);
}
void Communicator::allreduce_sum(const char* phase, Group g, const AccVector& data) {
  device_allreduce(phase, g, data.data(), data.size(), Kind::f64);
}

void Communicator::allgather(const char* phase, Group g,
                             const Kokkos::View<uint64_t*, MemSpace>& send,
                             const Kokkos::View<uint64_t*, MemSpace>& recv) {
  const int ranks = size(g);
  const int64_t n = send.size();
  if (static_cast<int64_t>(recv.size()) != n * ranks)
    throw Error("internal error: all-gather receive buffer has the wrong size");
  if (ranks == 1) {
    Kokkos::deep_copy(recv, send);
    return;
  }
  count(phase, double(n) * ranks * 8, allgather_sent_bytes(double(n) * 8, ranks));
  timed(phase, [&] {
    if (backend_ == Backend::nccl) {
      join_nccl_buckets();
      nccl::allgather(nccl_comm(g), send.data(), recv.data(), n, nccl::Type::u64, device_stream());
      return;
    }
    ExecSpace().fence();
    if constexpr (kHostAccessible) {
      SAESCALE_MPI_CHECK(MPI_Allgather(send.data(), mpi_count(n), MPI_UINT64_T, recv.data(),
                                       mpi_count(n), MPI_UINT64_T, grid_->comm(g)));
    } else {
      auto send_host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), send);
      auto recv_host = Kokkos::create_mirror_view(Kokkos::HostSpace(), recv);
      SAESCALE_MPI_CHECK(MPI_Allgather(send_host.data(), mpi_count(n), MPI_UINT64_T,
                                       recv_host.data(), mpi_count(n), MPI_UINT64_T,
                                       grid_->comm(g)));
      Kokkos::deep_copy(recv, recv_host);
    }
  });
}

// Every host collective is an in-place MPI_Allreduce of 8-byte values.
void Communicator::host_allreduce(const char* phase, Group g, void* data, int n, MPI_Datatype type,
                                  MPI_Op op) {
  if (size(g) == 1) return;
  count(phase, n * 8.0, allreduce_sent_bytes(n * 8.0, size(g)));
  timed(phase, [&] {
    SAESCALE_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, data, n, type, op, grid_->comm(g)));
  });
}

void Communicator::allreduce_host_sum(const char* phase, Group g, double* data, int n) {
  host_allreduce(phase, g, data, n, MPI_DOUBLE, MPI_SUM);
}
void Communicator::allreduce_host_sum(const char* phase, Group g, int64_t* data, int n) {
  host_allreduce(phase, g, data, n, MPI_INT64_T, MPI_SUM);
}
double Communicator::allreduce_host_min(const char* phase, Group g, double value) {
  host_allreduce(phase, g, &value, 1, MPI_DOUBLE, MPI_MIN);
  return value;
}
void Communicator::allreduce_host_min(const char* phase, Group g, double* data, int n) {
  host_allreduce(phase, g, data, n, MPI_DOUBLE, MPI_MIN);
}
void Communicator::allreduce_host_max(const char* phase, Group g, double* data, int n) {
  host_allreduce(phase, g, data, n, MPI_DOUBLE, MPI_MAX);
}
void Communicator::allreduce_host_max(const char* phase, Group g, int64_t* data, int n) {
  host_allreduce(phase, g, data, n, MPI_INT64_T, MPI_MAX);
}

void Communicator::allgather_host(const char* phase, Group g, const int64_t* send, int n,
                                  int64_t* recv) {
  if (size(g) == 1) {
    std::copy(send, send + n, recv);
    return;
  }
  count(phase, n * 8.0 * size(g), allgather_sent_bytes(n * 8.0, size(g)));
  timed(phase, [&] {
    SAESCALE_MPI_CHECK(MPI_Allgather(send, n, MPI_INT64_T, recv, n, MPI_INT64_T, grid_->comm(g)));
  });
}

void Communicator::gather_host_to_root(const char* phase, Group g, const float* send, int64_t n,
                                       float* recv) {
  if (size(g) == 1) {
    std::copy(send, send + n, recv);
    return;
  }
  count(phase, n * 4.0 * size(g), n * 4.0);
  timed(phase, [&] {
    SAESCALE_MPI_CHECK(MPI_Gather(send, mpi_count(n), MPI_FLOAT, recv, mpi_count(n), MPI_FLOAT, 0,
                                  grid_->comm(g)));
  });
}

void Communicator::start_bucket(const char* phase, Group g, real* data, int64_t n) {
  const int ranks = size(g);
  if (ranks == 1 || n == 0) return;
  const double bytes = double(n) * sizeof(real);
  count(phase, bytes, allreduce_sent_bytes(bytes, ranks));
  if (backend_ == Backend::nccl) {
    nccl::allreduce_sum_async(nccl_comm(g), data, n, nccl::Type::f32, device_stream());
    nccl_pending_ = true;
    return;
  }
  ExecSpace().fence();
  MPI_Request request;
  if constexpr (kHostAccessible) {
    SAESCALE_MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, data, mpi_count(n), MPI_FLOAT, MPI_SUM,
                                      grid_->comm(g), &request));
  } else {
    Kokkos::View<real*, MemSpace, Kokkos::MemoryUnmanaged> dev(data, n);
    Staged s{data, Kokkos::View<real*, Kokkos::HostSpace>("saescale::comm::bucket", n)};
    Kokkos::deep_copy(s.host, dev);
    SAESCALE_MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, s.host.data(), mpi_count(n), MPI_FLOAT, MPI_SUM,
                                      grid_->comm(g), &request));
    staged_.push_back(s);
  }
  pending_.push_back(request);
}

// The compute stream waits for the gradient buckets in flight on the side stream. Before any other
// NCCL collective: NCCL does not guarantee progress when kernels of two communicators (a dp bucket
// and, say, an lp bias all-reduce) run on one GPU at once, and they could deadlock.
void Communicator::join_nccl_buckets() {
  if (!nccl_pending_) return;
  for (auto* c : nccl_)
    if (c) nccl::join(c, device_stream());
  nccl_pending_ = false;
}

void Communicator::wait_buckets(const char* phase) {
  if (pending_.empty() && !nccl_pending_) return;
  timed(phase, [&] {
    join_nccl_buckets();
    if (!pending_.empty())
      SAESCALE_MPI_CHECK(
          MPI_Waitall(static_cast<int>(pending_.size()), pending_.data(), MPI_STATUSES_IGNORE));
    pending_.clear();
    for (auto& s : staged_)
      Kokkos::deep_copy(
          Kokkos::View<real*, MemSpace, Kokkos::MemoryUnmanaged>(s.device, s.host.size()), s.host);
    staged_.clear();
  });
}

nlohmann::json Communicator::save_volume() const {
  nlohmann::json out = nlohmann::json::object();
  for (const auto& [phase, v] : volume_) out[phase] = {v.calls, v.payload_bytes, v.sent_bytes};
  return out;
}

void Communicator::load_volume(const nlohmann::json& state) {
  volume_.clear();
  for (const auto& [phase, v] : state.items())
    volume_[phase] = {v.at(0).get<int64_t>(), v.at(1).get<double>(), v.at(2).get<double>()};
}

}  // namespace saescale::comm
