// Helpers shared by the fuzz targets: turn a broken parser promise into a crash libFuzzer saves.
#pragma once
#include <cstddef>
#include <cstdio>
#include <cstdlib>

namespace fuzz {

// A parse that succeeded but broke its contract is as much a bug as a crash: abort so the
// input is kept as a crash artifact.
#define FUZZ_CHECK(cond)                                                                  \
  do {                                                                                    \
    if (!(cond)) {                                                                        \
      std::fprintf(stderr, "FUZZ_CHECK failed: %s (%s:%d)\n", #cond, __FILE__, __LINE__); \
      std::abort();                                                                       \
    }                                                                                     \
  } while (0)

// Reads one byte the parser said is inside the file; ASan reports it if it is not.
inline void touch(const unsigned char* p) {
  volatile unsigned char sink = *p;
  (void)sink;
}

}  // namespace fuzz
