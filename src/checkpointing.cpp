// The trainer's checkpoints: what a resumed run must match, saving every rank's state, loading it.
#include <chrono>
#include <cstdio>
#include <filesystem>

#include "error.hpp"
#include "io/checkpoint.hpp"
#include "testing/faults.hpp"
#include "trainer.hpp"

namespace saescale {

namespace {
template <class View>
std::vector<char> host_bytes(const View& v) {
  auto h = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), v);
  const char* p = reinterpret_cast<const char*>(h.data());
  return {p, p + h.size() * sizeof(typename View::value_type)};
}
template <class View>
void read_into(const io::CheckpointReader& r, const std::string& name, const View& v) {
  auto h = Kokkos::create_mirror_view(Kokkos::HostSpace(), v);
  r.read(name, h.data(), h.size() * sizeof(typename View::value_type));
  Kokkos::deep_copy(v, h);
}
}  // namespace

// What a checkpoint must match to be resumed: the grid, every option that can change the
// training's trajectory (all but kResumeMayChange), and the hyper-parameters they resolved to.
namespace {
const std::set<std::string> kResumeMayChange = {
    "out",   "save_weights", "eval_every", "target_fvu",       "gemm_floor",
    "fence", "warmup_steps", "resume",     "checkpoint_every", "checkpoint_dir"};
}  // namespace

nlohmann::json Trainer::checkpoint_identity() const {
  nlohmann::json options = cfg_.to_json();
  for (const auto& key : kResumeMayChange) options.erase(key);
  options["d_model"] = model_->d();
  return {{"grid", {{"dp", comm_.size(comm::Group::dp)}, {"lp", comm_.size(comm::Group::lp)}}},
          {"options", options},
          {"resolved", config_json()["resolved"]}};
}

const std::set<std::string>& resume_may_change() { return kResumeMayChange; }

