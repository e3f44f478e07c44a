#include "kernels/select/topk.hpp"

#include <algorithm>

#include "kernels/tiling.hpp"
#include "src/error.hpp"

namespace saescale::kernels {

TopkAlgo parse_topk_algo(const std::string& name) {
  if (name == "radix") return TopkAlgo::radix;
  if (name == "bisect") return TopkAlgo::bisect;
  if (name == "filter") return TopkAlgo::filter;
  throw Error("unknown --topk-algo '" + name + "' (choose radix, bisect or filter)");
}

const char* topk_algo_name(TopkAlgo a) {
  return a == TopkAlgo::radix ? "radix" : a == TopkAlgo::bisect ? "bisect" : "filter";
}

TopkAlgo effective_topk_algo(TopkAlgo requested) {
  return requested == TopkAlgo::filter && kColumnTiles ? TopkAlgo::radix : requested;
}

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

// ---- filter: one pass with a candidate buffer (CPUs only; see topk.hpp) ------------------------
// Host code over host memory: it runs only when !kColumnTiles (there MemSpace is a host space);
// on GPU backends it is compiled but never called (`filter` runs radix there).

constexpr int64_t kFilterChunk = 32;        // floats tested at once against tau (vectorised)
constexpr uint32_t kZeroKey = 0x80000000u;  // order_key(+0.0f): candidates have keys above it

// A candidate of the row-wise filter: entry_key's layout (key, then the complement of the latent
// index), so a larger uint64 ranks higher and keys are unique.
inline uint32_t key_of(uint64_t e) { return uint32_t(e >> 32); }
inline int64_t index_of(uint64_t e) { return int64_t(0xffffffffu - uint32_t(e)); }
inline bool ranks_above(uint64_t a, uint64_t b) { return a > b; }
inline void make_entry(uint32_t key, int64_t index, uint64_t& e) {
  e = (uint64_t(key) << 32) | uint64_t(0xffffffffu - uint32_t(index));
}
// A candidate of the batch-wide filter: the flat row-major index may not fit 32 bits.
struct FlatEntry {
  uint32_t key;
  int64_t flat;
};
inline uint32_t key_of(const FlatEntry& e) { return e.key; }
inline bool ranks_above(const FlatEntry& a, const FlatEntry& b) {
  return a.key > b.key || (a.key == b.key && a.flat < b.flat);
}
inline void make_entry(uint32_t key, int64_t index, FlatEntry& e) { e = {key, index}; }

// The candidates of one scan (a row, or a thread's rows of the batch), offered in increasing index
// order. Invariant: the k best positive entries offered so far (by the unique order: key, then
// lower index) are among buf[0, size). Entries are appended when their key is > tau; when `size`
// reaches `capacity` the buffer keeps its k best and tau becomes the k-th's key: a later entry
// with that key has a higher index, so it ranks below the k-th and can never enter the k best
// (hence the strict test).
template <class Entry>
struct Candidates {
  int64_t k, capacity;
  bool track_dropped;      // batch-wide: keep dropped_max / dropped_at_max
  std::vector<Entry> buf;  // capacity + kFilterChunk entries: a chunk is appended without checks
  int64_t size = 0;
  uint32_t tau = kZeroKey;
  // The largest key of the positive entries left out (filtered or dropped), and how many had it.
  uint32_t dropped_max = kZeroKey;
  int64_t dropped_at_max = 0;

