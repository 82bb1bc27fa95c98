# CUDA: our own .cu kernels compile and link whenever nvcc is found, with or without a GPU.
# The torch wheel pinned in scripts/requirements.txt is built against CUDA 13.2 and this
# machine's toolkit is CUDA 13.0: the same major version, so both use one CUDA runtime ABI
# (libcudart.so.13) and our kernels run on torch's streams and memory (docs/building.md).
option(LLMTRAIN_WITH_CUDA "Compile the CUDA kernels when nvcc is found" ON)
set(LLMTRAIN_CUDA_ENABLED OFF)
if(LLMTRAIN_WITH_CUDA)
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    enable_language(CUDA)
    # Torch's CMake config resets CMAKE_CUDA_ARCHITECTURES; our kernels set the target property.
    set(LLMTRAIN_CUDA_ARCHITECTURES 80 86 89 90 CACHE STRING "SM versions of our CUDA kernels")
    set(CMAKE_CUDA_STANDARD 17)
    set(CMAKE_CUDA_STANDARD_REQUIRED ON)
    find_package(CUDAToolkit REQUIRED)
    set(LLMTRAIN_CUDA_ENABLED ON)
    message(STATUS "llmtrain: CUDA kernels ON (nvcc ${CMAKE_CUDA_COMPILER_VERSION}, "
                   "sm ${LLMTRAIN_CUDA_ARCHITECTURES})")
  else()
    message(STATUS "llmtrain: nvcc not found, CPU-only build")
  endif()
endif()
