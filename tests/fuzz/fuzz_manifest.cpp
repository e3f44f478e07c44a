// libFuzzer target: saescale::io::parse_manifest on arbitrary text (a checkpoint's manifest.json).
// Expected outcomes (for the text as given, and with its CRC-32 corrected): a manifest whose
// CRC-32 matches its content, whose step is its directory's and which lists one well-formed record
// per rank (manifest_record reads each without throwing), or saescale::Error. Anything else is a
// bug.
#include <cstddef>
#include <cstdint>
#include <string>

#include "error.hpp"
#include "fuzz_util.hpp"
#include "io/checkpoint.hpp"

namespace {

void check(const std::string& text) {
  using namespace saescale::io;
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
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  check(text);
  // A mutation almost never keeps the CRC-32 right, which is checked first: the same object
  // with its CRC-32 corrected reaches the checks of the fields behind it.
  const auto json = nlohmann::json::parse(text, nullptr, false);
  if (json.is_object()) {
    auto fixed = json;
    fixed["crc32"] = saescale::io::manifest_crc(json);
    check(fixed.dump());
  }
  return 0;
}
