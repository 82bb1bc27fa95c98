# Compiler settings shared by every target: C++20 (ATen's headers compile only as C++20),
# warnings, ccache, output folders.
set(CMAKE_CXX_STANDARD 20)
set(CMAKE_CXX_STANDARD_REQUIRED ON)
set(CMAKE_CXX_EXTENSIONS OFF)
set(CMAKE_POSITION_INDEPENDENT_CODE ON)
set(CMAKE_EXPORT_COMPILE_COMMANDS ON)

if(NOT CMAKE_BUILD_TYPE AND NOT CMAKE_CONFIGURATION_TYPES)
  set(CMAKE_BUILD_TYPE RelWithDebInfo CACHE STRING "Build type" FORCE)
endif()

find_program(LLMTRAIN_CCACHE ccache)
if(LLMTRAIN_CCACHE)
  set(CMAKE_CXX_COMPILER_LAUNCHER "${LLMTRAIN_CCACHE}")
  set(CMAKE_C_COMPILER_LAUNCHER "${LLMTRAIN_CCACHE}")
  set(CMAKE_CUDA_COMPILER_LAUNCHER "${LLMTRAIN_CCACHE}")
endif()

# Every executable (CLI, examples, benchmarks, tests) lands in build/bin/.
set(CMAKE_RUNTIME_OUTPUT_DIRECTORY "${PROJECT_BINARY_DIR}/bin")
set(CMAKE_LIBRARY_OUTPUT_DIRECTORY "${PROJECT_BINARY_DIR}/lib")
set(CMAKE_ARCHIVE_OUTPUT_DIRECTORY "${PROJECT_BINARY_DIR}/lib")

set(LLMTRAIN_SANITIZE "" CACHE STRING "Sanitizers: empty, 'address,undefined', or 'fuzzer'")
if(LLMTRAIN_SANITIZE STREQUAL "address,undefined")
  add_compile_options(-fsanitize=address,undefined -fno-omit-frame-pointer
                      -fno-sanitize-recover=undefined)
  add_link_options(-fsanitize=address,undefined)
endif()

add_library(llmtrain_warnings INTERFACE)
target_compile_options(llmtrain_warnings INTERFACE
  $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wno-unused-parameter>)
