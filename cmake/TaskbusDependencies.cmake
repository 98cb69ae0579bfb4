# TaskbusDependencies.cmake - finds what libtaskbus links against: the one
# place each dependency is looked up.
#
# Included by the build (CMakeLists.txt) and, installed next to it, by the
# package's taskbusConfig.cmake when libtaskbus is static (a static library's
# users link its dependencies too). It defines, unless they exist already,
# one imported target per dependency:
#
#   Threads::Threads
#   PkgConfig::TB_LIBEVENT_CORE      libevent_core >= 2.1      libevent-dev
#   PkgConfig::TB_LIBEVENT_PTHREADS  libevent_pthreads >= 2.1  libevent-dev
#   PkgConfig::TB_JANSSON            jansson >= 2.10           libjansson-dev
#   PkgConfig::TB_HIREDIS            hiredis >= 0.14           libhiredis-dev
#   PkgConfig::TB_LIBJWT             libjwt >= 1.10            libjwt-dev
#   taskbus::civetweb                civetweb.h, libcivetweb   libcivetweb-dev
#   taskbus::wslay                   wslay/wslay.h, libwslay   libwslay-dev
#
# (The TB_ and taskbus:: names keep clear of an embedder's own
# pkg_check_modules or find_package targets.) It sets in the including scope:
#
#   TASKBUS_DEPENDENCIES          the targets above, to link with
#   TASKBUS_DEPENDENCIES_FOUND    "name version-or-path" per dependency found
#   TASKBUS_DEPENDENCIES_MISSING  one message per missing dependency, naming
#                                 the Debian package; empty if none is missing
#   TASKBUS_PC_REQUIRES           the pkg-config modules, for taskbus.pc's
#                                 Requires ("libevent_core >= 2.1, ...")
#   TASKBUS_PC_LIBS               the rest, for its Libs ("-lcivetweb ...")
#
# It never stops the caller: the build turns a missing dependency into a
# FATAL_ERROR, the package config into taskbus_FOUND FALSE.

set(TASKBUS_DEPENDENCIES "")
set(TASKBUS_DEPENDENCIES_FOUND "")
set(TASKBUS_DEPENDENCIES_MISSING "")
set(TASKBUS_PC_REQUIRES "")
set(TASKBUS_PC_LIBS "")

# Threads: glibc's, always there; -pthread in taskbus.pc.
find_package(Threads QUIET)
if(TARGET Threads::Threads)
    list(APPEND TASKBUS_DEPENDENCIES Threads::Threads)
else()
    list(APPEND TASKBUS_DEPENDENCIES_MISSING
        "threads not found: install the Debian package libc6-dev")
endif()

# The dependencies that ship a pkg-config module:
# target suffix | module | minimum version | Debian package.
# TASKBUS_WITH_REDIS, TASKBUS_WITH_HTTP and TASKBUS_WITH_JWT (the build's
# TB_WITH_* options, recorded in the installed config under the package's
# own prefix, so that a project's own TB_WITH_* are left alone) say whether
# hiredis, civetweb/wslay and libjwt are needed; unset means yes.
set(_tb_pkg_modules
    "TB_LIBEVENT_CORE|libevent_core|2.1|libevent-dev"
    "TB_LIBEVENT_PTHREADS|libevent_pthreads|2.1|libevent-dev"
    "TB_JANSSON|jansson|2.10|libjansson-dev")
if(NOT DEFINED TASKBUS_WITH_REDIS OR TASKBUS_WITH_REDIS)
    list(APPEND _tb_pkg_modules "TB_HIREDIS|hiredis|0.14|libhiredis-dev")
endif()
if(NOT DEFINED TASKBUS_WITH_JWT OR TASKBUS_WITH_JWT)
    list(APPEND _tb_pkg_modules "TB_LIBJWT|libjwt|1.10|libjwt-dev")
endif()
find_package(PkgConfig QUIET)
if(NOT PKG_CONFIG_FOUND)
    string(CONCAT _tb_message
        "pkg-config not found: install the Debian package pkg-config "
        "(apt-get install pkg-config)")
    list(APPEND TASKBUS_DEPENDENCIES_MISSING "${_tb_message}")
