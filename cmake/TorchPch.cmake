# One precompiled <torch/torch.h>, reused by every target that compiles against LibTorch.
# Parsing LibTorch's headers is about half of a typical translation unit's compile time
# (trainer.cpp 28.6 s -> 19.1 s, gpt2.cpp 22.2 s -> 13.2 s, test_dropout.cpp 21.0 s ->
# 9.7 s, medians of 3 with g++ 12), so it is parsed once per build instead of ~40 times.
# FTRAIN_TORCH_PCH=OFF builds without it.
option(FTRAIN_TORCH_PCH "Precompile <torch/torch.h> once for all targets" ON)

if(FTRAIN_TORCH_PCH)
  add_library(ftrain_torch_pch STATIC ${CMAKE_CURRENT_LIST_DIR}/torch_pch.cpp)
  target_link_libraries(ftrain_torch_pch PUBLIC ${TORCH_LIBRARIES} ftrain_flags)
  target_precompile_headers(ftrain_torch_pch PRIVATE <torch/torch.h>)
endif()

# ftrain_torch_pch(target): `target`'s C++ sources start from the precompiled header.
# GCC falls back to the plain header (with a -Winvalid-pch warning) should a target's
# flags not match it, so the result is the same either way.
function(ftrain_torch_pch target)
  if(FTRAIN_TORCH_PCH)
    target_precompile_headers(${target} REUSE_FROM ftrain_torch_pch)
    target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-Winvalid-pch>)
  endif()
endfunction()
