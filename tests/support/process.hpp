// Runs a command line through the shell and captures its exit code, stdout and stderr.
#pragma once
#include <sys/wait.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

namespace testing_support {

struct Result {
  int code;
  std::string out, err;
};

inline std::string slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

inline Result run(const std::string& command, const std::string& scratch_dir) {
  const std::string out = scratch_dir + "/cmd.out", err = scratch_dir + "/cmd.err";
  const int status = std::system((command + " >" + out + " 2>" + err).c_str());
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, slurp(out), slurp(err)};
}

// The saescale binary under test (set by CMake).
inline std::string saescale() { return SAESCALE_BINARY; }

}  // namespace testing_support
