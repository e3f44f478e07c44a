// One exception type for every user-facing failure: its message is the one-line error the
// driver prints (naming the thing and the fix) before exiting non-zero.
#pragma once
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

}  // namespace saescale
