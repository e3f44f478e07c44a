#include "comm/selection.hpp"

#include <algorithm>
#include <limits>

namespace saescale::comm {

bool ShardedRowTopK::run(Communicator& comm, const Matrix& values, const Vector& bias, int64_t k,
                         kernels::TopkAlgo algo, const Matrix& out, int64_t latent_offset,
                         const CountVector& eligible, int64_t eligible_here,
                         const CountVector& active, const CountVector& fired, real fire_threshold,
                         const char* phase, const kernels::SelectedEntries& entries) {
  const int lp = comm.size(Group::lp);
  if (lp == 1) {
    kernels::row_topk(values, bias, k, algo, out, eligible, active, fired, fire_threshold, entries);
    return entries.count.extent(0) > 0;
  }
  const int64_t rows = out.extent(0);
  const int64_t here = eligible_here < 0 ? static_cast<int64_t>(out.extent(1)) : eligible_here;
  const int64_t k_here = std::min(k, here);
  if (k_here > 0)
    kernels::row_topk(values, bias, k_here, algo, out, eligible);
  else
    Kokkos::deep_copy(out, 0.f);
  if (static_cast<int64_t>(candidates_.size()) != rows * k) {
    candidates_ = kernels::KeyVector("saescale::select::candidates", rows * k);
    all_candidates_ = kernels::KeyVector("saescale::select::all_candidates", lp * rows * k);
    kth_ = kernels::KeyVector("saescale::select::kth_key", rows);
  }
  kernels::row_candidates(out, k, latent_offset, candidates_);
  comm.allgather(phase, Group::lp, candidates_, all_candidates_);
  kernels::row_kth_key(all_candidates_, lp, rows, k, kth_);
  kernels::keep_selected(out, latent_offset, kth_, active, fired, fire_threshold);
  return false;
}

namespace {
// Entries equal to the threshold before each of this rank's rows in the global row-major order:
// ranks are ordered (dp rank, lp rank); row b of dp rank q comes after every row of lower dp
// ranks, and within one global row the lp shards come in order.
std::vector<int64_t> ties_before(Communicator& comm, Group g, const std::vector<int64_t>& ties) {
  const int ranks = comm.size(g), me = comm.rank(g), lp = comm.size(Group::lp);
  const int64_t rows = static_cast<int64_t>(ties.size());
  std::vector<int64_t> all(ranks * rows);
  comm.allgather_host("selection", g, ties.data(), static_cast<int>(rows), all.data());
  std::vector<int64_t> before(rows, 0);
  for (int r = 0; r < ranks; ++r) {
    const int64_t* t = all.data() + r * rows;
    if (r / lp < me / lp) {  // an earlier replica: all its rows come first
      int64_t total = 0;
      for (int64_t b = 0; b < rows; ++b) total += t[b];
      for (auto& x : before) x += total;
    } else if (r / lp == me / lp) {  // this replica: its rows < b, and row b of earlier shards
      int64_t running = 0;
      for (int64_t b = 0; b < rows; ++b) {
        before[b] += running + (r % lp < me % lp ? t[b] : 0);
        running += t[b];
      }
    }
  }
  return before;
}
}  // namespace

double sharded_batch_topk(Communicator& comm, Group g, const Matrix& values, const Vector& bias,
                          int64_t k_global, kernels::TopkAlgo algo, const Matrix& out,
                          const CountVector& active, const CountVector& fired,
                          real fire_threshold) {
  kernels::SelectionGroup group{
      [&](int64_t* counts, int n) { comm.allreduce_host_sum("selection", g, counts, n); },
      [&](const std::vector<int64_t>& ties) { return ties_before(comm, g, ties); }};
  const double smallest = kernels::batch_topk(values, bias, k_global, algo, out, active, fired,
                                              fire_threshold, comm.size(g) > 1 ? &group : nullptr);
  const double none = std::numeric_limits<double>::infinity();
  const double global = comm.allreduce_host_min("selection", g, smallest > 0 ? smallest : none);
  return global == none ? 0.0 : global;
}

}  // namespace saescale::comm