// Every rank writes its shard's state; when all have, rank 0 publishes the manifest (with every
// rank file's size and CRC-32) and only then removes the previous checkpoint (io/checkpoint.hpp).
// A failure on any rank (a full disk) removes this checkpoint's files and fails the run: the
// previous checkpoint stays the newest.
void Trainer::save_checkpoint(int64_t next_step, double seconds) {
  const auto t0 = std::chrono::steady_clock::now();
  const std::string step_dir = io::checkpoint_step_dir(cfg_.checkpoint_dir, next_step);
  const int rank = comm_.rank(comm::Group::world), ranks = comm_.size(comm::Group::world);
  const nlohmann::json identity = checkpoint_identity();
  std::vector<int64_t> records(2 * ranks, 0);  // bytes and CRC-32 of each rank file
  const auto give_up = [&](const std::string& why) {
    std::error_code ignored;
    if (root()) std::filesystem::remove_all(step_dir, ignored);
    return RunFailed("the checkpoint of step " + std::to_string(next_step) + " failed: " + why +
                     " (its files were removed; " + cfg_.checkpoint_dir +
                     "/latest still names the newest complete one)");
  };
  try {
    comm::agree(comm_.grid(), [&] {
      std::error_code ec;
      std::filesystem::create_directories(step_dir, ec);
      if (ec) throw Error(step_dir + ": cannot create the checkpoint directory: " + ec.message());
      const io::RankFileRecord mine =
          checkpoint_writer(next_step, seconds)
              .write(io::checkpoint_rank_file(step_dir, rank), {rank, next_step, identity["grid"]});
      records[2 * rank] = static_cast<int64_t>(mine.bytes);
      records[2 * rank + 1] = mine.crc32;
    });
  } catch (const Error& e) {
    throw give_up(e.what());
  }
  faults::inject(
      {faults::Site::checkpoint, ++checkpoints_written_, comm_.rank(comm::Group::world)});
  comm_.allreduce_host_sum("checkpoint", comm::Group::world, records.data(),
                           static_cast<int>(records.size()));
  try {
    comm::agree(comm_.grid(), [&] {
      if (!root()) return;
      std::vector<io::RankFileRecord> files(ranks);
      for (int r = 0; r < ranks; ++r)
        files[r] = {static_cast<uint64_t>(records[2 * r]),
                    static_cast<uint32_t>(records[2 * r + 1])};
      io::publish_checkpoint(cfg_.checkpoint_dir, next_step, identity, files);
    });
  } catch (const Error& e) {
    throw give_up(e.what());
  }
  if (root()) {
    std::printf("  checkpoint: %s (%.2f s)\n", step_dir.c_str(),
                std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    std::fflush(stdout);
  }
  last_checkpoint_ = std::chrono::steady_clock::now();
}

// This rank's state as a checkpoint file's sections.
io::CheckpointWriter Trainer::checkpoint_writer(int64_t next_step, double seconds) const {
  io::CheckpointWriter w;
  const auto add = [&](const char* name, const std::vector<char>& bytes) {
    w.add(name, bytes.data(), bytes.size());
  };
  add("params", host_bytes(model_->params().values()));
  add("adam_m", host_bytes(adam_m_));
  add("adam_v", host_bytes(adam_v_));
  add("tokens_since_fired", host_bytes(tokens_since_fired_));
  add("dead", host_bytes(model_->buffers().dead));
  add("data", data_->save_state());
  nlohmann::json log = nlohmann::json::array();
  for (const auto& l : log_) log.push_back({l.step, l.loss, l.mse, l.l0});
  nlohmann::json targets = nlohmann::json::array();
  for (const auto& t : reached_)
    targets.push_back({t.target, t.step ? nlohmann::json(*t.step) : nullptr, t.train_s, t.wall_s});
  w.state() = {{"next_step", next_step},
               {"variant", model_->variant().state()},
               {"timers", timers_.save_state()},
               {"volume", comm_.save_volume()},
               {"log", log},
               {"eval_curve", eval_curve_},
               {"targets", targets},
               {"counted_steps", counted_steps_},
               {"data_seconds", data_seconds_},
               {"step_seconds", step_seconds_},
               {"seconds", seconds},
               {"auxiliary_ran", auxiliary_ran_},
               {"sparse_calibration", sparse_calibration_}};
  return w;
}

namespace {
// "--lr" for "lr": how the user spells the option.
std::string option_name(const std::string& key) {
  std::string name = "--" + key;
  for (auto& c : name)
    if (c == '_') c = '-';
  return name;
}
}  // namespace

void Trainer::load_checkpoint() {
  const std::string& dir = cfg_.checkpoint_dir;
  const auto manifest = io::latest_checkpoint(dir);
  if (!manifest) throw Error("--resume: no checkpoint in " + dir + " (no " + dir + "/latest)");
  const std::string path = manifest->at("path");
  const nlohmann::json want = checkpoint_identity();
  const auto& grid = (*manifest)["grid"];
  if (grid != want["grid"])
    throw Error("--resume: the checkpoint in " + path + " was written by a grid of dp " +
                grid["dp"].dump() + " x lp " + grid["lp"].dump() +
                "; resume with the same grid (--dp " + grid["dp"].dump() + " --lp " +
                grid["lp"].dump() + ")");
  for (const char* part : {"options", "resolved"}) {
    const auto& had = manifest->value(part, nlohmann::json::object());
    for (const auto& [key, value] : want[part].items())
      if (had.value(key, nlohmann::json()) != value)
        throw Error(
            "--resume: the run in " + path + " started with " +
            (std::string(part) == "options" ? option_name(key) : key + " (resolved)") + " = " +
            had.value(key, nlohmann::json()).dump() + " but this run has " + value.dump() +
            ": resume with the options the run started with (docs/reliability.md lists those "
            "that may change)");
  }
  const int rank = comm_.rank(comm::Group::world);
  const int64_t step = manifest->at("step");
  const io::CheckpointReader r(io::checkpoint_rank_file(path, rank), {rank, step, grid},
                               io::manifest_record(*manifest, rank));
  read_into(r, "params", model_->params().values());
  read_into(r, "adam_m", adam_m_);
  read_into(r, "adam_v", adam_v_);
  read_into(r, "tokens_since_fired", tokens_since_fired_);
  read_into(r, "dead", model_->buffers().dead);
  std::vector<char> data(r.size("data"));
  r.read("data", data.data(), data.size());
  data_->load_state(data);
  const auto& st = r.state();
  start_step_ = st.at("next_step").get<int64_t>();
  model_->variant().load_state(st.at("variant"));
  timers_.load_state(st.at("timers"));
  comm_.load_volume(st.at("volume"));
  for (const auto& l : st.at("log")) log_.push_back({l[0], l[1], l[2], l[3]});
  eval_curve_ = st.at("eval_curve");
  for (size_t i = 0; i < reached_.size() && i < st.at("targets").size(); ++i) {
    const auto& t = st.at("targets")[i];
    if (!t[1].is_null()) reached_[i].step = t[1].get<int64_t>();
    reached_[i].train_s = t[2], reached_[i].wall_s = t[3];
  }
  counted_steps_ = st.at("counted_steps");
  data_seconds_ = st.at("data_seconds");
  step_seconds_ = st.at("step_seconds");
  previous_seconds_ = st.at("seconds");
  auxiliary_ran_ = st.at("auxiliary_ran");
  sparse_calibration_ = st.value("sparse_calibration", nlohmann::json());
  if (root()) std::printf("resumed from %s at step %lld\n", path.c_str(), (long long)start_step_);
}

}  // namespace saescale
