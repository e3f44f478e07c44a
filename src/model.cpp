#include "model.hpp"

#include <cmath>
#include <filesystem>
#include <fstream>

#include "data/rng.hpp"
#include "error.hpp"
#include "io/atomic_write.hpp"
#include "kernels/reduce.hpp"

namespace saescale {

Model::Model(const std::string& variant, int64_t d, int64_t width)
    : variant_(make_variant(variant)),
      d_(d),
      width_(width),
      params_(variant_->param_specs(d, width)) {
  if (d <= 0) throw Error("--d-model must be positive");
  if (width <= 0) throw Error("--width must be positive");
}

void Model::initialize(const Hyper& h, uint64_t seed) {
  // Kaiming-uniform draw (bound sqrt(6/fan_in)), then each row rescaled to the target norm.
  auto host = Kokkos::create_mirror_view(Kokkos::HostSpace(), params_.values());
  Kokkos::deep_copy(host, 0.f);
  Kokkos::deep_copy(params_.values(), host);
  HostMatrix w_dec("saescale::init::W_dec", width_, d_);
  const double bound = std::sqrt(6.0 / d_);
  for (int64_t i = 0; i < width_; ++i) {
    Rng rng(seed, 0xdec, i);
    double norm2 = 0;
    for (int64_t c = 0; c < d_; ++c) {
      w_dec(i, c) = static_cast<float>(bound * (2 * rng.uniform() - 1));
      norm2 += double(w_dec(i, c)) * w_dec(i, c);
    }
    const float s = static_cast<float>(h.decoder_init_norm / std::sqrt(norm2));
    for (int64_t c = 0; c < d_; ++c) w_dec(i, c) *= s;
  }
  HostMatrix w_enc("saescale::init::W_enc", d_, width_);
  for (int64_t i = 0; i < width_; ++i)
    for (int64_t c = 0; c < d_; ++c) w_enc(c, i) = w_dec(i, c);
  Kokkos::deep_copy(params_.matrix("W_dec"), w_dec);
  Kokkos::deep_copy(params_.matrix("W_enc"), w_enc);
  variant_->initialize(params_, h);
}

void Model::allocate(int64_t batch) {
  auto noinit = [](const char* label) {
    return Kokkos::view_alloc(Kokkos::WithoutInitializing, std::string(label));
  };
  buf_.x = Matrix(noinit("saescale::buffers::x"), batch, d_);
  buf_.x_in = variant_->subtracts_decoder_bias()
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
  buf_.global_batch = batch;
  variant_->allocate(batch, d_, width_);
}

void Model::encode(Precision p) {
  if (variant_->subtracts_decoder_bias())
    kernels::subtract_row("saescale::encode::subtract_b_dec", buf_.x, params_.vector("b_dec"),
                          buf_.x_in);
  gemm(Trans::N, Trans::N, 1, buf_.x_in, params_.matrix("W_enc"), 0, buf_.pi, p);
}

double Model::activate(const Hyper& h) { return variant_->forward(params_, buf_, h); }

void Model::decode(Precision p) {
  kernels::subtract_row("saescale::decode::residual_init", buf_.x, params_.vector("b_dec"), buf_.e);
  gemm(Trans::N, Trans::N, -1, buf_.f, params_.matrix("W_dec"), 1, buf_.e, p);
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
void Model::backward_decoder_gemm(Precision p) {
  gemm(Trans::T, Trans::N, static_cast<real>(-2.0 / buf_.global_batch), buf_.f, buf_.e, 0,
       params_.grad_matrix("W_dec"), p);
}

void Model::backward_activation_gemm(Precision p) {
  gemm(Trans::N, Trans::T, static_cast<real>(-2.0 / buf_.global_batch), buf_.e,
       params_.matrix("W_dec"), 0, buf_.g, p);
}

void Model::variant_backward(const Hyper& h) { variant_->backward(params_, buf_, h); }

void Model::backward_encoder_gemm(Precision p) {
  gemm(Trans::T, Trans::N, 1, buf_.x_in, buf_.g, 0, params_.grad_matrix("W_enc"), p);
}

void Model::bias_gradients(const Hyper& h) {
  kernels::column_sums("saescale::bias_gradients::b_dec", buf_.e,
                       static_cast<real>(-2.0 / buf_.global_batch), params_.grad_vector("b_dec"),
                       buf_.column_scratch);
  // x_in = x - b_dec: b_dec also reaches the loss through the encoder, g -= W_enc sum_b g_pi.
  if (variant_->subtracts_decoder_bias())
    gemv(Trans::N, -1, params_.matrix("W_enc"), buf_.g_pi_sum, 1, params_.grad_vector("b_dec"));
  variant_->decoder_gradient_extra(params_, buf_, h);
}

LossParts Model::forward(const Hyper& h, Precision p) {
  LossParts loss;
  encode(p);
  loss.penalty = activate(h);
  decode(p);
  loss.auxiliary = auxiliary_forward(h, p);
  loss.mse = squared_error() / buf_.global_batch;
  return loss;
}

LossParts Model::forward_backward(const Hyper& h, Precision p) {
  const LossParts loss = forward(h, p);
  backward_decoder_gemm(p);
  backward_activation_gemm(p);
  auxiliary_backward(h, p);
  variant_backward(h);
  backward_encoder_gemm(p);
  bias_gradients(h);
  return loss;
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

std::vector<io::NamedTensor> Model::export_tensors(double norm_scale) const {
  auto tensors = variant_->export_tensors(params_);
  fold(tensors, norm_scale);
  return tensors;
}

void Model::import_tensors(std::vector<io::NamedTensor> tensors, double norm_scale,
                           const std::string& source) {
  fold(tensors, 1 / norm_scale);
  variant_->import_tensors(params_, std::move(tensors), source);
}

void save_weights(const std::string& dir, const Model& model, double norm_scale,
                  const nlohmann::json& hyper) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) throw Error(dir + ": cannot create the weights directory: " + ec.message());
  // The layout the file has (BatchTopK exports a JumpReLU SAE) decides what cfg.json says.
  const auto exported_ptr = make_variant(model.variant().exported_variant());
  const Variant& exported = *exported_ptr;
  const nlohmann::json cfg = {
      {"architecture", exported.architecture()},
      {"d_in", model.d()},
      {"d_sae", model.width()},
      {"dtype", "float32"},
      {"device", "cpu"},
      {"apply_b_dec_to_input", exported.subtracts_decoder_bias()},
      {"normalize_activations", "none"},  // the scalar is folded into the weights
      {"saescale",
       {{"variant", exported.name()},
        {"trained_as", model.variant().name()},
        {"norm_scale_folded", norm_scale},
        {"hyper_parameters", hyper}}}};
  io::write_safetensors(dir + "/sae_weights.safetensors", model.export_tensors(norm_scale),
                        {{"format", "pt"}});
  io::write_text_atomic(dir + "/cfg.json", cfg.dump(2) + "\n");
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
  return io::read_safetensors(file);
}

}  // namespace saescale
