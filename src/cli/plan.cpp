// `saescale plan`: what a training step would communicate and hold per rank, from the shapes
// alone (nothing is allocated), for any size and grid: the same functions the trainer reports.
#include <algorithm>
#include <cstdio>

#include "cli/commands.hpp"
#include "comm/grid.hpp"
#include "comm/plan.hpp"
#include "data/synthetic.hpp"
#include "error.hpp"
#include "io/results.hpp"
#include "metrics/work_model.hpp"
#include "trainer.hpp"
#include "variant.hpp"

namespace saescale::cli {

int plan(const Config& cfg) {
  if (cfg.d_model <= 0) throw Error("saescale plan needs --d-model");
  if (cfg.width <= 0) throw Error("saescale plan needs --width");
  const int64_t lp = cfg.lp, dp = cfg.dp > 0 ? cfg.dp : 1;
  comm::check_grid(static_cast<int>(dp * lp), dp, lp);
  if (cfg.width % lp != 0)
    throw Error("--width " + std::to_string(cfg.width) + " is not divisible by --lp " +
                std::to_string(lp));
  if (cfg.batch_size % dp != 0)
    throw Error("--batch-size " + std::to_string(cfg.batch_size) + " is not divisible by --dp " +
                std::to_string(dp));
  const VariantTraits& traits = variant_traits(cfg.variant);
  const double beta1 = cfg.adam_beta1.value_or(traits.defaults.adam_beta1);
  const auto phases = comm::communication_plan(cfg, cfg.d_model, dp, lp);
  // Synthetic data brings its true dictionary, which evaluation compares the decoder with.
  const bool synthetic = cfg.data == "synthetic" || cfg.data.rfind("synthetic:", 0) == 0;
  const int64_t features =
      synthetic ? SyntheticSpec::parse(cfg.data, cfg.d_model, cfg.seed).features : 0;
  const auto memory = comm::memory_plan(cfg, cfg.d_model, dp, lp, beta1 != 0, features);

  std::printf("saescale plan: %s, d=%lld, M=%lld, B=%lld, grid dp %lld x lp %lld (%lld ranks)\n",
              cfg.variant.c_str(), (long long)cfg.d_model, (long long)cfg.width,
              (long long)cfg.batch_size, (long long)dp, (long long)lp, (long long)(dp * lp));
  std::printf(
      "communication per step, per rank (ring volumes: all-reduce 2(n-1)/n, all-gather "
      "(n-1)/n of the payload):\n");
  std::printf("  %-22s %-9s %6s %14s %14s\n", "phase", "group", "calls", "payload MiB", "sent MiB");
  double total = 0;
  nlohmann::json out_phases = nlohmann::json::object();
  for (const auto& [name, p] : phases) {
    std::printf("  %-22s %-9s %6.0f %14.3f %14.3f\n", name.c_str(), p.group.c_str(), p.calls,
                p.payload_bytes / 1048576.0, p.sent_bytes / 1048576.0);
    total += p.sent_bytes;
    nlohmann::json collectives = nlohmann::json::array();
    for (const auto& c : p.collectives)
      collectives.push_back({{"kind", c.kind},
                             {"group", c.group},
                             {"ranks", c.ranks},
                             {"bytes", c.bytes},
                             {"calls", c.calls}});
    out_phases[name] = {{"group", p.group},
                        {"calls", p.calls},
                        {"payload_bytes", p.payload_bytes},
                        {"sent_bytes", p.sent_bytes},
                        {"collectives", collectives}};
  }
  std::printf("  %-22s %-9s %6s %14s %14.3f\n", "total", "", "", "", total / 1048576.0);
  int64_t bytes = 0;
  std::printf("memory per rank:");
  for (const auto& [name, v] : memory.items()) {
    std::printf(" %s %.3f GiB,", name.c_str(), v.get<double>() / 1073741824.0);
    bytes += v.get<int64_t>();
  }
  std::printf(" total %.3f GiB\n", bytes / 1073741824.0);
  if (!cfg.out.empty()) {
    check_output_path(cfg.out, cfg.force);
    // One rank's shapes and the work model's FLOPs and bytes per phase on them (AuxK planned as
    // active, as the communication is): what a projection scales measured phase times by.
    metrics::WorkShape shape;
    shape.variant = cfg.variant;
    shape.B = double(cfg.batch_size / dp);
    shape.d = double(cfg.d_model);
    shape.M = double(cfg.width / lp);
    shape.P = double(traits.parameter_count(cfg.d_model, cfg.width / lp));
    shape.k = double(cfg.k);
    shape.aux_k = traits.auxiliary == VariantTraits::Auxiliary::auxk
                      ? double(std::min(cfg.aux_k, cfg.width))
                      : 0.0;
    shape.topk_algo = cfg.topk_algo;
    shape.adam = cfg.optimizer == "adam";
    shape.adam_first_moment = beta1 != 0;
    shape.clip = cfg.clip_norm.value_or(traits.defaults.clip_norm) > 0;
    nlohmann::json work = nlohmann::json::object();
    for (const auto& [phase, w] : metrics::work_model(shape))
      work[phase] = {{"flops", w.flops}, {"bytes", w.bytes}};
    nlohmann::json config = cfg.to_json();
    write_results(
        cfg.out,
        {{"schema", "saescale.plan/1"},
         {"config", config},
         {"grid", {{"dp", dp}, {"lp", lp}}},
         {"local_shape", {{"B", shape.B}, {"M", shape.M}, {"d", shape.d}, {"P", shape.P}}},
         {"work_per_step", work},
         {"communication_per_step", out_phases},
         {"sent_bytes_per_step", total},
         {"memory_per_rank", memory}},
        cfg.force);
    std::printf("plan: %s\n", cfg.out.c_str());
  }
  return 0;
}

}  // namespace saescale::cli
