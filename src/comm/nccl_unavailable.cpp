// Builds without NCCL: `--comm nccl` is refused at startup (comm/communicator.cpp), so these are
// never reached by a run; they fail loudly if they are.
#include "comm/nccl.hpp"
#include "error.hpp"

namespace saescale::nccl {
void unavailable() { throw Error("this binary was built without NCCL"); }
}  // namespace saescale::nccl
