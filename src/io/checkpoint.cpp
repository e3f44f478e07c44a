#include "io/checkpoint.hpp"

#include <zlib.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <sstream>

#include "error.hpp"
#include "io/atomic_write.hpp"
#include "io/mapped_file.hpp"

namespace saescale::io {

namespace fs = std::filesystem;
namespace {
constexpr char kMagic[8] = {'S', 'A', 'E', 'S', 'C', 'K', 'P', 'T'};
constexpr const char* kFormat = "saescale.checkpoint/2";
// A whole number in [0, max] (a float or a negative value would not convert safely); `part` names
// what is corrupt otherwise.
uint64_t whole(const nlohmann::json& value, const char* what, uint64_t max, const std::string& file,
               const char* part = "the manifest") {
  if (!value.is_number_unsigned() && !(value.is_number_integer() && value.get<int64_t>() >= 0))
    throw Error(file + ": " + what + " is not a whole number: " + part + " is corrupt");
  const uint64_t v = value.get<uint64_t>();
  if (v > max) throw Error(file + ": " + what + " is out of range: " + part + " is corrupt");
  return v;
}
}  // namespace

uint32_t manifest_crc(nlohmann::json manifest) {
  manifest.erase("crc32");
  manifest.erase("path");
  const std::string text = manifest.dump();
  return crc32(text.data(), text.size());
}

uint32_t crc32(const void* data, size_t bytes, uint32_t crc) {
  if (bytes == 0) return crc;  // zlib returns its initial value for a null buffer (empty vector)
  return static_cast<uint32_t>(::crc32_z(crc, static_cast<const Bytef*>(data), bytes));
}

void CheckpointWriter::add(const std::string& name, const void* data, size_t bytes) {
  const char* p = static_cast<const char*>(data);
  sections_[name].assign(p, p + bytes);
}

RankFileRecord CheckpointWriter::write(const std::string& path,
                                       const RankFileIdentity& identity) const {
  nlohmann::json header = {
      {"identity", identity.to_json()}, {"sections", nlohmann::json::array()}, {"state", state_}};
  uint64_t offset = 0;
  for (const auto& [name, bytes] : sections_) {
    header["sections"].push_back({{"name", name},
                                  {"offset", offset},
                                  {"bytes", bytes.size()},
                                  {"crc32", crc32(bytes.data(), bytes.size())}});
    offset += bytes.size();
  }
  const std::string text = header.dump();
  const uint64_t length = text.size();
  RankFileRecord record;
  const auto put = [&](std::FILE* f, const void* p, size_t n) {
    std::fwrite(p, 1, n, f);
    record.crc32 = crc32(p, n, record.crc32);
    record.bytes += n;
  };
  write_file_atomic(path, [&](std::FILE* f) {
    put(f, kMagic, sizeof kMagic);
    put(f, &length, sizeof length);
    put(f, text.data(), text.size());
    for (const auto& [name, bytes] : sections_) put(f, bytes.data(), bytes.size());
  });
  return record;
}

CheckpointReader::CheckpointReader(const std::string& path, const RankFileIdentity& expected,
                                   const std::optional<RankFileRecord>& record)
    : CheckpointReader(MappedFile(path), expected, record) {}

CheckpointReader::CheckpointReader(const MappedFile& file, const RankFileIdentity& expected,
                                   const std::optional<RankFileRecord>& record)
    : CheckpointReader(file.data(), file.size(), file.path(), expected, record) {}

CheckpointReader::CheckpointReader(const unsigned char* data, size_t size, const std::string& path,
                                   const RankFileIdentity& expected,
                                   const std::optional<RankFileRecord>& record)
    : path_(path) {
  if (record && (size != record->bytes || crc32(data, size) != record->crc32))
    throw Error(path + ": this rank file is not the one the manifest lists (" +
                std::to_string(size) + " bytes, the manifest says " +
                std::to_string(record->bytes) +
                " with another checksum): corrupt, replaced or "
                "swapped; the checkpoint cannot be resumed");
  uint64_t length = 0;
  if (size < 16 || std::memcmp(data, kMagic, 8) != 0)
    throw Error(path + ": not a saescale checkpoint file");
  std::memcpy(&length, data + 8, 8);
  if (length > size - 16) throw Error(path + ": truncated checkpoint (header)");
  try {
    const auto header = nlohmann::json::parse(data + 16, data + 16 + length);
    const auto& id = header.at("identity");
    const char* part = "the checkpoint header";
    if (whole(id.at("rank"), "rank", uint64_t(1) << 31, path, part) != uint64_t(expected.rank) ||
        whole(id.at("step"), "step", uint64_t(1) << 62, path, part) != uint64_t(expected.step) ||
        id.at("grid") != expected.grid)
      throw Error(path + ": this file holds rank " + id.at("rank").dump() + " of step " +
                  id.at("step").dump() + " on grid " + id.at("grid").dump() + ", not rank " +
                  std::to_string(expected.rank) + " of step " + std::to_string(expected.step) +
                  " on grid " + expected.grid.dump() + ": a swapped or foreign rank file");
    state_ = header.at("state");
    const size_t base = 16 + length;
    for (const auto& s : header.at("sections")) {
      const std::string name = s.at("name");
      const uint64_t offset = whole(s.at("offset"), "a section's offset", UINT64_MAX, path, part),
                     bytes = whole(s.at("bytes"), "a section's size", UINT64_MAX, path, part);
      if (offset > size - base || bytes > size - base - offset)
        throw Error(path + ": truncated checkpoint (section " + name + ")");
      const auto* p = reinterpret_cast<const char*>(data + base + offset);
      if (crc32(p, bytes) != whole(s.at("crc32"), "a section's CRC-32", 0xffffffffull, path, part))
        throw Error(path + ": section '" + name + "' fails its CRC-32: the file is corrupt");
      sections_[name].assign(p, p + bytes);
    }
  } catch (const nlohmann::json::exception& e) {
    throw Error(path + ": corrupt checkpoint header: " + e.what());
  }
}

size_t CheckpointReader::size(const std::string& name) const {
  auto it = sections_.find(name);
  if (it == sections_.end()) throw Error(path_ + ": checkpoint has no section '" + name + "'");
  return it->second.size();
}

void CheckpointReader::read(const std::string& name, void* out, size_t bytes) const {
  if (size(name) != bytes)
    throw Error(path_ + ": checkpoint section '" + name + "' has " + std::to_string(size(name)) +
                " bytes, this run needs " + std::to_string(bytes) +
                " (a different shape or grid?)");
  if (bytes) std::memcpy(out, sections_.at(name).data(), bytes);
}

std::string checkpoint_step_dir(const std::string& dir, int64_t step) {
  char name[32];
  std::snprintf(name, sizeof name, "step-%09lld", static_cast<long long>(step));
  return (fs::path(dir) / name).string();
}

std::string checkpoint_rank_file(const std::string& step_dir, int rank) {
  char name[32];
  std::snprintf(name, sizeof name, "rank-%05d.bin", rank);
  return (fs::path(step_dir) / name).string();
}

void publish_checkpoint(const std::string& dir, int64_t step, nlohmann::json manifest,
                        const std::vector<RankFileRecord>& files) {
  const std::string step_dir = checkpoint_step_dir(dir, step);
  manifest["format"] = kFormat;
  manifest["step"] = step;
  manifest["ranks"] = files.size();
  manifest["files"] = nlohmann::json::array();
  for (size_t r = 0; r < files.size(); ++r)
    manifest["files"].push_back(
        {{"rank", r},
         {"file",
          fs::path(checkpoint_rank_file(step_dir, static_cast<int>(r))).filename().string()},
         {"bytes", files[r].bytes},
         {"crc32", files[r].crc32}});
  manifest["crc32"] = manifest_crc(manifest);
  write_text_atomic(step_dir + "/manifest.json", manifest.dump(2) + "\n");
  write_text_atomic(dir + "/latest", fs::path(step_dir).filename().string() + "\n");
  // Older checkpoints go only now that the new one is complete and named.
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec))
    if (entry.is_directory() && entry.path().filename().string().rfind("step-", 0) == 0 &&
        entry.path() != fs::path(step_dir))
      fs::remove_all(entry.path(), ec);
}

