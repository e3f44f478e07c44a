#include "params.hpp"

#include "error.hpp"

namespace saescale {

int64_t ParamSpec::numel() const {
  int64_t n = 1;
  for (auto s : shape) n *= s;
  return n;
}

namespace {
int64_t total_size(const std::vector<ParamSpec>& specs) {
  int64_t n = 0;
  for (const auto& s : specs) n += s.numel();
  return n;
}
}  // namespace

ParamStore::ParamStore(std::vector<ParamSpec> specs)
    : specs_(std::move(specs)),
      values_("saescale::params", total_size(specs_)),
      grads_("saescale::grads", total_size(specs_)) {}

bool ParamStore::has(const std::string& name) const {
  for (const auto& s : specs_)
    if (s.name == name) return true;
  return false;
}

const ParamSpec& ParamStore::spec(const std::string& name, size_t* offset) const {
  size_t off = 0;
  for (const auto& s : specs_) {
    if (s.name == name) {
      *offset = off;
      return s;
    }
    off += s.numel();
  }
  throw Error("internal error: no parameter named '" + name + "'");
}

int64_t ParamStore::offset(const std::string& name) const {
  size_t off;
  spec(name, &off);
  return static_cast<int64_t>(off);
}

int64_t ParamStore::numel(const std::string& name) const {
  size_t off;
  return spec(name, &off).numel();
}

Matrix ParamStore::as_matrix(const Vector& flat, const std::string& name) const {
  size_t off;
  const auto& s = spec(name, &off);
  if (s.shape.size() != 2) throw Error("internal error: parameter '" + name + "' is not a matrix");
  return Matrix(flat.data() + off, s.shape[0], s.shape[1]);
}

Vector ParamStore::as_vector(const Vector& flat, const std::string& name) const {
  size_t off;
  const auto& s = spec(name, &off);
  return Vector(flat.data() + off, s.numel());
}

std::vector<io::NamedTensor> ParamStore::to_tensors(bool gradients) const {
  auto host =
      Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), gradients ? grads_ : values_);
  std::vector<io::NamedTensor> out;
  size_t off = 0;
  for (const auto& s : specs_) {
    io::NamedTensor t{s.name, s.shape,
                      std::vector<float>(host.data() + off, host.data() + off + s.numel())};
    out.push_back(std::move(t));
    off += s.numel();
  }
  return out;
}

void ParamStore::load(const std::vector<io::NamedTensor>& tensors, const std::string& source) {
  auto host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), values_);
  size_t off = 0;
  for (const auto& s : specs_) {
    const io::NamedTensor* found = nullptr;
    for (const auto& t : tensors)
      if (t.name == s.name) found = &t;
    if (!found) throw Error(source + ": missing tensor '" + s.name + "'");
    if (found->shape != s.shape) {
      throw Error(source + ": tensor '" + s.name + "' has shape " + io::shape_string(found->shape) +
                  " but this run needs " + io::shape_string(s.shape) +
                  " (check --d-model/--width)");
    }
    std::copy(found->values.begin(), found->values.end(), host.data() + off);
    off += s.numel();
  }
  Kokkos::deep_copy(values_, host);
}

}  // namespace saescale
