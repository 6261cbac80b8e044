`resetall
`timescale 1ns / 1ps
`default_nettype none

// Shares the host-DMA write channels between the data mover (AXI ID 0) and the completion
// writer (AXI ID 1, has priority: a CQE waits at most for the data chunks already granted).
// Write data follows the order in which addresses were granted; responses return by ID. An
// address the shell has not accepted yet stays on the bus unchanged (AXI).
module keel_host_wr_arb #(
  // Address grants whose data has not been sent yet (power of two).
  parameter int ORDER_DEPTH = 4
) (
  input  wire          clk,
  input  wire          rst,
  // Data mover.
  input  wire          s0_aw_valid,
  output logic         s0_aw_ready,
  input  wire  [63:0]  s0_aw_addr,
  input  wire  [7:0]   s0_aw_len,
  input  wire  [7:0]   s0_aw_fn,
  input  wire          s0_w_valid,
  output logic         s0_w_ready,
  input  wire  [511:0] s0_w_data,
  input  wire  [63:0]  s0_w_strb,
  input  wire          s0_w_last,
  output logic         s0_b_valid,
  input  wire          s0_b_ready,
  // Completion writer.
  input  wire          s1_aw_valid,
  output logic         s1_aw_ready,
  input  wire  [63:0]  s1_aw_addr,
  input  wire  [7:0]   s1_aw_len,
  input  wire  [7:0]   s1_aw_fn,
  input  wire          s1_w_valid,
  output logic         s1_w_ready,
  input  wire  [511:0] s1_w_data,
  input  wire  [63:0]  s1_w_strb,
  input  wire          s1_w_last,
  output logic         s1_b_valid,
  input  wire          s1_b_ready,
  // Shell.
  output logic         m_aw_valid,
  input  wire          m_aw_ready,
  output logic [3:0]   m_aw_id,
  output logic [63:0]  m_aw_addr,
  output logic [7:0]   m_aw_len,
  output logic [7:0]   m_aw_user,
  output logic         m_w_valid,
  input  wire          m_w_ready,
  output logic [511:0] m_w_data,
  output logic [63:0]  m_w_strb,
  output logic         m_w_last,
  input  wire          m_b_valid,
  output logic         m_b_ready,
  input  wire  [3:0]   m_b_id
);

  logic       of_push, of_ready, of_valid, of_pop, of_head;
  logic       unused_of_d1;
  logic [$clog2(ORDER_DEPTH):0] unused_of_count;

  keel_fifo #(.WIDTH(1), .DEPTH(ORDER_DEPTH)) u_order (
    .clk, .rst,
    .s_valid(of_push), .s_ready(of_ready), .s_data(sel),
    .m_valid(of_valid), .m_ready(of_pop), .m_pop2(1'b0), .m_data(of_head),
    .m_data1(unused_of_d1), .count(unused_of_count)
  );

  logic hold_q, hsel_q;   // an address is waiting for the shell; whose (1: completion writer)
  logic sel;
  always_comb begin
    sel = hold_q ? hsel_q : s1_aw_valid;
    m_aw_valid = (sel ? s1_aw_valid : s0_aw_valid) && of_ready;
    m_aw_id = sel ? 4'd1 : 4'd0;
    m_aw_addr = sel ? s1_aw_addr : s0_aw_addr;
    m_aw_len = sel ? s1_aw_len : s0_aw_len;
    m_aw_user = sel ? s1_aw_fn : s0_aw_fn;
  end
  assign s1_aw_ready = m_aw_ready && of_ready && sel;
  assign s0_aw_ready = m_aw_ready && of_ready && !sel;
  assign of_push = m_aw_valid && m_aw_ready;
  always_comb begin

    m_w_valid = of_valid && (of_head ? s1_w_valid : s0_w_valid);
    m_w_data = of_head ? s1_w_data : s0_w_data;
    m_w_strb = of_head ? s1_w_strb : s0_w_strb;
    m_w_last = of_head ? s1_w_last : s0_w_last;
    s0_w_ready = of_valid && !of_head && m_w_ready;
    s1_w_ready = of_valid && of_head && m_w_ready;
    of_pop = m_w_valid && m_w_ready && m_w_last;

    s0_b_valid = m_b_valid && m_b_id == 4'd0;
    s1_b_valid = m_b_valid && m_b_id != 4'd0;
    m_b_ready = m_b_id == 4'd0 ? s0_b_ready : s1_b_ready;
  end

  always_ff @(posedge clk) begin
    if (rst) begin
      hold_q <= 1'b0;
      hsel_q <= 1'b0;
    end else begin
      hold_q <= m_aw_valid && !m_aw_ready;
      hsel_q <= sel;
    end
  end

endmodule
