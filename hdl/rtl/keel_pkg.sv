`resetall
`timescale 1ns / 1ps
`default_nettype none

// Constants shared by the keel card's modules: NVMe opcodes and status codes, job kinds and
// the encodings of the shell side-band ports. Register offsets live in keel_regs_pkg, which is
// generated from hdl/regmap/keel_regs.json.
//
// Status codes use libnvme's encoding (and keel::nvme::StatusCode's): bit 14 DNR, bits 10:8
// status code type, bits 7:0 status code. A CQE carries it shifted left by one, above the
// phase tag.
package keel_pkg;

  // A module uses a few of these constants; unused ones are not a problem.
  /* verilator lint_off UNUSEDPARAM */

  // ---- NVMe status codes (15 bits) ---------------------------------------------------------
  localparam logic [14:0] SC_SUCCESS = 15'h0000;
  localparam logic [14:0] SC_INVALID_OPCODE = 15'h0001;
  localparam logic [14:0] SC_INVALID_FIELD = 15'h0002;
  localparam logic [14:0] SC_DATA_XFER_ERROR = 15'h0004;
  localparam logic [14:0] SC_INTERNAL_ERROR = 15'h0006;
  localparam logic [14:0] SC_ABORT_REQUESTED = 15'h0007;
  localparam logic [14:0] SC_ABORT_SQ_DELETED = 15'h0008;
  localparam logic [14:0] SC_INVALID_NAMESPACE = 15'h000B;
  localparam logic [14:0] SC_CMD_SEQ_ERROR = 15'h000C;
  localparam logic [14:0] SC_PRP_OFFSET_INVALID = 15'h0013;
  localparam logic [14:0] SC_LBA_OUT_OF_RANGE = 15'h0080;
  localparam logic [14:0] SC_CQ_INVALID = 15'h0100;
  localparam logic [14:0] SC_INVALID_QID = 15'h0101;
  localparam logic [14:0] SC_INVALID_QSIZE = 15'h0102;
  localparam logic [14:0] SC_AER_LIMIT = 15'h0105;
  localparam logic [14:0] SC_INVALID_IV = 15'h0108;
  localparam logic [14:0] SC_INVALID_LOG_PAGE = 15'h0109;
  localparam logic [14:0] SC_INVALID_QDELETE = 15'h010C;
  localparam logic [14:0] SC_DNR = 15'h4000;

  // ---- NVMe opcodes --------------------------------------------------------------------------
  localparam logic [7:0] ADM_DELETE_SQ = 8'h00;
  localparam logic [7:0] ADM_CREATE_SQ = 8'h01;
  localparam logic [7:0] ADM_GET_LOG_PAGE = 8'h02;
  localparam logic [7:0] ADM_DELETE_CQ = 8'h04;
  localparam logic [7:0] ADM_CREATE_CQ = 8'h05;
  localparam logic [7:0] ADM_IDENTIFY = 8'h06;
  localparam logic [7:0] ADM_ABORT = 8'h08;
  localparam logic [7:0] ADM_SET_FEATURES = 8'h09;
  localparam logic [7:0] ADM_GET_FEATURES = 8'h0A;
  localparam logic [7:0] ADM_ASYNC_EVENT = 8'h0C;
  localparam logic [7:0] IO_FLUSH = 8'h00;
  localparam logic [7:0] IO_WRITE = 8'h01;
  localparam logic [7:0] IO_READ = 8'h02;
  localparam logic [7:0] IO_WRITE_ZEROES = 8'h08;

  // ---- Jobs: what the data mover does for one command ---------------------------------------
  localparam logic [2:0] JOB_NONE = 3'd0;   // completion only
  localparam logic [2:0] JOB_D2H = 3'd1;    // card DDR -> host (Read)
  localparam logic [2:0] JOB_H2D = 3'd2;    // host -> card DDR (Write)
  localparam logic [2:0] JOB_I2H = 3'd3;    // internal data (Identify, log page) -> host
  localparam logic [2:0] JOB_ZERO = 3'd4;   // zeroes -> card DDR (Write Zeroes)
  localparam logic [2:0] JOB_FLUSH = 3'd5;  // persist the VF's slice (Flush)

  // Internal data sources of JOB_I2H (the page the generator produces).
  localparam logic [2:0] SRC_ID_CTRL = 3'd0;
  localparam logic [2:0] SRC_ID_NS = 3'd1;
  localparam logic [2:0] SRC_ID_NSLIST = 3'd2;
  localparam logic [2:0] SRC_LOG_ERROR = 3'd3;
  localparam logic [2:0] SRC_LOG_SMART = 3'd4;
  localparam logic [2:0] SRC_LOG_FW = 3'd5;


  // ---- Job record: one command on its way through the pipeline (front end -> per-VF job
  // queue -> data mover -> completion writer). Flat vector; fields at these offsets. --------
  localparam int JR_KIND = 0;      // [2:0]   JOB_*
  localparam int JR_GEN = 3;       // [7:0]   VF generation when the command was fetched
  localparam int JR_SQID = 11;     // [15:0]
  localparam int JR_CQID = 27;     // [15:0]
  localparam int JR_CID = 43;      // [15:0]
  localparam int JR_SQHEAD = 59;   // [15:0]  SQ head after this command was fetched
  localparam int JR_STATUS = 75;   // [14:0]  status so far (SC_*)
  localparam int JR_DW0 = 90;      // [31:0]  CQE dword 0
  localparam int JR_NOCQE = 122;   // [0]     no completion (Asynchronous Event Request)
  localparam int JR_SRC = 123;     // [2:0]   SRC_* of JOB_I2H
  localparam int JR_ADDR = 126;    // [63:0]  card DDR byte address, or internal byte offset
  localparam int JR_BYTES = 190;   // [31:0]  bytes to move
  localparam int JR_PRP1 = 222;    // [63:0]  first host segment (PRP1)
  localparam int JR_MPS = 286;     // [2:0]   CC.MPS: host page is 4 KiB << MPS
  localparam int JR_NSEG = 289;    // [15:0]  further host segments, in the segment RAM
  localparam int JR_CTR = 305;     // [1:0]   counter class: 0 none, 1 read, 2 write, 3 zeroes
  localparam int JR_NLB = 307;     // [16:0]  logical blocks (Read/Write)
  localparam int JR_SRCARG = 324;  // [0]     SRC_ID_NS: report the slice; SRC_ID_NSLIST: list NS 1
  localparam int JR_DATA_OK = 325; // [0]     set by the mover: the data moved without error
  localparam int JR_W = 326;

  // ---- Fault-injection port operations (simulation shells only; tie off on hardware) --------
  localparam logic [2:0] DBG_DROP = 3'd0;         // arg0: completions to drop (added)
  localparam logic [2:0] DBG_DELAY = 3'd1;        // arg0: count, arg1: delay in cycles
  localparam logic [2:0] DBG_READY_DELAY = 3'd2;  // arg1: cycles before CSTS.RDY at next enable
  localparam logic [2:0] DBG_FATAL = 3'd3;        // set CSTS.CFS
  localparam logic [2:0] DBG_REMOVE = 3'd4;       // surprise removal
  localparam logic [2:0] DBG_RESTORE = 3'd5;      // back as after an FLR

  // ---- Function events towards the shell ----------------------------------------------------
  localparam logic [1:0] EVT_FLR_DONE = 2'd0;     // function-level reset finished
  localparam logic [1:0] EVT_CTRL_RESET = 2'd1;   // controller reset (CC.EN 1 -> 0) finished

  // ---- AXI ----------------------------------------------------------------------------------
  localparam logic [1:0] AXI_RESP_OKAY = 2'b00;
  localparam logic [1:0] AXI_RESP_SLVERR = 2'b10;
  localparam logic [1:0] AXI_RESP_DECERR = 2'b11;

  /* verilator lint_on UNUSEDPARAM */

endpackage
