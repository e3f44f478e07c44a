#include "kernels/select/topk.hpp"

#include "kernels/tiling.hpp"
#include "src/error.hpp"

namespace saescale::kernels {

TopkAlgo parse_topk_algo(const std::string& name) {
  if (name == "radix") return TopkAlgo::radix;
  if (name == "bisect") return TopkAlgo::bisect;
  throw Error("unknown --topk-algo '" + name + "' (choose radix or bisect)");
}

const char* topk_algo_name(TopkAlgo a) { return a == TopkAlgo::radix ? "radix" : "bisect"; }

namespace {

using Team = Kokkos::TeamPolicy<ExecSpace>::member_type;
using Histogram = Kokkos::View<int64_t*, ExecSpace::scratch_memory_space, Kokkos::MemoryUnmanaged>;

struct Threshold {
  uint32_t key;        // the k-th largest key
  int64_t take_equal;  // how many entries with exactly this key are selected (lowest index first)
  int64_t equal;       // how many entries have exactly this key
};

// Per-latent counts of the selected, positive entries (no-op when the views are empty).
KOKKOS_INLINE_FUNCTION void count_selected(const CountVector& active, const CountVector& fired,
                                           real fire_threshold, int64_t i, real v) {
  if (!active.extent(0) || !(v > 0)) return;
  Kokkos::atomic_add(&active(i), int64_t(1));
  if (v > fire_threshold) Kokkos::atomic_add(&fired(i), int64_t(1));
}

struct RowTopK {
  Matrix values, out;
  Vector bias;
  CountVector eligible, active, fired;
  real fire_threshold;
  int64_t k;
  TopkAlgo algo;

  KOKKOS_INLINE_FUNCTION real value(int64_t b, int64_t i) const {
    return bias.extent(0) ? values(b, i) + bias(i) : values(b, i);
  }
  KOKKOS_INLINE_FUNCTION uint32_t key(int64_t b, int64_t i) const {
    return eligible.extent(0) && !eligible(i) ? kExcluded : order_key(value(b, i));
  }

  KOKKOS_INLINE_FUNCTION int64_t count_at_least(const Team& team, int64_t b, uint32_t t) const {
    int64_t c = 0;
    Kokkos::parallel_reduce(
        Kokkos::TeamThreadRange(team, values.extent(1)),
        [&](int64_t i, int64_t& acc) {
          const uint32_t kk = key(b, i);
          acc += kk != kExcluded && kk >= t;
        },
        c);
    return c;
  }

  KOKKOS_INLINE_FUNCTION Threshold radix(const Team& team, int64_t b) const {
    Histogram hist(team.team_scratch(0), 256);
    uint32_t prefix = 0, mask = 0;
    int64_t remaining = k, equal = 0;
    for (int shift = 24; shift >= 0; shift -= 8) {
      Kokkos::parallel_for(Kokkos::TeamThreadRange(team, 256), [&](int d) { hist(d) = 0; });
      team.team_barrier();
      // A one-thread team (CPUs) counts without atomics: a locked add per element costs ~20x.
      const bool alone = team.team_size() == 1;
      Kokkos::parallel_for(Kokkos::TeamThreadRange(team, values.extent(1)), [&](int64_t i) {
        const uint32_t kk = key(b, i);
        if (kk == kExcluded || (kk & mask) != prefix) return;
        int64_t& bin = hist((kk >> shift) & 255u);
        if (alone)
          ++bin;
        else
          Kokkos::atomic_add(&bin, int64_t(1));
      });
      team.team_barrier();
      int64_t digit = 0, still = remaining;
      Kokkos::single(
          Kokkos::PerTeam(team),
          [&](int64_t& d) {
            int64_t above = 0;
            for (d = 255; d > 0 && above + hist(d) < remaining; --d) above += hist(d);
          },
          digit);
      Kokkos::single(
          Kokkos::PerTeam(team),
          [&](int64_t& r) {
            int64_t above = 0;
            for (int64_t d = 255; d > digit; --d) above += hist(d);
            r = remaining - above;
          },
          still);
      remaining = still;
      prefix |= uint32_t(digit) << shift;
      mask |= 255u << shift;
      equal = hist(digit);
      team.team_barrier();
    }
    return {prefix, remaining, equal};
  }

