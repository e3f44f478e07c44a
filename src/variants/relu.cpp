// ReLU SAE, Anthropic's April 2024 recipe: no decoder constraint; the L1 penalty is weighted by
// each decoder row's norm, so it cannot be dodged by shrinking f. Its rule:
// kernels/activations/relu.hpp.
#include "kernels/activations/relu.hpp"

#include "kernels/reduce.hpp"
#include "variant.hpp"

namespace saescale {
namespace {

class Relu final : public Variant {
 public:
  void allocate(int64_t, int64_t, int64_t width) override {
    dec_norm_ = Vector("saescale::relu::decoder_norms", width);
    sums_ = kernels::gradient_slots<kernels::ReluRule>("saescale::relu::sums", width);
  }

  double forward(const ParamStore& p, StepBuffers& s, const Hyper& h) override {
    kernels::dense_forward("saescale::activation::relu_forward", rule(p, s, h), s.f, {}, s.stats);
    return penalty(p, s, h);
  }

  // The sparse path: the active entries straight from pi.
  bool emits_rows() const override { return true; }
  double forward_rows(const ParamStore& p, StepBuffers& s, const Hyper& h,
                      const sparse::SparseRows& rows) override {
    kernels::rows_forward("saescale::activation::relu_rows", rule(p, s, h), s.pi.extent(1), rows,
                          s.stats);
    return penalty(p, s, h);
  }
  void backward_rows(ParamStore& p, StepBuffers& s, const Hyper& h, const sparse::SparseRows& g_f,
                     const sparse::LatentIndex& index, const Matrix& g_pi_values) override {
    kernels::rows_backward("saescale::variant_backward::relu_rows", rule(p, s, h), g_f, index,
                           g_pi_values);
  }
  void backward(ParamStore& p, StepBuffers& s, const Hyper& h) override {
    kernels::dense_backward("saescale::variant_backward::relu", rule(p, s, h), s.g, sums_);
  }

  // g_W_dec[i] += (lambda/B) (sum_b f_bi) W_dec[i] / ||W_dec[i]||
  void decoder_gradient_extra(ParamStore& p, const StepBuffers& s, const Hyper& h) override {
    auto w = p.matrix("W_dec");
    auto g = p.grad_matrix("W_dec");
    auto f_sum = s.stats.f_sum_total();
    auto norm = dec_norm_;
    const double scale = h.sparsity_coeff / s.global_batch;
    Kokkos::parallel_for(
        "saescale::variant_backward::relu_decoder_penalty",
        Kokkos::RangePolicy<ExecSpace>(0, w.extent(0)), KOKKOS_LAMBDA(int64_t i) {
          if (norm(i) <= 0) return;
          const real c = static_cast<real>(scale * f_sum(i) / norm(i));
          for (int64_t j = 0; j < static_cast<int64_t>(w.extent(1)); ++j) g(i, j) += c * w(i, j);
        });
  }

 private:
  kernels::ReluRule rule(const ParamStore& p, const StepBuffers& s, const Hyper& h) const {
    return {s.pi, p.vector("b_enc"), dec_norm_,
            static_cast<real>(h.sparsity_coeff / s.global_batch), p.grad_vector("b_enc")};
  }

  // (lambda / B) sum_i (sum_b f_bi) ||W_dec[i]||, from the stats; keeps the norms for backward.
  double penalty(const ParamStore& p, const StepBuffers& s, const Hyper& h) {
    kernels::row_norms("saescale::activation::relu_decoder_norms", p.matrix("W_dec"), dec_norm_);
    const double weighted =
        kernels::dot("saescale::activation::relu_penalty", s.stats.f_sum_total(), dec_norm_);
    return h.sparsity_coeff * weighted / s.global_batch;
  }

  Vector dec_norm_;
  kernels::GradientSlots sums_;
};

}  // namespace

std::unique_ptr<Variant> make_relu() { return std::make_unique<Relu>(); }

}  // namespace saescale
