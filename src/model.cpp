#include "model.hpp"

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "comm/selection.hpp"
#include "data/rng.hpp"
#include "error.hpp"
#include "io/atomic_write.hpp"
#include "io/mapped_file.hpp"
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

void untimed(const char*, const std::function<void()>& work) { work(); }

// ---- the step ---------------------------------------------------------------------------------

LossParts Model::forward(const Hyper& h, Precision p, const PhaseRunner& run) {
  LossParts loss;
  run("encode_gemm", [&] { encode(p); });
  run("activation", [&] { loss.penalty = products_->activate(*variant_, params_, buf_, h); });
  if (sparse_) run("sparse_compact", [&] { sparse_->compact(buf_); });
  run("decode_gemm", [&] { decode(p); });
  if (variant_->has_auxiliary_loss())
    run("auxiliary_forward",
        [&] { loss.auxiliary = variant_->auxiliary_forward(params_, buf_, h, p); });
  run("loss", [&] { loss.mse = squared_error() / buf_.global_batch; });
  return loss;
}

// g_xhat = -2 e / B is never materialised: its scale rides in the products' alpha. W_dec's
// gradient is final (the variant's decoder terms and AuxK included) before the encoder side
// starts, so its data-parallel all-reduce overlaps the rest.
void Model::backward(const Hyper& h, Precision p, const PhaseRunner& run,
                     const std::function<void()>& decoder_done) {
  const real g_xhat_scale = static_cast<real>(-2.0 / buf_.global_batch);
  run("backward_decoder_gemm", [&] {
    products_->decoder_gradient(params_, buf_, g_xhat_scale, p);
    variant_->decoder_gradient_extra(params_, buf_, h);
  });
  run("backward_activation_gemm",
      [&] { products_->activation_gradient(params_, buf_, g_xhat_scale, p); });
  if (variant_->has_auxiliary_loss())
    run("auxiliary_backward", [&] { variant_->auxiliary_backward(params_, buf_, h, p); });
  if (decoder_done) decoder_done();
  run("variant_backward", [&] { products_->variant_backward(*variant_, params_, buf_, h); });
  run("backward_encoder_gemm", [&] { products_->encoder_gradient(params_, buf_, p); });
  run("bias_gradients", [&] { bias_gradients(); });
}

LossParts Model::forward_backward(const Hyper& h, Precision p) {
  const LossParts loss = forward(h, p);
  backward(h, p);
  return loss;
}

void Model::encode(Precision p) {
  if (variant_->traits().subtracts_decoder_bias)
    kernels::subtract_row("saescale::encode::subtract_b_dec", buf_.x, params_.vector("b_dec"),
                          buf_.x_in);
  products_->encode(params_, buf_, p);
}

void Model::decode(Precision p) {
  start_residual(buf_, params_, buf_.e);
  products_->decode(params_, buf_, p);
  buf_.comm->allreduce_sum("decode", comm::Group::lp, Vector(buf_.e.data(), buf_.e.size()));
}

