// Shared parts of the Variant interface.
#include "error.hpp"
#include "kernels/reduce.hpp"
#include "variant.hpp"

namespace saescale {

std::vector<ParamSpec> Variant::param_specs(int64_t d, int64_t width) const {
  using D = ParamShape::Dims;
  std::vector<ParamSpec> specs;
  for (const ParamShape& p : traits_->parameters) switch (p.dims) {
      case D::d_by_m:
        specs.push_back({p.name, {d, width}, 1});
        break;
      case D::m_by_d:
        specs.push_back({p.name, {width, d}, 0});
        break;
      case D::m:
        specs.push_back({p.name, {width}, 0});
        break;
      case D::d:
        specs.push_back({p.name, {d}});  // replicated over the latent shards
        break;
    }
  return specs;
}

void start_residual(const StepBuffers& s, const ParamStore& p, const Matrix& out) {
  if (s.lp_leader())
    kernels::subtract_row("saescale::residual::init", s.x, p.vector("b_dec"), out);
  else
    Kokkos::deep_copy(out, 0.f);
}

void residual(const StepBuffers& s, const Matrix& f, const ParamStore& p, const Matrix& out,
              Precision prec, const char* phase, const sparse::SparseRows* rows) {
  start_residual(s, p, out);
  if (rows)
    sparse::sparse_decode(*rows, p.matrix("W_dec"), out, 1, -1);
  else
    gemm(Trans::N, Trans::N, -1, f, p.matrix("W_dec"), 1, out, prec);
  s.comm->allreduce_sum(phase, comm::Group::lp, Vector(out.data(), out.size()));
}

}  // namespace saescale
