#include "trainer.hpp"

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "checked.hpp"
#include "comm/mpi_check.hpp"
#include "comm/plan.hpp"
#include "device.hpp"
#include "error.hpp"
#include "host_memory.hpp"
#include "io/checkpoint.hpp"
#include "io/outputs.hpp"
#include "kernels/optim.hpp"
#include "kernels/reduce.hpp"
#include "metrics/memory.hpp"
#include "testing/faults.hpp"

namespace saescale {

Resolved resolve_hyper(const Config& c, const VariantDefaults& d) {
  // Step-count warm-ups are capped at a fraction of short runs; explicit options win.
  const auto capped = [&](int64_t steps) {
    return std::min<int64_t>(steps, static_cast<int64_t>(d.warmup_cap_frac * c.steps));
  };
  Resolved r{};
  r.sparsity_coeff = c.sparsity_coeff.value_or(d.sparsity_coeff);
  r.lr = c.lr.value_or(d.lr);
  r.adam_beta1 = c.adam_beta1.value_or(d.adam_beta1);
  r.adam_beta2 = c.adam_beta2.value_or(d.adam_beta2);
  r.adam_eps = c.adam_eps.value_or(d.adam_eps);
  r.clip_norm = c.clip_norm.value_or(d.clip_norm);
  r.bandwidth = c.bandwidth.value_or(0.001);
  r.threshold_init = c.threshold_init.value_or(0.001);
  r.lr_decay_frac = c.lr_decay_frac.value_or(d.lr_decay_frac);
  r.decoder_init_norm = c.decoder_init_norm.value_or(d.decoder_init_norm);
  r.lr_warmup_steps = c.lr_warmup_steps.value_or(capped(d.lr_warmup_steps));
  r.sparsity_warmup_steps = c.sparsity_warmup_steps.value_or(
      d.sparsity_warmup_frac > 0 ? static_cast<int64_t>(d.sparsity_warmup_frac * c.steps)
                                 : capped(d.sparsity_warmup_steps));
  if (!(r.lr > 0)) throw Error("--lr must be positive");
  if (r.sparsity_coeff < 0) throw Error("--sparsity-coeff must be >= 0");
  if (r.adam_beta1 < 0 || r.adam_beta1 >= 1)
    throw Error("--adam-beta1 must be in [0, 1), got " + std::to_string(r.adam_beta1));
  if (r.adam_beta2 < 0 || r.adam_beta2 >= 1)
    throw Error("--adam-beta2 must be in [0, 1), got " + std::to_string(r.adam_beta2));
  if (!(r.bandwidth > 0)) throw Error("--bandwidth must be positive");
  if (!(r.threshold_init > 0)) throw Error("--threshold-init must be positive");
  if (!std::isfinite(c.encoder_bias_init)) throw Error("--encoder-bias-init must be finite");
  if (r.lr_decay_frac < 0 || r.lr_decay_frac > 1) throw Error("--lr-decay-frac must be in [0, 1]");
  if (r.clip_norm < 0) throw Error("--clip-norm must be >= 0 (0 turns clipping off)");
  return r;
}

// b_dec <- geometric median (Weiszfeld iterations) or mean of the first n rows (host, normalised).
void initialize_b_dec(Model& model, const std::vector<float>& rows, int64_t n,
                      const std::string& how) {
  const int64_t d = model.d();
  std::vector<double> y(d, 0.0);
  for (int64_t r = 0; r < n; ++r)
    for (int64_t c = 0; c < d; ++c) y[c] += rows[r * d + c] / double(n);
  for (int iter = 0; how == "geometric-median" && iter < 100; ++iter) {
    std::vector<double> num(d, 0.0);
    double den = 0;
    for (int64_t r = 0; r < n; ++r) {
      double dist2 = 0;
      for (int64_t c = 0; c < d; ++c) dist2 += (rows[r * d + c] - y[c]) * (rows[r * d + c] - y[c]);
      const double w = 1 / std::max(std::sqrt(dist2), 1e-8);
      for (int64_t c = 0; c < d; ++c) num[c] += w * rows[r * d + c];
      den += w;
    }
    for (int64_t c = 0; c < d; ++c) y[c] = num[c] / den;
  }
  auto b_dec = Kokkos::create_mirror_view(Kokkos::HostSpace(), model.params().vector("b_dec"));
  for (int64_t c = 0; c < d; ++c) b_dec(c) = static_cast<float>(y[c]);
  Kokkos::deep_copy(model.params().vector("b_dec"), b_dec);
}

double estimate_norm_scale(const std::string& mode, const std::vector<float>& rows, int64_t n,
                           int64_t d) {
  if (mode == "none") return 1;
  double sum_sq = 0, sum_norm = 0;
  for (int64_t r = 0; r < n; ++r) {
    double s = 0;
    for (int64_t c = 0; c < d; ++c) s += double(rows[r * d + c]) * rows[r * d + c];
    sum_sq += s;
    sum_norm += std::sqrt(s);
  }
  if (!(sum_sq > 0) || !std::isfinite(sum_sq))
    throw Error("cannot normalise: the first tokens of the data are all zero or not finite");
  if (mode == "unit-msq") return std::sqrt(n / sum_sq);
  if (mode == "sqrt-d") return std::sqrt(double(d)) * n / sum_norm;
  throw Error("unknown --normalize '" + mode + "'");
}

namespace {
// Bytes this rank can allocate: free device memory on GPUs; on host builds the node's
// MemAvailable shared by the ranks on the node. -1 when unknown.
int64_t available_bytes(const comm::Communicator& comm) {
  if (const auto gpu = device::memory()) return gpu->free_bytes;
  // The node's share, and no more than this process's limits (ulimit -v, -d) leave it.
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  int64_t kib = -1;
  while (meminfo >> key && key != "MemAvailable:") meminfo.ignore(256, '\n');
  const int64_t own = host_available_bytes();
  if (!(meminfo >> kib)) return own;
  const int64_t share = kib * 1024 / std::max(1, comm.grid().local_size());
  return own < 0 ? share : std::min(share, own);
}

int64_t planned_bytes(const Config& cfg, int64_t d, int dp, int lp, bool first_moment,
                      int64_t features) {
  const nlohmann::json plan = comm::memory_plan(cfg, d, dp, lp, first_moment, features);
  int64_t total = 0;
  for (const auto& [kind, bytes] : plan.items()) total += bytes.get<int64_t>();
  return total;
}
}  // namespace

// Memory preflight: before anything is allocated, the run's planned peak per rank (the same plan
// the results report and `saescale plan` prints) against what this rank can get.
void check_memory(const Config& cfg, int64_t d, int64_t features, const comm::Communicator& comm) {
  const int64_t available = available_bytes(comm);
  if (available < 0) return;  // unknown: nothing to check against
  const int dp = comm.size(comm::Group::dp), lp = comm.size(comm::Group::lp);
  const bool first_moment =
      cfg.optimizer == "adam" &&
      cfg.adam_beta1.value_or(variant_traits(cfg.variant).defaults.adam_beta1) != 0;
  const int64_t need = planned_bytes(cfg, d, dp, lp, first_moment, features);
  if (need <= available) return;
  const auto gib = [](int64_t b) {
    char text[32];
    std::snprintf(text, sizeof text, "%.1f GiB", b / 1073741824.0);
    return std::string(text);
  };
  std::string fix = "a smaller --batch-size or --width";
  for (int more = lp * 2; more <= (1 << 16); more *= 2)
    if (cfg.width % more == 0 &&
        planned_bytes(cfg, d, dp, more, first_moment, features) <= available) {
      fix = "--lp " + std::to_string(more) + " (" + std::to_string(dp * more) +
            " ranks) to split the latents, or a smaller --batch-size";
      break;
    }
  throw Error("this run needs about " + gib(need) + " per rank (see `saescale plan`) but " +
              gib(available) + " is available to it: use " + fix);
}

Trainer::Trainer(const Config& cfg, comm::Communicator& comm)
    : cfg_(cfg),
      comm_(comm),
      precision_(parse_precision(cfg.precision)),
      topk_algo_(kernels::effective_topk_algo(kernels::parse_topk_algo(cfg.topk_algo))) {
  check_precision_supported(precision_);
  checkpoint_every_steps_ =
      parse_checkpoint_every(cfg.checkpoint_every, &checkpoint_every_minutes_);
  if ((checkpoint_every_steps_ > 0 || checkpoint_every_minutes_ > 0) && cfg.checkpoint_dir.empty())
    throw Error("--checkpoint-every " + cfg.checkpoint_every +
                " needs --checkpoint-dir (where to write them)");
  if (cfg.resume && cfg.checkpoint_dir.empty()) throw Error("--resume needs --checkpoint-dir");
  if (cfg.sparse_crossover >= 0 && cfg.sparse != "auto")
    throw Error("--sparse-crossover is the limit of --sparse auto: add --sparse auto");
  // This run's memory: the allocation peak from here on, above what was already allocated.
  metrics::reset_peaks();
  memory_baseline_ = std::max<int64_t>(0, metrics::current_bytes(MemSpace::name()));
  const int dp = comm.size(comm::Group::dp);
  if (cfg.batch_size <= 0) throw Error("--batch-size must be positive");
  if (cfg.batch_size % dp != 0)
    throw Error("--batch-size " + std::to_string(cfg.batch_size) + " is not divisible by --dp " +
                std::to_string(dp) + ": every data-parallel rank takes the same number of rows");
  local_batch_ = cfg.batch_size / dp;
  data_ = open_data_source(
      {cfg.data, cfg.d_model, cfg.seed, cfg.shuffle_buffer, cfg.eval_tokens, cfg.ground_truth});
  const int64_t d = data_->dim();
  if (cfg.width <= 0) throw Error("--width is required and must be positive");
  const VariantTraits& traits = variant_traits(cfg.variant);
  if (traits.selects() && cfg.k > cfg.width)
    throw Error("--k " + std::to_string(cfg.k) + " exceeds --width " + std::to_string(cfg.width));
  if (cfg.initial_l0 > 0) {
    if (traits.start == VariantTraits::Start::k)
      throw Error("--initial-l0 sets where elementwise variants start; " + cfg.variant +
                  " has exactly --k active latents: use --k");
    if (cfg.initial_l0 >= cfg.width)
      throw Error("--initial-l0 " + std::to_string(cfg.initial_l0) + " must be below --width " +
                  std::to_string(cfg.width));
    if (!cfg.init.empty() || cfg.threshold_init || cfg.encoder_bias_init != 0)
      throw Error(
          "--initial-l0 chooses the encoder bias (JumpReLU: the threshold) itself: drop "
          "--init, --threshold-init and --encoder-bias-init, or --initial-l0");
  }
  const auto* truth = data_->ground_truth();
  check_memory(cfg, d, truth ? static_cast<int64_t>(truth->size()) / d : 0, comm);
  // Host buffers: the normalisation rows, the evaluation rows, the batch and its staging copy.
  const int64_t host_floats = checked_elements(cfg.norm_tokens, d, "--norm-tokens x d") +
                              checked_elements(cfg.eval_tokens, d, "--eval-tokens x d") +
                              2 * checked_elements(local_batch_, d, "--batch-size x d");
  check_host_memory(4 * host_floats,
                    "this run's host buffers (--norm-tokens, --eval-tokens and "
                    "the batch, x d floats)",
                    "lower --norm-tokens or --eval-tokens");
  model_ = std::make_unique<Model>(cfg.variant, d, cfg.width, &comm);
  hyper_ = resolve_hyper(cfg, model_->variant().traits().defaults);

  // Every rank reads the same head rows, so all agree on the scalar and on b_dec's start.
  const int64_t n_norm =
      data_->total_rows() < 0 ? cfg.norm_tokens : std::min(cfg.norm_tokens, data_->total_rows());
  std::vector<float> head(n_norm * d);
  data_->head(head.data(), n_norm);
  try {
    norm_scale_ = estimate_norm_scale(cfg.normalize, head, n_norm, d);
  } catch (const Error& e) {
    throw Error(cfg.data + ": " + e.what());  // name the data
  }

  model_->allocate(local_batch_, cfg.batch_size, comm.rank(comm::Group::dp) * local_batch_);
  if (cfg.sparse != "off") model_->enable_sparse(cfg.sparse_capacity_or_default());
  model_->initialize(hyper_at(0), cfg.seed);
  if (model_->variant().traits().b_dec_from_data && cfg.b_dec_init != "zero") {
    for (auto& v : head) v = static_cast<float>(v * norm_scale_);
    initialize_b_dec(*model_, head, std::min<int64_t>(n_norm, 4096), cfg.b_dec_init);
  }
  if (cfg.initial_l0 > 0) start_at_l0(head, n_norm);
  faults::inject({faults::Site::init, 0, comm.rank(comm::Group::world), nullptr, model_.get()});
  if (!cfg.init.empty()) {
    nlohmann::json file_cfg;
    auto tensors = read_weights(cfg.init, &file_cfg);
    // cfg.json says which SAE the file holds (BatchTopK is saved as a JumpReLU SAE).
    const std::string saved = file_cfg.contains("saescale")
                                  ? file_cfg["saescale"].value("variant", cfg.variant)
                                  : cfg.variant;
    if (saved != cfg.variant)
      throw Error(cfg.init + ": the weights are a " + saved + " SAE (cfg.json) but --variant is " +
                  cfg.variant + ": use --variant " + saved);
    model_->import_tensors(std::move(tensors), norm_scale_, cfg.init);
  }
  const int64_t P = model_->params().total();
  const bool first_moment = cfg.optimizer == "adam" && hyper_.adam_beta1 != 0;
  adam_m_ = Vector("saescale::optimizer::m", first_moment ? P : 0);
  adam_v_ = Vector("saescale::optimizer::v", cfg.optimizer == "adam" ? P : 0);
  tokens_since_fired_ = CountVector("saescale::stats::tokens_since_fired", model_->width());
  batch_host_.resize(local_batch_ * d);
  // Allocated once: a step's batch goes through it (on a host build it is the batch buffer itself).
  x_staging_ = Kokkos::create_mirror_view(Kokkos::HostSpace(), model_->buffers().x);

  eval_rows_.resize(cfg.eval_tokens * d);
  eval_n_ = data_->eval_set(eval_rows_.data(), cfg.eval_tokens);
  if (eval_n_ < 1)
    throw Error(cfg.data + ": " + std::to_string(data_->total_rows()) +
                " rows leave none for evaluation (the last fifth is held out): give at least 5");
  // The held-out rows are all in memory now: non-finite ones would give a NaN FVU at the end.
  check_finite_rows(eval_rows_, eval_n_, d, cfg.data + " (held-out evaluation rows)",
                    data_->total_rows() > 0 ? data_->total_rows() - eval_n_ : 0);
  for (auto& v : eval_rows_) v = static_cast<float>(v * norm_scale_);
  for (const double t : cfg.target_fvu) {
    if (!(t > 0)) throw Error("--target-fvu must be positive (got " + std::to_string(t) + ")");
    reached_.push_back({t, std::nullopt});
  }
  timers_ = PhaseTimers(cfg.fence);
  if (!cfg.checkpoint_dir.empty() && root()) {
    // One checkpoint's worth of space for every rank's file (the new one is written before the
    // old one goes), and the directory to this run alone.
    const int64_t per_rank =
        static_cast<int64_t>(sizeof(real)) * (P + adam_m_.size() + adam_v_.size()) +
        16 * model_->width();
    io::check_free_space(cfg.checkpoint_dir, per_rank * comm.size(comm::Group::world),
                         "--checkpoint-dir (one checkpoint of every rank)");
    checkpoint_lock_ = io::DirectoryLock(cfg.checkpoint_dir);
  }
  if (cfg.resume) load_checkpoint();
}

// --initial-l0: the encoder bias (ReLU, Gated) or JumpReLU's threshold at the pre-activation that
// about L0 latents per token exceed on the first batch at the initial weights. The batch is this
// rank's share of the data's head rows (repeated when there are fewer), normalised as training.
void Trainer::start_at_l0(const std::vector<float>& head, int64_t n) {
  const int64_t d = model_->d(), offset = model_->buffers().row_offset;
  auto x = Kokkos::create_mirror_view(Kokkos::HostSpace(), model_->buffers().x);
  for (int64_t r = 0; r < local_batch_; ++r)
    for (int64_t c = 0; c < d; ++c)
      x(r, c) = static_cast<float>(head[((offset + r) % n) * d + c] * norm_scale_);
  Kokkos::deep_copy(model_->buffers().x, x);
  const double t = model_->pre_activation_quantile(cfg_.initial_l0, topk_algo_);
  if (!(t > 0))
    throw Error("--initial-l0 " + std::to_string(cfg_.initial_l0) +
                ": fewer latents than that have a positive pre-activation on the first batch; "
                "give a smaller --initial-l0");
  Hyper h = hyper_at(0);
  const bool threshold = model_->variant().traits().start == VariantTraits::Start::threshold;
  (threshold ? h.threshold_init : h.encoder_bias_init) = threshold ? t : -t;
  model_->initialize_sparsity(h);
  initial_l0_start_ = {{"l0", cfg_.initial_l0},
                       {"parameter", threshold ? "threshold" : "encoder_bias"},
                       {"value", threshold ? t : -t}};
  if (root())
    std::printf("initial L0 %lld: %s %.6g (from the first batch's pre-activations)\n",
                (long long)cfg_.initial_l0, threshold ? "threshold" : "encoder bias",
                threshold ? t : -t);
}

Hyper make_hyper(const Config& cfg, const Resolved& r, int64_t width, double sparsity_scale) {
  Hyper h{
      r.sparsity_coeff * sparsity_scale, r.bandwidth, r.threshold_init, r.decoder_init_norm, cfg.k,
      std::min(cfg.aux_k, width)};
  h.topk_algo = kernels::effective_topk_algo(kernels::parse_topk_algo(cfg.topk_algo));
  h.batch_scope_global = cfg.batch_scope == "global";
  h.encoder_bias_init = cfg.encoder_bias_init;
  return h;
}

Hyper Trainer::hyper_at(int64_t step) const {
  const double warm = hyper_.sparsity_warmup_steps > 0
                          ? std::min(1.0, double(step + 1) / hyper_.sparsity_warmup_steps)
                          : 1.0;
  return make_hyper(cfg_, hyper_, cfg_.width, warm);
}

double Trainer::lr_at(int64_t step) const {
  double lr = hyper_.lr;
  if (hyper_.lr_warmup_steps > 0) lr *= std::min(1.0, double(step + 1) / hyper_.lr_warmup_steps);
  const int64_t decay_steps = static_cast<int64_t>(hyper_.lr_decay_frac * cfg_.steps);
  const int64_t decay_start = cfg_.steps - decay_steps;
  if (decay_steps > 0 && step >= decay_start) lr *= double(cfg_.steps - step) / decay_steps;
  return lr;
}

void Trainer::load_batch(int64_t step) {
  const auto t0 = std::chrono::steady_clock::now();
  data_->next_batch(batch_host_.data(), cfg_.batch_size, model_->buffers().row_offset,
                    local_batch_);
  faults::inject({faults::Site::batch, step, comm_.rank(comm::Group::world), batch_host_.data()});
  const float s = static_cast<float>(norm_scale_);
  for (size_t i = 0; i < batch_host_.size(); ++i) x_staging_.data()[i] = batch_host_[i] * s;
  Kokkos::deep_copy(model_->buffers().x, x_staging_);
  data_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// The data-parallel gradient all-reduce over the one flat gradient buffer, in buckets: W_dec's
// rows are final once the decoder side of the backward pass is done (decoder GEMM, the variant's
// decoder terms, AuxK), so their sum starts while the encoder side is computed; the rest follows.
void Trainer::start_gradient_buckets(bool decoder) {
  if (comm_.size(comm::Group::dp) == 1) return;
  const ParamStore& params = model_->params();
  real* g = params.grads().data();
  const int64_t dec = params.offset("W_dec"), dec_n = params.numel("W_dec");
  timers_.run("comm_gradients", [&] {
    if (decoder) {
      comm_.start_bucket("gradients", comm::Group::dp, g + dec, dec_n);
    } else {
      comm_.start_bucket("gradients", comm::Group::dp, g, dec);
      comm_.start_bucket("gradients", comm::Group::dp, g + dec + dec_n,
                         params.total() - dec - dec_n);
    }
  });
}

// One training step: the model's phases (Model::forward, Model::backward), timed, then the
// update. Collectives run inside the phases and are timed as their own phases (comm_*).
void Trainer::step(int64_t step) {
  Model& m = *model_;
  const Hyper h = hyper_at(step);
  const PhaseRunner timed = [&](const char* phase, const std::function<void()>& work) {
    timers_.run(phase, work);
  };
  faults::inject({faults::Site::step, step, comm_.rank(comm::Group::world)});

  const LossParts loss = m.reduce_loss(m.forward(h, precision_, timed), "loss");
  auxiliary_ran_ |= loss.auxiliary > 0;  // AuxK found dead latents (the work model asks)
  check_loss(loss, step);
  m.backward(h, precision_, timed, [&] { start_gradient_buckets(true); });
  start_gradient_buckets(false);
  comm_.wait_buckets("gradients");
  faults::inject({faults::Site::gradients, step, comm_.rank(comm::Group::world), nullptr, &m});
  std::vector<int64_t> non_finite;
  timers_.run("check", [&] { non_finite = count_non_finite_gradients(); });
  update(step);
  Agreement agreed;
  timers_.run("statistics", [&] { agreed = step_statistics(std::move(non_finite)); });
  stop_signal_ = agreed.stop_signal;
  checkpoint_due_ = agreed.checkpoint_due;
  check_gradients(agreed.non_finite, step);
  log_.push_back({step, loss.total(), loss.mse, double(agreed.active) / cfg_.batch_size});
}

// The reduced loss, the same on every rank: all stop here alike.
void Trainer::check_loss(const LossParts& loss, int64_t step) const {
  if (std::isfinite(loss.total())) return;
  const auto term = !std::isfinite(loss.mse)       ? "the reconstruction (MSE) term"
                    : !std::isfinite(loss.penalty) ? "the sparsity term"
                                                   : "the auxiliary term";
  throw RunFailed("step " + std::to_string(step + 1) + ": the loss is not finite in " + term +
                  " (mse " + std::to_string(loss.mse) + ", sparsity " +
                  std::to_string(loss.penalty) + ", auxiliary " + std::to_string(loss.auxiliary) +
                  "): lower --lr or check the data");
}

// Non-finite gradient values per tensor (one pass over the gradients); the counts travel with the
// statistics' all-reduce, so every rank stops at the same step.
std::vector<int64_t> Trainer::count_non_finite_gradients() const {
  std::vector<int64_t> counts;
  for (const auto& spec : model_->params().specs())
    counts.push_back(kernels::count_non_finite("saescale::check::non_finite_gradient",
                                               model_->params().grad_vector(spec.name)));
  return counts;
}

void Trainer::check_gradients(const std::vector<int64_t>& non_finite, int64_t step) const {
  for (size_t t = 0; t < non_finite.size(); ++t)
    if (non_finite[t] > 0)
      throw RunFailed("step " + std::to_string(step + 1) + ": the gradient of " +
                      model_->params().specs()[t].name + " has " + std::to_string(non_finite[t]) +
                      " non-finite values (NaN/Inf): lower --lr, set --clip-norm, or check "
                      "the data");
}

// The parameter update: the decoder constraint's projection, clipping, the optimiser, and the
// renormalisation of the decoder rows.
void Trainer::update(int64_t step) {
  ParamStore& params = model_->params();
  const bool unit_norm = model_->variant().traits().unit_norm_decoder;
  if (unit_norm)
    timers_.run("decoder_projection", [&] {
      kernels::project_decoder_gradient(params.matrix("W_dec"), params.grad_matrix("W_dec"));
    });
  if (hyper_.clip_norm > 0)
    timers_.run("clip", [&] {
      // The global norm: latent shards hold disjoint parameters; b_dec (replicated) counts once.
      double sq = kernels::sum_squares("saescale::clip::grad_norm", params.grads());
      if (!model_->buffers().lp_leader())
        sq -= kernels::sum_squares("saescale::clip::b_dec_norm", params.grad_vector("b_dec"));
      comm_.allreduce_host_sum("clip", comm::Group::lp, &sq, 1);
      const double norm = std::sqrt(sq);
      if (norm > hyper_.clip_norm)
        kernels::scale("saescale::clip::scale", params.grads(),
                       static_cast<real>(hyper_.clip_norm / norm));
    });
  timers_.run("optimizer", [&] {
    const real lr = static_cast<real>(lr_at(step));
    if (cfg_.optimizer == "adam")
      kernels::adam_update(
          params.values(), params.grads(), adam_m_, adam_v_,
          {lr, static_cast<real>(hyper_.adam_beta1), static_cast<real>(hyper_.adam_beta2),
           static_cast<real>(hyper_.adam_eps), step + 1});
    else
      kernels::sgd_update(params.values(), params.grads(), lr);
  });
  if (unit_norm)
    timers_.run("renormalize", [&] { kernels::renormalize_rows(params.matrix("W_dec")); });
}

// The step's statistics: dead-latent counters, the variant's running state (BatchTopK's
// threshold), then one all-reduce of everything the ranks must agree on.
Trainer::Agreement Trainer::step_statistics(std::vector<int64_t> non_finite) {
  Model& m = *model_;
  auto& stats = m.buffers().stats;
  comm_.allreduce_sum("statistics", comm::Group::dp, stats.fired_total());
  kernels::update_tokens_since_fired(tokens_since_fired_, stats.fired_total(), cfg_.batch_size,
                                     cfg_.dead_window_tokens, m.buffers().dead);
  m.variant().post_step(m.params(), m.buffers());
  const int64_t active = kernels::sum("saescale::statistics::l0", stats.active_total());
  return agree_on_step(active, std::move(non_finite));
}

// What every rank must decide together after a step, in one all-reduce: the L0 numerator, the
// non-finite gradient values per tensor, a stop signal (SIGTERM counted in the low 32 bits, SIGUSR1
// in the high ones: a sum over ranks) and a checkpoint due by the clock.
Trainer::Agreement Trainer::agree_on_step(int64_t active, std::vector<int64_t> non_finite) {
  const size_t tensors = non_finite.size();
  const int signal = g_stop_signal;
  const double minutes =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - last_checkpoint_).count() /
      60;
  std::vector<int64_t> v = std::move(non_finite);
  v.push_back(active);
  v.push_back(signal == SIGUSR1 ? int64_t(1) << 32 : signal != 0 ? 1 : 0);
  v.push_back(checkpoint_every_minutes_ > 0 && minutes >= checkpoint_every_minutes_);
  comm_.allreduce_host_sum("statistics", comm::Group::world, v.data(), static_cast<int>(v.size()));
  Agreement a;
  a.active = v[tensors];
  a.stop_signal = v[tensors + 1] == 0 ? 0 : (v[tensors + 1] >> 32) > 0 ? SIGUSR1 : SIGTERM;
  a.checkpoint_due = v[tensors + 2] > 0;
  v.resize(tensors);
  a.non_finite = std::move(v);
  return a;
}

double Trainer::dead_fraction() const {
  int64_t dead =
      kernels::count_nonzero("saescale::statistics::dead_fraction", model_->buffers().dead);
  comm_.allreduce_host_sum("statistics", comm::Group::lp, &dead, 1);
  return double(dead) / cfg_.width;
}

Fidelity Trainer::evaluate_now() {
  Fidelity f = evaluate(*model_, hyper_at(cfg_.steps), precision_, eval_rows_, eval_n_);
  if (const auto* truth = data_->ground_truth()) ground_truth_recovery(*model_, *truth, f);
  return f;
}

metrics::WorkShape Trainer::work_shape(bool global) const {
  metrics::WorkShape w;
  w.variant = cfg_.variant;
  w.B = double(global ? cfg_.batch_size : local_batch_);
  w.d = double(model_->d());
  w.M = double(global ? cfg_.width : model_->width());
  w.P = double(model_->params().total()) * (global ? comm_.size(comm::Group::lp) : 1);
  w.k = double(cfg_.k);
  w.aux_k = auxiliary_ran_ ? double(std::min(cfg_.aux_k, cfg_.width)) : 0.0;
  w.topk_algo = kernels::topk_algo_name(topk_algo_);
  w.adam = cfg_.optimizer == "adam";
  w.adam_first_moment = adam_m_.size() > 0;
  w.clip = hyper_.clip_norm > 0;
  return w;
}

// The median of `repetitions` fenced runs of `work` after one warm-up, the max over ranks (the
// step waits for the slowest rank).
double Trainer::fenced_median(const std::function<void()>& work, int repetitions) const {
  std::vector<double> times;
  for (int r = 0; r < repetitions + 1; ++r) {
    ExecSpace().fence();
    const auto t0 = std::chrono::steady_clock::now();
    work();
    ExecSpace().fence();
    if (r > 0)  // the first is a warm-up
      times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  double median = summarize(times)["median"].get<double>();
  if (comm_.grid().uses_mpi())
    SAESCALE_MPI_CHECK(
        MPI_Allreduce(MPI_IN_PLACE, &median, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD));
  return median;
}

// --sparse auto: where the sparse products stop paying on this machine at these shapes. The four
// products the sparse path replaces (Model::decode and the three backward products, as a step
// runs them) are timed on random rows of two sizes, sparse and as their dense fallback; the sparse
// time grows linearly with the entries per row (O(B L d)), so the crossover L* is where that line
// meets the dense time. A step whose rows average more than L* entries runs its products dense.
nlohmann::json Trainer::calibrate_sparse() {
  Model& m = *model_;
  const Hyper h = hyper_at(0);
  const int64_t cap = cfg_.sparse_capacity_or_default();
  // Rows are filled up to the capacity: two sizes within it (one if the capacity is 1).
  const int64_t large = std::min<int64_t>(cap, 64), small = std::max<int64_t>(1, large / 8);
  SparseProducts& sparse = *m.sparse();
  // The step's phases with only the four products (and what their phases hold) running.
  const std::set<std::string> timed = {"decode_gemm", "backward_decoder_gemm",
                                       "backward_activation_gemm", "backward_encoder_gemm"};
  const PhaseRunner products_only = [&](const char* phase, const std::function<void()>& work) {
    if (timed.count(phase)) work();
  };
  const auto products = [&](int64_t entries, bool sparse_rows) {
    sparse.fill_rows(entries, cfg_.seed + entries);
    sparse.choose(sparse_rows);
    return fenced_median(
        [&] {
          m.forward(h, precision_, products_only);
          m.backward(h, precision_, products_only);
        },
        3);
  };
  const double dense = products(small, false);
  const double t_small = products(small, true);
  const double t_large = large > small ? products(large, true) : t_small;
  sparse.reset_counts();
  const double per_entry = large > small ? (t_large - t_small) / double(large - small) : 0;
  const double crossover = per_entry > 0     ? std::max(0.0, small + (dense - t_small) / per_entry)
                           : t_small < dense ? double(cap)  // flat: sparse wins up to capacity
                                             : 0.0;
  sparse.set_limit(crossover);
  return {
      {"dense_products_s", dense},
      {"sparse_products_s", {{std::to_string(small), t_small}, {std::to_string(large), t_large}}},
      {"crossover_entries_per_row", crossover}};
}

// What this machine can do, measured in the same run: the step's five GEMMs on this rank's
// shapes timed alone (the GEMM floor; the slowest rank's) and a BabelStream-style copy kernel
// (memory bandwidth as this build's Kokkos kernels see it).
nlohmann::json Trainer::measure_ceilings(double step_median) {
  nlohmann::json out = {{"gemm_floor_s", nullptr},
                        {"floor_ratio", nullptr},
                        {"gemm_gflops_per_s", nullptr},
                        {"stream_copy_gbytes_per_s", nullptr},
                        {"stream_copy_bytes", nullptr}};
  if (!cfg_.gemm_floor || step_median <= 0) return out;
  const int reps = static_cast<int>(std::clamp<int64_t>(cfg_.steps - cfg_.warmup_steps, 3, 20));
  Model& m = *model_;
  const auto& s = m.buffers();
  m.materialize_f();  // the last step's f, as the GEMMs would read it
  Products gemms;     // the step's products as GEMMs, whatever path the run took
  ParamStore& p = m.params();
  const double floor = fenced_median(
      [&] {
        gemms.encode(p, s, precision_);
        gemms.decode(p, s, precision_);
        gemms.decoder_gradient(p, s, 1, precision_);
        gemms.activation_gradient(p, s, 1, precision_);
        gemms.encoder_gradient(p, s, precision_);
      },
      reps);
  const double B = double(local_batch_), d = double(m.d()), M = double(m.width());
  out["gemm_floor_s"] = floor;
  out["floor_ratio"] = step_median / floor;
  out["gemm_gflops_per_s"] = 5 * metrics::gemm_work(B, M, d).flops / floor / 1e9;
  // BabelStream's default size (2^25 elements), far beyond any last-level cache: DRAM (HBM).
  const int64_t n = int64_t(1) << 25;
  Vector a("saescale::ceilings::copy_a", n), b("saescale::ceilings::copy_b", n);
  const double copy =
      fenced_median([&] { kernels::stream_copy("saescale::ceilings::stream_copy", a, b); }, 5);
  out["stream_copy_bytes"] = 2.0 * n * sizeof(real);
  out["stream_copy_gbytes_per_s"] = 2.0 * n * sizeof(real) / copy / 1e9;
  return out;
}

// The work model describes the dense step: with --sparse on, the products that ran sparse (or
// sometimes sparse, sometimes dense) are left out of it — they carry no rates and no FLOPs — and
// so are the activation and the variant's backward of a variant that emits rows (they visit
// the rows' entries, not B x M).
std::map<std::string, metrics::Work> Trainer::dense_work(const metrics::WorkShape& shape) const {
  auto work = metrics::work_model(shape);
  if (model_->sparse())
    for (const char* phase : {"decode_gemm", "backward_decoder_gemm", "backward_activation_gemm",
                              "backward_encoder_gemm"})
      work.erase(phase);
  if (model_->sparse() && model_->variant().emits_rows())
    for (const char* phase : {"activation", "variant_backward"}) work.erase(phase);
  return work;
}

// --sparse: the capacity (at the start and at the end: it grows to fit longer rows) and, per
// product, how many times it ran sparse and how many dense. null with --sparse off.
nlohmann::json Trainer::sparse_json() const {
  if (!model_->sparse()) return nullptr;
  nlohmann::json products = nlohmann::json::object();
  for (const auto& [name, c] : model_->sparse()->counts())
    products[name] = {{"sparse", c.sparse}, {"dense", c.dense}};
  return {{"mode", cfg_.sparse},
          {"initial_capacity", cfg_.sparse_capacity_or_default()},
          {"capacity", model_->sparse()->capacity()},
          {"growths", model_->sparse()->growths()},
          {"products", products},
          {"calibration", sparse_calibration_}};
}

// Every phase's work (metrics/work_model.hpp; communication: the bytes sent) and the rates its
// median achieved, on this rank's shapes. Unfenced phase times are launch times: no rates then.
void Trainer::annotate_phases(nlohmann::json& timing) const {
  const auto work = dense_work(work_shape(false));
  for (auto& [phase, stats] : timing["phases_s"].items()) {
    double flops = 0, bytes = 0;
    if (auto it = work.find(phase); it != work.end()) {
      flops = it->second.flops, bytes = it->second.bytes;
    } else if (timing["communication"].contains(phase)) {
      bytes = timing["communication"][phase]["sent_bytes_per_step"].get<double>();
    } else {
      continue;
    }
    const double median = stats.value("median", 0.0);
    const bool rates = cfg_.fence && median > 0;
    stats["flops"] = flops;
    stats["bytes"] = bytes;
    stats["gflops_per_s"] = rates && flops > 0 ? nlohmann::json(flops / median / 1e9) : nullptr;
    stats["gbytes_per_s"] = rates ? nlohmann::json(bytes / median / 1e9) : nullptr;
  }
}

nlohmann::json Trainer::memory_json() const {
  // Per rank: this rank's shard and rows (comm/plan.cpp), measured peaks the largest over ranks.
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  const int64_t tracked = metrics::peak_bytes(MemSpace::name());
  int64_t peaks[2] = {static_cast<int64_t>(usage.ru_maxrss) * 1024,
                      tracked < 0 ? -1 : tracked - memory_baseline_};
  if (comm_.grid().uses_mpi())
    SAESCALE_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, peaks, 2, MPI_INT64_T, MPI_MAX, MPI_COMM_WORLD));
  const auto* truth = data_->ground_truth();
  const int64_t d = model_->d(), features = truth ? static_cast<int64_t>(truth->size()) / d : 0;
  const nlohmann::json breakdown =
      comm::memory_plan(cfg_, d, comm_.size(comm::Group::dp), comm_.size(comm::Group::lp),
                        adam_m_.size() > 0, features);
  int64_t planned = 0;
  for (const auto& [kind, bytes] : breakdown.items()) planned += bytes.get<int64_t>();
  const nlohmann::json snapshot = metrics::memory_snapshot();
  nlohmann::json out = {
      {"peak_device_bytes", nullptr},    {"device_memory_space", MemSpace::name()},
      {"peak_host_rss_bytes", peaks[0]}, {"per_rank", true},
      {"tracked", snapshot["tracked"]},  {"device_used_bytes", snapshot["device_used_bytes"]},
      {"breakdown", breakdown},          {"breakdown_total", planned},
      {"breakdown_vs_peak", nullptr}};
  if (peaks[1] > 0) {  // every Kokkos allocation was tracked (metrics/memory.hpp)
    out["peak_device_bytes"] = peaks[1];
    out["breakdown_vs_peak"] = double(planned) / peaks[1];
  }
  return out;
}

