`resetall
`timescale 1ns / 1ps
`default_nettype none

// keel_nic_bucket: the NIC VFs' TX token buckets (NICVFCFG RATE: MBPS 19:0, BURST_KB 31:20,
// 0 meaning 64 KiB). Tokens count in units of 1 / (8 * CLOCK_MHZ) byte, so MBPS units arrive
// per card cycle exactly. A frame costs min(length, depth) bytes and passes only when the
// bucket holds that much (a frame longer than the depth waits for a full bucket); nothing goes
// into debt - the semantics of keel::eswitch::TokenBucket, not of keel_rate_limiter (which lets
// a command through while the balance is positive and then owes).
module keel_nic_bucket #(
  parameter int NV = 4,
  parameter int CLOCK_MHZ = 250
) (
  input  wire             clk,
  input  wire             rst,
  input  wire  [NV*32-1:0] rate,
  input  wire  [NV-1:0]   fill,      // the port was enabled: start full
  // Query and take: can VF q_vf pay q_bytes now? take pays it (same cycle as ok).
  input  wire  [$clog2(NV)-1:0] q_vf,
  input  wire  [15:0]     q_bytes,
  output logic            q_ok,
  input  wire             take,
  input  wire             skip_valid,
  input  wire  [31:0]     skip_cycles
);

  localparam int TW = 56;
  localparam logic [TW-1:0] UNIT = TW'(8 * CLOCK_MHZ);  // tokens per byte

  logic [NV*TW-1:0] tok_q;

  function automatic logic [TW-1:0] depth_of(input logic [11:0] burst_kb);
    logic [11:0] kb;
    kb = burst_kb == 12'd0 ? 12'd64 : burst_kb;
    depth_of = TW'({kb, 10'd0}) * UNIT;
  endfunction

  logic [31:0]   qr;
  logic [TW-1:0] qdepth, qcost;
  always_comb begin
    qr = rate[q_vf*32 +: 32];
    qdepth = depth_of(qr[31:20]);
    qcost = TW'(q_bytes) * UNIT;
    if (qcost > qdepth) qcost = qdepth;
    q_ok = qr[19:0] == 20'd0 || tok_q[q_vf*TW +: TW] >= qcost;
  end

  always_ff @(posedge clk) begin
    if (rst) begin
      tok_q <= '0;
    end else begin
      for (int v = 0; v < NV; v++) begin
        logic [TW-1:0] t, d, gain;
        d = depth_of(rate[v*32 + 20 +: 12]);
        gain = TW'(rate[v*32 +: 20]) * (skip_valid ? TW'(skip_cycles) + TW'(1) : TW'(1));
        t = tok_q[v*TW +: TW];
        if (take && q_ok && 32'(q_vf) == v && rate[v*32 +: 20] != 20'd0) t = t - qcost;
        t = (d - t <= gain) ? d : t + gain;
        if (fill[v]) t = d;
        tok_q[v*TW +: TW] <= t;
      end
    end
  end

endmodule
