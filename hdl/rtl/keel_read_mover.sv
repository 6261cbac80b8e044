`resetall
`timescale 1ns / 1ps
`default_nettype none

// Read side of the data mover (keel_mover): takes the next job and requests its source data -
// card DDR (Read), host memory through the job's PRP segments (Write), or the internal page
// generator (Identify, log pages) - into the source FIFO, running ahead of the write side as far
// as the FIFO has room. Every job taken goes on to the write side through the job FIFO, marked
// skip if it must move no data (its VF was reset, is not ready, or is fatal). A job that reads
// card DDR waits until every earlier job's DDR writes are complete (the reference model's
// command order).
module keel_read_mover #(
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
  // Source FIFO depth in 512-bit beats (power of two).
  parameter int SRC_DEPTH = 64,
  // log2 of the largest host chunk in bytes (10: 16 beats).
  parameter int HOST_CHUNK_LOG2 = 10,
  // Largest card DDR burst in beats (power of two, <= 64: a burst stays in one 4 KiB page).
  parameter int DDR_BURST = 64,
  // Width of a VF index (derived).
  parameter int VFW = (NUM_VFS > 1) ? $clog2(NUM_VFS) : 1,
  // Width of a job slot index (derived).
  parameter int JW = $clog2(JOBQ),
  // Width of a segment index (derived).
  parameter int SW = MDTS,
  // Width of a source FIFO count (derived).
  parameter int SCW = $clog2(SRC_DEPTH) + 1,
  // Width of a job FIFO entry: {skip, vf, slot, record} (derived).
  parameter int JFW = 1 + VFW + JW + keel_pkg::JR_W
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

  // Job FIFO to the write side.
  output logic                      jf_push,
  input  wire                       jf_ready,
  output logic [JFW-1:0]            jf_in,
  // Source FIFO: beats {error, data}.
  output logic                      sf_push,
  output logic [512:0]              sf_in,
  input  wire  [SCW-1:0]            sf_count,
  // The write side retired a job that wrote card DDR.
  input  wire                       wjob_done,

  // Segment RAM, source side.
  output logic [VFW-1:0]            seg_s_vf,
  output logic [JW-1:0]             seg_s_slot,
  output logic [SW-1:0]             seg_s_idx,
  output logic                      seg_s_en,
  input  wire  [63:0]               seg_s_data,

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

  // Card DDR, read (AXI4, 512-bit).
  output logic                      m_dar_valid,
  input  wire                       m_dar_ready,
  output logic [63:0]               m_dar_addr,
  output logic [7:0]                m_dar_len,
  input  wire                       s_dr_valid,
  output logic                      s_dr_ready,
  input  wire  [511:0]              s_dr_data,
  input  wire  [1:0]                s_dr_resp,

  // Refused host reads.
  output logic                      rfault_valid,
  output logic [VFW-1:0]            rfault_vf,

  // No job and no beat in flight.
  output logic                      idle
);

  localparam logic [1:0] T_NONE = 2'd0, T_DDR = 2'd1, T_HOST = 2'd2, T_GEN = 2'd3;

  typedef enum logic [1:0] {RS_IDLE, RS_DDR, RS_HOST, RS_GEN} rs_t;
  rs_t            rs_q;
  logic [1:0]     rs_type_q;     // source type of the last job with a source
  logic [SCW-1:0] outst_q;       // beats requested, not yet received
  logic [7:0]     wjobs_q;       // jobs writing card DDR, taken and not yet complete
  logic [63:0]    rs_addr_q;
  logic [31:0]    rs_left_q;     // beats
  logic [9:0]     rs_beat_q;
  logic [2:0]     rs_src_q;
  logic           rs_srcarg_q;
  logic [VFW-1:0] rs_vf_q;
  logic [JW-1:0]  rs_slot_q;
  logic           hr_burst_err_q;

  logic [2:0]     j_kind;
  logic           j_skip;
  logic [1:0]     j_type;
  logic [31:0]    j_bytes;
  logic [63:0]    j_addr, j_prp1;
  logic           j_can;
  logic [SCW:0]   credits;
  logic [7:0]     rs_dnb;        // beats of the next DDR read burst
  logic           sw_busy, sw_cvalid, sw_take;
  logic [63:0]    sw_c0, sw_c1;
  logic [31:0]    sw_nb;
  logic [511:0]   gen_data;

  always_comb begin
    j_kind = job_rec[keel_pkg::JR_KIND +: 3];
    j_bytes = job_rec[keel_pkg::JR_BYTES +: 32];
    j_addr = job_rec[keel_pkg::JR_ADDR +: 64];
    j_prp1 = job_rec[keel_pkg::JR_PRP1 +: 64];
    j_skip = job_rec[keel_pkg::JR_GEN +: GW] != vf_gen[32'(job_vf)*GW +: GW] || !vf_ready[job_vf] ||
             vf_fatal[job_vf];
    case (j_kind)
      keel_pkg::JOB_D2H: j_type = T_DDR;
      keel_pkg::JOB_H2D: j_type = T_HOST;
      keel_pkg::JOB_I2H: j_type = T_GEN;
      default: j_type = T_NONE;
    endcase
    if (j_skip) j_type = T_NONE;
    j_can = jf_ready && rs_q == RS_IDLE &&
            !(j_type != T_NONE && j_type != rs_type_q && outst_q != '0) &&
            !(j_type == T_DDR && wjobs_q != 8'd0);
    job_take = job_valid && j_can;
    jf_push = job_take;
    jf_in = job_valid ? {j_skip, job_vf, job_slot, job_rec} : '0;

    credits = (SCW+1)'(SRC_DEPTH) - {1'b0, sf_count} - {1'b0, outst_q};
    rs_dnb = 8'(DDR_BURST) - {2'd0, rs_addr_q[6 +: 6] & 6'(DDR_BURST - 1)};
    if (32'(rs_dnb) > rs_left_q) rs_dnb = rs_left_q[7:0];
    sw_nb = 32'((sw_c1 - 64'd1) >> 6) - 32'(sw_c0 >> 6) + 32'd1;

    m_dar_valid = rs_q == RS_DDR && credits >= (SCW+1)'(rs_dnb);
    m_dar_addr = rs_addr_q;
    m_dar_len = rs_dnb - 8'd1;
    m_har_valid = rs_q == RS_HOST && sw_cvalid && {1'b0, 32'(credits)} >= {1'b0, sw_nb};
    m_har_addr = {sw_c0[63:6], 6'd0};
    m_har_len = 8'(sw_nb - 32'd1);
    m_har_fn = 8'(rs_vf_q) + 8'd1;
    seg_s_vf = rs_vf_q;
    seg_s_slot = rs_slot_q;
    smart_vf = rs_vf_q;

    s_dr_ready = 1'b1;
    s_hr_ready = 1'b1;
    sf_push = (rs_q == RS_GEN && credits != '0) || s_dr_valid || s_hr_valid;
    if (rs_q == RS_GEN) sf_in = {1'b0, gen_data};
    else if (s_dr_valid) sf_in = {s_dr_resp != keel_pkg::AXI_RESP_OKAY, s_dr_data};
    else sf_in = {s_hr_resp != keel_pkg::AXI_RESP_OKAY, s_hr_data};
    rfault_valid = s_hr_valid && s_hr_last && (hr_burst_err_q || s_hr_resp != keel_pkg::AXI_RESP_OKAY);
    rfault_vf = VFW'(s_hr_user - 8'd1);
  end

  assign sw_take = m_har_valid && m_har_ready;

  keel_seg_walker #(.CHUNK_LOG2(HOST_CHUNK_LOG2), .SW(SW)) u_src_walker (
    .clk, .rst,
    .start(job_take && j_type == T_HOST),
    .prp1(j_prp1), .bytes(j_bytes), .mps(job_rec[keel_pkg::JR_MPS +: 3]),
    .seg_idx(seg_s_idx), .seg_ren(seg_s_en), .seg_data(seg_s_data),
    .busy(sw_busy), .chunk_valid(sw_cvalid), .chunk_addr(sw_c0), .chunk_end(sw_c1),
    .chunk_take(sw_take)
  );

  keel_idgen #(.MQES(MQES), .MDTS(MDTS)) u_idgen (
    .en(rs_q == RS_GEN), .src(rs_src_q), .srcarg(rs_srcarg_q), .beat(rs_beat_q), .vf(7'(rs_vf_q)),
    .slice_lbas(res_lbas[32'(rs_vf_q)*64 +: 64]),
    .host_reads(smart_host_reads), .host_writes(smart_host_writes),
    .units_read(smart_units_read), .units_written(smart_units_written),
    .data(gen_data)
  );


  always_ff @(posedge clk) begin
    if (rst) begin
      rs_q <= RS_IDLE;
      rs_type_q <= T_NONE;
      outst_q <= '0;
      wjobs_q <= '0;
      hr_burst_err_q <= 1'b0;
    end else begin
      logic [SCW-1:0] o;
      o = outst_q;
      if (m_dar_valid && m_dar_ready) o = o + SCW'(rs_dnb);
      if (m_har_valid && m_har_ready) o = o + SCW'(sw_nb);
      if (s_dr_valid || s_hr_valid) o = o - SCW'(1);
      outst_q <= o;
      if (s_hr_valid) hr_burst_err_q <= s_hr_last ? 1'b0 : (hr_burst_err_q || s_hr_resp != keel_pkg::AXI_RESP_OKAY);
      wjobs_q <= wjobs_q + ((job_take && !j_skip && (j_kind == keel_pkg::JOB_H2D || j_kind == keel_pkg::JOB_ZERO)) ? 8'd1 : 8'd0)
                 - (wjob_done ? 8'd1 : 8'd0);
      case (rs_q)
        RS_IDLE: if (job_take) begin
          rs_vf_q <= job_vf;
          rs_slot_q <= job_slot;
          rs_src_q <= job_rec[keel_pkg::JR_SRC +: 3];
          rs_srcarg_q <= job_rec[keel_pkg::JR_SRCARG];
          if (j_type != T_NONE) rs_type_q <= j_type;
          case (j_type)
            T_DDR: begin
              rs_addr_q <= j_addr;
              rs_left_q <= j_bytes >> 6;
              rs_q <= RS_DDR;
            end
            T_HOST: rs_q <= RS_HOST;
            T_GEN: begin
              rs_beat_q <= j_addr[15:6];
              rs_left_q <= ({26'd0, j_addr[5:0]} + j_bytes + 32'd63) >> 6;
              rs_q <= RS_GEN;
            end
            default: ;
          endcase
        end
        RS_DDR: if (m_dar_valid && m_dar_ready) begin
          rs_addr_q <= rs_addr_q + {50'd0, rs_dnb, 6'd0};
          rs_left_q <= rs_left_q - 32'(rs_dnb);
          if (rs_left_q == 32'(rs_dnb)) rs_q <= RS_IDLE;
        end
        RS_HOST: if (!sw_busy) rs_q <= RS_IDLE;
        RS_GEN: if (credits != '0) begin
          rs_beat_q <= rs_beat_q + 10'd1;
          rs_left_q <= rs_left_q - 32'd1;
          if (rs_left_q == 32'd1) rs_q <= RS_IDLE;
        end
        default: rs_q <= RS_IDLE;
      endcase
    end
  end

  assign idle = rs_q == RS_IDLE && outst_q == '0;

endmodule