  KOKKOS_INLINE_FUNCTION Threshold bisect(const Team& team, int64_t b) const {
    uint32_t lo = 1, hi = 0xffffffffu;  // the largest t with count(key >= t) >= k
    int64_t at_lo = count_at_least(team, b, lo);
    while (lo < hi) {
      const uint32_t mid = lo + (hi - lo) / 2 + 1;
      const int64_t c = count_at_least(team, b, mid);
      if (c >= k)
        lo = mid, at_lo = c;
      else
        hi = mid - 1;
    }
    const int64_t above = lo == 0xffffffffu ? 0 : count_at_least(team, b, lo + 1);
    return {lo, k - above, at_lo - above};
  }

  KOKKOS_INLINE_FUNCTION void operator()(const Team& team) const {
    const int64_t b = team.league_rank();
    const Threshold t = algo == TopkAlgo::radix ? radix(team, b) : bisect(team, b);
    if (t.take_equal == t.equal) {  // no tie to break (the usual case): one plain pass
      Kokkos::parallel_for(Kokkos::TeamThreadRange(team, values.extent(1)), [&](int64_t i) {
        const uint32_t kk = key(b, i);
        const real v = value(b, i), o = kk >= t.key && kk != kExcluded && v > 0 ? v : real(0);
        out(b, i) = o;
        count_selected(active, fired, fire_threshold, i, o);
      });
      return;
    }
    // Selected: key > T, and the first take_equal entries with key == T in index order.
    Kokkos::parallel_scan(Kokkos::TeamThreadRange(team, values.extent(1)),
                          [&](int64_t i, int64_t& equal_before, bool final) {
                            const uint32_t kk = key(b, i);
                            const bool equal = kk == t.key && kk != kExcluded;
                            if (final) {
                              const bool take =
                                  (kk > t.key) || (equal && equal_before < t.take_equal);
                              const real v = value(b, i), o = take && v > 0 ? v : real(0);
                              out(b, i) = o;
                              count_selected(active, fired, fire_threshold, i, o);
                            }
                            equal_before += equal;
                          });
  }
};

}  // namespace

void row_topk(const Matrix& values, const Vector& bias, int64_t k, TopkAlgo algo, const Matrix& out,
              const CountVector& eligible, const CountVector& active, const CountVector& fired,
              real fire_threshold) {
  const int64_t rows = values.extent(0);
  Kokkos::TeamPolicy<ExecSpace> policy(rows, Kokkos::AUTO);
  policy.set_scratch_size(0, Kokkos::PerTeam(Histogram::shmem_size(256)));
  Kokkos::parallel_for(
      algo == TopkAlgo::radix ? "saescale::select::row_topk_radix"
                              : "saescale::select::row_topk_bisect",
      policy, RowTopK{values, out, bias, eligible, active, fired, fire_threshold, k, algo});
}

namespace {

// ReLU(values + bias) of entry (b, i), for the batch-wide selection. The passes below walk rows
// and columns (a flat index would need a modulo per element to find the bias: measured 5x slower).
struct BatchValue {
  Matrix values;
  Vector bias;
  KOKKOS_INLINE_FUNCTION real operator()(int64_t b, int64_t i) const {
    const real v = values(b, i) + (bias.extent(0) ? bias(i) : real(0));
    return v > 0 ? v : real(0);
  }
  int64_t rows() const { return values.extent(0); }
  int64_t cols() const { return values.extent(1); }
};

int64_t count_batch_at_least(const BatchValue& value, uint32_t t) {
  int64_t c = 0;
  const int64_t cols = value.cols();
  Kokkos::parallel_reduce(
      "saescale::select::batch_count", Kokkos::RangePolicy<ExecSpace>(0, value.rows()),
      KOKKOS_LAMBDA(int64_t b, int64_t & acc) {
        for (int64_t i = 0; i < cols; ++i) acc += order_key(value(b, i)) >= t;
      },
      c);
  return c;
}

}  // namespace

double batch_topk(const Matrix& values, const Vector& bias, int64_t k, TopkAlgo algo,
                  const Matrix& out, const CountVector& active, const CountVector& fired,
                  real fire_threshold, const SelectionGroup* group) {
  const int64_t n = values.size();
  const BatchValue value{values, bias};
  const auto global_sum = [&](int64_t* counts, int len) {
    if (group) group->sum(counts, len);
  };
  Threshold t{0, 0, 0};
  if (algo == TopkAlgo::radix) {
    // Private 256-bin histograms per slot (one per thread on CPUs, summed on the host); on GPUs one
    // shared histogram updated atomically.
    const int64_t slots = kColumnTiles ? 1 : accumulator_slots();
    const int64_t rows = value.rows(), cols = value.cols();
    const int64_t chunk = (rows + slots - 1) / slots;
    Kokkos::View<int64_t**, Kokkos::LayoutRight, MemSpace> hist("saescale::select::batch_histogram",
                                                                slots, 256);
    auto hist_host = Kokkos::create_mirror_view(hist);
    uint32_t prefix = 0, mask = 0;
    int64_t remaining = k, equal = 0;
    for (int shift = 24; shift >= 0; shift -= 8) {
      Kokkos::deep_copy(hist, 0);
      if constexpr (kColumnTiles) {
        Kokkos::parallel_for(
            "saescale::select::batch_histogram", Kokkos::RangePolicy<ExecSpace>(0, n),
            KOKKOS_LAMBDA(int64_t j) {
              const uint32_t kk = order_key(value(j / cols, j % cols));
              if ((kk & mask) == prefix)
                Kokkos::atomic_add(&hist(0, (kk >> shift) & 255u), int64_t(1));
            });
      } else {
        Kokkos::parallel_for(
            "saescale::select::batch_histogram", Kokkos::RangePolicy<ExecSpace>(0, slots),
            KOKKOS_LAMBDA(int64_t sl) {
              const int64_t end = (sl + 1) * chunk < rows ? (sl + 1) * chunk : rows;
              for (int64_t b = sl * chunk; b < end; ++b)
                for (int64_t i = 0; i < cols; ++i) {
                  const uint32_t kk = order_key(value(b, i));
                  if ((kk & mask) == prefix) ++hist(sl, (kk >> shift) & 255u);
                }
            });
      }
      Kokkos::deep_copy(hist_host, hist);
      int64_t bin[256] = {};
      for (int64_t sl = 0; sl < slots; ++sl)
        for (int d = 0; d < 256; ++d) bin[d] += hist_host(sl, d);
      global_sum(bin, 256);
      int64_t above = 0, d = 255;
      for (; d > 0 && above + bin[d] < remaining; --d) above += bin[d];
      remaining -= above;
      prefix |= uint32_t(d) << shift;
      mask |= 255u << shift;
      equal = bin[d];
    }
    t = {prefix, remaining, equal};
  } else {
    const auto count = [&](uint32_t key) {
      int64_t c = count_batch_at_least(value, key);
      global_sum(&c, 1);
      return c;
    };
    uint32_t lo = 1, hi = 0xffffffffu;
    int64_t at_lo = n;  // every key is >= 1
    global_sum(&at_lo, 1);
    while (lo < hi) {
      const uint32_t mid = lo + (hi - lo) / 2 + 1;
      const int64_t c = count(mid);
      if (c >= k)
        lo = mid, at_lo = c;
      else
        hi = mid - 1;
    }
    const int64_t above = lo == 0xffffffffu ? 0 : count(lo + 1);
    t = {lo, k - above, at_lo - above};
  }
  // Final pass in row-major order (ties: lower flat index), tracking the smallest selected
  // positive value.
  real smallest;
  const Threshold th = t;
  if (th.take_equal == th.equal) {  // no tie to break (the usual case): one plain pass
    const int64_t cols = value.cols();
    Kokkos::parallel_for(
        "saescale::select::batch_select", Kokkos::RangePolicy<ExecSpace>(0, value.rows()),
        KOKKOS_LAMBDA(int64_t b) {
          for (int64_t i = 0; i < cols; ++i) {
            const real v = value(b, i), o = order_key(v) >= th.key ? v : real(0);
            out(b, i) = o;
            count_selected(active, fired, fire_threshold, i, o);
          }
        });
  } else {
    // Ties at the threshold go to the lower row-major index: count them per row, find how many
    // come before each row (across the group: in the global order), then take them row by row.
    const int64_t rows = value.rows(), cols = value.cols();
    CountVector row_ties("saescale::select::batch_row_ties", rows);
    Kokkos::parallel_for(
        "saescale::select::batch_row_ties", Kokkos::RangePolicy<ExecSpace>(0, rows),
        KOKKOS_LAMBDA(int64_t b) {
          int64_t c = 0;
          for (int64_t i = 0; i < cols; ++i) c += order_key(value(b, i)) == th.key;
          row_ties(b) = c;
        });
    auto ties_host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), row_ties);
    std::vector<int64_t> ties(ties_host.data(), ties_host.data() + rows), before(rows, 0);
    if (group) {
      before = group->tie_offsets(ties);
    } else {
      for (int64_t b = 1; b < rows; ++b) before[b] = before[b - 1] + ties[b - 1];
    }
    for (int64_t b = 0; b < rows; ++b) ties_host(b) = before[b];
    Kokkos::deep_copy(row_ties, ties_host);  // now: ties before each row
    Kokkos::parallel_for(
        "saescale::select::batch_select_ties", Kokkos::RangePolicy<ExecSpace>(0, rows),
        KOKKOS_LAMBDA(int64_t b) {
          int64_t equal_before = row_ties(b);
          for (int64_t i = 0; i < cols; ++i) {
            const real v = value(b, i);
            const uint32_t kk = order_key(v);
            const bool take = kk > th.key || (kk == th.key && equal_before++ < th.take_equal);
            const real o = take ? v : real(0);
            out(b, i) = o;
            count_selected(active, fired, fire_threshold, i, o);
          }
        });
  }
  Kokkos::parallel_reduce(
      "saescale::select::batch_min_selected", Kokkos::RangePolicy<ExecSpace>(0, n),
      KOKKOS_LAMBDA(int64_t j, real & m) {
        const real v = out.data()[j];
        if (v > 0 && v < m) m = v;
      },
      Kokkos::Min<real>(smallest));  // identity: the largest float
  return smallest == Kokkos::reduction_identity<real>::min() ? 0.0 : smallest;
}

