// Adding a variant is one file: this one. It defines a toy variant (a linear "SAE": f = pi + b_enc,
// no penalty), registers its record and its factory, and the rest of saescale takes it as it
// takes the real ones: the model trains it (its loss and its b_enc gradient against a double
// reference), and the work model, the memory and communication plans and the sparse capacity ask
// its record. Nothing outside this file names it.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "comm/plan.hpp"
#include "kernels/reduce.hpp"
#include "metrics/work_model.hpp"
#include "model.hpp"
#include "support/random.hpp"
#include "variant.hpp"

namespace saescale {
namespace {

class Linear final : public Variant {
 public:
  void allocate(int64_t, int64_t, int64_t width) override {
    g_b_enc_ = SlotView<double>("toy::g_b_enc", accumulator_slots(), width);
  }
  double forward(const ParamStore& p, StepBuffers& s, const Hyper&) override {
    auto pi = s.pi, f = s.f;
    auto b = p.vector("b_enc");
    const int64_t M = pi.extent(1);
    Kokkos::parallel_for(
        "toy::forward", Kokkos::RangePolicy<ExecSpace>(0, pi.size()),
        KOKKOS_LAMBDA(int64_t j) { f.data()[j] = pi.data()[j] + b(j % M); });
    return 0;  // no sparsity penalty
  }
  void backward(ParamStore& p, StepBuffers& s, const Hyper&) override {
    // g_pi = g_f (already in s.g); g_b_enc and the sum reaching b_dec are its column sums.
    kernels::column_sums("toy::g_b_enc", s.g, 1, p.grad_vector("b_enc"), g_b_enc_);
  }

 private:
  SlotView<double> g_b_enc_;
};

VariantTraits linear_traits() {
  VariantTraits t{};
  t.name = "toy_linear";
  t.architecture = "standard";
  t.exported_as = "toy_linear";
  t.defaults.lr = 1e-3, t.defaults.adam_beta1 = 0.9, t.defaults.adam_beta2 = 0.999;
  t.defaults.adam_eps = 1e-8, t.defaults.clip_norm = 0, t.defaults.sparsity_coeff = 0;
  t.parameters = {{ParamShape::Dims::d_by_m, "W_enc"},
                  {ParamShape::Dims::m, "b_enc"},
                  {ParamShape::Dims::m_by_d, "W_dec"},
                  {ParamShape::Dims::d, "b_dec"}};
  t.subtracts_decoder_bias = false;
  t.unit_norm_decoder = false;
  t.selection = VariantTraits::Selection::elementwise;
  t.start = VariantTraits::Start::encoder_bias;
  t.auxiliary = VariantTraits::Auxiliary::none;
  t.b_dec_from_data = false;
  t.forward = {1, 2, 1};
  t.backward = {1, 2, 1};
  t.per_latent_accumulators = 1;
  t.extra_bm_buffers = 0;
  return t;
}

const bool kRegistered = [] {
  register_variant(linear_traits(), [] { return std::unique_ptr<Variant>(new Linear); });
  return true;
}();

TEST(ToyVariant, RegisteredInOneFileAndTrainedLikeTheOthers) {
  ASSERT_TRUE(kRegistered);
  const auto names = variant_names();
  EXPECT_NE(std::find(names.begin(), names.end(), "toy_linear"), names.end());
  const int64_t d = 6, M = 10, B = 9;
  Model m("toy_linear", d, M);
  EXPECT_STREQ(m.variant().name(), "toy_linear");
  m.allocate(B);
  const Hyper h{0, 0.01, 0.05, 1.0, 4, 0};
  m.initialize(h, 3);
  std::mt19937 rng(testing_support::test_seed());
  std::normal_distribution<float> n(0, 1);
  auto p = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), m.params().values());
  for (size_t i = 0; i < p.size(); ++i) p(i) = 0.3f * n(rng);
  Kokkos::deep_copy(m.params().values(), p);
  auto x = Kokkos::create_mirror_view(Kokkos::HostSpace(), m.buffers().x);
  for (size_t i = 0; i < x.size(); ++i) x.data()[i] = n(rng);
  Kokkos::deep_copy(m.buffers().x, x);

  const LossParts loss = m.forward_backward(h, Precision::fp32);
  // The double reference: e = x - ((x W_enc + b_enc) W_dec + b_dec); loss = sum ||e||^2 / B;
  // d loss / d b_enc = -2/B sum_b e_b W_dec^T.
  const auto t = m.params().to_tensors(false);
  const auto g = m.params().to_tensors(true);
  const auto at = [&](const std::vector<io::NamedTensor>& ts, const char* name) {
    for (const auto& tensor : ts)
      if (tensor.name == name) return tensor.values;
    ADD_FAILURE() << "no " << name;
    return std::vector<float>{};
  };
  const auto W_enc = at(t, "W_enc"), b_enc = at(t, "b_enc"), W_dec = at(t, "W_dec"),
             b_dec = at(t, "b_dec"), g_b_enc = at(g, "b_enc");
  double sum = 0;
  std::vector<double> ref_g(M, 0);
  for (int64_t b = 0; b < B; ++b) {
    std::vector<double> f(M), e(d);
    for (int64_t i = 0; i < M; ++i) {
      f[i] = b_enc[i];
      for (int64_t c = 0; c < d; ++c) f[i] += double(x.data()[b * d + c]) * W_enc[c * M + i];
    }
    for (int64_t c = 0; c < d; ++c) {
      double xhat = b_dec[c];
      for (int64_t i = 0; i < M; ++i) xhat += f[i] * W_dec[i * d + c];
      e[c] = x.data()[b * d + c] - xhat;
      sum += e[c] * e[c];
    }
    for (int64_t i = 0; i < M; ++i)
      for (int64_t c = 0; c < d; ++c) ref_g[i] += -2.0 / B * e[c] * W_dec[i * d + c];
  }
  EXPECT_NEAR(loss.total(), sum / B, 1e-4 * sum / B);
  EXPECT_EQ(loss.penalty, 0);
  double scale = 0;
  for (double v : ref_g) scale = std::max(scale, std::fabs(v));
  ASSERT_GT(scale, 0);
  for (int64_t i = 0; i < M; ++i) EXPECT_NEAR(g_b_enc[i], ref_g[i], 1e-4 * scale) << i;

  // The plans and the work model read its record.
  metrics::WorkShape shape;
  shape.variant = "toy_linear", shape.B = B, shape.d = d, shape.M = M, shape.P = 2 * d * M + M + d;
  const auto work = metrics::work_model(shape);
  EXPECT_EQ(work.at("activation").flops, double(B * M));
  EXPECT_EQ(work.count("decoder_projection"), 0u);  // no unit-norm decoder
  Config cfg;
  cfg.variant = "toy_linear", cfg.width = M, cfg.batch_size = B, cfg.k = 4;
  const auto memory = comm::memory_plan(cfg, d, 1, 1, true, 0);
  EXPECT_EQ(memory["parameters"].get<int64_t>(), 4 * (2 * d * M + M + d));
  EXPECT_EQ(cfg.sparse_capacity_or_default(), 32 * 4);
}

}  // namespace
}  // namespace saescale
