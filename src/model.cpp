#include "model.hpp"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <random>

#include "comm/selection.hpp"
#include "data/rng.hpp"
#include "error.hpp"
#include "io/atomic_write.hpp"
#include "kernels/reduce.hpp"

namespace saescale {

namespace {
int64_t shard_width(int64_t d, int64_t width, int lp) {
  if (d <= 0) throw Error("--d-model must be positive");
  if (width <= 0) throw Error("--width must be positive");
  if (width % lp != 0)
    throw Error("--width " + std::to_string(width) + " is not divisible by --lp " +
                std::to_string(lp) + ": every latent shard must have the same size");
  if (width >= (int64_t(1) << 32)) throw Error("--width must be below 2^32");
  return width / lp;
}
}  // namespace

Model::Model(const std::string& variant, int64_t d, int64_t width, comm::Communicator* comm)
    : variant_(make_variant(variant)),
      own_comm_(comm ? nullptr : std::make_unique<comm::Communicator>()),
      d_(d),
      global_width_(width),
      width_(shard_width(d, width, (comm ? comm : own_comm_.get())->size(comm::Group::lp))),
      params_(variant_->param_specs(d, width_)) {
  buf_.comm = comm ? comm : own_comm_.get();
  buf_.global_width = global_width_;
  buf_.latent_offset = width_ * buf_.comm->rank(comm::Group::lp);
}

namespace {
// Decoder rows: Kaiming-uniform draws (bound sqrt(6/d)) from global latent i's own stream, each row
// rescaled to `norm`; W_enc = W_dec^T. One work item per latent, on the device: a row's draws
// are sequential, so they are drawn twice (for the norm, then the values) rather than read back.
void initialize_decoder(const Matrix& w_dec, const Matrix& w_enc, uint64_t seed,
                        int64_t first_latent, double norm) {
  const int64_t d = w_dec.extent(1);
  const double bound = std::sqrt(6.0 / d);
  Kokkos::parallel_for(
      "saescale::init::decoder", Kokkos::RangePolicy<ExecSpace>(0, w_dec.extent(0)),
      KOKKOS_LAMBDA(int64_t i) {
        Rng rng(seed, 0xdec, first_latent + i);
        double norm2 = 0;
        for (int64_t c = 0; c < d; ++c) {
          const float v = static_cast<float>(bound * (2 * rng.uniform() - 1));
          norm2 += double(v) * v;
        }
        const float s = static_cast<float>(norm / kmath::sqrt(norm2));
        Rng again(seed, 0xdec, first_latent + i);
        for (int64_t c = 0; c < d; ++c) {
          const float v = static_cast<float>(bound * (2 * again.uniform() - 1)) * s;
          w_dec(i, c) = v;
          w_enc(c, i) = v;
        }
      });
}
}  // namespace

void Model::initialize(const Hyper& h, uint64_t seed) {
  Kokkos::deep_copy(params_.values(), 0.f);
  initialize_decoder(params_.matrix("W_dec"), params_.matrix("W_enc"), seed, buf_.latent_offset,
                     h.decoder_init_norm);
  initialize_sparsity(h);
}

void Model::initialize_sparsity(const Hyper& h) {
  variant_->initialize(params_, h);
  // --encoder-bias-init: every encoder bias starts there (a negative one: a sparse SAE at step 0).
  for (const char* bias : {"b_enc", "b_gate"})
    if (h.encoder_bias_init != 0 && params_.has(bias))
      kernels::fill("saescale::init::encoder_bias", params_.vector(bias),
                    static_cast<real>(h.encoder_bias_init));
}

double Model::pre_activation_quantile(int64_t l0, kernels::TopkAlgo algo) {
  encode(Precision::fp32);
  // The (l0 B)-th largest of pi over the global batch: BatchTopK's selection, with f as scratch.
  return comm::sharded_batch_topk(*buf_.comm, comm::Group::world, buf_.pi, Vector(),
                                  l0 * buf_.global_batch, algo, buf_.f);
}

void Model::allocate(int64_t batch, int64_t global_batch, int64_t row_offset) {
  auto noinit = [](const char* label) {
    return Kokkos::view_alloc(Kokkos::WithoutInitializing, std::string(label));
  };
  buf_.x = Matrix(noinit("saescale::buffers::x"), batch, d_);
  buf_.x_in = variant_->traits().subtracts_decoder_bias
                  ? Matrix(noinit("saescale::buffers::x_in"), batch, d_)
                  : buf_.x;
  buf_.pi = Matrix(noinit("saescale::buffers::pi"), batch, width_);
  buf_.f = Matrix(noinit("saescale::buffers::f"), batch, width_);
  buf_.g = Matrix(noinit("saescale::buffers::g"), batch, width_);
  buf_.e = Matrix(noinit("saescale::buffers::e"), batch, d_);
  buf_.stats = LatentStats::allocate(width_);
  buf_.g_pi_sum = Vector("saescale::buffers::g_pi_sum", width_);
  buf_.dead = CountVector("saescale::buffers::dead", width_);
  buf_.column_scratch =
      SlotView<double>("saescale::buffers::column_scratch", accumulator_slots(), d_);
  buf_.global_batch = global_batch > 0 ? global_batch : batch;
  buf_.row_offset = row_offset;
  variant_->allocate(batch, d_, width_);
}

void Model::encode(Precision p) {
  if (variant_->traits().subtracts_decoder_bias)
    kernels::subtract_row("saescale::encode::subtract_b_dec", buf_.x, params_.vector("b_dec"),
                          buf_.x_in);
  gemm(Trans::N, Trans::N, 1, buf_.x_in, params_.matrix("W_enc"), 0, buf_.pi, p);
}

double Model::activate(const Hyper& h) {
  if (sparse_ && variant_->emits_rows()) {
    auto& s = *sparse_;
    s.direct = false;
    if (s.wait == 0) {
      double penalty = variant_->forward_rows(params_, buf_, h, s.f);
      if (grow_sparse(s.f)) penalty = variant_->forward_rows(params_, buf_, h, s.f);
      if (rows_fit(s.f)) {
        s.direct = true;
        s.backoff = 0;
        return penalty;
      }
      // More entries than the capacity can grow to, or above the --sparse auto limit: this step
      // runs dense, and while the rows keep missing the next tries come 1, 2, 4, ... 64 steps
      // later.
      s.backoff = std::min<int64_t>(64, 2 * s.backoff + (s.backoff == 0));
      s.wait = s.backoff;
    } else {
      --s.wait;
    }
  }
  return variant_->forward(params_, buf_, h);
}

void Model::materialize_f() {
  if (sparse_ && sparse_->direct) sparse::scatter_rows(sparse_->f, buf_.f);
}

void Model::decode(Precision p) {
  const bool sparse_rows = use_sparse("decode", sparse_ && sparse_->f_fits);
  residual(buf_, buf_.f, params_, buf_.e, p, "decode", sparse_rows ? &sparse_->f : nullptr);
}

double Model::auxiliary_forward(const Hyper& h, Precision p) {
  return variant_->auxiliary_forward(params_, buf_, h, p);
}

void Model::auxiliary_backward(const Hyper& h, Precision p) {
  variant_->auxiliary_backward(params_, buf_, h, p);
}

double Model::squared_error() const {
  return kernels::sum_squares("saescale::loss::squared_error", buf_.e);
}

// g_xhat = -2 e / B is never materialised: its scale rides in the GEMMs' alpha.
// The variant's extra decoder terms (ReLU's norm-weighted penalty) are added here too, so that
// W_dec's gradient is final (but for AuxK) early in the backward pass: its data-parallel
// all-reduce can start while the encoder side is still being computed.
void Model::backward_decoder_gemm(const Hyper& h, Precision p) {
  const real scale = static_cast<real>(-2.0 / buf_.global_batch);
  if (use_sparse("decoder_gradient", sparse_ && sparse_->f_fits))
    sparse::sparse_decoder_gradient_sorted(sparse_->f, sparse_->f_index, buf_.e, scale, 0,
                                           params_.grad_matrix("W_dec"));
  else
    gemm(Trans::T, Trans::N, scale, buf_.f, buf_.e, 0, params_.grad_matrix("W_dec"), p);
  variant_->decoder_gradient_extra(params_, buf_, h);
}

void Model::backward_activation_gemm(Precision p) {
  const real scale = static_cast<real>(-2.0 / buf_.global_batch);
  if (use_sparse("activation_gradient", sparse_ && sparse_->f_fits)) {
    // g_f at the entries backward() reads, zero elsewhere (where its factor is zero); the dense
    // backward reads it from g.
    const auto& s = *sparse_;
    const auto rows = s.f.with_values(s.g_f_values);
    sparse::sparse_activation_gradient(rows, buf_.e, params_.matrix("W_dec"), scale, s.g_f_values);
    if (!rows_backward()) sparse::scatter_rows(rows, buf_.g);
  } else {
    gemm(Trans::N, Trans::T, scale, buf_.e, params_.matrix("W_dec"), 0, buf_.g, p);
  }
}

bool Model::rows_backward() const {
  return sparse_ && sparse_->direct && !variant_->auxiliary_outside_rows();
}

void Model::variant_backward(const Hyper& h) {
  if (rows_backward()) {
    auto& s = *sparse_;
    variant_->backward_rows(params_, buf_, h, s.f.with_values(s.g_f_values), s.f_index,
                            s.g_pi_values);
  } else {
    variant_->backward(params_, buf_, h);
  }
}

void Model::backward_encoder_gemm(Precision p) {
  if (sparse_) {
    auto& s = *sparse_;
    if (rows_backward()) {  // g_pi at f's entries, from Variant::backward_rows
      use_sparse("encoder_gradient", true);
      sparse::sparse_encoder_gradient(s.f.with_values(s.g_pi_values), s.f_index, buf_.x_in, 1, 0,
                                      params_.grad_matrix("W_enc"));
      return;
    }
    // g_pi's non-zeros (f's, plus AuxK's or Gated's gate entries); f's rows are no longer read
    // this step, so growing (which reallocates them too) is safe here.
    sparse::compact_rows(buf_.g, s.g_pi);
    if (grow_sparse(s.g_pi)) sparse::compact_rows(buf_.g, s.g_pi);
    if (use_sparse("encoder_gradient", rows_fit(s.g_pi))) {
      sparse::build_latent_index(s.g_pi, s.g_pi_index);
      sparse::sparse_encoder_gradient(s.g_pi, s.g_pi_index, buf_.x_in, 1, 0,
                                      params_.grad_matrix("W_enc"));
      return;
    }
  }
  gemm(Trans::T, Trans::N, 1, buf_.x_in, buf_.g, 0, params_.grad_matrix("W_enc"), p);
}

void Model::enable_sparse(int64_t capacity) {
  if (batch() <= 0) throw Error("enable_sparse: allocate the batch first");
  const int64_t B = batch(), cap = std::max<int64_t>(1, std::min(capacity, width_));
  if (B * cap >= (int64_t(1) << 31))
    throw Error("--sparse-capacity " + std::to_string(cap) + " x " + std::to_string(B) +
                " rows per rank must stay below 2^31 entries");
  sparse_ = std::make_unique<SparseState>();
  sparse_->initial_capacity = cap;
  allocate_sparse(cap);
}

void Model::allocate_sparse(int64_t cap) {
  auto& s = *sparse_;
  const int64_t B = batch();
  s.capacity = cap;
  s.f = sparse::SparseRows::allocate("saescale::sparse::f", B, cap);
  s.g_pi = sparse::SparseRows::allocate("saescale::sparse::g_pi", B, cap);
  s.g_f_values = Matrix("saescale::sparse::g_f_values", B, cap);
  s.g_pi_values = Matrix("saescale::sparse::g_pi_values", B, cap);
  s.f_index = sparse::LatentIndex::allocate("saescale::sparse::f_index", width_, B, cap);
  s.g_pi_index = sparse::LatentIndex::allocate("saescale::sparse::g_pi_index", width_, B, cap);
}

// Rows overflowed: a capacity for the longest row and a quarter more (whole blocks of 8), when it
// stays within width / 8 or twice the initial capacity, whichever is larger — the GEMMs win on
// rows much fuller (see --sparse auto's calibration) — and B x capacity below 2^31. Every sparse
// buffer is reallocated (its contents are lost).
bool Model::grow_sparse(const sparse::SparseRows& overflowed) {
  auto& s = *sparse_;
  if (sparse::overflow_rows(overflowed) == 0) return false;
  const int64_t longest = sparse::longest_row(overflowed);
  const int64_t cap = std::min(width_, (longest + longest / 4 + 7) / 8 * 8);
  if (cap <= s.capacity || cap > std::max<int64_t>(2 * s.initial_capacity, width_ / 8) ||
      batch() * cap >= (int64_t(1) << 31))
    return false;
  allocate_sparse(cap);
  ++s.grown;
  // f's rows are gone. A growth for g_pi's rows happens after every product read them, and only
  // in a step that is not direct or whose auxiliary loss ran — whose variant wrote the dense f.
  s.direct = s.f_fits = false;
  return true;
}

bool Model::rows_fit(const sparse::SparseRows& rows) const {
  return sparse::overflow_rows(rows) == 0 &&
         (sparse_->limit >= double(rows.capacity()) || sparse::mean_count(rows) <= sparse_->limit);
}

void Model::compact() {
  auto& s = *sparse_;
  if (variant_->emits_rows()) {  // rows straight from the activation, or a dense step
    s.f_fits = s.direct;
  } else {
    sparse::compact_rows(buf_.f, s.f);
    if (grow_sparse(s.f)) sparse::compact_rows(buf_.f, s.f);
    s.f_fits = rows_fit(s.f);
  }
  if (s.f_fits) sparse::build_latent_index(s.f, s.f_index);
}

void Model::set_sparse_limit(double entries) { sparse_->limit = entries; }

void Model::fill_sparse_rows(int64_t entries, uint64_t seed) {
  auto& s = *sparse_;
  const int64_t B = batch(), L = std::min(entries, s.capacity);
  auto idx = Kokkos::create_mirror_view(Kokkos::HostSpace(), s.f.idx);
  auto val = Kokkos::create_mirror_view(Kokkos::HostSpace(), s.f.val);
  auto count = Kokkos::create_mirror_view(Kokkos::HostSpace(), s.f.count);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> value(0, 1);
  std::vector<sparse::Index> latents(width_);
  std::iota(latents.begin(), latents.end(), 0);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t j = 0; j < L; ++j)  // a partial Fisher-Yates shuffle: L distinct latents
      std::swap(latents[j], latents[j + static_cast<int64_t>(rng() % uint64_t(width_ - j))]);
    std::sort(latents.begin(), latents.begin() + L);
    for (int64_t j = 0; j < L; ++j) idx(b, j) = latents[j], val(b, j) = value(rng);
    count(b) = static_cast<sparse::Index>(L);
  }
  Kokkos::deep_copy(s.f.idx, idx);
  Kokkos::deep_copy(s.f.val, val);
  Kokkos::deep_copy(s.f.count, count);
  sparse::build_latent_index(s.f, s.f_index);
}

