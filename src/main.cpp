// saescale: train sparse autoencoders and measure what each variant costs.
// MPI first, then Kokkos; rank 0 alone prints; every failure is one line and a non-zero exit.
#include <mpi.h>

#include <Kokkos_Core.hpp>
#include <csignal>
#include <cstdio>
#include <string>
#include <vector>

#include "cli/commands.hpp"
#include "comm/grid.hpp"
#include "comm/mpi_check.hpp"
#include "config.hpp"
#include "device.hpp"
#include "error.hpp"
#include "kernels/gemm.hpp"
#include "metrics/memory.hpp"

namespace {

// local rank % visible GPUs in GPU builds (ranks of one node share its GPUs round-robin); -1 else.
int device_for_this_rank() {
#if defined(KOKKOS_ENABLE_CUDA)
  MPI_Comm node;
  int local_rank = 0, devices = 0;
  SAESCALE_MPI_CHECK(
      MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node));
  SAESCALE_MPI_CHECK(MPI_Comm_rank(node, &local_rank));
  SAESCALE_MPI_CHECK(MPI_Comm_free(&node));
  devices = saescale::device::count();
  if (devices == 0)
    throw saescale::Error(
        "no CUDA device visible to this rank (check nvidia-smi and "
        "CUDA_VISIBLE_DEVICES)");
  return local_rank % devices;
#else
  return -1;
#endif
}

int run(int argc, char** argv) {
  using namespace saescale;
  // Kokkos sees only its own --kokkos-* arguments (it would answer --help itself otherwise).
  std::vector<char*> ours{argv[0]}, kokkos_args{argv[0]};
  for (int i = 1; i < argc; ++i)
    (std::string(argv[i]).rfind("--kokkos-", 0) == 0 ? kokkos_args : ours).push_back(argv[i]);
  int kokkos_argc = static_cast<int>(kokkos_args.size());
  CLI::App app{"saescale: sparse-autoencoder training benchmark (MPI + Kokkos)", "saescale"};
  app.require_subcommand(1);
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  app.set_version_flag("--version", "saescale 0.1.0");

  Config train_cfg, grad_cfg, eval_cfg, plan_cfg;
  grad_cfg.normalize = "none";  // gradients of the data as given unless asked
  cli::GenDataOptions gen;
  auto* train = app.add_subcommand("train", "train one SAE, measure it, write a results JSON");
  auto* grad = app.add_subcommand("grad", "loss and raw gradients of one batch (the whole data)");
  auto* eval = app.add_subcommand("eval", "fidelity metrics of saved weights on data");
  auto* gen_data = app.add_subcommand("gen-data", "write synthetic activation shards");
  auto* plan = app.add_subcommand(
      "plan", "bytes communicated and memory per rank of a training step, from the shapes alone");
  app.add_subcommand("info", "build, Kokkos, MPI, BLAS/GPU configuration as JSON");
  add_options(*train, train_cfg, Subcommand::train);
  add_options(*grad, grad_cfg, Subcommand::grad);
  add_options(*eval, eval_cfg, Subcommand::eval);
  add_options(*plan, plan_cfg, Subcommand::train);
  cli::add_gen_data_options(*gen_data, gen);
  for (auto* sub : {train, grad, eval, plan})
    sub->add_option("--config", "TOML file whose keys are this subcommand's options");

  std::vector<std::string> config_files;
  if (const int code =
          parse_command_line(app, static_cast<int>(ours.size()), ours.data(), &config_files);
      code >= 0)
    return code;
  for (auto [sub, c] : {std::pair{train, &train_cfg}, {grad, &grad_cfg}, {eval, &eval_cfg}})
    if (sub->parsed()) {
      record_given_options(*sub, *c);
      c->config_files = config_files;
    }
  int ranks = 1, mpi_started = 0;
  SAESCALE_MPI_CHECK(MPI_Initialized(&mpi_started));
  if (mpi_started) SAESCALE_MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &ranks));
  for (auto* sub : {grad, eval, gen_data, plan})
    if (sub->parsed() && ranks > 1)
      throw Error("saescale " + sub->get_name() +
                  " runs on one rank (start it without mpirun/srun)");
  // One GPU per rank, by local rank, unless the user chose one for Kokkos.
  bool device_chosen = false;
  for (auto* a : kokkos_args)
    device_chosen |= std::string(a).rfind("--kokkos-device-id", 0) == 0 ||
                     std::string(a).rfind("--kokkos-map-device-id-by", 0) == 0;
  std::string device_arg;
  if (const int device = mpi_started ? device_for_this_rank() : -1; device >= 0) {
    comm::set_device_id(device);
    if (!device_chosen) {
      device_arg = "--kokkos-device-id=" + std::to_string(device);
      kokkos_args.push_back(device_arg.data());
      kokkos_argc = static_cast<int>(kokkos_args.size());
    }
  }
  Kokkos::ScopeGuard kokkos(kokkos_argc, kokkos_args.data());
  metrics::track_allocations();  // every Kokkos allocation from here on (results: memory)
  struct GemmCleanup {           // cuBLAS handles go before Kokkos finalises
    ~GemmCleanup() { gemm_finalize(); }
  } gemm_cleanup;
  if (train->parsed()) return cli::train(train_cfg);
  if (grad->parsed()) return cli::grad(grad_cfg);
  if (eval->parsed()) return cli::eval(eval_cfg);
  if (gen_data->parsed()) return cli::gen_data(gen);
  if (plan->parsed()) return cli::plan(plan_cfg);
  return cli::info();
}

