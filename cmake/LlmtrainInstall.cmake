# Install rules and the exported package, so an out-of-tree project can write
#   find_package(llmtrain REQUIRED)
#   target_link_libraries(app PRIVATE llmtrain::llmtrain)
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

install(TARGETS llmtrain EXPORT llmtrainTargets
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
        RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
        INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(DIRECTORY include/llmtrain DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(FILES "${LLMTRAIN_PROTO_OUT}/llmtrain/run_spec.pb.h" "${LLMTRAIN_PROTO_OUT}/llmtrain/sweep.pb.h"
        "${LLMTRAIN_PROTO_OUT}/llmtrain/tb_event.pb.h"
        DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/llmtrain)
install(FILES proto/llmtrain/run_spec.proto proto/llmtrain/sweep.proto DESTINATION ${CMAKE_INSTALL_DATADIR}/llmtrain/proto/llmtrain)
install(TARGETS llmtrain_cli RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(EXPORT llmtrainTargets NAMESPACE llmtrain::
        DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/llmtrain)

configure_package_config_file(cmake/llmtrainConfig.cmake.in
  "${PROJECT_BINARY_DIR}/llmtrainConfig.cmake"
  INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/llmtrain)
write_basic_package_version_file("${PROJECT_BINARY_DIR}/llmtrainConfigVersion.cmake"
  VERSION ${PROJECT_VERSION} COMPATIBILITY SameMinorVersion)
install(FILES "${PROJECT_BINARY_DIR}/llmtrainConfig.cmake"
              "${PROJECT_BINARY_DIR}/llmtrainConfigVersion.cmake"
        DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/llmtrain)