void Model::choose_products(bool sparse) {
  auto& s = *sparse_;
  s.f_fits = sparse;
  s.direct = sparse && variant_->emits_rows();
  s.limit = sparse ? 1e300 : -1;  // g_pi's rows (compacted by the encoder product) too
}

void Model::reset_sparse_counts() { sparse_->counts.clear(); }

bool Model::use_sparse(const char* product, bool fits) {
  if (!sparse_) return false;
  auto& c = sparse_->counts[product];
  ++(fits ? c.sparse : c.dense);
  return fits;
}

const std::map<std::string, Model::SparseCounts>& Model::sparse_counts() const {
  static const std::map<std::string, SparseCounts> none;
  return sparse_ ? sparse_->counts : none;
}

void Model::bias_gradients() {
  // The residual is replicated over the latent shards: only the lp leader adds its term.
  const auto g_b_dec = params_.grad_vector("b_dec");
  kernels::column_sums("saescale::bias_gradients::b_dec", buf_.e,
                       static_cast<real>(buf_.lp_leader() ? -2.0 / buf_.global_batch : 0.0),
                       g_b_dec, buf_.column_scratch);
  // x_in = x - b_dec: b_dec also reaches the loss through the encoder, g -= W_enc sum_b g_pi
  // (each shard's W_enc columns give part of it).
  if (variant_->traits().subtracts_decoder_bias) {
    gemv(Trans::N, -1, params_.matrix("W_enc"), buf_.g_pi_sum, 1, g_b_dec);
    buf_.comm->allreduce_sum("bias_gradient", comm::Group::lp, g_b_dec);
  }
}

