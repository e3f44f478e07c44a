// An SAE of one variant: its parameters, the buffers of one batch, and the training step's phases
// listed once (Model::forward, Model::backward). Trainer::step times them; `grad`, `eval` and the
// tests run the same listing untimed, so what is validated is what is timed.
#pragma once
#include <map>
#include <memory>
#include <optional>
#include <string>

#include <functional>

#include "kernels/gemm.hpp"
#include "products.hpp"
#include "variant.hpp"

namespace saescale {

// The loss of a batch, L = mse + sparsity + auxiliary (LossParts::total, the one place it is
// written): mse = (1/B) sum_b ||x_b - x_hat_b||^2; sparsity = the variant's penalty with its
// coefficient lambda (Variant::forward); auxiliary = Gated's frozen-decoder reconstruction or
// alpha times TopK's AuxK loss (Variant::auxiliary_forward).
struct LossParts {
  double mse = 0;
  double penalty = 0;
  double auxiliary = 0;
  double total() const { return mse + penalty + auxiliary; }
};

// Runs one named phase of the step: timed (Trainer::step, PhaseTimers) or as is (untimed).
using PhaseRunner = std::function<void(const char* phase, const std::function<void()>& work)>;
void untimed(const char* phase, const std::function<void()>& work);

class Model {
 public:
  // `width` is the global number of latents; under latent parallelism (comm's lp group) this rank
  // holds width / lp of them. No communicator: one process.
  Model(const std::string& variant, int64_t d, int64_t width, comm::Communicator* comm = nullptr);

  Variant& variant() { return *variant_; }
  const Variant& variant() const { return *variant_; }
  ParamStore& params() { return params_; }
  const ParamStore& params() const { return params_; }
  StepBuffers& buffers() { return buf_; }
  int64_t d() const { return d_; }
  int64_t width() const { return width_; }                // latents on this rank
  int64_t global_width() const { return global_width_; }  // latents of the whole SAE
  int64_t latent_offset() const { return buf_.latent_offset; }
  int64_t batch() const { return static_cast<int64_t>(buf_.x.extent(0)); }  // rows on this rank
  comm::Communicator& comm() const { return *buf_.comm; }

  // Decoder rows: random directions at `decoder_init_norm` (drawn per global latent, so any grid
  // starts from the same SAE); W_enc = W_dec^T; biases zero.
  void initialize(const Hyper& h, uint64_t seed);
  // The variant's own start (JumpReLU's threshold) and the encoder bias (--encoder-bias-init).
  void initialize_sparsity(const Hyper& h);
  // The pre-activation t that `l0` latents exceed per token on average on the batch in
  // buffers().x at the current weights: the (l0 B)-th largest of pi = x_in W_enc over the global
  // batch, 0 if fewer are positive (collective over every rank; overwrites pi and f).
  double pre_activation_quantile(int64_t l0, kernels::TopkAlgo algo);
  // Buffers for `batch` rows on this rank, which are rows [row_offset, +batch) of global_batch.
  void allocate(int64_t batch, int64_t global_batch = 0, int64_t row_offset = 0);

  // ---- the step: Model::forward and Model::backward list its phases, in order -------------
  // The forward half: encode, activate (compact), decode, the auxiliary loss, the MSE. Returns
  // this rank's loss parts (sum them with reduce_loss).
  LossParts forward(const Hyper& h, Precision p, const PhaseRunner& run = untimed);
  // The backward half: the decoder side (W_dec's gradient final, then `decoder_done`, where the
  // trainer starts its all-reduce), then the encoder side. Gradients are complete over the latent
  // shards but not yet summed over data-parallel ranks.
  void backward(const Hyper& h, Precision p, const PhaseRunner& run = untimed,
                const std::function<void()>& decoder_done = {});
  // Both halves, untimed (grad, tests).
  LossParts forward_backward(const Hyper& h, Precision p);
  // The global loss from every rank's parts (collective over all ranks): the MSE and auxiliary
  // terms are replicated over lp and counted once, the penalty is summed over every shard.
  LossParts reduce_loss(const LossParts& local, const char* phase) const;

  // The products with f: GEMMs, or with --sparse on the sparse path (products.hpp).
  Products& products() { return *products_; }
  void enable_sparse(int64_t capacity);
  SparseProducts* sparse() const { return sparse_; }  // null with --sparse off
  // buffers().f as the dense f (a direct sparse step never wrote it): for readers outside the step.
  void materialize_f() { products_->materialize_f(buf_); }

  // Files: SAELens tensors with the normalisation scalar folded in (docs/variants.md, Shared
  // pieces). Under latent parallelism export gathers the shards (collective over lp; complete on lp
  // rank 0) and import takes this rank's shard of whole tensors.
  std::vector<io::NamedTensor> export_tensors(double norm_scale) const;
  // `applies_b_dec`: whether the file's encoder reads x - b_dec (SAELens' apply_b_dec_to_input);
  // when it differs from this variant's, b_dec W_enc moves into the encoder biases (exact).
  void import_tensors(std::vector<io::NamedTensor> tensors, double norm_scale,
                      const std::string& source, std::optional<bool> applies_b_dec = {});
  // Whole tensors (values or gradients) from the shards, in file order (collective over lp).
  std::vector<io::NamedTensor> gather_tensors(bool gradients) const;

 private:
  void encode(Precision p);      // x_in = x [- b_dec];  pi = x_in W_enc
  void decode(Precision p);      // e = x - (f W_dec + b_dec), summed over the latent shards
  double squared_error() const;  // sum ||e||^2 over the local batch
  void bias_gradients();         // g_b_dec (also through x_in)

  std::unique_ptr<Variant> variant_;
  std::unique_ptr<comm::Communicator> own_comm_;
  int64_t d_, global_width_, width_;
  ParamStore params_;
  StepBuffers buf_;
  std::unique_ptr<Products> products_ = std::make_unique<Products>();
  SparseProducts* sparse_ = nullptr;  // products_, when sparse
};

// Weights directory: DIR/sae_weights.safetensors + DIR/cfg.json (what SAELens loads). Collective
// over the latent shards (lp); their rank 0 writes.
// `k`: TopK's, written as SAELens' `k` (what its TopK SAE selects at inference).
void save_weights(const std::string& dir, const Model& model, double norm_scale,
                  const nlohmann::json& hyper, int64_t k);

// A weights directory (or a .safetensors path with an optional cfg.json beside it), written by
// saescale or by SAELens, and what its cfg.json says about the SAE.
struct SavedSae {
  std::vector<io::NamedTensor> tensors;
  std::string variant;                // the layout (saescale's entry, else SAELens' architecture)
  std::optional<int64_t> k;           // TopK's k
  std::optional<bool> applies_b_dec;  // apply_b_dec_to_input
  nlohmann::json cfg;                 // cfg.json as read (empty without one)
};
SavedSae read_saved_sae(const std::string& path, bool with_tensors = true);

// The options to run a saved SAE with: its layout's variant (a --variant given that differs is an
// error) and its k unless --k was given.
Config with_saved_sae(Config cfg, const SavedSae& saved);

}  // namespace saescale
