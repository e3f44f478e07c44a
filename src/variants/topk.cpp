// TopK and BatchTopK: b_dec subtracted from the input, an exact selection
// (row-wise, or over the whole batch), ReLU after selection, and AuxK on the dead latents:
//   z     = ReLU(pi) on the k_aux' = min(k_aux, |D|) largest pi of each row among dead latents
//   e_aux = z W_dec                        (no b_dec)
//   L_aux = sum_b ||e_aux - e_res||^2 / sum_b ||e_res - mean_b(e_res)||^2,  e_res = x - sg(x_hat),
//           denominator detached;  L = L_main + alpha L_aux,  alpha = 1/32.
// The dense implementation computes e_aux and its two backward products as GEMMs (3 GEMM units
// while any latent is dead), as common libraries do; the sparse path removes them.
#include "kernels/activations/topk.hpp"

#include <algorithm>
#include <limits>

#include "comm/selection.hpp"
#include "error.hpp"
#include "kernels/reduce.hpp"
#include "kernels/select/topk.hpp"
#include "variant.hpp"

namespace saescale {
namespace {

constexpr double kAuxAlpha = 1.0 / 32;

class SelectionVariant : public Variant {
 public:
  void allocate(int64_t batch, int64_t d, int64_t width) override {
    z_ = Matrix("saescale::auxk::z", batch, width);
    g_z_ = Matrix("saescale::auxk::g_z", batch, width);
    e_aux_ = Matrix("saescale::auxk::e_aux", batch, d);
    mean_ = Vector("saescale::auxk::residual_mean", d);
    sums_ = kernels::gradient_slots<kernels::TopkRule>("saescale::topk::sums", width);
  }

  // The selection writes f and counts active/fired tokens per latent in the same pass (slot 0;
  // the other slots stay zero).
  double forward(const ParamStore& p, StepBuffers& s, const Hyper& h) override {
    Kokkos::deep_copy(s.stats.active_total(), 0);
    Kokkos::deep_copy(s.stats.fired_total(), 0);
    select(p, s, h);
    return 0;
  }

  double auxiliary_forward(const ParamStore& p, StepBuffers& s, const Hyper& h,
                           Precision prec) override {
    auxk_on_ = false;
    if (h.aux_k <= 0) return 0;
    int64_t dead_here = 0;
    auto flags = s.dead;
    Kokkos::parallel_reduce(
        "saescale::auxiliary::count_dead", Kokkos::RangePolicy<ExecSpace>(0, flags.extent(0)),
        KOKKOS_LAMBDA(int64_t i, int64_t & acc) { acc += flags(i) != 0; }, dead_here);
    int64_t dead = dead_here;
    s.comm->allreduce_host_sum("auxiliary", comm::Group::lp, &dead, 1);
    if (dead == 0) return 0;
    auxk_selection_.run(*s.comm, s.pi, p.vector("b_enc"), std::min<int64_t>(h.aux_k, dead),
                        h.topk_algo, z_, s.latent_offset, s.dead, dead_here, {}, {}, 0,
                        "auxiliary");
    gemm(Trans::N, Trans::N, 1, z_, p.matrix("W_dec"), 0, e_aux_, prec);
    s.comm->allreduce_sum("auxiliary", comm::Group::lp, Vector(e_aux_.data(), e_aux_.size()));
    // Detached denominator over the global batch:
    //   sum_b ||e_b - mean(e)||^2 = sum ||e||^2 - B ||mean(e)||^2.
    kernels::column_sums("saescale::auxiliary::residual_mean", s.e,
                         static_cast<real>(1.0 / s.global_batch), mean_, s.column_scratch);
    s.comm->allreduce_sum("auxiliary", comm::Group::dp, mean_);
    double energy = kernels::sum_squares("saescale::auxiliary::residual_energy", s.e);
    s.comm->allreduce_host_sum("auxiliary", comm::Group::dp, &energy, 1);
    denominator_ =
        energy - s.global_batch * kernels::sum_squares("saescale::auxiliary::mean_energy", mean_);
    if (!(denominator_ > 0)) return 0;
    auto diff = e_aux_;
    auto e = s.e;
    Kokkos::parallel_for(
        "saescale::auxiliary::auxk_difference", Kokkos::RangePolicy<ExecSpace>(0, diff.size()),
        KOKKOS_LAMBDA(int64_t j) { diff.data()[j] -= e.data()[j]; });  // e_aux - e_res
    auxk_on_ = true;
    return kAuxAlpha * kernels::sum_squares("saescale::auxiliary::auxk_loss", diff) / denominator_;
  }

  void auxiliary_backward(ParamStore& p, StepBuffers&, const Hyper&, Precision prec) override {
    if (!auxk_on_) return;
    const real scale = static_cast<real>(2 * kAuxAlpha / denominator_);
    gemm(Trans::T, Trans::N, scale, z_, e_aux_, 1, p.grad_matrix("W_dec"), prec);
    gemm(Trans::N, Trans::T, scale, e_aux_, p.matrix("W_dec"), 0, g_z_, prec);
  }

