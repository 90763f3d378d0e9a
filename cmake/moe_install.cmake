# install + export + package config: find_package(moe) then target_link_libraries(app PRIVATE moe::moe)
include(CMakePackageConfigHelpers)
install(DIRECTORY include/moe DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(TARGETS moe EXPORT moeTargets)
install(EXPORT moeTargets NAMESPACE moe:: DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/moe)
configure_package_config_file(cmake/moeConfig.cmake.in ${PROJECT_BINARY_DIR}/moeConfig.cmake
                              INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/moe)
write_basic_package_version_file(${PROJECT_BINARY_DIR}/moeConfigVersion.cmake COMPATIBILITY SameMinorVersion
                                 ARCH_INDEPENDENT)
install(FILES ${PROJECT_BINARY_DIR}/moeConfig.cmake ${PROJECT_BINARY_DIR}/moeConfigVersion.cmake
        DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/moe)