double Model::squared_error() const {
  return kernels::sum_squares("saescale::loss::squared_error", buf_.e);
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

void Model::enable_sparse(int64_t capacity) {
  auto sparse = std::make_unique<SparseProducts>(*variant_, batch(), width_, capacity);
  sparse_ = sparse.get();
  products_ = std::move(sparse);
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

io::NamedTensor& tensor_named(std::vector<io::NamedTensor>& tensors, const std::string& name,
                              const std::string& source) {
  for (auto& t : tensors)
    if (t.name == name) return t;
  throw Error(source + ": missing tensor '" + name + "'");
}

// An encoder that reads x - b_dec as one that reads x (direction -1), or the reverse (+1):
// (x - b_dec) W_enc = x W_enc - b_dec W_enc, so v = b_dec W_enc moves into the encoder biases
// (Gated: into b_gate, and through exp(r_mag) into b_mag). In double, then rounded once.
void move_decoder_bias_into_encoder(std::vector<io::NamedTensor>& tensors, double direction,
                                    const std::string& source) {
  const auto& W_enc = tensor_named(tensors, "W_enc", source);
  const auto& b_dec = tensor_named(tensors, "b_dec", source);
  if (W_enc.shape.size() != 2 || b_dec.shape.size() != 1 || b_dec.shape[0] != W_enc.shape[0])
    throw Error(source + ": tensors 'W_enc' and 'b_dec' have shapes that do not match");
  const int64_t d = W_enc.shape[0], M = W_enc.shape[1];
  std::vector<double> v(M, 0.0);
  for (int64_t c = 0; c < d; ++c)
    for (int64_t i = 0; i < M; ++i) v[i] += double(b_dec.values[c]) * W_enc.values[c * M + i];
  const auto shift = [&](const char* name, const io::NamedTensor* scale) {
    auto& bias = tensor_named(tensors, name, source);
    if (static_cast<int64_t>(bias.values.size()) != M)
      throw Error(source + ": tensor '" + name + "' does not have d_sae entries");
    for (int64_t i = 0; i < M; ++i)
      bias.values[i] = static_cast<float>(
          bias.values[i] + direction * v[i] * (scale ? std::exp(double(scale->values[i])) : 1.0));
  };
  const bool gated = std::any_of(tensors.begin(), tensors.end(),
                                 [](const io::NamedTensor& t) { return t.name == "b_gate"; });
  if (gated) {
    shift("b_gate", nullptr);
    shift("b_mag", &tensor_named(tensors, "r_mag", source));
  } else {
    shift("b_enc", nullptr);
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
                           const std::string& source, std::optional<bool> applies_b_dec) {
  const bool subtracts = variant_->traits().subtracts_decoder_bias;
  if (applies_b_dec && *applies_b_dec != subtracts)
    move_decoder_bias_into_encoder(tensors, subtracts ? 1.0 : -1.0, source);
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
                  const nlohmann::json& hyper, int64_t k) {
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
  // SAELens' SAEConfig keys (its from_dict ignores the "saescale" entry); TopK adds its k.
  nlohmann::json cfg = {{"architecture", exported.architecture},
                        {"d_in", model.d()},
                        {"d_sae", model.global_width()},
                        {"dtype", "float32"},
                        {"device", "cpu"},
                        {"apply_b_dec_to_input", exported.subtracts_decoder_bias},
                        {"normalize_activations", "none"},  // the scalar is folded into the weights
                        {"reshape_activations", "none"},
                        {"metadata", nlohmann::json::object()},
                        {"saescale",
                         {{"variant", exported.name},
                          {"trained_as", model.variant().name()},
                          {"norm_scale_folded", norm_scale},
                          {"hyper_parameters", hyper}}}};
  if (exported.selection == VariantTraits::Selection::row) {
    cfg["k"] = k;
    cfg["rescale_acts_by_decoder_norm"] = false;
  }
  io::write_safetensors(dir + "/sae_weights.safetensors", tensors, {{"format", "pt"}});
  io::write_text_atomic(dir + "/cfg.json", cfg.dump(2) + "\n");
  cleanup.done = true;
}

SavedSae read_saved_sae(const std::string& path, bool with_tensors) {
  namespace fs = std::filesystem;
  const bool is_dir = fs::is_directory(path);
  const std::string file = is_dir ? path + "/sae_weights.safetensors" : path;
  const std::string cfg_path = (fs::path(file).parent_path() / "cfg.json").string();
  SavedSae saved;
  saved.cfg = nlohmann::json::object();
  if (fs::exists(cfg_path)) {
    const std::string text = io::read_whole_file(cfg_path);  // never blocks on a FIFO
    try {
      saved.cfg = nlohmann::json::parse(text);
    } catch (const std::exception& e) {
      throw Error(cfg_path + ": invalid JSON: " + e.what());
    }
    if (!saved.cfg.is_object()) throw Error(cfg_path + ": not a JSON object");
  }
  const nlohmann::json& cfg = saved.cfg;
  try {
    if (cfg.contains("saescale")) {
      saved.variant = cfg["saescale"].value("variant", "");
    } else if (const std::string arch = cfg.value("architecture", ""); !arch.empty()) {
      saved.variant = variant_for_architecture(arch);
      if (saved.variant.empty())
        throw Error(cfg_path + ": architecture '" + arch +
                    "' is not one saescale reads (standard, jumprelu, gated, topk)");
    }
    if (cfg.contains("k")) {
      if (!cfg["k"].is_number_integer() || cfg["k"].get<int64_t>() < 1)
        throw Error(cfg_path + ": k must be a positive integer (got " + cfg["k"].dump() + ")");
      saved.k = cfg["k"].get<int64_t>();
    }
    if (cfg.contains("apply_b_dec_to_input")) {
      if (!cfg["apply_b_dec_to_input"].is_boolean())
        throw Error(cfg_path + ": apply_b_dec_to_input must be true or false");
      saved.applies_b_dec = cfg["apply_b_dec_to_input"].get<bool>();
    }
    if (cfg.value("rescale_acts_by_decoder_norm", false))
      throw Error(cfg_path +
                  ": rescale_acts_by_decoder_norm is not supported (saescale's TopK selects the "
                  "pre-activations themselves)");
    if (const std::string norm = cfg.value("normalize_activations", "none"); norm != "none")
      throw Error(cfg_path + ": normalize_activations '" + norm +
                  "' is not supported: saescale reads SAEs that act on raw activations ('none')");
  } catch (const nlohmann::json::exception& e) {
    throw Error(cfg_path + ": unexpected content: " + e.what());
  }
  if (!with_tensors) return saved;
  saved.tensors = io::read_safetensors(file);
  for (const auto& t : saved.tensors)
    for (size_t i = 0; i < t.values.size(); ++i)
      if (!std::isfinite(t.values[i]))
        throw Error(file + ": tensor '" + t.name + "' holds a non-finite value at index " +
                    std::to_string(i) + ": these weights cannot be used");
  return saved;
}

Config with_saved_sae(Config cfg, const SavedSae& saved) {
  if (!saved.variant.empty() && saved.variant != cfg.variant) {
    if (cfg.was_given("variant"))
      throw Error(cfg.init + ": the weights are a " + saved.variant +
                  " SAE (cfg.json) but --variant is " + cfg.variant + ": use --variant " +
                  saved.variant + " or leave it out");
    cfg.variant = saved.variant;
  }
  if (saved.k && !cfg.was_given("k")) cfg.k = *saved.k;
  return cfg;
}

}  // namespace saescale
