// An SAE of one variant: its parameters, the buffers of one batch, and the pieces of the training
// step that every variant shares (GEMMs, loss, bias gradients). Trainer::step() strings them
// together; `grad` and `eval` use the same pieces, so what is validated is what is timed.
#pragma once
#include <map>
#include <memory>
#include <string>

#include "kernels/gemm.hpp"
#include "kernels/sparse.hpp"
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

  // ---- the pieces of a step, in order ------------------------------------------------------
  void encode(Precision p);                                 // x_in = x [- b_dec];  pi = x_in W_enc
  double activate(const Hyper& h);                          // f, stats; returns the penalty term
  void decode(Precision p);                                 // e = x - (f W_dec + b_dec)
  double auxiliary_forward(const Hyper& h, Precision p);    // the variant's auxiliary loss term
  double squared_error() const;                             // sum ||e||^2 over the local batch
  void backward_decoder_gemm(const Hyper& h, Precision p);  // g_W_dec = f^T g_xhat (+ variant's)
  void backward_activation_gemm(Precision p);               // g_f = g_xhat W_dec^T
  void auxiliary_backward(const Hyper& h, Precision p);
  void variant_backward(const Hyper& h);    // g_pi, per-latent gradients
  void backward_encoder_gemm(Precision p);  // g_W_enc = x_in^T g_pi
  void bias_gradients();                    // g_b_dec (also through x_in)

  // ---- the sparse-aware path (--sparse on) ---------------------------------------------------
  // f as rows of at most `capacity` entries per row: decode and the three backward products
  // gather and scatter over them (kernels/sparse.hpp, O(B L0 d)) instead of running GEMMs
  // (O(B M d)). A variant that emits rows (Variant::forward_rows: JumpReLU) writes them in its
  // activation, without the dense f, and its backward runs over them (a direct step); for the
  // others compact() gathers the dense f's non-zeros after the activation. A product whose rows
  // overflow the capacity grows them (Model::grow_sparse); beyond its bound, or above the --sparse
  // auto limit, the product runs as the dense GEMM this step (for a direct step: the whole step):
  // the results count how many products ran each way.
  void enable_sparse(int64_t capacity);
  // --sparse auto: a product also runs dense when its rows average more than `entries` per row
  // (the calibrated crossover, Trainer::calibrate_sparse).
  void set_sparse_limit(double entries);
  // Calibration: f's sparse rows := `entries` random distinct latents per row (random values),
  // and the next products run on them (sparse) or as the GEMMs (the dense fallback), whatever the
  // rows hold; reset_sparse_counts() then forgets what the calibration ran.
  void fill_sparse_rows(int64_t entries, uint64_t seed);
  void choose_products(bool sparse);
  void reset_sparse_counts();
  bool sparse() const { return sparse_ != nullptr; }
  void compact();
  // buffers().f as the dense f (a direct step never wrote it): for readers outside the step.
  void materialize_f();
  struct SparseCounts {
    int64_t sparse = 0, dense = 0;
  };
  // Per product (decode, decoder_gradient, activation_gradient, encoder_gradient).
  const std::map<std::string, SparseCounts>& sparse_counts() const;
  // The rows' capacity now (it grows when a row needs more, up to width / 8 or twice the initial
  // capacity) and how many times it grew.
  int64_t sparse_capacity() const { return sparse_ ? sparse_->capacity : 0; }
  int64_t sparse_growths() const { return sparse_ ? sparse_->grown : 0; }

  // Loss and raw gradients of the batch in buffers().x (no projection/clipping/optimiser).
  // Loss parts are this rank's (sum them with reduce_loss); gradients are complete over the latent
  // shards but not yet summed over data-parallel ranks.
  LossParts forward_backward(const Hyper& h, Precision p);
  LossParts forward(const Hyper& h, Precision p);
  // The global loss from every rank's parts (collective over all ranks): the MSE and auxiliary
  // terms are replicated over lp and counted once, the penalty is summed over every shard.
  LossParts reduce_loss(const LossParts& local, const char* phase) const;

  // Files: SAELens tensors with the normalisation scalar folded in (sae-variants.md §0). Under
  // latent parallelism export gathers the shards (collective over lp; complete on lp rank 0) and
  // import takes this rank's shard of whole tensors.
  std::vector<io::NamedTensor> export_tensors(double norm_scale) const;
  void import_tensors(std::vector<io::NamedTensor> tensors, double norm_scale,
                      const std::string& source);
  // Whole tensors (values or gradients) from the shards, in file order (collective over lp).
  std::vector<io::NamedTensor> gather_tensors(bool gradients) const;

 private:
  std::unique_ptr<Variant> variant_;
  std::unique_ptr<comm::Communicator> own_comm_;
  int64_t d_, global_width_, width_;
  ParamStore params_;
  StepBuffers buf_;

  struct SparseState {
    int64_t capacity = 0, initial_capacity = 0;
    int64_t grown = 0;  // times the rows grew to fit a longer row
    // f's entries (with a variant that emits rows: every entry its backward reads, some with
    // f = 0); g_pi's, compacted from the dense g.
    sparse::SparseRows f, g_pi;
    sparse::LatentIndex f_index, g_pi_index;
    Matrix g_f_values, g_pi_values;  // g_f and (direct steps) g_pi at f's entries
    bool f_fits = false;             // this step's rows within capacity and limit
    // A direct step: the rows came from Variant::forward_rows and the backward runs over them
    // (the dense f and g are not written). After a miss, `wait` steps run dense before a retry.
    bool direct = false;
    int64_t wait = 0, backoff = 0;
    double limit = 1e300;  // --sparse auto: most mean entries per row
    std::map<std::string, SparseCounts> counts;
  };
  std::unique_ptr<SparseState> sparse_;
  bool use_sparse(const char* product, bool fits);      // counts the product's path
  bool rows_fit(const sparse::SparseRows& rows) const;  // within the capacity and the limit
  void allocate_sparse(int64_t capacity);
  // This step's backward runs over the rows (Variant::backward_rows): a direct step whose
  // auxiliary loss (if any) keeps its gradient at the rows' entries.
  bool rows_backward() const;
  bool grow_sparse(const sparse::SparseRows& overflowed);
};

// Weights directory: DIR/sae_weights.safetensors + DIR/cfg.json (what SAELens loads). Collective
// over the latent shards (lp); their rank 0 writes.
void save_weights(const std::string& dir, const Model& model, double norm_scale,
                  const nlohmann::json& hyper);
// Accepts a directory as above or a .safetensors path (cfg.json beside it is optional).
std::vector<io::NamedTensor> read_weights(const std::string& path, nlohmann::json* cfg);

}  // namespace saescale
