`resetall
`timescale 1ns / 1ps
`default_nettype none

// Shares the host-DMA read channels between the front end (SQEs, PRP lists; AXI ID 0, has
// priority: it is latency bound) and the data mover (AXI ID 1). Read data returns by ID. An
// address the shell has not accepted yet stays on the bus unchanged (AXI), whoever asks next.
module keel_host_rd_arb (
  input  wire          clk,
  input  wire          rst,
  // Front end.
  input  wire          s0_ar_valid,
  output logic         s0_ar_ready,
  input  wire  [63:0]  s0_ar_addr,
  input  wire  [7:0]   s0_ar_len,
  input  wire  [7:0]   s0_ar_fn,
  output logic         s0_r_valid,
  input  wire          s0_r_ready,
  // Data mover.
  input  wire          s1_ar_valid,
  output logic         s1_ar_ready,
  input  wire  [63:0]  s1_ar_addr,
  input  wire  [7:0]   s1_ar_len,
  input  wire  [7:0]   s1_ar_fn,
  output logic         s1_r_valid,
  input  wire          s1_r_ready,
  // Shell.
  output logic         m_ar_valid,
  input  wire          m_ar_ready,
  output logic [3:0]   m_ar_id,
  output logic [63:0]  m_ar_addr,
  output logic [7:0]   m_ar_len,
  output logic [7:0]   m_ar_user,
  input  wire          m_r_valid,
  output logic         m_r_ready,
  input  wire  [3:0]   m_r_id
);

  logic hold_q, hsel_q;   // an address is waiting for the shell; whose (1: mover)
  logic sel;
  always_comb begin
    sel = hold_q ? hsel_q : !s0_ar_valid;
    m_ar_valid = sel ? s1_ar_valid : s0_ar_valid;
    m_ar_id = sel ? 4'd1 : 4'd0;
    m_ar_addr = sel ? s1_ar_addr : s0_ar_addr;
    m_ar_len = sel ? s1_ar_len : s0_ar_len;
    m_ar_user = sel ? s1_ar_fn : s0_ar_fn;
  end
  assign s0_ar_ready = m_ar_ready && !sel;
  assign s1_ar_ready = m_ar_ready && sel;
  always_comb begin
    s0_r_valid = m_r_valid && m_r_id == 4'd0;
    s1_r_valid = m_r_valid && m_r_id != 4'd0;
    m_r_ready = m_r_id == 4'd0 ? s0_r_ready : s1_r_ready;
  end

  always_ff @(posedge clk) begin
    if (rst) begin
      hold_q <= 1'b0;
      hsel_q <= 1'b0;
    end else begin
      hold_q <= m_ar_valid && !m_ar_ready;
      hsel_q <= sel;
    end
  end

endmodule
