// saescale-kernels: every kernel of the training step timed alone (Google Benchmark), with the
// work of src/metrics/work_model.hpp as its counters, and an OSU-style MPI_Allreduce sweep.
//
// The kernels are launched exactly as src/variants/*.cpp and src/model.cpp launch them, on
// buffers of the same shapes. Inputs are drawn from a fixed seed when a benchmark starts, so its
// numbers do not depend on which benchmarks ran before it. Kernels that update in place (backward
// passes, Adam, decoder rows) keep updating the same buffers: they are branch-free or idempotent
// and their values stay finite, so repeating them costs what one step costs.
//
// Under mpiexec every rank runs every benchmark; the collective ones use fixed iteration counts
// so that all ranks call MPI_Allreduce equally often. Rank 0 alone prints and writes files.
#include <benchmark/benchmark.h>
#include <mpi.h>

#include <Kokkos_Core.hpp>
#include <Kokkos_Random.hpp>
#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "benchmarks/lab/decoder_gradient_atomic.hpp"
#include "comm/mpi_check.hpp"
#include "error.hpp"
#include "io/results.hpp"
#include "kernels/activations/gated.hpp"
#include "kernels/activations/jumprelu.hpp"
#include "kernels/activations/relu.hpp"
#include "kernels/activations/topk.hpp"
#include "kernels/gemm.hpp"
#include "kernels/optim.hpp"
#include "kernels/select/topk.hpp"
#include "kernels/sparse.hpp"
#include "metrics/work_model.hpp"

namespace {

using namespace saescale;
using metrics::Work;

struct Shape {
  int64_t B = 2048, d = 512, M = 8192;  // docs/performance.md's benchmark size
  int64_t k = 32;  // TopK's k (BatchTopK selects k * B); entries per row of the sparse kernels
};

// ---- inputs ---------------------------------------------------------------------------------

// Every buffer draws from its own stream, keyed by its label, so no two inputs are equal.
uint64_t seed_for(const std::string& label) { return 20240611 ^ std::hash<std::string>{}(label); }

Matrix random_matrix(const std::string& label, int64_t rows, int64_t cols, real lo = -1,
                     real hi = 1) {
  Matrix m(label, rows, cols);
  Kokkos::Random_XorShift64_Pool<ExecSpace> pool(seed_for(label));
  Kokkos::fill_random(m, pool, lo, hi);
  return m;
}

Vector random_vector(const std::string& label, int64_t n, real lo, real hi) {
  Vector v(label, n);
  Kokkos::Random_XorShift64_Pool<ExecSpace> pool(seed_for(label));
  Kokkos::fill_random(v, pool, lo, hi);
  return v;
}

Vector constant_vector(const std::string& label, int64_t n, real value) {
  Vector v(label, n);
  Kokkos::deep_copy(v, value);
  return v;
}

// Everything an activation kernel reads or writes besides its variant's own parameters:
// pre-activations pi = x W_enc (no bias), the encoder bias, f, g (= g_f on entry to backward).
struct ActivationBuffers {
  Matrix pi, f, g;
  Vector b_enc;
  LatentStats stats;

