#include "testing/faults.hpp"

#include <csignal>
#include <cstdlib>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "error.hpp"
#include "model.hpp"

namespace saescale::faults {

namespace {

struct Fault {
  Site site;
  std::string action;
  int64_t step = -1;  // -1: any
  int rank = 0;
  int64_t count = 0;
};

Site parse_site(const std::string& name) {
  if (name == "step") return Site::step;
  if (name == "batch") return Site::batch;
  if (name == "gradients") return Site::gradients;
  if (name == "checkpoint") return Site::checkpoint;
  if (name == "init") return Site::init;
  throw Error("SAESCALE_FAULTS: unknown site '" + name + "'");
}

const std::vector<Fault>& plan() {
  static const std::vector<Fault> faults = [] {
    std::vector<Fault> out;
    const char* text = std::getenv("SAESCALE_FAULTS");
    if (!text || !*text) return out;
    try {
      for (const auto& f : nlohmann::json::parse(text)) {
        Fault fault{parse_site(f.at("site")), f.at("action")};
        const std::string& a = fault.action;
        const bool known = fault.site == Site::step         ? a == "throw" || a == "sigterm"
                           : fault.site == Site::checkpoint ? a == "exit"
                           : fault.site == Site::init ? a == "weaken" || a == "allocate_too_much"
                                                      : a == "nan";
        if (!known)
          throw Error("SAESCALE_FAULTS: no action '" + a + "' at site " + f.at("site").dump());
        fault.step = f.value("step", int64_t(-1));
        fault.rank = f.value("rank", 0);
        fault.count = f.value("count", int64_t(0));
        out.push_back(fault);
      }
    } catch (const nlohmann::json::exception& e) {
      throw Error(std::string("SAESCALE_FAULTS: not a JSON array of faults: ") + e.what());
    }
    return out;
  }();
  return faults;
}

// The first `n` encoder columns scaled by 0.05.
void weaken_latents(Model& model, int64_t n) {
  auto w = model.params().matrix("W_enc");
  Kokkos::parallel_for(
      "saescale::faults::weaken_latents", Kokkos::RangePolicy<ExecSpace>(0, w.extent(0)),
      KOKKOS_LAMBDA(int64_t c) {
        for (int64_t i = 0; i < n && i < static_cast<int64_t>(w.extent(1)); ++i) w(c, i) *= 0.05f;
      });
}

}  // namespace

void inject(const Where& where) {
  for (const Fault& f : plan()) {
    if (f.site != where.site || f.rank != where.rank || (f.step >= 0 && f.step != where.step))
      continue;
    if (f.action == "throw" && where.site == Site::step) {
      throw Error("test fault injected at step " + std::to_string(where.step));
    } else if (f.action == "sigterm" && where.site == Site::step) {
      std::raise(SIGTERM);  // through the real handler, on this rank only
    } else if (f.action == "nan" && where.site == Site::batch) {
      where.batch[0] = std::nanf("");
    } else if (f.action == "nan" && where.site == Site::gradients) {
      Kokkos::deep_copy(Kokkos::subview(where.model->params().grad_vector("W_dec"), 0),
                        std::nanf(""));
    } else if (f.action == "exit" && where.site == Site::checkpoint) {
      std::_Exit(9);
    } else if (f.action == "weaken" && where.site == Site::init) {
      weaken_latents(*where.model, f.count);
    } else if (f.action == "allocate_too_much" && where.site == Site::init) {
      // A real allocation failure, as Kokkos reports it (the preflight leaves none to meet).
      Kokkos::View<char*, MemSpace> huge("saescale::faults::too_much", size_t(1) << 60);
    }
  }
}

}  // namespace saescale::faults
