`resetall
`timescale 1ns / 1ps
`default_nettype none

// keel_no_nic: what keel_card has in place of keel_nic when built with NIC=0 (the yosys
// synthesis checks, docs/rtl-synthesis.md). BAR writes to the NIC functions are answered and
// dropped, reads return zero; the NIC's shell ports stay idle.
module keel_no_nic (
  input  wire         clk,
  input  wire         rst,
  input  wire         s_awvalid,
  output logic        s_awready,
  output logic        s_bvalid,
  input  wire         s_bready,
  input  wire         s_arvalid,
  output logic        s_arready,
  output logic        s_rvalid,
  input  wire         s_rready,
  output logic [63:0] s_rdata,
  output logic        m_rd_valid,
  output logic [63:0] m_rd_addr,
  output logic [15:0] m_rd_len,
  output logic [7:0]  m_rd_fn,
  output logic        m_wr_valid,
  output logic [63:0] m_wr_addr,
  output logic [15:0] m_wr_len,
  output logic [7:0]  m_wr_fn,
  output logic        m_wd_valid,
  output logic [63:0] m_wd_data,
  output logic        m_wd_last,
  output logic        m_msix_valid,
  output logic [7:0]  m_msix_fn,
  output logic [15:0] m_msix_vector,
  output logic        s_upl_ready,
  output logic        m_upl_valid,
  output logic [63:0] m_upl_data,
  output logic [3:0]  m_upl_bytes,
  output logic        m_upl_last,
  output logic [7:0]  status_num_vfs,
  output logic        idle
);

  logic nb_q, nr_q;
  always_ff @(posedge clk) begin
    if (rst) begin
      nb_q <= 1'b0;
      nr_q <= 1'b0;
    end else begin
      nb_q <= nb_q ? !s_bready : s_awvalid;
      nr_q <= nr_q ? !s_rready : s_arvalid;
    end
  end
  assign s_awready = s_awvalid && !nb_q;
  assign s_bvalid = nb_q;
  assign s_arready = s_arvalid && !nr_q;
  assign s_rvalid = nr_q;
  assign s_rdata = '0;
  assign idle = 1'b1;
  assign m_rd_valid = 1'b0;
  assign m_rd_addr = '0;
  assign m_rd_len = '0;
  assign m_rd_fn = '0;
  assign m_wr_valid = 1'b0;
  assign m_wr_addr = '0;
  assign m_wr_len = '0;
  assign m_wr_fn = '0;
  assign m_wd_valid = 1'b0;
  assign m_wd_data = '0;
  assign m_wd_last = 1'b0;
  assign m_msix_valid = 1'b0;
  assign m_msix_fn = '0;
  assign m_msix_vector = '0;
  assign s_upl_ready = 1'b0;
  assign m_upl_valid = 1'b0;
  assign m_upl_data = '0;
  assign m_upl_bytes = '0;
  assign m_upl_last = 1'b0;
  assign status_num_vfs = '0;

endmodule
