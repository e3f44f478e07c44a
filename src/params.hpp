// All trainable parameters live in ONE flat buffer (and their gradients in another of the same
// layout), so the optimiser, clipping and the data-parallel all-reduce each touch one contiguous
// array. Named tensors are unmanaged views into it, in SAELens names and shapes.
#pragma once
#include <string>
#include <vector>

#include "io/safetensors.hpp"
#include "kernels/types.hpp"

namespace saescale {

struct ParamSpec {
  std::string name;
  std::vector<int64_t> shape;  // [rows, cols] or [n]
  int latent_axis = -1;        // the axis split over latent-parallel ranks (-1: replicated)
  int64_t numel() const;
};

class ParamStore {
 public:
  explicit ParamStore(std::vector<ParamSpec> specs);

  Matrix matrix(const std::string& name) const { return as_matrix(values_, name); }
  Vector vector(const std::string& name) const { return as_vector(values_, name); }
  Matrix grad_matrix(const std::string& name) const { return as_matrix(grads_, name); }
  Vector grad_vector(const std::string& name) const { return as_vector(grads_, name); }

  const Vector& values() const { return values_; }
  const Vector& grads() const { return grads_; }
  const std::vector<ParamSpec>& specs() const { return specs_; }
  bool has(const std::string& name) const;
  // Where a tensor sits in the flat buffer: [offset, offset + numel).
  int64_t offset(const std::string& name) const;
  int64_t numel(const std::string& name) const;
  int64_t total() const { return static_cast<int64_t>(values_.extent(0)); }

  // Host copies in file order (values or gradients), and loading values back.
  std::vector<io::NamedTensor> to_tensors(bool gradients = false) const;
  void load(const std::vector<io::NamedTensor>& tensors, const std::string& source);

 private:
  const ParamSpec& spec(const std::string& name, size_t* offset) const;
  Matrix as_matrix(const Vector& flat, const std::string& name) const;
  Vector as_vector(const Vector& flat, const std::string& name) const;

  std::vector<ParamSpec> specs_;
  Vector values_, grads_;
};

}  // namespace saescale
