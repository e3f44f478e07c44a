// ReLU SAE, Anthropic's April 2024 recipe (sae-variants.md §1): no decoder constraint; the L1
// penalty is weighted by each decoder row's norm, so it cannot be dodged by shrinking f.
#include "kernels/activations/relu.hpp"

#include "kernels/reduce.hpp"
#include "variant.hpp"

namespace saescale {
namespace {

class Relu final : public Variant {
 public:
  void allocate(int64_t, int64_t, int64_t width) override {
    dec_norm_ = Vector("saescale::relu::decoder_norms", width);
    g_b_enc_ = SlotView<double>("saescale::relu::g_b_enc_slots", accumulator_slots(), width);
  }

  double forward(const ParamStore& p, StepBuffers& s, const Hyper& h) override {
    for_each_tile("saescale::activation::relu_forward", s.f.extent(0), s.f.extent(1),
                  kernels::ReluForward{s.pi, p.vector("b_enc"), s.f, s.stats});
    s.stats.reduce();
    return penalty(p, s, h);
  }

  // The sparse path: the active entries straight from pi; the backward adds the penalty's
  // ||W_dec[i]|| at them, as ReluBackward does.
  bool emits_rows() const override { return true; }
  double forward_rows(const ParamStore& p, StepBuffers& s, const Hyper& h,
                      const sparse::SparseRows& rows) override {
    sparse::rows_from_rule("saescale::activation::relu_rows", s.pi.extent(0), s.pi.extent(1),
                           kernels::ReluRows{s.pi, p.vector("b_enc")}, rows, &s.stats);
    return penalty(p, s, h);
  }
  void backward_rows(ParamStore& p, StepBuffers& s, const Hyper& h, const sparse::SparseRows& g_f,
                     const sparse::LatentIndex& index, const Matrix& g_pi_values) override {
    sparse::shifted_gradient_by_latent(
        "saescale::variant_backward::relu_rows", g_f, index, dec_norm_,
        static_cast<real>(h.sparsity_coeff / s.global_batch), g_pi_values, p.grad_vector("b_enc"));
  }

  void backward(ParamStore& p, StepBuffers& s, const Hyper& h) override {
    const real penalty_scale = static_cast<real>(h.sparsity_coeff / s.global_batch);
    for_each_tile(
        "saescale::variant_backward::relu", s.g.extent(0), s.g.extent(1),
        kernels::ReluBackward{s.pi, p.vector("b_enc"), dec_norm_, penalty_scale, s.g, g_b_enc_});
    sum_slots("saescale::variant_backward::relu_b_enc", g_b_enc_, p.grad_vector("b_enc"));
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
  // (lambda / B) sum_i (sum_b f_bi) ||W_dec[i]||, from the stats; keeps the norms for backward.
  double penalty(const ParamStore& p, const StepBuffers& s, const Hyper& h) {
    kernels::row_norms("saescale::activation::relu_decoder_norms", p.matrix("W_dec"), dec_norm_);
    const double weighted =
        kernels::dot("saescale::activation::relu_penalty", s.stats.f_sum_total(), dec_norm_);
    return h.sparsity_coeff * weighted / s.global_batch;
  }

  Vector dec_norm_;
  SlotView<double> g_b_enc_;
};

}  // namespace

std::unique_ptr<Variant> make_relu() { return std::make_unique<Relu>(); }

}  // namespace saescale
