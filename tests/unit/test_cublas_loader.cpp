// The cuBLAS backend opens cuBLAS at run time (kernels/gemm_cublas.cpp). These tests need no GPU:
// loading the library, binding its symbols and asking its version are host calls. Each case runs
// in a child process (gtest death-test machinery) so that it starts with nothing loaded.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <iostream>

#include "kernels/gemm_cublas.hpp"

namespace {

using saescale::cublas::describe;

bool toolkit_cublas_installed() {
  const char* home = std::getenv("CUDA_HOME");
  for (const std::string dir : {std::string(home ? home : "/usr/local/cuda") + "/lib64",
                                std::string("/usr/local/cuda/lib64")})
    if (std::filesystem::exists(dir + "/libcublas.so." + std::to_string(CUBLAS_LOADER_MAJOR)))
      return true;
  return false;
}

// Child: prints describe() and exits 0 when `loaded` matches whether a library was opened.
[[noreturn]] void report_and_exit(bool expect_loaded) {
  const nlohmann::json d = describe();
  std::cerr << d.dump() << std::endl;
  std::exit(d["error"].is_null() == expect_loaded ? 0 : 1);
}

TEST(CublasLoader, FindsTheToolkitsCublasAndItsVersion) {
  if (!toolkit_cublas_installed()) GTEST_SKIP() << "no CUDA toolkit cuBLAS on this machine";
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        unsetenv("SAESCALE_CUBLAS_LIBRARY");
        const nlohmann::json d = describe();
        std::cerr << d.dump() << std::endl;
        const bool ok = d["error"].is_null() && d["library"].is_string() &&
                        d["version"].get<std::string>().rfind(
                            std::to_string(CUBLAS_LOADER_MAJOR) + ".", 0) == 0;
        std::exit(ok ? 0 : 1);
      },
      testing::ExitedWithCode(0), "\"version\":\"" + std::to_string(CUBLAS_LOADER_MAJOR) + "\\.");
}

TEST(CublasLoader, AnExplicitLibraryThatIsMissingIsOneClearError) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        setenv("SAESCALE_CUBLAS_LIBRARY", "/nonexistent/libcublas.so.13", 1);
        report_and_exit(false);
      },
      testing::ExitedWithCode(0), "/nonexistent/libcublas.so.13.*SAESCALE_CUBLAS_LIBRARY");
  EXPECT_EXIT(
      {
        setenv("SAESCALE_CUBLAS_LIBRARY", "/nonexistent/libcublas.so.13", 1);
        try {
          saescale::cublas::require_loaded();
        } catch (const std::exception& e) {
          const std::string what = e.what();
          std::cerr << what << std::endl;
          std::exit(what.find('\n') == std::string::npos &&
                            what.find("pip install nvidia-cublas") != std::string::npos
                        ? 0
                        : 1);
        }
        std::exit(1);
      },
      testing::ExitedWithCode(0), "was not found");
}

TEST(CublasLoader, ALibraryWithoutCublasSymbolsIsRefused) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        setenv("SAESCALE_CUBLAS_LIBRARY", "libm.so.6", 1);  // loads, but is not cuBLAS
        report_and_exit(false);
      },
      testing::ExitedWithCode(0), "libm.so.6 lacks cublasCreate_v2");
}

}  // namespace
