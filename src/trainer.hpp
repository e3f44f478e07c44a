// Training one SAE: the step (readable top to bottom), schedules, statistics, evaluation and the
// results file.
#pragma once
#include <chrono>
#include <csignal>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <vector>

#include <nlohmann/json.hpp>

#include "config.hpp"
#include "data/source.hpp"
#include "io/checkpoint.hpp"
#include "io/outputs.hpp"
#include "metrics/fidelity.hpp"
#include "metrics/timers.hpp"
#include "metrics/work_model.hpp"
#include "model.hpp"
#include "results.hpp"

namespace saescale {

// Hyper-parameters after the variant's defaults and the run length are applied.
Resolved resolve_hyper(const Config& cfg, const VariantDefaults& defaults);
// What the model's pieces take (one for train, grad and eval): the resolved values, k, AuxK's k
// (at most `width`), the selection algorithm this build runs, the encoder bias to start from;
// the sparsity coefficient times `sparsity_scale` (its warm-up).
Hyper make_hyper(const Config& cfg, const Resolved& resolved, int64_t width,
                 double sparsity_scale = 1);

// The scalar s with E||s x||^2 = 1 (unit-msq), E||s x|| = sqrt(d) (sqrt-d), or 1 (none),
// estimated from `rows` (host, row-major [n, d]).
double estimate_norm_scale(const std::string& mode, const std::vector<float>& rows, int64_t n,
                           int64_t d);

// b_dec from data for TopK/BatchTopK: "geometric-median" (Weiszfeld) or "mean" of `n` rows.
void initialize_b_dec(Model& model, const std::vector<float>& rows, int64_t n,
                      const std::string& how);

// Options a resumed run may give differently (they cannot change the training's trajectory).
const std::set<std::string>& resume_may_change();

// Set by the SIGTERM/SIGUSR1 handler (cli/train.cpp): finish the step, checkpoint, stop.
extern volatile std::sig_atomic_t g_stop_signal;

class Trainer {
 public:
  // Collective-free setup (every rank builds its shard; nothing is exchanged), so that a failure
  // on some ranks can be agreed on before any collective (cli/train.cpp).
  Trainer(const Config& cfg, comm::Communicator& comm);
  // Trains, evaluates, measures the ceilings; returns the results JSON (without `context`).
  // A non-finite loss or gradient (the same on every rank) ends the run at that step with
  // "status": "failed" and the reason instead.
  nlohmann::json run();
  const Model& model() const { return *model_; }

 private:
  void step(int64_t step);
  void check_loss(const LossParts& loss, int64_t step) const;
  std::vector<int64_t> count_non_finite_gradients() const;
  void check_gradients(const std::vector<int64_t>& non_finite, int64_t step) const;
  void update(int64_t step);
  Hyper hyper_at(int64_t step) const;
  double lr_at(int64_t step) const;
  void load_batch(int64_t step);
  void start_at_l0(const std::vector<float>& head, int64_t n);
  Fidelity evaluate_now();
  double dead_fraction() const;
  metrics::WorkShape work_shape(bool global) const;
  std::map<std::string, metrics::Work> dense_work(const metrics::WorkShape& shape) const;
  nlohmann::json sparse_json() const;
  nlohmann::json memory_json() const;
  nlohmann::json config_json() const;
  nlohmann::json communication_json(const nlohmann::json& phases) const;
  // Data-parallel gradient all-reduce, in buckets of the flat gradient buffer.
  void start_gradient_buckets(bool decoder);
  bool root() const { return comm_.rank(comm::Group::world) == 0; }
  struct Agreement {
    int64_t active = 0;               // (token, latent) pairs active in the step, all ranks
    std::vector<int64_t> non_finite;  // per gradient tensor
    int stop_signal = 0;
    bool checkpoint_due = false;
  };
  Agreement agree_on_step(int64_t active, std::vector<int64_t> non_finite);
  Agreement step_statistics(std::vector<int64_t> non_finite);
  nlohmann::json checkpoint_identity() const;
  io::CheckpointWriter checkpoint_writer(int64_t next_step, double seconds) const;
  void save_checkpoint(int64_t next_step, double seconds);
  void load_checkpoint();

  Config cfg_;
  comm::Communicator& comm_;
  int64_t local_batch_ = 0;      // rows on this rank: batch_size / dp
  int64_t counted_steps_ = 0;    // steps whose communication volume was counted
  int64_t memory_baseline_ = 0;  // bytes allocated before this run (in-process tests)
  // Checkpoints and preemption.
  int64_t start_step_ = 0;               // 0, or the step a resumed run continues from
  int64_t checkpoint_every_steps_ = 0;   // --checkpoint-every N
  double checkpoint_every_minutes_ = 0;  // --checkpoint-every Nm
  int64_t checkpoints_written_ = 0;
  std::chrono::steady_clock::time_point last_checkpoint_ = std::chrono::steady_clock::now();
  bool checkpoint_due_ = false;  // agreed by every rank in the step's statistics
  int stop_signal_ = 0;          // SIGTERM/SIGUSR1 seen by some rank (agreed likewise)
  double step_seconds_ = 0;      // time inside steps, warm-up included (the training's own cost)
  double previous_seconds_ = 0;  // wall time of the runs this one resumes
  Resolved hyper_;
  Precision precision_;
  kernels::TopkAlgo topk_algo_;
  std::unique_ptr<DataSource> data_;
  std::unique_ptr<Model> model_;
  double norm_scale_ = 1;
  Vector adam_m_, adam_v_;
  CountVector tokens_since_fired_;
  std::vector<float> batch_host_, eval_rows_;
  Kokkos::View<real**, Kokkos::LayoutRight, Kokkos::HostSpace> x_staging_;  // the batch, scaled
  int64_t eval_n_ = 0;
  PhaseTimers timers_;
  double data_seconds_ = 0;
  std::vector<StepLog> log_;
  nlohmann::json eval_curve_ = nlohmann::json::array();
  bool auxiliary_ran_ = false;           // an auxiliary loss was non-zero in some step (AuxK ran)
  std::vector<FidelityTarget> reached_;  // --target-fvu
  nlohmann::json sparse_calibration_;    // --sparse auto: calibrate_sparse (ceilings.hpp)
  nlohmann::json initial_l0_start_;      // --initial-l0: the parameter set and its value
  io::DirectoryLock checkpoint_lock_;    // --checkpoint-dir is this run's (rank 0 holds it)
};

}  // namespace saescale
