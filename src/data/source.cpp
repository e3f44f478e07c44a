#include "data/source.hpp"

#include <cmath>

#include <glob.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "data/rng.hpp"
#include "data/synthetic.hpp"
#include "error.hpp"
#include "io/dtype.hpp"
#include "io/mapped_file.hpp"
#include "io/npy.hpp"
#include "io/safetensors.hpp"

namespace saescale {
namespace {

class SyntheticSource final : public DataSource {
 public:
  explicit SyntheticSource(const SyntheticSpec& spec) : gen_(spec) {}
  int64_t dim() const override { return gen_.spec().d; }
  void next_batch(float* out, int64_t global_rows, int64_t first, int64_t rows) override {
    gen_.generate(cursor_ + first, rows, out);
    cursor_ += global_rows;
  }
  void head(float* out, int64_t rows) override { gen_.generate(0, rows, out); }
  int64_t eval_set(float* out, int64_t rows) override {
    gen_.generate(kEvalFirstToken, rows, out);  // a token range training never reaches
    return rows;
  }
  int64_t total_rows() const override { return gen_.spec().tokens ? gen_.spec().tokens : -1; }
  void read_rows(int64_t first, int64_t n, float* out) override { gen_.generate(first, n, out); }
  std::vector<char> save_state() const override {
    const char* p = reinterpret_cast<const char*>(&cursor_);
    return {p, p + sizeof cursor_};
  }
  void load_state(const std::vector<char>& state) override {
    if (state.size() != sizeof cursor_) throw Error("checkpoint: not a synthetic data position");
    std::memcpy(&cursor_, state.data(), sizeof cursor_);
  }
  const std::vector<float>* ground_truth() const override { return &gen_.dictionary(); }
  nlohmann::json describe() const override {
    return {{"kind", "synthetic"},
            {"spec", gen_.spec().describe()},
            {"true_features", gen_.spec().features},
            {"true_l0", gen_.spec().l0}};
  }

 private:
  static constexpr int64_t kEvalFirstToken = int64_t(1) << 50;
  SyntheticData gen_;
  int64_t cursor_ = 0;
};

struct Shard {
  io::MappedFile file;
  io::DType dtype;
  size_t offset;  // byte offset of row 0
  int64_t rows;
};

class FileSource final : public DataSource {
 public:
  FileSource(const std::vector<std::string>& paths, const DataOptions& o) : spec_(o.spec) {
    for (const auto& path : paths) open_shard(path, o.d_model);
    int64_t total = 0;
    for (const auto& s : shards_) starts_.push_back(total), total += s.rows;
    total_ = total;
    eval_rows_ = std::min<int64_t>(o.eval_tokens, total / 5);
    train_rows_ = total - eval_rows_;
    if (train_rows_ < 1) throw Error(o.spec + ": no rows to train on");
    rng_ = Rng(o.seed, 0x5eed);
    buffer_rows_ = std::min<int64_t>(o.shuffle_buffer, train_rows_);
    buffer_.resize(buffer_rows_);
    for (auto& row : buffer_) row = next_sequential();
    if (!o.ground_truth.empty()) load_ground_truth(o.ground_truth);
  }

