# ftrain-sweep (launch/ftrain_sweep.py, launch/scaling_model.py): scaling experiments and
# their analytic model, docs/scaling.md. It is Python run by FTRAIN_PYTHON; configuring
# writes build/ftrain-sweep, a wrapper that runs it there and finds this build's ftrain.
execute_process(COMMAND ${FTRAIN_PYTHON} -c "import matplotlib, numpy, h5py"
  RESULT_VARIABLE FTRAIN_SWEEP_PYTHON_MISSING OUTPUT_QUIET ERROR_QUIET)
if(FTRAIN_SWEEP_PYTHON_MISSING)
  message(WARNING "ftrain-sweep: ${FTRAIN_PYTHON} cannot import matplotlib, numpy and h5py, which the sweep's "
    "reports and plots need: ${FTRAIN_PYTHON} -m pip install -r ${PROJECT_SOURCE_DIR}/scripts/requirements.txt")
endif()

file(CONFIGURE OUTPUT ${PROJECT_BINARY_DIR}/ftrain-sweep @ONLY CONTENT [=[#!/bin/sh
# ftrain-sweep, written by launch/sweep.cmake: the sweep with the project's Python and this build.
FTRAIN_BUILD_DIR="${FTRAIN_BUILD_DIR:-@PROJECT_BINARY_DIR@}" exec "@FTRAIN_PYTHON@" "@PROJECT_SOURCE_DIR@/launch/ftrain_sweep.py" "$@"
]=])
file(CHMOD ${PROJECT_BINARY_DIR}/ftrain-sweep
  PERMISSIONS OWNER_READ OWNER_WRITE OWNER_EXECUTE GROUP_READ GROUP_EXECUTE WORLD_READ WORLD_EXECUTE)
