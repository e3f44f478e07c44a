// The Variant interface: what a variant computes differently, and nothing else. Its static facts
// (how it encodes, its decoder constraint, selection, auxiliary loss, defaults, parameters) are
// its record in variants/registry.cpp (variants/traits.hpp). The GEMMs, the optimiser, schedules,
// statistics and timing are shared (model.cpp, products.cpp, trainer.cpp). Adding a variant: one
// file in src/variants/, its rule in kernels/activations/ (run by drivers.hpp), its record in
// variants/registry.cpp and its factory in variants/factory.cpp (docs/variants.md).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "comm/communicator.hpp"
#include "config.hpp"
#include "kernels/activations/latent_stats.hpp"
#include "kernels/gemm.hpp"
#include "kernels/select/topk.hpp"
#include "kernels/sparse.hpp"
#include "params.hpp"
#include "variants/traits.hpp"

namespace saescale {

// Buffers of one step, owned by the trainer and shared with the variant.
struct StepBuffers {
  Matrix x;     // [B, d] normalised input
  Matrix x_in;  // [B, d] encoder input: x, or x - b_dec for variants that subtract it
  Matrix pi;    // [B, M] x_in W_enc (no bias)
  Matrix f;     // [B, M] activations
  Matrix g;     // [B, M] g_f on entry to backward, g_pi on exit
  Matrix e;     // [B, d] residual x - x_hat
  LatentStats stats;
  Vector g_pi_sum;   // [M] sum_b g_pi, filled by variant_backward (b_dec's gradient through x_in)
  CountVector dead;  // [M] 1 for latents currently dead (AuxK), maintained by the trainer
  SlotView<double> column_scratch;  // [slots, d] for bias-gradient column sums

  // This rank's piece of the global problem (docs/parallel.md): rows [row_offset, +B) of the
  // global batch and latents [latent_offset, +M) of global_width. One process: the whole problem.
  int64_t global_batch = 0;  // B in the loss (the global batch under data parallelism)
  int64_t row_offset = 0;
  int64_t global_width = 0;
  int64_t latent_offset = 0;
  comm::Communicator* comm = nullptr;  // never null once allocated
  bool lp_leader() const { return comm->rank(comm::Group::lp) == 0; }
};

// out = x - (f W_dec + b_dec). Under latent parallelism each shard holds part of f W_dec: the lp
// leader starts from x - b_dec, the others from 0, and the shards' partial residuals are summed
// (`phase` names the all-reduce).
// With `rows` (f's non-zeros, kernels/sparse.hpp) the product is a gather over them instead of a
// GEMM.
void residual(const StepBuffers& s, const Matrix& f, const ParamStore& p, const Matrix& out,
              Precision prec, const char* phase, const sparse::SparseRows* rows = nullptr);
// Its start: out = x - b_dec on the lp leader, 0 on the other shards.
void start_residual(const StepBuffers& s, const ParamStore& p, const Matrix& out);

struct Hyper {
  double sparsity_coeff;  // lambda after the warm-up schedule
  double bandwidth, threshold_init, decoder_init_norm;
  int64_t k, aux_k;
  kernels::TopkAlgo topk_algo = kernels::TopkAlgo::radix;
  bool batch_scope_global = true;  // BatchTopK selects over the global batch (else per rank)
  double encoder_bias_init = 0;    // every encoder bias (b_enc, b_gate) at initialisation
};

class Variant {
 public:
  virtual ~Variant() = default;
  const VariantTraits& traits() const { return *traits_; }
  const char* name() const { return traits_->name; }
  // Parameters in SAELens names and shapes (file order), from the record.
  std::vector<ParamSpec> param_specs(int64_t d, int64_t width) const;
  // Variant-specific initialisation after the shared one (decoder rows, W_enc = W_dec^T, zeros).
  virtual void initialize(ParamStore&, const Hyper&) const {}
  virtual void allocate(int64_t /*batch*/, int64_t /*d*/, int64_t /*width*/) {}

