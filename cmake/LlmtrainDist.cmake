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
  set_property(SOURCE lib/dist/nccl_backend.cpp APPEND PROPERTY COMPILE_OPTIONS
               "-I${LLMTRAIN_NCCL_INCLUDE_DIR}")
endif()
