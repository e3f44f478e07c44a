// Gated SAE: gate and magnitude paths sharing W_enc; L1 on ReLU(pi_gate); an auxiliary
// reconstruction of x from ReLU(pi_gate) through the FROZEN decoder (a second decoder GEMM forward
// and a second g W_dec^T backward; no gradient to W_dec or the decoder-side b_dec). Its rule:
// kernels/activations/gated.hpp.
#include "kernels/activations/gated.hpp"

#include "kernels/reduce.hpp"
#include "variant.hpp"

namespace saescale {
namespace {

class Gated final : public Variant {
 public:
  void allocate(int64_t batch, int64_t d, int64_t width) override {
    scale_ = Vector("saescale::gated::mag_scale", width);
    aux_ = Matrix("saescale::gated::aux", batch, width);  // ReLU(pi_gate), then its gradient
    e_aux_ = Matrix("saescale::gated::e_aux", batch, d);
    sums_ = kernels::gradient_slots<kernels::GatedRule>("saescale::gated::sums", width);
  }

  double forward(const ParamStore& p, StepBuffers& s, const Hyper& h) override {
    rows_ = {};
    kernels::magnitude_scales(p.vector("r_mag"), scale_);
    kernels::dense_forward("saescale::activation::gated_forward", rule(p, s, h, aux_), s.f, aux_,
                           s.stats);
    double gate_l1 = 0;
    auto sums = s.stats.f_sum_total();
    Kokkos::parallel_reduce(
        "saescale::activation::gated_l1", Kokkos::RangePolicy<ExecSpace>(0, sums.extent(0)),
        KOKKOS_LAMBDA(int64_t i, double& acc) { acc += sums(i); }, gate_l1);
    return h.sparsity_coeff * gate_l1 / s.global_batch;
  }

  // The sparse path: the gate's active entries as rows (kernels/activations/gated.hpp); the
  // auxiliary reconstruction and its gradient then gather over them too (ReLU(pi_gate) is zero
  // elsewhere), so its gradient stays at the rows' entries and the backward runs over them.
  bool emits_rows() const override { return true; }
  double forward_rows(const ParamStore& p, StepBuffers& s, const Hyper& h,
                      const sparse::SparseRows& rows) override {
    kernels::magnitude_scales(p.vector("r_mag"), scale_);
    kernels::rows_forward("saescale::activation::gated_rows", rule(p, s, h, {}), s.pi.extent(1),
                          rows, s.stats);
    if (gate_values_.extent(1) != rows.val.extent(1)) {  // first use, or the rows grew
      gate_values_ = Matrix("saescale::gated::gate_values", rows.rows(), rows.capacity());
      g_aux_values_ = Matrix("saescale::gated::g_aux_values", rows.rows(), rows.capacity());
    }
    rows_ = rows.with_values(gate_values_);
    const double gate_l1 = kernels::rows_l1_input("saescale::activation::gated_gate_values",
                                                  rule(p, s, h, {}), rows, gate_values_);
    return h.sparsity_coeff * gate_l1 / s.global_batch;
  }
  bool auxiliary_outside_rows() const override { return !rows_.rows(); }  // a dense step

  // e_aux = x - (ReLU(pi_gate) W_dec + b_dec), W_dec and b_dec used as constants.
  double auxiliary_forward(const ParamStore& p, StepBuffers& s, const Hyper&,
                           Precision prec) override {
    residual(s, aux_, p, e_aux_, prec, "auxiliary", rows_.rows() ? &rows_ : nullptr);
    return kernels::sum_squares("saescale::auxiliary::gated_loss", e_aux_) / s.global_batch;
  }

  // g_aux = (-2/B) e_aux W_dec^T into the same buffer (ReLU(pi_gate) is no longer needed), or at
  // the rows' entries.
  void auxiliary_backward(ParamStore& p, StepBuffers& s, const Hyper&, Precision prec) override {
    const real scale = static_cast<real>(-2.0 / s.global_batch);
    if (rows_.rows())
      sparse::sparse_activation_gradient(rows_, e_aux_, p.matrix("W_dec"), scale, g_aux_values_);
    else
      gemm(Trans::N, Trans::T, scale, e_aux_, p.matrix("W_dec"), 0, aux_, prec);
  }

  void backward_rows(ParamStore& p, StepBuffers& s, const Hyper& h, const sparse::SparseRows& g_f,
                     const sparse::LatentIndex& index, const Matrix& g_pi_values) override {
    kernels::rows_backward("saescale::variant_backward::gated_rows", rule(p, s, h, g_aux_values_),
                           g_f, index, g_pi_values);
  }
  // aux_ holds the auxiliary gradient by now (auxiliary_backward).
  void backward(ParamStore& p, StepBuffers& s, const Hyper& h) override {
    kernels::dense_backward("saescale::variant_backward::gated", rule(p, s, h, aux_), s.g, sums_);
  }

 private:
  kernels::GatedRule rule(const ParamStore& p, const StepBuffers& s, const Hyper& h,
                          const Matrix& g_aux) const {
    return {s.pi,
            p.vector("b_gate"),
            scale_,
            p.vector("b_mag"),
            static_cast<real>(h.sparsity_coeff / s.global_batch),
            g_aux,
            p.grad_vector("b_gate"),
            p.grad_vector("b_mag"),
            p.grad_vector("r_mag"),
            s.g_pi_sum};
  }

  Vector scale_;
  Matrix aux_, e_aux_;
  // The sparse path: ReLU(pi_gate) and the auxiliary gradient at the rows' entries; rows_ is
  // empty on a dense step.
  Matrix gate_values_, g_aux_values_;
  sparse::SparseRows rows_;
  kernels::GradientSlots sums_;
};

}  // namespace

std::unique_ptr<Variant> make_gated() { return std::make_unique<Gated>(); }

}  // namespace saescale
