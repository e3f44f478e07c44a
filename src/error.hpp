// One exception type for every user-facing failure: its message is the one-line error the
// driver prints (naming the thing and the fix) before exiting non-zero.
#pragma once
#include <new>
#include <stdexcept>
#include <string>

namespace saescale {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// A training run that cannot go on (a non-finite loss or gradient): the same on every rank, so the
// run stops cleanly and its results file says "status": "failed" with this message as the reason.
struct RunFailed : Error {
  using Error::Error;
};

// A failed allocation: std::bad_alloc, or Kokkos' report of a View it could not allocate (a
// std::runtime_error in the Kokkos versions supported).
inline bool is_allocation_failure(const std::exception& e) {
  return dynamic_cast<const std::bad_alloc*>(&e) != nullptr ||
         std::string(e.what()).find("Kokkos failed to allocate") != std::string::npos;
}

// The error for a failed allocation: what failed, if the exception says, and what to change.
inline std::string out_of_memory_message(const std::string& what) {
  const bool says = what != std::bad_alloc().what();  // Kokkos names the View and its size
  return "out of memory: " + (says ? what + " " : std::string("an allocation failed ")) +
         "(lower --batch-size, --eval-tokens or --norm-tokens, or use more ranks; `saescale "
         "plan` shows the memory per rank)";
}

}  // namespace saescale
