// JumpReLU SAE: elementwise threshold, trainable t = log(theta), L0 penalty through a
// rectangle-kernel straight-through estimator that reaches only t. Its rule:
// kernels/activations/jumprelu.hpp.
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
    sums_ = kernels::gradient_slots<kernels::JumpReluRule>("saescale::jumprelu::sums", width);
  }

  double forward(const ParamStore& p, StepBuffers& s, const Hyper& h) override {
    kernels::thresholds(p.vector("log_threshold"), theta_);
    kernels::dense_forward("saescale::activation::jumprelu_forward", rule(p, s, h), s.f, {},
                           s.stats);
    return penalty(s, h);
  }
  // The sparse path: the active entries and, for the threshold, those inside the window, straight
  // from pi.
  bool emits_rows() const override { return true; }
  double forward_rows(const ParamStore& p, StepBuffers& s, const Hyper& h,
                      const sparse::SparseRows& rows) override {
    kernels::thresholds(p.vector("log_threshold"), theta_);
    kernels::rows_forward("saescale::activation::jumprelu_rows", rule(p, s, h), s.pi.extent(1),
                          rows, s.stats);
    return penalty(s, h);
  }

  // theta_ still holds exp(t) from the forward: parameters do not change in between.
  void backward_rows(ParamStore& p, StepBuffers& s, const Hyper& h, const sparse::SparseRows& g_f,
                     const sparse::LatentIndex& index, const Matrix& g_pi_values) override {
    kernels::rows_backward("saescale::variant_backward::jumprelu_rows", rule(p, s, h), g_f, index,
                           g_pi_values);
  }
  void backward(ParamStore& p, StepBuffers& s, const Hyper& h) override {
    kernels::dense_backward("saescale::variant_backward::jumprelu", rule(p, s, h), s.g, sums_);
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
  kernels::JumpReluRule rule(const ParamStore& p, const StepBuffers& s, const Hyper& h) const {
    return {s.pi,
            p.vector("b_enc"),
            theta_,
            static_cast<real>(h.bandwidth),
            static_cast<real>(h.sparsity_coeff / s.global_batch),
            p.grad_vector("b_enc"),
            p.grad_vector("log_threshold")};
  }

  // (lambda / B) * number of (token, latent) pairs above threshold, from the stats.
  static double penalty(const StepBuffers& s, const Hyper& h) {
    const int64_t active =
        kernels::sum("saescale::activation::jumprelu_l0", s.stats.active_total());
    return h.sparsity_coeff * static_cast<double>(active) / s.global_batch;
  }

  Vector theta_;
  kernels::GradientSlots sums_;
};

}  // namespace

std::unique_ptr<Variant> make_jumprelu() { return std::make_unique<JumpRelu>(); }

}  // namespace saescale
