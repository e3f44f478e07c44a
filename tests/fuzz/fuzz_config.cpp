// libFuzzer target: the TOML config of `saescale train --config FILE` (TOML -> command-line
// arguments, then CLI11), set up as src/main.cpp does for the train subcommand.
// Expected outcomes: success, a non-negative exit code from parse_command_line (usage errors,
// --help), or saescale::Error. Anything else (CLI11 or toml++ exceptions escaping, crashes,
// sanitizer reports, leaks, timeouts) is a bug.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "config.hpp"
#include "error.hpp"
#include "fuzz_util.hpp"

namespace {

// parse_command_line reads the config from a path, so each input goes through one file per
// process (unique, so parallel fuzzers do not clobber each other). It is unlinked at once and
// reached through /proc/self/fd, so no file is left behind however the process ends (crashes,
// libFuzzer's _Exit); without /proc it keeps its name and is removed at normal exit.
struct TempFile {
  int fd = -1;
  std::string path, named;
  TempFile() {
    const char* dir = std::getenv("TMPDIR");
    named = std::string(dir && *dir ? dir : "/tmp") + "/saescale-fuzz-config-XXXXXX";
    fd = mkstemp(named.data());
    if (fd < 0) {
      std::perror("fuzz_config: mkstemp");
      std::abort();
    }
    path = "/proc/self/fd/" + std::to_string(fd);
    if (access(path.c_str(), R_OK) == 0) {
      unlink(named.c_str());
      named.clear();
    } else {
      path = named;
    }
  }
  ~TempFile() {
    if (!named.empty()) unlink(named.c_str());
  }
  void write(const uint8_t* data, size_t size) const {
    FUZZ_CHECK(ftruncate(fd, 0) == 0);
    size_t done = 0;
    while (done < size) {
      const ssize_t n = pwrite(fd, data + done, size - done, static_cast<off_t>(done));
      FUZZ_CHECK(n > 0);
      done += static_cast<size_t>(n);
    }
  }
};

// Same App setup as src/main.cpp for `train` (the settings that change how options parse). Built
// once: constructing it costs ~2 ms under ASan+UBSan, ten times a parse. Each parse() starts with
// CLI11's App::clear() and the Config is reset, so every input starts from the same state.
struct TrainCommand {
  CLI::App app{"saescale (fuzz)", "saescale"};
  saescale::Config cfg;
  CLI::App* train = nullptr;
  TrainCommand() {
    app.require_subcommand(1);
    app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
    app.set_version_flag("--version", "saescale 0.1.0");
    train = app.add_subcommand("train", "train one SAE");
    saescale::add_options(*train, cfg, saescale::Subcommand::train);
    train->add_option("--config", "TOML file whose keys are this subcommand's options");
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace saescale;
  static const TempFile file;
  static TrainCommand command;
  file.write(data, size);
  command.cfg = Config{};  // assigned in place: the options keep pointing at its members

  std::string argv0 = "saescale", sub = "train", opt = "--config", path = file.path;
  std::vector<char*> argv{argv0.data(), sub.data(), opt.data(), path.data()};
  try {
    const int code = parse_command_line(command.app, static_cast<int>(argv.size()), argv.data());
    FUZZ_CHECK(code == -1 || code >= 0);
    if (code >= 0) return 0;
  } catch (const Error&) {
    return 0;
  }
  FUZZ_CHECK(command.train->parsed());
  (void)command.cfg.to_json().dump();  // what cli::train records from the parsed Config
  return 0;
}