endif()
foreach(_tb_entry IN LISTS _tb_pkg_modules)
    string(REPLACE "|" ";" _tb_entry "${_tb_entry}")
    list(GET _tb_entry 0 _tb_prefix)
    list(GET _tb_entry 1 _tb_module)
    list(GET _tb_entry 2 _tb_min)
    list(GET _tb_entry 3 _tb_debian)
    list(APPEND TASKBUS_PC_REQUIRES "${_tb_module} >= ${_tb_min}")
    if(NOT PKG_CONFIG_FOUND)
        continue()
    endif()
    if(NOT TARGET PkgConfig::${_tb_prefix})
        pkg_check_modules(${_tb_prefix} QUIET IMPORTED_TARGET
            "${_tb_module}>=${_tb_min}")
    endif()
    if(TARGET PkgConfig::${_tb_prefix})
        list(APPEND TASKBUS_DEPENDENCIES PkgConfig::${_tb_prefix})
        list(APPEND TASKBUS_DEPENDENCIES_FOUND
            "${_tb_module} ${${_tb_prefix}_VERSION}")
    else()
        string(CONCAT _tb_message
            "${_tb_module} >= ${_tb_min} not found (pkg-config module "
            "'${_tb_module}'): install the Debian package ${_tb_debian} "
            "(apt-get install ${_tb_debian})")
        list(APPEND TASKBUS_DEPENDENCIES_MISSING "${_tb_message}")
    endif()
endforeach()
list(JOIN TASKBUS_PC_REQUIRES ", " TASKBUS_PC_REQUIRES)

# The dependencies without a usable pkg-config module or CMake package,
# found by header and library: target suffix | header | library | Debian
# package.
# - civetweb ships no pkg-config file, and its CMake package cannot be used
#   on Debian 12: civetweb-targets.cmake also imports civetweb::server, whose
#   file /usr/bin/civetweb belongs to the separate 'civetweb' package, so
#   find_package(civetweb CONFIG) with only libcivetweb-dev installed stops
#   with a FATAL_ERROR that QUIET does not silence.
# - wslay ships neither a pkg-config file nor a version file for its CMake
#   package.
set(_tb_plain_libraries "")
if(NOT DEFINED TASKBUS_WITH_HTTP OR TASKBUS_WITH_HTTP)
    set(_tb_plain_libraries
        "CIVETWEB|civetweb.h|civetweb|libcivetweb-dev"
        "WSLAY|wslay/wslay.h|wslay|libwslay-dev")
endif()
foreach(_tb_entry IN LISTS _tb_plain_libraries)
    string(REPLACE "|" ";" _tb_entry "${_tb_entry}")
    list(GET _tb_entry 0 _tb_name)
    list(GET _tb_entry 1 _tb_header)
    list(GET _tb_entry 2 _tb_library)
    list(GET _tb_entry 3 _tb_debian)
    string(TOLOWER "${_tb_name}" _tb_target)
    set(TASKBUS_PC_LIBS "${TASKBUS_PC_LIBS} -l${_tb_library}")
    if(NOT TARGET taskbus::${_tb_target})
        find_path(TB_${_tb_name}_INCLUDE_DIR "${_tb_header}")
        find_library(TB_${_tb_name}_LIBRARY "${_tb_library}")
        if(TB_${_tb_name}_INCLUDE_DIR AND TB_${_tb_name}_LIBRARY)
            add_library(taskbus::${_tb_target} UNKNOWN IMPORTED)
            set_target_properties(taskbus::${_tb_target} PROPERTIES
                IMPORTED_LOCATION "${TB_${_tb_name}_LIBRARY}"
                INTERFACE_INCLUDE_DIRECTORIES "${TB_${_tb_name}_INCLUDE_DIR}")
        endif()
    endif()
    if(TARGET taskbus::${_tb_target})
        list(APPEND TASKBUS_DEPENDENCIES taskbus::${_tb_target})
        get_target_property(_tb_location taskbus::${_tb_target}
            IMPORTED_LOCATION)
        list(APPEND TASKBUS_DEPENDENCIES_FOUND "${_tb_target} ${_tb_location}")
    else()
        string(CONCAT _tb_message
            "${_tb_target} not found (${_tb_header} / lib${_tb_library}): "
            "install the Debian package ${_tb_debian} "
            "(apt-get install ${_tb_debian})")
        list(APPEND TASKBUS_DEPENDENCIES_MISSING "${_tb_message}")
    endif()
endforeach()
string(STRIP "${TASKBUS_PC_LIBS} -pthread" TASKBUS_PC_LIBS)

unset(_tb_pkg_modules)
unset(_tb_plain_libraries)
unset(_tb_entry)
unset(_tb_prefix)
unset(_tb_module)
unset(_tb_min)
unset(_tb_name)
unset(_tb_header)
unset(_tb_library)
unset(_tb_debian)
unset(_tb_target)
unset(_tb_location)
unset(_tb_message)
