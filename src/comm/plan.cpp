#include "comm/plan.hpp"

#include <algorithm>

#include "checked.hpp"
#include "comm/communicator.hpp"
#include "kernels/tiling.hpp"
#include "variant.hpp"

namespace saescale::comm {

std::map<std::string, PlannedPhase> communication_plan(const Config& cfg, int64_t d, int dp,
                                                       int lp) {
  const VariantTraits& traits = variant_traits(cfg.variant);
  using Selection = VariantTraits::Selection;
  using Auxiliary = VariantTraits::Auxiliary;
  const int world = dp * lp;
  const double B = double(cfg.batch_size) / dp, M = double(cfg.width) / lp;
  std::map<std::string, PlannedPhase> plan;
  // One collective: all-reduce of `bytes` over `ranks`, or all-gather of `bytes` from each rank.
  const auto allreduce = [&](const char* phase, const char* group, int ranks, double bytes,
                             double calls = 1) {
    if (ranks < 2) return;
    auto& p = plan[std::string("comm_") + phase];
    if (p.group.find(group) == std::string::npos)
      p.group += (p.group.empty() ? "" : "+") + std::string(group);
    p.calls += calls;
    p.payload_bytes += calls * bytes;
    p.sent_bytes += calls * allreduce_sent_bytes(bytes, ranks);
    p.collectives.push_back({"allreduce", group, ranks, bytes, calls});
  };
  const auto allgather = [&](const char* phase, const char* group, int ranks, double block) {
    if (ranks < 2) return;
    auto& p = plan[std::string("comm_") + phase];
    if (p.group.find(group) == std::string::npos)
      p.group += (p.group.empty() ? "" : "+") + std::string(group);
    p.calls += 1;
    p.payload_bytes += block * ranks;
    p.sent_bytes += allgather_sent_bytes(block, ranks);
    p.collectives.push_back({"allgather", group, ranks, block, 1});
  };

  // Forward: selection, decode, auxiliary losses, loss.
  if (traits.selection == Selection::row) allgather("selection", "lp", lp, B * cfg.k * 8);
  if (traits.selection == Selection::batch) {
    const bool global = cfg.batch_scope == "global";
    const int ranks = global ? world : lp;
    const char* group = global ? "world" : "lp";
    if (cfg.topk_algo == "radix") {
      allreduce("selection", group, ranks, 256 * 8, 4);  // one histogram per radix pass
    } else if (cfg.topk_algo == "filter") {
      // Radix passes over the candidates; the last also counts the ties each buffer dropped.
      allreduce("selection", group, ranks, 256 * 8, 3);
      allreduce("selection", group, ranks, 512 * 8, 1);
    } else
      allreduce("selection", group, ranks, 8, 34);  // the total, 32 bisection rounds, the rest
    allreduce("selection", group, ranks, 8);        // the smallest selected value
  }
  allreduce("decode", "lp", lp, B * d * 4);
  if (traits.auxiliary == Auxiliary::frozen_decoder) allreduce("auxiliary", "lp", lp, B * d * 4);
  if (traits.auxiliary == Auxiliary::auxk && cfg.aux_k > 0) {
    allreduce("auxiliary", "lp", lp, 8);  // the dead count
    allgather("auxiliary", "lp", lp, B * std::min(cfg.aux_k, cfg.width) * 8);
    allreduce("auxiliary", "lp", lp, B * d * 4);  // e_aux
    allreduce("auxiliary", "dp", dp, d * 4);      // mean residual
    allreduce("auxiliary", "dp", dp, 8);          // residual energy
  }
  allreduce("loss", "world", world, 3 * 8);
  // Backward and update.
  if (traits.subtracts_decoder_bias) allreduce("bias_gradient", "lp", lp, d * 4);
  allreduce("gradients", "dp", dp, traits.parameter_count(d, cfg.width / lp) * 4.0, 1);
  if (dp > 1) {  // three buckets (before W_dec, W_dec, after it) split the same bytes
    auto& g = plan["comm_gradients"];
    g.calls = 3;
    g.collectives.back().calls = 3;
    g.collectives.back().bytes /= 3;  // ring time is linear in bytes: 3 equal messages, same total
  }
  const double clip = cfg.clip_norm.value_or(traits.defaults.clip_norm);
  if (clip > 0) allreduce("clip", "lp", lp, 8);
  allreduce("statistics", "dp", dp, M * 8);  // fired counts per latent
  // What every rank must decide together, in one all-reduce (Trainer::step): the L0 count,
  // non-finite values per gradient tensor, a stop signal, a checkpoint due by the clock.
  allreduce("statistics", "world", world, 8.0 * (traits.parameters.size() + 3));
  return plan;
}

nlohmann::json memory_plan(const Config& cfg, int64_t d, int dp, int lp, bool adam_first_moment,
                           int64_t true_features) {
  const VariantTraits& traits = variant_traits(cfg.variant);
  using Auxiliary = VariantTraits::Auxiliary;
  const int64_t B = cfg.batch_size / dp, M = cfg.width / lp, f = sizeof(real);
  // Every product below is of these sizes: bounded, none of the sums can wrap.
  checked_elements(B, M, "--batch-size x --width (per rank)");
  checked_elements(B, d, "--batch-size x --d-model (per rank)");
  checked_elements(M, d, "--width x --d-model (per rank)");
  checked_elements(true_features, std::max(d, M), "the true dictionary's features x width");
  checked_elements(B, checked_elements(std::max(cfg.k, cfg.aux_k), lp + 1, "--k x (shards + 1)"),
                   "--batch-size x --k x (shards + 1)");
  const int64_t slots = accumulator_slots();  // per-thread accumulators on CPUs, 1 on GPUs
  const int64_t P = traits.parameter_count(d, M);
  const int64_t moments = cfg.optimizer == "adam" ? (adam_first_moment ? 2 : 1) : 0;
  // The step's buffers: pi, f, g [B, M]; x, e (and x - b_dec) [B, d]; Gated's ReLU(pi_gate) and
  // its residual; AuxK's z, g_z and e_aux.
  const bool auxiliary = traits.auxiliary != Auxiliary::none;
  const int64_t activations =
      f * (B * M * (3 + traits.extra_bm_buffers) +
           B * d * ((traits.subtracts_decoder_bias ? 3 : 2) + (auxiliary ? 1 : 0)));
  // Per-latent state: active/fired counts and activation sums per accumulator slot, the variant's
  // per-slot gradient accumulators, dead flags, tokens since fired, sum of g_pi, and per-latent
  // values (thresholds, decoder norms, magnitude scales).
  const int64_t latent_state = 8 * slots * M * (3 + traits.per_latent_accumulators) + 8 * 2 * M +
                               f * 2 * M + 8 * slots * d +
                               (traits.auxiliary == Auxiliary::auxk ? f * d : 0);
  // Evaluation: per-row L0 and ever-fired counts; with a true dictionary of F features, it, the
  // unit decoder rows and their F x M cosines.
  const int64_t F = true_features;
  const int64_t evaluation = 8 * (B + M) + (F > 0 ? f * (F * d + M * d + F * M + F) : 0);
  const int64_t candidates =
      lp > 1 && traits.selects() ? (1 + lp) * B * std::max(cfg.k, cfg.aux_k) * 8 + 8 * B : 0;
  // --sparse on (Model::enable_sparse): two sets of rows (f, g_pi: int32 latent + float value per
  // slot, a count per row), g_f's and g_pi's values at f's entries and two latent indices.
  const int64_t cap = std::max<int64_t>(1, std::min(cfg.sparse_capacity_or_default(), M));
  const int64_t sparse_rows = cfg.sparse != "off" ? 2 * (B * cap * 8 + 4 * B + 8) + 8 * B * cap +
                                                        2 * (4 * (2 * M + 1) + 4 * B * cap)
                                                  : 0;
  return {{"parameters", P * f},
          {"gradients", P * f},
          {"optimizer_state", moments * P * f},
          {"activations", activations + sparse_rows},
          {"latent_state", latent_state},
          {"evaluation", evaluation},
          {"communication_buffers", candidates}};
}

}  // namespace saescale::comm
