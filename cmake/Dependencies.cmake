# Every required dependency stops configuration with the command that installs it.
# `make` (scripts/setup.sh) installs all of them; these messages are for people who
# configure by hand.

macro(ftrain_require found what how)
  if(NOT ${found})
    message(FATAL_ERROR "ftrain: ${what} not found. Install it with: ${how} "
                        "(or run `make test`, which installs everything).")
  endif()
endmacro()

# A CUDA LibTorch probes the local GPU for its architecture list unless one is given;
# build machines have none, so name the data-centre architectures explicitly.
if(NOT DEFINED ENV{TORCH_CUDA_ARCH_LIST} AND NOT TORCH_CUDA_ARCH_LIST)
  set(TORCH_CUDA_ARCH_LIST "8.0;9.0")
endif()
find_package(Torch QUIET)
ftrain_require(Torch_FOUND "LibTorch (the CMake package of the PyPI torch wheel)"
  "scripts/setup.sh, then configure with -DCMAKE_PREFIX_PATH=$(python -c 'import torch; print(torch.utils.cmake_prefix_path)')")

# Some LibTorch wheels (2.11, for one) export their own copies of std::filesystem's
# functions. An executable whose first needed library is libtorch binds to those, and
# their remove_all crashes (a null call). Naming libstdc++ first on every link makes
# the C++ library's own definitions the ones found.
if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
  string(APPEND CMAKE_EXE_LINKER_FLAGS " -Wl,--push-state,--no-as-needed -lstdc++ -Wl,--pop-state")
endif()

find_package(MPI QUIET COMPONENTS C)
ftrain_require(MPI_C_FOUND "MPI" "apt-get install openmpi-bin libopenmpi-dev")
# ftrain uses the C API only; Open MPI's deprecated C++ bindings would need libmpi_cxx.
set_property(TARGET MPI::MPI_C APPEND PROPERTY INTERFACE_COMPILE_DEFINITIONS OMPI_SKIP_MPICXX=1 MPICH_SKIP_MPICXX=1)

find_package(HDF5 QUIET COMPONENTS C)
ftrain_require(HDF5_FOUND "HDF5" "apt-get install libhdf5-dev")

# zlib's CRC-32 checksums checkpoint pieces: fast, and the value Python's zlib.crc32 gives.
find_package(ZLIB QUIET)
ftrain_require(ZLIB_FOUND "zlib" "apt-get install zlib1g-dev")

find_package(Boost 1.74 QUIET COMPONENTS program_options unit_test_framework)
ftrain_require(Boost_FOUND "Boost.Program_options and Boost.Test"
  "apt-get install libboost-program-options-dev libboost-test-dev")

find_package(nlohmann_json 3.10 QUIET)
ftrain_require(nlohmann_json_FOUND "nlohmann-json" "apt-get install nlohmann-json3-dev")

# TensorBoard event files are protocol buffers (launch/telemetry/tensorboard.proto): the library,
# and protoc to compile the messages at build time.
find_package(Protobuf 3 QUIET)
set(FTRAIN_PROTOBUF_FOUND FALSE)
if(Protobuf_FOUND AND Protobuf_PROTOC_EXECUTABLE AND TARGET protobuf::libprotobuf-lite)
  set(FTRAIN_PROTOBUF_FOUND TRUE)
endif()
ftrain_require(FTRAIN_PROTOBUF_FOUND "Protocol Buffers (libprotobuf-lite and protoc)"
  "apt-get install libprotobuf-dev protobuf-compiler")

find_package(PkgConfig QUIET)
if(PkgConfig_FOUND)
  pkg_check_modules(PCRE2 QUIET IMPORTED_TARGET libpcre2-8)
endif()
ftrain_require(PCRE2_FOUND "PCRE2 (Unicode regular expressions for the tokenizer)"
  "apt-get install libpcre2-dev")

find_package(Threads REQUIRED)

# The HDF5 module reports plain variables; wrap them in one target.
add_library(ftrain_hdf5 INTERFACE)
target_include_directories(ftrain_hdf5 SYSTEM INTERFACE ${HDF5_C_INCLUDE_DIRS} ${HDF5_INCLUDE_DIRS})
target_link_libraries(ftrain_hdf5 INTERFACE ${HDF5_C_LIBRARIES})
target_compile_definitions(ftrain_hdf5 INTERFACE ${HDF5_C_DEFINITIONS})

