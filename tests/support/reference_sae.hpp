// An independent, deliberately plain double-precision implementation of the ReLU and JumpReLU SAE
// losses and gradients, written from docs/variants.md, ReLU and JumpReLU (no code shared with src/
// or kernels/). Tests compare the project's float kernels and `saescale grad` against it, and check
// it against central finite differences of its own loss.
#pragma once
#include <algorithm>
#include <cmath>
#include <map>
#include <string>
#include <vector>

namespace reference {

using Tensor = std::vector<double>;
using Params = std::map<std::string, Tensor>;  // W_enc [d,M], b_enc [M], W_dec [M,d], b_dec [d],
                                               // log_threshold [M]

struct Problem {
  int B, d, M;
  std::string variant;  // "relu", "jumprelu" or "gated"
  double lambda, bandwidth;
  Tensor x;  // [B, d]
  // Gated's auxiliary reconstruction uses the decoder as a constant: finite differences perturb
  // the parameters but not these copies (set them to the unperturbed W_dec and b_dec).
  Tensor frozen_W_dec, frozen_b_dec;
  // TopK / BatchTopK: the selection masks (1 = selected, [B, M]) and AuxK's residual target and
  // denominator are constants of the loss (the spec holds the mask fixed and detaches e_res).
  std::vector<int> selected, aux_selected;
  Tensor aux_target;  // e_res [B, d]
  double aux_denominator = 0;
};

inline double relu(double v) { return v > 0 ? v : 0; }

// Gated SAE loss (docs/variants.md, Gated), written out directly.
inline double gated_loss(const Problem& p, const Params& w) {
  double total = 0;
  for (int b = 0; b < p.B; ++b) {
    std::vector<double> xt(p.d), xhat(w.at("b_dec")), aux(p.frozen_b_dec);
    for (int c = 0; c < p.d; ++c) xt[c] = p.x[b * p.d + c] - w.at("b_dec")[c];
    double l1 = 0;
    for (int i = 0; i < p.M; ++i) {
      double proj = 0;
      for (int c = 0; c < p.d; ++c) proj += xt[c] * w.at("W_enc")[c * p.M + i];
      const double pi_gate = proj + w.at("b_gate")[i];
      const double pi_mag = std::exp(w.at("r_mag")[i]) * proj + w.at("b_mag")[i];
      const double f = pi_gate > 0 ? relu(pi_mag) : 0;
      l1 += relu(pi_gate);
      for (int c = 0; c < p.d; ++c) {
        xhat[c] += f * w.at("W_dec")[i * p.d + c];
        aux[c] += relu(pi_gate) * p.frozen_W_dec[i * p.d + c];
      }
    }
    double err = 0, aux_err = 0;
    for (int c = 0; c < p.d; ++c) {
      const double x = p.x[b * p.d + c];
      err += (x - xhat[c]) * (x - xhat[c]);
      aux_err += (x - aux[c]) * (x - aux[c]);
    }
    total += err + p.lambda * l1 + aux_err;
  }
  return total / p.B;
}

// pre-activations pi = x W_enc + b_enc, [B, M]
inline Tensor preactivations(const Problem& p, const Params& w) {
  Tensor pi(p.B * p.M);
  for (int b = 0; b < p.B; ++b)
    for (int i = 0; i < p.M; ++i) {
      double s = w.at("b_enc")[i];
      for (int c = 0; c < p.d; ++c) s += p.x[b * p.d + c] * w.at("W_enc")[c * p.M + i];
      pi[b * p.M + i] = s;
    }
  return pi;
}

inline double dec_norm(const Problem& p, const Params& w, int i) {
  double s = 0;
  for (int c = 0; c < p.d; ++c) s += w.at("W_dec")[i * p.d + c] * w.at("W_dec")[i * p.d + c];
  return std::sqrt(s);
}

inline double activation(const Problem& p, const Params& w, double pre, int i) {
  if (p.variant == "relu") return pre > 0 ? pre : 0;
  const double theta = std::exp(w.at("log_threshold")[i]);
  return pre > theta ? pre : 0;
}

// Pre-activations of the variants that subtract b_dec: pi = (x - b_dec) W_enc + b_enc, [B, M].
inline Tensor centred_preactivations(const Problem& p, const Params& w) {
  Tensor pi(p.B * p.M);
  for (int b = 0; b < p.B; ++b)
    for (int i = 0; i < p.M; ++i) {
      double s = w.at("b_enc")[i];
      for (int c = 0; c < p.d; ++c)
        s += (p.x[b * p.d + c] - w.at("b_dec")[c]) * w.at("W_enc")[c * p.M + i];
      pi[b * p.M + i] = s;
    }
  return pi;
}

// x_hat (or AuxK's z W_dec without b_dec) from ReLU(pi) on a mask.
inline Tensor masked_decode(const Problem& p, const Params& w, const Tensor& pi,
                            const std::vector<int>& mask, bool with_bias) {
  Tensor out(p.B * p.d, 0.0);
  for (int b = 0; b < p.B; ++b) {
    for (int c = 0; c < p.d && with_bias; ++c) out[b * p.d + c] = w.at("b_dec")[c];
    for (int i = 0; i < p.M; ++i) {
      if (!mask[b * p.M + i]) continue;
      const double f = relu(pi[b * p.M + i]);
      for (int c = 0; c < p.d; ++c) out[b * p.d + c] += f * w.at("W_dec")[i * p.d + c];
    }
  }
  return out;
}

// L = (1/B) sum_b ||x_b - x_hat_b||^2 + alpha sum_b ||z_b W_dec - e_res_b||^2 / denominator
inline double selection_loss(const Problem& p, const Params& w) {
  const Tensor pi = centred_preactivations(p, w);
  const Tensor xhat = masked_decode(p, w, pi, p.selected, true);
  double main = 0;
  for (int j = 0; j < p.B * p.d; ++j) main += (p.x[j] - xhat[j]) * (p.x[j] - xhat[j]);
  double aux = 0;
  if (!p.aux_selected.empty()) {
    const Tensor e_aux = masked_decode(p, w, pi, p.aux_selected, false);
    for (int j = 0; j < p.B * p.d; ++j)
      aux += (e_aux[j] - p.aux_target[j]) * (e_aux[j] - p.aux_target[j]);
    aux /= p.aux_denominator;
  }
  return main / p.B + aux / 32;
}

// Selection masks by (value desc, index asc): per row (topk) or over the batch of ReLU(pi)
// (batchtopk); AuxK: per row among `dead` latents.
inline std::vector<int> select_mask(const Tensor& pi, int B, int M, int k, bool batch,
                                    const std::vector<int>& dead = {}) {
  std::vector<int> mask(B * M, 0);
  auto take = [&](std::vector<int>& idx, const std::vector<double>& v, int count) {
    std::partial_sort(idx.begin(), idx.begin() + count, idx.end(),
                      [&](int a, int b) { return v[a] > v[b] || (v[a] == v[b] && a < b); });
    return std::vector<int>(idx.begin(), idx.begin() + count);
  };
  if (batch) {
    std::vector<double> v(pi.size());
    std::vector<int> idx(pi.size());
    for (size_t j = 0; j < pi.size(); ++j) v[j] = relu(pi[j]), idx[j] = static_cast<int>(j);
    for (int j : take(idx, v, k * B)) mask[j] = 1;
    return mask;
  }
  for (int b = 0; b < B; ++b) {
    std::vector<double> v(pi.begin() + b * M, pi.begin() + (b + 1) * M);
    std::vector<int> idx;
    for (int i = 0; i < M; ++i)
      if (dead.empty() || dead[i]) idx.push_back(i);
    for (int i : take(idx, v, k)) mask[b * M + i] = 1;
  }
  return mask;
}

// L = (1/B) sum_b [ ||x_b - x_hat_b||^2 + penalty_b ] (+ auxiliary terms)
inline double loss(const Problem& p, const Params& w) {
  if (p.variant == "gated") return gated_loss(p, w);
  if (p.variant == "topk" || p.variant == "batchtopk") return selection_loss(p, w);
  const Tensor pi = preactivations(p, w);
  double total = 0;
  for (int b = 0; b < p.B; ++b) {
    std::vector<double> xhat(w.at("b_dec"));
    double penalty = 0;
    for (int i = 0; i < p.M; ++i) {
      const double pre = pi[b * p.M + i];
      const double f = activation(p, w, pre, i);
      for (int c = 0; c < p.d; ++c) xhat[c] += f * w.at("W_dec")[i * p.d + c];
      if (p.variant == "relu")
        penalty += f * dec_norm(p, w, i);
      else
        penalty += pre > std::exp(w.at("log_threshold")[i]) ? 1 : 0;
    }
    double err = 0;
    for (int c = 0; c < p.d; ++c)
      err += (p.x[b * p.d + c] - xhat[c]) * (p.x[b * p.d + c] - xhat[c]);
    total += err + p.lambda * penalty;
  }
  return total / p.B;
}

// g_f = g_xhat W_dec^T with g_xhat = -2 (x - x_hat) / B, [B, M]
inline Tensor grad_f(const Problem& p, const Params& w) {
  const Tensor pi = preactivations(p, w);
  Tensor gf(p.B * p.M);
  for (int b = 0; b < p.B; ++b) {
    std::vector<double> e(p.d);
    for (int c = 0; c < p.d; ++c) {
      double xh = w.at("b_dec")[c];
      for (int i = 0; i < p.M; ++i)
        xh += activation(p, w, pi[b * p.M + i], i) * w.at("W_dec")[i * p.d + c];
      e[c] = p.x[b * p.d + c] - xh;
    }
    for (int i = 0; i < p.M; ++i) {
      double s = 0;
      for (int c = 0; c < p.d; ++c) s += -2 * e[c] / p.B * w.at("W_dec")[i * p.d + c];
      gf[b * p.M + i] = s;
    }
  }
  return gf;
}

// The JumpReLU straight-through estimator for t = log(theta), from its definition
// (docs/variants.md, JumpReLU):
//   g_t_i = theta_i * sum_b K((pi - theta)/eps) * ( -(theta/eps) g_f_bi - lambda/(B eps) ),
//   K(u) = 1[-1/2 < u < 1/2].
inline Tensor jumprelu_log_threshold_grad(const Problem& p, const Params& w) {
  const Tensor pi = preactivations(p, w), gf = grad_f(p, w);
  Tensor g(p.M, 0.0);
  for (int i = 0; i < p.M; ++i) {
    const double theta = std::exp(w.at("log_threshold")[i]);
    double s = 0;
    for (int b = 0; b < p.B; ++b) {
      const double u = (pi[b * p.M + i] - theta) / p.bandwidth;
      if (-0.5 < u && u < 0.5)
        s += -(theta / p.bandwidth) * gf[b * p.M + i] - p.lambda / (p.B * p.bandwidth);
    }
    g[i] = theta * s;
  }
  return g;
}

// Central finite differences of `loss` for every entry of parameter `name`.
inline Tensor finite_differences(const Problem& p, Params w, const std::string& name, double h) {
  Tensor g(w.at(name).size());
  for (size_t k = 0; k < g.size(); ++k) {
    const double saved = w[name][k];
    w[name][k] = saved + h;
    const double up = loss(p, w);
    w[name][k] = saved - h;
    const double down = loss(p, w);
    w[name][k] = saved;
    g[k] = (up - down) / (2 * h);
  }
  return g;
}

}  // namespace reference
