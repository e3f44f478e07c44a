// safetensors reading (validated against the file size) and float32 writing.
// Format: u64 little-endian header length N, N bytes of JSON, then the tensor bytes.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "io/dtype.hpp"

namespace saescale::io {

struct TensorInfo {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  size_t begin;  // absolute byte offsets in the file
  size_t end;
};

struct SafetensorsInfo {
  std::vector<TensorInfo> tensors;  // sorted by begin offset
  std::map<std::string, std::string> metadata;
  // nullptr if there is no tensor with that name.
  const TensorInfo* find(const std::string& name) const;
};

// Validates the whole file image; path is only used in error messages.
SafetensorsInfo parse_safetensors(const unsigned char* data, size_t size, const std::string& path);

struct NamedTensor {
  std::string name;
  std::vector<int64_t> shape;
  std::vector<float> values;
};

// "[2, 3]" for error messages.
std::string shape_string(const std::vector<int64_t>& shape);

// Writes F32 tensors, packed in the order given, atomically. The JSON header is padded with
// spaces so the data section starts 8-byte aligned.
void write_safetensors(const std::string& path, const std::vector<NamedTensor>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// Reads every tensor converted to float32, in file order (by begin offset).
std::vector<NamedTensor> read_safetensors(const std::string& path);

// Writes one tensor of any supported dtype from raw little-endian bytes (for test files).
void write_safetensors_raw(const std::string& path, const std::string& name, DType dtype,
                           const std::vector<int64_t>& shape, const void* bytes, size_t nbytes);

}  // namespace saescale::io
