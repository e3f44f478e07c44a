// What is fixed about a variant, in one record per variant (src/variants/registry.cpp): how it
// encodes, what constrains its decoder, how its sparsity is set, its auxiliary loss, its defaults,
// its parameters and the work its activation does per element. Everything outside src/variants/
// (the work model, the communication and memory plans, `plan`, the options, the trainer, the
// files) asks this record; nothing compares variant names. Host-only C++: no Kokkos.
#pragma once
#include <cstdint>
#include <deque>
#include <string>
#include <vector>

namespace saescale {

// Hyper-parameter defaults (docs/variants.md). Warm-ups given as steps are capped at
// `warmup_cap_frac` of the run for short runs; a fraction-based warm-up (ReLU) is given as *_frac.
struct VariantDefaults {
  double lr, adam_beta1, adam_beta2, adam_eps, clip_norm;
  double sparsity_coeff;
  int64_t lr_warmup_steps = 0;
  double lr_decay_frac = 0;
  int64_t sparsity_warmup_steps = 0;
  double sparsity_warmup_frac = 0;  // used instead of steps when > 0
  double decoder_init_norm = 1.0;
  double warmup_cap_frac = 0.2;
};

// A parameter tensor by role: its shape in d (the input dimension) and M (latents on this rank).
struct ParamShape {
  enum class Dims { d_by_m, m_by_d, m, d } dims;
  const char* name;
};

struct VariantTraits {
  const char* name;
  const char* architecture;  // SAELens cfg.json "architecture"
  const char* exported_as;   // the variant whose layout saved weights have (BatchTopK: jumprelu)
  VariantDefaults defaults;
  std::vector<ParamShape> parameters;  // SAELens names, file order

  bool subtracts_decoder_bias;  // encodes x - b_dec
  bool unit_norm_decoder;       // decoder rows projected and renormalised every step
  // How the active set is chosen: elementwise (a threshold or ReLU), the k largest of each row, or
  // the k B largest of the batch.
  enum class Selection { elementwise, row, batch } selection;
  // What sets the starting sparsity: --initial-l0 moves JumpReLU's threshold or the encoder bias;
  // selection variants have exactly k.
  enum class Start { threshold, encoder_bias, k } start;
  // The auxiliary loss: none, Gated's reconstruction through the frozen decoder (one more decoder
  // GEMM and one more g W_dec^T, a B x M and a B x d buffer), or AuxK on the dead latents.
  enum class Auxiliary { none, frozen_decoder, auxk } auxiliary;
  bool b_dec_from_data;  // b_dec starts at the data's geometric median (or mean)

  // The elementwise activation's work (selection variants count passes instead,
  // metrics/work_model.cpp): FLOPs and fp32 values moved per element of B x M and per latent.
  struct ElementWork {
    double flops_per_element, values_per_element, values_per_latent;
  } forward, backward;
  int per_latent_accumulators;  // [slots, M] double accumulators of its per-latent gradients
  int extra_bm_buffers;         // [B, M] buffers beyond pi, f, g (Gated's gate; AuxK's z, g_z)

  bool selects() const { return selection != Selection::elementwise; }
  // Parameters of one rank that holds `m` latents.
  int64_t parameter_count(int64_t d, int64_t m) const {
    int64_t n = 0;
    for (const ParamShape& p : parameters)
      n += p.dims == ParamShape::Dims::d_by_m || p.dims == ParamShape::Dims::m_by_d ? d * m
           : p.dims == ParamShape::Dims::m                                          ? m
                                                                                    : d;
    return n;
  }
  // Entries per row the sparse rows start with: k for TopK (never more), 32 k otherwise.
  int64_t default_sparse_capacity(int64_t k) const {
    return selection == Selection::row ? k : 32 * k;
  }
};

// The record of `name`; an unknown name is one clear error listing the known ones.
const VariantTraits& variant_traits(const std::string& name);
// Every registered variant, in registration order (a deque: records never move, so references
// to them stay valid when a variant is registered).
const std::deque<VariantTraits>& all_variant_traits();
std::vector<std::string> variant_names();
// The variant that loads a SAELens file of `architecture` (cfg.json): the one saved in that
// layout as itself ("standard" -> relu, "jumprelu" -> jumprelu, ...); empty if none.
std::string variant_for_architecture(const std::string& architecture);
// A variant added outside src/variants/ (a test's toy variant): its record joins the registry.
void register_variant_traits(const VariantTraits& traits);

}  // namespace saescale
