`resetall
`timescale 1ns / 1ps
`default_nettype none

// The data mover: one pipelined engine shared by every VF, fed by keel_qos_arbiter. Two halves
// joined by two FIFOs:
//   keel_read_mover   takes the next job and fills the source FIFO with its source data (card
//                     DDR, host memory through the job's PRP segments, or the internal page
//                     generator), running ahead of the write side as far as the FIFO has room;
//                     each job it takes goes on through the job FIFO.
//   keel_write_mover  takes the jobs in the same order, realigns the source stream to the
//                     destination and writes host memory or card DDR; when all of a job's write
//                     responses are in, its completion record goes to the completion writer
//                     with the job's final status.
// A job whose VF was reset, or is not ready, or is fatal, moves no data (its record still
// flows through, so the slot is retired).
module keel_mover #(
  // VFs the hardware implements (1..64).
  parameter int NUM_VFS = 4,
  // Job slots per VF.
  parameter int JOBQ = 4,
  // Identify MDTS (segments per job: 2^MDTS).
  parameter int MDTS = 5,
  // CAP.MQES (for Identify data).
  parameter int MQES = 1023,
  // Width of a generation tag.
  parameter int GW = 4,
  // Source FIFO depth in 512-bit beats (power of two, >= 2 * DDR_BURST is a good size).
  parameter int SRC_DEPTH = 64,
  // log2 of the largest host chunk in bytes (10: 16 beats).
  parameter int HOST_CHUNK_LOG2 = 10,
  // Largest card DDR burst in beats (power of two, <= 64: a burst stays in one 4 KiB page).
  parameter int DDR_BURST = 64,
  // Jobs in flight on the write side awaiting responses (power of two).
  parameter int TRK_DEPTH = 4,
  // Width of a VF index (derived).
  parameter int VFW = (NUM_VFS > 1) ? $clog2(NUM_VFS) : 1,
  // Width of a job slot index (derived).
  parameter int JW = $clog2(JOBQ),
  // Width of a segment index (derived).
  parameter int SW = MDTS
) (
  input  wire                       clk,
  input  wire                       rst,

  // Next job (from the QoS arbiter and the job queues).
  input  wire                       job_valid,
  input  wire  [VFW-1:0]            job_vf,
  input  wire  [keel_pkg::JR_W-1:0] job_rec,
  input  wire  [JW-1:0]             job_slot,
  output logic                      job_take,

  input  wire  [NUM_VFS*GW-1:0]     vf_gen,
  input  wire  [NUM_VFS-1:0]        vf_ready,
  input  wire  [NUM_VFS-1:0]        vf_fatal,

  // Segment RAM, source side and destination side.
  output logic [VFW-1:0]            seg_s_vf,
  output logic [JW-1:0]             seg_s_slot,
  output logic [SW-1:0]             seg_s_idx,
  output logic                      seg_s_en,
  input  wire  [63:0]               seg_s_data,
  output logic [VFW-1:0]            seg_d_vf,
  output logic [JW-1:0]             seg_d_slot,
  output logic [SW-1:0]             seg_d_idx,
  output logic                      seg_d_en,
  input  wire  [63:0]               seg_d_data,

  // What the internal pages report.
  input  wire  [NUM_VFS*64-1:0]     res_lbas,
  output logic [VFW-1:0]            smart_vf,
  input  wire  [63:0]               smart_host_reads,
  input  wire  [63:0]               smart_host_writes,
  input  wire  [63:0]               smart_units_read,
  input  wire  [63:0]               smart_units_written,

  // Host memory, read (AXI4, 512-bit; user: PCIe function number, echoed on R).
  output logic                      m_har_valid,
  input  wire                       m_har_ready,
  output logic [63:0]               m_har_addr,
  output logic [7:0]                m_har_len,
  output logic [7:0]                m_har_fn,
  input  wire                       s_hr_valid,
  output logic                      s_hr_ready,
  input  wire  [511:0]              s_hr_data,
  input  wire  [1:0]                s_hr_resp,
  input  wire                       s_hr_last,
  input  wire  [7:0]                s_hr_user,
  // Host memory, write.
  output logic                      m_haw_valid,
  input  wire                       m_haw_ready,
  output logic [63:0]               m_haw_addr,
  output logic [7:0]                m_haw_len,
  output logic [7:0]                m_haw_fn,
  output logic                      m_hw_valid,
  input  wire                       m_hw_ready,
  output logic [511:0]              m_hw_data,
  output logic [63:0]               m_hw_strb,
  output logic                      m_hw_last,
  input  wire                       s_hb_valid,
  output logic                      s_hb_ready,
  input  wire  [1:0]                s_hb_resp,
  input  wire  [7:0]                s_hb_user,

  // Card DDR (AXI4, 512-bit).
  output logic                      m_dar_valid,
  input  wire                       m_dar_ready,
  output logic [63:0]               m_dar_addr,
  output logic [7:0]                m_dar_len,
  input  wire                       s_dr_valid,
  output logic                      s_dr_ready,
  input  wire  [511:0]              s_dr_data,
  input  wire  [1:0]                s_dr_resp,
  input  wire                       s_dr_last,
  output logic                      m_daw_valid,
  input  wire                       m_daw_ready,
  output logic [63:0]               m_daw_addr,
  output logic [7:0]                m_daw_len,
  output logic                      m_dw_valid,
  input  wire                       m_dw_ready,
  output logic [511:0]              m_dw_data,
  output logic [63:0]               m_dw_strb,
  output logic                      m_dw_last,
  input  wire                       s_db_valid,
  output logic                      s_db_ready,
  input  wire  [1:0]                s_db_resp,

  // Flush (persist a byte range of card DDR).
  output logic                      m_flush_valid,
  input  wire                       m_flush_ready,
  output logic [63:0]               m_flush_addr,
  output logic [63:0]               m_flush_len,
  input  wire                       s_flush_done,
  input  wire                       s_flush_err,

  // Refused host DMA (read side, write responses).
  output logic                      rfault_valid,
  output logic [VFW-1:0]            rfault_vf,
  output logic                      bfault_valid,
  output logic [VFW-1:0]            bfault_vf,

  // Completion records, in job order.
  output logic                      m_rec_valid,
  input  wire                       m_rec_ready,
  output logic [keel_pkg::JR_W-1:0] m_rec,
  output logic [VFW-1:0]            m_rec_vf,

  output logic                      idle
);

  localparam int SCW = $clog2(SRC_DEPTH) + 1;
  localparam int TW = $clog2(TRK_DEPTH);
  localparam int JFW = 1 + VFW + JW + keel_pkg::JR_W;

  if ((1 << (SCW - 1)) != SRC_DEPTH || SRC_DEPTH < 2 * 16) begin : g_bad_src
    $fatal(1, "keel_mover: SRC_DEPTH must be a power of two >= 32");
  end
  if (DDR_BURST < 1 || DDR_BURST > 64 || (DDR_BURST & (DDR_BURST - 1)) != 0 ||
      DDR_BURST > SRC_DEPTH) begin : g_bad_ddr
    $fatal(1, "keel_mover: DDR_BURST must be a power of two <= min(64, SRC_DEPTH)");
  end
  if (HOST_CHUNK_LOG2 < 6 || HOST_CHUNK_LOG2 > 12 || (1 << (HOST_CHUNK_LOG2 - 6)) > SRC_DEPTH)
  begin : g_bad_chunk
    $fatal(1, "keel_mover: HOST_CHUNK_LOG2 must be 6..12 and fit the source FIFO");
  end
  if (TRK_DEPTH < 2 || (1 << TW) != TRK_DEPTH) begin : g_bad_trk
    $fatal(1, "keel_mover: TRK_DEPTH must be a power of two >= 2");
  end

  // Outputs of the FIFOs this module does not need.
  logic [JFW-1:0]      unused_jf_d1;
  logic [2:0]          unused_jf_count;

  // ================================================================ source FIFO
  logic           sf_push;
  logic [512:0]   sf_in;
  logic           sf_in_ready;
  logic           sf_valid, sf_pop1, sf_pop2;
  logic [512:0]   sf_d0, sf_d1;
  logic [SCW-1:0] sf_count;

  keel_fifo #(.WIDTH(513), .DEPTH(SRC_DEPTH)) u_src_fifo (
    .clk, .rst,
    .s_valid(sf_push), .s_ready(sf_in_ready), .s_data(sf_in),
    .m_valid(sf_valid), .m_ready(sf_pop1), .m_pop2(sf_pop2), .m_data(sf_d0), .m_data1(sf_d1),
    .count(sf_count)
  );

  // ================================================================ job FIFO (read -> write side)
  logic           jf_push, jf_ready, jf_valid, jf_pop;
  logic [JFW-1:0] jf_in, jf_out;

  keel_fifo #(.WIDTH(JFW), .DEPTH(4)) u_job_fifo (
    .clk, .rst,
    .s_valid(jf_push), .s_ready(jf_ready), .s_data(jf_in),
    .m_valid(jf_valid), .m_ready(jf_pop), .m_pop2(1'b0), .m_data(jf_out),
    .m_data1(unused_jf_d1), .count(unused_jf_count)
  );

  // ================================================================ the two halves
  logic           wjob_done;       // the write side retired a job that wrote card DDR
  logic           r_idle, w_idle;

  keel_read_mover #(
    .NUM_VFS(NUM_VFS), .JOBQ(JOBQ), .MDTS(MDTS), .MQES(MQES), .GW(GW), .SRC_DEPTH(SRC_DEPTH),
    .HOST_CHUNK_LOG2(HOST_CHUNK_LOG2), .DDR_BURST(DDR_BURST)
  ) u_read (
    .clk, .rst,
    .job_valid, .job_vf, .job_rec, .job_slot, .job_take, .vf_gen, .vf_ready, .vf_fatal,
    .jf_push, .jf_ready, .jf_in, .sf_push, .sf_in, .sf_count, .wjob_done,
    .seg_s_vf, .seg_s_slot, .seg_s_idx, .seg_s_en, .seg_s_data,
    .res_lbas, .smart_vf, .smart_host_reads, .smart_host_writes, .smart_units_read,
    .smart_units_written,
    .m_har_valid, .m_har_ready, .m_har_addr, .m_har_len, .m_har_fn,
    .s_hr_valid, .s_hr_ready, .s_hr_data, .s_hr_resp, .s_hr_last, .s_hr_user,
    .m_dar_valid, .m_dar_ready, .m_dar_addr, .m_dar_len,
    .s_dr_valid, .s_dr_ready, .s_dr_data, .s_dr_resp,
    .rfault_valid, .rfault_vf,
    .idle(r_idle)
  );

  keel_write_mover #(
    .NUM_VFS(NUM_VFS), .JOBQ(JOBQ), .MDTS(MDTS), .SRC_DEPTH(SRC_DEPTH),
    .HOST_CHUNK_LOG2(HOST_CHUNK_LOG2), .DDR_BURST(DDR_BURST), .TRK_DEPTH(TRK_DEPTH)
  ) u_write (
    .clk, .rst,
    .jf_valid, .jf_out, .jf_pop, .sf_d0, .sf_d1, .sf_count, .sf_pop1, .sf_pop2, .wjob_done,
    .seg_d_vf, .seg_d_slot, .seg_d_idx, .seg_d_en, .seg_d_data,
    .res_lbas,
    .m_haw_valid, .m_haw_ready, .m_haw_addr, .m_haw_len, .m_haw_fn,
    .m_hw_valid, .m_hw_ready, .m_hw_data, .m_hw_strb, .m_hw_last,
    .s_hb_valid, .s_hb_ready, .s_hb_resp, .s_hb_user,
    .m_daw_valid, .m_daw_ready, .m_daw_addr, .m_daw_len,
    .m_dw_valid, .m_dw_ready, .m_dw_data, .m_dw_strb, .m_dw_last,
    .s_db_valid, .s_db_ready, .s_db_resp,
    .m_flush_valid, .m_flush_ready, .m_flush_addr, .m_flush_len, .s_flush_done, .s_flush_err,
    .bfault_valid, .bfault_vf,
    .m_rec_valid, .m_rec_ready, .m_rec, .m_rec_vf,
    .idle(w_idle)
  );

  assign idle = r_idle && w_idle && !jf_valid && sf_count == '0;

  logic unused_ok;
  always_comb unused_ok = ^{s_dr_last, sf_in_ready, sf_valid};

endmodule
