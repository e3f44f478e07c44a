// Read-only memory map of a whole file, so the .npy / .safetensors parsers can validate and
// convert straight from the page cache without an extra copy.
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
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  void unmap() noexcept;

  std::string path_;
  const unsigned char* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace saescale::io
