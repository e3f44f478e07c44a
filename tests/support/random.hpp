// Fresh random inputs for every run; the seed is printed so a failure can be replayed
// (SAESCALE_TEST_SEED=<seed> fixes it).
#pragma once
#include <cstdio>
#include <cstdlib>
#include <random>

namespace testing_support {

inline unsigned test_seed() {
  static const unsigned seed = [] {
    const char* fixed = std::getenv("SAESCALE_TEST_SEED");
    const unsigned s =
        fixed ? static_cast<unsigned>(std::strtoul(fixed, nullptr, 10)) : std::random_device{}();
    std::printf("[ seed ] SAESCALE_TEST_SEED=%u\n", s);
    return s;
  }();
  return seed;
}

}  // namespace testing_support
