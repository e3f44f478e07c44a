// libFuzzer target: saescale::io::parse_manifest on arbitrary text (a checkpoint's manifest.json).
// Expected outcomes: a manifest whose CRC-32 matches its content, whose step is its directory's
// and which lists one well-formed record per rank (manifest_record reads each without throwing),
// or saescale::Error. Anything else is a bug.
#include <cstddef>
#include <cstdint>
#include <string>

#include "error.hpp"
#include "fuzz_util.hpp"
#include "io/checkpoint.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace saescale::io;
  const std::string text(reinterpret_cast<const char*>(data), size);
  const std::string dir = "ckpt", step_dir = checkpoint_step_dir(dir, 10);
  try {
    nlohmann::json manifest = parse_manifest(text, step_dir + "/manifest.json", dir, step_dir);
    FUZZ_CHECK(manifest.at("step").get<int64_t>() == 10);
    const size_t ranks = manifest.at("ranks").get<size_t>();
    FUZZ_CHECK(manifest.at("files").size() == ranks);
    manifest["path"] = step_dir;
    for (size_t r = 0; r < ranks && r < 64; ++r) manifest_record(manifest, static_cast<int>(r));
  } catch (const saescale::Error&) {
  }
  return 0;
}
