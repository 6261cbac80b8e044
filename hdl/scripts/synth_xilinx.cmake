# Synthesizes the keel card for a Xilinx UltraScale+ part with yosys (`synth_xilinx -family
# xcup`): LUT, flip-flop, carry, LUTRAM/BRAM and DSP counts for a board bring-up, recorded in
# docs/rtl-synthesis.md next to an Alveo U250's capacity. Unlike synth_check.cmake, the card's
# memories (keel_ram) are synthesized too, so they are mapped to the part's RAM primitives. Writes
# OUT_DIR/yosys_xilinx.log and OUT_DIR/stat_xilinx.txt. Fails on an inferred latch.
#
#   cmake -DYOSYS=yosys -DTOP=keel_card "-DSOURCES=a.sv;b.sv" -DOUT_DIR=dir -P synth_xilinx.cmake

foreach(v YOSYS TOP SOURCES OUT_DIR)
  if(NOT DEFINED ${v})
    message(FATAL_ERROR "synth_xilinx.cmake: ${v} is not set")
  endif()
endforeach()

# CHPARAMS (optional): parameters of TOP for this run, as chparam's options ("-set NIC 0").
set(_chparam "")
if(DEFINED CHPARAMS)
  set(_chparam "chparam ${CHPARAMS} ${TOP}\n")
endif()

file(MAKE_DIRECTORY "${OUT_DIR}")
string(REPLACE ";" " " _src "${SOURCES}")
file(WRITE "${OUT_DIR}/yosys_xilinx.ys"
"read_verilog -sv ${_src}
${_chparam}hierarchy -top ${TOP}
synth_xilinx -family xcup -top ${TOP} -flatten
select -assert-none t:LDCE t:LDPE t:$_DLATCH_* t:$dlatch
tee -o ${OUT_DIR}/stat_xilinx.txt stat -width
")
execute_process(
  COMMAND "${YOSYS}" -q -l "${OUT_DIR}/yosys_xilinx.log" -s "${OUT_DIR}/yosys_xilinx.ys"
  RESULT_VARIABLE rc)
if(rc)
  message(FATAL_ERROR "yosys (synth_xilinx) failed; see ${OUT_DIR}/yosys_xilinx.log")
endif()
file(READ "${OUT_DIR}/yosys_xilinx.log" log)
if(log MATCHES "Latch inferred")
  message(FATAL_ERROR "yosys (synth_xilinx) inferred a latch; see ${OUT_DIR}/yosys_xilinx.log")
endif()
message(STATUS "synth_xilinx of ${TOP} clean; resource summary in ${OUT_DIR}/stat_xilinx.txt")