// `saescale plan` computes from shapes alone: it skips MPI_Init, which costs ~0.4 s for an Open MPI
// singleton (it starts orted) — the scaling projection asks for hundreds of plans.
bool needs_mpi(int argc, char** argv) {
  for (int i = 1; i < argc; ++i)
    if (argv[i][0] != '-') return std::string(argv[i]) != "plan";  // the subcommand
  return true;
}

// Messages print as one line: Kokkos, for one, explains a failed allocation over several.
std::string one_line(const std::string& text) {
  std::string out;
  for (const char c : text) {
    const char ch = c == '\n' || c == '\r' || c == '\t' ? ' ' : c;
    if (ch != ' ' || (!out.empty() && out.back() != ' ')) out += ch;
  }
  while (!out.empty() && out.back() == ' ') out.pop_back();
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  // A file-size limit (ulimit -f) makes a write fail with EFBIG, which the writers report, instead
  // of killing the process mid-file.
  std::signal(SIGXFSZ, SIG_IGN);
  const bool mpi = needs_mpi(argc, argv);
  if (const int rc = mpi ? MPI_Init(&argc, &argv) : MPI_SUCCESS; rc != MPI_SUCCESS) {
    char why[MPI_MAX_ERROR_STRING] = {};
    int len = 0;
    MPI_Error_string(rc, why, &len);
    std::fprintf(stderr, "saescale: error: MPI_Init failed: %.*s\n", len, why);
    return 1;
  }
  int rank = 0;
  if (mpi) {
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);  // errors reach SAESCALE_MPI_CHECK
    if (MPI_Comm_rank(MPI_COMM_WORLD, &rank) != MPI_SUCCESS) rank = 0;  // then report from here
  }
  // Errors that reach here are the same on every rank (options, the agreed setup of
  // cli/train.cpp): rank 0 reports them once. Failures during training abort all ranks there.
  int code = 1;
  try {
    code = run(argc, argv);
  } catch (const saescale::Error& e) {
    if (rank == 0) std::fprintf(stderr, "saescale: error: %s\n", one_line(e.what()).c_str());
  } catch (const std::exception& e) {
    if (rank != 0) {
    } else if (saescale::is_allocation_failure(e)) {
      std::fprintf(stderr, "saescale: error: %s\n",
                   one_line(saescale::out_of_memory_message(e.what())).c_str());
    } else {
      std::fprintf(stderr, "saescale: internal error: %s\n", one_line(e.what()).c_str());
    }
  }
  if (mpi) MPI_Finalize();
  return code;
}
