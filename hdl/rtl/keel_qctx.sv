`resetall
`timescale 1ns / 1ps
`default_nettype none

// Queue-context store of the keel card: every SQ and CQ of every VF, indexed by the global
// queue number g = vf * (NUM_IOQ + 1) + qid. Each field has one write port; "live" bits,
// reference and in-flight counts can also be cleared for a whole VF at once (controller reset).
//
// cq_infl counts commands fetched for a CQ whose completion is not yet posted (or parked); the
// scheduler keeps it plus the CQ's occupancy below the CQ size.
module keel_qctx #(
  // VFs the hardware implements.
  parameter int NUM_VFS = 4,
  // IO queue pairs per VF.
  parameter int NUM_IOQ = 8,
  // Width of a VF index (derived).
  parameter int VFW = (NUM_VFS > 1) ? $clog2(NUM_VFS) : 1,
  // Queues per VF (derived).
  parameter int QN = NUM_IOQ + 1,
  // Width of a queue index within a VF (derived).
  parameter int QW = $clog2(QN),
  // Width of a global queue index (derived).
  parameter int GQW = $clog2(NUM_VFS * QN)
) (
  input  wire                  clk,
  input  wire                  rst,

  // SQ created (live, fields, head 0) / deleted.
  input  wire                  sq_set,
  input  wire                  sq_kill,
  input  wire  [GQW-1:0]       sq_g,
  input  wire  [63:0]          sq_base_in,
  input  wire  [16:0]          sq_size_in,
  input  wire  [QW-1:0]        sq_cqid_in,
  // SQ head after a fetch.
  input  wire                  hd_we,
  input  wire  [GQW-1:0]       hd_g,
  input  wire  [15:0]          hd_in,
  // CQ created / deleted.
  input  wire                  cq_set,
  input  wire                  cq_kill,
  input  wire  [GQW-1:0]       cq_g,
  input  wire  [63:0]          cq_base_in,
  input  wire  [16:0]          cq_size_in,
  input  wire                  cq_ien_in,
  input  wire  [15:0]          cq_iv_in,
  // SQs referring to a CQ (absolute write).
  input  wire                  ref_we,
  input  wire  [GQW-1:0]       ref_g,
  input  wire  [8:0]           ref_in,
  // In-flight commands of a CQ: add k at a fetch, take one at a retire, zero at creation.
  input  wire                  infl_add,
  input  wire  [GQW-1:0]       infl_add_g,
  input  wire  [3:0]           infl_add_k,
  input  wire                  infl_dec,
  input  wire  [GQW-1:0]       infl_dec_g,
  // Every queue of a VF deleted.
  input  wire                  vf_clr,
  input  wire  [VFW-1:0]       vf_clr_vf,

  // Read port A: the scheduler's VF, all queues (zero unless a_en).
  input  wire                  a_en,
  input  wire  [VFW-1:0]       a_vf,
  output logic [QN-1:0]        a_sq_live,
  output logic [QN*17-1:0]     a_sq_size,
  output logic [QN*16-1:0]     a_sq_head,
  output logic [QN*QW-1:0]     a_sq_cqid,
  output logic [QN-1:0]        a_cq_live,
  output logic [QN*17-1:0]     a_cq_size,
  output logic [QN*17-1:0]     a_cq_infl,
  // Read port B: one SQ (the batch being fetched).
  input  wire  [GQW-1:0]       b_g,
  output logic [63:0]          b_sq_base,
  // Read port C: one CQ (completion writer).
  input  wire  [GQW-1:0]       c_g,
  output logic                 c_cq_live,
  output logic [63:0]          c_cq_base,
  output logic [16:0]          c_cq_size,
  output logic                 c_cq_ien,
  output logic [15:0]          c_cq_iv,
  // Read port D: the decoder's VF (zero unless d_en).
  input  wire                  d_en,
  input  wire  [VFW-1:0]       d_vf,
  output logic [QN-1:0]        d_sq_live,
  output logic [QN-1:0]        d_cq_live,
  output logic [QN*9-1:0]      d_cq_refs,
  output logic [QN*QW-1:0]     d_sq_cqid
);

  localparam int NG = NUM_VFS * QN;

  logic [NG-1:0] sq_live_q, cq_live_q;
  logic [63:0]   sq_base_q [NG];
  logic [16:0]   sq_size_q [NG];
  logic [15:0]   sq_head_q [NG];
  logic [QW-1:0] sq_cqid_q [NG];
  logic [63:0]   cq_base_q [NG];
  logic [16:0]   cq_size_q [NG];
  logic          cq_ien_q  [NG];
  logic [15:0]   cq_iv_q   [NG];
  logic [8:0]    cq_refs_q [NG];
  logic [16:0]   cq_infl_q [NG];

  // Fields with a single write port.
  always_ff @(posedge clk) begin
    if (sq_set) begin
      sq_base_q[sq_g] <= sq_base_in;
      sq_size_q[sq_g] <= sq_size_in;
      sq_cqid_q[sq_g] <= sq_cqid_in;
    end
    if (cq_set) begin
      cq_base_q[cq_g] <= cq_base_in;
      cq_size_q[cq_g] <= cq_size_in;
      cq_ien_q[cq_g] <= cq_ien_in;
      cq_iv_q[cq_g] <= cq_iv_in;
    end
    if (sq_set) sq_head_q[sq_g] <= '0;
    else if (hd_we) sq_head_q[hd_g] <= hd_in;
  end

  // Live bits (reset), references and in-flight counts (set when a CQ is created; cleared for
  // a whole VF by a controller reset).
  always_ff @(posedge clk) begin
    if (rst) begin
      sq_live_q <= '0;
      cq_live_q <= '0;
    end else begin
      if (sq_set) sq_live_q[sq_g] <= 1'b1;
      if (sq_kill) sq_live_q[sq_g] <= 1'b0;
      if (cq_set) cq_live_q[cq_g] <= 1'b1;
      if (cq_kill) cq_live_q[cq_g] <= 1'b0;
      if (vf_clr) begin
        for (int q = 0; q < QN; q++) begin
          sq_live_q[32'(vf_clr_vf) * QN + q] <= 1'b0;
          cq_live_q[32'(vf_clr_vf) * QN + q] <= 1'b0;
        end
      end
    end
  end

  always_ff @(posedge clk) begin
    if (ref_we) cq_refs_q[ref_g] <= ref_in;
    if (infl_add && infl_dec && infl_add_g == infl_dec_g) begin
      cq_infl_q[infl_add_g] <= cq_infl_q[infl_add_g] + 17'(infl_add_k) - 17'd1;
    end else begin
      if (infl_add) cq_infl_q[infl_add_g] <= cq_infl_q[infl_add_g] + 17'(infl_add_k);
      if (infl_dec) cq_infl_q[infl_dec_g] <= cq_infl_q[infl_dec_g] - 17'd1;
    end
    if (cq_set) cq_infl_q[cq_g] <= '0;
    if (vf_clr) begin
      for (int q = 0; q < QN; q++) begin
        cq_refs_q[GQW'(32'(vf_clr_vf) * QN + q)] <= '0;
        cq_infl_q[GQW'(32'(vf_clr_vf) * QN + q)] <= '0;
      end
    end
  end

  // (Ports read only when enabled, so that a simulator skips them while unused.)
  always_comb begin
    a_sq_live = '0;
    a_sq_size = '0;
    a_sq_head = '0;
    a_sq_cqid = '0;
    a_cq_live = '0;
    a_cq_size = '0;
    a_cq_infl = '0;
    if (a_en) begin
      for (int q = 0; q < QN; q++) begin
        a_sq_live[q] = sq_live_q[32'(a_vf) * QN + q];
        a_sq_size[q*17 +: 17] = sq_size_q[GQW'(32'(a_vf) * QN + q)];
        a_sq_head[q*16 +: 16] = sq_head_q[GQW'(32'(a_vf) * QN + q)];
        a_sq_cqid[q*QW +: QW] = sq_cqid_q[GQW'(32'(a_vf) * QN + q)];
        a_cq_live[q] = cq_live_q[32'(a_vf) * QN + q];
        a_cq_size[q*17 +: 17] = cq_size_q[GQW'(32'(a_vf) * QN + q)];
        a_cq_infl[q*17 +: 17] = cq_infl_q[GQW'(32'(a_vf) * QN + q)];
      end
    end
  end

  always_comb begin
    d_sq_live = '0;
    d_cq_live = '0;
    d_cq_refs = '0;
    d_sq_cqid = '0;
    if (d_en) begin
      for (int q = 0; q < QN; q++) begin
        d_sq_live[q] = sq_live_q[32'(d_vf) * QN + q];
        d_cq_live[q] = cq_live_q[32'(d_vf) * QN + q];
        d_cq_refs[q*9 +: 9] = cq_refs_q[GQW'(32'(d_vf) * QN + q)];
        d_sq_cqid[q*QW +: QW] = sq_cqid_q[GQW'(32'(d_vf) * QN + q)];
      end
    end
  end

  assign b_sq_base = sq_base_q[b_g];
  assign c_cq_live = cq_live_q[c_g];
  assign c_cq_base = cq_base_q[c_g];
  assign c_cq_size = cq_size_q[c_g];
  assign c_cq_ien = cq_ien_q[c_g];
  assign c_cq_iv = cq_iv_q[c_g];

endmodule
