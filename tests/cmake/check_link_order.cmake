# cmake -DREADELF=... -DPROGRAMS="a;b" -P check_link_order.cmake
# Every program's first needed library must be libstdc++: some LibTorch wheels export
# copies of std::filesystem's functions, and a program that names libtorch first binds
# to them (their remove_all crashes). cmake/Dependencies.cmake puts libstdc++ first.
foreach(program IN LISTS PROGRAMS)
  execute_process(COMMAND ${READELF} -d ${program} OUTPUT_VARIABLE dynamic RESULT_VARIABLE code)
  if(NOT code EQUAL 0)
    message(FATAL_ERROR "readelf -d ${program} failed")
  endif()
  string(REGEX MATCH "\\(NEEDED\\)[ \t]+Shared library: \\[([A-Za-z0-9_.+-]+)\\]" first "${dynamic}")
  set(first_library "${CMAKE_MATCH_1}")
  if(NOT first_library MATCHES "^libstdc\\+\\+")
    message(FATAL_ERROR "${program}: first needed library is '${first_library}', not libstdc++; "
                        "std::filesystem calls may bind to LibTorch's copies")
  endif()
  message(STATUS "${program}: libstdc++ first")
endforeach()
