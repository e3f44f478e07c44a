// libFuzzer target: saescale::io::CheckpointReader on arbitrary rank-file images.
// Expected outcomes: a reader whose every section lies inside the image and passed its CRC-32, for
// the identity asked for (rank 1 of step 7 on a dp 2 x lp 1 grid), or saescale::Error. Anything
// else (a crash, an out-of-bounds read, another exception) is a bug.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "error.hpp"
#include "fuzz_util.hpp"
#include "io/checkpoint.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace saescale::io;
  const RankFileIdentity expected{1, 7, {{"dp", 2}, {"lp", 1}}};
  try {
    const CheckpointReader reader(data, size, "fuzz/rank-00001.bin", expected, std::nullopt);
    for (const char* name : {"params", "adam_v", "data"}) {
      size_t bytes = 0;
      try {
        bytes = reader.size(name);
      } catch (const saescale::Error&) {
        continue;  // the image has no such section
      }
      FUZZ_CHECK(bytes <= size);
      std::vector<char> out(bytes);
      reader.read(name, out.data(), out.size());
      if (bytes) fuzz::touch(reinterpret_cast<const uint8_t*>(out.data() + bytes - 1));
    }
    FUZZ_CHECK(!reader.state().is_discarded());
    // The whole-file record the manifest keeps: the image's own passes, any other fails.
    const RankFileRecord record{size, crc32(data, size)};
    CheckpointReader again(data, size, "fuzz/rank-00001.bin", expected, record);
    bool refused = false;
    try {
      CheckpointReader(data, size, "fuzz/rank-00001.bin", expected,
                       RankFileRecord{size, record.crc32 ^ 1u});
    } catch (const saescale::Error&) {
      refused = true;
    }
    FUZZ_CHECK(refused);
  } catch (const saescale::Error&) {
  }
  return 0;
}
