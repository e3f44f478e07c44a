// The factories of the registered variants (their records are in registry.cpp).
#include <utility>
#include <vector>

#include "error.hpp"
#include "variant.hpp"

namespace saescale {

std::unique_ptr<Variant> make_relu();
std::unique_ptr<Variant> make_jumprelu();
std::unique_ptr<Variant> make_gated();
std::unique_ptr<Variant> make_topk();
std::unique_ptr<Variant> make_batchtopk();

namespace {
using Factory = std::unique_ptr<Variant> (*)();
std::vector<std::pair<std::string, Factory>>& factories() {
  static std::vector<std::pair<std::string, Factory>> all = {{"relu", make_relu},
                                                             {"jumprelu", make_jumprelu},
                                                             {"gated", make_gated},
                                                             {"topk", make_topk},
                                                             {"batchtopk", make_batchtopk}};
  return all;
}
}  // namespace

std::unique_ptr<Variant> make_variant(const std::string& name) {
  const VariantTraits& traits = variant_traits(name);  // an unknown name: the error lists them
  for (const auto& [known, make] : factories())
    if (known == name) {
      std::unique_ptr<Variant> v = make();
      v->traits_ = &traits;
      return v;
    }
  throw Error("variant '" + name + "' has a record but no factory (variants/factory.cpp)");
}

void register_variant(const VariantTraits& traits, std::unique_ptr<Variant> (*make)()) {
  register_variant_traits(traits);
  factories().emplace_back(traits.name, make);
}

}  // namespace saescale
