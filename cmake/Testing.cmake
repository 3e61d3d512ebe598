# Test helpers. Every test is a ctest test with a label:
#   unit   one process, Boost.Test
#   mpi    several ranks under mpirun (oversubscribed, allowed as root)
#   python compares against Hugging Face transformers/tokenizers in the venv
# `ctest -L mpi` runs one kind alone.

set(FTRAIN_PYTHON "$ENV{HOME}/.cache/ftrain/venv/bin/python" CACHE FILEPATH
    "Python with torch, transformers, tokenizers, h5py and pytest (scripts/setup.sh)")

set(FTRAIN_MPI_ENV
  OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  OMPI_MCA_rmaps_base_oversubscribe=1
  OMPI_MCA_btl_vader_single_copy_mechanism=none
  OMP_NUM_THREADS=1)

# The executable of one or more Boost.Test sources, started from LibTorch's precompiled
# header when it links a library built on LibTorch.
function(_ftrain_test_executable name sources libs)
  add_executable(${name} ${sources})
  target_link_libraries(${name} PRIVATE ${libs} ftrain_flags Boost::unit_test_framework)
  target_compile_definitions(${name} PRIVATE BOOST_TEST_DYN_LINK)
  set(_torch_libs ftrain_model ftrain_dist ftrain_tensor_parallel ftrain_launch ftrain_checkpoint ftrain_optim
      ftrain_ckpt_tool)
  foreach(lib IN LISTS libs)
    if(lib IN_LIST _torch_libs)
      ftrain_torch_pch(${name})
      break()
    endif()
  endforeach()
endfunction()

function(_ftrain_unit_ctest name)
  add_test(NAME ${name} COMMAND ${ARGN})
  set_tests_properties(${name} PROPERTIES LABELS unit
    ENVIRONMENT "FTRAIN_SOURCE_DIR=${PROJECT_SOURCE_DIR};FTRAIN_BUILD_DIR=${PROJECT_BINARY_DIR};OMP_NUM_THREADS=1")
endfunction()

# ftrain_unit_test(NAME SOURCES a.cpp ... LIBS ...): a test program of its own, whose
# source defines BOOST_TEST_MODULE (the dist/ tests, run under mpirun too, and the
# CUDA kernels' tests, which take arguments).
function(ftrain_unit_test name)
  cmake_parse_arguments(T "" "" "SOURCES;LIBS" ${ARGN})
  _ftrain_test_executable(${name} "${T_SOURCES}" "${T_LIBS}")
  _ftrain_unit_ctest(${name} ${name})
endfunction()

# ftrain_unit_tests(PROGRAM SOURCES test_a.cpp test_b.cpp ... LIBS ...): a folder's unit
# tests in one program, so that it is linked once. Each source is the Boost.Test suite
# named after its file (BOOST_AUTO_TEST_SUITE(test_a)) and the ctest test of that name,
# which runs that suite alone; a source without its suite fails ("no test cases matching
# filter"), it is never skipped.
function(ftrain_unit_tests program)
  cmake_parse_arguments(T "" "" "SOURCES;LIBS" ${ARGN})
  set(_main ${CMAKE_CURRENT_BINARY_DIR}/${program}_main.cpp)
  file(CONFIGURE OUTPUT ${_main} CONTENT "#define BOOST_TEST_MODULE ${program}\n#include <boost/test/unit_test.hpp>\n")
  _ftrain_test_executable(${program} "${T_SOURCES};${_main}" "${T_LIBS}")
  foreach(source IN LISTS T_SOURCES)
    get_filename_component(suite ${source} NAME_WE)
    _ftrain_unit_ctest(${suite} ${program} --run_test=${suite})
  endforeach()
endfunction()

# ftrain_mpi_test(NAME NP n COMMAND exe args...) runs an already-built target or script
# under mpirun with n ranks.
function(ftrain_mpi_test name)
  cmake_parse_arguments(T "" "NP;TIMEOUT" "COMMAND" ${ARGN})
  if(NOT T_TIMEOUT)
    set(T_TIMEOUT 300)
  endif()
  add_test(NAME ${name}
    COMMAND ${MPIEXEC_EXECUTABLE} ${MPIEXEC_NUMPROC_FLAG} ${T_NP} --oversubscribe
            --bind-to none ${T_COMMAND})
  set_tests_properties(${name} PROPERTIES LABELS mpi TIMEOUT ${T_TIMEOUT} PROCESSORS ${T_NP}
    ENVIRONMENT "${FTRAIN_MPI_ENV};FTRAIN_SOURCE_DIR=${PROJECT_SOURCE_DIR};FTRAIN_BUILD_DIR=${PROJECT_BINARY_DIR}")
endfunction()

# ftrain_python_test(NAME SCRIPT path.py [GPU] [LABELS ...]) runs one pytest file against
# the built binaries. A GPU test runs the file as a script, which exits 77 where no GPU
# is visible: ctest reports it as skipped, not passed.
function(ftrain_python_test name)
  cmake_parse_arguments(T "GPU" "SCRIPT;TIMEOUT" "LABELS" ${ARGN})
  if(NOT T_TIMEOUT)
    set(T_TIMEOUT 600)
  endif()
  if(T_GPU)
    add_test(NAME ${name} COMMAND ${FTRAIN_PYTHON} ${T_SCRIPT})
    set_tests_properties(${name} PROPERTIES SKIP_RETURN_CODE 77)
    list(APPEND T_LABELS gpu)
  else()
    add_test(NAME ${name}
      COMMAND ${FTRAIN_PYTHON} -m pytest -q -rs -p no:cacheprovider ${T_SCRIPT})
  endif()
  set_tests_properties(${name} PROPERTIES LABELS "python;${T_LABELS}" TIMEOUT ${T_TIMEOUT}
    ENVIRONMENT "${FTRAIN_MPI_ENV};FTRAIN_SOURCE_DIR=${PROJECT_SOURCE_DIR};FTRAIN_BUILD_DIR=${PROJECT_BINARY_DIR};MPIEXEC=${MPIEXEC_EXECUTABLE};HF_HUB_OFFLINE=1;TRANSFORMERS_OFFLINE=1")
endfunction()
