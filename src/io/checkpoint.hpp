// Checkpoint files (reliability): one binary file per rank with its shard's state, and a manifest
// written last by rank 0; DIR/latest names the newest complete checkpoint. Every file is written
// atomically (temporary file, fsync, rename), and the previous checkpoint is removed only after
// the new one is published, so a kill at any moment leaves a usable checkpoint behind.
//
// Rank file: "SAESCKPT" | uint64 header length | JSON header {sections: [{name, offset, bytes}],
// state: {...}} | raw little-endian sections.
#pragma once
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace saescale::io {

class CheckpointWriter {
 public:
  void add(const std::string& name, const void* data, size_t bytes);
  nlohmann::json& state() { return state_; }  // small values (JSON round-trips doubles exactly)
  void write(const std::string& path) const;

 private:
  std::map<std::string, std::vector<char>> sections_;
  nlohmann::json state_ = nlohmann::json::object();
};

class CheckpointReader {
 public:
  explicit CheckpointReader(const std::string& path);  // validates the whole file
  // Copies section `name` into `out`, which must be exactly its size.
  void read(const std::string& name, void* out, size_t bytes) const;
  size_t size(const std::string& name) const;
  const nlohmann::json& state() const { return state_; }

 private:
  std::string path_;
  std::map<std::string, std::vector<char>> sections_;
  nlohmann::json state_;
};

std::string checkpoint_step_dir(const std::string& dir, int64_t step);
std::string checkpoint_rank_file(const std::string& step_dir, int rank);
// Rank 0, after every rank file is complete: writes the manifest, points DIR/latest at it, then
// removes older checkpoints.
void publish_checkpoint(const std::string& dir, int64_t step, const nlohmann::json& manifest);
// The newest complete checkpoint's manifest (with "path": its directory), if any.
std::optional<nlohmann::json> latest_checkpoint(const std::string& dir);

}  // namespace saescale::io
