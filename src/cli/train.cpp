#include "cli/commands.hpp"
#include "comm/communicator.hpp"
#include "error.hpp"
#include "io/results.hpp"
#include "trainer.hpp"

namespace saescale::cli {

namespace {
void print_placement(const nlohmann::json& placement) {
  const size_t shown = placement.size() <= 16 ? placement.size() : 8;
  for (size_t r = 0; r < shown; ++r) {
    const auto& p = placement[r];
    std::printf("  rank %d: dp %d lp %d on %s (local rank %d, device %d)\n", p["rank"].get<int>(),
                p["dp_rank"].get<int>(), p["lp_rank"].get<int>(),
                p["host"].get<std::string>().c_str(), p["local_rank"].get<int>(),
                p["device"].get<int>());
  }
  if (shown < placement.size())
    std::printf("  ... %zu more ranks (all in the results file's context)\n",
                placement.size() - shown);
}
}  // namespace

int train(const Config& cfg) {
  comm::Grid grid = comm::Grid::create(cfg.dp, cfg.lp);  // a bad grid fails alike on every rank
  const bool root = grid.world_rank() == 0;
  comm::Backend backend{};
  comm::agree(grid, [&] {
    if (root) check_output_path(cfg.out, cfg.force);
    backend = comm::parse_backend(cfg.comm);
  });
  comm::Communicator comm(grid, backend);  // NCCL communicators are created collectively
  std::unique_ptr<Trainer> trainer;
  comm::agree(grid, [&] { trainer = std::make_unique<Trainer>(cfg, comm); });
  const nlohmann::json placement = grid.placement(comm::device_id());
  if (root && grid.world_size() > 1) print_placement(placement);

  nlohmann::json results;
  try {
    results = trainer->run();
  } catch (const std::exception& e) {
    if (grid.world_size() > 1) comm::abort_all(grid, e.what());  // others may wait in a collective
    throw;
  }
  results["context"] = run_context(grid.world_size(), grid.dp(), grid.lp());
  results["context"]["comm"] = comm::backend_name(comm.backend());
  results["context"]["placement"] = placement;
  const bool failed = results["status"] == "failed";
  if (root && !cfg.out.empty()) {
    write_results(cfg.out, results);
    std::printf("results: %s%s\n", cfg.out.c_str(), failed ? " (status: failed)" : "");
  }
  if (failed) throw Error(results["reason"].get<std::string>());  // every rank: exit 1
  return 0;
}

}  // namespace saescale::cli
