// Fidelity metrics of docs/variants.md, Fidelity metrics on a held-out set: FVU (numerator and
// denominator summed separately, denominator around the mean), L0, shrinkage, and ground-truth
// recovery.
#pragma once
#include <optional>
#include <vector>

#include <nlohmann/json.hpp>

#include "model.hpp"

namespace saescale {

struct Fidelity {
  double fvu = 0, l0 = 0, shrinkage = 0, mse = 0;
  double never_fired_fraction = 0;  // latents that never fired on the evaluation set
  int64_t tokens = 0;
  std::optional<double> mmcs, recovered_fraction;
  nlohmann::json to_json() const;
};

// rows: host, row-major [n, d], already normalised. Uses the model's step buffers in chunks of its
// batch; the last chunk is padded with repeated rows that are left out of every per-row sum.
Fidelity evaluate(Model& model, const Hyper& h, Precision p, const std::vector<float>& rows,
                  int64_t n);

// MMCS: mean over true features of the max cosine to any decoder row; recovered: share > 0.9.
void ground_truth_recovery(const Model& model, const std::vector<float>& dictionary, Fidelity& out);

}  // namespace saescale
