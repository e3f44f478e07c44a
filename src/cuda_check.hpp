// Every CUDA runtime call is checked: a failure becomes a saescale::Error naming the call, file,
// line and CUDA's reason. Host-only C++ (the CUDA runtime's header, no Kokkos).
#pragma once
#include <cuda_runtime.h>

#include <string>

#include "error.hpp"

#define SAESCALE_CUDA_CHECK(call)                                                      \
  do {                                                                                 \
    const cudaError_t rc_ = (call);                                                    \
    if (rc_ != cudaSuccess)                                                            \
      throw ::saescale::Error(std::string(__FILE__) + ":" + std::to_string(__LINE__) + \
                              ": " #call " failed: " + cudaGetErrorString(rc_));       \
  } while (0)
