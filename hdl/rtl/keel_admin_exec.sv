`resetall
`timescale 1ns / 1ps
`default_nettype none

// Admin executor of keel_frontend: what admin commands and keel_ctrl's operations change.
//   - keel_ctrl enable/disable of a VF: the admin queue pair's contexts (enable) or every
//     context and the VF's admin state (disable).
//   - Create IO SQ/CQ: the queue's context, its CQ's reference count, doorbell clears.
//   - Delete IO SQ/CQ and Abort: one operation on the completion writer's stuck and delayed
//     completions; a deleted queue's context goes when the operation is done (an SQ also drops
//     its reference on its CQ); Abort's result is the operation's DW0.
//   - Set Features (Number of Queues), Asynchronous Event Request: per-VF admin state the
//     decoder reads.
// The front end's sequencer says which of its states it is in (in_op, in_dec, in_cqop); the
// decoder's outputs are those of the SQE being decoded. Queue-context writes go to keel_qctx.
module keel_admin_exec #(
  // VFs the hardware implements (1..64).
  parameter int NUM_VFS = 4,
  // IO queue pairs per VF the hardware implements (1..255).
  parameter int NUM_IOQ = 8,
  // Width of a VF index (derived).
  parameter int VFW = (NUM_VFS > 1) ? $clog2(NUM_VFS) : 1,
  // Queues per VF including the admin queue (derived).
  parameter int QN = NUM_IOQ + 1,
  // Width of a queue index within a VF (derived).
  parameter int QW = $clog2(QN),
  // Width of a global queue index (derived).
  parameter int GQW = $clog2(NUM_VFS * QN)
) (
  input  wire                       clk,
  input  wire                       rst,

  // Sequencer state: executing keel_ctrl's operation, decoding an SQE of VF v (stale: the VF
  // was reset since the fetch; the command only retires its slot), waiting for the completion
  // writer.
  input  wire                       in_op,
  input  wire                       in_dec,
  input  wire                       stale,
  input  wire                       in_cqop,
  input  wire  [VFW-1:0]            v,

  // keel_ctrl's operation.
  input  wire                       op_enable,
  input  wire  [VFW-1:0]            op_vf,
  input  wire  [63:0]               op_asq,
  input  wire  [63:0]               op_acq,
  input  wire  [12:0]               op_asqs,
  input  wire  [12:0]               op_acqs,
  output logic                      op_done,

  // The SQE being decoded and the decoder's verdict.
  input  wire  [63:0]               sqe_prp1,     // a created queue's base
  input  wire  [15:0]               sqe_cid,
  input  wire                       d_create_cq,
  input  wire                       d_create_sq,
  input  wire                       d_delete_sq,
  input  wire                       d_delete_cq,
  input  wire                       d_abort,
  input  wire                       d_aer,
  input  wire                       d_set_queues,
  input  wire  [15:0]               d_qid,
  input  wire  [16:0]               d_qsize,
  input  wire  [15:0]               d_cqid,
  input  wire                       d_ien,
  input  wire  [15:0]               d_iv,
  input  wire  [15:0]               d_abort_sqid,
  input  wire  [15:0]               d_abort_cid,
  input  wire  [8:0]                d_nsqa,
  input  wire  [8:0]                d_ncqa,
  // Per-VF admin state of VF v, for the decoder.
  output logic [8:0]                nsqa,
  output logic [8:0]                ncqa,
  output logic [3:0]                aers,

  // Queue contexts of VF v (keel_qctx port d) and the writes.
  input  wire  [QN*9-1:0]           d_cq_refs,
  input  wire  [QN*QW-1:0]          d_sq_cqid,
  output logic                      x_vf_clr,
  output logic                      x_sq_set,
  output logic                      x_sq_kill,
  output logic [GQW-1:0]            x_sq_g,
  output logic [63:0]               x_sq_base,
  output logic [16:0]               x_sq_size,
  output logic [QW-1:0]             x_sq_cqid,
  output logic                      x_cq_set,
  output logic                      x_cq_kill,
  output logic [GQW-1:0]            x_cq_g,
  output logic [63:0]               x_cq_base,
  output logic [16:0]               x_cq_size,
  output logic                      x_cq_ien,
  output logic [15:0]               x_cq_iv,
  output logic                      x_ref_we,
  output logic [GQW-1:0]            x_ref_g,
  output logic [8:0]                x_ref,
  // Doorbells and CQ tails of new queues.
  output logic                      db_clr_valid,
  output logic [GQW-1:0]            db_clr_g,
  output logic [1:0]                db_clr_mask,
  output logic                      cq_init_valid,
  output logic [GQW-1:0]            cq_init_g,

  // Operation on the completion writer: this SQE starts one (cq_op_start), then it runs.
  output logic                      cq_op_start,
  output logic                      cq_op_valid,
  output logic [1:0]                cq_op_kind,   // 0 abort, 1 SQ deleted, 2 CQ deleted
  output logic [15:0]               cq_op_qid,
  output logic [15:0]               cq_op_cid,
  input  wire                       cq_op_done
);

  logic [8:0]     nsqa_q [NUM_VFS];
  logic [8:0]     ncqa_q [NUM_VFS];
  logic [3:0]     aers_q [NUM_VFS];
  logic [15:0]    qid_q, cid_q;         // queue and command of the operation
  logic [1:0]     kind_q;
  logic [QW-1:0]  op_cq;                // CQ of the SQ a delete-SQ removes
  logic           dec_ok;

  always_comb begin
    dec_ok = in_dec && !stale;
    nsqa = nsqa_q[v];
    ncqa = ncqa_q[v];
    aers = aers_q[v];
    cq_op_start = dec_ok && (d_delete_sq || d_delete_cq || d_abort);
    cq_op_kind = kind_q;
    cq_op_qid = qid_q;
    cq_op_cid = cid_q;

    op_cq = d_sq_cqid[32'(qid_q[QW-1:0])*QW +: QW];
    x_vf_clr = in_op && !op_enable;
    x_sq_set = (in_op && op_enable) || (dec_ok && d_create_sq);
    x_cq_set = (in_op && op_enable) || (dec_ok && d_create_cq);
    x_sq_kill = in_cqop && cq_op_done && kind_q == 2'd1;
    x_cq_kill = in_cqop && cq_op_done && kind_q == 2'd2;
    if (in_op) begin
      x_sq_g = GQW'(32'(op_vf) * QN);
      x_sq_base = op_asq;
      x_sq_size = {4'd0, op_asqs};
      x_sq_cqid = '0;
      x_cq_g = GQW'(32'(op_vf) * QN);
      x_cq_base = op_acq;
      x_cq_size = {4'd0, op_acqs};
      x_cq_ien = 1'b1;
      x_cq_iv = '0;
    end else begin
      x_sq_g = GQW'(32'(v) * QN + (in_dec ? 32'(d_qid[QW-1:0]) : 32'(qid_q[QW-1:0])));
      x_sq_base = sqe_prp1;
      x_sq_size = d_qsize;
      x_sq_cqid = QW'(d_cqid);
      x_cq_g = GQW'(32'(v) * QN + (in_dec ? 32'(d_qid[QW-1:0]) : 32'(qid_q[QW-1:0])));
      x_cq_base = sqe_prp1;
      x_cq_size = d_qsize;
      x_cq_ien = d_ien;
      x_cq_iv = d_iv;
    end
    // References of a CQ: 1 for the admin CQ at enable, +1 at SQ creation, -1 at SQ deletion.
    x_ref_we = 1'b0;
    x_ref_g = GQW'(32'(op_vf) * QN);
    x_ref = 9'd1;
    if (in_op && op_enable) begin
      x_ref_we = 1'b1;
    end else if (dec_ok && d_create_cq) begin
      x_ref_we = 1'b1;
      x_ref_g = GQW'(32'(v) * QN + 32'(d_qid[QW-1:0]));
      x_ref = 9'd0;
    end else if (dec_ok && d_create_sq) begin
      x_ref_we = 1'b1;
      x_ref_g = GQW'(32'(v) * QN + 32'(d_cqid[QW-1:0]));
      x_ref = d_cq_refs[32'(d_cqid[QW-1:0])*9 +: 9] + 9'd1;
    end else if (x_sq_kill) begin
      x_ref_we = 1'b1;
      x_ref_g = GQW'(32'(v) * QN + 32'(op_cq));
      x_ref = d_cq_refs[32'(op_cq)*9 +: 9] - 9'd1;
    end
    db_clr_valid = x_sq_set || x_cq_set;
    db_clr_g = in_op ? GQW'(32'(op_vf) * QN) : GQW'(32'(v) * QN + 32'(d_qid[QW-1:0]));
    db_clr_mask = {x_cq_set, x_sq_set};
    cq_init_valid = x_cq_set;
    cq_init_g = x_cq_g;
  end

  logic unused_ok;
  always_comb unused_ok = ^{d_cqid[15:QW], d_qid[15:QW]};

  always_ff @(posedge clk) begin
    op_done <= 1'b0;
    if (rst) begin
      cq_op_valid <= 1'b0;
      for (int i = 0; i < NUM_VFS; i++) begin
        nsqa_q[i] <= '0;
        ncqa_q[i] <= '0;
        aers_q[i] <= '0;
      end
    end else begin
      if (in_op) op_done <= 1'b1;
      if (in_op && !op_enable) begin
        nsqa_q[op_vf] <= '0;
        ncqa_q[op_vf] <= '0;
        aers_q[op_vf] <= '0;
      end
      if (in_dec) begin
        qid_q <= d_qid;
        cid_q <= sqe_cid;
      end
      if (dec_ok) begin
        if (d_set_queues) begin
          nsqa_q[v] <= d_nsqa;
          ncqa_q[v] <= d_ncqa;
        end
        if (d_aer) aers_q[v] <= aers_q[v] + 4'd1;
        if (cq_op_start) begin
          cq_op_valid <= 1'b1;
          kind_q <= d_abort ? 2'd0 : (d_delete_sq ? 2'd1 : 2'd2);
          if (d_abort) begin
            qid_q <= d_abort_sqid;
            cid_q <= d_abort_cid;
          end
        end
      end
      if (in_cqop && cq_op_done) begin
        cq_op_valid <= 1'b0;
        cid_q <= sqe_cid;
      end
    end
  end

endmodule
