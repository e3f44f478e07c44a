// The GPU a rank runs on, through the CUDA runtime. Host-only C++ (no Kokkos): in a build without
// CUDA (SAESCALE_CUDA undefined) every answer is "no GPU".
#pragma once
#include <cstdint>
#include <optional>

#include <nlohmann/json.hpp>

namespace saescale::device {

// CUDA devices this process sees; throws (one line) if the runtime cannot say, e.g. no driver.
int count();

struct Memory {
  int64_t free_bytes, total_bytes;
};
// The current device's memory; nullopt without CUDA.
std::optional<Memory> memory();

// Name, compute capability, memory, multiprocessors, L2, clocks, driver and runtime versions of
// the current device (results' context.gpu); null without CUDA.
nlohmann::json describe();

}  // namespace saescale::device