  explicit ActivationBuffers(const Shape& s)
      : pi(random_matrix("pi", s.B, s.M)),
        f("f", s.B, s.M),
        g(random_matrix("g", s.B, s.M, -1e-3f, 1e-3f)),
        b_enc(random_vector("b_enc", s.M, -0.1f, 0.1f)),
        stats(LatentStats::allocate(s.M)) {}
};

// ---- counters -------------------------------------------------------------------------------

void set_work_counters(benchmark::State& state, const Work& work) {
  const double iterations = static_cast<double>(state.iterations());
  if (work.flops > 0)
    state.counters["FLOP/s"] =
        benchmark::Counter(work.flops * iterations, benchmark::Counter::kIsRate);
  state.SetBytesProcessed(static_cast<int64_t>(work.bytes * iterations));
}

// Runs `kernel` once per iteration, each ending with a fence (Kokkos launches are asynchronous on
// GPUs), and reports `work` per iteration. One untimed call comes first: library start-up (BLAS
// threads, cuBLAS handles) is not the kernel's cost.
template <class Kernel>
void time_kernel(benchmark::State& state, const Work& work, const Kernel& kernel) {
  kernel();
  Kokkos::fence();
  for (auto _ : state) {
    kernel();
    Kokkos::fence();
  }
  set_work_counters(state, work);
}

// ---- activation kernels (src/variants/*.cpp) -------------------------------------------------

constexpr real kLambda = 1e-3f;     // sparsity coefficient; only scales a term
constexpr real kBandwidth = 1e-3f;  // JumpReLU's default straight-through bandwidth
// The work model's selection algorithm argument counts passes of TopK/BatchTopK only.
const std::string kNoSelection = "radix";

void relu_forward(benchmark::State& state, const Shape& s) {
  ActivationBuffers a(s);
  const kernels::ReluRule rule{a.pi, a.b_enc, {}, 0, {}};
  time_kernel(state, metrics::activation_forward_work("relu", s.B, s.M, kNoSelection), [&] {
    kernels::dense_forward("saescale::activation::relu_forward", rule, a.f, {}, a.stats);
  });
}

void relu_backward(benchmark::State& state, const Shape& s) {
  ActivationBuffers a(s);
  const Vector dec_norm = constant_vector("decoder_norms", s.M, 0.1f);
  const kernels::ReluRule rule{a.pi, a.b_enc, dec_norm, kLambda / s.B, Vector("g_b_enc", s.M)};
  const auto sums = kernels::gradient_slots<kernels::ReluRule>("sums", s.M);
  time_kernel(state, metrics::activation_backward_work("relu", s.B, s.M), [&] {
    kernels::dense_backward("saescale::variant_backward::relu", rule, a.g, sums);
  });
}

// log thresholds at log(0.5): about a quarter of the uniform pre-activations pass.
Vector jumprelu_log_thresholds(int64_t M) { return constant_vector("log_threshold", M, -0.693f); }

void jumprelu_forward(benchmark::State& state, const Shape& s) {
  ActivationBuffers a(s);
  const Vector log_threshold = jumprelu_log_thresholds(s.M), theta("theta", s.M);
  const kernels::JumpReluRule rule(a.pi, a.b_enc, theta, kBandwidth, kLambda / s.B);
  time_kernel(state, metrics::activation_forward_work("jumprelu", s.B, s.M, kNoSelection), [&] {
    kernels::thresholds(log_threshold, theta);
    kernels::dense_forward("saescale::activation::jumprelu_forward", rule, a.f, {}, a.stats);
  });
}

void jumprelu_backward(benchmark::State& state, const Shape& s) {
  ActivationBuffers a(s);
  const Vector log_threshold = jumprelu_log_thresholds(s.M), theta("theta", s.M);
  kernels::thresholds(log_threshold, theta);  // forward's, still valid in backward
  const kernels::JumpReluRule rule(a.pi, a.b_enc, theta, kBandwidth, kLambda / s.B,
                                   Vector("g_b_enc", s.M), Vector("g_log_threshold", s.M));
  const auto sums = kernels::gradient_slots<kernels::JumpReluRule>("sums", s.M);
  time_kernel(state, metrics::activation_backward_work("jumprelu", s.B, s.M), [&] {
    kernels::dense_backward("saescale::variant_backward::jumprelu", rule, a.g, sums);
  });
}

// Gated's own parameters: r_mag = 0 (W_mag = W_gate at initialisation), small biases.
struct GatedParams {
  Vector b_gate, r_mag, b_mag, scale;
  explicit GatedParams(int64_t M)
      : b_gate(random_vector("b_gate", M, -0.1f, 0.1f)),
        r_mag("r_mag", M),
        b_mag(random_vector("b_mag", M, -0.1f, 0.1f)),
        scale("mag_scale", M) {}
};

void gated_forward(benchmark::State& state, const Shape& s) {
  ActivationBuffers a(s);
  const GatedParams p(s.M);
  const Matrix gate_act("gate_act", s.B, s.M);
  const kernels::GatedRule rule{a.pi, p.b_gate, p.scale, p.b_mag, 0, {}, {}, {}, {}, {}};
  time_kernel(state, metrics::activation_forward_work("gated", s.B, s.M, kNoSelection), [&] {
    kernels::magnitude_scales(p.r_mag, p.scale);
    kernels::dense_forward("saescale::activation::gated_forward", rule, a.f, gate_act, a.stats);
  });
}

void gated_backward(benchmark::State& state, const Shape& s) {
  ActivationBuffers a(s);
  const GatedParams p(s.M);
  kernels::magnitude_scales(p.r_mag, p.scale);  // forward's, still valid in backward
  const Matrix g_aux = random_matrix("g_aux", s.B, s.M, -1e-3f, 1e-3f);
  const kernels::GatedRule rule{a.pi,
                                p.b_gate,
                                p.scale,
                                p.b_mag,
                                kLambda / s.B,
                                g_aux,
                                Vector("g_b_gate", s.M),
                                Vector("g_b_mag", s.M),
                                Vector("g_r_mag", s.M),
                                Vector("g_pi_sum", s.M)};
  const auto sums = kernels::gradient_slots<kernels::GatedRule>("sums", s.M);
  time_kernel(state, metrics::activation_backward_work("gated", s.B, s.M), [&] {
    kernels::dense_backward("saescale::variant_backward::gated", rule, a.g, sums);
  });
}

// TopK and BatchTopK share this backward: the selection is a mask. f comes from a real row top-k
// so the mask has TopK's density (AuxK off: no dead latents).
void topk_backward(benchmark::State& state, const Shape& s) {
  ActivationBuffers a(s);
  kernels::row_topk(a.pi, a.b_enc, s.k, kernels::TopkAlgo::radix, a.f);
  const kernels::TopkRule rule{a.f, {}, {}, false, Vector("g_b_enc", s.M), Vector("g_pi", s.M)};
  const auto sums = kernels::gradient_slots<kernels::TopkRule>("sums", s.M);
  time_kernel(state, metrics::activation_backward_work("topk", s.B, s.M), [&] {
    kernels::dense_backward("saescale::variant_backward::topk", rule, a.g, sums);
  });
}

// ---- selections (TopK's and BatchTopK's activation) ------------------------------------------

// The counts are zeroed first, as SelectionVariant::forward does, and filled by the final pass.
void row_topk(benchmark::State& state, const Shape& s, kernels::TopkAlgo algo) {
  ActivationBuffers a(s);
  const auto active = a.stats.active_total(), fired = a.stats.fired_total();
  state.counters["k"] = static_cast<double>(s.k);
  time_kernel(state, metrics::row_selection_work(s.B, s.M, kernels::topk_algo_name(algo)), [&] {
    Kokkos::deep_copy(active, 0);
    Kokkos::deep_copy(fired, 0);
    kernels::row_topk(a.pi, a.b_enc, s.k, algo, a.f, {}, active, fired, kFireThreshold);
  });
}

void batch_topk(benchmark::State& state, const Shape& s, kernels::TopkAlgo algo) {
  ActivationBuffers a(s);
  const auto active = a.stats.active_total(), fired = a.stats.fired_total();
  state.counters["k"] = static_cast<double>(s.k * s.B);
  time_kernel(state, metrics::batch_selection_work(s.B, s.M, kernels::topk_algo_name(algo)), [&] {
    Kokkos::deep_copy(active, 0);
    Kokkos::deep_copy(fired, 0);
    kernels::batch_topk(a.pi, a.b_enc, s.k * s.B, algo, a.f, active, fired, kFireThreshold);
  });
}

// ---- the five GEMMs of the step (src/model.cpp) ----------------------------------------------

// C[m, n] = alpha op(A) op(B) + beta C with op(A) [m, k], A and B as stored ([rows, cols]); alpha
// and beta as src/model.cpp passes them (-2/B: the loss gradient's scale rides in alpha).
struct GemmCase {
  const char* name;
  Trans ta, tb;
  real alpha, beta;
  int64_t a_rows, a_cols, b_rows, b_cols, m, n, k;
};

std::vector<GemmCase> step_gemms(const Shape& s) {
  const int64_t B = s.B, d = s.d, M = s.M;
  const real g_scale = -2.0f / B;
  return {
      // pi = x W_enc: [B,d] x [d,M]
      {"gemm/encode", Trans::N, Trans::N, 1, 0, B, d, d, M, B, M, d},
      // e = (x - b_dec) - f W_dec: [B,M] x [M,d], accumulated into e
      {"gemm/decode", Trans::N, Trans::N, -1, 1, B, M, M, d, B, d, M},
      // g_W_dec = f^T g_xhat: [M,B] x [B,d]
      {"gemm/backward_decoder", Trans::T, Trans::N, g_scale, 0, B, M, B, d, M, d, B},
      // g_f = g_xhat W_dec^T: [B,d] x [d,M]
      {"gemm/backward_activation", Trans::N, Trans::T, g_scale, 0, B, d, M, d, B, M, d},
      // g_W_enc = x^T g_pi: [d,B] x [B,M]
      {"gemm/backward_encoder", Trans::T, Trans::N, 1, 0, B, d, B, M, d, M, B},
  };
}

void gemm_benchmark(benchmark::State& state, const GemmCase& c) {
  const Matrix a = random_matrix("A", c.a_rows, c.a_cols);
  const Matrix b = random_matrix("B", c.b_rows, c.b_cols);
  const Matrix out = random_matrix("C", c.m, c.n);
  time_kernel(state, metrics::gemm_work(c.m, c.n, c.k),
              [&] { gemm(c.ta, c.tb, c.alpha, a, b, c.beta, out); });
}

// ---- sparse kernels (kernels/sparse.hpp), each next to the GEMM it replaces -------------------

// f with exactly k entries per row at k distinct latents drawn uniformly (a trained SAE's latents
// are far from uniform: a few fire often, so real buckets are less even), values in (0, 1].
struct SparseInputs {
  sparse::SparseRows rows;
  Matrix f;  // the same entries, dense [B, M] (only compact_rows reads it)
  double nnz;

