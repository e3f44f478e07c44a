// What this binary was built from; recorded in every results file's context.
#pragma once

namespace saescale {

struct BuildInfo {
  const char* version;
  const char* git_commit;
  bool git_dirty;
  const char* compiler;
  const char* cxx_flags;
  const char* build_type;
  const char* blas;
  bool cublas;
  const char* kokkos_flavour;
};

const BuildInfo& build_info();

}  // namespace saescale