// Per phase and step, on this rank: the bytes counted in the collectives (ring volumes, see
// comm/communicator.hpp), the plan's bytes (comm/plan.hpp) and the bus bandwidth the phase achieved
// (sent bytes / the phase's median time, as nccl-tests reports it).
nlohmann::json Trainer::communication_json(const nlohmann::json& phases) const {
  nlohmann::json out = nlohmann::json::object();
  const double steps = std::max<int64_t>(1, counted_steps_);
  for (const auto& [phase, v] : comm_.volume()) {
    const double sent = v.sent_bytes / steps;
    nlohmann::json entry = {{"calls_per_step", v.calls / steps},
                            {"payload_bytes_per_step", v.payload_bytes / steps},
                            {"sent_bytes_per_step", sent},
                            {"planned_sent_bytes_per_step", nullptr},
                            {"bus_bandwidth_GBps", nullptr}};
    if (phases.contains(phase) && phases[phase].value("median", 0.0) > 0)
      entry["bus_bandwidth_GBps"] = sent / phases[phase]["median"].get<double>() / 1e9;
    out[phase] = entry;
  }
  for (const auto& [phase, p] : comm::communication_plan(
           cfg_, model_->d(), comm_.size(comm::Group::dp), comm_.size(comm::Group::lp))) {
    if (!out.contains(phase))
      out[phase] = {{"calls_per_step", 0},
                    {"payload_bytes_per_step", 0},
                    {"sent_bytes_per_step", 0},
                    {"bus_bandwidth_GBps", nullptr}};
    out[phase]["group"] = p.group;
    out[phase]["planned_sent_bytes_per_step"] = p.sent_bytes;
  }
  return out;
}

