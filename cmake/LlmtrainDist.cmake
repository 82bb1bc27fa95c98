# dist/: c10d process groups. The torch wheel carries Gloo's and NCCL's compiled code and c10d's
# headers, but not Gloo's own headers nor the nccl.h it was built with:
#   - Gloo's headers come from Debian's libgloo-dev (scripts/bootstrap installs it); only
#     lib/dist/gloo_backend.cpp includes them. We link none of Debian's Gloo library: the code
#     is libtorch_cpu's.
#   - lib/dist/nccl_backend.cpp must see the wheel's nccl.h (nvidia/nccl/include), not the CUDA
#     toolkit's older one, because ProcessGroupNCCL::Options embeds ncclConfig_t, whose size
#     changed between them. A -I directory is searched before every -isystem one (the toolkit's
#     include folder is -isystem), so this -I wins.
find_path(LLMTRAIN_GLOO_INCLUDE_DIR gloo/algorithm.h)
if(NOT LLMTRAIN_GLOO_INCLUDE_DIR)
  message(FATAL_ERROR "Gloo's headers (gloo/algorithm.h) not found: install Debian's libgloo-dev "
                      "(scripts/bootstrap does), or set LLMTRAIN_GLOO_INCLUDE_DIR.")
endif()
set_property(SOURCE lib/dist/gloo_backend.cpp APPEND PROPERTY COMPILE_OPTIONS
             "-I${LLMTRAIN_GLOO_INCLUDE_DIR}")
if(LLMTRAIN_CUDA_ENABLED)
  find_path(LLMTRAIN_NCCL_INCLUDE_DIR nccl.h PATHS "${LLMTRAIN_TORCH_ROOT}/../nvidia/nccl/include"
            NO_DEFAULT_PATH)
  if(NOT LLMTRAIN_NCCL_INCLUDE_DIR)
    message(FATAL_ERROR "the torch wheel's nccl.h (site-packages/nvidia/nccl/include) not found; "
                        "the NCCL process group must be compiled against it")
  endif()
  # The NCCL wheel that torch was built with names its version in its dist-info folder;
  # nccl_backend.cpp checks that the nccl.h it compiles against is exactly that one.
  file(GLOB _llmtrain_nccl_dist_info "${LLMTRAIN_TORCH_ROOT}/../nvidia_nccl_cu*-*.dist-info")
  if(NOT _llmtrain_nccl_dist_info MATCHES "nvidia_nccl_cu[0-9]+-([0-9]+)\\.([0-9]+)\\.([0-9]+)")
    message(FATAL_ERROR "the NCCL wheel next to torch (nvidia_nccl_cu*-*.dist-info) not found in "
                        "${LLMTRAIN_TORCH_ROOT}/..: its version must match nccl.h")
  endif()
  set_property(SOURCE lib/dist/nccl_backend.cpp APPEND PROPERTY COMPILE_OPTIONS
               "-I${LLMTRAIN_NCCL_INCLUDE_DIR}")
  set_property(SOURCE lib/dist/nccl_backend.cpp APPEND PROPERTY COMPILE_DEFINITIONS
               "LLMTRAIN_TORCH_NCCL_MAJOR=${CMAKE_MATCH_1}" "LLMTRAIN_TORCH_NCCL_MINOR=${CMAKE_MATCH_2}"
               "LLMTRAIN_TORCH_NCCL_PATCH=${CMAKE_MATCH_3}")
  message(STATUS "llmtrain: NCCL ${CMAKE_MATCH_1}.${CMAKE_MATCH_2}.${CMAKE_MATCH_3} (torch's wheel) "
                 "from ${LLMTRAIN_NCCL_INCLUDE_DIR}")
endif()
