#include "kernels/gemm_cublas.hpp"

#include <cublas_v2.h>
#include <dlfcn.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "src/error.hpp"

namespace saescale::cublas {
namespace {

// cuBLAS is opened at run time, not linked: a binary (the GPU bundle) then starts where only the
// NVIDIA driver is installed, and uses whichever cuBLAS of the same major version it finds. The
// function types are the toolkit's own declarations, so a signature mismatch is a compile error.
struct Api {
  std::string path, error;  // the library opened, or why none was
  decltype(&::cublasCreate_v2) create = nullptr;
  decltype(&::cublasDestroy_v2) destroy = nullptr;
  decltype(&::cublasSetStream_v2) set_stream = nullptr;
  // cublasGemmEx has a C++ overload (a cudaDataType compute type): name the C one's type.
  cublasStatus_t (*gemm_ex)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int,
                            const void*, const void*, cudaDataType, int, const void*, cudaDataType,
                            int, const void*, void*, cudaDataType, int, cublasComputeType_t,
                            cublasGemmAlgo_t) = nullptr;
  decltype(&::cublasSgemv_v2) sgemv = nullptr;
  decltype(&::cublasGetStatusString) status_string = nullptr;
  decltype(&::cublasGetProperty) property = nullptr;
};

const std::string kSoname = "libcublas.so." + std::to_string(CUBLAS_VER_MAJOR);

std::vector<std::string> candidates() {
  if (const char* exact = std::getenv("SAESCALE_CUBLAS_LIBRARY"); exact && *exact) return {exact};
  std::vector<std::string> c{kSoname};  // LD_LIBRARY_PATH, the binary's RUNPATH, ld.so.cache
  if (const char* home = std::getenv("CUDA_HOME"); home && *home)
    c.push_back(std::string(home) + "/lib64/" + kSoname);
  c.push_back("/usr/local/cuda/lib64/" + kSoname);
  return c;
}

template <class F>
void bind(void* lib, const char* name, F& fn, std::string& missing) {
  fn = reinterpret_cast<F>(dlsym(lib, name));
  if (!fn) missing += std::string(missing.empty() ? "" : ", ") + name;
}

Api load() {
  Api api;
  std::string tried;
  for (const std::string& path : candidates()) {
    void* lib = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
      tried += (tried.empty() ? "" : "; ") + std::string(dlerror());
      continue;
    }
    std::string missing;
    bind(lib, "cublasCreate_v2", api.create, missing);
    bind(lib, "cublasDestroy_v2", api.destroy, missing);
    bind(lib, "cublasSetStream_v2", api.set_stream, missing);
    bind(lib, "cublasGemmEx", api.gemm_ex, missing);
    bind(lib, "cublasSgemv_v2", api.sgemv, missing);
    bind(lib, "cublasGetStatusString", api.status_string, missing);
    bind(lib, "cublasGetProperty", api.property, missing);
    int major = -1;
    if (missing.empty()) api.property(MAJOR_VERSION, &major);
    if (!missing.empty() || major != CUBLAS_VER_MAJOR) {
      tried += (tried.empty() ? "" : "; ") + path +
               (missing.empty() ? " is cuBLAS " + std::to_string(major) : " lacks " + missing);
      dlclose(lib);
      api = Api{};
      continue;
    }
    api.path = path;
    return api;
  }
  api.error = "cuBLAS " + std::to_string(CUBLAS_VER_MAJOR) + " (" + kSoname + ") was not found (" +
              tried +
              "): install the CUDA toolkit or `pip install nvidia-cublas`, or set "
              "SAESCALE_CUBLAS_LIBRARY to the library's path";
  return api;
}

const Api& api() {
  static const Api loaded = load();
  return loaded;
}

const Api& require() {
  const Api& a = api();
  if (!a.error.empty()) throw Error(a.error);
  return a;
}

#define SAESCALE_CUBLAS_CHECK(call)                                                           \
  do {                                                                                        \
    const cublasStatus_t status_ = (call);                                                    \
    if (status_ != CUBLAS_STATUS_SUCCESS)                                                     \
      throw ::saescale::Error(std::string(__FILE__) + ":" + std::to_string(__LINE__) + ": " + \
                              #call + " failed: " + api().status_string(status_));            \
  } while (0)

cublasHandle_t g_handle = nullptr;

cublasHandle_t handle(void* stream) {
  const Api& a = require();
  if (!g_handle) SAESCALE_CUBLAS_CHECK(a.create(&g_handle));
  SAESCALE_CUBLAS_CHECK(a.set_stream(g_handle, static_cast<cudaStream_t>(stream)));
  return g_handle;
}

}  // namespace

void gemm_row_major(bool ta, bool tb, int m, int n, int k, float alpha, const void* A, int lda,
                    const void* B, int ldb, float beta, float* C, int ldc, int precision,
                    void* stream) {
  // Row-major C[m,n] = op(A) op(B)  <=>  column-major C^T[n,m] = op(B)^T op(A)^T.
  const cublasOperation_t opB = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t opA = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cudaDataType_t in_type = precision == 2 ? CUDA_R_16BF : CUDA_R_32F;
  const cublasComputeType_t compute =
      precision == 1 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  cublasHandle_t h = handle(stream);
  SAESCALE_CUBLAS_CHECK(api().gemm_ex(h, opB, opA, n, m, k, &alpha, B, in_type, ldb, A, in_type,
                                      lda, &beta, C, CUDA_R_32F, ldc, compute,
                                      CUBLAS_GEMM_DEFAULT));
}

void gemv_row_major(bool ta, int rows, int cols, float alpha, const float* A, const float* x,
                    float beta, float* y, void* stream) {
  // A row-major [rows, cols] is column-major [cols, rows]: transpose flips.
  cublasHandle_t h = handle(stream);
  SAESCALE_CUBLAS_CHECK(api().sgemv(h, ta ? CUBLAS_OP_N : CUBLAS_OP_T, cols, rows, &alpha, A, cols,
                                    x, 1, &beta, y, 1));
}

void finalize() {
  if (g_handle) api().destroy(g_handle);
  g_handle = nullptr;
}

void require_loaded() { require(); }

nlohmann::json describe() {
  const Api& a = api();
  nlohmann::json out = {
      {"compiled_for", std::to_string(CUBLAS_VER_MAJOR) + "." + std::to_string(CUBLAS_VER_MINOR) +
                           "." + std::to_string(CUBLAS_VER_PATCH)},
      {"library", nullptr},
      {"version", nullptr},
      {"error", nullptr}};
  if (!a.error.empty()) {
    out["error"] = a.error;
    return out;
  }
  int v[3] = {};
  a.property(MAJOR_VERSION, &v[0]);
  a.property(MINOR_VERSION, &v[1]);
  a.property(PATCH_LEVEL, &v[2]);
  Dl_info where{};
  out["library"] = dladdr(reinterpret_cast<void*>(a.create), &where) && where.dli_fname
                       ? where.dli_fname
                       : a.path.c_str();
  out["version"] = std::to_string(v[0]) + "." + std::to_string(v[1]) + "." + std::to_string(v[2]);
  return out;
}

}  // namespace saescale::cublas
