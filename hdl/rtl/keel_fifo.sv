`resetall
`timescale 1ns / 1ps
`default_nettype none

// Synchronous first-word-fall-through FIFO with valid/ready on both sides.
//
// The head entry is visible on m_data whenever m_valid is high; a second look-ahead entry is on
// m_data1 (valid when count >= 2) for consumers that combine neighbouring entries. m_pop2 pops
// two entries at once (the consumer must only assert it when count >= 2; it overrides m_ready).
module keel_fifo #(
  // Bits per entry.
  parameter int WIDTH = 8,
  // Entries; a power of two, at least 2.
  parameter int DEPTH = 4,
  // Width of the occupancy count (derived).
  parameter int CW = $clog2(DEPTH) + 1
) (
  input  wire              clk,
  input  wire              rst,

  input  wire              s_valid,
  output logic             s_ready,
  input  wire  [WIDTH-1:0] s_data,

  output logic             m_valid,
  input  wire              m_ready,
  input  wire              m_pop2,
  output logic [WIDTH-1:0] m_data,
  output logic [WIDTH-1:0] m_data1,

  output logic [CW-1:0]    count
);

  localparam int AW = $clog2(DEPTH);

  if (DEPTH < 2 || (1 << AW) != DEPTH) begin : g_bad_depth
    $fatal(1, "keel_fifo: DEPTH must be a power of two >= 2");
  end
  if (WIDTH < 1) begin : g_bad_width
    $fatal(1, "keel_fifo: WIDTH must be >= 1");
  end

  logic [AW:0] wr_q, rd_q;
  logic push, pop1;
  logic [AW-1:0] rd_next1;

  // Outputs depend on state only (no combinational path from inputs to outputs).
  always_comb begin
    count = CW'(wr_q - rd_q);
    s_ready = count != CW'(DEPTH);
    m_valid = count != '0;
    rd_next1 = rd_q[AW-1:0] + 1'b1;
  end

  keel_ram #(.WIDTH(WIDTH), .DEPTH(DEPTH), .RD_PORTS(2)) u_mem (
    .clk, .we(push), .waddr(wr_q[AW-1:0]), .wdata(s_data),
    .ren({count >= CW'(2), m_valid}), .raddr({rd_next1, rd_q[AW-1:0]}), .rdata({m_data1, m_data})
  );

  always_comb begin
    push = s_valid && (wr_q - rd_q) != (AW+1)'(DEPTH);
    pop1 = (wr_q != rd_q) && m_ready && !m_pop2;
  end

  always_ff @(posedge clk) begin
    if (rst) begin
      wr_q <= '0;
      rd_q <= '0;
    end else begin
      if (push) wr_q <= wr_q + 1'b1;
      if (m_pop2) rd_q <= rd_q + (AW+1)'(2);
      else if (pop1) rd_q <= rd_q + 1'b1;
    end
  end

endmodule
