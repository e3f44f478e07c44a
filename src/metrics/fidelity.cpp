#include "metrics/fidelity.hpp"

#include <algorithm>

#include "kernels/gemm.hpp"

namespace saescale {

nlohmann::json Fidelity::to_json() const {
  auto opt = [](const std::optional<double>& v) {
    return v ? nlohmann::json(*v) : nlohmann::json();
  };
  return {{"fvu", fvu},
          {"l0", l0},
          {"shrinkage", shrinkage},
          {"mse", mse},
          {"eval_never_fired_fraction", never_fired_fraction},
          {"eval_tokens", tokens},
          {"mmcs", opt(mmcs)},
          {"recovered_fraction", opt(recovered_fraction)}};
}

Fidelity evaluate(Model& model, const Hyper& h, Precision p, const std::vector<float>& rows,
                  int64_t n) {
  // Chunks of the global batch: data-parallel rank q takes rows [q B, (q+1) B) of each chunk, so
  // the forward pass (BatchTopK's batch-wide selection included) sees what one rank would.
  const int64_t B = model.batch(), d = model.d(), M = model.width();
  auto& s = model.buffers();
  comm::Communicator& comms = model.comm();
  const int64_t chunk = s.global_batch, offset = s.row_offset;
  auto x_host = Kokkos::create_mirror_view(Kokkos::HostSpace(), s.x);
  Kokkos::View<int64_t*, MemSpace> row_l0("saescale::eval::row_l0", B);
  CountVector ever_fired("saescale::eval::ever_fired", M);
  auto f = s.f;
  auto fired = s.stats.fired_total();

  std::vector<double> mean(d, 0.0);
  for (int64_t r = 0; r < n; ++r)
    for (int64_t c = 0; c < d; ++c) mean[c] += rows[r * d + c];
  for (auto& m : mean) m /= n;

  // err, var, xhat2, x_dot_xhat come from the residual (replicated over lp: the lp leader counts
  // them); l0 from this shard's latents.
  double sums[5] = {0, 0, 0, 0, 0};
  double &err = sums[0], &var = sums[1], &xhat2 = sums[2], &x_dot_xhat = sums[3], &l0 = sums[4];
  const bool leader = s.lp_leader();
  for (int64_t first = 0; first < n; first += chunk) {
    for (int64_t r = 0; r < B; ++r) {
      const int64_t row = first + offset + r;
      const int64_t src = row < n ? row : row % n;  // padding rows repeat earlier rows
      std::copy(rows.begin() + src * d, rows.begin() + (src + 1) * d, &x_host(r, 0));
    }
    Kokkos::deep_copy(s.x, x_host);
    model.forward(h, p);
    model.materialize_f();
    Kokkos::parallel_for(
        "saescale::eval::row_l0", Kokkos::RangePolicy<ExecSpace>(0, B), KOKKOS_LAMBDA(int64_t b) {
          int64_t count = 0;
          for (int64_t i = 0; i < M; ++i) count += f(b, i) != 0;
          row_l0(b) = count;
        });
    Kokkos::parallel_for(
        "saescale::eval::ever_fired", Kokkos::RangePolicy<ExecSpace>(0, M),
        KOKKOS_LAMBDA(int64_t i) { ever_fired(i) += fired(i); });
    auto e = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), s.e);
    auto l0_host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), row_l0);
    for (int64_t r = 0; r < B && first + offset + r < n; ++r) {
      l0 += l0_host(r);
      if (!leader) continue;
      for (int64_t col = 0; col < d; ++col) {
        const double x = x_host(r, col), res = e(r, col), xhat = x - res;
        err += res * res;
        var += (x - mean[col]) * (x - mean[col]);
        xhat2 += xhat * xhat;
        x_dot_xhat += x * xhat;
      }
    }
  }
  comms.allreduce_host_sum("eval", comm::Group::world, sums, 5);
  comms.allreduce_sum("eval", comm::Group::dp, ever_fired);
  int64_t dead = 0;
  Kokkos::parallel_reduce(
      "saescale::eval::never_fired", Kokkos::RangePolicy<ExecSpace>(0, M),
      KOKKOS_LAMBDA(int64_t i, int64_t & acc) { acc += ever_fired(i) == 0; }, dead);
  comms.allreduce_host_sum("eval", comm::Group::lp, &dead, 1);

  Fidelity out;
  out.tokens = n;
  out.fvu = err / var;
  out.mse = err / n;
  out.l0 = l0 / n;
  out.shrinkage = xhat2 / x_dot_xhat;
  out.never_fired_fraction = double(dead) / model.global_width();
  return out;
}

void ground_truth_recovery(const Model& model, const std::vector<float>& dictionary,
                           Fidelity& out) {
  const int64_t d = model.d(), M = model.width(), F = static_cast<int64_t>(dictionary.size()) / d;
  Matrix truth("saescale::eval::true_dictionary", F, d);
  auto truth_host = Kokkos::create_mirror_view(Kokkos::HostSpace(), truth);
  std::copy(dictionary.begin(), dictionary.end(), truth_host.data());
  Kokkos::deep_copy(truth, truth_host);
  Matrix unit("saescale::eval::unit_decoder", M, d);
  Kokkos::deep_copy(unit, model.params().matrix("W_dec"));
  Kokkos::parallel_for(
      "saescale::eval::normalize_rows", Kokkos::RangePolicy<ExecSpace>(0, M),
      KOKKOS_LAMBDA(int64_t i) {
        double n2 = 0;
        for (int64_t c = 0; c < d; ++c) n2 += double(unit(i, c)) * unit(i, c);
        const real inv = n2 > 0 ? static_cast<real>(1 / kmath::sqrt(n2)) : real(0);
        for (int64_t c = 0; c < d; ++c) unit(i, c) *= inv;
      });
  Matrix cosines("saescale::eval::cosines", F, M);
  gemm(Trans::N, Trans::T, 1, truth, unit, 0, cosines);
  Vector best("saescale::eval::best_cosine", F);
  Kokkos::parallel_for(
      "saescale::eval::max_cosine", Kokkos::RangePolicy<ExecSpace>(0, F), KOKKOS_LAMBDA(int64_t j) {
        real m = -2;
        for (int64_t i = 0; i < M; ++i) m = cosines(j, i) > m ? cosines(j, i) : m;
        best(j) = m;
      });
  auto best_host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), best);
  // Each latent shard saw its own decoder rows: the best over all of them.
  std::vector<double> best_all(best_host.data(), best_host.data() + F);
  model.comm().allreduce_host_max("eval", comm::Group::lp, best_all.data(), static_cast<int>(F));
  for (int64_t j = 0; j < F; ++j) best_host(j) = static_cast<real>(best_all[j]);
  double sum = 0;
  int64_t recovered = 0;
  for (int64_t j = 0; j < F; ++j) {
    sum += best_host(j);
    recovered += best_host(j) > 0.9;
  }
  out.mmcs = sum / F;
  out.recovered_fraction = double(recovered) / F;
}

}  // namespace saescale
