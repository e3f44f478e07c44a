// How a step computes its products with f (decode, the decoder and activation gradients, the
// encoder gradient) and, around them, the activation and the variant's backward:
//  - Products: GEMMs over the dense f (the default);
//  - SparseProducts (--sparse): gathers and scatters over f's non-zeros (kernels/sparse.hpp,
//    O(B L0 d) instead of O(B M d)), each product falling back to its GEMM when the rows do not
//    fit. A variant that emits rows (Variant::forward_rows) writes them in its activation without
//    the dense f, and its backward runs over them (a direct step).
// Model::forward and Model::backward list the phases once and ask this object for each; the
// GEMM floor and the --sparse auto calibration run the same products.
#pragma once
#include <map>
#include <string>

#include "kernels/gemm.hpp"
#include "kernels/sparse.hpp"
#include "variant.hpp"

namespace saescale {

class Products {
 public:
  virtual ~Products() = default;
  // f (or its rows) and the stats; returns the penalty term (Variant::forward).
  virtual double activate(Variant& v, const ParamStore& p, StepBuffers& s, const Hyper& h) {
    return v.forward(p, s, h);
  }
  // pi = x_in W_enc: a GEMM on both paths.
  void encode(const ParamStore& p, const StepBuffers& s, Precision prec) const {
    gemm(Trans::N, Trans::N, 1, s.x_in, p.matrix("W_enc"), 0, s.pi, prec);
  }
  // e -= f W_dec (e holds x - b_dec on entry: start_residual).
  virtual void decode(const ParamStore& p, const StepBuffers& s, Precision prec) {
    gemm(Trans::N, Trans::N, -1, s.f, p.matrix("W_dec"), 1, s.e, prec);
  }
  // g_W_dec = scale f^T e (scale = -2/B: g_xhat = -2 e / B rides in the alpha).
  virtual void decoder_gradient(ParamStore& p, const StepBuffers& s, real scale, Precision prec) {
    gemm(Trans::T, Trans::N, scale, s.f, s.e, 0, p.grad_matrix("W_dec"), prec);
  }
  // g_f = scale e W_dec^T into s.g.
  virtual void activation_gradient(const ParamStore& p, const StepBuffers& s, real scale,
                                   Precision prec) {
    gemm(Trans::N, Trans::T, scale, s.e, p.matrix("W_dec"), 0, s.g, prec);
  }
  // g_pi from g_f, and the variant's per-latent gradients (Variant::backward).
  virtual void variant_backward(Variant& v, ParamStore& p, StepBuffers& s, const Hyper& h) {
    v.backward(p, s, h);
  }
  // g_W_enc = x_in^T g_pi.
  virtual void encoder_gradient(ParamStore& p, const StepBuffers& s, Precision prec) {
    gemm(Trans::T, Trans::N, 1, s.x_in, s.g, 0, p.grad_matrix("W_enc"), prec);
  }
  // s.f as the dense f (a direct sparse step never wrote it), for readers outside the step.
  virtual void materialize_f(StepBuffers&) const {}
};

class SparseProducts final : public Products {
 public:
  // Rows of at most `capacity` entries for `batch` rows of `width` latents (grown to fit longer
  // rows: up to width / 8 or twice the initial capacity).
  SparseProducts(const Variant& variant, int64_t batch, int64_t width, int64_t capacity);

  double activate(Variant& v, const ParamStore& p, StepBuffers& s, const Hyper& h) override;
  // After the activation: f's rows (compacted from the dense f for a variant that does not emit
  // rows) and their latent index, or a dense step when they do not fit (the "sparse_compact"
  // phase).
  void compact(const StepBuffers& s);
  void decode(const ParamStore& p, const StepBuffers& s, Precision prec) override;
  void decoder_gradient(ParamStore& p, const StepBuffers& s, real scale, Precision prec) override;
  void activation_gradient(const ParamStore& p, const StepBuffers& s, real scale,
                           Precision prec) override;
  void variant_backward(Variant& v, ParamStore& p, StepBuffers& s, const Hyper& h) override;
  void encoder_gradient(ParamStore& p, const StepBuffers& s, Precision prec) override;
  void materialize_f(StepBuffers& s) const override;

  // --sparse auto: a product also runs dense when its rows average more than `entries` per row
  // (the calibrated crossover).
  void set_limit(double entries) { limit_ = entries; }
  // Calibration: f's rows := `entries` random distinct latents per row (random values), and the
  // next products run on them (sparse) or as the GEMMs (the dense fallback), whatever the rows
  // hold; reset_counts() then forgets what the calibration ran.
  void fill_rows(int64_t entries, uint64_t seed);
  void choose(bool sparse);
  void reset_counts() { counts_.clear(); }

  struct Counts {
    int64_t sparse = 0, dense = 0;
  };
  // Per product (decode, decoder_gradient, activation_gradient, encoder_gradient).
  const std::map<std::string, Counts>& counts() const { return counts_; }
  int64_t capacity() const { return capacity_; }
  int64_t growths() const { return grown_; }

 private:
  bool use_sparse(const char* product, bool fits);      // counts the product's path
  bool rows_fit(const sparse::SparseRows& rows) const;  // within the capacity and the limit
  void allocate(int64_t capacity);
  bool grow(const sparse::SparseRows& overflowed);
  // This step's backward runs over the rows (Variant::backward_rows): a direct step whose
  // auxiliary loss (if any) keeps its gradient at the rows' entries.
  bool rows_backward() const;

  const Variant& variant_;
  int64_t batch_, width_;
  int64_t capacity_ = 0, initial_capacity_ = 0;
  int64_t grown_ = 0;  // times the rows grew to fit a longer row
  // f's entries (with a variant that emits rows: every entry its backward reads, some with
  // f = 0); g_pi's, compacted from the dense g.
  sparse::SparseRows f_, g_pi_;
  sparse::LatentIndex f_index_, g_pi_index_;
  Matrix g_f_values_, g_pi_values_;  // g_f and (direct steps) g_pi at f's entries
  bool f_fits_ = false;              // this step's rows within capacity and limit
  // A direct step: the rows came from Variant::forward_rows and the backward runs over them (the
  // dense f and g are not written). After a miss, `wait_` steps run dense before a retry.
  bool direct_ = false;
  int64_t wait_ = 0, backoff_ = 0;
  double limit_ = 1e300;  // --sparse auto: most mean entries per row
  std::map<std::string, Counts> counts_;
};

}  // namespace saescale
