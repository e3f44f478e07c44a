// Synthetic activations with a known ground-truth dictionary (superposition toy model):
//   x = offset + sum_{j in S} a_j D_j + noise
// S: Poisson(l0) features drawn without replacement with power-law frequencies p_j ~ (j+1)^-alpha;
// a_j = m_j * U(0.5, 1.5) with per-feature mean magnitudes m_j log-uniform in [mag_min, mag_max];
// D_j random unit vectors; noise ~ N(0, noise^2/d) per dimension. Deterministic from the seed.
#pragma once
#include <string>
#include <vector>

namespace saescale {

struct SyntheticSpec {
  int64_t d = 0;
  int64_t features = 512;
  double l0 = 8;
  double alpha = 0.8;
  double mag_min = 0.5, mag_max = 2.0;
  double noise = 0.05;
  double offset = 0.5;  // norm of a constant mean vector (exercises b_dec / b_enc)
  uint64_t seed = 1;
  int64_t tokens = 0;  // 0: unbounded stream (gen-data needs a number)

  // "synthetic" or "synthetic:features=512,l0=8,..." ; d from --d-model.
  static SyntheticSpec parse(const std::string& spec, int64_t d, uint64_t default_seed);
  std::string describe() const;
};

class SyntheticData {
 public:
  explicit SyntheticData(const SyntheticSpec& spec);
  const SyntheticSpec& spec() const { return spec_; }
  // Tokens [first, first + n) of the stream, row-major [n, d].
  // If `feature_counts` is given ([features]), adds how often each feature was active.
  void generate(int64_t first, int64_t n, float* out,
                std::vector<int64_t>* feature_counts = nullptr) const;
  // The true dictionary, row-major [features, d], unit rows.
  const std::vector<float>& dictionary() const { return dictionary_; }

 private:
  SyntheticSpec spec_;
  std::vector<float> dictionary_, offset_, magnitude_;
  std::vector<double> cdf_;
};

}  // namespace saescale
