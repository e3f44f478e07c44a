// An independent, deliberately plain double-precision implementation of the ReLU and JumpReLU SAE
// losses and gradients, written from sae-variants.md §1 and §5 (no code shared with src/ or
// kernels/). Tests compare the project's float kernels and `saescale grad` against it, and check it
// against central finite differences of its own loss.
#pragma once
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
  std::string variant;  // "relu" or "jumprelu"
  double lambda, bandwidth;
  Tensor x;  // [B, d]
};

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

// L = (1/B) sum_b [ ||x_b - x_hat_b||^2 + penalty_b ]
inline double loss(const Problem& p, const Params& w) {
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

// The JumpReLU straight-through estimator for t = log(theta), from its definition (§5):
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
