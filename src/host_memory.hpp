// What this process may still allocate on the host: the node's MemAvailable, capped by the
// address-space and data limits (ulimit -v, -d) less what is in use. Host-only C++.
#pragma once
#include <cstdint>
#include <string>

namespace saescale {

// Bytes, or -1 when nothing is known.
int64_t host_available_bytes();

// Throws one line ("<what> needs about X GiB of host memory but Y GiB is available: <fix>") when
// `bytes` exceed host_available_bytes().
void check_host_memory(int64_t bytes, const std::string& what, const std::string& fix);

std::string gib(int64_t bytes);  // "1.5 GiB"

}  // namespace saescale
