# Generates build_info.cpp at build time (not configure time) so the git commit and dirty flag
# recorded in every results file are those of the sources actually compiled.
set(SAESCALE_BUILD_INFO_CPP ${CMAKE_BINARY_DIR}/generated/build_info.cpp)
string(TOUPPER "${CMAKE_BUILD_TYPE}" _bt)
set(_flags "${CMAKE_CXX_FLAGS} ${CMAKE_CXX_FLAGS_${_bt}}")
if(SAESCALE_NATIVE_APPLIED)
  set(_flags "${_flags} -march=native")
endif()
set(_flags "${_flags} -fno-trapping-math")
string(STRIP "${_flags}" _flags)
add_custom_target(saescale_build_info
  COMMAND ${CMAKE_COMMAND}
          -DSOURCE_DIR=${CMAKE_SOURCE_DIR} -DOUT=${SAESCALE_BUILD_INFO_CPP}
          -DVERSION=${PROJECT_VERSION}
          "-DCOMPILER=${CMAKE_CXX_COMPILER_ID} ${CMAKE_CXX_COMPILER_VERSION}"
          "-DFLAGS=${_flags}" -DBUILD_TYPE=${CMAKE_BUILD_TYPE}
          "-DBLAS=${BLAS_LIBRARIES}" -DCUBLAS=${SAESCALE_HAVE_CUBLAS}
          "-DKOKKOS_FLAVOUR=${SAESCALE_KOKKOS_FLAVOUR}"
          -P ${CMAKE_SOURCE_DIR}/cmake/WriteBuildInfo.cmake
  BYPRODUCTS ${SAESCALE_BUILD_INFO_CPP}
  COMMENT "Recording build information")
