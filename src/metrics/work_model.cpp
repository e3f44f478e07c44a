#include "metrics/work_model.hpp"

#include "variants/traits.hpp"

namespace saescale::metrics {

namespace {
constexpr double kF = 4;  // bytes per fp32 value
using Selection = VariantTraits::Selection;
using Auxiliary = VariantTraits::Auxiliary;
Work element_work(const VariantTraits::ElementWork& w, double B, double M) {
  return {w.flops_per_element * B * M,
          kF * (w.values_per_element * B * M + w.values_per_latent * M)};
}
// Passes reading B x M to find the threshold: radix 4 histograms, bisect 32 counts and one more,
// filter one scan (its candidate buffer is small and stays in cache).
double selection_passes(const std::string& algo) {
  return algo == "radix" ? 4 : algo == "filter" ? 1 : 33;
}
}  // namespace

Work gemm_work(double m, double n, double k) {
  return {2 * m * n * k, kF * (m * k + k * n + m * n)};
}

Work row_selection_work(double B, double M, const std::string& algo) {
  // passes reading B x M, then the final pass reading it and writing the selected output; the
  // row-wise filter selects from its buffer, so its final pass only writes the output
  if (algo == "filter") return {0, kF * B * M * 2};
  return {0, kF * B * M * (selection_passes(algo) + 2)};
}

Work batch_selection_work(double B, double M, const std::string& algo) {
  // as the row selection, plus the pass that finds the smallest selected value
  return {0, kF * B * M * (selection_passes(algo) + 3)};
}

Work activation_forward_work(const std::string& variant, double B, double M,
                             const std::string& topk_algo) {
  const VariantTraits& t = variant_traits(variant);
  if (t.selection == Selection::row) return row_selection_work(B, M, topk_algo);
  if (t.selection == Selection::batch) return batch_selection_work(B, M, topk_algo);
  return element_work(t.forward, B, M);
}

Work activation_backward_work(const std::string& variant, double B, double M) {
  return element_work(variant_traits(variant).backward, B, M);
}

Work adam_work(double P, bool first_moment) {
  // p, g, v (and m) in; p, v (and m) out
  return {first_moment ? 12 * P : 9 * P, kF * P * (first_moment ? 7 : 5)};
}

Work renormalize_work(double M, double d) { return {3 * M * d, kF * 2 * M * d}; }
Work projection_work(double M, double d) { return {4 * M * d, kF * 3 * M * d}; }

namespace {
constexpr double kEntry = 8;  // an ELL entry: int32 latent index + fp32 value
double rows_touched(double M, double nnz) { return nnz < M ? nnz : M; }
}  // namespace

Work sparse_compact_work(double B, double M, double nnz) {
  return {0, kF * B * M + kEntry * nnz + 4 * B};
}

Work latent_index_work(double B, double M, double nnz) {
  return {0, 4 * (nnz + B) + 4 * (M + 1) + 4 * nnz};  // idx and counts in; offsets, ids out
}

Work sparse_decode_work(double B, double d, double M, double nnz, bool reads_out) {
  return {2 * nnz * d,
          kEntry * nnz + 4 * B + kF * rows_touched(M, nnz) * d + kF * B * d * (reads_out ? 2 : 1)};
}

Work sparse_decoder_gradient_work(double B, double d, double M, double nnz) {
  return {2 * nnz * d, kEntry * nnz + 4 * B + kF * B * d + kF * M * d};  // G in, g_W_dec out
}

Work sparse_activation_gradient_work(double B, double d, double M, double nnz) {
  // G and the touched W_dec rows in; one value out per entry
  return {2 * nnz * d, kEntry * nnz + 4 * B + kF * B * d + kF * rows_touched(M, nnz) * d};
}

Work sparse_encoder_gradient_work(double B, double d, double M, double nnz) {
  // values and index (ids, offsets) in, X_in in, g_W_enc [d, M] out
  return {2 * nnz * d, kEntry * nnz + 4 * (M + 1) + kF * B * d + kF * d * M};
}

std::map<std::string, Work> work_model(const WorkShape& s) {
  const double B = s.B, d = s.d, M = s.M, P = s.P;
  const VariantTraits& traits = variant_traits(s.variant);
  const bool subtracts = traits.subtracts_decoder_bias;
  std::map<std::string, Work> w;
  Work encode = gemm_work(B, M, d);
  if (subtracts) encode.flops += B * d, encode.bytes += kF * (2 * B * d + d);  // x - b_dec
  w["encode_gemm"] = encode;
  w["activation"] = activation_forward_work(s.variant, B, M, s.topk_algo);
  Work decode = gemm_work(B, d, M);
  decode.flops += B * d, decode.bytes += kF * (B * d + d);  // e starts as x - b_dec
  w["decode_gemm"] = decode;
  w["loss"] = {2 * B * d, kF * B * d};
  w["backward_decoder_gemm"] = gemm_work(M, d, B);
  w["backward_activation_gemm"] = gemm_work(B, M, d);
  if (traits.auxiliary == Auxiliary::frozen_decoder) {
    Work aux = gemm_work(B, d, M);
    aux.flops += 3 * B * d, aux.bytes += kF * (B * d + d);  // residual and its energy
    w["auxiliary_forward"] = aux;
    w["auxiliary_backward"] = gemm_work(B, M, d);
  } else if (traits.auxiliary == Auxiliary::auxk && s.aux_k > 0) {
    Work aux = row_selection_work(B, M, s.topk_algo);
    const Work e_aux = gemm_work(B, d, M);
    aux.flops += e_aux.flops + 6 * B * d;
    aux.bytes += e_aux.bytes + kF * 3 * B * d;  // residual mean, energies, difference
    w["auxiliary_forward"] = aux;
    const Work a = gemm_work(M, d, B), b = gemm_work(B, M, d);
    w["auxiliary_backward"] = {a.flops + b.flops, a.bytes + b.bytes};
  }
  w["variant_backward"] = activation_backward_work(s.variant, B, M);
  w["backward_encoder_gemm"] = gemm_work(d, M, B);
  Work bias = {B * d, kF * (B * d + d)};
  if (subtracts) bias.flops += 2 * d * M, bias.bytes += kF * (d * M + M + d);  // the GEMV
  w["bias_gradients"] = bias;
  if (traits.unit_norm_decoder) w["decoder_projection"] = projection_work(M, d);
  w["check"] = {P, kF * P};  // non-finite gradients: one pass
  if (s.clip) w["clip"] = {2 * P, kF * P};
  w["optimizer"] = s.adam ? adam_work(P, s.adam_first_moment) : Work{2 * P, kF * 3 * P};
  if (traits.unit_norm_decoder) w["renormalize"] = renormalize_work(M, d);
  w["statistics"] = {M, 8 * 3 * M};  // fired counts in, tokens since fired in and out
  return w;
}

}  // namespace saescale::metrics
