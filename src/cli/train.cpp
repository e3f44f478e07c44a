
#include "cli/commands.hpp"
#include "comm/mpi_check.hpp"
#include "error.hpp"
#include "io/results.hpp"
#include "trainer.hpp"

namespace saescale::cli {

int train(const Config& cfg) {
  int ranks = 1;
  SAESCALE_MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &ranks));
  if (ranks != 1)
    throw Error(
        "multi-rank training is not implemented yet: run saescale train on one rank (no mpirun)");
  if (cfg.lp != 1 || cfg.dp > 1)
    throw Error(
        "--dp/--lp process grids need multi-rank training, which this build does not have yet; "
        "use --dp 1 --lp 1");
  check_output_path(cfg.out, cfg.force);
  Trainer trainer(cfg);
  nlohmann::json results = trainer.run();
  results["context"] = run_context(ranks, 1, 1);
  if (!cfg.out.empty()) {
    write_results(cfg.out, results);
    std::printf("results: %s\n", cfg.out.c_str());
  }
  return 0;
}

}  // namespace saescale::cli
