// `saescale grad`: loss and raw gradients of ONE batch (all rows of the data) from given weights,
// before any projection, clipping or optimiser, with the full sparsity coefficient.
#include <cstdio>

#include "checked.hpp"
#include "cli/commands.hpp"
#include "data/source.hpp"
#include "error.hpp"
#include "host_memory.hpp"
#include "io/results.hpp"
#include "io/safetensors.hpp"
#include "trainer.hpp"

namespace saescale::cli {

int grad(const Config& cfg) {
  if (cfg.out.empty()) throw Error("grad needs --out FILE.safetensors");
  check_output_path(cfg.out, cfg.force, input_files(cfg));
  const Precision precision = parse_precision(cfg.precision);
  check_precision_supported(precision);
  auto data = open_data_source({cfg.data, cfg.d_model, cfg.seed, 1, 0, ""});
  const int64_t n = data->total_rows();
  if (n <= 0) throw Error("grad needs a finite data set: a file, or synthetic:...,tokens=N");
  const int64_t d = data->dim();
  if (cfg.width <= 0 && cfg.init.empty()) throw Error("grad needs --width or --init");

  SavedSae saved;
  if (!cfg.init.empty()) saved = read_saved_sae(cfg.init);
  // With --init: the saved SAE's variant and k (cfg.json).
  const Config run = cfg.init.empty() ? cfg : with_saved_sae(cfg, saved);
  auto& weights = saved.tensors;
  int64_t width = cfg.width;
  if (!cfg.init.empty()) {
    for (const auto& t : weights)
      if (t.name == "W_enc" && t.shape.size() == 2) width = t.shape[1];
    if (cfg.width > 0 && cfg.width != width)
      throw Error("--width " + std::to_string(cfg.width) + " but the weights in " + cfg.init +
                  " have " + std::to_string(width) + " latents");
  }
  // One batch of every row: its [n, d] copy on the host, its [n, M] buffers on the device.
  const int64_t row_floats = checked_elements(n, d, "grad's rows x d");
  checked_elements(n, width, "grad's rows x latents");
  check_host_memory(4 * row_floats, "grad's " + std::to_string(n) + " rows",
                    "give it fewer rows (grad runs them as one batch)");
  Model model(run.variant, d, width);
  std::vector<float> rows(row_floats);
  data->read_rows(0, n, rows.data());
  check_finite_rows(rows, n, d, cfg.data);
  const double s = estimate_norm_scale(cfg.normalize, rows, n, d);
  const Resolved r = resolve_hyper(run, model.variant().traits().defaults);
  const Hyper h = make_hyper(run, r, width);

  model.allocate(n);
  if (cfg.sparse != "off") model.enable_sparse(run.sparse_capacity_or_default());
  model.initialize(h, cfg.seed);
  if (!weights.empty()) model.import_tensors(std::move(weights), s, cfg.init, saved.applies_b_dec);
  // The AuxK dead set is empty in `grad` unless --dead-latents names one.
  if (!cfg.dead_latents.empty()) {
    auto dead = Kokkos::create_mirror_view(Kokkos::HostSpace(), model.buffers().dead);
    for (int64_t i : cfg.dead_latents) {
      if (i < 0 || i >= width)
        throw Error("--dead-latents: latent " + std::to_string(i) + " out of range");
      dead(i) = 1;
    }
    Kokkos::deep_copy(model.buffers().dead, dead);
  }
  auto x = Kokkos::create_mirror_view(Kokkos::HostSpace(), model.buffers().x);
  for (int64_t i = 0; i < n * d; ++i) x.data()[i] = static_cast<float>(rows[i] * s);
  Kokkos::deep_copy(model.buffers().x, x);

  const LossParts loss = model.forward_backward(h, precision);
  auto tensors = model.params().to_tensors(/*gradients=*/true);
  tensors.push_back({"loss", {}, {static_cast<float>(loss.total())}});
  // Which path each product took (--sparse on): "decode=sparse,encoder_gradient=dense,...".
  std::string paths;
  if (model.sparse())
    for (const auto& [product, c] : model.sparse()->counts())
      paths += (paths.empty() ? "" : ",") + product + "=" + (c.dense ? "dense" : "sparse");
  io::write_safetensors(cfg.out, tensors,
                        {{"variant", run.variant},
                         {"rows", std::to_string(n)},
                         {"mse", std::to_string(loss.mse)},
                         {"penalty", std::to_string(loss.penalty)},
                         {"auxiliary", std::to_string(loss.auxiliary)},
                         {"norm_scale", std::to_string(s)},
                         {"sparse_paths", paths.empty() ? "off" : paths}});
  std::printf(
      "grad: %s on %lld rows: loss %.8g (mse %.8g + sparsity %.8g + auxiliary %.8g) -> %s\n",
      run.variant.c_str(), (long long)n, loss.total(), loss.mse, loss.penalty, loss.auxiliary,
      cfg.out.c_str());
  return 0;
}

}  // namespace saescale::cli