LossParts Model::forward(const Hyper& h, Precision p) {
  LossParts loss;
  encode(p);
  loss.penalty = activate(h);
  if (sparse_) compact();
  decode(p);
  loss.auxiliary = auxiliary_forward(h, p);
  loss.mse = squared_error() / buf_.global_batch;
  return loss;
}

LossParts Model::forward_backward(const Hyper& h, Precision p) {
  const LossParts loss = forward(h, p);
  backward_decoder_gemm(h, p);
  backward_activation_gemm(p);
  auxiliary_backward(h, p);
  variant_backward(h);
  backward_encoder_gemm(p);
  bias_gradients();
  return loss;
}

LossParts Model::reduce_loss(const LossParts& local, const char* phase) const {
  const double once = buf_.lp_leader() ? 1.0 : 0.0;
  double parts[3] = {once * local.mse, local.penalty, once * local.auxiliary};
  buf_.comm->allreduce_host_sum(phase, comm::Group::world, parts, 3);
  return {parts[0], parts[1], parts[2]};
}

namespace {
// Weights in files act on raw activations: x_scaled = s x, so W_enc' = s W_enc, W_dec' = W_dec / s,
// b_dec' = b_dec / s; encoder biases and thresholds are unchanged.
void fold(std::vector<io::NamedTensor>& tensors, double s) {
  for (auto& t : tensors) {
    const double f = t.name == "W_enc" ? s : (t.name == "W_dec" || t.name == "b_dec") ? 1 / s : 1;
    if (f != 1)
      for (auto& v : t.values) v = static_cast<float>(v * f);
  }
}
}  // namespace

