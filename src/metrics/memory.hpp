// Every Kokkos allocation the project makes, tracked through Kokkos' tool callbacks (current and
// peak bytes per memory space), plus what the CUDA driver reports on GPUs (cudaMemGetInfo), so a
// run's memory is measured rather than estimated. Tracking is off when a Kokkos tool library is
// loaded (KOKKOS_TOOLS_LIBS): its callbacks must not be replaced.
#pragma once
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

namespace saescale::metrics {

// Installs the callbacks (after Kokkos is initialised). Returns false when tracking is off.
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
