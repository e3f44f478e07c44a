// Checks a results file against schemas/saescale.result-1.schema.json by running
// `python -m saescale_analysis validate` (SAESCALE_PYTHON and SAESCALE_ANALYSIS_DIR are set by
// CMake). A file that does not validate, or a validator that cannot run (no interpreter, no
// jsonschema), is a test failure, never a skip.
#pragma once
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <string>

#include "support/process.hpp"

namespace testing_support {

// `s` in single quotes for sh.
inline std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

// Adds a failure (at the caller's line) with the validator's output unless `path` is a valid
// saescale.result/1 file.
inline void expect_valid_results(const std::string& path, const char* file = __builtin_FILE(),
                                 int line = __builtin_LINE()) {
  namespace fs = std::filesystem;
  // The validator's own scratch directory: run() would overwrite the caller's cmd.out/cmd.err.
  const fs::path scratch =
      fs::temp_directory_path() / ("saescale_validate_" + std::to_string(getpid()));
  fs::create_directories(scratch);
  const std::string python = SAESCALE_PYTHON;
  const Result r =
      run("PYTHONPATH=" + shell_quote(SAESCALE_ANALYSIS_DIR) + " " + shell_quote(python) +
              " -m saescale_analysis validate " + shell_quote(path),
          scratch.string());
  std::error_code ignored;
  fs::remove_all(scratch, ignored);
  if (r.code == 0) return;
  // Exit 1 with the validator's summary line: the file is invalid. Anything else: it did not run.
  if (r.code == 1 && r.out.find("validate: ") != std::string::npos)
    ADD_FAILURE_AT(file, line) << path << " does not match schemas/saescale.result-1.schema.json:\n"
                               << r.out << r.err;
  else
    ADD_FAILURE_AT(file, line) << "could not validate " << path << ": `"
                               << (python.empty() ? "(no Python found)" : python)
                               << " -m saescale_analysis validate` exited " << r.code
                               << "; run `make deps` to install Python and the analysis "
                                  "requirements (jsonschema), then reconfigure\n"
                               << r.out << r.err;
}

}  // namespace testing_support
