// libFuzzer target: saescale::io::parse_npy on arbitrary file images.
// Expected outcomes: an NpyInfo that keeps its promises, or saescale::Error. Anything else (other
// exception types, crashes, sanitizer reports, leaks, timeouts) is a bug.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "error.hpp"
#include "fuzz_util.hpp"
#include "io/dtype.hpp"
#include "io/npy.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace saescale::io;
  NpyInfo info;
  try {
    info = parse_npy(data, size, "fuzz.npy");
  } catch (const saescale::Error&) {
    return 0;
  }
  FUZZ_CHECK(info.dtype == DType::F32 || info.dtype == DType::F16);
  // The header documents data_bytes == size - data_offset: the loaders index with these.
  FUZZ_CHECK(info.data_offset <= size);
  FUZZ_CHECK(info.data_bytes == size - info.data_offset);
  size_t elements = 1;
  for (int64_t d : info.shape) {
    FUZZ_CHECK(d >= 0);
    elements *= static_cast<size_t>(d);  // cannot overflow: data_bytes fits in the input
  }
  const size_t item = dtype_size(info.dtype);
  FUZZ_CHECK(elements * item == info.data_bytes);
  if (info.data_bytes == 0) return 0;
  fuzz::touch(data + info.data_offset);
  fuzz::touch(data + info.data_offset + info.data_bytes - 1);
  // Convert the first and last few elements as the data sources do.
  const size_t n = std::min<size_t>(elements, 4);
  std::vector<float> out(n);
  convert_to_float(info.dtype, data + info.data_offset, n, out.data());
  convert_to_float(info.dtype, data + info.data_offset + (elements - n) * item, n, out.data());
  return 0;
}