  Candidates(int64_t k_, int64_t capacity_, bool track)
      : k(k_), capacity(capacity_), track_dropped(track), buf(capacity_ + kFilterChunk) {}
  Entry* begin() { return buf.data(); }
  Entry* end() { return buf.data() + size; }
  void reset() {
    size = 0;
    tau = kZeroKey;
    dropped_max = kZeroKey;
    dropped_at_max = 0;
  }
  void drop(uint32_t key) {
    if (key > dropped_max)
      dropped_max = key, dropped_at_max = 1;
    else if (key == dropped_max && key > kZeroKey)
      ++dropped_at_max;
  }
  // The keys of a chunk not above tau are left out: their largest (vectorised), how many have it.
  void drop_chunk(const uint32_t* keys, int64_t n) {
    uint32_t m = 0;
    for (int64_t j = 0; j < n; ++j) {
      const uint32_t key = keys[j] <= tau ? keys[j] : 0;
      m = key > m ? key : m;
    }
    if (m <= kZeroKey || m < dropped_max) return;
    int64_t same = 0;
    for (int64_t j = 0; j < n; ++j) same += keys[j] == m;
    if (m > dropped_max) dropped_max = m, dropped_at_max = 0;
    dropped_at_max += same;
  }
  // Appends the chunk's entries with keys > tau (index base + j), without branches.
  void offer(const uint32_t* keys, int64_t n, int64_t base) {
    Entry* out = buf.data() + size;
    int64_t added = 0;
    for (int64_t j = 0; j < n; ++j) {
      make_entry(keys[j], base + j, out[added]);
      added += keys[j] > tau;
    }
    size += added;
    if (track_dropped) drop_chunk(keys, n);
    if (size >= capacity) compact();
  }
  // Keeps the n best entries (all when there are fewer), in no particular order.
  void keep_best(int64_t n) {
    if (size <= n) return;
    std::nth_element(begin(), begin() + (n - 1), end(),
                     [](const Entry& a, const Entry& b) { return ranks_above(a, b); });
    if (track_dropped)
      for (const Entry* e = begin() + n; e != end(); ++e) drop(key_of(*e));
    size = n;
  }
  void compact() {
    keep_best(k);
    tau = key_of(buf[k - 1]);  // nth_element left the k-th best at k - 1
  }
};

// The key the selection orders entry i by: value (+ bias), ReLU'd for the batch-wide selection,
// kExcluded for ineligible latents.
template <bool kBias, bool kMask, bool kRelu>
inline uint32_t filter_key(const real* v, const real* bias, const int64_t* eligible, int64_t i) {
  real x = v[i];
  if (kBias) x += bias[i];
  if (kRelu) x = x > 0 ? x : real(0);
  const uint32_t key = order_key(x);
  if (kMask) return eligible[i] ? key : kExcluded;
  return key;
}

// Offers entries [0, n) of one row (index base + i) to `c`, in chunks: the keys and their maximum
// are computed vectorised; a chunk whose maximum is not above tau (the usual case once tau has
// risen) is skipped.
template <bool kBias, bool kMask, bool kRelu, class Entry>
void filter_scan(const real* v, const real* bias, const int64_t* eligible, int64_t n, int64_t base,
                 Candidates<Entry>& c) {
  uint32_t keys[kFilterChunk];
  int64_t i = 0;
  for (; i + kFilterChunk <= n; i += kFilterChunk) {
    uint32_t m = 0;
    for (int64_t j = 0; j < kFilterChunk; ++j) {
      keys[j] = filter_key<kBias, kMask, kRelu>(v, bias, eligible, i + j);
      m = keys[j] > m ? keys[j] : m;
    }
    if (m > c.tau)
      c.offer(keys, kFilterChunk, base + i);
    else if (c.track_dropped && m > kZeroKey && m >= c.dropped_max)
      c.drop_chunk(keys, kFilterChunk);
  }
  for (int64_t j = 0; j < n - i; ++j)
    keys[j] = filter_key<kBias, kMask, kRelu>(v, bias, eligible, i + j);
  if (i < n) c.offer(keys, n - i, base + i);
}

template <bool kRelu, class Entry>
void filter_scan(const real* v, const real* bias, const int64_t* eligible, int64_t n, int64_t base,
                 Candidates<Entry>& c) {
  if (bias && eligible)
    filter_scan<true, true, kRelu>(v, bias, eligible, n, base, c);
  else if (bias)
    filter_scan<true, false, kRelu>(v, bias, eligible, n, base, c);
  else if (eligible)
    filter_scan<false, true, kRelu>(v, bias, eligible, n, base, c);
  else
    filter_scan<false, false, kRelu>(v, bias, eligible, n, base, c);
}

// The value whose (positive) order key this is: order_key flips only the sign bit of positives.
inline real value_of_key(uint32_t key) {
  const uint32_t u = key ^ 0x80000000u;
  real v;
  memcpy(&v, &u, sizeof v);
  return v;
}

// Buffer capacity: room for 4k candidates (a compaction every >= 3k appends), but no more than the
// entries a scan can offer; always > k (a full buffer has a k-th best to raise tau to).
int64_t filter_capacity(int64_t k, int64_t entries) {
  return std::max(k + 1, std::min(4 * k + 64, entries));
}

int64_t host_slots(int64_t rows) {
  const int64_t n = Kokkos::DefaultHostExecutionSpace().concurrency();
  return std::max<int64_t>(1, std::min(n, rows));
}

void row_filter(const Matrix& values, const Vector& bias, int64_t k, const Matrix& out,
                const CountVector& eligible, const CountVector& active, const CountVector& fired,
                real fire_threshold, const SelectedEntries& entries) {
  const int64_t rows = values.extent(0), cols = values.extent(1);
  const int64_t slots = host_slots(rows), chunk = (rows + slots - 1) / slots;
  const int64_t capacity = filter_capacity(k, cols);
  const bool want = entries.idx.extent(0) != 0;
  const real* bias_p = bias.extent(0) ? bias.data() : nullptr;
  const int64_t* eligible_p = eligible.extent(0) ? eligible.data() : nullptr;
  // One buffer per slot (thread), reused over its rows.
  Kokkos::parallel_for(
      "saescale::select::row_topk_filter",
      Kokkos::RangePolicy<Kokkos::DefaultHostExecutionSpace>(0, slots), [=](int64_t sl) {
        Candidates<uint64_t> c(k, capacity, false);
        const int64_t end = std::min(rows, (sl + 1) * chunk);
        for (int64_t b = sl * chunk; b < end; ++b) {
          c.reset();
          filter_scan<false>(values.data() + b * values.stride(0), bias_p, eligible_p, cols, 0, c);
          c.keep_best(k);
          std::sort(c.begin(), c.end(),
                    [](uint64_t x, uint64_t y) { return index_of(x) < index_of(y); });
          real* o = out.data() + b * out.stride(0);
          std::fill(o, o + cols, real(0));
          int32_t n = 0;
          for (const uint64_t* e = c.begin(); e != c.end(); ++e) {
            const int64_t i = index_of(*e);
            const real v = value_of_key(key_of(*e));  // v + bias, exactly
            if (!(v > 0)) continue;                   // a positive NaN: selected, outputs 0
            o[i] = v;
            count_selected(active, fired, fire_threshold, i, v);
            if (want) entries.idx(b, n) = int32_t(i), entries.val(b, n) = v;
            ++n;
          }
          if (want) entries.count(b) = n;
        }
      });
}

// Per row, the non-zeros of the selected rows in increasing latent order (radix, bisect).
void fill_entries(const Matrix& out, const SelectedEntries& entries) {
  const int64_t cols = out.extent(1), capacity = entries.idx.extent(1);
  const auto idx = entries.idx;
  const auto val = entries.val;
  const auto count = entries.count;
  if (cols == 0) {
    Kokkos::deep_copy(count, 0);
    return;
  }
  Kokkos::parallel_for(
      "saescale::select::row_topk_entries",
      Kokkos::TeamPolicy<ExecSpace>(out.extent(0), Kokkos::AUTO), KOKKOS_LAMBDA(const Team& team) {
        const int64_t b = team.league_rank();
        Kokkos::parallel_scan(
            Kokkos::TeamThreadRange(team, cols), [&](int64_t i, int64_t& before, bool final) {
              const real v = out(b, i);
              const int64_t nz = v != 0;
              if (final) {
                if (nz && before < capacity) {
                  idx(b, before) = int32_t(i);
                  val(b, before) = v;
                }
                if (i == cols - 1)
                  count(b) = int32_t(before + nz < capacity ? before + nz : capacity);
              }
              before += nz;
            });
      });
}

}  // namespace

