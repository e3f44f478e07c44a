// MPI for one process: what saescale calls, with the meaning MPI gives those calls on a
// communicator of one rank (collectives copy their send buffer or do nothing). It replaces a real
// MPI in builds configured with -DSAESCALE_MPI=OFF (the GPU bundle, a single-GPU workstation):
// such a binary starts without mpirun and needs no MPI library, as LAMMPS' and PETSc's serial
// builds do. Started as one of several ranks (a launcher's environment says so), MPI_Init fails.
#pragma once
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#define SAESCALE_SERIAL_MPI 1

using MPI_Comm = int;
using MPI_Datatype = int;  // the element size in bytes: all that one process needs
using MPI_Op = int;
using MPI_Request = int;
using MPI_Info = int;
using MPI_Errhandler = int;
struct MPI_Status {
  int MPI_SOURCE, MPI_TAG, MPI_ERROR;
};

inline constexpr int MPI_SUCCESS = 0;
inline constexpr int MPI_ERR_OTHER = 16;
inline constexpr MPI_Comm MPI_COMM_NULL = 0;
inline constexpr MPI_Comm MPI_COMM_WORLD = 1;
inline constexpr int MPI_COMM_TYPE_SHARED = 1;
inline constexpr MPI_Info MPI_INFO_NULL = 0;
inline constexpr MPI_Errhandler MPI_ERRORS_RETURN = 1;
inline constexpr int MPI_MAX_ERROR_STRING = 256;
inline constexpr int MPI_MAX_LIBRARY_VERSION_STRING = 256;
#define MPI_IN_PLACE (reinterpret_cast<void*>(-1))
#define MPI_STATUSES_IGNORE (static_cast<MPI_Status*>(nullptr))

inline constexpr MPI_Datatype MPI_CHAR = 1, MPI_BYTE = 1, MPI_INT = sizeof(int),
                              MPI_UNSIGNED = sizeof(unsigned), MPI_FLOAT = 4, MPI_DOUBLE = 8,
                              MPI_INT64_T = 8, MPI_UINT64_T = 8, MPI_LONG_LONG = 8;
inline constexpr MPI_Op MPI_SUM = 1, MPI_MAX = 2, MPI_MIN = 3;

namespace saescale_serial_mpi {
inline int& state() {  // 0 before MPI_Init, 1 running, 2 finalised
  static int s = 0;
  return s;
}
// The number of ranks a launcher (mpirun, an srun step, a PMI) says this process is one of; 1 if
// none. Slurm's counts apply only to a task of an srun step (SLURM_PROCID set), not to a batch
// script that happens to hold several tasks.
inline long launched_ranks() {
  const char* vars[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE",
                        std::getenv("SLURM_PROCID") ? "SLURM_STEP_NUM_TASKS" : nullptr};
  for (const char* var : vars) {
    const char* v = var ? std::getenv(var) : nullptr;
    if (v && std::strtol(v, nullptr, 10) > 1) return std::strtol(v, nullptr, 10);
  }
  return 1;
}
inline char* error_text() {  // what MPI_Error_string says about the last failure
  static char text[MPI_MAX_ERROR_STRING] = "no error";
  return text;
}
inline int copy(const void* send, void* recv, int count, MPI_Datatype type) {
  if (send != MPI_IN_PLACE && send != recv && count > 0)
    std::memmove(recv, send, static_cast<size_t>(count) * static_cast<size_t>(type));
  return MPI_SUCCESS;
}
}  // namespace saescale_serial_mpi

inline int MPI_Init(int*, char***) {
  if (const long n = saescale_serial_mpi::launched_ranks(); n > 1) {
    std::snprintf(saescale_serial_mpi::error_text(), MPI_MAX_ERROR_STRING,
                  "this binary was built without MPI (SAESCALE_MPI=OFF) and runs one rank, but it "
                  "was started as one of %ld ranks: start it once, without mpirun or srun "
                  "tasks, or use a build with MPI",
                  n);
    return MPI_ERR_OTHER;
  }
  saescale_serial_mpi::state() = 1;
  return MPI_SUCCESS;
}
inline int MPI_Initialized(int* flag) {
  *flag = saescale_serial_mpi::state() >= 1;
  return MPI_SUCCESS;
}
inline int MPI_Finalize() {
  saescale_serial_mpi::state() = 2;
  return MPI_SUCCESS;
}
inline int MPI_Finalized(int* flag) {
  *flag = saescale_serial_mpi::state() == 2;
  return MPI_SUCCESS;
}
inline int MPI_Comm_size(MPI_Comm, int* size) {
  *size = 1;
  return MPI_SUCCESS;
}
inline int MPI_Comm_rank(MPI_Comm, int* rank) {
  *rank = 0;
  return MPI_SUCCESS;
}
inline int MPI_Comm_split(MPI_Comm comm, int, int, MPI_Comm* out) {
  *out = comm;
  return MPI_SUCCESS;
}
inline int MPI_Comm_split_type(MPI_Comm comm, int, int, MPI_Info, MPI_Comm* out) {
  *out = comm;
  return MPI_SUCCESS;
}
inline int MPI_Comm_free(MPI_Comm* comm) {
  *comm = MPI_COMM_NULL;
  return MPI_SUCCESS;
}
inline int MPI_Comm_set_errhandler(MPI_Comm, MPI_Errhandler) { return MPI_SUCCESS; }
inline int MPI_Barrier(MPI_Comm) { return MPI_SUCCESS; }
inline int MPI_Bcast(void*, int, MPI_Datatype, int, MPI_Comm) { return MPI_SUCCESS; }
inline int MPI_Allreduce(const void* send, void* recv, int count, MPI_Datatype type, MPI_Op,
                         MPI_Comm) {
  return saescale_serial_mpi::copy(send, recv, count, type);
}
inline int MPI_Iallreduce(const void* send, void* recv, int count, MPI_Datatype type, MPI_Op,
                          MPI_Comm, MPI_Request* request) {
  *request = 0;
  return saescale_serial_mpi::copy(send, recv, count, type);
}
inline int MPI_Waitall(int, MPI_Request*, MPI_Status*) { return MPI_SUCCESS; }
inline int MPI_Allgather(const void* send, int count, MPI_Datatype type, void* recv, int,
                         MPI_Datatype, MPI_Comm) {
  return saescale_serial_mpi::copy(send, recv, count, type);
}
inline int MPI_Gather(const void* send, int count, MPI_Datatype type, void* recv, int,
                      MPI_Datatype, int, MPI_Comm) {
  return saescale_serial_mpi::copy(send, recv, count, type);
}
inline int MPI_Abort(MPI_Comm, int code) { std::exit(code); }
inline double MPI_Wtime() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
inline int MPI_Error_string(int, char* text, int* length) {
  *length = std::snprintf(text, MPI_MAX_ERROR_STRING, "%s", saescale_serial_mpi::error_text());
  return MPI_SUCCESS;
}
inline int MPI_Get_library_version(char* text, int* length) {
  *length = std::snprintf(text, MPI_MAX_LIBRARY_VERSION_STRING,
                          "none: one process (saescale built with SAESCALE_MPI=OFF)");
  return MPI_SUCCESS;
}
