// Checkpoint files (reliability): one binary file per rank with its shard's state, and a manifest
// written last by rank 0; DIR/latest names the newest complete checkpoint. Every file is written
// atomically (temporary file, fsync, rename), and the previous checkpoint is removed only after
// the new one is published, so a kill at any moment leaves a usable checkpoint behind.
//
// Rank file: "SAESCKPT" | uint64 header length | JSON header {identity: {rank, step, grid},
// sections: [{name, offset, bytes, crc32}], state: {...}} | raw little-endian sections.
// Integrity: every section carries its CRC-32 (zlib), the header names the rank, step and grid it
// belongs to, and the manifest lists every rank file with its size and whole-file CRC-32 and
// carries a CRC-32 of its own content: a flipped bit, a swapped or foreign rank file and an edited
// manifest are refused, naming the file.
#pragma once
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace saescale::io {

// What a rank file says it is and what it must be when read back.
struct RankFileIdentity {
  int rank = 0;
  int64_t step = 0;
  nlohmann::json grid;  // {dp, lp}
  nlohmann::json to_json() const { return {{"rank", rank}, {"step", step}, {"grid", grid}}; }
};

// A written rank file: what the manifest records of it.
struct RankFileRecord {
  uint64_t bytes = 0;
  uint32_t crc32 = 0;
};

class CheckpointWriter {
 public:
  void add(const std::string& name, const void* data, size_t bytes);
  nlohmann::json& state() { return state_; }  // small values (JSON round-trips doubles exactly)
  RankFileRecord write(const std::string& path, const RankFileIdentity& identity) const;

 private:
  std::map<std::string, std::vector<char>> sections_;
  nlohmann::json state_ = nlohmann::json::object();
};

class CheckpointReader {
 public:
  // Validates the whole file: its structure, every section's CRC-32, that it is `expected`'s
  // rank file (rank, step, grid) and, when `record` is given, its size and whole-file CRC-32.
  CheckpointReader(const std::string& path, const RankFileIdentity& expected,
                   const std::optional<RankFileRecord>& record);
  // The same on a file's bytes (`path` only names it in errors): what the fuzzer drives.
  CheckpointReader(const unsigned char* data, size_t size, const std::string& path,
                   const RankFileIdentity& expected, const std::optional<RankFileRecord>& record);
  // Copies section `name` into `out`, which must be exactly its size.
  void read(const std::string& name, void* out, size_t bytes) const;
  size_t size(const std::string& name) const;
  const nlohmann::json& state() const { return state_; }

 private:
  CheckpointReader(const class MappedFile& file, const RankFileIdentity& expected,
                   const std::optional<RankFileRecord>& record);
  std::string path_;
  std::map<std::string, std::vector<char>> sections_;
  nlohmann::json state_;
};

uint32_t crc32(const void* data, size_t bytes, uint32_t crc = 0);

std::string checkpoint_step_dir(const std::string& dir, int64_t step);
std::string checkpoint_rank_file(const std::string& step_dir, int rank);
// Rank 0, after every rank file is complete: writes the manifest (its `files` are the rank files'
// records, in rank order; a CRC-32 of its content is added), points DIR/latest at it, then removes
// older checkpoints.
void publish_checkpoint(const std::string& dir, int64_t step, nlohmann::json manifest,
                        const std::vector<RankFileRecord>& files);
// The newest complete checkpoint's manifest (with "path": its directory), if any; refused when
// its content does not match its CRC-32 or its step is not its directory's.
std::optional<nlohmann::json> latest_checkpoint(const std::string& dir);
// A manifest's text, validated as latest_checkpoint does: `file` names it in errors and `step_dir`
// is the directory it must lie in (checkpoint_step_dir of its step).
nlohmann::json parse_manifest(const std::string& text, const std::string& file,
                              const std::string& dir, const std::string& step_dir);
// The CRC-32 a manifest carries: over its compact dump without the "crc32" and "path" keys.
uint32_t manifest_crc(nlohmann::json manifest);
// The manifest's record of `rank`'s file (refused when it has none).
RankFileRecord manifest_record(const nlohmann::json& manifest, int rank);

}  // namespace saescale::io
