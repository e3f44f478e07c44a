// Exact selections whose entries are spread over ranks (docs/parallel.md): the kernels of
// kernels/select/topk.hpp joined by the collectives they need. With one rank in the group they are
// exactly row_topk / batch_topk.
#pragma once
#include "comm/communicator.hpp"
#include "kernels/select/topk.hpp"

namespace saescale::comm {

// Row-wise top-k over latent shards (the lp group): out = ReLU(values + bias) on the k largest
// eligible entries of each row among ALL latents, 0 elsewhere, exactly as one rank would select
// (ties to the lower global index). `eligible_here`: eligible latents on this shard (all: -1).
// Local top-k, all-gather of the candidates' keys, the same k-th key on every shard.
// `entries` (kernels::row_topk) is filled only with one shard (the return value says whether):
// over several, the shards' selections are trimmed after the kernel.
class ShardedRowTopK {
 public:
  bool run(Communicator& comm, const Matrix& values, const Vector& bias, int64_t k,
           kernels::TopkAlgo algo, const Matrix& out, int64_t latent_offset,
           const CountVector& eligible = {}, int64_t eligible_here = -1,
           const CountVector& active = {}, const CountVector& fired = {}, real fire_threshold = 0,
           const char* phase = "selection", const kernels::SelectedEntries& entries = {});

 private:
  kernels::KeyVector candidates_, all_candidates_, kth_;
};

// Batch-wide top-k over the blocks of one global matrix held by the ranks of `group` (world:
// data-parallel rows x latent shards; lp: one replica's shards): out = ReLU(v) on the k_global
// largest entries of the global matrix (ties: lower global row-major index). Returns the smallest
// selected positive value over the group (0 if none).
double sharded_batch_topk(Communicator& comm, Group group, const Matrix& values, const Vector& bias,
                          int64_t k_global, kernels::TopkAlgo algo, const Matrix& out,
                          const CountVector& active = {}, const CountVector& fired = {},
                          real fire_threshold = 0);

}  // namespace saescale::comm