  // f from pi (adding the encoder bias), LatentStats filled. Returns the penalty term of the loss
  // for this batch: (1/B) sum_b lambda * penalty_b (global B; summed over ranks by the caller).
  virtual double forward(const ParamStore& p, StepBuffers& s, const Hyper& h) = 0;
  // g_pi from g_f in place over s.g; per-latent parameter gradients (b_enc, thresholds, ...).
  virtual void backward(ParamStore& p, StepBuffers& s, const Hyper& h) = 0;
  // The sparse path (--sparse): a variant may write f straight as rows (kernels/sparse.hpp),
  // without the dense f: every entry its backward reads with a non-zero factor (f's non-zeros;
  // JumpReLU also the inactive entries inside the straight-through window, with value 0), the
  // stats filled and the penalty term returned as forward() does. Rows that overflow `rows`'
  // capacity are the Model's to handle (it runs forward() instead). backward_rows() is then
  // backward() over them: g_f at the rows' entries in, g_pi at the same entries out, per-latent
  // gradients from the latent index — unless the auxiliary loss ran this step (its gradient
  // reaches other entries): then backward() runs on the dense g, so a variant with an auxiliary
  // loss also writes the dense f in forward_rows (TopK's selection does). The others go through
  // forward(), Model::compact and backward() on the dense g.
  virtual bool emits_rows() const { return false; }
  // forward_rows also writes the dense f and the stats as forward() does (TopK's and BatchTopK's
  // selection), so a step whose rows do not fit runs dense on it without a second forward: no
  // second selection, and no collective that one rank runs and another does not.
  virtual bool forward_rows_writes_f() const { return false; }
  virtual double forward_rows(const ParamStore&, StepBuffers&, const Hyper&,
                              const sparse::SparseRows& /*rows*/) {
    return 0;
  }
  virtual void backward_rows(ParamStore&, StepBuffers&, const Hyper&,
                             const sparse::SparseRows& /*g_f*/, const sparse::LatentIndex&,
                             const Matrix& /*g_pi_values*/) {}
  // Extra gradient terms of W_dec beyond f^T g_xhat (ReLU's norm-weighted penalty).
  virtual void decoder_gradient_extra(ParamStore&, const StepBuffers&, const Hyper&) {}

  // Auxiliary losses (Gated's frozen-decoder reconstruction, TopK's AuxK): the forward runs after
  // the main decode (s.e holds the residual) and returns its loss term; the backward runs after
  // the main backward GEMMs and before `backward`, and may add to the W_dec gradient.
  bool has_auxiliary_loss() const { return traits_->auxiliary != VariantTraits::Auxiliary::none; }
  // Whether this step's auxiliary loss sends gradient to entries outside f's rows (TopK's AuxK,
  // while latents are dead; any auxiliary loss on a dense step): the backward then runs dense.
  virtual bool auxiliary_outside_rows() const { return has_auxiliary_loss(); }
  virtual double auxiliary_forward(const ParamStore&, StepBuffers&, const Hyper&, Precision) {
    return 0;
  }
  virtual void auxiliary_backward(ParamStore&, StepBuffers&, const Hyper&, Precision) {}

  // Files: whole tensors in training form -> as SAELens stores them (JumpReLU: threshold =
  // exp(log_threshold)), and back.
  virtual std::vector<io::NamedTensor> export_tensors(std::vector<io::NamedTensor> whole) const {
    return whole;
  }
  virtual std::vector<io::NamedTensor> import_tensors(std::vector<io::NamedTensor> tensors,
                                                      const std::string& /*source*/) const {
    return tensors;
  }
  // Called once per training step after the optimiser (BatchTopK's running threshold).
  virtual void post_step(ParamStore&, const StepBuffers&) {}
  // State kept across steps outside the parameters (BatchTopK's threshold), for checkpoints.
  virtual nlohmann::json state() const { return nlohmann::json::object(); }
  virtual void load_state(const nlohmann::json&) {}

 private:
  friend std::unique_ptr<Variant> make_variant(const std::string& name);
  const VariantTraits* traits_ = nullptr;  // set by make_variant
};

// A new variant of the registered record `name` (variants/factory.cpp).
std::unique_ptr<Variant> make_variant(const std::string& name);
// A variant added outside src/variants/ (a test's toy variant): its record and its factory.
void register_variant(const VariantTraits& traits, std::unique_ptr<Variant> (*make)());

}  // namespace saescale