  SparseInputs(const Shape& s, bool with_dense)
      : rows(sparse::SparseRows::allocate("f_rows", s.B, s.k)), nnz(double(s.B) * s.k) {
    std::mt19937_64 gen(seed_for("f_rows"));
    std::uniform_real_distribution<float> value(0.01f, 1.0f);
    auto idx = Kokkos::create_mirror_view(rows.idx);
    auto val = Kokkos::create_mirror_view(rows.val);
    auto count = Kokkos::create_mirror_view(rows.count);
    std::vector<int32_t> chosen;
    for (int64_t b = 0; b < s.B; ++b) {
      chosen.clear();
      std::uniform_int_distribution<int32_t> latent(0, static_cast<int32_t>(s.M - 1));
      while (static_cast<int64_t>(chosen.size()) < s.k) {
        const int32_t m = latent(gen);
        if (std::find(chosen.begin(), chosen.end(), m) == chosen.end()) chosen.push_back(m);
      }
      std::sort(chosen.begin(), chosen.end());
      for (int64_t j = 0; j < s.k; ++j) idx(b, j) = chosen[j], val(b, j) = value(gen);
      count(b) = static_cast<int32_t>(s.k);
    }
    Kokkos::deep_copy(rows.idx, idx);
    Kokkos::deep_copy(rows.val, val);
    Kokkos::deep_copy(rows.count, count);
    if (!with_dense) return;
    f = Matrix("f", s.B, s.M);
    auto fh = Kokkos::create_mirror_view(f);
    for (int64_t b = 0; b < s.B; ++b)
      for (int64_t j = 0; j < s.k; ++j) fh(b, idx(b, j)) = val(b, j);
    Kokkos::deep_copy(f, fh);
  }
};

void sparse_counters(benchmark::State& state, const Shape& s) {
  state.counters["k"] = static_cast<double>(s.k);
}

void sparse_compact(benchmark::State& state, const Shape& s) {
  const SparseInputs in(s, true);
  const auto rows = sparse::SparseRows::allocate("compact_rows", s.B, s.k);
  sparse_counters(state, s);
  time_kernel(state, metrics::sparse_compact_work(s.B, s.M, in.nnz),
              [&] { sparse::compact_rows(in.f, rows); });
  if (sparse::overflow_rows(rows) != 0) state.SkipWithError("compact_rows overflowed");
}

void sparse_latent_index(benchmark::State& state, const Shape& s) {
  const SparseInputs in(s, false);
  const auto index = sparse::LatentIndex::allocate("latent_index", s.M, s.B, s.k);
  sparse_counters(state, s);
  time_kernel(state, metrics::latent_index_work(s.B, s.M, in.nnz),
              [&] { sparse::build_latent_index(in.rows, index); });
}

// e = (x - b_dec) - f W_dec, as the decode GEMM: alpha = -1, beta = 1.
void sparse_decode(benchmark::State& state, const Shape& s) {
  const SparseInputs in(s, false);
  const Matrix w_dec = random_matrix("W_dec", s.M, s.d), e = random_matrix("e", s.B, s.d);
  sparse_counters(state, s);
  time_kernel(state, metrics::sparse_decode_work(s.B, s.d, s.M, in.nnz, true),
              [&] { sparse::sparse_decode(in.rows, w_dec, e, 1, -1); });
}

// g_W_dec = -2/B f^T e: atomic, or sorted (the by-latent index built inside the timed region).
void sparse_decoder_gradient(benchmark::State& state, const Shape& s, bool sorted) {
  const SparseInputs in(s, false);
  const Matrix e = random_matrix("e", s.B, s.d), g_w_dec("g_W_dec", s.M, s.d);
  const auto index = sparse::LatentIndex::allocate("latent_index", s.M, s.B, s.k);
  const real alpha = -2.0f / s.B;
  Work work = metrics::sparse_decoder_gradient_work(s.B, s.d, s.M, in.nnz);
  if (sorted) {
    const Work sort = metrics::latent_index_work(s.B, s.M, in.nnz);
    work.bytes += sort.bytes;
  }
  sparse_counters(state, s);
  time_kernel(state, work, [&] {
    if (sorted) {
      sparse::build_latent_index(in.rows, index);
      sparse::sparse_decoder_gradient_sorted(in.rows, index, e, alpha, 0, g_w_dec);
    } else {
      sparse::lab::sparse_decoder_gradient_atomic(in.rows, e, alpha, 0, g_w_dec);
    }
  });
}

// g_f = -2/B e W_dec^T at f's entries.
void sparse_activation_gradient(benchmark::State& state, const Shape& s) {
  const SparseInputs in(s, false);
  const Matrix w_dec = random_matrix("W_dec", s.M, s.d), e = random_matrix("e", s.B, s.d);
  const Matrix g_val("g_f_values", s.B, s.k);
  sparse_counters(state, s);
  time_kernel(state, metrics::sparse_activation_gradient_work(s.B, s.d, s.M, in.nnz),
              [&] { sparse::sparse_activation_gradient(in.rows, e, w_dec, -2.0f / s.B, g_val); });
}

// g_W_enc = x^T g_pi at f's entries, with f's index (built once: it is the decoder gradient's).
void sparse_encoder_gradient(benchmark::State& state, const Shape& s) {
  const SparseInputs in(s, false);
  const auto g_pi = in.rows.with_values(random_matrix("g_pi_values", s.B, s.k, -1e-3f, 1e-3f));
  const auto index = sparse::LatentIndex::allocate("latent_index", s.M, s.B, s.k);
  sparse::build_latent_index(in.rows, index);
  const Matrix x = random_matrix("x", s.B, s.d), g_w_enc("g_W_enc", s.d, s.M);
  sparse_counters(state, s);
  time_kernel(state, metrics::sparse_encoder_gradient_work(s.B, s.d, s.M, in.nnz),
              [&] { sparse::sparse_encoder_gradient(g_pi, index, x, 1, 0, g_w_enc); });
}

// ---- optimiser and decoder constraint --------------------------------------------------------

// Adam over a standard SAE's parameters (W_enc, b_enc, W_dec, b_dec). beta1 = 0 (JumpReLU, Gated)
// keeps no first moment; 0.9 (ReLU, TopK) does.
void adam(benchmark::State& state, const Shape& s, real beta1) {
  const int64_t P = 2 * s.d * s.M + s.M + s.d;
  const Vector p = random_vector("params", P, -1, 1), g = random_vector("grads", P, -1e-3f, 1e-3f);
  const Vector v("second_moment", P), m = beta1 == 0 ? Vector() : Vector("first_moment", P);
  const kernels::AdamParams params{7e-5f, beta1, 0.999f, 1e-8f, 1000};
  time_kernel(state, metrics::adam_work(P, beta1 != 0),
              [&] { kernels::adam_update(p, g, m, v, params); });
}

void renormalize(benchmark::State& state, const Shape& s) {
  const Matrix w_dec = random_matrix("W_dec", s.M, s.d);
  time_kernel(state, metrics::renormalize_work(s.M, s.d),
              [&] { kernels::renormalize_rows(w_dec); });
}

void projection(benchmark::State& state, const Shape& s) {
  const Matrix w_dec = random_matrix("W_dec", s.M, s.d);
  const Matrix g_w_dec = random_matrix("g_W_dec", s.M, s.d, -1e-3f, 1e-3f);
  time_kernel(state, metrics::projection_work(s.M, s.d),
              [&] { kernels::project_decoder_gradient(w_dec, g_w_dec); });
}

// ---- MPI_Allreduce sweep (OSU / nccl-tests style) --------------------------------------------

// Fixed per message size, identical on every rank: about 256 MiB reduced per size, 10 to 1000
// times. Untimed warm-up calls come first (connection setup, first touch).
int64_t allreduce_iterations(int64_t bytes) {
  return std::clamp<int64_t>((int64_t(1) << 28) / bytes, 10, 1000);
}

// Each iteration: barrier, one in-place MPI_Allreduce, its time = the max over ranks.
void allreduce(benchmark::State& state, int64_t bytes) {
  int ranks = 1;
  SAESCALE_MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &ranks));
  const int count = static_cast<int>(bytes / sizeof(float));
  std::vector<float> buffer(count, 1.0f);  // host memory: MPI without device-buffer support
  const auto reduce = [&] {
    SAESCALE_MPI_CHECK(
        MPI_Allreduce(MPI_IN_PLACE, buffer.data(), count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD));
  };
  for (int64_t i = 0; i < std::max<int64_t>(1, allreduce_iterations(bytes) / 10); ++i) reduce();
  for (auto _ : state) {
    SAESCALE_MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD));
    const double start = MPI_Wtime();
    reduce();
    double elapsed = MPI_Wtime() - start;
    SAESCALE_MPI_CHECK(
        MPI_Allreduce(MPI_IN_PLACE, &elapsed, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD));
    state.SetIterationTime(elapsed);
  }
  const double moved = static_cast<double>(bytes) * static_cast<double>(state.iterations());
  state.counters["bytes"] = static_cast<double>(bytes);
  state.counters["algbw"] = benchmark::Counter(moved, benchmark::Counter::kIsRate);
  state.counters["busbw"] =
      benchmark::Counter(moved * 2.0 * (ranks - 1) / ranks, benchmark::Counter::kIsRate);
  state.SetLabel("MPI_Allreduce (library's algorithm), busbw factor 2(n-1)/n");
}

