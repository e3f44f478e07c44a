// A Kokkos Tools library for the tests, loaded the way a user loads theirs (KOKKOS_TOOLS_LIBS):
// it counts what Kokkos reports to a tool (allocations with current and peak bytes per memory
// space, and every kernel by name) and writes that as JSON to $SAESCALE_TOOL_PROBE_OUT when Kokkos
// finalises. Plain C interface: no Kokkos header, as a third-party tool would be built.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>

namespace {
struct SpaceHandle {
  char name[64];
};
struct Bytes {
  int64_t current = 0, peak = 0;
};
std::map<std::string, Bytes> g_spaces;
std::map<std::string, int64_t> g_kernels;
std::map<const void*, std::string> g_live;  // allocation -> label
int64_t g_allocations = 0, g_deallocations = 0;

void kernel(const char* name) { ++g_kernels[name]; }

// A JSON string: the labels are the project's and Kokkos' own, but quote what needs quoting.
std::string quoted(const std::string& s) {
  std::string out = "\"";
  for (const char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    if (static_cast<unsigned char>(c) >= 0x20) out += c;
  }
  return out + "\"";
}
}  // namespace

extern "C" {
void kokkosp_init_library(int, uint64_t, uint32_t, void*) {}

void kokkosp_finalize_library() {
  const char* path = std::getenv("SAESCALE_TOOL_PROBE_OUT");
  if (!path) return;
  FILE* f = std::fopen(path, "w");
  if (!f) return;
  std::fprintf(f, "{\"allocations\": %lld, \"deallocations\": %lld, \"peak\": {",
               (long long)g_allocations, (long long)g_deallocations);
  const char* sep = "";
  for (const auto& [space, b] : g_spaces) {
    std::fprintf(f, "%s%s: %lld", sep, quoted(space).c_str(), (long long)b.peak);
    sep = ", ";
  }
  std::fprintf(f, "}, \"live_at_finalize\": [");
  sep = "";
  for (const auto& [ptr, label] : g_live) {
    std::fprintf(f, "%s%s", sep, quoted(label).c_str());
    sep = ", ";
  }
  std::fprintf(f, "], \"kernels\": {");
  sep = "";
  for (const auto& [name, n] : g_kernels) {
    std::fprintf(f, "%s%s: %lld", sep, quoted(name).c_str(), (long long)n);
    sep = ", ";
  }
  std::fprintf(f, "}}\n");
  std::fclose(f);
}

void kokkosp_allocate_data(const SpaceHandle space, const char* label, const void* ptr,
                           const uint64_t size) {
  ++g_allocations;
  g_live[ptr] = label;
  Bytes& b = g_spaces[space.name];
  b.current += static_cast<int64_t>(size);
  if (b.current > b.peak) b.peak = b.current;
}

void kokkosp_deallocate_data(const SpaceHandle space, const char*, const void* ptr,
                             const uint64_t size) {
  ++g_deallocations;
  g_live.erase(ptr);
  g_spaces[space.name].current -= static_cast<int64_t>(size);
}

void kokkosp_begin_parallel_for(const char* name, uint32_t, uint64_t*) { kernel(name); }
void kokkosp_end_parallel_for(uint64_t) {}
void kokkosp_begin_parallel_reduce(const char* name, uint32_t, uint64_t*) { kernel(name); }
void kokkosp_end_parallel_reduce(uint64_t) {}
void kokkosp_begin_parallel_scan(const char* name, uint32_t, uint64_t*) { kernel(name); }
void kokkosp_end_parallel_scan(uint64_t) {}
}
