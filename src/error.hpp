// One exception type for every user-facing failure: its message is the one-line error the
// driver prints (naming the thing and the fix) before exiting non-zero.
#pragma once
#include <stdexcept>
#include <string>

namespace saescale {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

}  // namespace saescale
