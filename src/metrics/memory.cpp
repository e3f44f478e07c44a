#include "metrics/memory.hpp"

#include <Kokkos_Core.hpp>
#include <algorithm>
#include <map>

#include "device.hpp"

namespace saescale::metrics {

namespace {
struct Space {
  int64_t current = 0, peak = 0;
};
std::map<std::string, Space>& spaces() {
  static std::map<std::string, Space> s;
  return s;
}
bool g_tracking = false;
int64_t g_device_used = -1;
// The callbacks of a tool library the user loaded (KOKKOS_TOOLS_LIBS), called first.
Kokkos_Profiling_allocateDataFunction g_user_allocate = nullptr;
Kokkos_Profiling_deallocateDataFunction g_user_deallocate = nullptr;

void on_allocate(const Kokkos::Tools::SpaceHandle handle, const char* label, const void* ptr,
                 const uint64_t size) {
  if (g_user_allocate) g_user_allocate(handle, label, ptr, size);
  Space& s = spaces()[handle.name];
  s.current += static_cast<int64_t>(size);
  if (s.current > s.peak) s.peak = s.current;
}

void on_deallocate(const Kokkos::Tools::SpaceHandle handle, const char* label, const void* ptr,
                   const uint64_t size) {
  if (g_user_deallocate) g_user_deallocate(handle, label, ptr, size);
  spaces()[handle.name].current -= static_cast<int64_t>(size);
}
}  // namespace

bool track_allocations() {
  if (g_tracking) return true;
  const auto loaded = Kokkos::Tools::Experimental::get_callbacks();
  g_user_allocate = loaded.allocate_data, g_user_deallocate = loaded.deallocate_data;
  Kokkos::Tools::Experimental::set_allocate_data_callback(on_allocate);
  Kokkos::Tools::Experimental::set_deallocate_data_callback(on_deallocate);
  g_tracking = true;
  return true;
}

int64_t peak_bytes(const std::string& space) {
  if (!g_tracking) return -1;
  auto it = spaces().find(space);
  return it == spaces().end() ? 0 : it->second.peak;
}

int64_t current_bytes(const std::string& space) {
  if (!g_tracking) return -1;
  auto it = spaces().find(space);
  return it == spaces().end() ? 0 : it->second.current;
}

void reset_peaks() {
  for (auto& [name, s] : spaces()) s.peak = s.current;
  g_device_used = -1;
}

void sample_device_memory() {
  if (const auto gpu = device::memory())
    g_device_used = std::max<int64_t>(g_device_used, gpu->total_bytes - gpu->free_bytes);
}

nlohmann::json memory_snapshot() {
  nlohmann::json tracked = nlohmann::json::object();
  for (const auto& [name, s] : spaces()) tracked[name] = s.peak;
  return {{"tracked", g_tracking ? tracked : nlohmann::json()},
          {"device_used_bytes", g_device_used >= 0 ? nlohmann::json(g_device_used) : nullptr}};
}

}  // namespace saescale::metrics
