#include "io/outputs.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <utility>

#include "error.hpp"
#include "host_memory.hpp"

namespace saescale::io {

namespace fs = std::filesystem;

namespace {

bool same_file(const std::string& a, const std::string& b) {
  struct stat sa {
  }, sb{};
  return ::stat(a.c_str(), &sa) == 0 && ::stat(b.c_str(), &sb) == 0 && sa.st_dev == sb.st_dev &&
         sa.st_ino == sb.st_ino;
}

// A directory this process can create files in: an existing one, or the nearest existing
// ancestor of one still to be created (which must be a directory, not a file on the way).
void check_writable_dir(const std::string& dir, const std::string& option) {
  const std::string base = existing_ancestor(dir.empty() ? "." : dir);
  if (!fs::is_directory(base))
    throw Error(option + " " + dir + ": " + base + " is not a directory");
  if (::access(base.c_str(), W_OK | X_OK) != 0)
    throw Error(option + " " + dir + ": cannot write in " + base + ": " + std::strerror(errno));
}

// An existing output file may be replaced only when allowed, only if it is a regular file, and
// never when it is one of the run's inputs.
void check_replaceable(const std::string& path, const std::string& option, bool allowed,
                       const std::vector<std::string>& inputs) {
  if (!fs::exists(fs::symlink_status(path))) return;
  if (fs::is_directory(path))
    throw Error(option + " " + path + " is a directory: give a file name");
  if (!fs::is_regular_file(fs::symlink_status(path)))
    throw Error(option + " " + path +
                " exists and is not a regular file: saescale replaces only regular files");
  for (const auto& input : inputs)
    if (same_file(path, input))
      throw Error(option + " " + path + " is an input of this run (" + input +
                  "): it would be overwritten; write elsewhere");
  if (!allowed) throw Error(path + " already exists (use --force to overwrite)");
}

}  // namespace

std::string existing_ancestor(const std::string& path) {
  fs::path p = fs::absolute(path);
  while (!fs::exists(p) && p.has_parent_path() && p != p.parent_path()) p = p.parent_path();
  return p.string();
}

std::vector<std::string> weights_files(const std::string& init) {
  if (init.empty()) return {};
  if (fs::is_directory(init)) return {init + "/sae_weights.safetensors", init + "/cfg.json"};
  return {init, (fs::path(init).parent_path() / "cfg.json").string()};
}

void check_outputs(const Outputs& o) {
  if (!o.results.empty()) {
    check_replaceable(o.results, "--out", o.results_replaceable, o.inputs);
    const auto dir = fs::path(o.results).parent_path();
    if (!dir.empty() && !fs::is_directory(dir))
      throw Error(o.results + ": directory " + dir.string() + " does not exist");
    check_writable_dir(dir.string(), "--out");
  }
  if (!o.weights_dir.empty()) {
    if (fs::exists(o.weights_dir) && !fs::is_directory(o.weights_dir))
      throw Error("--save-weights " + o.weights_dir + " is not a directory");
    for (const char* name : {"sae_weights.safetensors", "cfg.json"})
      check_replaceable(o.weights_dir + "/" + name, "--save-weights", o.force, o.inputs);
    check_writable_dir(o.weights_dir, "--save-weights");
  }
  if (!o.checkpoint_dir.empty()) {
    if (fs::exists(o.checkpoint_dir) && !fs::is_directory(o.checkpoint_dir))
      throw Error("--checkpoint-dir " + o.checkpoint_dir + " is not a directory");
    check_writable_dir(o.checkpoint_dir, "--checkpoint-dir");
  }
}

void check_free_space(const std::string& dir, int64_t bytes, const std::string& what) {
  std::error_code ec;
  const auto space = fs::space(existing_ancestor(dir), ec);
  if (!ec && double(bytes) > double(space.available))
    throw Error(what + " needs about " + gib(bytes) + " free in " + dir + ", which has " +
                gib(static_cast<int64_t>(space.available)));
}

DirectoryLock::DirectoryLock(const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw Error(dir + ": cannot create the directory: " + ec.message());
  path_ = dir + "/.lock";
  for (;;) {
    fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd_ < 0) throw Error(path_ + ": cannot open the lock file: " + std::strerror(errno));
    if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
      char holder[32] = {};
      const ssize_t n = ::pread(fd_, holder, sizeof holder - 1, 0);
      ::close(fd_);
      fd_ = -1;
      throw Error(dir + " is in use by another run (pid " +
                  (n > 0 ? std::string(holder, std::strcspn(holder, "\n")) : std::string("?")) +
                  ", holding " + path_ + "): give each run its own --checkpoint-dir");
    }
    // The holder removes the file when it lets go: a lock on a file no longer at the path locks
    // nothing, so take the one there now.
    struct stat held {};
    struct stat there {};
    if (::fstat(fd_, &held) == 0 && ::stat(path_.c_str(), &there) == 0 &&
        held.st_dev == there.st_dev && held.st_ino == there.st_ino)
      break;
    ::close(fd_);
  }
  const std::string pid = std::to_string(::getpid()) + "\n";
  if (::ftruncate(fd_, 0) != 0 || ::pwrite(fd_, pid.data(), pid.size(), 0) < 0) {
    // The lock holds without the pid; only the message of a refused run would lack it.
  }
}

DirectoryLock::~DirectoryLock() { release(); }

void DirectoryLock::release() noexcept {
  if (fd_ < 0) return;
  ::unlink(path_.c_str());  // nothing left behind (removed while still held: see above)
  ::close(fd_);             // releases the lock
  fd_ = -1;
}

DirectoryLock::DirectoryLock(DirectoryLock&& other) noexcept
    : path_(std::move(other.path_)), fd_(std::exchange(other.fd_, -1)) {}

DirectoryLock& DirectoryLock::operator=(DirectoryLock&& other) noexcept {
  if (this != &other) {
    release();
    path_ = std::move(other.path_);
    fd_ = std::exchange(other.fd_, -1);
  }
  return *this;
}

}  // namespace saescale::io