  int64_t dim() const override { return d_; }
  // The shuffle buffer holds row indices: every rank draws the whole global batch's indices (cheap)
  // and reads only the rows of its slice from the mapped files.
  void next_batch(float* out, int64_t global_rows, int64_t first, int64_t rows) override {
    for (int64_t r = 0; r < global_rows; ++r) {
      int64_t& slot = buffer_[rng_.below(buffer_rows_)];
      if (r >= first && r < first + rows) read_row(slot, out + (r - first) * d_);
      slot = next_sequential();
    }
  }
  void head(float* out, int64_t rows) override {
    for (int64_t r = 0; r < rows; ++r) read_row(r % train_rows_, out + r * d_);
  }
  int64_t eval_set(float* out, int64_t rows) override {
    const int64_t n = std::min(rows, eval_rows_);
    read_rows(train_rows_, n, out);
    return n;
  }
  int64_t total_rows() const override { return total_; }
  void read_rows(int64_t first, int64_t n, float* out) override {
    if (first < 0 || first + n > total_) throw Error(spec_ + ": row range outside the data");
    for (int64_t r = 0; r < n; ++r) read_row(first + r, out + r * d_);
  }
  const std::vector<float>* ground_truth() const override {
    return truth_.empty() ? nullptr : &truth_;
  }
  // The shuffle RNG, the sequential cursor and the buffer of row indices.
  std::vector<char> save_state() const override {
    std::vector<char> out(sizeof rng_ + sizeof cursor_ + buffer_.size() * sizeof(int64_t));
    std::memcpy(out.data(), &rng_, sizeof rng_);
    std::memcpy(out.data() + sizeof rng_, &cursor_, sizeof cursor_);
    std::memcpy(out.data() + sizeof rng_ + sizeof cursor_, buffer_.data(),
                buffer_.size() * sizeof(int64_t));
    return out;
  }
  void load_state(const std::vector<char>& state) override {
    if (state.size() != sizeof rng_ + sizeof cursor_ + buffer_.size() * sizeof(int64_t))
      throw Error(spec_ +
                  ": the checkpoint's data position does not match this data "
                  "(different files or --shuffle-buffer?)");
    std::memcpy(&rng_, state.data(), sizeof rng_);
    std::memcpy(&cursor_, state.data() + sizeof rng_, sizeof cursor_);
    std::memcpy(buffer_.data(), state.data() + sizeof rng_ + sizeof cursor_,
                buffer_.size() * sizeof(int64_t));
  }
  nlohmann::json describe() const override {
    return {{"kind", "files"},           {"spec", spec_},
            {"files", shards_.size()},   {"rows", total_},
            {"train_rows", train_rows_}, {"eval_rows", eval_rows_}};
  }

 private:
  void open_shard(const std::string& path, int64_t d_model) {
    io::MappedFile file(path);
    io::DType dtype;
    std::vector<int64_t> shape;
    size_t offset;
    if (path.size() > 4 && path.compare(path.size() - 4, 4, ".npy") == 0) {
      auto info = io::parse_npy(file.data(), file.size(), path);
      dtype = info.dtype, shape = info.shape, offset = info.data_offset;
    } else if (path.size() > 12 && path.compare(path.size() - 12, 12, ".safetensors") == 0) {
      auto info = io::parse_safetensors(file.data(), file.size(), path);
      const auto* t = info.find("activations");
      if (!t) throw Error(path + ": no tensor named 'activations'");
      dtype = t->dtype, shape = t->shape, offset = t->begin;
    } else {
      throw Error(path + ": unknown data format (expected .npy or .safetensors)");
    }
    if (dtype == io::DType::F64)
      throw Error(path + ": float64 activations are not supported (use f32, f16 or bf16)");
    if (shape.size() != 2) throw Error(path + ": activations must be 2-D [tokens, d]");
    if (shape[1] < 1) throw Error(path + ": rows have d = 0 (shape [N, 0]): no activations");
    if (d_ == 0) d_ = d_model ? d_model : shape[1];
    if (shape[1] != d_)
      throw Error(path + ": rows have d = " + std::to_string(shape[1]) + " but " +
                  (d_model ? "--d-model is " : "the first file has d = ") + std::to_string(d_));
    if (shape[0] == 0) return;
    shards_.push_back({std::move(file), dtype, offset, shape[0]});
  }

  void load_ground_truth(const std::string& path) {
    io::MappedFile file(path);
    auto info = io::parse_npy(file.data(), file.size(), path);
    if (info.shape.size() != 2 || info.shape[1] != d_)
      throw Error(path + ": ground truth must be [features, " + std::to_string(d_) + "]");
    truth_.resize(info.shape[0] * d_);
    io::convert_to_float(info.dtype, file.data() + info.data_offset, truth_.size(), truth_.data());
  }

  int64_t next_sequential() {
    const int64_t r = cursor_;
    cursor_ = (cursor_ + 1) % train_rows_;
    return r;
  }

  void read_row(int64_t row, float* out) const {
    const size_t s = std::upper_bound(starts_.begin(), starts_.end(), row) - starts_.begin() - 1;
    const auto& shard = shards_[s];
    const size_t width = io::dtype_size(shard.dtype) * d_;
    row_bytes_.resize(width);
    shard.file.read(shard.offset + (row - starts_[s]) * width, width, row_bytes_.data());
    io::convert_to_float(shard.dtype, row_bytes_.data(), d_, out);
  }

