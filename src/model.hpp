// An SAE of one variant: its parameters, the buffers of one batch, and the pieces of the training
// step that every variant shares (GEMMs, loss, bias gradients). Trainer::step() strings them
// together; `grad` and `eval` use the same pieces, so what is validated is what is timed.
#pragma once
#include <memory>
#include <string>

#include "kernels/gemm.hpp"
#include "variant.hpp"

namespace saescale {

struct LossParts {
  double mse = 0;        // (1/B) sum ||e||^2
  double penalty = 0;    // sparsity term
  double auxiliary = 0;  // Gated's aux reconstruction, TopK's alpha * AuxK
  double total() const { return mse + penalty + auxiliary; }
};

class Model {
 public:
  Model(const std::string& variant, int64_t d, int64_t width);

  Variant& variant() { return *variant_; }
  const Variant& variant() const { return *variant_; }
  ParamStore& params() { return params_; }
  const ParamStore& params() const { return params_; }
  StepBuffers& buffers() { return buf_; }
  int64_t d() const { return d_; }
  int64_t width() const { return width_; }
  int64_t batch() const { return static_cast<int64_t>(buf_.x.extent(0)); }

  // Decoder rows: random directions at `decoder_init_norm`; W_enc = W_dec^T; biases zero.
  void initialize(const Hyper& h, uint64_t seed);
  void allocate(int64_t batch);

  // ---- the pieces of a step, in order ------------------------------------------------------
  void encode(Precision p);                               // x_in = x [- b_dec];  pi = x_in W_enc
  double activate(const Hyper& h);                        // f, stats; returns the penalty term
  void decode(Precision p);                               // e = x - (f W_dec + b_dec)
  double auxiliary_forward(const Hyper& h, Precision p);  // the variant's auxiliary loss term
  double squared_error() const;                           // sum ||e||^2 over the local batch
  void backward_decoder_gemm(Precision p);     // g_W_dec = f^T g_xhat,  g_xhat = -2 e / B
  void backward_activation_gemm(Precision p);  // g_f = g_xhat W_dec^T
  void auxiliary_backward(const Hyper& h, Precision p);
  void variant_backward(const Hyper& h);    // g_pi, per-latent gradients
  void backward_encoder_gemm(Precision p);  // g_W_enc = x_in^T g_pi
  void bias_gradients(const Hyper& h);      // g_b_dec (also through x_in) + variant's decoder terms

  // Loss and raw gradients of the batch in buffers().x (no projection/clipping/optimiser).
  LossParts forward_backward(const Hyper& h, Precision p);
  LossParts forward(const Hyper& h, Precision p);

  // Files: SAELens tensors with the normalisation scalar folded in (sae-variants.md §0).
  std::vector<io::NamedTensor> export_tensors(double norm_scale) const;
  void import_tensors(std::vector<io::NamedTensor> tensors, double norm_scale,
                      const std::string& source);

 private:
  std::unique_ptr<Variant> variant_;
  int64_t d_, width_;
  ParamStore params_;
  StepBuffers buf_;
};

// Weights directory: DIR/sae_weights.safetensors + DIR/cfg.json (what SAELens loads).
void save_weights(const std::string& dir, const Model& model, double norm_scale,
                  const nlohmann::json& hyper);
// Accepts a directory as above or a .safetensors path (cfg.json beside it is optional).
std::vector<io::NamedTensor> read_weights(const std::string& path, nlohmann::json* cfg);

}  // namespace saescale
