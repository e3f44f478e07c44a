#include "comm/nccl.hpp"

#include <cuda_runtime.h>
#include <nccl.h>

#include <cstdio>
#include <string>

#include "comm/mpi_check.hpp"
#include "cuda_check.hpp"
#include "error.hpp"

#define SAESCALE_NCCL_CHECK(call)                                                      \
  do {                                                                                 \
    const ncclResult_t rc_ = (call);                                                   \
    if (rc_ != ncclSuccess)                                                            \
      throw ::saescale::Error(std::string(__FILE__) + ":" + std::to_string(__LINE__) + \
                              ": " #call " failed: " + ncclGetErrorString(rc_));       \
  } while (0)

namespace saescale::nccl {

struct Comm {
  ncclComm_t comm = nullptr;
  cudaStream_t side = nullptr;  // gradient buckets
  cudaEvent_t ready = nullptr;  // compute stream -> side stream
  cudaEvent_t done = nullptr;   // side stream -> compute stream
};

namespace {
ncclDataType_t type(Type t) {
  switch (t) {
    case Type::f32:
      return ncclFloat32;
    case Type::f64:
      return ncclFloat64;
    case Type::i64:
      return ncclInt64;
    case Type::u64:
      return ncclUint64;
  }
  return ncclFloat32;
}
cudaStream_t as_stream(void* s) { return static_cast<cudaStream_t>(s); }
}  // namespace

Comm* create(MPI_Comm mpi) {
  int rank = 0, size = 1;
  SAESCALE_MPI_CHECK(MPI_Comm_rank(mpi, &rank));
  SAESCALE_MPI_CHECK(MPI_Comm_size(mpi, &size));
  ncclUniqueId id;
  if (rank == 0) SAESCALE_NCCL_CHECK(ncclGetUniqueId(&id));
  SAESCALE_MPI_CHECK(MPI_Bcast(&id, sizeof id, MPI_BYTE, 0, mpi));
  auto* c = new Comm;
  SAESCALE_NCCL_CHECK(ncclCommInitRank(&c->comm, size, id, rank));
  SAESCALE_CUDA_CHECK(cudaStreamCreateWithFlags(&c->side, cudaStreamNonBlocking));
  SAESCALE_CUDA_CHECK(cudaEventCreateWithFlags(&c->ready, cudaEventDisableTiming));
  SAESCALE_CUDA_CHECK(cudaEventCreateWithFlags(&c->done, cudaEventDisableTiming));
  return c;
}

void destroy(Comm* c) {
  if (!c) return;
  // Unchecked: runs at shutdown, possibly while unwinding from another error.
  if (c->comm) ncclCommDestroy(c->comm);
  if (c->side) cudaStreamDestroy(c->side);
  if (c->ready) cudaEventDestroy(c->ready);
  if (c->done) cudaEventDestroy(c->done);
  delete c;
}

void allreduce_sum(Comm* c, void* data, int64_t n, Type t, void* stream) {
  SAESCALE_NCCL_CHECK(ncclAllReduce(data, data, static_cast<size_t>(n), type(t), ncclSum, c->comm,
                                    as_stream(stream)));
}

void allgather(Comm* c, const void* send, void* recv, int64_t n, Type t, void* stream) {
  SAESCALE_NCCL_CHECK(
      ncclAllGather(send, recv, static_cast<size_t>(n), type(t), c->comm, as_stream(stream)));
}

void allreduce_sum_async(Comm* c, void* data, int64_t n, Type t, void* stream) {
  SAESCALE_CUDA_CHECK(cudaEventRecord(c->ready, as_stream(stream)));
  SAESCALE_CUDA_CHECK(cudaStreamWaitEvent(c->side, c->ready, 0));
  SAESCALE_NCCL_CHECK(
      ncclAllReduce(data, data, static_cast<size_t>(n), type(t), ncclSum, c->comm, c->side));
}

void join(Comm* c, void* stream) {
  SAESCALE_CUDA_CHECK(cudaEventRecord(c->done, c->side));
  SAESCALE_CUDA_CHECK(cudaStreamWaitEvent(as_stream(stream), c->done, 0));
}

const char* version() {
  static char text[32] = {};
  int v = 0;
  if (!text[0] && ncclGetVersion(&v) == ncclSuccess)
    std::snprintf(text, sizeof text, "NCCL %d.%d.%d", v / 10000, (v / 100) % 100, v % 100);
  return text[0] ? text : "NCCL (unknown version)";
}

}  // namespace saescale::nccl
