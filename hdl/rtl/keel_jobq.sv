`resetall
`timescale 1ns / 1ps
`default_nettype none

// Per-VF job queues between the front end and the data mover, and the host segment RAM.
//
// Each VF owns JOBQ slots. A slot is written by the front end (push), handed to the data mover
// (pop, in order per VF, chosen among VFs by keel_qos_arbiter) and given back when the
// completion writer retires the command (free), so the slot's host segments stay readable
// while the mover works on them. Slot s of VF v owns segment entries
// [(v * JOBQ + s) * SEGS, ... + SEGS): the page addresses after PRP1.
module keel_jobq #(
  // VFs the hardware implements (1..64).
  parameter int NUM_VFS = 4,
  // Job slots per VF (power of two >= 2).
  parameter int JOBQ = 4,
  // Host segments per job beyond PRP1: 2^MDTS (power of two).
  parameter int SEGS = 32,
  // Width of a job record (keel_pkg::JR_W).
  parameter int RW = keel_pkg::JR_W,
  // Width of a VF index (derived).
  parameter int VFW = (NUM_VFS > 1) ? $clog2(NUM_VFS) : 1,
  // Width of a slot index (derived).
  parameter int JW = $clog2(JOBQ),
  // Width of a segment index within a job (derived).
  parameter int SW = $clog2(SEGS)
) (
  input  wire                       clk,
  input  wire                       rst,

  // Front end.
  input  wire                       push_valid,
  input  wire  [VFW-1:0]            push_vf,
  input  wire  [RW-1:0]             push_rec,
  output logic [NUM_VFS*(JW+1)-1:0] free_slots,   // slots the front end may still fill
  output logic [NUM_VFS*JW-1:0]     next_slot,    // slot of the next push
  output logic [NUM_VFS-1:0]        jobs_idle,    // no job pushed and not yet retired

  // Data mover (through the QoS arbiter).
  output logic [NUM_VFS-1:0]        head_valid,
  input  wire  [VFW-1:0]            head_vf,
  output logic [RW-1:0]             head_rec,
  output logic [JW-1:0]             head_slot,
  input  wire                       pop_valid,

  // Completion writer.
  input  wire                       free_valid,
  input  wire  [VFW-1:0]            free_vf,

  // Segment RAM: one write port (front end), three read ports.
  input  wire                       seg_wr_valid,
  input  wire  [VFW-1:0]            seg_wr_vf,
  input  wire  [JW-1:0]             seg_wr_slot,
  input  wire  [SW-1:0]             seg_wr_idx,
  input  wire  [63:0]               seg_wr_data,
  input  wire  [3*VFW-1:0]          seg_rd_vf,
  input  wire  [3*JW-1:0]           seg_rd_slot,
  input  wire  [3*SW-1:0]           seg_rd_idx,
  input  wire  [2:0]                seg_rd_en,
  output logic [3*64-1:0]           seg_rd_data
);

  if ((1 << JW) != JOBQ || JOBQ < 2) begin : g_bad_jobq
    $fatal(1, "keel_jobq: JOBQ must be a power of two >= 2");
  end
  if ((1 << SW) != SEGS || SEGS < 2) begin : g_bad_segs
    $fatal(1, "keel_jobq: SEGS must be a power of two >= 2");
  end

  localparam int NS = NUM_VFS * JOBQ;

  localparam int RAW = $clog2(NS);
  localparam int SAW = $clog2(NS * SEGS);
  logic [JW:0]   wr_q  [NUM_VFS];
  logic [JW:0]   iss_q [NUM_VFS];
  logic [JW:0]   fr_q  [NUM_VFS];

  always_comb begin
    for (int i = 0; i < NUM_VFS; i++) begin
      free_slots[i*(JW+1) +: JW+1] = (JW+1)'(JOBQ) - (wr_q[i] - fr_q[i]);
      next_slot[i*JW +: JW] = wr_q[i][JW-1:0];
      jobs_idle[i] = wr_q[i] == fr_q[i];
      head_valid[i] = wr_q[i] != iss_q[i];
    end
  end

  // (Read only while a job is waiting, so that an idle queue costs a simulator nothing.)
  assign head_slot = iss_q[head_vf][JW-1:0];
  keel_ram #(.WIDTH(RW), .DEPTH(NS), .RD_PORTS(1)) u_rec (
    .clk, .we(push_valid), .waddr(RAW'({push_vf, wr_q[push_vf][JW-1:0]})), .wdata(push_rec),
    .ren(wr_q[head_vf] != iss_q[head_vf]), .raddr(RAW'({head_vf, head_slot})), .rdata(head_rec)
  );

  logic [3*SAW-1:0] seg_raddr;
  always_comb begin
    for (int p = 0; p < 3; p++) begin
      seg_raddr[p*SAW +: SAW] = SAW'({seg_rd_vf[p*VFW +: VFW], seg_rd_slot[p*JW +: JW],
                                      seg_rd_idx[p*SW +: SW]});
    end
  end
  keel_ram #(.WIDTH(64), .DEPTH(NS * SEGS), .RD_PORTS(3)) u_seg (
    .clk, .we(seg_wr_valid), .waddr(SAW'({seg_wr_vf, seg_wr_slot, seg_wr_idx})),
    .wdata(seg_wr_data), .ren(seg_rd_en), .raddr(seg_raddr), .rdata(seg_rd_data)
  );

  always_ff @(posedge clk) begin
    if (rst) begin
      for (int i = 0; i < NUM_VFS; i++) begin
        wr_q[i] <= '0;
        iss_q[i] <= '0;
        fr_q[i] <= '0;
      end
    end else begin
      if (push_valid) wr_q[push_vf] <= wr_q[push_vf] + 1'b1;
      if (pop_valid) iss_q[head_vf] <= iss_q[head_vf] + 1'b1;
      if (free_valid) fr_q[free_vf] <= fr_q[free_vf] + 1'b1;
    end
  end

endmodule
