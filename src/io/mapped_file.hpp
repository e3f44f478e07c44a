// Read-only memory map of a whole file, so the .npy / .safetensors parsers can validate and
// convert straight from the page cache without an extra copy. Reads during training go through
// read() instead: a file truncated under a mapping kills the process with SIGBUS, while pread
// returns short and becomes an error naming the file.
#pragma once
#include <cstddef>
#include <string>

namespace saescale::io {

class MappedFile {
 public:
  // Throws saescale::Error if the file is missing, unreadable, not a regular file or empty.
  explicit MappedFile(const std::string& path);
  ~MappedFile();

  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;

  const unsigned char* data() const { return data_; }
  // Copies [offset, offset + bytes) into `out`; throws if the file no longer holds them.
  void read(size_t offset, size_t bytes, void* out) const;
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  void release() noexcept;

  std::string path_;
  const unsigned char* data_ = nullptr;
  size_t size_ = 0;
  int fd_ = -1;
};

// A small file's whole contents (a manifest, a cfg.json, a results file), with MappedFile's
// checks: a FIFO or a device is refused instead of blocking the reader.
std::string read_whole_file(const std::string& path);

}  // namespace saescale::io
