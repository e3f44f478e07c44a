// Shared parts of the Variant interface and the registry.
#include "error.hpp"
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
  return {{"W_enc", {d, width}}, {"b_enc", {width}}, {"W_dec", {width, d}}, {"b_dec", {d}}};
}

std::vector<io::NamedTensor> Variant::export_tensors(const ParamStore& p) const {
  return p.to_tensors();
}

void Variant::import_tensors(ParamStore& p, std::vector<io::NamedTensor> tensors,
                             const std::string& source) const {
  p.load(tensors, source);
}

}  // namespace saescale
