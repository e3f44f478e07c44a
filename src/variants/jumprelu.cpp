// JumpReLU SAE (sae-variants.md §5): elementwise threshold, trainable t = log(theta), L0 penalty
// through a rectangle-kernel straight-through estimator that reaches only t.
#include "kernels/activations/jumprelu.hpp"

#include <cmath>

#include "error.hpp"
#include "kernels/reduce.hpp"
#include "variant.hpp"

namespace saescale {
namespace {

class JumpRelu final : public Variant {
 public:
  void initialize(ParamStore& p, const Hyper& h) const override {
    kernels::fill("saescale::init::log_threshold", p.vector("log_threshold"),
                  static_cast<real>(std::log(h.threshold_init)));
  }

  void allocate(int64_t, int64_t, int64_t width) override {
    theta_ = Vector("saescale::jumprelu::theta", width);
    g_b_enc_ = SlotView<double>("saescale::jumprelu::g_b_enc_slots", accumulator_slots(), width);
    g_theta_ = SlotView<double>("saescale::jumprelu::g_theta_slots", accumulator_slots(), width);
  }

  double forward(const ParamStore& p, StepBuffers& s, const Hyper& h) override {
    kernels::thresholds(p.vector("log_threshold"), theta_);
    for_each_tile("saescale::activation::jumprelu_forward", s.f.extent(0), s.f.extent(1),
                  kernels::JumpReluForward{s.pi, p.vector("b_enc"), theta_, s.f, s.stats});
    s.stats.reduce();
    return penalty(s, h);
  }

  // The sparse path: the active entries and, for the threshold, those inside the window, straight
  // from pi (kernels/activations/jumprelu.hpp).
  bool emits_rows() const override { return true; }
  double forward_rows(const ParamStore& p, StepBuffers& s, const Hyper& h,
                      const sparse::SparseRows& rows) override {
    kernels::thresholds(p.vector("log_threshold"), theta_);
    sparse::rows_from_rule(
        "saescale::activation::jumprelu_rows", s.pi.extent(0), s.pi.extent(1),
        kernels::JumpReluRows{s.pi, p.vector("b_enc"), theta_, static_cast<real>(h.bandwidth / 2)},
        rows, &s.stats);
    return penalty(s, h);
  }
  void backward_rows(ParamStore& p, StepBuffers& s, const Hyper& h, const sparse::SparseRows& g_f,
                     const sparse::LatentIndex& index, const Matrix& g_pi_values) override {
    kernels::jumprelu_backward_rows(
        g_f, index, s.pi, p.vector("b_enc"), theta_, static_cast<real>(h.bandwidth),
        static_cast<real>(h.sparsity_coeff / s.global_batch), g_pi_values, p.grad_vector("b_enc"),
        p.grad_vector("log_threshold"));
  }

  void backward(ParamStore& p, StepBuffers& s, const Hyper& h) override {
    // theta_ still holds exp(t) from forward: parameters do not change in between.
    for_each_tile(
        "saescale::variant_backward::jumprelu", s.g.extent(0), s.g.extent(1),
        kernels::JumpReluBackward{s.pi, p.vector("b_enc"), theta_, static_cast<real>(h.bandwidth),
                                  static_cast<real>(h.sparsity_coeff / s.global_batch), s.g,
                                  g_b_enc_, g_theta_});
    kernels::JumpReluBackward::finish(g_b_enc_, g_theta_, theta_, p.grad_vector("b_enc"),
                                      p.grad_vector("log_threshold"));
  }

  // Files store `threshold` (SAELens / Gemma Scope); training keeps log_threshold.
  std::vector<io::NamedTensor> export_tensors(std::vector<io::NamedTensor> tensors) const override {
    for (auto& t : tensors) {
      if (t.name != "log_threshold") continue;
      t.name = "threshold";
      for (auto& v : t.values) v = std::exp(v);
    }
    return tensors;
  }
  std::vector<io::NamedTensor> import_tensors(std::vector<io::NamedTensor> tensors,
                                              const std::string& source) const override {
    for (auto& t : tensors) {
      if (t.name != "threshold") continue;
      t.name = "log_threshold";
      for (auto& v : t.values) {
        if (!(v > 0)) throw Error(source + ": threshold values must be positive");
        v = std::log(v);
      }
    }
    return tensors;
  }

 private:
  // (lambda / B) * number of (token, latent) pairs above threshold, from the stats.
  static double penalty(const StepBuffers& s, const Hyper& h) {
    const int64_t active =
        kernels::sum("saescale::activation::jumprelu_l0", s.stats.active_total());
    return h.sparsity_coeff * static_cast<double>(active) / s.global_batch;
  }

  Vector theta_;
  SlotView<double> g_b_enc_, g_theta_;
};

}  // namespace

std::unique_ptr<Variant> make_jumprelu() { return std::make_unique<JumpRelu>(); }

}  // namespace saescale
