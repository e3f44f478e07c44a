#include "products.hpp"

#include <algorithm>
#include <numeric>
#include <random>

#include "error.hpp"

namespace saescale {

SparseProducts::SparseProducts(const Variant& variant, int64_t batch, int64_t width,
                               int64_t capacity)
    : variant_(variant), batch_(batch), width_(width) {
  if (batch <= 0) throw Error("sparse products: allocate the batch first");
  const int64_t cap = std::max<int64_t>(1, std::min(capacity, width));
  if (batch * cap >= (int64_t(1) << 31))
    throw Error("--sparse-capacity " + std::to_string(cap) + " x " + std::to_string(batch) +
                " rows per rank must stay below 2^31 entries");
  initial_capacity_ = cap;
  allocate(cap);
}

void SparseProducts::allocate(int64_t cap) {
  capacity_ = cap;
  f_ = sparse::SparseRows::allocate("saescale::sparse::f", batch_, cap);
  g_pi_ = sparse::SparseRows::allocate("saescale::sparse::g_pi", batch_, cap);
  g_f_values_ = Matrix("saescale::sparse::g_f_values", batch_, cap);
  g_pi_values_ = Matrix("saescale::sparse::g_pi_values", batch_, cap);
  f_index_ = sparse::LatentIndex::allocate("saescale::sparse::f_index", width_, batch_, cap);
  g_pi_index_ = sparse::LatentIndex::allocate("saescale::sparse::g_pi_index", width_, batch_, cap);
}

// Rows overflowed: a capacity for the longest row and a quarter more (whole blocks of 8), when it
// stays within width / 8 or twice the initial capacity, whichever is larger — the GEMMs win on
// rows much fuller (see --sparse auto's calibration) — and B x capacity below 2^31. Every sparse
// buffer is reallocated (its contents are lost).
bool SparseProducts::grow(const sparse::SparseRows& overflowed) {
  if (sparse::overflow_rows(overflowed) == 0) return false;
  const int64_t longest = sparse::longest_row(overflowed);
  const int64_t cap = std::min(width_, (longest + longest / 4 + 7) / 8 * 8);
  if (cap <= capacity_ || cap > std::max<int64_t>(2 * initial_capacity_, width_ / 8) ||
      batch_ * cap >= (int64_t(1) << 31))
    return false;
  allocate(cap);
  ++grown_;
  // f's rows are gone. A growth for g_pi's rows happens after every product read them, and only
  // in a step that is not direct or whose auxiliary loss ran — whose variant wrote the dense f.
  direct_ = f_fits_ = false;
  return true;
}

bool SparseProducts::rows_fit(const sparse::SparseRows& rows) const {
  return sparse::overflow_rows(rows) == 0 &&
         (limit_ >= double(rows.capacity()) || sparse::mean_count(rows) <= limit_);
}

bool SparseProducts::use_sparse(const char* product, bool fits) {
  auto& c = counts_[product];
  ++(fits ? c.sparse : c.dense);
  return fits;
}

bool SparseProducts::rows_backward() const { return direct_ && !variant_.auxiliary_outside_rows(); }

double SparseProducts::activate(Variant& v, const ParamStore& p, StepBuffers& s, const Hyper& h) {
  direct_ = false;
  if (v.emits_rows()) {
    if (wait_ == 0) {
      // Each rank decides alone (under latent parallelism its shard's rows differ from the
      // others'), so nothing below may run a collective on one rank only: a selection, which
      // communicates, runs once, and its dense f serves the retry and the dense fallback.
      const bool dense_f = v.forward_rows_writes_f();
      double penalty = v.forward_rows(p, s, h, f_);
      if (grow(f_)) {
        if (dense_f)
          sparse::compact_rows(s.f, f_);
        else
          penalty = v.forward_rows(p, s, h, f_);
      }
      if (rows_fit(f_)) {
        direct_ = true;
        backoff_ = 0;
        return penalty;
      }
      // More entries than the capacity can grow to, or above the --sparse auto limit: this step
      // runs dense, and while the rows keep missing the next tries come 1, 2, 4, ... 64 steps
      // later.
      backoff_ = std::min<int64_t>(64, 2 * backoff_ + (backoff_ == 0));
      wait_ = backoff_;
      if (dense_f) return penalty;
    } else {
      --wait_;
    }
  }
  return v.forward(p, s, h);
}

void SparseProducts::compact(const StepBuffers& s) {
  if (variant_.emits_rows()) {  // rows straight from the activation, or a dense step
    f_fits_ = direct_;
  } else {
    sparse::compact_rows(s.f, f_);
    if (grow(f_)) sparse::compact_rows(s.f, f_);
    f_fits_ = rows_fit(f_);
  }
  if (f_fits_) sparse::build_latent_index(f_, f_index_);
}

void SparseProducts::materialize_f(StepBuffers& s) const {
  if (direct_) sparse::scatter_rows(f_, s.f);
}

void SparseProducts::decode(const ParamStore& p, const StepBuffers& s, Precision prec) {
  if (use_sparse("decode", f_fits_))
    sparse::sparse_decode(f_, p.matrix("W_dec"), s.e, 1, -1);
  else
    Products::decode(p, s, prec);
}

void SparseProducts::decoder_gradient(ParamStore& p, const StepBuffers& s, real scale,
                                      Precision prec) {
  if (use_sparse("decoder_gradient", f_fits_))
    sparse::sparse_decoder_gradient_sorted(f_, f_index_, s.e, scale, 0, p.grad_matrix("W_dec"));
  else
    Products::decoder_gradient(p, s, scale, prec);
}

void SparseProducts::activation_gradient(const ParamStore& p, const StepBuffers& s, real scale,
                                         Precision prec) {
  if (!use_sparse("activation_gradient", f_fits_))
    return Products::activation_gradient(p, s, scale, prec);
  // g_f at the entries the variant's backward reads, zero elsewhere (where its factor is zero);
  // the dense backward reads it from g.
  const auto rows = f_.with_values(g_f_values_);
  sparse::sparse_activation_gradient(rows, s.e, p.matrix("W_dec"), scale, g_f_values_);
  if (!rows_backward()) sparse::scatter_rows(rows, s.g);
}

void SparseProducts::variant_backward(Variant& v, ParamStore& p, StepBuffers& s, const Hyper& h) {
  if (rows_backward())
    v.backward_rows(p, s, h, f_.with_values(g_f_values_), f_index_, g_pi_values_);
  else
    v.backward(p, s, h);
}

void SparseProducts::encoder_gradient(ParamStore& p, const StepBuffers& s, Precision prec) {
  if (rows_backward()) {  // g_pi at f's entries, from Variant::backward_rows
    use_sparse("encoder_gradient", true);
    sparse::sparse_encoder_gradient(f_.with_values(g_pi_values_), f_index_, s.x_in, 1, 0,
                                    p.grad_matrix("W_enc"));
    return;
  }
  // g_pi's non-zeros (f's, plus AuxK's or Gated's gate entries); f's rows are no longer read this
  // step, so growing (which reallocates them too) is safe here.
  sparse::compact_rows(s.g, g_pi_);
  if (grow(g_pi_)) sparse::compact_rows(s.g, g_pi_);
  if (use_sparse("encoder_gradient", rows_fit(g_pi_))) {
    sparse::build_latent_index(g_pi_, g_pi_index_);
    sparse::sparse_encoder_gradient(g_pi_, g_pi_index_, s.x_in, 1, 0, p.grad_matrix("W_enc"));
    return;
  }
  Products::encoder_gradient(p, s, prec);
}

void SparseProducts::fill_rows(int64_t entries, uint64_t seed) {
  const int64_t L = std::min(entries, capacity_);
  auto idx = Kokkos::create_mirror_view(Kokkos::HostSpace(), f_.idx);
  auto val = Kokkos::create_mirror_view(Kokkos::HostSpace(), f_.val);
  auto count = Kokkos::create_mirror_view(Kokkos::HostSpace(), f_.count);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> value(0, 1);
  std::vector<sparse::Index> latents(width_);
  std::iota(latents.begin(), latents.end(), 0);
  for (int64_t b = 0; b < batch_; ++b) {
    for (int64_t j = 0; j < L; ++j)  // a partial Fisher-Yates shuffle: L distinct latents
      std::swap(latents[j], latents[j + static_cast<int64_t>(rng() % uint64_t(width_ - j))]);
    std::sort(latents.begin(), latents.begin() + L);
    for (int64_t j = 0; j < L; ++j) idx(b, j) = latents[j], val(b, j) = value(rng);
    count(b) = static_cast<sparse::Index>(L);
  }
  Kokkos::deep_copy(f_.idx, idx);
  Kokkos::deep_copy(f_.val, val);
  Kokkos::deep_copy(f_.count, count);
  sparse::build_latent_index(f_, f_index_);
}

void SparseProducts::choose(bool sparse) {
  f_fits_ = sparse;
  direct_ = sparse && variant_.emits_rows();
  limit_ = sparse ? 1e300 : -1;  // g_pi's rows (compacted by the encoder product) too
}

}  // namespace saescale