  std::string spec_;
  std::vector<Shard> shards_;
  std::vector<int64_t> starts_;
  std::vector<int64_t> buffer_;  // shuffle buffer of row indices
  std::vector<float> truth_;
  mutable std::vector<unsigned char> row_bytes_;  // one row as stored, read with pread
  int64_t d_ = 0, total_ = 0, train_rows_ = 0, eval_rows_ = 0, buffer_rows_ = 0, cursor_ = 0;
  Rng rng_{0};
};

// A harvest's manifest (saescale_analysis.harvest, format saescale.activations/1): its shards, in
// its order, relative to the manifest's directory. A directory holding manifest.json names it too.
std::vector<std::string> manifest_shards(const std::string& path) {
  namespace fs = std::filesystem;
  nlohmann::json manifest;
  {
    std::error_code ec;
    if (!fs::is_regular_file(path, ec))  // never open a FIFO (it would block)
      throw Error(path + ": " + (fs::exists(path, ec) ? "not a regular file" : "no such file"));
    std::ifstream in(path);
    if (!in) throw Error(path + ": cannot read the manifest");
    try {
      manifest = nlohmann::json::parse(in);
    } catch (const std::exception& e) {
      throw Error(path + ": not a valid JSON manifest: " + e.what());
    }
  }
  if (!manifest.is_object() || manifest.value("format", "") != "saescale.activations/1" ||
      !manifest.contains("shards") || !manifest["shards"].is_array())
    throw Error(path + ": not an activations manifest (format saescale.activations/1 with shards)");
  if (manifest["shards"].empty()) throw Error(path + ": the manifest lists no shards");
  std::vector<std::string> shards;
  const fs::path dir = fs::path(path).parent_path();
  for (const auto& shard : manifest["shards"]) {
    if (!shard.is_object() || !shard.contains("file") || !shard["file"].is_string())
      throw Error(path + ": every shard needs a \"file\"");
    const fs::path file = shard["file"].get<std::string>();
    if (file.is_absolute() || file.lexically_normal().string().rfind("..", 0) == 0)
      throw Error(path + ": shard '" + file.string() + "' is not inside the manifest's directory");
    shards.push_back((dir / file).string());
  }
  return shards;
}

std::vector<std::string> expand(const std::string& pattern) {
  namespace fs = std::filesystem;
  if (pattern.find_first_of("*?[") == std::string::npos) {
    std::error_code ec;
    if (fs::is_directory(pattern, ec) && fs::exists(fs::path(pattern) / "manifest.json", ec))
      return manifest_shards((fs::path(pattern) / "manifest.json").string());
    if (fs::path(pattern).extension() == ".json") return manifest_shards(pattern);
  }
  glob_t g{};
  const int rc = ::glob(pattern.c_str(), 0, nullptr, &g);
  std::vector<std::string> paths;
  if (rc == 0)
    for (size_t i = 0; i < g.gl_pathc; ++i) paths.emplace_back(g.gl_pathv[i]);
  globfree(&g);
  if (paths.empty()) {
    if (pattern.find_first_of("*?[") == std::string::npos) return {pattern};  // MappedFile says why
    throw Error("--data '" + pattern + "' matches no files");
  }
  std::sort(paths.begin(), paths.end());
  return paths;
}

}  // namespace

void check_finite_rows(const std::vector<float>& rows, int64_t n, int64_t d,
                       const std::string& what, int64_t first_row) {
  for (int64_t r = 0; r < n; ++r)
    for (int64_t c = 0; c < d; ++c)
      if (!std::isfinite(rows[r * d + c]))
        throw Error(what + ": row " + std::to_string(first_row + r) +
                    " holds a non-finite value (" + std::to_string(rows[r * d + c]) +
                    " at column " + std::to_string(c) + "): the data must be finite");
}

std::vector<std::string> data_files(const std::string& spec) {
  if (spec.empty() || spec == "synthetic" || spec.rfind("synthetic:", 0) == 0) return {};
  try {
    return expand(spec);
  } catch (const Error&) {
    return {};  // opening the data says what is wrong
  }
}

std::unique_ptr<DataSource> open_data_source(const DataOptions& o) {
  if (o.spec.empty())
    throw Error("--data is empty: give a .npy/.safetensors path or glob, or synthetic[:key=value]");
  if (o.spec == "synthetic" || o.spec.rfind("synthetic:", 0) == 0)
    return std::make_unique<SyntheticSource>(SyntheticSpec::parse(o.spec, o.d_model, o.seed));
  return std::make_unique<FileSource>(expand(o.spec), o);
}

}  // namespace saescale