  // The sparse path: f's non-zeros as rows (the dense f is written too: AuxK's steps and
  // evaluation read it). Without AuxK the backward is g_pi = g_f at those entries.
  bool emits_rows() const override { return true; }
  bool forward_rows_writes_f() const override { return true; }
  double forward_rows(const ParamStore& p, StepBuffers& s, const Hyper& h,
                      const sparse::SparseRows& rows) override {
    rows_out_ = &rows;
    rows_filled_ = false;
    const double penalty = forward(p, s, h);
    rows_out_ = nullptr;
    if (rows_filled_)  // by the selection: record the longest row (never over the capacity)
      sparse::clip_counts(rows);
    else
      sparse::compact_rows(s.f, rows);
    return penalty;
  }
  bool auxiliary_outside_rows() const override { return auxk_on_; }
  void backward_rows(ParamStore& p, StepBuffers& s, const Hyper&, const sparse::SparseRows& g_f,
                     const sparse::LatentIndex& index, const Matrix& g_pi_values) override {
    kernels::rows_backward("saescale::variant_backward::topk_rows", rule(p, s), g_f, index,
                           g_pi_values);
  }

  void backward(ParamStore& p, StepBuffers& s, const Hyper&) override {
    kernels::dense_backward("saescale::variant_backward::topk", rule(p, s), s.g, sums_);
  }

 protected:
  virtual void select(const ParamStore& p, StepBuffers& s, const Hyper& h) = 0;
  // forward_rows' rows while the selection runs: a selection that writes them sets rows_filled_.
  const sparse::SparseRows* rows_out_ = nullptr;
  bool rows_filled_ = false;

  comm::ShardedRowTopK selection_, auxk_selection_;

 private:
  kernels::TopkRule rule(const ParamStore& p, const StepBuffers& s) const {
    return {s.f, z_, g_z_, auxk_on_, p.grad_vector("b_enc"), s.g_pi_sum};
  }

  Matrix z_, g_z_, e_aux_;
  Vector mean_;
  kernels::GradientSlots sums_;
  double denominator_ = 0;
  bool auxk_on_ = false;
};

class TopK final : public SelectionVariant {
 public:
 protected:
  void select(const ParamStore& p, StepBuffers& s, const Hyper& h) override {
    kernels::SelectedEntries entries;
    if (rows_out_ && rows_out_->capacity() >= std::min<int64_t>(h.k, s.f.extent(1)))
      entries = {rows_out_->idx, rows_out_->val, rows_out_->count};
    rows_filled_ = selection_.run(*s.comm, s.pi, p.vector("b_enc"), h.k, h.topk_algo, s.f,
                                  s.latent_offset, {}, -1, s.stats.active_total(),
                                  s.stats.fired_total(), kFireThreshold, "selection", entries);
  }
};

// BatchTopK: the k*B largest ReLU(pi) over the batch; a running threshold for inference
// (theta <- 0.99 theta + 0.01 min selected positive activation, in double, started at the first
// step's value); exported as a JumpReLU SAE with that threshold for every latent.
class BatchTopK final : public SelectionVariant {
 public:
  void post_step(ParamStore&, const StepBuffers&) override {
    if (min_selected_ <= 0) return;
    threshold_ = threshold_ > 0 ? 0.99 * threshold_ + 0.01 * min_selected_ : min_selected_;
  }
  nlohmann::json state() const override { return {{"threshold", threshold_}}; }
  void load_state(const nlohmann::json& s) override { threshold_ = s.at("threshold"); }

  // As JumpReLU: pi = x W_enc + (b_enc - b_dec W_enc) and threshold theta for every latent.
  std::vector<io::NamedTensor> export_tensors(std::vector<io::NamedTensor> t) const override {
    // t: W_enc, b_enc, W_dec, b_dec
    const auto &w_enc = t[0].values, &b_dec = t[3].values;
    const int64_t d = t[3].shape[0], M = t[1].shape[0];
    for (int64_t c = 0; c < d; ++c)
      for (int64_t i = 0; i < M; ++i) t[1].values[i] -= b_dec[c] * w_enc[c * M + i];
    t.push_back({"threshold", {M}, std::vector<float>(M, static_cast<float>(threshold_))});
    return t;
  }
  // Raw BatchTopK tensors load as usual; an exported (JumpReLU-form) file has folded b_enc.
  std::vector<io::NamedTensor> import_tensors(std::vector<io::NamedTensor> tensors,
                                              const std::string& source) const override {
    for (const auto& t : tensors)
      if (t.name == "threshold")
        throw Error(
            source +
            ": BatchTopK weights are saved as a JumpReLU SAE; load them with --variant jumprelu");
    return tensors;
  }

 protected:
  // Global scope: the k B largest over the whole global batch (every rank); local scope: over
  // this data-parallel rank's rows (still across its latent shards).
  void select(const ParamStore& p, StepBuffers& s, const Hyper& h) override {
    const bool global = h.batch_scope_global;
    min_selected_ = comm::sharded_batch_topk(
        *s.comm, global ? comm::Group::world : comm::Group::lp, s.pi, p.vector("b_enc"),
        h.k * (global ? s.global_batch : s.f.extent(0)), h.topk_algo, s.f, s.stats.active_total(),
        s.stats.fired_total(), kFireThreshold);
  }

 private:
  double min_selected_ = 0, threshold_ = 0;
};

}  // namespace

std::unique_ptr<Variant> make_topk() { return std::make_unique<TopK>(); }
std::unique_ptr<Variant> make_batchtopk() { return std::make_unique<BatchTopK>(); }

}  // namespace saescale