std::vector<io::NamedTensor> Model::gather_tensors(bool gradients) const {
  auto local = params_.to_tensors(gradients);
  auto& c = *buf_.comm;
  const int lp = c.size(comm::Group::lp);
  if (lp == 1) return local;
  const bool root = c.rank(comm::Group::lp) == 0;
  const auto& specs = params_.specs();
  for (size_t t = 0; t < local.size(); ++t) {
    const int axis = specs[t].latent_axis;
    if (axis < 0) continue;  // replicated: every shard holds all of it
    const int64_t n = static_cast<int64_t>(local[t].values.size());
    std::vector<float> blocks(root ? n * lp : 0);
    c.gather_host_to_root("weights", comm::Group::lp, local[t].values.data(), n, blocks.data());
    if (!root) continue;
    auto shape = local[t].shape;
    shape[axis] *= lp;
    std::vector<float> whole(blocks.size());
    if (axis == 0) {
      whole = std::move(blocks);  // row blocks, in shard order
    } else {                      // [rows, cols/lp] blocks side by side: interleave per row
      const int64_t rows = shape[0], cols = shape[1], part = cols / lp;
      for (int r = 0; r < lp; ++r)
        for (int64_t i = 0; i < rows; ++i)
          std::copy_n(blocks.data() + r * n + i * part, part, whole.data() + i * cols + r * part);
    }
    local[t].shape = shape;
    local[t].values = std::move(whole);
  }
  return local;
}

