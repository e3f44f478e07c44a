#include "io/checkpoint.hpp"

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "error.hpp"
#include "io/atomic_write.hpp"
#include "io/mapped_file.hpp"

namespace saescale::io {

namespace fs = std::filesystem;
namespace {
constexpr char kMagic[8] = {'S', 'A', 'E', 'S', 'C', 'K', 'P', 'T'};
}

void CheckpointWriter::add(const std::string& name, const void* data, size_t bytes) {
  const char* p = static_cast<const char*>(data);
  sections_[name].assign(p, p + bytes);
}

void CheckpointWriter::write(const std::string& path) const {
  nlohmann::json header = {{"sections", nlohmann::json::array()}, {"state", state_}};
  uint64_t offset = 0;
  for (const auto& [name, bytes] : sections_) {
    header["sections"].push_back({{"name", name}, {"offset", offset}, {"bytes", bytes.size()}});
    offset += bytes.size();
  }
  const std::string text = header.dump();
  const uint64_t length = text.size();
  write_file_atomic(path, [&](std::FILE* f) {
    std::fwrite(kMagic, 1, sizeof kMagic, f);
    std::fwrite(&length, sizeof length, 1, f);
    std::fwrite(text.data(), 1, text.size(), f);
    for (const auto& [name, bytes] : sections_) std::fwrite(bytes.data(), 1, bytes.size(), f);
  });
}

CheckpointReader::CheckpointReader(const std::string& path) : path_(path) {
  MappedFile file(path);
  const unsigned char* data = file.data();
  const size_t size = file.size();
  uint64_t length = 0;
  if (size < 16 || std::memcmp(data, kMagic, 8) != 0)
    throw Error(path + ": not a saescale checkpoint file");
  std::memcpy(&length, data + 8, 8);
  if (length > size - 16) throw Error(path + ": truncated checkpoint (header)");
  try {
    const auto header = nlohmann::json::parse(data + 16, data + 16 + length);
    state_ = header.at("state");
    const size_t base = 16 + length;
    for (const auto& s : header.at("sections")) {
      const uint64_t offset = s.at("offset"), bytes = s.at("bytes");
      if (offset > size - base || bytes > size - base - offset)
        throw Error(path + ": truncated checkpoint (section " + s.at("name").get<std::string>() +
                    ")");
      const auto* p = reinterpret_cast<const char*>(data + base + offset);
      sections_[s.at("name").get<std::string>()].assign(p, p + bytes);
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

void publish_checkpoint(const std::string& dir, int64_t step, const nlohmann::json& manifest) {
  const std::string step_dir = checkpoint_step_dir(dir, step);
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
  std::ifstream latest(dir + "/latest");
  std::string name;
  if (!(latest >> name)) return std::nullopt;
  const std::string path = (fs::path(dir) / name).string();
  std::ifstream in(path + "/manifest.json");
  if (!in) throw Error(dir + "/latest names " + name + " but it has no manifest.json");
  nlohmann::json manifest;
  try {
    manifest = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw Error(path + "/manifest.json: invalid JSON: " + e.what());
  }
  manifest["path"] = path;
  return manifest;
}

}  // namespace saescale::io
