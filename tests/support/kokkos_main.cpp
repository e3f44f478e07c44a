// GoogleTest main for tests that use Kokkos: MPI first, then Kokkos, as in the driver.
#include <gtest/gtest.h>
#include <mpi.h>

#include <Kokkos_Core.hpp>

#include "kernels/gemm.hpp"
#include "metrics/memory.hpp"

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  int code;
  {
    Kokkos::ScopeGuard kokkos(argc, argv);
    saescale::metrics::track_allocations();
    code = RUN_ALL_TESTS();
    saescale::gemm_finalize();
  }
  MPI_Finalize();
  return code;
}
