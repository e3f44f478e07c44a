# Provides the target saescale::kokkos and SAESCALE_KOKKOS_{VERSION,FLAVOUR,DEVICES}.
#
# Kokkos 4.x (clusters) exports Kokkos::kokkos with everything it propagates: we link it and add no
# flags of our own. Debian's libtrilinos-kokkos-dev (Kokkos 3.4 built inside Trilinos) also creates
# Kokkos::kokkos, but computes its include directory one level too high (/usr/lib/include) and puts
# a compile definition among its link libraries; we repair that imported target in place.
find_package(Kokkos REQUIRED)
if(NOT TARGET Kokkos::kokkos)
  message(FATAL_ERROR "Kokkos was found but exports no Kokkos::kokkos target")
endif()
set(SAESCALE_KOKKOS_VERSION "${Kokkos_VERSION}")
set(SAESCALE_KOKKOS_DEVICES "${Kokkos_DEVICES}")
set(SAESCALE_KOKKOS_FLAVOUR "standalone")

if(TARGET trilinos_kokkoscore)
  find_path(SAESCALE_KOKKOS_INCLUDE_DIR Kokkos_Core.hpp
            HINTS ${Kokkos_INCLUDE_DIRS} /usr/include/trilinos NO_DEFAULT_PATH REQUIRED)
  get_target_property(_kokkos_libs Kokkos::kokkos INTERFACE_LINK_LIBRARIES)
  list(FILTER _kokkos_libs EXCLUDE REGEX "^-D")
  set_target_properties(Kokkos::kokkos PROPERTIES
    INTERFACE_INCLUDE_DIRECTORIES "${SAESCALE_KOKKOS_INCLUDE_DIR}"
    INTERFACE_LINK_LIBRARIES "${_kokkos_libs};${CMAKE_DL_LIBS}")
  set(SAESCALE_KOKKOS_FLAVOUR "Trilinos package, Kokkos::kokkos include dir repaired")
endif()

add_library(saescale_kokkos INTERFACE)
add_library(saescale::kokkos ALIAS saescale_kokkos)
target_link_libraries(saescale_kokkos INTERFACE Kokkos::kokkos)
