// Where activations come from: the synthetic generator or memory-mapped .npy/.safetensors files.
// Training rows are streamed (files: shuffled through a seeded buffer of row indices); a held-out
// evaluation set is kept apart (synthetic: a disjoint token range; files: the last rows, never
// trained on).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace saescale {

class DataSource {
 public:
  virtual ~DataSource() = default;
  virtual int64_t dim() const = 0;
  // The next global batch of `global_rows` training rows; writes its rows [first, first + rows),
  // row-major, to `out`. Every data-parallel rank walks the same stream and reads only its own
  // slice, so the global batch is the same for any number of ranks.
  virtual void next_batch(float* out, int64_t global_rows, int64_t first, int64_t rows) = 0;
  // The first `rows` training rows in order (to estimate the normalisation scalar).
  virtual void head(float* out, int64_t rows) = 0;
  // The held-out evaluation rows (at most `rows`); returns how many were written.
  virtual int64_t eval_set(float* out, int64_t rows) = 0;
  // Rows that exist in total (files), or -1 for an unbounded stream.
  virtual int64_t total_rows() const = 0;
  // Rows [first, first + n) of the whole data in file order (used by `grad`).
  virtual void read_rows(int64_t first, int64_t n, float* out) = 0;
  // Position in the stream, for checkpoints: opaque bytes that load_state restores exactly.
  virtual std::vector<char> save_state() const = 0;
  virtual void load_state(const std::vector<char>& state) = 0;
  // The true dictionary [features, d] if known.
  virtual const std::vector<float>* ground_truth() const { return nullptr; }
  virtual nlohmann::json describe() const = 0;
};

struct DataOptions {
  std::string spec;     // --data
  int64_t d_model = 0;  // 0: take it from the files
  uint64_t seed = 1;
  int64_t shuffle_buffer = 65536;
  int64_t eval_tokens = 16384;
  std::string ground_truth;  // optional .npy [F, d]
};

std::unique_ptr<DataSource> open_data_source(const DataOptions& options);

// The files --data names (its glob expanded; none for synthetic data), for output checks.
std::vector<std::string> data_files(const std::string& spec);

// Throws (one line naming `what` and the first bad row) unless every value of the row-major
// [n, d] rows is finite; `first_row` numbers the rows in the message.
void check_finite_rows(const std::vector<float>& rows, int64_t n, int64_t d,
                       const std::string& what, int64_t first_row = 0);

}  // namespace saescale
