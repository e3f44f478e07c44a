#include "data/synthetic.hpp"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "checked.hpp"
#include "data/rng.hpp"
#include "error.hpp"
#include "host_memory.hpp"

namespace saescale {

namespace {
enum Stream : uint64_t { kDictionary = 1, kMagnitudes = 2, kOffset = 3, kTokens = 4 };

double parse_number(const std::string& key, const std::string& value) {
  try {
    size_t used = 0;
    const double v = std::stod(value, &used);
    if (used != value.size()) throw std::invalid_argument("trailing");
    return v;
  } catch (const std::exception&) {
    throw Error("--data synthetic: '" + key + "=" + value + "' is not a number");
  }
}
}  // namespace

SyntheticSpec SyntheticSpec::parse(const std::string& text, int64_t d, uint64_t default_seed) {
  SyntheticSpec s;
  s.d = d;
  s.seed = default_seed;
  if (text != "synthetic") {
    if (text.rfind("synthetic:", 0) != 0)
      throw Error("--data '" + text + "' is not a synthetic spec");
    std::stringstream items(text.substr(10));
    std::string item;
    while (std::getline(items, item, ',')) {
      const auto eq = item.find('=');
      if (eq == std::string::npos)
        throw Error("--data synthetic: expected key=value, got '" + item + "'");
      const std::string key = item.substr(0, eq), value = item.substr(eq + 1);
      const double v = parse_number(key, value);
      if ((key == "features" || key == "tokens" || key == "seed") &&
          !(v >= 0 && v <= double(kMaxElements) && v == std::floor(v)))
        throw Error("--data synthetic: " + key + "=" + value +
                    " must be a whole number in [0, 2^50]");
      if (key == "features")
        s.features = static_cast<int64_t>(v);
      else if (key == "l0")
        s.l0 = v;
      else if (key == "alpha")
        s.alpha = v;
      else if (key == "mag_min")
        s.mag_min = v;
      else if (key == "mag_max")
        s.mag_max = v;
      else if (key == "noise")
        s.noise = v;
      else if (key == "offset")
        s.offset = v;
      else if (key == "seed")
        s.seed = static_cast<uint64_t>(v);
      else if (key == "tokens")
        s.tokens = static_cast<int64_t>(v);
      else
        throw Error(
            "--data synthetic: unknown key '" + key +
            "' (known: features, l0, alpha, mag_min, mag_max, noise, offset, seed, tokens)");
    }
  }
  if (s.d <= 0) throw Error("--data synthetic needs --d-model");
  if (s.features < 1) throw Error("--data synthetic: features must be >= 1");
  if (!(s.l0 > 0) || s.l0 > s.features / 2.0)
    throw Error("--data synthetic: l0 must be in (0, features/2]");
  if (!(s.mag_min > 0) || s.mag_max < s.mag_min)
    throw Error("--data synthetic: need 0 < mag_min <= mag_max");
  if (s.noise < 0 || s.offset < 0 || s.alpha < 0)
    throw Error("--data synthetic: noise, offset and alpha must be >= 0");
  return s;
}

std::string SyntheticSpec::describe() const {
  std::ostringstream o;
  o << "synthetic:features=" << features << ",l0=" << l0 << ",alpha=" << alpha
    << ",mag_min=" << mag_min << ",mag_max=" << mag_max << ",noise=" << noise
    << ",offset=" << offset << ",seed=" << seed;
  if (tokens) o << ",tokens=" << tokens;
  return o.str();
}

SyntheticData::SyntheticData(const SyntheticSpec& spec) : spec_(spec) {
  const int64_t d = spec.d, F = spec.features;
  const int64_t dictionary = checked_elements(F, d, "--data synthetic: features x d");
  check_host_memory(4 * dictionary, "--data synthetic's dictionary (features x d floats)",
                    "give fewer features or a smaller --d-model");
  dictionary_.resize(F * d);
  for (int64_t j = 0; j < F; ++j) {
    Rng rng(spec.seed, kDictionary, j);
    double norm2 = 0;
    for (int64_t c = 0; c < d; ++c) {
      const double v = rng.normal();
      dictionary_[j * d + c] = static_cast<float>(v);
      norm2 += v * v;
    }
    const float inv = static_cast<float>(1 / std::sqrt(norm2));
    for (int64_t c = 0; c < d; ++c) dictionary_[j * d + c] *= inv;
  }
  magnitude_.resize(F);
  for (int64_t j = 0; j < F; ++j) {
    Rng rng(spec.seed, kMagnitudes, j);
    magnitude_[j] =
        static_cast<float>(spec.mag_min * std::pow(spec.mag_max / spec.mag_min, rng.uniform()));
  }
  offset_.assign(d, 0.f);
  if (spec.offset > 0) {
    Rng rng(spec.seed, kOffset, 0);
    double norm2 = 0;
    for (auto& v : offset_) {
      v = static_cast<float>(rng.normal());
      norm2 += double(v) * v;
    }
    for (auto& v : offset_) v = static_cast<float>(v * spec.offset / std::sqrt(norm2));
  }
  cdf_.resize(F);
  double total = 0;
  for (int64_t j = 0; j < F; ++j) cdf_[j] = total += std::pow(double(j + 1), -spec.alpha);
  for (auto& c : cdf_) c /= total;
}

void SyntheticData::generate(int64_t first, int64_t n, float* out,
                             std::vector<int64_t>* feature_counts) const {
  const int64_t d = spec_.d, F = spec_.features;
  const double noise_std = spec_.noise / std::sqrt(double(d));
  std::vector<int64_t> chosen;
  for (int64_t t = 0; t < n; ++t) {
    Rng rng(spec_.seed, kTokens, static_cast<uint64_t>(first + t));
    float* x = out + t * d;
    std::copy(offset_.begin(), offset_.end(), x);
    const int active = std::min<int>(rng.poisson(spec_.l0), static_cast<int>(F));
    chosen.clear();
    while (static_cast<int>(chosen.size()) < active) {
      const double u = rng.uniform();
      const int64_t j = std::lower_bound(cdf_.begin(), cdf_.end(), u) - cdf_.begin();
      const int64_t feature = std::min(j, F - 1);
      if (std::find(chosen.begin(), chosen.end(), feature) != chosen.end()) continue;
      chosen.push_back(feature);
      if (feature_counts) ++(*feature_counts)[feature];
      const float a = static_cast<float>(magnitude_[feature] * (0.5 + rng.uniform()));
      const float* D = dictionary_.data() + feature * d;
      for (int64_t c = 0; c < d; ++c) x[c] += a * D[c];
    }
    for (int64_t c = 0; c < d; ++c) x[c] += static_cast<float>(noise_std * rng.normal());
  }
}

}  // namespace saescale