std::optional<nlohmann::json> latest_checkpoint(const std::string& dir) {
  std::error_code ec;
  if (!fs::exists(dir + "/latest", ec)) return std::nullopt;
  std::istringstream latest(read_whole_file(dir + "/latest"));  // never blocks on a FIFO
  std::string name;
  if (!(latest >> name)) throw Error(dir + "/latest names no checkpoint");
  const std::string path = (fs::path(dir) / name).string();
  const std::string file = path + "/manifest.json";
  if (!fs::exists(file, ec))
    throw Error(dir + "/latest names " + name + " but it has no manifest.json");
  nlohmann::json manifest = parse_manifest(read_whole_file(file), file, dir, path);
  manifest["path"] = path;
  return manifest;
}

nlohmann::json parse_manifest(const std::string& text, const std::string& file,
                              const std::string& dir, const std::string& step_dir) {
  nlohmann::json manifest;
  try {
    manifest = nlohmann::json::parse(text);
    if (!manifest.is_object()) throw Error(file + ": not a checkpoint manifest (a JSON object)");
    if (manifest.value("format", "") != kFormat)
      throw Error(file + ": format " + manifest.value("format", std::string("(none)")) +
                  ", this saescale reads " + kFormat);
    if (whole(manifest.at("crc32"), "crc32", 0xffffffffull, file) != manifest_crc(manifest))
      throw Error(file +
                  ": its content does not match its CRC-32 (edited or corrupt): the "
                  "checkpoint cannot be resumed");
    const auto step =
        static_cast<int64_t>(whole(manifest.at("step"), "step", uint64_t(1) << 62, file));
    if (checkpoint_step_dir(dir, step) != step_dir)
      throw Error(file + ": says step " + manifest.at("step").dump() + " but lies in " + step_dir);
    if (!manifest.at("files").is_array() ||
        manifest.at("files").size() !=
            whole(manifest.at("ranks"), "ranks", uint64_t(1) << 31, file))
      throw Error(file + ": does not list one rank file per rank (" + manifest.at("ranks").dump() +
                  " ranks)");
    for (size_t r = 0; r < manifest.at("files").size(); ++r) {  // as manifest_record reads them
      const auto& f = manifest.at("files")[r];
      if (!f.is_object() || whole(f.at("rank"), "rank", uint64_t(1) << 31, file) != r ||
          !f.at("bytes").is_number_unsigned() || !f.at("crc32").is_number_unsigned() ||
          f.at("crc32").get<uint64_t>() > 0xffffffffull)
        throw Error(file + ": rank file entry " + std::to_string(r) + " is malformed");
    }
  } catch (const nlohmann::json::exception& e) {
    throw Error(file + ": invalid manifest: " + e.what());
  }
  return manifest;
}

RankFileRecord manifest_record(const nlohmann::json& manifest, int rank) {
  const auto& files = manifest.at("files");
  if (rank < 0 || static_cast<size_t>(rank) >= files.size() || files[rank].at("rank") != rank)
    throw Error(manifest.value("path", std::string("the checkpoint")) +
                "/manifest.json: no record of rank " + std::to_string(rank) + "'s file");
  return {files[rank].at("bytes").get<uint64_t>(), files[rank].at("crc32").get<uint32_t>()};
}

}  // namespace saescale::io
