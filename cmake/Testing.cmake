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

# ftrain_unit_test(NAME SOURCES a.cpp ... LIBS ...)
function(ftrain_unit_test name)
  cmake_parse_arguments(T "" "" "SOURCES;LIBS" ${ARGN})
  add_executable(${name} ${T_SOURCES})
  target_link_libraries(${name} PRIVATE ${T_LIBS} ftrain_flags Boost::unit_test_framework)
  target_compile_definitions(${name} PRIVATE BOOST_TEST_DYN_LINK)
  # Tests of the libraries built on LibTorch start from its precompiled header.
  set(_torch_libs ftrain_model ftrain_dist ftrain_tensor_parallel ftrain_launch ftrain_checkpoint ftrain_optim
      ftrain_ckpt_tool)
  foreach(lib IN LISTS T_LIBS)
    if(lib IN_LIST _torch_libs)
      ftrain_torch_pch(${name})
      break()
    endif()
  endforeach()
  add_test(NAME ${name} COMMAND ${name})
  set_tests_properties(${name} PROPERTIES LABELS unit
    ENVIRONMENT "FTRAIN_SOURCE_DIR=${PROJECT_SOURCE_DIR};FTRAIN_BUILD_DIR=${PROJECT_BINARY_DIR};OMP_NUM_THREADS=1")
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
