// Every Kokkos allocation the project makes, tracked through Kokkos' tool callbacks (current and
// peak bytes per memory space), plus what the CUDA driver reports on GPUs (cudaMemGetInfo), so a
// run's memory is measured rather than estimated. A Kokkos tool library the user loaded
// (KOKKOS_TOOLS_LIBS: a memory high-water mark, Caliper, NVTX ranges) keeps receiving every
// allocation: the tracking calls its callbacks first, and leaves every other callback alone.
#pragma once
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

namespace saescale::metrics {

// Installs the callbacks (after Kokkos is initialised, so after any tool library was loaded),
// chained to the loaded tool's. Returns whether tracking is on.
bool track_allocations();
// Peak bytes allocated at once in a memory space ("Host", "Cuda", ...); -1 when not tracked.
int64_t peak_bytes(const std::string& space);
int64_t current_bytes(const std::string& space);
// Starts a new peak from what is allocated now (e.g. per benchmark phase).
void reset_peaks();
// GPUs: samples total - free device memory (cudaMemGetInfo) and keeps the largest; no-op elsewhere.
void sample_device_memory();
// {"tracked": {space: peak}, "device_used_bytes": max sampled (GPU) or null}.
nlohmann::json memory_snapshot();

}  // namespace saescale::metrics