// 8 bytes, then x4 up to 32 MiB, and 64 MiB.
std::vector<int64_t> allreduce_sizes() {
  std::vector<int64_t> sizes;
  for (int64_t bytes = 8; bytes < (int64_t(64) << 20); bytes *= 4) sizes.push_back(bytes);
  sizes.push_back(int64_t(64) << 20);
  return sizes;
}

// ---- registration ----------------------------------------------------------------------------

void register_benchmarks(const Shape& s) {
  // Real (wall) time: BLAS threads' CPU time is not the calling thread's, and GPU kernels use none.
  const auto kernel = [](const char* name, auto fn) {
    benchmark::RegisterBenchmark(name, fn)->UseRealTime()->Unit(benchmark::kMicrosecond);
  };
  kernel("activation_forward/relu", [s](benchmark::State& st) { relu_forward(st, s); });
  kernel("activation_forward/jumprelu", [s](benchmark::State& st) { jumprelu_forward(st, s); });
  kernel("activation_forward/gated", [s](benchmark::State& st) { gated_forward(st, s); });
  kernel("activation_backward/relu", [s](benchmark::State& st) { relu_backward(st, s); });
  kernel("activation_backward/jumprelu", [s](benchmark::State& st) { jumprelu_backward(st, s); });
  kernel("activation_backward/gated", [s](benchmark::State& st) { gated_backward(st, s); });
  kernel("activation_backward/topk", [s](benchmark::State& st) { topk_backward(st, s); });
  for (const auto algo :
       {kernels::TopkAlgo::radix, kernels::TopkAlgo::bisect, kernels::TopkAlgo::filter}) {
    if (kernels::effective_topk_algo(algo) != algo) continue;  // filter on GPUs: it runs radix
    const std::string name = kernels::topk_algo_name(algo);
    kernel(("row_topk/" + name).c_str(),
           [s, algo](benchmark::State& st) { row_topk(st, s, algo); });
    kernel(("batch_topk/" + name).c_str(),
           [s, algo](benchmark::State& st) { batch_topk(st, s, algo); });
  }
  for (const auto& c : step_gemms(s))
    kernel(c.name, [c](benchmark::State& st) { gemm_benchmark(st, c); });
  kernel("sparse/compact_rows", [s](benchmark::State& st) { sparse_compact(st, s); });
  kernel("sparse/latent_index", [s](benchmark::State& st) { sparse_latent_index(st, s); });
  kernel("sparse/decode", [s](benchmark::State& st) { sparse_decode(st, s); });
  kernel("sparse/decoder_gradient_atomic",
         [s](benchmark::State& st) { sparse_decoder_gradient(st, s, false); });
  kernel("sparse/decoder_gradient_sorted",
         [s](benchmark::State& st) { sparse_decoder_gradient(st, s, true); });
  kernel("sparse/activation_gradient",
         [s](benchmark::State& st) { sparse_activation_gradient(st, s); });
  kernel("sparse/encoder_gradient", [s](benchmark::State& st) { sparse_encoder_gradient(st, s); });
  kernel("adam/beta1:0", [s](benchmark::State& st) { adam(st, s, 0.0f); });
  kernel("adam/beta1:0.9", [s](benchmark::State& st) { adam(st, s, 0.9f); });
  kernel("renormalize_rows", [s](benchmark::State& st) { renormalize(st, s); });
  kernel("project_decoder_gradient", [s](benchmark::State& st) { projection(st, s); });

  for (const int64_t bytes : allreduce_sizes())
    benchmark::RegisterBenchmark("MPI_Allreduce",
                                 [bytes](benchmark::State& st) { allreduce(st, bytes); })
        ->Arg(bytes)
        ->Iterations(allreduce_iterations(bytes))
        ->UseManualTime()
        ->Unit(benchmark::kMicrosecond);
}

