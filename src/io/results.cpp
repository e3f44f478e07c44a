#include "io/results.hpp"

#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <ctime>
#include <filesystem>

#include "build_info.hpp"
#include "comm/mpi_check.hpp"
#include "device.hpp"
#include "error.hpp"
#include "io/atomic_write.hpp"
#include "io/outputs.hpp"
#include "kernels/gemm.hpp"
#include "kernels/gemm_cublas.hpp"

#if !defined(KOKKOS_ENABLE_CUDA)
#include <cblas.h>  // OpenBLAS' configuration, for the results (host builds link a BLAS)
#endif

namespace saescale {

namespace {
nlohmann::json env_or_null(const char* name) {
  const char* v = std::getenv(name);
  return v ? nlohmann::json(v) : nlohmann::json();
}
std::string blas_config() {
#if defined(OPENBLAS_VERSION)
  return std::string(openblas_get_config()) +
         " threads=" + std::to_string(openblas_get_num_threads());
#else
  return "unknown";
#endif
}
}  // namespace

nlohmann::json run_context(int ranks, int dp, int lp) {
  const auto& b = build_info();
  char mpi_version[MPI_MAX_LIBRARY_VERSION_STRING] = {};
  int len = 0;
  SAESCALE_MPI_CHECK(MPI_Get_library_version(mpi_version, &len));
  std::string mpi(mpi_version, len);
  if (auto nl = mpi.find('\n'); nl != std::string::npos) mpi.resize(nl);
  while (!mpi.empty() && (mpi.back() == ',' || mpi.back() == ' ' || mpi.back() == '\0'))
    mpi.pop_back();
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  const std::time_t now = std::time(nullptr);
  char date[32];
  std::strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  const int kv = KOKKOS_VERSION;
  return {{"saescale_version", b.version},
          {"git_commit", b.git_commit},
          {"git_dirty", b.git_dirty},
          {"compiler", b.compiler},
          {"cxx_flags", b.cxx_flags},
          {"build_type", b.build_type},
          {"kokkos_version", std::to_string(kv / 10000) + "." + std::to_string(kv / 100 % 100) +
                                 "." + std::to_string(kv % 100)},
          {"kokkos_flavour", b.kokkos_flavour},
          {"kokkos_exec_space", ExecSpace::name()},
          {"kokkos_concurrency", ExecSpace().concurrency()},
          {"mpi_library", mpi},
          {"ranks", ranks},
          {"grid", {{"dp", dp}, {"lp", lp}}},
          {"blas", b.blas},
          {"blas_config", blas_config()},
          {"gemm_backend", gemm_backend_name()},
          {"cublas_compiled", b.cublas},
          {"cublas",
           std::string(gemm_backend_name()) == "cublas" ? cublas::describe() : nlohmann::json()},
          {"gpu", device::describe()},
          {"slurm_job_id", env_or_null("SLURM_JOB_ID")},
          {"slurm_nodelist", env_or_null("SLURM_JOB_NODELIST")},
          {"hostname", host},
          {"date", date}};
}

void check_output_path(const std::string& path, bool replaceable,
                       const std::vector<std::string>& inputs) {
  if (path.empty()) return;
  io::Outputs outputs;
  outputs.results = path;
  outputs.results_replaceable = replaceable;
  outputs.inputs = inputs;
  io::check_outputs(outputs);
}

void write_results(const std::string& path, const nlohmann::json& results, bool replace) {
  io::write_text_atomic(path, results.dump(2) + "\n", replace ? io::Replace::yes : io::Replace::no);
}

}  // namespace saescale
