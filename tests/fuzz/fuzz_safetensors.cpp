// libFuzzer target: saescale::io::parse_safetensors on arbitrary file images.
// Expected outcomes: a SafetensorsInfo whose offsets lie inside the file and match each tensor's
// shape and dtype, or saescale::Error. Anything else is a bug.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "error.hpp"
#include "fuzz_util.hpp"
#include "io/dtype.hpp"
#include "io/safetensors.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace saescale::io;
  SafetensorsInfo info;
  try {
    info = parse_safetensors(data, size, "fuzz.safetensors");
  } catch (const saescale::Error&) {
    return 0;
  }
  // Re-derived here rather than trusted: the data section starts after the JSON header.
  FUZZ_CHECK(size >= 8);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | data[i];
  const size_t data_start = 8 + header_len;
  FUZZ_CHECK(data_start <= size);

  const TensorInfo* previous = nullptr;
  for (const TensorInfo& t : info.tensors) {
    FUZZ_CHECK(t.name != "__metadata__");
    FUZZ_CHECK(info.find(t.name) != nullptr);
    FUZZ_CHECK(data_start <= t.begin && t.begin <= t.end && t.end <= size);
    if (previous != nullptr) FUZZ_CHECK(previous->begin <= t.begin);  // documented sort order
    previous = &t;
    const size_t item = dtype_size(t.dtype);
    size_t elements = 1;
    for (int64_t d : t.shape) {
      FUZZ_CHECK(d >= 0);
      elements *= static_cast<size_t>(d);  // cannot overflow: end - begin fits in the input
    }
    FUZZ_CHECK(elements * item == t.end - t.begin);
    if (t.end == t.begin) continue;
    // The loaders read [begin, end) straight from the mapping: any byte out of range is a bug.
    fuzz::touch(data + t.begin);
    fuzz::touch(data + t.end - 1);
    const size_t n = std::min<size_t>(elements, 4);
    std::vector<float> out(n);
    convert_to_float(t.dtype, data + t.begin, n, out.data());
    convert_to_float(t.dtype, data + t.end - n * item, n, out.data());
  }
  if (const TensorInfo* act = info.find("activations")) FUZZ_CHECK(act->name == "activations");
  size_t metadata_bytes = 0;
  for (const auto& [k, v] : info.metadata) metadata_bytes += k.size() + v.size();
  FUZZ_CHECK(metadata_bytes <= size);
  return 0;
}