// The results file's context (src/io/results.hpp) as Google Benchmark's string context, nested
// objects flattened to "a.b". "date" is left out: Google Benchmark writes its own, and JSON keys
// must be unique.
void add_context_fields(const std::string& prefix, const nlohmann::json& object) {
  for (const auto& [key, value] : object.items()) {
    if (value.is_object())
      add_context_fields(prefix + key + ".", value);
    else if (prefix + key != "date")
      benchmark::AddCustomContext(prefix + key,
                                  value.is_string() ? value.get<std::string>() : value.dump());
  }
}

void add_context(const Shape& s, int ranks) {
  add_context_fields("", run_context(ranks, ranks, 1));
  benchmark::AddCustomContext("shape.B", std::to_string(s.B));
  benchmark::AddCustomContext("shape.d", std::to_string(s.d));
  benchmark::AddCustomContext("shape.M", std::to_string(s.M));
  benchmark::AddCustomContext("topk.k", std::to_string(s.k));
}

// ---- main ------------------------------------------------------------------------------------

constexpr const char* kUsage =
    "usage: saescale-kernels [--shape=B,d,M[,k]] [--kokkos-...] [--benchmark_...]\n"
    "  --shape=B,d,M[,k]  batch rows, model dimension, latents (default 2048,512,8192); k: TopK's\n"
    "                     k and the sparse kernels' entries per row (default 32). Issue 8's\n"
    "                     sparse shape: --shape=2048,512,32768,32\n"
    "Under mpiexec every rank runs every benchmark; rank 0 alone prints and writes files.\n\n";