void row_topk(const Matrix& values, const Vector& bias, int64_t k, TopkAlgo algo, const Matrix& out,
              const CountVector& eligible, const CountVector& active, const CountVector& fired,
              real fire_threshold, const SelectedEntries& entries) {
  const int64_t rows = values.extent(0), cols = values.extent(1);
  const bool want = entries.idx.extent(0) != 0;
  if (want && (static_cast<int64_t>(entries.idx.extent(0)) != rows ||
               entries.val.extent(0) != entries.idx.extent(0) ||
               entries.val.extent(1) != entries.idx.extent(1) ||
               static_cast<int64_t>(entries.count.extent(0)) != rows ||
               static_cast<int64_t>(entries.idx.extent(1)) < std::min(k, cols)))
    throw Error("row_topk: selected entries must be [rows, >= min(k, M)] and count [rows]");
  if (algo == TopkAlgo::filter) {
    // The filter is a CPU algorithm (a serial scan per row with a growing buffer); GPU backends
    // run radix instead. k <= 0 (nothing to select) takes the radix path too.
    if (!kColumnTiles && k > 0) {
      row_filter(values, bias, k, out, eligible, active, fired, fire_threshold, entries);
      return;
    }
    algo = TopkAlgo::radix;
  }
  Kokkos::TeamPolicy<ExecSpace> policy(rows, Kokkos::AUTO);
  policy.set_scratch_size(0, Kokkos::PerTeam(Histogram::shmem_size(256)));
  Kokkos::parallel_for(
      algo == TopkAlgo::radix ? "saescale::select::row_topk_radix"
                              : "saescale::select::row_topk_bisect",
      policy, RowTopK{values, out, bias, eligible, active, fired, fire_threshold, k, algo});
  if (want) fill_entries(out, entries);
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

// The batch-wide threshold by filtering (CPUs): every slot (thread) scans its rows once and keeps
// its k best positive entries by (key, lower flat index) as candidates; the radix passes of the
// radix path then run over the candidates only, their histograms summed over the slots and the
// group. Exact (on each rank and across the group), with T the global k-th largest key:
//  - every entry with key > T is a candidate of its slot: fewer than k entries anywhere beat it,
//    and a slot drops an entry only below k better ones or when its key is <= the slot's tau,
//    itself <= T (the slot holds k entries with keys >= tau);
//  - the candidates hold >= k entries with key >= T: either none with key T was dropped, or a slot
//    dropped one below k of its own entries with keys >= T;
//  so the candidates' k-th largest key is T and their count above it is exact: T and take_equal
//  are the radix path's. `equal` adds, per slot, the dropped entries with key T: the dropped keys
//  are <= T, so those are the ones at the slot's largest dropped key when that key is T (each slot
//  tracks that key and its count as it scans, the last pass sums them).
// Fewer than k positive entries in all: every one is selected (T = order_key(0): ties at 0 output
// 0 whichever are taken). Every rank takes the same branches: they follow group-summed counts.
// Collectives (group->sum): 4, as radix, of 256 counts, the last of 512.
Threshold batch_filter_threshold(const Matrix& values, const Vector& bias, int64_t k,
                                 const std::function<void(int64_t*, int)>& global_sum) {
  const int64_t rows = values.extent(0), cols = values.extent(1);
  const int64_t slots = host_slots(rows), chunk = (rows + slots - 1) / slots;
  const int64_t capacity = filter_capacity(k, chunk * cols);
  const real* bias_p = bias.extent(0) ? bias.data() : nullptr;
  std::vector<Candidates<FlatEntry>> cand(slots, Candidates<FlatEntry>(k, capacity, true));
  Candidates<FlatEntry>* cand_p = cand.data();
  Kokkos::parallel_for(
      "saescale::select::batch_filter",
      Kokkos::RangePolicy<Kokkos::DefaultHostExecutionSpace>(0, slots), [=](int64_t sl) {
        Candidates<FlatEntry>& c = cand_p[sl];
        const int64_t begin = std::min(rows, sl * chunk), end = std::min(rows, begin + chunk);
        for (int64_t b = begin; b < end; ++b)
          filter_scan<true>(values.data() + b * values.stride(0), bias_p, nullptr, cols, b * cols,
                            c);
        c.keep_best(k);
      });
  std::vector<int64_t> hist(slots * 256);
  int64_t* hist_p = hist.data();
  uint32_t prefix = 0, mask = 0;
  int64_t remaining = k, equal = 0, total = 0;
  for (int shift = 24; shift >= 0; shift -= 8) {
    Kokkos::parallel_for("saescale::select::batch_filter_histogram",
                         Kokkos::RangePolicy<Kokkos::DefaultHostExecutionSpace>(0, slots),
                         [=](int64_t sl) {
                           int64_t* h = hist_p + sl * 256;
                           std::fill(h, h + 256, int64_t(0));
                           for (const FlatEntry* e = cand_p[sl].begin(); e != cand_p[sl].end(); ++e)
                             if ((e->key & mask) == prefix) ++h[(e->key >> shift) & 255u];
                         });
    // The last pass also sums, in bins 256 + digit, the slots' dropped entries at their largest
    // dropped key when that key has the threshold's upper 24 bits: bin 256 + d counts the
    // dropped entries with key T.
    const bool last = shift == 0;
    int64_t bin[512] = {};
    for (int64_t sl = 0; sl < slots; ++sl) {
      for (int d = 0; d < 256; ++d) bin[d] += hist[sl * 256 + d];
      if (last && (cand[sl].dropped_max & mask) == prefix)
        bin[256 + (cand[sl].dropped_max & 255u)] += cand[sl].dropped_at_max;
    }
    global_sum(bin, last ? 512 : 256);
    if (shift == 24)
      for (int d = 0; d < 256; ++d) total += bin[d];
    int64_t above = 0, d = 255;
    for (; d > 0 && above + bin[d] < remaining; --d) above += bin[d];
    remaining -= above;
    prefix |= uint32_t(d) << shift;
    mask |= 255u << shift;
    equal = bin[d] + (last ? bin[256 + d] : 0);
  }
  // Fewer than k positive entries (the passes ran anyway: the group's collectives do not depend on
  // the data): every one is selected.
  if (total < k) return {kZeroKey, 0, 0};
  return {prefix, remaining, equal};
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
  // The filter is a CPU algorithm: GPU backends run radix instead (so does k <= 0: nothing to
  // select). k is global, so every rank of a group takes the same path.
  if (algo == TopkAlgo::filter && !kColumnTiles && k > 0) {
    t = batch_filter_threshold(values, bias, k, global_sum);
  } else if (algo != TopkAlgo::bisect) {
    // Private 256-bin histograms per slot (one per thread on CPUs, summed on the host); on GPUs a
    // histogram per team in scratch memory, added to one global histogram once per team.
    const int64_t slots = kColumnTiles ? 1 : accumulator_slots();
    const int64_t rows = value.rows(), cols = value.cols();
    const int64_t chunk = (rows + slots - 1) / slots;
    Kokkos::View<int64_t**, Kokkos::LayoutRight, MemSpace> hist("saescale::select::batch_histogram",
                                                                slots, 256);
    auto hist_host = Kokkos::create_mirror_view(hist);
    uint32_t prefix = 0, mask = 0;
    int64_t remaining = k, equal = 0, counted = 0;
    for (int shift = 24; shift >= 0; shift -= 8) {
      Kokkos::deep_copy(hist, 0);
      if constexpr (kColumnTiles) {
        // A team per block of rows. ReLU(v) is zero for about half the entries: they would all
        // hit one bin, so zeros are not counted (they are what is left below the positives: the
        // descent below stops at bin 0 when k exceeds the positives, as when they are counted).
        constexpr int64_t kRowsPerTeam = 16;
        Kokkos::TeamPolicy<ExecSpace> policy((rows + kRowsPerTeam - 1) / kRowsPerTeam,
                                             Kokkos::AUTO);
        policy.set_scratch_size(0, Kokkos::PerTeam(Histogram::shmem_size(256)));
        Kokkos::parallel_for(
            "saescale::select::batch_histogram", policy, KOKKOS_LAMBDA(const Team& team) {
              Histogram local(team.team_scratch(0), 256);
              Kokkos::parallel_for(Kokkos::TeamThreadRange(team, 256),
                                   [&](int d) { local(d) = 0; });
              team.team_barrier();
              const int64_t b0 = team.league_rank() * kRowsPerTeam;
              const int64_t b1 = b0 + kRowsPerTeam < rows ? b0 + kRowsPerTeam : rows;
              Kokkos::parallel_for(Kokkos::TeamThreadRange(team, (b1 - b0) * cols), [&](int64_t j) {
                const uint32_t kk = order_key(value(b0 + j / cols, j % cols));
                if (kk > kZeroKey && (kk & mask) == prefix)
                  Kokkos::atomic_add(&local((kk >> shift) & 255u), int64_t(1));
              });
              team.team_barrier();
              Kokkos::parallel_for(Kokkos::TeamThreadRange(team, 256), [&](int d) {
                if (local(d) != 0) Kokkos::atomic_add(&hist(0, d), local(d));
              });
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
      if (shift == 24)
        for (int d = 0; d < 256; ++d) counted += bin[d];
      int64_t above = 0, d = 255;
      for (; d > 0 && above + bin[d] < remaining; --d) above += bin[d];
      remaining -= above;
      prefix |= uint32_t(d) << shift;
      mask |= 255u << shift;
      equal = bin[d];
    }
    t = {prefix, remaining, equal};
    // GPUs count positive entries only: fewer than k of them are all selected (as the filter).
    if (kColumnTiles && counted < k) t = {kZeroKey, 0, 0};
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
