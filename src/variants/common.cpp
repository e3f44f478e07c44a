// Shared parts of the Variant interface and the registry.
#include "error.hpp"
#include "kernels/reduce.hpp"
#include "variant.hpp"

namespace saescale {

std::unique_ptr<Variant> make_relu();
std::unique_ptr<Variant> make_jumprelu();
std::unique_ptr<Variant> make_gated();
std::unique_ptr<Variant> make_topk();
std::unique_ptr<Variant> make_batchtopk();

namespace {
struct Entry {
  const char* name;
  std::unique_ptr<Variant> (*make)();
};
const Entry kRegistry[] = {
    {"relu", make_relu}, {"jumprelu", make_jumprelu},   {"gated", make_gated},
    {"topk", make_topk}, {"batchtopk", make_batchtopk},
};
}  // namespace

std::unique_ptr<Variant> make_variant(const std::string& name) {
  for (const auto& e : kRegistry)
    if (name == e.name) return e.make();
  std::string known;
  for (const auto& e : kRegistry) known += std::string(known.empty() ? "" : ", ") + e.name;
  throw Error("variant '" + name + "' is not implemented in this build (available: " + known + ")");
}

std::vector<std::string> variant_names() {
  std::vector<std::string> names;
  for (const auto& e : kRegistry) names.push_back(e.name);
  return names;
}

std::vector<ParamSpec> Variant::param_specs(int64_t d, int64_t width) const {
  return {
      {"W_enc", {d, width}, 1}, {"b_enc", {width}, 0}, {"W_dec", {width, d}, 0}, {"b_dec", {d}}};
}

void residual(const StepBuffers& s, const Matrix& f, const ParamStore& p, const Matrix& out,
              Precision prec, const char* phase, const sparse::SparseRows* rows) {
  if (s.lp_leader())
    kernels::subtract_row("saescale::residual::init", s.x, p.vector("b_dec"), out);
  else
    Kokkos::deep_copy(out, 0.f);
  if (rows)
    sparse::sparse_decode(*rows, p.matrix("W_dec"), out, 1, -1);
  else
    gemm(Trans::N, Trans::N, -1, f, p.matrix("W_dec"), 1, out, prec);
  s.comm->allreduce_sum(phase, comm::Group::lp, Vector(out.data(), out.size()));
}

}  // namespace saescale
