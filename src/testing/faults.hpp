// Faults injected from outside, for the tests of what a run does when something goes wrong. The
// plan comes from the environment, never from options: SAESCALE_FAULTS holds a JSON array of
// faults, each {"site", "action", "step" (optional), "rank" (default 0), "count"}:
//   site "step"        action "throw" (an error on that rank) or "sigterm" (as Slurm would send)
//   site "batch"       action "nan": the step's batch holds a NaN
//   site "gradients"   action "nan": W_dec's gradient holds a NaN
//   site "checkpoint"  action "exit": the process dies (_Exit(9)) after the step-th checkpoint's
//                      rank files, before its manifest
//   site "init"        action "weaken": the first `count` encoder columns scaled by 0.05 (they
//                      stop winning the selection and die: AuxK's revival starts from them),
//                      or "allocate_too_much": a 2^60-byte View (an allocation that fails)
// Production code calls inject() once at each site; without SAESCALE_FAULTS nothing happens.
// E.g. SAESCALE_FAULTS='[{"site":"step","action":"sigterm","step":9}]' saescale train ...
#pragma once
#include <cstdint>

namespace saescale {
class Model;
}

namespace saescale::faults {

enum class Site { step, batch, gradients, checkpoint, init };

struct Where {
  Site site;
  int64_t step = -1;       // the step (0-based), or the count of checkpoints written
  int rank = 0;            // world rank
  float* batch = nullptr;  // Site::batch: this rank's batch (host)
  Model* model = nullptr;  // Site::gradients, Site::init
};

// Carries out the faults the plan has for `where` (nothing without SAESCALE_FAULTS); a malformed
// plan is one clear error.
void inject(const Where& where);

}  // namespace saescale::faults
