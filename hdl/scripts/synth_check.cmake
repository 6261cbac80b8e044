# Synthesizes the keel card with yosys (generic `synth`) and fails when a latch is inferred or
# the design does not check clean. The card's memories (keel_ram) are kept as black boxes, as a
# vendor flow maps them to RAM primitives; keel_ram itself is synthesized on its own and held
# to the same rules. Writes OUT_DIR/yosys.log, OUT_DIR/stat.txt (the card's resource summary,
# recorded in docs/rtl-synthesis.md) and OUT_DIR/ram_stat.txt.
#
#   cmake -DYOSYS=yosys -DTOP=keel_card "-DSOURCES=a.sv;b.sv" -DOUT_DIR=dir [-DSTAGE=coarse]
#         -P synth_check.cmake
#
# STAGE=full (default) runs all of `synth`; STAGE=coarse stops before its `fine` step
# (`synth -run begin:fine`: elaboration, proc - where latches are inferred -, opt, wreduce,
# alumacc, share, memory), a quarter of the CPU time (about 80 s instead of 320 s here), with
# the same latch and `check` assertions and a word-level resource summary (stat_coarse.txt).

foreach(v YOSYS TOP SOURCES OUT_DIR)
  if(NOT DEFINED ${v})
    message(FATAL_ERROR "synth_check.cmake: ${v} is not set")
  endif()
endforeach()

# CHPARAMS (optional): parameters of TOP for this run, as chparam's options ("-set NIC 0").
set(_chparam "")
if(DEFINED CHPARAMS)
  set(_chparam "chparam ${CHPARAMS} ${TOP}\n")
endif()

if(NOT DEFINED STAGE)
  set(STAGE full)
endif()
if(STAGE STREQUAL "full")
  set(_synth "synth -top ${TOP}")
  set(_stat "${OUT_DIR}/stat.txt")
elseif(STAGE STREQUAL "coarse")
  set(_synth "synth -top ${TOP} -run begin:fine")
  set(_stat "${OUT_DIR}/stat_coarse.txt")
else()
  message(FATAL_ERROR "synth_check.cmake: STAGE must be full or coarse, not ${STAGE}")
endif()

file(MAKE_DIRECTORY "${OUT_DIR}")
string(REPLACE ";" " " _src "${SOURCES}")
set(_no_latches "select -assert-none t:$_DLATCH_* t:$_DLATCHSR_* t:$dlatch t:$adlatch t:$dlatchsr")

function(run_yosys name script)
  file(WRITE "${OUT_DIR}/${name}.ys" "${script}")
  execute_process(
    COMMAND "${YOSYS}" -q -l "${OUT_DIR}/${name}.log" -s "${OUT_DIR}/${name}.ys"
    RESULT_VARIABLE rc)
  if(rc)
    message(FATAL_ERROR "yosys (${name}) failed: a latch, a check error or a parse error; "
                        "see ${OUT_DIR}/${name}.log")
  endif()
  file(READ "${OUT_DIR}/${name}.log" log)
  if(log MATCHES "Latch inferred")
    message(FATAL_ERROR "yosys (${name}) inferred a latch; see ${OUT_DIR}/${name}.log")
  endif()
endfunction()

run_yosys(yosys_${STAGE}
"read_verilog -sv ${_src}
${_chparam}hierarchy -top ${TOP}
blackbox *keel_ram
${_synth}
${_no_latches}
check -assert
tee -o ${_stat} stat -width
")

run_yosys(yosys_ram
"read_verilog -sv ${_src}
chparam -set WIDTH 64 -set DEPTH 64 -set RD_PORTS 2 keel_ram
synth -top keel_ram
${_no_latches}
check -assert
tee -o ${OUT_DIR}/ram_stat.txt stat -width
")

message(STATUS "synthesis (${STAGE}) of ${TOP} clean; resource summary in ${_stat}")
