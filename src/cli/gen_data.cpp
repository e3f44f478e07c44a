// `saescale gen-data`: synthetic activation shards (.npy) plus the true dictionary.
#include <cstdio>
#include <filesystem>

#include "checked.hpp"
#include "cli/commands.hpp"
#include "data/synthetic.hpp"
#include "error.hpp"
#include "host_memory.hpp"
#include "io/atomic_write.hpp"
#include "io/npy.hpp"

namespace saescale::cli {

void add_gen_data_options(CLI::App& app, GenDataOptions& o) {
  app.add_option("--data", o.data, "synthetic[:features=..,l0=..,alpha=..,noise=..,offset=..]")
      ->capture_default_str();
  app.add_option("--d-model", o.d_model, "activation dimension d")
      ->required()
      ->check(CLI::PositiveNumber);
  app.add_option("--tokens", o.tokens, "tokens to write")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--shard-tokens", o.shard_tokens, "tokens per shard (0: one shard)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--seed", o.seed, "random seed")->capture_default_str();
  app.add_option("--out-dir", o.out_dir, "directory for shard_*.npy, dictionary.npy, meta.json")
      ->required();
  app.add_flag("--force", o.force, "write into a directory that already has shards");
}

int gen_data(const GenDataOptions& o) {
  namespace fs = std::filesystem;
  SyntheticSpec spec = SyntheticSpec::parse(o.data, o.d_model, o.seed);
  const int64_t d = spec.d, per_shard = o.shard_tokens > 0 ? o.shard_tokens : o.tokens;
  // Before anything is created: sizes that fit, memory for a shard, disk for all of them.
  const int64_t total = checked_elements(o.tokens, d, "--tokens x --d-model");
  check_host_memory(4 * checked_elements(per_shard, d, "--shard-tokens x --d-model"),
                    "gen-data's shard (tokens per shard x d floats)", "give --shard-tokens");
  fs::path existing = fs::absolute(o.out_dir);
  while (!existing.empty() && !fs::exists(existing) && existing != existing.parent_path())
    existing = existing.parent_path();
  std::error_code space_ec;
  const auto space = fs::space(existing, space_ec);
  if (!space_ec && 4.0 * double(total) > double(space.available))
    throw Error(o.out_dir + ": " + std::to_string(o.tokens) + " tokens x " + std::to_string(d) +
                " floats need " + gib(4 * total) + " but the disk has " +
                gib(static_cast<int64_t>(space.available)) + " free");
  if (fs::exists(o.out_dir + "/dictionary.npy") && !o.force)
    throw Error(o.out_dir + " already holds generated data (use --force to overwrite)");
  SyntheticData gen(spec);
  std::error_code ec;
  fs::create_directories(o.out_dir, ec);
  if (ec) throw Error(o.out_dir + ": cannot create directory: " + ec.message());
  std::vector<float> rows;
  int shard = 0;
  for (int64_t first = 0; first < o.tokens; first += per_shard, ++shard) {
    const int64_t n = std::min(per_shard, o.tokens - first);
    rows.resize(n * d);
    gen.generate(first, n, rows.data());
    char name[32];
    std::snprintf(name, sizeof name, "/shard_%04d.npy", shard);
    io::write_npy(o.out_dir + name, rows.data(), {n, d});
  }
  io::write_npy(o.out_dir + "/dictionary.npy", gen.dictionary().data(), {spec.features, d});
  const nlohmann::json meta = {{"generator", spec.describe()},
                               {"d_model", d},
                               {"tokens", o.tokens},
                               {"shards", shard},
                               {"true_features", spec.features},
                               {"true_l0", spec.l0}};
  io::write_text_atomic(o.out_dir + "/meta.json", meta.dump(2) + "\n");
  std::printf(
      "gen-data: %lld tokens x %lld dims in %d shard(s), %lld true features (L0 %.2f) -> %s\n",
      (long long)o.tokens, (long long)d, shard, (long long)spec.features, spec.l0,
      o.out_dir.c_str());
  return 0;
}

}  // namespace saescale::cli
