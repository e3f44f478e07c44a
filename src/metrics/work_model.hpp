// The analytic work of every phase of the step, in one table: FLOPs and the minimum bytes moved
// (each input read once, each output written once; fp32 = 4 bytes, counts 8). Every timed phase
// reports its achieved FLOP/s and GB/s from here, the step its FLOPs, and the kernel benchmarks
// (benchmarks/kernels.cpp) their counters — so a number is always read against the same model.
//
// Shapes are one rank's: B rows, M latents (its shard), d; P its parameters. Selection phases
// count the passes their algorithm makes over B x M (radix: 4 histogram passes; bisect: 33
// counting passes) and no FLOPs. Communication phases are counted by comm/plan.cpp instead.
#pragma once
#include <map>
#include <string>

namespace saescale::metrics {

struct Work {
  double flops = 0, bytes = 0;
};

struct WorkShape {
  std::string variant;  // a registered variant (variants/traits.hpp)
  double B = 0, d = 0, M = 0, P = 0;
  double k = 32, aux_k = 0;  // aux_k > 0: AuxK runs (some latents dead)
  std::string topk_algo = "radix";
  bool adam = true, adam_first_moment = true, clip = false;
};

// Phase name (as Trainer::step() times it) -> work. Phases without work are absent.
std::map<std::string, Work> work_model(const WorkShape& s);

// Work of single kernels, the pieces the phases are made of (also used by the benchmarks).
Work gemm_work(double m, double n, double k);  // C[m,n] = A[m,k] B[k,n]
Work activation_forward_work(const std::string& variant, double B, double M,
                             const std::string& topk_algo);
Work activation_backward_work(const std::string& variant, double B, double M);
Work row_selection_work(double B, double M, const std::string& algo);
Work batch_selection_work(double B, double M, const std::string& algo);
Work adam_work(double P, bool first_moment);
Work renormalize_work(double M, double d);
Work projection_work(double M, double d);

// Sparse kernels (kernels/sparse.hpp) over nnz stored entries of a [B, M] matrix with a [B, cap]
// ELL layout (index int32 + value fp32 = 8 bytes per entry). A gather or scatter over W_dec's rows
// counts min(nnz, M) distinct rows, each read once (the minimum; which rows depends on the data).
// Gradients write all of their [M, d] output (untouched rows zeroed or beta-scaled); out of the
// decode is read too when beta != 0.
Work sparse_compact_work(double B, double M, double nnz);  // dense f in; entries, counts out
Work latent_index_work(double B, double M, double nnz);    // entries in; offsets, entry ids out
Work sparse_decode_work(double B, double d, double M, double nnz, bool reads_out);
Work sparse_decoder_gradient_work(double B, double d, double M, double nnz);
Work sparse_activation_gradient_work(double B, double d, double M, double nnz);
Work sparse_encoder_gradient_work(double B, double d, double M, double nnz);

}  // namespace saescale::metrics
