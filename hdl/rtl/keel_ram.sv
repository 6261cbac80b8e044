`resetall
`timescale 1ns / 1ps
`default_nettype none

// Memory with one synchronous write port and RD_PORTS asynchronous read ports (distributed
// RAM on an FPGA; a multi-ported read replicates it). The card's FIFOs, job queues and segment
// lists live in these; the synthesis check (hdl/scripts/synth_check.cmake) keeps them as
// black boxes and counts their bits, as a vendor flow maps them to RAM primitives.
//
// A read port whose enable is low returns zero (and costs a simulator nothing).
module keel_ram #(
  // Bits per word.
  parameter int WIDTH = 8,
  // Words (at least 2).
  parameter int DEPTH = 16,
  // Read ports.
  parameter int RD_PORTS = 1,
  // Address width (derived).
  parameter int AW = $clog2(DEPTH)
) (
  input  wire                      clk,
  input  wire                      we,
  input  wire  [AW-1:0]            waddr,
  input  wire  [WIDTH-1:0]         wdata,
  input  wire  [RD_PORTS-1:0]      ren,
  input  wire  [RD_PORTS*AW-1:0]   raddr,
  output logic [RD_PORTS*WIDTH-1:0] rdata
);

  if (DEPTH < 2 || WIDTH < 1 || RD_PORTS < 1) begin : g_bad_params
    $fatal(1, "keel_ram: DEPTH must be >= 2, WIDTH and RD_PORTS >= 1");
  end

  logic [WIDTH-1:0] mem_q [DEPTH];

  always_ff @(posedge clk) begin
    if (we) mem_q[waddr] <= wdata;
  end

  always_comb begin
    for (int p = 0; p < RD_PORTS; p++) begin
      rdata[p*WIDTH +: WIDTH] = ren[p] ? mem_q[raddr[p*AW +: AW]] : '0;
    end
  end

endmodule
