// Counter-based randomness: every token's draws come from (seed, stream, token index) alone, so any
// rank can generate any part of the synthetic stream and runs are deterministic.
#pragma once
#include <cmath>
#include <cstdint>

// The integer and uniform draws also run in device kernels (the decoder's initialisation):
// __host__ __device__ under nvcc, without pulling Kokkos into the host-only sources that use them.
#if defined(__CUDACC__)
#define SAESCALE_HOST_DEVICE __host__ __device__
#else
#define SAESCALE_HOST_DEVICE
#endif

namespace saescale {

SAESCALE_HOST_DEVICE inline uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// xoshiro256** seeded by splitmix64.
class Rng {
 public:
  SAESCALE_HOST_DEVICE Rng(uint64_t seed, uint64_t stream = 0, uint64_t index = 0) {
    uint64_t s = splitmix64(seed ^ splitmix64(stream ^ splitmix64(index)));
    for (int i = 0; i < 4; ++i) state_[i] = s = splitmix64(s);
  }
  SAESCALE_HOST_DEVICE uint64_t next() {
    const uint64_t result = rotl(state_[1] * 5, 7) * 9;
    const uint64_t t = state_[1] << 17;
    state_[2] ^= state_[0];
    state_[3] ^= state_[1];
    state_[1] ^= state_[2];
    state_[0] ^= state_[3];
    state_[2] ^= t;
    state_[3] = rotl(state_[3], 45);
    return result;
  }
  SAESCALE_HOST_DEVICE double uniform() { return (next() >> 11) * 0x1.0p-53; }  // [0, 1)
  SAESCALE_HOST_DEVICE uint64_t below(uint64_t n) { return next() % n; }
  double normal() {
    const double u1 = 1.0 - uniform(), u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }
  // Poisson by inversion (small means only, as here).
  int poisson(double mean) {
    const double limit = std::exp(-mean);
    double p = uniform();
    int k = 0;
    while (p > limit && k < 10000) {
      p *= uniform();
      ++k;
    }
    return k;
  }

 private:
  SAESCALE_HOST_DEVICE static uint64_t rotl(uint64_t x, int k) {
    return (x << k) | (x >> (64 - k));
  }
  uint64_t state_[4];
};

}  // namespace saescale