void row_candidates(const Matrix& selected, int64_t k, int64_t latent_offset,
                    const KeyVector& cand) {
  const int64_t rows = selected.extent(0), cols = selected.extent(1);
  Kokkos::parallel_for(
      "saescale::select::row_candidates", Kokkos::TeamPolicy<ExecSpace>(rows, Kokkos::AUTO),
      KOKKOS_LAMBDA(const Team& team) {
        const int64_t b = team.league_rank();
        Kokkos::parallel_for(Kokkos::TeamThreadRange(team, k),
                             [&](int64_t j) { cand(b * k + j) = 0; });
        team.team_barrier();
        // Position of each non-zero among the row's non-zeros (at most k of them).
        Kokkos::parallel_scan(Kokkos::TeamThreadRange(team, cols),
                              [&](int64_t i, int64_t& before, bool final) {
                                const real v = selected(b, i);
                                if (final && v != 0 && before < k)
                                  cand(b * k + before) = entry_key(v, latent_offset + i);
                                before += v != 0;
                              });
      });
}

void row_kth_key(const KeyVector& keys, int64_t parts, int64_t rows, int64_t k,
                 const KeyVector& kth) {
  // Per row, an MSB-first radix select over 8 bytes of the (unique) keys of parts x k candidates.
  Kokkos::parallel_for(
      "saescale::select::row_kth_key", Kokkos::RangePolicy<ExecSpace>(0, rows),
      KOKKOS_LAMBDA(int64_t b) {
        uint64_t prefix = 0, mask = 0;
        int64_t remaining = k;
        for (int shift = 56; shift >= 0; shift -= 8) {
          int32_t hist[256] = {};
          for (int64_t p = 0; p < parts; ++p)
            for (int64_t j = 0; j < k; ++j) {
              const uint64_t key = keys((p * rows + b) * k + j);
              if (key != 0 && (key & mask) == prefix) ++hist[(key >> shift) & 255u];
            }
          int64_t above = 0, d = 255;
          for (; d > 0 && above + hist[d] < remaining; --d) above += hist[d];
          if (above + hist[d] < remaining) {  // fewer than k candidates: keep every one
            prefix = 0;
            break;
          }
          remaining -= above;
          prefix |= uint64_t(d) << shift;
          mask |= uint64_t(255) << shift;
        }
        kth(b) = prefix;
      });
}

void keep_selected(const Matrix& selected, int64_t latent_offset, const KeyVector& kth,
                   const CountVector& active, const CountVector& fired, real fire_threshold) {
  const int64_t cols = selected.extent(1);
  Kokkos::parallel_for(
      "saescale::select::keep_selected", Kokkos::RangePolicy<ExecSpace>(0, selected.extent(0)),
      KOKKOS_LAMBDA(int64_t b) {
        const uint64_t t = kth(b);
        for (int64_t i = 0; i < cols; ++i) {
          const real v = selected(b, i);
          if (v == 0) continue;
          if (entry_key(v, latent_offset + i) < t)
            selected(b, i) = 0;
          else
            count_selected(active, fired, fire_threshold, i, v);
        }
      });
}

}  // namespace saescale::kernels
