#include "device.hpp"

#include <string>

#include "error.hpp"

#if defined(SAESCALE_CUDA)
#include "cuda_check.hpp"
#endif

namespace saescale::device {

#if defined(SAESCALE_CUDA)

int count() {
  int n = 0;
  const cudaError_t rc = cudaGetDeviceCount(&n);
  if (rc == cudaErrorNoDevice) return 0;
  if (rc != cudaSuccess)
    throw Error(std::string("the CUDA runtime cannot list GPUs: ") + cudaGetErrorString(rc) +
                " (is the NVIDIA driver installed and a GPU visible? check nvidia-smi and "
                "CUDA_VISIBLE_DEVICES)");
  return n;
}

std::optional<Memory> memory() {
  size_t free_bytes = 0, total_bytes = 0;
  SAESCALE_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  return Memory{static_cast<int64_t>(free_bytes), static_cast<int64_t>(total_bytes)};
}

nlohmann::json describe() {
  int id = 0, driver = 0, runtime = 0, sm_clock_khz = 0, mem_clock_khz = 0, bus_bits = 0;
  SAESCALE_CUDA_CHECK(cudaGetDevice(&id));
  cudaDeviceProp p{};
  SAESCALE_CUDA_CHECK(cudaGetDeviceProperties(&p, id));
  SAESCALE_CUDA_CHECK(cudaDriverGetVersion(&driver));
  SAESCALE_CUDA_CHECK(cudaRuntimeGetVersion(&runtime));
  SAESCALE_CUDA_CHECK(cudaDeviceGetAttribute(&sm_clock_khz, cudaDevAttrClockRate, id));
  SAESCALE_CUDA_CHECK(cudaDeviceGetAttribute(&mem_clock_khz, cudaDevAttrMemoryClockRate, id));
  SAESCALE_CUDA_CHECK(cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, id));
  const auto version = [](int v) {
    return std::to_string(v / 1000) + "." + std::to_string(v % 1000 / 10);
  };
  return {{"name", p.name},
          {"device", id},
          {"compute_capability", std::to_string(p.major) + "." + std::to_string(p.minor)},
          {"memory_bytes", static_cast<int64_t>(p.totalGlobalMem)},
          {"multiprocessors", p.multiProcessorCount},
          {"l2_bytes", p.l2CacheSize},
          {"sm_clock_mhz", sm_clock_khz / 1000},
          {"memory_clock_mhz", mem_clock_khz / 1000},
          {"memory_bus_bits", bus_bits},
          {"driver_cuda_version", version(driver)},
          {"runtime_cuda_version", version(runtime)}};
}

#else

int count() { return 0; }
std::optional<Memory> memory() { return std::nullopt; }
nlohmann::json describe() { return nullptr; }

#endif

}  // namespace saescale::device