volatile std::sig_atomic_t g_stop_signal = 0;

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
               {"auxiliary_ran", auxiliary_ran_}};
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
        throw Error("--resume: the run in " + path + " started with " +
                    (std::string(part) == "options" ? option_name(key) : key + " (resolved)") +
                    " = " + had.value(key, nlohmann::json()).dump() + " but this run has " +
                    value.dump() +
                    ": resume with the options the run started with (see the README for those "
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
  if (root()) std::printf("resumed from %s at step %lld\n", path.c_str(), (long long)start_step_);
}

// Every option as given, the resolved hyper-parameters and the data source.
nlohmann::json Trainer::config_json() const {
  nlohmann::json config = cfg_.to_json();
  config["d_model"] = model_->d();
  config["resolved"] = {{"sparsity_coeff", hyper_.sparsity_coeff},
                        {"lr", hyper_.lr},
                        {"adam_beta1", hyper_.adam_beta1},
                        {"adam_beta2", hyper_.adam_beta2},
                        {"adam_eps", hyper_.adam_eps},
                        {"clip_norm", hyper_.clip_norm},
                        {"bandwidth", hyper_.bandwidth},
                        {"threshold_init", hyper_.threshold_init},
                        {"lr_decay_frac", hyper_.lr_decay_frac},
                        {"decoder_init_norm", hyper_.decoder_init_norm},
                        {"lr_warmup_steps", hyper_.lr_warmup_steps},
                        {"sparsity_warmup_steps", hyper_.sparsity_warmup_steps},
                        {"norm_scale", norm_scale_},
                        {"topk_algo", kernels::topk_algo_name(topk_algo_)}};
  config["data_source"] = data_->describe();
  config["initial_l0_start"] = initial_l0_start_;
  return config;
}

