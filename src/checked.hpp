// Sizes computed from options (batch x latents, tokens x d, ...) multiply without wrapping: past
// kMaxElements no buffer could exist, and every product and sum of the memory plan stays far
// from 2^63. Host-only C++.
#pragma once
#include <cstdint>
#include <string>

#include "error.hpp"

namespace saescale {

inline constexpr int64_t kMaxElements = int64_t(1) << 50;  // 4 PiB of floats

// a x b, refused (one line naming `what`) when either is negative or the product passes
// kMaxElements.
inline int64_t checked_elements(int64_t a, int64_t b, const std::string& what) {
  int64_t product = 0;
  if (a < 0 || b < 0 || __builtin_mul_overflow(a, b, &product) || product > kMaxElements)
    throw Error(what + " = " + std::to_string(a) + " x " + std::to_string(b) +
                " is too large (more than 2^50 elements in one buffer)");
  return product;
}

}  // namespace saescale
