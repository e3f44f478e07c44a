// The results file (saescale.result/1, architecture.md §3.2): context and writing.
#pragma once
#include <string>

#include <nlohmann/json.hpp>

namespace saescale {

// What makes a number reproducible: build, Kokkos, MPI, BLAS, grid, Slurm, host, date.
nlohmann::json run_context(int ranks, int dp, int lp);

// Refuses to overwrite an existing file unless `force`; call before the run starts.
void check_output_path(const std::string& path, bool force);

// Written atomically (temporary file, fsync, rename): never a partial results file.
void write_results(const std::string& path, const nlohmann::json& results);

}  // namespace saescale