std::vector<io::NamedTensor> Model::export_tensors(double norm_scale) const {
  auto tensors = variant_->export_tensors(gather_tensors(false));
  fold(tensors, norm_scale);
  return tensors;
}

void Model::import_tensors(std::vector<io::NamedTensor> tensors, double norm_scale,
                           const std::string& source) {
  fold(tensors, 1 / norm_scale);
  tensors = variant_->import_tensors(std::move(tensors), source);
  // Check against the whole SAE's shapes, then keep this rank's shard of each tensor.
  const auto whole_specs = variant_->param_specs(d_, global_width_);
  std::vector<io::NamedTensor> shard;
  for (const auto& spec : whole_specs) {
    const io::NamedTensor* found = nullptr;
    for (const auto& t : tensors)
      if (t.name == spec.name) found = &t;
    if (!found) throw Error(source + ": missing tensor '" + spec.name + "'");
    if (found->shape != spec.shape)
      throw Error(source + ": tensor '" + spec.name + "' has shape " +
                  io::shape_string(found->shape) + " but this run needs " +
                  io::shape_string(spec.shape) + " (check --d-model/--width)");
    io::NamedTensor t{spec.name, spec.shape, {}};
    if (spec.latent_axis < 0) {
      t.values = found->values;
    } else {
      t.shape[spec.latent_axis] = width_;
      const int64_t rows = spec.shape[0], cols = spec.shape.size() > 1 ? spec.shape[1] : 1;
      const int64_t off = buf_.latent_offset;
      if (spec.latent_axis == 0) {
        t.values.assign(found->values.begin() + off * cols,
                        found->values.begin() + (off + width_) * cols);
      } else {
        for (int64_t i = 0; i < rows; ++i)
          t.values.insert(t.values.end(), found->values.begin() + i * cols + off,
                          found->values.begin() + i * cols + off + width_);
      }
    }
    shard.push_back(std::move(t));
  }
  params_.load(shard, source);
}

