#include "host_memory.hpp"

#include <sys/resource.h>

#include <algorithm>
#include <cstdio>
#include <fstream>

#include "error.hpp"

namespace saescale {

namespace {
// A "Key:  <n> kB" line of a /proc file, in bytes; -1 if absent.
int64_t proc_kib(const char* file, const std::string& key) {
  std::ifstream in(file);
  std::string k;
  int64_t kib = -1;
  while (in >> k) {
    if (k == key) {
      in >> kib;
      return kib * 1024;
    }
    in.ignore(256, '\n');
  }
  return -1;
}
}  // namespace

std::string gib(int64_t bytes) {
  char text[32];
  std::snprintf(text, sizeof text, "%.1f GiB", bytes / 1073741824.0);
  return text;
}

int64_t host_available_bytes() {
  int64_t available = proc_kib("/proc/meminfo", "MemAvailable:");
  const auto cap = [&](int resource, const char* in_use_key) {
    rlimit limit{};
    if (getrlimit(resource, &limit) != 0 || limit.rlim_cur == RLIM_INFINITY) return;
    const int64_t used = std::max<int64_t>(0, proc_kib("/proc/self/status", in_use_key));
    const int64_t left = std::max<int64_t>(0, static_cast<int64_t>(limit.rlim_cur) - used);
    available = available < 0 ? left : std::min(available, left);
  };
  cap(RLIMIT_AS, "VmSize:");
  cap(RLIMIT_DATA, "VmData:");
  return available;
}

void check_host_memory(int64_t bytes, const std::string& what, const std::string& fix) {
  const int64_t available = host_available_bytes();
  if (available >= 0 && bytes > available)
    throw Error(what + " needs about " + gib(bytes) + " of host memory but " + gib(available) +
                " is available: " + fix);
}

}  // namespace saescale
