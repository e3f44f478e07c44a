// Distributed training (issue: dp x lp grids), run by ctest under mpiexec at 1, 2 and 4 ranks:
// every (dp, lp) factorisation of the rank count is checked against one rank computing the same
// thing alone, in the same process.
#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "comm/selection.hpp"
#include "support/random.hpp"
#include "trainer.hpp"

namespace saescale {
namespace {

int world_size() {
  int n = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  return n;
}

// The same seed on every rank (each would draw its own otherwise).
unsigned shared_seed() {
  unsigned seed = testing_support::test_seed();
  MPI_Bcast(&seed, 1, MPI_UNSIGNED, 0, MPI_COMM_WORLD);
  return seed;
}

std::vector<std::pair<int, int>> grids() {  // (dp, lp) with dp * lp = ranks
  std::vector<std::pair<int, int>> out;
  for (int lp = 1; lp <= world_size(); ++lp)
    if (world_size() % lp == 0) out.push_back({world_size() / lp, lp});
  return out;
}

// A small run of `variant` with SGD, so that differences between grids or paths stay
// rounding-sized: Adam's normalised step turns rounding-level changes of a near-zero gradient into
// lr-sized steps.
Config small_sgd_run(const std::string& variant, unsigned seed) {
  Config cfg;
  cfg.variant = variant;
  cfg.d_model = 16;
  cfg.width = 64;
  cfg.batch_size = 32;
  cfg.warmup_steps = 1;
  cfg.seed = seed % 1000 + 1;
  cfg.optimizer = "sgd";
  cfg.lr = 0.05;
  cfg.eval_tokens = 64;
  cfg.norm_tokens = 256;
  cfg.progress_every = 1000;
  cfg.gemm_floor = false;
  return cfg;
}

Matrix to_device(const std::vector<float>& v, int64_t rows, int64_t cols) {
  Matrix m("test::matrix", rows, cols);
  auto h = Kokkos::create_mirror_view(m);
  std::copy(v.begin(), v.end(), h.data());
  Kokkos::deep_copy(m, h);
  return m;
}

template <class View>
std::vector<typename View::value_type> to_host(const View& v) {
  auto h = Kokkos::create_mirror(Kokkos::HostSpace(), v);
  Kokkos::deep_copy(h, v);
  return {h.data(), h.data() + h.size()};
}

// Values from a small set, so rows are full of exact ties, many across shard boundaries.
std::vector<float> tied_values(std::mt19937& rng, int64_t n) {
  std::vector<float> v(n);
  for (auto& x : v) x = float(int(rng() % 9) - 4) / 4.0f;
  return v;
}

// This rank's block [rows of its dp slice, columns of its lp shard] of a [R, C] matrix.
std::vector<float> block(const std::vector<float>& full, int64_t R, int64_t C,
                         const comm::Grid& g) {
  const int64_t r = R / g.dp(), c = C / g.lp(), r0 = g.dp_rank() * r, c0 = g.lp_rank() * c;
  std::vector<float> out;
  for (int64_t i = r0; i < r0 + r; ++i)
    out.insert(out.end(), full.begin() + i * C + c0, full.begin() + i * C + c0 + c);
  return out;
}

TEST(GlobalTopK, RowSelectionOverShardsIsTheOneRankSelection) {
  std::mt19937 rng(shared_seed());
  for (const auto& [dp, lp] : grids()) {
    comm::Grid grid = comm::Grid::create(dp, lp);
    comm::Communicator comm(grid, comm::Backend::mpi);
    const int64_t R = 5 * dp, C = 7 * lp;  // shards of 7 latents
    for (const auto algo :
         {kernels::TopkAlgo::radix, kernels::TopkAlgo::bisect, kernels::TopkAlgo::filter}) {
      for (const bool masked : {false, true}) {
        const auto values = tied_values(rng, R * C), bias = tied_values(rng, C);
        // AuxK's eligibility mask (dead latents); some shards may have none.
        std::vector<int64_t> eligible(C, 1);
        if (masked)
          for (auto& e : eligible) e = rng() % 3 == 0;
        const int64_t n_eligible = std::count(eligible.begin(), eligible.end(), 1);
        for (const int64_t k0 : {int64_t(1), int64_t(3), int64_t(9)}) {
          const int64_t k = std::min(k0, n_eligible);
          if (k == 0) continue;
          SCOPED_TRACE("dp " + std::to_string(dp) + " lp " + std::to_string(lp) + " k " +
                       std::to_string(k) + (masked ? " masked" : ""));
          // One rank, the whole matrix.
          Matrix ref("test::ref", R, C);
          CountVector ref_active("test::ref_active", C), ref_fired("test::ref_fired", C);
          CountVector ref_eligible("test::ref_eligible", C);
          {
            auto h = Kokkos::create_mirror_view(ref_eligible);
            std::copy(eligible.begin(), eligible.end(), h.data());
            Kokkos::deep_copy(ref_eligible, h);
          }
          kernels::row_topk(to_device(values, R, C), Vector(to_device(bias, 1, C).data(), C), k,
                            algo, ref, masked ? ref_eligible : CountVector(), ref_active, ref_fired,
                            0.5f);
          // This rank's block.
          const int64_t c = C / lp, c0 = grid.lp_rank() * c;
          Matrix mine = to_device(block(values, R, C, grid), R / dp, c);
          Matrix bias_mine =
              to_device(std::vector<float>(bias.begin() + c0, bias.begin() + c0 + c), 1, c);
          CountVector elig("test::eligible", c), active("test::active", c), fired("test::fired", c);
          {
            auto h = Kokkos::create_mirror_view(elig);
            std::copy(eligible.begin() + c0, eligible.begin() + c0 + c, h.data());
            Kokkos::deep_copy(elig, h);
          }
          const int64_t here = std::count(eligible.begin() + c0, eligible.begin() + c0 + c, 1);
          Matrix out("test::out", R / dp, c);
          comm::ShardedRowTopK selection;
          selection.run(comm, mine, Vector(bias_mine.data(), c), k, algo, out, c0,
                        masked ? elig : CountVector(), masked ? here : -1, active, fired, 0.5f);
          const auto want = block(to_host(ref), R, C, grid);
          EXPECT_EQ(to_host(out), want);
          // Per-latent counts: this shard's rows, summed over the replicas' row slices.
          comm.allreduce_sum("test", comm::Group::dp, active);
          comm.allreduce_sum("test", comm::Group::dp, fired);
          const auto ra = to_host(ref_active), rf = to_host(ref_fired);
          EXPECT_EQ(to_host(active), std::vector<int64_t>(ra.begin() + c0, ra.begin() + c0 + c));
          EXPECT_EQ(to_host(fired), std::vector<int64_t>(rf.begin() + c0, rf.begin() + c0 + c));
        }
      }
    }
  }
}

TEST(GlobalTopK, BatchSelectionOverRanksIsTheOneRankSelection) {
  std::mt19937 rng(shared_seed());
  for (const auto& [dp, lp] : grids()) {
    comm::Grid grid = comm::Grid::create(dp, lp);
    comm::Communicator comm(grid, comm::Backend::mpi);
    const int64_t R = 4 * dp, C = 6 * lp;
    for (const auto algo :
         {kernels::TopkAlgo::radix, kernels::TopkAlgo::bisect, kernels::TopkAlgo::filter}) {
      for (const int64_t k : {int64_t(1), int64_t(7), R * C / 3}) {
        SCOPED_TRACE("dp " + std::to_string(dp) + " lp " + std::to_string(lp) + " k " +
                     std::to_string(k));
        const auto values = tied_values(rng, R * C), bias = tied_values(rng, C);
        // Global scope: the whole [R, C] matrix over every rank.
        Matrix ref("test::ref", R, C);
        const double ref_min = kernels::batch_topk(
            to_device(values, R, C), Vector(to_device(bias, 1, C).data(), C), k, algo, ref);
        const int64_t c = C / lp, c0 = grid.lp_rank() * c;
        Matrix mine = to_device(block(values, R, C, grid), R / dp, c);
        Matrix bias_mine =
            to_device(std::vector<float>(bias.begin() + c0, bias.begin() + c0 + c), 1, c);
        Matrix out("test::out", R / dp, c);
        const double got_min = comm::sharded_batch_topk(comm, comm::Group::world, mine,
                                                        Vector(bias_mine.data(), c), k, algo, out);
        EXPECT_EQ(to_host(out), block(to_host(ref), R, C, grid));
        EXPECT_EQ(got_min, ref_min);
        // Local scope: each replica's own rows, across its latent shards.
        const int64_t r = R / dp, r0 = grid.dp_rank() * r, k_local = std::max<int64_t>(1, k / dp);
        std::vector<float> rows(values.begin() + r0 * C, values.begin() + (r0 + r) * C);
        Matrix ref_local("test::ref_local", r, C);
        kernels::batch_topk(to_device(rows, r, C), Vector(to_device(bias, 1, C).data(), C), k_local,
                            algo, ref_local);
        comm::sharded_batch_topk(comm, comm::Group::lp, mine, Vector(bias_mine.data(), c), k_local,
                                 algo, out);
        const auto want = to_host(ref_local);
        std::vector<float> want_mine;
        for (int64_t i = 0; i < r; ++i)
          want_mine.insert(want_mine.end(), want.begin() + i * C + c0,
                           want.begin() + i * C + c0 + c);
        EXPECT_EQ(to_host(out), want_mine);
      }
    }
  }
}

// The filter's candidate buffers compact many times on blocks this large (capacity 4k + 64): each
// rank keeps only its local top-k, and ties at the threshold that ranks dropped must still be
// counted and taken in the global row-major order. `concentrated` puts more than k copies of the
// largest value in one quadrant, so one rank holds the threshold's ties and drops most of them
// while the others have none. Checked against one rank running radix.
TEST(GlobalTopK, BatchFilterOverRanksIsTheOneRankRadixSelection) {
  std::mt19937 rng(shared_seed());
  for (const auto& [dp, lp] : grids()) {
    comm::Grid grid = comm::Grid::create(dp, lp);
    comm::Communicator comm(grid, comm::Backend::mpi);
    const int64_t R = 24 * dp, C = 50 * lp;
    for (const bool concentrated : {false, true})
      for (const int64_t k : {int64_t(1), int64_t(6), int64_t(40), R * C / 5, R * C / 2}) {
        SCOPED_TRACE("dp " + std::to_string(dp) + " lp " + std::to_string(lp) + " k " +
                     std::to_string(k) + (concentrated ? " concentrated" : ""));
        auto values = tied_values(rng, R * C);
        const auto bias = concentrated ? std::vector<float>(C, 0.f) : tied_values(rng, C);
        if (concentrated)
          for (int64_t i = 0; i < R / 2; ++i)
            for (int64_t j = 0; j < C / 2; ++j) values[i * C + j] = 2.f;
        Matrix ref("test::ref", R, C);
        const double ref_min =
            kernels::batch_topk(to_device(values, R, C), Vector(to_device(bias, 1, C).data(), C), k,
                                kernels::TopkAlgo::radix, ref);
        const int64_t c = C / lp, c0 = grid.lp_rank() * c;
        Matrix mine = to_device(block(values, R, C, grid), R / dp, c);
        Matrix bias_mine =
            to_device(std::vector<float>(bias.begin() + c0, bias.begin() + c0 + c), 1, c);
        Matrix out("test::out", R / dp, c);
        const double got_min =
            comm::sharded_batch_topk(comm, comm::Group::world, mine, Vector(bias_mine.data(), c), k,
                                     kernels::TopkAlgo::filter, out);
        EXPECT_EQ(to_host(out), block(to_host(ref), R, C, grid));
        EXPECT_EQ(got_min, ref_min);
      }
  }
}

// Training: the same global batch on any grid gives the same weights as one rank, within float
// tolerance (the sums are ordered differently), with SGD (small_sgd_run).
TEST(Equivalence, EveryVariantOnEveryGridTrainsLikeOneRank) {
  const unsigned seed = shared_seed();
  for (const std::string variant : {"relu", "jumprelu", "gated", "topk", "batchtopk"}) {
    Config cfg = small_sgd_run(variant, seed);
    cfg.steps = 5;
    cfg.data = "synthetic:features=32,l0=4";
    cfg.k = 4;
    cfg.aux_k = 8;
    cfg.dead_window_tokens = 48;  // latents die within two steps: AuxK runs
    comm::Communicator alone;
    Trainer reference(cfg, alone);
    const auto ref_results = reference.run();
    const double ref_loss = ref_results["fidelity"]["final_train_loss"].get<double>();
    const auto want = reference.model().gather_tensors(false);
    for (const auto& [dp, lp] : grids()) {
      SCOPED_TRACE(variant + " dp " + std::to_string(dp) + " lp " + std::to_string(lp));
      comm::Grid grid = comm::Grid::create(dp, lp);
      comm::Communicator comm(grid, comm::Backend::mpi);
      cfg.dp = dp;
      cfg.lp = lp;
      Trainer trainer(cfg, comm);
      const auto results = trainer.run();
      const auto got = trainer.model().gather_tensors(false);  // whole on lp rank 0
      if (grid.lp_rank() != 0) continue;
      ASSERT_EQ(got.size(), want.size());
      for (size_t t = 0; t < got.size(); ++t) {
        ASSERT_EQ(got[t].shape, want[t].shape) << got[t].name;
        float scale = 1e-3f, worst = 0;
        for (float v : want[t].values) scale = std::max(scale, std::abs(v));
        for (size_t i = 0; i < got[t].values.size(); ++i)
          worst = std::max(worst, std::abs(got[t].values[i] - want[t].values[i]));
        EXPECT_LE(worst, 1e-5f * scale) << got[t].name << " differs from one rank by " << worst;
      }
      // The reduced loss (what a user sees) too.
      EXPECT_NEAR(results["fidelity"]["final_train_loss"].get<double>(), ref_loss,
                  1e-5 * std::abs(ref_loss));
    }
  }
}

// Under latent parallelism each rank's shard holds part of every row, so with the --sparse auto
// crossover at k / lp one rank's rows fit and another's do not. Each rank then takes its own path
// (the CI once hung here: the rank that missed selected again, alone), and the training is the
// same as on the dense path.
TEST(SparseAuto, RanksWhoseRowsDisagreeTrainAsTheDensePath) {
  if (world_size() == 1) GTEST_SKIP() << "needs two ranks or more";
  const unsigned seed = shared_seed();
  for (const std::string variant : {"topk", "batchtopk"}) {
    SCOPED_TRACE(variant);
    // Whether the ranks' paths differed shows in their counts of sparse decodes, unless the counts
    // happen to be equal (about one run in twenty): a few seeds make that chance negligible.
    bool counts_differed = false;
    for (unsigned s = 0; s < 4; ++s) {
      Config cfg = small_sgd_run(variant, seed + s);
      cfg.steps = 12;
      cfg.k = 8;
      cfg.aux_k = 0;
      cfg.lp = world_size();
      comm::Grid grid = comm::Grid::create(1, cfg.lp);
      comm::Communicator comm(grid, comm::Backend::mpi);
      cfg.sparse = "off";
      Trainer dense(cfg, comm);
      const double want = dense.run()["fidelity"]["final_train_loss"].get<double>();
      cfg.sparse = "auto";
      cfg.sparse_crossover = double(cfg.k) / cfg.lp;
      Trainer trainer(cfg, comm);
      const double got = trainer.run()["fidelity"]["final_train_loss"].get<double>();
      EXPECT_NEAR(got, want, 1e-5 * std::abs(want)) << "seed " << cfg.seed;
      int64_t sparse_decodes[2] = {trainer.model().sparse()->counts().at("decode").sparse, 0};
      sparse_decodes[1] = -sparse_decodes[0];  // max and -min in one reduction
      MPI_Allreduce(MPI_IN_PLACE, sparse_decodes, 2, MPI_INT64_T, MPI_MAX, MPI_COMM_WORLD);
      counts_differed = counts_differed || sparse_decodes[0] != -sparse_decodes[1];
    }
    EXPECT_TRUE(counts_differed) << "the case under test never happened: every rank took the "
                                    "same paths";
  }
}

// The bytes the collectives counted are the plan's (comm/plan.cpp: what `saescale plan` prints for
// sizes too large to run here). AuxK is off: whether it runs depends on which latents died.
TEST(Plan, CountedBytesAreThePlannedBytes) {
  for (const std::string variant : {"relu", "jumprelu", "gated", "topk", "batchtopk"}) {
    for (const auto& [dp, lp] : grids()) {
      SCOPED_TRACE(variant + " dp " + std::to_string(dp) + " lp " + std::to_string(lp));
      Config cfg;
      cfg.variant = variant;
      cfg.d_model = 8;
      cfg.width = 32;
      cfg.batch_size = 16;
      cfg.steps = 3;
      cfg.warmup_steps = 1;
      cfg.k = 3;
      cfg.aux_k = 0;
      cfg.eval_tokens = 32;
      cfg.norm_tokens = 64;
      cfg.progress_every = 1000;
      cfg.gemm_floor = false;
      // Rows that always exceed the crossover: every variant runs dense and retries the rows at
      // backed-off steps, and a retry sends nothing more (a selection runs once a step).
      cfg.sparse = "auto";
      cfg.sparse_crossover = 1;
      cfg.dp = dp;
      cfg.lp = lp;
      comm::Grid grid = comm::Grid::create(dp, lp);
      comm::Communicator comm(grid, comm::Backend::mpi);
      Trainer trainer(cfg, comm);
      const auto results = trainer.run();
      const auto& counted = results["timing"]["communication"];
      if (dp * lp == 1) EXPECT_TRUE(counted.empty());
      for (const auto& [phase, c] : counted.items()) {
        ASSERT_TRUE(c["planned_sent_bytes_per_step"].is_number()) << phase << " is not planned";
        EXPECT_DOUBLE_EQ(c["sent_bytes_per_step"].get<double>(),
                         c["planned_sent_bytes_per_step"].get<double>())
            << phase;
      }
    }
  }
}

}  // namespace
}  // namespace saescale
