
#include <cstdio>

#include "cli/commands.hpp"
#include "comm/mpi_check.hpp"
#include "comm/nccl.hpp"
#include "io/results.hpp"
#include "variant.hpp"

namespace saescale::cli {

int info() {
  int ranks = 1;
  SAESCALE_MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &ranks));
  nlohmann::json out = run_context(ranks, ranks, 1);
  out["variants"] = variant_names();
  out["nccl"] = nccl::version();
  std::printf("%s\n", out.dump(2).c_str());
  return 0;
}

}  // namespace saescale::cli
