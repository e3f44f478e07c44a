// NumPy .npy reading (validation only; callers convert from the mapped bytes) and writing.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "io/dtype.hpp"

namespace saescale::io {

struct NpyInfo {
  DType dtype;  // F32 ('<f4') or F16 ('<f2')
  std::vector<int64_t> shape;
  size_t data_offset;  // from the start of the file
  size_t data_bytes;   // exactly size - data_offset
};

// Validates the whole file image; path is only used in error messages.
NpyInfo parse_npy(const unsigned char* data, size_t size, const std::string& path);

// Writes '<f4', C order, format version 1.0, atomically.
void write_npy(const std::string& path, const float* data, const std::vector<int64_t>& shape);

// Same with '<f2' elements given as raw half bits (used to make float16 test files).
void write_npy_f16(const std::string& path, const uint16_t* data,
                   const std::vector<int64_t>& shape);

}  // namespace saescale::io
