`resetall
`timescale 1ns / 1ps
`default_nettype none

// keel_nic: the card's NIC half - registers (keel_nic_regs), data path (keel_nic_engine),
// frame buffer (keel_nic_fbuf) and TX token buckets (keel_nic_bucket). It has ports of its
// own on the shell: an AXI4-Lite slave (keel_card routes functions >= 65 here), a
// byte-addressed 64-bit host DMA read and write port, an MSI-X request port and the uplink's
// two frame streams. See docs/rtl-architecture.md ("The NIC").
module keel_nic #(
  parameter int NV = 4,
  parameter int NQ = 4,
  parameter int CLOCK_MHZ = 250
) (
  input  wire         clk,
  input  wire         rst,
  input  wire         s_awvalid,
  output logic        s_awready,
  input  wire  [15:0] s_awaddr,
  input  wire  [7:0]  s_awuser,
  input  wire  [63:0] s_wdata,
  input  wire  [7:0]  s_wstrb,
  output logic        s_bvalid,
  input  wire         s_bready,
  input  wire         s_arvalid,
  output logic        s_arready,
  input  wire  [15:0] s_araddr,
  input  wire  [7:0]  s_aruser,
  output logic        s_rvalid,
  input  wire         s_rready,
  output logic [63:0] s_rdata,
  input  wire  [NV-1:0] cfg_removed,
  input  wire         cfg_uplink_on,
  input  wire         cfg_uplink_up,
  output logic        m_rd_valid,
  input  wire         m_rd_ready,
  output logic [63:0] m_rd_addr,
  output logic [15:0] m_rd_len,
  output logic [7:0]  m_rd_fn,
  input  wire         s_rd_valid,
  input  wire  [63:0] s_rd_data,
  input  wire         s_rd_last,
  input  wire         s_rd_err,
  output logic        m_wr_valid,
  input  wire         m_wr_ready,
  output logic [63:0] m_wr_addr,
  output logic [15:0] m_wr_len,
  output logic [7:0]  m_wr_fn,
  output logic        m_wd_valid,
  input  wire         m_wd_ready,
  output logic [63:0] m_wd_data,
  output logic        m_wd_last,
  input  wire         s_wb_valid,
  input  wire         s_wb_err,
  output logic        m_msix_valid,
  input  wire         m_msix_ready,
  output logic [7:0]  m_msix_fn,
  output logic [15:0] m_msix_vector,
  input  wire         s_upl_valid,
  output logic        s_upl_ready,
  input  wire  [63:0] s_upl_data,
  input  wire  [3:0]  s_upl_bytes,
  input  wire         s_upl_last,
  output logic        m_upl_valid,
  input  wire         m_upl_ready,
  output logic [63:0] m_upl_data,
  output logic [3:0]  m_upl_bytes,
  output logic        m_upl_last,
  input  wire         s_upl_overflow,
  input  wire         s_upl_tx_drop,
  output logic [7:0]  status_num_vfs,
  input  wire         skip_valid,
  input  wire  [31:0] skip_cycles,
  output logic        idle
);

  localparam int VW = $clog2(NV);
  localparam int NQT = NV * NQ;

  logic               eng_idle, hold;
  logic [NQT-1:0]     q_en, qreset;
  logic [NQT*10-1:0]  q_cfg;
  logic [NQT*64-1:0]  tx_base, tx_cq_base, rx_base, rx_cq_base;
  logic [NQT*12-1:0]  tx_tail, rx_tail, tx_cq_head, rx_cq_head, tx_head, rx_head;
  logic [NV-1:0]      vf_run, port_up, cnt_clear, bkt_fill;
  logic [NV*14-1:0]   mtu;
  logic [NV*48-1:0]   mac;
  logic [NV*32-1:0]   rate;
  logic               fault_valid;
  logic [VW-1:0]      fault_vf, bk_vf;
  logic [1:0]         fault_q;
  logic [NV*12*64-1:0] cnt;
  logic [6*64-1:0]    ucnt;
  logic [15:0]        bk_bytes;
  logic               bk_ok, bk_take, eng_quiet;

  keel_nic_regs #(.NV(NV), .NQ(NQ)) u_regs (
    .clk, .rst,
    .s_awvalid, .s_awready, .s_awaddr, .s_awuser, .s_wdata, .s_wstrb, .s_bvalid, .s_bready,
    .s_arvalid, .s_arready, .s_araddr, .s_aruser, .s_rvalid, .s_rready, .s_rdata,
    .removed(cfg_removed), .uplink_on(cfg_uplink_on), .uplink_up(cfg_uplink_up),
    .eng_idle, .hold, .q_en, .q_cfg, .tx_base, .tx_cq_base, .rx_base, .rx_cq_base,
    .tx_tail, .rx_tail, .tx_cq_head, .rx_cq_head, .vf_run, .port_up, .mtu, .mac, .rate,
    .qreset, .cnt_clear, .bkt_fill, .num_vfs(status_num_vfs),
    .fault_valid, .fault_vf, .fault_q, .tx_head, .rx_head, .cnt, .ucnt
  );

  keel_nic_engine #(.NV(NV), .NQ(NQ)) u_engine (
    .clk, .rst, .hold, .eng_idle, .q_en, .q_cfg, .tx_base, .tx_cq_base, .rx_base, .rx_cq_base,
    .tx_tail, .rx_tail, .tx_cq_head, .rx_cq_head, .vf_run, .port_up, .mtu, .mac,
    .qreset, .cnt_clear, .uplink_on(cfg_uplink_on),
    .fault_valid, .fault_vf, .fault_q, .tx_head, .rx_head, .cnt, .ucnt,
    .bk_vf, .bk_bytes, .bk_ok, .bk_take,
    .m_rd_valid, .m_rd_ready, .m_rd_addr, .m_rd_len, .m_rd_fn,
    .s_rd_valid, .s_rd_data, .s_rd_last, .s_rd_err,
    .m_wr_valid, .m_wr_ready, .m_wr_addr, .m_wr_len, .m_wr_fn,
    .m_wd_valid, .m_wd_ready, .m_wd_data, .m_wd_last, .s_wb_valid, .s_wb_err,
    .m_msix_valid, .m_msix_ready, .m_msix_fn, .m_msix_vector,
    .s_upl_valid, .s_upl_ready, .s_upl_data, .s_upl_bytes, .s_upl_last,
    .m_upl_valid, .m_upl_ready, .m_upl_data, .m_upl_bytes, .m_upl_last,
    .s_upl_overflow, .s_upl_tx_drop, .idle(eng_quiet)
  );

  keel_nic_bucket #(.NV(NV), .CLOCK_MHZ(CLOCK_MHZ)) u_bucket (
    .clk, .rst, .rate, .fill(bkt_fill), .q_vf(bk_vf), .q_bytes(bk_bytes), .q_ok(bk_ok),
    .take(bk_take), .skip_valid, .skip_cycles
  );

  assign idle = eng_quiet && !hold && bkt_fill == '0 && qreset == '0 && !s_rvalid;

endmodule