void save_weights(const std::string& dir, const Model& model, double norm_scale,
                  const nlohmann::json& hyper) {
  auto tensors = model.export_tensors(norm_scale);  // gathers the latent shards on lp rank 0
  if (model.comm().rank(comm::Group::lp) != 0) return;
  std::error_code ec;
  const bool created = !std::filesystem::exists(dir);
  std::filesystem::create_directories(dir, ec);
  if (ec) throw Error(dir + ": cannot create the weights directory: " + ec.message());
  // A failure (a full disk) leaves no empty or half-written weights directory behind.
  struct RemoveUnlessDone {
    const std::string& dir;
    bool created, done = false;
    ~RemoveUnlessDone() {
      std::error_code ignored;
      if (!done && created) std::filesystem::remove_all(dir, ignored);
    }
  } cleanup{dir, created};
  // The layout the file has (BatchTopK exports a JumpReLU SAE) decides what cfg.json says.
  const VariantTraits& exported = variant_traits(model.variant().traits().exported_as);
  const nlohmann::json cfg = {
      {"architecture", exported.architecture},
      {"d_in", model.d()},
      {"d_sae", model.global_width()},
      {"dtype", "float32"},
      {"device", "cpu"},
      {"apply_b_dec_to_input", exported.subtracts_decoder_bias},
      {"normalize_activations", "none"},  // the scalar is folded into the weights
      {"saescale",
       {{"variant", exported.name},
        {"trained_as", model.variant().name()},
        {"norm_scale_folded", norm_scale},
        {"hyper_parameters", hyper}}}};
  io::write_safetensors(dir + "/sae_weights.safetensors", tensors, {{"format", "pt"}});
  io::write_text_atomic(dir + "/cfg.json", cfg.dump(2) + "\n");
  cleanup.done = true;
}

std::vector<io::NamedTensor> read_weights(const std::string& path, nlohmann::json* cfg) {
  namespace fs = std::filesystem;
  const bool is_dir = fs::is_directory(path);
  const std::string file = is_dir ? path + "/sae_weights.safetensors" : path;
  const std::string cfg_path = (fs::path(file).parent_path() / "cfg.json").string();
  if (cfg) {
    *cfg = nlohmann::json::object();
    if (fs::exists(cfg_path)) {
      std::ifstream in(cfg_path);
      try {
        *cfg = nlohmann::json::parse(in);
      } catch (const std::exception& e) {
        throw Error(cfg_path + ": invalid JSON: " + e.what());
      }
    }
  }
  auto tensors = io::read_safetensors(file);
  for (const auto& t : tensors)
    for (size_t i = 0; i < t.values.size(); ++i)
      if (!std::isfinite(t.values[i]))
        throw Error(file + ": tensor '" + t.name + "' holds a non-finite value at index " +
                    std::to_string(i) + ": these weights cannot be used");
  return tensors;
}

}  // namespace saescale
