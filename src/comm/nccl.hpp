// NCCL for device buffers, bootstrapped over MPI. Plain host C++ against the toolkit's headers (no
// Kokkos), so it compiles and links wherever the CUDA toolkit and NCCL are installed (CI has no
// GPU); it runs when Kokkos' memory space is CUDA device memory. Every call is checked.
#pragma once
#include <mpi.h>

#include <cstdint>

namespace saescale::nccl {

enum class Type { f32, f64, i64, u64 };

#ifdef SAESCALE_HAVE_NCCL
struct Comm;  // one NCCL communicator (one per grid group)
// Collective over `mpi` (its rank 0 creates the unique id and broadcasts it).
Comm* create(MPI_Comm mpi);
void destroy(Comm* c);
// In-place sum, enqueued on `stream` (Kokkos' CUDA stream), asynchronous to the host.
void allreduce_sum(Comm* c, void* data, int64_t n, Type t, void* stream);
void allgather(Comm* c, const void* send, void* recv, int64_t n, Type t, void* stream);
// Gradient buckets: the sum runs on a side stream that waits for `stream`'s work so far, so the
// backward kernels enqueued after it overlap with it; join() makes `stream` wait for every bucket.
void allreduce_sum_async(Comm* c, void* data, int64_t n, Type t, void* stream);
void join(Comm* c, void* stream);
const char* version();
#else
struct Comm {};
[[noreturn]] void unavailable();
inline Comm* create(MPI_Comm) { unavailable(); }
inline void destroy(Comm*) {}
inline void allreduce_sum(Comm*, void*, int64_t, Type, void*) { unavailable(); }
inline void allgather(Comm*, const void*, void*, int64_t, Type, void*) { unavailable(); }
inline void allreduce_sum_async(Comm*, void*, int64_t, Type, void*) { unavailable(); }
inline void join(Comm*, void*) { unavailable(); }
inline const char* version() { return "not built"; }
#endif

}  // namespace saescale::nccl
