// Where a run will write, checked before it starts, so that a run never trains for hours and then
// fails to save: the results file, the weights directory and the checkpoint directory. And what
// --force may do: replace existing regular files, never a special file and never a file the run
// reads. Host-only C++.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace saescale::io {

struct Outputs {
  std::string results;         // --out: a file
  std::string weights_dir;     // --save-weights: a directory (sae_weights.safetensors, cfg.json)
  std::string checkpoint_dir;  // --checkpoint-dir
  bool force = false;          // --force: existing results and weights may be replaced
  bool results_replaceable = false;  // the results file may be replaced (--force, or resuming a
                                     // preempted run's results)
  std::vector<std::string> inputs;   // files the run reads (data, --init, --ground-truth)
};

// Throws one line naming the output and the fix: a path that is a directory where a file goes (or
// the reverse), an existing output without --force, a special file, an input of the run, a
// missing or read-only directory.
void check_outputs(const Outputs& outputs);

// Throws unless the file system of `dir` (or its nearest existing ancestor) has `bytes` free.
void check_free_space(const std::string& dir, int64_t bytes, const std::string& what);

// The nearest existing ancestor of `path` (itself if it exists).
std::string existing_ancestor(const std::string& path);

// Files behind --init: the weights file and the cfg.json beside it.
std::vector<std::string> weights_files(const std::string& init);

// An exclusive lock on `dir`/.lock while this object lives (flock; the file is removed on release,
// and a killed process leaves a file no one holds), creating `dir`. Throws, naming the holder's
// pid, when another run holds it.
class DirectoryLock {
 public:
  DirectoryLock() = default;
  explicit DirectoryLock(const std::string& dir);
  ~DirectoryLock();
  DirectoryLock(DirectoryLock&& other) noexcept;
  DirectoryLock& operator=(DirectoryLock&& other) noexcept;
  DirectoryLock(const DirectoryLock&) = delete;
  DirectoryLock& operator=(const DirectoryLock&) = delete;
  bool held() const { return fd_ >= 0; }

 private:
  void release() noexcept;

  std::string path_;
  int fd_ = -1;
};

}  // namespace saescale::io