// Argument errors: the same on every rank, so rank 0 alone reports them.
struct UsageError : Error {
  using Error::Error;
};

struct Options {
  Shape shape;
  bool help = false;
  std::vector<char*> kokkos_args, benchmark_args;  // argv[0] first
};

// "B,d,M" or "B,d,M,k": positive integers, M at least k (default 32).
Shape parse_shape(const std::string& text) {
  int64_t B = 0, d = 0, M = 0, k = 32;
  char trailing = 0;
  const char* text_c = text.c_str();
  const bool four = std::sscanf(text_c, "%" SCNd64 ",%" SCNd64 ",%" SCNd64 ",%" SCNd64 "%c", &B, &d,
                                &M, &k, &trailing) == 4;
  const bool three = !four && std::sscanf(text_c, "%" SCNd64 ",%" SCNd64 ",%" SCNd64 "%c", &B, &d,
                                          &M, &trailing) == 3;
  if (!(three || four) || B <= 0 || d <= 0 || M <= 0 || k <= 0)
    throw UsageError("--shape expects positive integers B,d,M or B,d,M,k (got '" + text + "')");
  if (M < k) throw UsageError("--shape: M must be at least k = " + std::to_string(k));
  return {B, d, M, k};
}

// Kokkos sees only --kokkos-* arguments, Google Benchmark the rest but --shape; ranks other than
// 0 drop --benchmark_out* (only rank 0 writes the file).
Options parse_arguments(int argc, char** argv, int rank, int ranks) {
  const std::string interleaving = "--benchmark_enable_random_interleaving";
  Options o;
  o.kokkos_args = o.benchmark_args = {argv[0]};
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--help" || arg == "-h")
      o.help = true;
    else if (arg.rfind("--shape=", 0) == 0)
      o.shape = parse_shape(arg.substr(8));
    else if (arg == "--shape")
      throw UsageError("--shape expects --shape=B,d,M[,k]");
    else if (ranks > 1 && arg.rfind(interleaving, 0) == 0 && arg != interleaving + "=false")
      throw UsageError(interleaving + " orders the benchmarks differently on every rank, so " +
                       "their collectives would not match: use it on one rank");
    else if (arg.rfind("--kokkos-", 0) == 0)
      o.kokkos_args.push_back(argv[i]);
    else if (rank == 0 || arg.rfind("--benchmark_out", 0) != 0)
      o.benchmark_args.push_back(argv[i]);
  }
  return o;
}

