# Finds LibTorch from the PyPI torch wheel in the project's .venv (made by scripts/bootstrap), so
# that `cmake -S . -B build` needs no flags. Torch_DIR or CMAKE_PREFIX_PATH set by the user win.
set(LLMTRAIN_PYTHON "${PROJECT_SOURCE_DIR}/.venv/bin/python" CACHE FILEPATH
    "Python of the reference stack (tests, benchmarks); its torch wheel is the project's LibTorch")

if(NOT Torch_DIR)
  file(GLOB _llmtrain_torch_dirs
       "${PROJECT_SOURCE_DIR}/.venv/lib/python3*/site-packages/torch/share/cmake/Torch")
  if(_llmtrain_torch_dirs)
    list(GET _llmtrain_torch_dirs 0 _llmtrain_torch_dir)
    set(Torch_DIR "${_llmtrain_torch_dir}" CACHE PATH "TorchConfig.cmake of the .venv torch wheel")
  endif()
endif()

# Torch's CUDA setup picks nvcc flags from this list (it ignores CMAKE_CUDA_ARCHITECTURES).
if(NOT DEFINED ENV{TORCH_CUDA_ARCH_LIST} AND NOT TORCH_CUDA_ARCH_LIST)
  set(TORCH_CUDA_ARCH_LIST "8.0;8.6;8.9;9.0")
endif()
# The CUDA wheel's Caffe2 config looks for the CUDA toolkit; keep its noise out of our output.
set(_llmtrain_saved_log_level "${CMAKE_MESSAGE_LOG_LEVEL}")
set(CMAKE_MESSAGE_LOG_LEVEL WARNING)
find_package(Torch CONFIG QUIET)
set(CMAKE_MESSAGE_LOG_LEVEL "${_llmtrain_saved_log_level}")
if(NOT Torch_FOUND)
  message(FATAL_ERROR
    "LibTorch not found. Run scripts/bootstrap first (it installs the pinned torch wheel into "
    ".venv/), or pass -DTorch_DIR=<torch>/share/cmake/Torch.")
endif()
get_filename_component(LLMTRAIN_TORCH_ROOT "${Torch_DIR}/../../.." ABSOLUTE)

# The wheel's CUDA libraries (cuBLAS, NCCL, cuDNN, the CUDA 13 runtime) come from the nvidia-*
# wheels next to torch; libtorch_cuda.so finds them through its RPATH at run time. The linker
# must find the same ones (not an older libnccl of the system toolkit), hence -rpath-link.
file(GLOB LLMTRAIN_TORCH_CUDA_LIB_DIRS LIST_DIRECTORIES true
     "${LLMTRAIN_TORCH_ROOT}/../nvidia/*/lib")
set(LLMTRAIN_TORCH_LINK_OPTIONS "")
if(LLMTRAIN_TORCH_CUDA_LIB_DIRS)
  list(JOIN LLMTRAIN_TORCH_CUDA_LIB_DIRS ":" _llmtrain_rpath_link)
  set(LLMTRAIN_TORCH_LINK_OPTIONS "LINKER:-rpath-link,${_llmtrain_rpath_link}")
endif()
# The CUDA runtime our kernels use: the wheel's libcudart.so.13, the one torch loads, so the
# process has a single CUDA runtime.
find_file(LLMTRAIN_TORCH_CUDART libcudart.so.13 PATHS ${LLMTRAIN_TORCH_CUDA_LIB_DIRS} NO_DEFAULT_PATH)
# Likewise cuBLASLt (QuantizedLinear's GEMMs): the wheel's copy, the one torch's matmuls use.
find_file(LLMTRAIN_TORCH_CUBLASLT libcublasLt.so.13 PATHS ${LLMTRAIN_TORCH_CUDA_LIB_DIRS} NO_DEFAULT_PATH)
message(STATUS "llmtrain: LibTorch ${Torch_VERSION} from ${LLMTRAIN_TORCH_ROOT}")
