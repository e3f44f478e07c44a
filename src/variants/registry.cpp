// The variants' records (traits.hpp): every fact about a variant that code outside its own file
// needs. Adding a variant: its file in src/variants/ (the Variant subclass), its rule in
// kernels/activations/ (if elementwise), its record here and its factory in variants/factory.cpp.
#include "variants/traits.hpp"

#include "error.hpp"

namespace saescale {

namespace {

using D = ParamShape::Dims;
using T = VariantTraits;

const std::vector<ParamShape> kStandard = {
    {D::d_by_m, "W_enc"}, {D::m, "b_enc"}, {D::m_by_d, "W_dec"}, {D::d, "b_dec"}};

std::vector<ParamShape> with(std::vector<ParamShape> base, ParamShape extra) {
  base.push_back(extra);
  return base;
}

// Work per element of the activation (traits.hpp): FLOPs, fp32 values per element, per latent.
std::deque<VariantTraits>& registry() {
  static std::deque<VariantTraits> records = {
      // ReLU, Anthropic's April 2024 recipe (docs/variants.md): L1 weighted by decoder norms.
      {"relu",
       "standard",
       "relu",
       [] {
         VariantDefaults d{};
         d.lr = 5e-5, d.adam_beta1 = 0.9, d.adam_beta2 = 0.999, d.adam_eps = 1e-8;
         d.clip_norm = 1.0, d.sparsity_coeff = 5.0, d.sparsity_warmup_frac = 0.05;
         d.lr_decay_frac = 0.2, d.decoder_init_norm = 0.1;
         return d;
       }(),
       kStandard,
       /*subtracts_decoder_bias=*/false,
       /*unit_norm_decoder=*/false,
       T::Selection::elementwise,
       T::Start::encoder_bias,
       T::Auxiliary::none,
       /*b_dec_from_data=*/false,
       {2, 2, 1},  // pi + b, max; f
       {3, 3, 2},  // pi, g in; g out
       1,
       0},
      // JumpReLU: a threshold per latent, L0 through a rectangle straight-through estimator.
      {"jumprelu",
       "jumprelu",
       "jumprelu",
       [] {
         VariantDefaults d{};
         d.lr = 7e-5, d.adam_beta1 = 0.0, d.adam_beta2 = 0.999, d.adam_eps = 1e-8;
         d.clip_norm = 0.0, d.sparsity_coeff = 1e-3, d.lr_warmup_steps = 1000;
         d.sparsity_warmup_steps = 10000;
         // SAELens' start: at norm 1 and M/d = 8 the first reconstructions overshoot x by about
         // M/2d and a short run diverges (runs/study-jumprelu-start.sh, docs/variants.md).
         d.decoder_init_norm = 0.1;
         return d;
       }(),
       with(kStandard, {D::m, "log_threshold"}),
       false,
       true,
       T::Selection::elementwise,
       T::Start::threshold,
       T::Auxiliary::none,
       false,
       {3, 2, 2},  // + compare with theta
       {6, 3, 3},  // + the window test
       2,
       0},
      // Gated: gate and magnitude paths sharing W_enc; L1 on ReLU(pi_gate); an auxiliary
      // reconstruction through the frozen decoder.
      {"gated",
       "gated",
       "gated",
       [] {
         VariantDefaults d{};
         d.lr = 5e-5, d.adam_beta1 = 0.0, d.adam_beta2 = 0.999, d.adam_eps = 1e-8;
         d.clip_norm = 0.0, d.sparsity_coeff = 0.5, d.lr_warmup_steps = 1000;
         d.sparsity_warmup_steps = 2000;
         return d;
       }(),
       {{D::d_by_m, "W_enc"},
        {D::m, "b_gate"},
        {D::m, "r_mag"},
        {D::m, "b_mag"},
        {D::m_by_d, "W_dec"},
        {D::d, "b_dec"}},
       true,
       true,
       T::Selection::elementwise,
       T::Start::encoder_bias,
       T::Auxiliary::frozen_decoder,
       false,
       {6, 3, 4},   // f and ReLU(pi_gate)
       {10, 4, 5},  // + the auxiliary gradient
       4,
       1},
      // TopK: the k largest pre-activations of each row, ReLU after selection, AuxK.
      {"topk",
       "topk",
       "topk",
       [] {
         VariantDefaults d{};
         d.lr = 1e-4, d.adam_beta1 = 0.9, d.adam_beta2 = 0.999, d.adam_eps = 6.25e-10;
         d.clip_norm = 0.0, d.sparsity_coeff = 0.0;  // k sets the sparsity
         return d;
       }(),
       kStandard,
       true,
       true,
       T::Selection::row,
       T::Start::k,
       T::Auxiliary::auxk,
       true,
       {0, 0, 0},  // selection passes instead (metrics/work_model.cpp)
       {1, 3, 1},  // selection masks: f (and z), g in; g out
       1,
       2},
      // BatchTopK: the k B largest over the batch; saved as a JumpReLU SAE.
      {"batchtopk",
       "jumprelu",
       "jumprelu",
       [] {
         VariantDefaults d{};
         d.lr = 1e-4, d.adam_beta1 = 0.9, d.adam_beta2 = 0.999, d.adam_eps = 6.25e-10;
         d.clip_norm = 0.0, d.sparsity_coeff = 0.0;
         return d;
       }(),
       kStandard,
       true,
       true,
       T::Selection::batch,
       T::Start::k,
       T::Auxiliary::auxk,
       true,
       {0, 0, 0},
       {1, 3, 1},
       1,
       2},
  };
  return records;
}

}  // namespace

const VariantTraits& variant_traits(const std::string& name) {
  for (const auto& t : registry())
    if (name == t.name) return t;
  std::string known;
  for (const auto& t : registry()) known += std::string(known.empty() ? "" : ", ") + t.name;
  throw Error("variant '" + name + "' is not implemented in this build (available: " + known + ")");
}

const std::deque<VariantTraits>& all_variant_traits() { return registry(); }

std::vector<std::string> variant_names() {
  std::vector<std::string> names;
  for (const auto& t : registry()) names.push_back(t.name);
  return names;
}

std::string variant_for_architecture(const std::string& architecture) {
  for (const auto& t : registry())
    if (architecture == t.architecture && std::string(t.exported_as) == t.name) return t.name;
  return "";
}

void register_variant_traits(const VariantTraits& traits) {
  for (const auto& t : registry())
    if (std::string(t.name) == traits.name)
      throw Error(std::string("variant '") + traits.name + "' is registered twice");
  registry().push_back(traits);
}

}  // namespace saescale