// Ranks other than 0 run every benchmark (the collectives need them) and report nothing. It is
// their display reporter only: Google Benchmark exits when given a file reporter without
// --benchmark_out, which those ranks drop.
class SilentReporter : public benchmark::BenchmarkReporter {
 public:
  bool ReportContext(const Context&) override { return true; }
  void ReportRuns(const std::vector<Run>&) override {}
};

int run(int argc, char** argv, int rank, int ranks) {
  Options o = parse_arguments(argc, argv, rank, ranks);
  if (o.help) {
    if (rank == 0) {
      std::fputs(kUsage, stdout);
      benchmark::PrintDefaultHelp();
    }
    return 0;
  }
  int kokkos_argc = static_cast<int>(o.kokkos_args.size());
  Kokkos::ScopeGuard kokkos(kokkos_argc, o.kokkos_args.data());
  struct GemmCleanup {  // cuBLAS handles go before Kokkos finalises
    ~GemmCleanup() { gemm_finalize(); }
  } gemm_cleanup;

  int benchmark_argc = static_cast<int>(o.benchmark_args.size());
  benchmark::Initialize(&benchmark_argc, o.benchmark_args.data());
  if (benchmark::ReportUnrecognizedArguments(benchmark_argc, o.benchmark_args.data())) return 1;
  add_context(o.shape, ranks);
  register_benchmarks(o.shape);
  SilentReporter silent;
  benchmark::RunSpecifiedBenchmarks(rank == 0 ? nullptr : &silent);
  benchmark::Shutdown();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (MPI_Init(&argc, &argv) != MPI_SUCCESS) {
    std::fprintf(stderr, "saescale-kernels: error: MPI_Init failed\n");
    return 1;
  }
  int rank = 0, ranks = 1, code = 1;
  try {
    // Errors come back to SAESCALE_MPI_CHECK instead of aborting.
    SAESCALE_MPI_CHECK(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
    SAESCALE_MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
    SAESCALE_MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &ranks));
    code = run(argc, argv, rank, ranks);
  } catch (const UsageError& e) {
    if (rank == 0) std::fprintf(stderr, "saescale-kernels: error: %s\n", e.what());
  } catch (const std::exception& e) {
    // Possibly this rank's alone: name it and end the job (the others would wait in a collective).
    std::fprintf(stderr, "saescale-kernels: error on rank %d: %s\n", rank, e.what());
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  MPI_Finalize();
  return code;
}
