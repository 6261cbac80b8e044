`resetall
`timescale 1ns / 1ps
`default_nettype none

// Decoder of one NVMe command (combinational): validates the SQE against the controller state
// the reference model checks, in the model's order, and says what to do with it. Commands that
// move data leave with o_xfer set (the front end then walks their PRPs); everything else has
// its final status here. Queue creation/deletion, features, abort and AER come out as actions
// the front end applies.
module keel_cmd_decode #(
  // IO queue pairs per VF (hardware).
  parameter int NUM_IOQ = 8,
  // CAP.MQES.
  parameter int MQES = 1023,
  // Identify MDTS.
  parameter int MDTS = 5,
  // Queues per VF (derived).
  parameter int QN = NUM_IOQ + 1
) (
  input  wire           en,           // 0: outputs are don't-care (and nothing is computed)
  input  wire  [511:0]  sqe,
  input  wire           admin,        // from the admin SQ
  input  wire  [7:0]    cfg_max_ioq,
  input  wire  [7:0]    res_ioq,
  input  wire  [63:0]   res_base,
  input  wire  [63:0]   res_lbas,
  input  wire  [8:0]    nsqa,         // Number of Queues granted (1-based), 0: not set
  input  wire  [8:0]    ncqa,
  input  wire  [3:0]    aers,         // outstanding Asynchronous Event Requests
  input  wire  [31:0]   cc,
  input  wire  [QN-1:0] sq_live,
  input  wire  [QN-1:0] cq_live,
  input  wire  [QN*9-1:0] cq_refs,

  output logic [2:0]    o_kind,       // keel_pkg::JOB_*
  output logic [14:0]   o_status,
  output logic [31:0]   o_dw0,
  output logic          o_nocqe,
  output logic [2:0]    o_src,
  output logic          o_srcarg,
  output logic [63:0]   o_addr,
  output logic [31:0]   o_bytes,
  output logic [1:0]    o_ctr,
  output logic [16:0]   o_nlb,
  output logic [2:0]    o_mps,
  output logic          o_xfer,       // walk the PRPs for o_bytes

  output logic          o_create_cq,
  output logic          o_create_sq,
  output logic          o_delete_sq,
  output logic          o_delete_cq,
  output logic          o_abort,
  output logic          o_aer,
  output logic          o_set_queues,
  output logic [15:0]   o_qid,
  output logic [16:0]   o_qsize,
  output logic [15:0]   o_cqid,
  output logic          o_ien,
  output logic [15:0]   o_iv,
  output logic [15:0]   o_abort_sqid,
  output logic [15:0]   o_abort_cid,
  output logic [8:0]    o_nsqa,
  output logic [8:0]    o_ncqa
);

  localparam logic [31:0] MDTS_BYTES = 32'(4096) << MDTS;
  localparam int QW = $clog2(QN);

  logic [7:0]   opc, flags;
  logic [31:0]  nsid, cdw10, cdw11, cdw12, cdw13;
  logic [63:0]  prp1, slba;
  logic [16:0]  nlb;
  logic         range_bad;
  logic         qid_ok, cqid_ok;     // in 1..max_ioq
  logic [8:0]   maxq, ioq, gsq, gcq;
  logic [63:0]  page_mask;
  logic         prp1_bad;
  logic [34:0]  log_bytes;
  logic [63:0]  log_off;
  logic [9:0]   log_size;
  logic         any_io_live;
  logic [8:0]   nsq, ncq;
  logic [8:0]   qid9, cqid9;
  logic         sq_live_q, cq_live_q, cqid_live;
  logic [8:0]   refs_q;

  always_comb begin
    opc = sqe[7:0];
    flags = sqe[15:8];
    nsid = sqe[63:32];
    prp1 = sqe[255:192];
    cdw10 = sqe[351:320];
    cdw11 = sqe[383:352];
    cdw12 = sqe[415:384];
    cdw13 = sqe[447:416];
    slba = {cdw11, cdw10};
    nlb = {1'b0, cdw12[15:0]} + 17'd1;
    range_bad = slba >= res_lbas || {47'd0, nlb} > res_lbas - slba;
    maxq = {1'b0, cfg_max_ioq};
    ioq = {1'b0, res_ioq};
    qid9 = cdw10[8:0];
    cqid9 = cdw11[24:16];
    qid_ok = cdw10[15:0] != 16'd0 && cdw10[15:9] == 7'd0 && qid9 <= maxq && 32'(qid9) < QN;
    cqid_ok = cdw11[31:16] != 16'd0 && cdw11[31:25] == 7'd0 && cqid9 <= maxq && 32'(cqid9) < QN;
    sq_live_q = qid_ok && sq_live[qid9[QW-1:0]];
    cq_live_q = qid_ok && cq_live[qid9[QW-1:0]];
    cqid_live = cqid_ok && cq_live[cqid9[QW-1:0]];
    refs_q = qid_ok ? cq_refs[32'(qid9)*9 +: 9] : 9'd0;
    gsq = nsqa != 9'd0 ? nsqa : ioq;
    gcq = ncqa != 9'd0 ? ncqa : ioq;
    o_mps = cc[10:7] > 4'd4 ? 3'd4 : cc[9:7];
    page_mask = (64'd4096 << o_mps) - 64'd1;
    prp1_bad = (prp1 & page_mask) != 64'd0 || prp1 == 64'd0;
    log_bytes = ({3'd0, cdw11[15:0], cdw10[31:16]} + 35'd1) << 2;
    log_off = {cdw13, cdw12};
    case (cdw10[7:0])
      8'h01: log_size = 10'd256;
      8'h02, 8'h03: log_size = 10'd512;
      default: log_size = 10'd0;
    endcase
    any_io_live = 1'b0;
    if (en && admin) for (int q = 1; q < QN; q++) begin
      if (9'(q) <= maxq && (sq_live[q] || cq_live[q])) any_io_live = 1'b1;
    end
    nsq = ({1'b0, cdw11[15:0]} + 17'd1 < {8'd0, ioq}) ? 9'(cdw11[15:0] + 16'd1) : ioq;
    ncq = ({1'b0, cdw11[31:16]} + 17'd1 < {8'd0, ioq}) ? 9'(cdw11[31:16] + 16'd1) : ioq;
  end

  always_comb begin
    o_kind = keel_pkg::JOB_NONE;
    o_status = keel_pkg::SC_SUCCESS;
    o_dw0 = 32'd0;
    o_nocqe = 1'b0;
    o_src = keel_pkg::SRC_ID_CTRL;
    o_srcarg = 1'b0;
    o_addr = 64'd0;
    o_bytes = 32'd0;
    o_ctr = 2'd0;
    o_nlb = nlb;
    o_xfer = 1'b0;
    o_create_cq = 1'b0;
    o_create_sq = 1'b0;
    o_delete_sq = 1'b0;
    o_delete_cq = 1'b0;
    o_abort = 1'b0;
    o_aer = 1'b0;
    o_set_queues = 1'b0;
    o_qid = cdw10[15:0];
    o_qsize = {1'b0, cdw10[31:16]} + 17'd1;
    o_cqid = cdw11[31:16];
    o_ien = cdw11[1];
    o_iv = cdw11[31:16];
    o_abort_sqid = cdw10[15:0];
    o_abort_cid = cdw10[31:16];
    o_nsqa = nsq;
    o_ncqa = ncq;
    if (!en) begin
      o_status = keel_pkg::SC_SUCCESS;
    end else if (flags != 8'd0) begin
      o_status = keel_pkg::SC_INVALID_FIELD | keel_pkg::SC_DNR;  // no fused ops, no SGLs
    end else if (admin) begin
      case (opc)
        keel_pkg::ADM_IDENTIFY: begin
          o_bytes = 32'd4096;
          case (cdw10[7:0])
            8'h01: begin
              o_src = keel_pkg::SRC_ID_CTRL;
              o_xfer = 1'b1;
            end
            8'h00: begin
              o_src = keel_pkg::SRC_ID_NS;
              o_srcarg = nsid == 32'd1;
              if (nsid != 32'd1 && nsid != 32'hFFFF_FFFF) begin
                o_status = keel_pkg::SC_INVALID_NAMESPACE | keel_pkg::SC_DNR;
              end else begin
                o_xfer = 1'b1;
              end
            end
            8'h02: begin
              o_src = keel_pkg::SRC_ID_NSLIST;
              o_srcarg = nsid == 32'd0;
              if (nsid >= 32'hFFFF_FFFE) o_status = keel_pkg::SC_INVALID_NAMESPACE | keel_pkg::SC_DNR;
              else o_xfer = 1'b1;
            end
            default: o_status = keel_pkg::SC_INVALID_FIELD | keel_pkg::SC_DNR;
          endcase
          if (o_xfer) o_kind = keel_pkg::JOB_I2H;
        end
        keel_pkg::ADM_CREATE_CQ: begin
          if (!qid_ok || qid9 > gcq || cq_live_q) begin
            o_status = keel_pkg::SC_INVALID_QID | keel_pkg::SC_DNR;
          end else if (o_qsize < 17'd2 || o_qsize > 17'(MQES + 1)) begin
            o_status = keel_pkg::SC_INVALID_QSIZE | keel_pkg::SC_DNR;
          end else if (!cdw11[0] || cc[23:20] != 4'd4) begin
            o_status = keel_pkg::SC_INVALID_FIELD | keel_pkg::SC_DNR;
          end else if (cdw11[1] && {8'd0, cdw11[31:16]} > {15'd0, maxq}) begin
            o_status = keel_pkg::SC_INVALID_IV | keel_pkg::SC_DNR;
          end else if (prp1_bad) begin
            o_status = keel_pkg::SC_PRP_OFFSET_INVALID | keel_pkg::SC_DNR;
          end else begin
            o_create_cq = 1'b1;
          end
        end
        keel_pkg::ADM_CREATE_SQ: begin
          if (!qid_ok || qid9 > gsq || sq_live_q) begin
            o_status = keel_pkg::SC_INVALID_QID | keel_pkg::SC_DNR;
          end else if (!cqid_live) begin
            o_status = keel_pkg::SC_CQ_INVALID | keel_pkg::SC_DNR;
          end else if (o_qsize < 17'd2 || o_qsize > 17'(MQES + 1)) begin
            o_status = keel_pkg::SC_INVALID_QSIZE | keel_pkg::SC_DNR;
          end else if (!cdw11[0] || cc[19:16] != 4'd6) begin
            o_status = keel_pkg::SC_INVALID_FIELD | keel_pkg::SC_DNR;
          end else if (prp1_bad) begin
            o_status = keel_pkg::SC_PRP_OFFSET_INVALID | keel_pkg::SC_DNR;
          end else begin
            o_create_sq = 1'b1;
          end
        end
        keel_pkg::ADM_DELETE_SQ: begin
          if (!sq_live_q) o_status = keel_pkg::SC_INVALID_QID | keel_pkg::SC_DNR;
          else o_delete_sq = 1'b1;
        end
        keel_pkg::ADM_DELETE_CQ: begin
          if (!cq_live_q) o_status = keel_pkg::SC_INVALID_QID | keel_pkg::SC_DNR;
          else if (refs_q != 9'd0) o_status = keel_pkg::SC_INVALID_QDELETE | keel_pkg::SC_DNR;
          else o_delete_cq = 1'b1;
        end
        keel_pkg::ADM_SET_FEATURES, keel_pkg::ADM_GET_FEATURES: begin
          if (cdw10[7:0] != 8'h07) begin
            o_status = keel_pkg::SC_INVALID_FIELD | keel_pkg::SC_DNR;
          end else if (opc == keel_pkg::ADM_SET_FEATURES) begin
            if (cdw10[31] || cdw11[15:0] == 16'hFFFF || cdw11[31:16] == 16'hFFFF) begin
              o_status = keel_pkg::SC_INVALID_FIELD | keel_pkg::SC_DNR;
            end else if (any_io_live) begin
              o_status = keel_pkg::SC_CMD_SEQ_ERROR | keel_pkg::SC_DNR;
            end else begin
              o_set_queues = 1'b1;
              o_dw0 = {7'd0, (ncq != 9'd0 ? ncq : ioq) - 9'd1, 7'd0, (nsq != 9'd0 ? nsq : ioq) - 9'd1};
            end
          end else begin
            o_dw0 = {7'd0, gcq - 9'd1, 7'd0, gsq - 9'd1};
          end
        end
        keel_pkg::ADM_GET_LOG_PAGE: begin
          o_addr = log_off;
          o_bytes = log_bytes[31:0];
          case (cdw10[7:0])
            8'h01: o_src = keel_pkg::SRC_LOG_ERROR;
            8'h02: o_src = keel_pkg::SRC_LOG_SMART;
            default: o_src = keel_pkg::SRC_LOG_FW;
          endcase
          if (log_size == 10'd0) begin
            o_status = keel_pkg::SC_INVALID_LOG_PAGE | keel_pkg::SC_DNR;
          end else if (log_off[1:0] != 2'd0 || log_off >= 64'(log_size)) begin
            o_status = keel_pkg::SC_INVALID_FIELD | keel_pkg::SC_DNR;
          end else if (log_bytes > 35'(MDTS_BYTES) || log_bytes + 35'(log_off[9:0]) > 35'd65536) begin
            o_status = keel_pkg::SC_INVALID_FIELD | keel_pkg::SC_DNR;
          end else begin
            o_kind = keel_pkg::JOB_I2H;
            o_xfer = 1'b1;
          end
        end
        keel_pkg::ADM_ABORT: o_abort = 1'b1;
        keel_pkg::ADM_ASYNC_EVENT: begin
          if (aers >= 4'd4) begin
            o_status = keel_pkg::SC_AER_LIMIT | keel_pkg::SC_DNR;
          end else begin
            o_aer = 1'b1;
            o_nocqe = 1'b1;
          end
        end
        default: o_status = keel_pkg::SC_INVALID_OPCODE | keel_pkg::SC_DNR;
      endcase
    end else begin
      case (opc)
        keel_pkg::IO_READ, keel_pkg::IO_WRITE: begin
          o_addr = (res_base + slba) << 9;
          o_bytes = {6'd0, nlb, 9'd0};
          if (nsid != 32'd1) begin
            o_status = keel_pkg::SC_INVALID_NAMESPACE | keel_pkg::SC_DNR;
          end else if ({6'd0, nlb, 9'd0} > MDTS_BYTES) begin
            o_status = keel_pkg::SC_INVALID_FIELD | keel_pkg::SC_DNR;
          end else if (range_bad) begin
            o_status = keel_pkg::SC_LBA_OUT_OF_RANGE | keel_pkg::SC_DNR;
          end else begin
            o_kind = opc == keel_pkg::IO_READ ? keel_pkg::JOB_D2H : keel_pkg::JOB_H2D;
            o_ctr = opc == keel_pkg::IO_READ ? 2'd1 : 2'd2;
            o_xfer = 1'b1;
          end
        end
        keel_pkg::IO_FLUSH: begin
          o_addr = res_base << 9;
          if (nsid != 32'd1 && nsid != 32'hFFFF_FFFF) begin
            o_status = keel_pkg::SC_INVALID_NAMESPACE | keel_pkg::SC_DNR;
          end else begin
            o_kind = keel_pkg::JOB_FLUSH;
          end
        end
        keel_pkg::IO_WRITE_ZEROES: begin
          o_addr = (res_base + slba) << 9;
          o_bytes = {6'd0, nlb, 9'd0};
          if (nsid != 32'd1) begin
            o_status = keel_pkg::SC_INVALID_NAMESPACE | keel_pkg::SC_DNR;
          end else if (range_bad) begin
            o_status = keel_pkg::SC_LBA_OUT_OF_RANGE | keel_pkg::SC_DNR;
          end else begin
            o_kind = keel_pkg::JOB_ZERO;
            o_ctr = 2'd3;
          end
        end
        default: o_status = keel_pkg::SC_INVALID_OPCODE | keel_pkg::SC_DNR;
      endcase
    end
  end

  logic unused_ok;
  always_comb unused_ok = ^{sqe[511:448], sqe[319:256], sqe[191:64], sqe[31:16], cc[31:24], cc[15:11], cc[6:0],
                            log_bytes[34:32], qid9, cqid9};

endmodule
