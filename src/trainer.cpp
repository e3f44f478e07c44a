#include "trainer.hpp"

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "ceilings.hpp"
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
#include "preflight.hpp"
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
  // A directory another run holds is refused before this run's setup (reading the data and the
  // normalisation can take minutes); a new one is created, and locked, once the setup is done.
  if (!cfg.checkpoint_dir.empty() && root() && std::filesystem::is_directory(cfg.checkpoint_dir))
    checkpoint_lock_ = io::DirectoryLock(cfg.checkpoint_dir);
  if (cfg.sparse_crossover >= 0 && cfg.sparse != "auto")
    throw Error("--sparse-crossover is the limit of --sparse auto, but --sparse is " + cfg.sparse +
                ": drop one of them");
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
    SavedSae saved = read_saved_sae(cfg.init);
    // cfg.json says which SAE the file holds (BatchTopK is saved as a JumpReLU SAE).
    if (!saved.variant.empty() && saved.variant != cfg.variant)
      throw Error(cfg.init + ": the weights are a " + saved.variant +
                  " SAE (cfg.json) but --variant is " + cfg.variant + ": use --variant " +
                  saved.variant);
    model_->import_tensors(std::move(saved.tensors), norm_scale_, cfg.init, saved.applies_b_dec);
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
    // (64 KiB: the header, the data stream's position and the curves; 5 KiB measured)
    const int64_t per_rank =
        static_cast<int64_t>(sizeof(real)) * (P + adam_m_.size() + adam_v_.size()) +
        16 * model_->width() + (int64_t(1) << 16);
    io::check_free_space(cfg.checkpoint_dir, per_rank * comm.size(comm::Group::world),
                         "--checkpoint-dir (one checkpoint of every rank)");
    if (!checkpoint_lock_.held()) checkpoint_lock_ = io::DirectoryLock(cfg.checkpoint_dir);
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
                                     cfg_.dead_window_or_default(), m.buffers().dead);
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
  f.mse /= norm_scale_ * norm_scale_;  // in the data's units, as `eval` reports it
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

// The work model describes the dense step: with --sparse on or auto, the products that ran sparse
// at least once are left out of it — they carry no rates and no FLOPs — and so are the activation
// and the variant's backward of a variant that emits rows (they visit the rows' entries, not
// B x M). A product that ran as its GEMM every time keeps its work.
std::map<std::string, metrics::Work> Trainer::dense_work(const metrics::WorkShape& shape) const {
  auto work = metrics::work_model(shape);
  if (model_->sparse()) {
    const auto& counts = model_->sparse()->counts();
    for (const auto& [phase, product] :
         {std::pair<const char*, const char*>{"decode_gemm", "decode"},
          {"backward_decoder_gemm", "decoder_gradient"},
          {"backward_activation_gemm", "activation_gradient"},
          {"backward_encoder_gemm", "encoder_gradient"}}) {
      const auto c = counts.find(product);
      if (c == counts.end() || c->second.sparse > 0) work.erase(phase);
    }
  }
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

nlohmann::json Trainer::memory_json() const {
  // Per rank: this rank's shard and rows (comm/plan.cpp), measured peaks the largest over ranks.
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  const int64_t tracked = metrics::peak_bytes(MemSpace::name());
  int64_t peaks[2] = {static_cast<int64_t>(usage.ru_maxrss) * 1024,
                      tracked < 0 ? -1 : tracked - memory_baseline_};
  comm_.allreduce_host_max("memory", comm::Group::world, peaks, 2);
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
                        {"topk_algo", kernels::topk_algo_name(topk_algo_)},
                        {"dead_window_tokens", cfg_.dead_window_or_default()}};
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
    return stopped_result("preempted", reason, start_step_, config_json());
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
  } else if (cfg_.sparse == "auto") {
    // A resumed run keeps the crossover it measured (the same paths, the same bits); otherwise
    // every rank times the same shapes (collective).
    const bool resumed = !sparse_calibration_.is_null();
    if (resumed)
      model_->sparse()->set_limit(sparse_calibration_["crossover_entries_per_row"].get<double>());
    else
      sparse_calibration_ = calibrate_sparse(*model_, hyper_at(0), precision_,
                                             cfg_.sparse_capacity_or_default(), cfg_.seed);
    if (root())
      std::printf("sparse auto: products sparse while rows average <= %.1f entries (%s)\n",
                  sparse_calibration_["crossover_entries_per_row"].get<double>(),
                  resumed ? "calibrated before the checkpoint" : "calibrated");
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
    return stopped_result("failed", reason, step_done, config_json());
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
      return stopped_result("preempted", reason, s + 1, config_json());
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
  RunRecord r;
  r.config = config_json();
  r.variant = cfg_.variant;
  r.steps = steps, r.batch_size = B, r.warmup_steps = cfg_.warmup_steps;
  r.ranks = comm_.size(comm::Group::world);
  timers_.reduce_across_ranks(comm_);
  r.memory = memory_json();  // before the ceilings allocate their buffers
  r.step_s = timers_.steps_json();
  r.phases_s = timers_.phases_json();
  r.step_times = timers_.step_times();
  r.phase_work = dense_work(work_shape(false));
  for (const auto& [phase, w] : dense_work(work_shape(true))) r.flops_per_step += w.flops;
  r.total_train_s = train_seconds;
  r.data_s = data_seconds_;
  r.fenced = cfg_.fence;
  r.auxiliary_ran = auxiliary_ran_;
  r.sparse = sparse_json();
  r.communication = communication_json(r.phases_s);
  const double median = r.step_s.value("median", 0.0);
  // As many repetitions as timed steps, within [3, 20].
  const int reps = static_cast<int>(std::clamp<int64_t>(steps - cfg_.warmup_steps, 3, 20));
  r.ceilings = measure_ceilings(*model_, precision_, reps, cfg_.gemm_floor ? median : 0);
  r.fidelity = fid;
  r.dead_fraction = dead_fraction();
  r.dead_window_tokens = cfg_.dead_window_or_default();
  r.loss_curve_points = cfg_.loss_curve_points;
  r.log = log_;
  r.eval_curve = eval_curve_;
  r.targets = reached_;
  nlohmann::json results = results_json(r);

  // The first replica's shards are gathered (over lp) and world rank 0 writes; a failure (a full
  // disk) fails the run on every rank, with the results of the training.
  std::string weights_error;
  if (!cfg_.save_weights.empty() && comm_.rank(comm::Group::dp) == 0) {
    try {
      save_weights(cfg_.save_weights, *model_, norm_scale_, r.config["resolved"], cfg_.k);
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
    for (const char* part : {"timing", "memory", "fidelity"}) out[part] = results[part];
    return out;
  }

  if (root()) print_summary(r);
  return results;
}

}  // namespace saescale
