#include <csignal>

#include "cli/commands.hpp"
#include "comm/communicator.hpp"
#include "data/source.hpp"
#include "error.hpp"
#include "io/mapped_file.hpp"
#include "io/outputs.hpp"
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

// SIGTERM / SIGUSR1 (what Slurm sends before the time limit with --signal): finish the step,
// checkpoint, write a "preempted" results file, exit with kExitPreempted.
extern "C" void on_stop_signal(int signal) { g_stop_signal = signal; }

void install_stop_handlers() {
  struct sigaction action {};
  action.sa_handler = on_stop_signal;
  sigemptyset(&action.sa_mask);
  for (int signal : {SIGTERM, SIGUSR1})
    if (sigaction(signal, &action, nullptr) != 0)
      throw Error(std::string("cannot install the handler for signal ") + std::to_string(signal));
}

// A resumed run may replace the results file its preempted part wrote.
bool preempted_results(const std::string& path) {
  try {  // a FIFO or a device is no results file (and the output checks refuse it)
    return nlohmann::json::parse(io::read_whole_file(path)).value("status", "") == "preempted";
  } catch (const std::exception&) {
    return false;
  }
}
}  // namespace

int train(const Config& cfg) {
  install_stop_handlers();  // from the start: a signal during setup still ends as "preempted"
  comm::Grid grid = comm::Grid::create(cfg.dp, cfg.lp);  // a bad grid fails alike on every rank
  const bool root = grid.world_rank() == 0;
  comm::Backend backend{};
  nlohmann::json tags;
  // The results may replace a file only with --force, or the results of the preempted run this
  // one resumes: decided now, and the final write refuses a file that appears meanwhile.
  const bool replace_results = cfg.force || (cfg.resume && preempted_results(cfg.out));
  Config run_cfg = cfg;  // with --init: the saved SAE's variant and k (cfg.json)
  comm::agree(grid, [&] {
    tags = cfg.tags_json();
    if (root) {  // every output, before anything is read or trained (io/outputs.hpp)
      io::Outputs outputs;
      outputs.results = cfg.out;
      outputs.weights_dir = cfg.save_weights;
      outputs.checkpoint_dir = cfg.checkpoint_dir;
      outputs.force = cfg.force;
      outputs.results_replaceable = replace_results;
      outputs.inputs = input_files(cfg);
      io::check_outputs(outputs);
    }
    backend = comm::parse_backend(cfg.comm);
    if (!cfg.init.empty()) run_cfg = with_saved_sae(cfg, read_saved_sae(cfg.init, false));
  });
  comm::Communicator comm(grid, backend);  // NCCL communicators are created collectively
  std::unique_ptr<Trainer> trainer;
  comm::agree(grid, [&] { trainer = std::make_unique<Trainer>(run_cfg, comm); });
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
  results["context"]["tags"] = tags;
  const std::string status = results["status"];
  if (root && !cfg.out.empty()) {
    write_results(cfg.out, results, replace_results);
    std::printf("results: %s%s\n", cfg.out.c_str(),
                status == "ok" ? "" : (" (status: " + status + ")").c_str());
  }
  if (status == "failed") throw Error(results["reason"].get<std::string>());  // every rank: 1
  if (status == "preempted") {
    if (root)
      std::fprintf(stderr, "saescale: preempted: %s\n",
                   results["reason"].get<std::string>().c_str());
    return kExitPreempted;
  }
  return 0;
}

}  // namespace saescale::cli
