`resetall
`timescale 1ns / 1ps
`default_nettype none

// Per-VF bandwidth caps (VFCFG RATE.MBPS): a token bucket per VF, in milli-bytes so that the
// refill per cycle is exact. A VF with a non-zero rate may start an IO command while it holds
// tokens; each Read or Write takes its bytes when it completes. The bucket holds at most
// max(128 KiB, one millisecond at the rate) and is emptied when the controller is enabled,
// the reference model's rule.
module keel_rate_limiter #(
  // VFs the hardware implements (1..64).
  parameter int NUM_VFS = 4,
  // Card clock in MHz; 1000 must be a multiple of it.
  parameter int CLOCK_MHZ = 250,
  // Width of a VF index (derived).
  parameter int VFW = (NUM_VFS > 1) ? $clog2(NUM_VFS) : 1
) (
  input  wire                   clk,
  input  wire                   rst,
  input  wire  [NUM_VFS*32-1:0] rate,         // MB/s (bytes per microsecond), 0: unlimited
  input  wire                   consume_valid,
  input  wire  [VFW-1:0]        consume_vf,
  input  wire  [31:0]           consume_bytes,
  input  wire                   reset_valid,
  input  wire  [VFW-1:0]        reset_vf,
  output logic [NUM_VFS-1:0]    allow,
  // Simulation fast-forward: this clock stands for 1 + skip_cycles cycles.
  input  wire                   skip_valid,
  input  wire  [31:0]           skip_cycles,
  output logic                  idle            // no bucket is filling
);

  if (CLOCK_MHZ < 1 || 1000 % CLOCK_MHZ != 0) begin : g_bad_clock
    $fatal(1, "keel_rate_limiter: CLOCK_MHZ must divide 1000");
  end

  localparam int NS = 1000 / CLOCK_MHZ;
  localparam logic [63:0] NS_PER_CYCLE = 64'(NS);
  localparam logic [63:0] MIN_BURST = 64'd131072000;  // 128 KiB in milli-bytes

  logic signed [63:0] tok_q [NUM_VFS];

  // Bucket size of a rate: max(128 KiB, one millisecond of data), in milli-bytes.
  function automatic logic [63:0] cap_of(input logic [31:0] mbps);
    logic [63:0] c;
    c = {32'd0, mbps} * 64'd1000000;
    cap_of = c < MIN_BURST ? MIN_BURST : c;
  endfunction

  logic [63:0] ticks;
  always_comb begin
    ticks = 64'd1 + (skip_valid ? {32'd0, skip_cycles} : 64'd0);
    idle = 1'b1;
    allow = '1;
    if (rate != '0) for (int i = 0; i < NUM_VFS; i++) begin
      allow[i] = rate[i*32 +: 32] == 32'd0 || tok_q[i] > 64'sd0;
      if (rate[i*32 +: 32] != 32'd0) begin
        if (tok_q[i] < $signed(cap_of(rate[i*32 +: 32]))) idle = 1'b0;
      end
    end
  end

  always_ff @(posedge clk) begin
    if (rst) begin
      for (int i = 0; i < NUM_VFS; i++) tok_q[i] <= '0;
    end else begin
      if (rate != '0 || reset_valid) for (int i = 0; i < NUM_VFS; i++) begin
        logic [63:0] r, cap;
        logic signed [63:0] t;
        r = 64'(rate[i*32 +: 32]);
        if (r != 64'd0) begin
          cap = cap_of(rate[i*32 +: 32]);
          t = tok_q[i] + $signed(r * NS_PER_CYCLE * ticks);
          if (t > $signed(cap)) t = $signed(cap);
          if (consume_valid && consume_vf == VFW'(i)) t = t - $signed(64'(consume_bytes) * 64'd1000);
          tok_q[i] <= t;
        end
        if (reset_valid && reset_vf == VFW'(i)) tok_q[i] <= '0;
      end
    end
  end

endmodule
