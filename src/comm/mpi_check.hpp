// Every MPI call is checked: a failure becomes a saescale::Error naming the call, file and line.
// (MPI_ERRORS_RETURN is set on MPI_COMM_WORLD in main, so errors come back here.)
#pragma once
#include <mpi.h>

#include <string>

#include "error.hpp"

#define SAESCALE_MPI_CHECK(call)                                                       \
  do {                                                                                 \
    const int rc_ = (call);                                                            \
    if (rc_ != MPI_SUCCESS) {                                                          \
      char msg_[MPI_MAX_ERROR_STRING] = {};                                            \
      int len_ = 0;                                                                    \
      MPI_Error_string(rc_, msg_, &len_);                                              \
      throw ::saescale::Error(std::string(__FILE__) + ":" + std::to_string(__LINE__) + \
                              ": " #call " failed: " + std::string(msg_, len_));       \
    }                                                                                  \
  } while (0)