nlohmann::json Trainer::run() {
  const int64_t steps = cfg_.steps, B = cfg_.batch_size;
  // SIGTERM/SIGUSR1 during setup (the handlers are installed from the start of `train`): nothing
  // was trained; the run ends "preempted" (exit 3), so a resubmission runs it again.
  int64_t setup_signal = g_stop_signal == SIGUSR1 ? int64_t(1) << 32 : g_stop_signal != 0;
  comm_.allreduce_host_sum("statistics", comm::Group::world, &setup_signal, 1);
  if (setup_signal != 0) {
    const bool resumable =
        !cfg_.checkpoint_dir.empty() && io::latest_checkpoint(cfg_.checkpoint_dir);
    const std::string reason =
        std::string((setup_signal >> 32) > 0 ? "SIGUSR1" : "SIGTERM") +
        " during setup, before step " + std::to_string(start_step_ + 1) +
        ": nothing was trained; " +
        (resumable ? "resume from " + cfg_.checkpoint_dir + " with --resume" : "run it again");
    if (root()) std::printf("  preempted during setup\n");
    return {{"schema", "saescale.result/1"},
            {"status", "preempted"},
            {"reason", reason},
            {"stopped_step", start_step_},
            {"config", config_json()}};
  }
  const int64_t every =
      cfg_.progress_every > 0 ? cfg_.progress_every : std::max<int64_t>(1, steps / 10);
  if (root()) {
    std::printf(
        "saescale train: %s, d=%lld, M=%lld, B=%lld, %lld steps (%lld warm-up), data %s, "
        "normalisation %s (s=%.4g), gemm %s/%s, ranks %d (dp %d x lp %d, comm %s)\n",
        cfg_.variant.c_str(), (long long)model_->d(), (long long)cfg_.width, (long long)B,
        (long long)steps, (long long)cfg_.warmup_steps,
        data_->describe()["spec"].get<std::string>().c_str(), cfg_.normalize.c_str(), norm_scale_,
        gemm_backend_name(), precision_name(precision_), comm_.size(comm::Group::world),
        comm_.size(comm::Group::dp), comm_.size(comm::Group::lp),
        comm::backend_name(comm_.backend()));
    std::fflush(stdout);
  }
  if (cfg_.sparse == "auto" && cfg_.sparse_crossover >= 0) {  // given: nothing is timed
    model_->sparse()->set_limit(cfg_.sparse_crossover);
    sparse_calibration_ = {{"dense_products_s", nullptr},
                           {"sparse_products_s", nullptr},
                           {"crossover_entries_per_row", cfg_.sparse_crossover},
                           {"given", true}};
  } else if (cfg_.sparse == "auto") {  // collective: every rank times the same shapes
    sparse_calibration_ = calibrate_sparse();
    if (root())
      std::printf("sparse auto: products sparse while rows average <= %.1f entries (calibrated)\n",
                  sparse_calibration_["crossover_entries_per_row"].get<double>());
  }

  const auto start = std::chrono::steady_clock::now();
  last_checkpoint_ = start;
  // --target-fvu: evaluate periodically (every 5% of the run unless --eval-every says otherwise)
  const int64_t eval_every = cfg_.eval_every > 0       ? cfg_.eval_every
                             : cfg_.target_fvu.empty() ? 0
                                                       : std::max<int64_t>(1, steps / 20);
  const auto record_targets = [&](double fvu, int64_t step_done) {
    for (auto& t : reached_)
      if (!t.step && fvu <= t.target) {
        t.step = step_done;
        t.train_s = step_seconds_;
        t.wall_s = previous_seconds_ +
                   std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      }
  };
  const auto elapsed = [&] {
    return previous_seconds_ +
           std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  const auto failed = [&](const std::string& reason, int64_t step_done) -> nlohmann::json {
    if (root()) std::printf("  step %6lld/%lld  stopped\n", (long long)step_done, (long long)steps);
    return {{"schema", "saescale.result/1"},
            {"status", "failed"},
            {"reason", reason},
            {"failed_step", step_done},
            {"config", config_json()}};
  };
  for (int64_t s = start_step_; s < steps; ++s) {
    try {  // a data file that changed under the run fails it (every rank agrees) with a result
      comm::agree(comm_.grid(), [&] { load_batch(s); });
    } catch (const Error& e) {
      return failed(
          std::string("reading the batch of step ") + std::to_string(s + 1) + ": " + e.what(),
          s + 1);
    }
    comm_.set_timers(&timers_);  // collectives are timed and counted inside steps only
    timers_.begin_step();
    try {
      step(s);
    } catch (const RunFailed& e) {  // every rank stops at this step (trainer.hpp)
      comm_.set_timers(nullptr);
      return failed(e.what(), s + 1);
    }
    const double t = timers_.end_step(s >= cfg_.warmup_steps);
    comm_.set_timers(nullptr);
    metrics::sample_device_memory();
    step_seconds_ += t;
    ++counted_steps_;
    if (stop_signal_ != 0) {  // agreed by every rank in this step's statistics
      try {
        if (!cfg_.checkpoint_dir.empty()) save_checkpoint(s + 1, elapsed());
      } catch (const RunFailed& e) {
        return failed(e.what(), s + 1);
      }
      const std::string reason =
          std::string(stop_signal_ == SIGUSR1 ? "SIGUSR1" : "SIGTERM") + " at step " +
          std::to_string(s + 1) + ": " +
          (cfg_.checkpoint_dir.empty()
               ? std::string("no --checkpoint-dir, so the run cannot be resumed")
               : "checkpoint in " + io::checkpoint_step_dir(cfg_.checkpoint_dir, s + 1) +
                     "; resume with --resume");
      if (root()) std::printf("  step %6lld/%lld  preempted\n", (long long)s + 1, (long long)steps);
      return {{"schema", "saescale.result/1"},
              {"status", "preempted"},
              {"reason", reason},
              {"stopped_step", s + 1},
              {"config", config_json()}};
    }
    if (!cfg_.checkpoint_dir.empty() && s + 1 < steps &&
        (checkpoint_due_ ||
         (checkpoint_every_steps_ > 0 && (s + 1) % checkpoint_every_steps_ == 0))) {
      try {
        save_checkpoint(s + 1, elapsed());
      } catch (const RunFailed& e) {
        return failed(e.what(), s + 1);
      }
    }
    if (root() && ((s + 1) % every == 0 || s + 1 == steps)) {
      const auto& l = log_.back();
      std::printf("  step %6lld/%lld  loss %.5f  mse %.5f  L0 %7.2f  step %8.2f ms  %10.0f tok/s\n",
                  (long long)s + 1, (long long)steps, l.loss, l.mse, l.l0, t * 1e3, B / t);
      std::fflush(stdout);
    }
    if (eval_every > 0 && (s + 1) % eval_every == 0 && s + 1 < steps) {
      const Fidelity f = evaluate_now();
      const double dead = dead_fraction();
      record_targets(f.fvu, s + 1);
      eval_curve_.push_back({{"step", s + 1},
                             {"fvu", f.fvu},
                             {"l0", f.l0},
                             {"mmcs", f.to_json()["mmcs"]},
                             {"dead_fraction", dead}});
    }
  }
  const double train_seconds = elapsed();
  try {
    if (!cfg_.checkpoint_dir.empty() && start_step_ < steps) save_checkpoint(steps, train_seconds);
  } catch (const RunFailed& e) {
    return failed(e.what(), steps);
  }

  Fidelity fid = evaluate_now();
  if (!std::isfinite(fid.fvu))  // the held-out rows are finite (checked at start): the SAE is not
    return failed("the final evaluation's FVU is not finite (" + std::to_string(fid.fvu) +
                      "): the trained SAE's reconstructions are not finite",
                  steps);
  record_targets(fid.fvu, steps);
  const double dead = dead_fraction();
  const int64_t trained_tokens = steps * B;
  timers_.reduce_across_ranks(comm_.grid().uses_mpi() ? MPI_COMM_WORLD : MPI_COMM_NULL);
  const nlohmann::json memory = memory_json();  // before the ceilings allocate their buffers

  nlohmann::json timing;
  timing["step_s"] = timers_.steps_json();
  timing["phases_s"] = timers_.phases_json();
  const double median = timing["step_s"].value("median", 0.0);
  timing["tokens_per_s"] = median > 0 ? B / median : 0.0;
  // The whole step's FLOPs (all ranks) from the work model.
  double flops = 0;
  for (const auto& [phase, w] : dense_work(work_shape(true))) flops += w.flops;
  timing["flops_per_step"] = flops;
  timing["warmup_steps"] = cfg_.warmup_steps;
  timing["total_train_s"] = train_seconds;
  timing["data_s"] = data_seconds_;
  timing["fenced"] = cfg_.fence;
  timing["auxiliary_ran"] = auxiliary_ran_;  // AuxK found dead latents in some step
  timing["sparse"] = sparse_json();
  timing["communication"] = communication_json(timing["phases_s"]);
  timing["ceilings"] = measure_ceilings(median);
  timing["gemm_floor_s"] = timing["ceilings"]["gemm_floor_s"];
  timing["floor_ratio"] = timing["ceilings"]["floor_ratio"];
  annotate_phases(timing);

  nlohmann::json fidelity = fid.to_json();
  fidelity["dead_fraction"] = dead;
  fidelity["dead_window_tokens"] = cfg_.dead_window_tokens;
  fidelity["trained_tokens"] = trained_tokens;
  fidelity["final_train_loss"] = log_.back().loss;
  fidelity["eval_curve"] = eval_curve_;
  nlohmann::json curve = nlohmann::json::array();
  const int64_t points = std::min<int64_t>(cfg_.loss_curve_points, steps);
  for (int64_t k = 0; k < points; ++k) {
    const auto& l = log_[points == 1 ? steps - 1 : k * (steps - 1) / (points - 1)];
    curve.push_back({{"step", l.step}, {"loss", l.loss}, {"mse", l.mse}, {"l0", l.l0}});
  }
  fidelity["loss_curve"] = curve;
  nlohmann::json targets = nlohmann::json::array();
  for (const auto& t : reached_) {
    const auto opt = [&](auto v) { return t.step ? nlohmann::json(v) : nlohmann::json(); };
    targets.push_back({{"target_fvu", t.target},
                       {"reached", t.step.has_value()},
                       {"step", opt(t.step.value_or(0))},
                       {"tokens", opt(t.step.value_or(0) * B)},
                       {"train_s", opt(t.train_s)},
                       {"wall_s", opt(t.wall_s)}});
  }
  fidelity["time_to_fidelity"] = targets;

  const nlohmann::json config = config_json();

  nlohmann::json benchmarks = nlohmann::json::array();
  const auto& times = timers_.step_times();
  for (size_t i = 0; i < times.size(); ++i)
    benchmarks.push_back({{"name", "saescale/" + cfg_.variant + "/step"},
                          {"run_name", "saescale/" + cfg_.variant + "/step"},
                          {"run_type", "iteration"},
                          {"repetitions", times.size()},
                          {"repetition_index", i},
                          {"threads", comm_.size(comm::Group::world)},
                          {"iterations", 1},
                          {"real_time", times[i] * 1e3},
                          {"cpu_time", times[i] * 1e3},
                          {"time_unit", "ms"}});

  // The first replica's shards are gathered (over lp) and world rank 0 writes; a failure (a full
  // disk) fails the run on every rank, with the results of the training.
  std::string weights_error;
  if (!cfg_.save_weights.empty() && comm_.rank(comm::Group::dp) == 0) {
    try {
      save_weights(cfg_.save_weights, *model_, norm_scale_, config["resolved"]);
    } catch (const Error& e) {
      weights_error = e.what();
    }
  }
  try {
    comm::agree(comm_.grid(), [&] {
      if (!weights_error.empty()) throw Error(weights_error);
    });
  } catch (const Error& e) {
    nlohmann::json out = failed(std::string("saving the weights failed: ") + e.what(), steps);
    out["timing"] = timing, out["memory"] = memory, out["fidelity"] = fidelity;
    return out;
  }

  if (root()) {
    std::printf("done: FVU %.4f  L0 %.2f  dead %.1f%%  ", fid.fvu, fid.l0, 100.0 * dead);
    if (median > 0)
      std::printf("step median %.2f ms  %.0f tok/s", median * 1e3, B / median);
    else  // every step was a warm-up step
      std::printf("no step timed (all %lld were --warmup-steps)", (long long)steps);
    if (fid.mmcs)
      std::printf("  MMCS %.3f  recovered %.1f%%", *fid.mmcs, 100 * *fid.recovered_fraction);
    if (timing["floor_ratio"].is_number())
      std::printf("  floor_ratio %.3f", timing["floor_ratio"].get<double>());
    std::printf("\n");
  }
  return {{"schema", "saescale.result/1"},
          {"status", "ok"},
          {"config", config},
          {"timing", timing},
          {"memory", memory},
          {"fidelity", fidelity},
          {"benchmarks", benchmarks}};
}

}  // namespace saescale