# CUDA and NCCL paths are compiled whenever the LibTorch build has CUDA, so they are
# checked by every build even on machines without a GPU.
set(FTRAIN_WITH_CUDA OFF)
if(TORCH_CUDA_LIBRARIES OR CUDA_FOUND OR TARGET torch_cuda OR TARGET CUDA::cudart)
  set(FTRAIN_WITH_CUDA ON)
endif()
if(FTRAIN_WITH_CUDA)
  find_package(CUDAToolkit QUIET)
  ftrain_require(CUDAToolkit_FOUND "the CUDA toolkit (LibTorch was built with CUDA)"
    "the CUDA toolkit matching the torch wheel, with NCCL")
  # Prefer the NCCL that ships beside the torch wheel (nvidia-nccl), so ftrain and
  # torch_cuda load one and the same libnccl.so.2 at run time.
  get_filename_component(_torch_site "${TORCH_INSTALL_PREFIX}/.." ABSOLUTE)
  set(_wheel_nccl "${_torch_site}/nvidia/nccl")
  find_path(NCCL_INCLUDE_DIR nccl.h HINTS "${_wheel_nccl}/include" ENV NCCL_HOME ${CUDAToolkit_INCLUDE_DIRS} PATH_SUFFIXES include)
  find_library(NCCL_LIBRARY NAMES libnccl.so.2 nccl HINTS "${_wheel_nccl}/lib" ENV NCCL_HOME ${CUDAToolkit_LIBRARY_DIR} PATH_SUFFIXES lib lib64)
  if(NOT NCCL_INCLUDE_DIR OR NOT NCCL_LIBRARY)
    message(FATAL_ERROR "ftrain: LibTorch has CUDA but NCCL was not found. Install NCCL "
                        "(libnccl-dev) or set NCCL_HOME.")
  endif()
  add_library(ftrain_nccl INTERFACE)
  target_include_directories(ftrain_nccl SYSTEM INTERFACE ${NCCL_INCLUDE_DIR})
  target_link_libraries(ftrain_nccl INTERFACE ${NCCL_LIBRARY} CUDA::cudart)
  target_compile_definitions(ftrain_nccl INTERFACE FTRAIN_WITH_NCCL=1)
  message(STATUS "ftrain: CUDA/NCCL paths enabled (NCCL: ${NCCL_LIBRARY})")
  # The project's own kernels (model/fused_ops.cu, model/fused_cross_entropy.cu) for the
  # data-centre architectures, compiled whenever LibTorch has CUDA so every build checks them.
  if(NOT CMAKE_CUDA_COMPILER AND CUDAToolkit_NVCC_EXECUTABLE)
    set(CMAKE_CUDA_COMPILER ${CUDAToolkit_NVCC_EXECUTABLE})
  endif()
  if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
    set(CMAKE_CUDA_ARCHITECTURES 80 90)
  endif()
  set(CMAKE_CUDA_STANDARD 17)
  set(CMAKE_CUDA_STANDARD_REQUIRED ON)
  enable_language(CUDA)
  # libtorch_cuda needs the wheel's libnccl.so.2. The CUDA toolkit's library directory
  # is on LibTorch's rpath too and may hold an older NCCL, so everything that links
  # LibTorch resolves NCCL from the wheel first, at link and at run time.
  get_filename_component(_ftrain_nccl_dir "${NCCL_LIBRARY}" DIRECTORY)
  add_library(ftrain_torch_nccl INTERFACE)
  target_link_options(ftrain_torch_nccl INTERFACE "LINKER:-rpath-link,${_ftrain_nccl_dir}")
  target_link_libraries(ftrain_torch_nccl INTERFACE ftrain_nccl)
  list(APPEND TORCH_LIBRARIES ftrain_torch_nccl)
else()
  message(STATUS "ftrain: LibTorch without CUDA; CUDA/NCCL paths not built")
endif()

# Flags shared by every ftrain target.
add_library(ftrain_flags INTERFACE)
target_compile_options(ftrain_flags INTERFACE $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wno-unused-parameter>)
target_include_directories(ftrain_flags INTERFACE ${PROJECT_SOURCE_DIR})
