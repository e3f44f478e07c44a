// The results file (saescale.result/1, docs/measurement.md): context and writing.
#pragma once
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace saescale {

// What makes a number reproducible: build, Kokkos, MPI, BLAS, grid, Slurm, host, date.
nlohmann::json run_context(int ranks, int dp, int lp);

// Refuses (one line) a results path that cannot or must not be written: an existing file unless
// `replaceable`, a special file, one of `inputs`, a missing or read-only directory
// (io/outputs.hpp); call before the run starts.
void check_output_path(const std::string& path, bool replaceable,
                       const std::vector<std::string>& inputs = {});

// Written atomically (temporary file, fsync, rename): never a partial results file. Unless
// `replace`, a file that appeared at `path` meanwhile is not replaced (the error names where the
// results are instead).
void write_results(const std::string& path, const nlohmann::json& results, bool replace);

}  // namespace saescale
