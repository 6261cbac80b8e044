# Register map: hdl/regmap/keel_regs.json is the single source of the C++ header, the
# SystemVerilog package and docs/regmap.md (generator: tools/regmap/gen_regmap.py).
#
# Include from the top-level CMakeLists.txt (after enable_testing()):
#   include(cmake/KeelRegmap.cmake)
#
# Provides
#   keel_regs / keel::regs   INTERFACE library: include <keel/regs/keel_regs.h>; linking to it
#                            makes the header get generated before the consumer compiles.
#   keel_regs_gen            custom target generating all three outputs (part of `all`).
#   regmap-update            copies the generated docs over docs/regmap.md (commit the result).
#   KEEL_PYTHON              interpreter used to run the generator.
#   KEEL_REGS_INCLUDE_DIR    directory holding keel/regs/keel_regs.h.
#   KEEL_REGS_SV             generated keel_regs_pkg.sv, for hdl/ (depend on keel_regs_gen).
#   KEEL_REGS_MD             generated regmap.md.
#   tests: regmap_doc_up_to_date, regmap_generator_selftest (label unit),
#          regmap_sv_lint (label rtl, only when verilator is found).

include_guard(GLOBAL)

# Sources are located relative to this file so the module also works when keel is not the
# top-level project; for keel itself this is ${CMAKE_SOURCE_DIR}.
get_filename_component(KEEL_REGMAP_SOURCE_ROOT "${CMAKE_CURRENT_LIST_DIR}/.." ABSOLUTE)

if(NOT KEEL_PYTHON)
  if(EXISTS /usr/bin/python3)
    set(KEEL_PYTHON /usr/bin/python3)
  else()
    find_package(Python3 REQUIRED COMPONENTS Interpreter)
    set(KEEL_PYTHON "${Python3_EXECUTABLE}")
  endif()
endif()

set(_keel_regmap_json "${KEEL_REGMAP_SOURCE_ROOT}/hdl/regmap/keel_regs.json")
set(_keel_regmap_script "${KEEL_REGMAP_SOURCE_ROOT}/tools/regmap/gen_regmap.py")
# The modules gen_regmap.py imports: editing any of them must regenerate the outputs.
set(_keel_regmap_modules)
foreach(_m IN ITEMS regmap_model.py regmap_load.py regmap_text.py regmap_cpp.py regmap_sv.py
                    regmap_md.py)
  list(APPEND _keel_regmap_modules "${KEEL_REGMAP_SOURCE_ROOT}/tools/regmap/${_m}")
endforeach()
set(_keel_regmap_selftest "${KEEL_REGMAP_SOURCE_ROOT}/tools/regmap/test_gen_regmap.py")
set(_keel_regmap_doc "${KEEL_REGMAP_SOURCE_ROOT}/docs/regmap.md")

set(KEEL_REGS_INCLUDE_DIR "${CMAKE_BINARY_DIR}/generated/include")
set(KEEL_REGS_HEADER "${KEEL_REGS_INCLUDE_DIR}/keel/regs/keel_regs.h")
set(KEEL_REGS_SV "${CMAKE_BINARY_DIR}/generated/hdl/keel_regs_pkg.sv")
set(KEEL_REGS_MD "${CMAKE_BINARY_DIR}/generated/docs/regmap.md")

add_custom_command(
  OUTPUT "${KEEL_REGS_HEADER}" "${KEEL_REGS_SV}" "${KEEL_REGS_MD}"
  COMMAND "${KEEL_PYTHON}" "${_keel_regmap_script}"
          --input "${_keel_regmap_json}"
          --cpp "${KEEL_REGS_HEADER}"
          --sv "${KEEL_REGS_SV}"
          --md "${KEEL_REGS_MD}"
  DEPENDS "${_keel_regmap_json}" "${_keel_regmap_script}" ${_keel_regmap_modules}
  COMMENT "Generating register map (keel_regs.h, keel_regs_pkg.sv, regmap.md)"
  VERBATIM)

add_custom_target(keel_regs_gen ALL
  DEPENDS "${KEEL_REGS_HEADER}" "${KEEL_REGS_SV}" "${KEEL_REGS_MD}"
  SOURCES "${_keel_regmap_json}")

add_library(keel_regs INTERFACE)
add_library(keel::regs ALIAS keel_regs)
target_include_directories(keel_regs INTERFACE "$<BUILD_INTERFACE:${KEEL_REGS_INCLUDE_DIR}>")
target_compile_features(keel_regs INTERFACE cxx_std_20)
# Followed transitively: every target linking keel::regs builds after keel_regs_gen.
add_dependencies(keel_regs keel_regs_gen)

# Depends on the target rather than on the file so that only keel_regs_gen owns the rule.
add_custom_target(regmap-update
  COMMAND "${CMAKE_COMMAND}" -E copy_if_different "${KEEL_REGS_MD}" "${_keel_regmap_doc}"
  COMMAND "${CMAKE_COMMAND}" -E echo "Updated ${_keel_regmap_doc}; commit it with the JSON change."
  COMMENT "Copying the generated register map docs to docs/regmap.md"
  VERBATIM)
add_dependencies(regmap-update keel_regs_gen)

add_test(NAME regmap_doc_up_to_date
  COMMAND "${KEEL_PYTHON}" "${_keel_regmap_script}"
          --input "${_keel_regmap_json}" --check-md "${_keel_regmap_doc}")
set_tests_properties(regmap_doc_up_to_date PROPERTIES LABELS "unit" TIMEOUT 60)

add_test(NAME regmap_generator_selftest
  COMMAND "${KEEL_PYTHON}" "${_keel_regmap_selftest}")
set_tests_properties(regmap_generator_selftest PROPERTIES
  LABELS "unit"
  TIMEOUT 300
  ENVIRONMENT "PYTHONDONTWRITEBYTECODE=1")

find_program(VERILATOR_BIN verilator)
if(VERILATOR_BIN)
  # Verilator (5.006) needs a top unit even for lint: name the package itself.
  add_test(NAME regmap_sv_lint
    COMMAND "${VERILATOR_BIN}" --lint-only -Wall --top-module keel_regs_pkg "${KEEL_REGS_SV}"
    WORKING_DIRECTORY "${CMAKE_BINARY_DIR}")
  set_tests_properties(regmap_sv_lint PROPERTIES
    LABELS "rtl"
    TIMEOUT 120
    REQUIRED_FILES "${KEEL_REGS_SV}")
endif()

unset(_keel_regmap_json)
unset(_keel_regmap_script)
unset(_keel_regmap_modules)
unset(_m)
unset(_keel_regmap_selftest)
unset(_keel_regmap_doc)
