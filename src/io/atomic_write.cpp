#include "io/atomic_write.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "error.hpp"

namespace saescale::io {

namespace {

std::string parent_dir(const std::string& path) {
  size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

// Makes the rename itself durable; best effort, since some filesystems refuse directory fsync.
void fsync_dir(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

// The written file stays where it is: nothing is lost.
[[noreturn]] void rename_failed(const std::string& path, const std::string& tmp, int err) {
  throw Error(path + ": cannot rename " + tmp + " into place (" + std::strerror(err) +
              "): the output is kept in " + tmp);
}

}  // namespace

void write_file_atomic(const std::string& path, const std::function<void(std::FILE*)>& writer,
                       Replace replace) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (f == nullptr) {
    throw Error(path + ": cannot create temporary file " + tmp + ": " + std::strerror(errno));
  }
  try {
    writer(f);
    if (std::ferror(f) != 0 || std::fflush(f) != 0) {
      throw Error(path + ": write failed: " + std::strerror(errno));
    }
    if (::fsync(::fileno(f)) != 0) throw Error(path + ": fsync failed: " + std::strerror(errno));
  } catch (...) {
    std::fclose(f);
    std::remove(tmp.c_str());
    throw;
  }
  if (std::fclose(f) != 0) {
    int err = errno;
    std::remove(tmp.c_str());
    throw Error(path + ": close failed: " + std::strerror(err));
  }
  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0 && !S_ISREG(st.st_mode))
    throw Error(path + " is not a regular file, so it is not replaced; the output is in " + tmp);
  if (replace == Replace::no) {
    // RENAME_NOREPLACE where the file system has it, else link() (which also refuses an
    // existing target): a file that appeared while the run went is never overwritten.
    int rc = ::renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, path.c_str(), RENAME_NOREPLACE);
    if (rc != 0 && (errno == EINVAL || errno == ENOSYS)) {
      rc = ::link(tmp.c_str(), path.c_str());
      if (rc == 0) ::unlink(tmp.c_str());
    }
    if (rc != 0 && errno == EEXIST)
      throw Error(path +
                  " appeared while this run was going (another run with the same output?): "
                  "it was not replaced; this run's output is in " +
                  tmp);
    if (rc != 0) rename_failed(path, tmp, errno);
  } else if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    rename_failed(path, tmp, errno);
  }
  fsync_dir(parent_dir(path));
}

void write_text_atomic(const std::string& path, const std::string& text, Replace replace) {
  write_file_atomic(
      path, [&](std::FILE* f) { std::fwrite(text.data(), 1, text.size(), f); }, replace);
}

}  // namespace saescale::io
