`resetall
`timescale 1ns / 1ps
`default_nettype none

// keel_card: the SR-IOV NVMe offload card, as user logic behind a QDMA-style PCIe shell.
//
// Shell interfaces
//   s_axil_*      AXI4-Lite slave, 64-bit: BAR accesses of every function; the function
//                 number (0 PF, n + 1 VF n) travels in the user bits.
//   m_axi_host_*  AXI4 master, 512-bit: DMA into host memory. The function number travels in
//                 AxUSER (the shell's IOMMU checks it) and is echoed on RUSER/BUSER.
//                 ID 0: front end (reads) / data mover (writes); ID 1: data mover (reads) /
//                 completion writer (writes).
//   m_ats_*       Address-translation checks (ATS-style): before any data of a command moves,
//                 the card asks whether each host region is mapped for the function. A refused
//                 check is counted as a DMA fault by shell and card alike.
//   m_msix_*      MSI-X requests (function, vector).
//   s_flr_*       Function-level reset requests from the shell; m_evt_* reports finished
//                 resets (FLR, controller reset) so the shell can drop per-function state.
//   m_axi_ddr_*   AXI4 master, 512-bit: card DDR, which holds the storage (the disk image).
//   m_flush_*     Persist a byte range of card DDR (Flush, shutdown).
//   s_dbg_*       Fault injection for simulation shells; tie s_dbg_valid low on hardware.
//   cfg_*         Straps: run-time limits of this instance (at most the parameters).
//   m_nic_*, s_nic_*, s_upl_*, m_upl_*, cfg_nic_*, cfg_uplink_*
//                 The NIC half (keel_nic, functions 65..): its own byte-addressed 64-bit host
//                 DMA, MSI-X requests, the uplink's frame streams and straps. BAR accesses of
//                 functions >= 65 on s_axil_* are routed to it.
//
// Inside: keel_mmio / keel_pf_regs (registers), keel_ctrl (VF lifecycle), keel_frontend
// (queue contexts, SQ fetch, admin, PRP walk), keel_jobq (per-VF job queues), keel_qos_arbiter
// and keel_rate_limiter (QoS), keel_mover (data path), keel_cq_writer (completions, MSI-X),
// keel_counters; keel_nic (the NIC PF and VFs, the embedded switch). See
// docs/rtl-architecture.md.
module keel_card #(
  // VFs the card implements (1..64).
  parameter int NUM_VFS = 4,
  // IO queue pairs per VF (1..255).
  parameter int NUM_IOQ = 8,
  // CAP.MQES: largest queue, 0-based.
  parameter int MQES = 1023,
  // Identify MDTS: largest transfer 2^MDTS * 4 KiB (1..8).
  parameter int MDTS = 5,
  // Card clock in MHz (CLOCK_MHZ register, rate limiter); must divide 1000.
  parameter int CLOCK_MHZ = 250,
  // Job slots per VF between front end and data mover (power of two >= FETCH_MAX).
  parameter int JOBQ = 4,
  // SQEs fetched per host read at most (1, 2, 4 or 8).
  parameter int FETCH_MAX = 4,
  // Commands per unit of QoS weight in one arbiter turn.
  parameter int CMDS_PER_WEIGHT = 1,
  // Source FIFO of the data mover, in 512-bit beats.
  parameter int SRC_DEPTH = 64,
  // Largest card DDR burst in beats.
  parameter int DDR_BURST = 16,
  // log2 of the largest host DMA chunk in bytes.
  parameter int HOST_CHUNK_LOG2 = 10,
  // Width of the host and DDR data buses (the data path is built for 512).
  parameter int DATA_W = 512,
  // NIC VFs (functions 66..66 + NIC_VFS - 1; a power of two, 2..8) of the NIC half.
  parameter int NIC_VFS = 4,
  // 1: the NIC half (keel_nic) is built; 0: its ports are tied off and the NIC functions
  // answer nothing (the yosys synthesis checks build the NVMe half alone for now; see
  // docs/rtl-synthesis.md).
  parameter int NIC = 1,
  // Width of a VF index (derived).
  parameter int VFW = (NUM_VFS > 1) ? $clog2(NUM_VFS) : 1
) (
  input  wire                 clk,
  input  wire                 rst,

  input  wire  [7:0]          cfg_max_vfs,
  input  wire  [7:0]          cfg_max_ioq,
  input  wire  [63:0]         cfg_storage_lbas,

  // ---- AXI4-Lite MMIO slave
  input  wire                 s_axil_awvalid,
  output logic                s_axil_awready,
  input  wire  [15:0]         s_axil_awaddr,
  input  wire  [7:0]          s_axil_awuser,
  input  wire                 s_axil_wvalid,
  output logic                s_axil_wready,
  input  wire  [63:0]         s_axil_wdata,
  input  wire  [7:0]          s_axil_wstrb,
  output logic                s_axil_bvalid,
  input  wire                 s_axil_bready,
  output logic [1:0]          s_axil_bresp,
  input  wire                 s_axil_arvalid,
  output logic                s_axil_arready,
  input  wire  [15:0]         s_axil_araddr,
  input  wire  [7:0]          s_axil_aruser,
  output logic                s_axil_rvalid,
  input  wire                 s_axil_rready,
  output logic [63:0]         s_axil_rdata,
  output logic [1:0]          s_axil_rresp,

  // ---- AXI4 host DMA master
  output logic                m_axi_host_awvalid,
  input  wire                 m_axi_host_awready,
  output logic [3:0]          m_axi_host_awid,
  output logic [63:0]         m_axi_host_awaddr,
  output logic [7:0]          m_axi_host_awlen,
  output logic [7:0]          m_axi_host_awuser,
  output logic                m_axi_host_wvalid,
  input  wire                 m_axi_host_wready,
  output logic [DATA_W-1:0]   m_axi_host_wdata,
  output logic [DATA_W/8-1:0] m_axi_host_wstrb,
  output logic                m_axi_host_wlast,
  input  wire                 m_axi_host_bvalid,
  output logic                m_axi_host_bready,
  input  wire  [3:0]          m_axi_host_bid,
  input  wire  [1:0]          m_axi_host_bresp,
  input  wire  [7:0]          m_axi_host_buser,
  output logic                m_axi_host_arvalid,
  input  wire                 m_axi_host_arready,
  output logic [3:0]          m_axi_host_arid,
  output logic [63:0]         m_axi_host_araddr,
  output logic [7:0]          m_axi_host_arlen,
  output logic [7:0]          m_axi_host_aruser,
  input  wire                 m_axi_host_rvalid,
  output logic                m_axi_host_rready,
  input  wire  [3:0]          m_axi_host_rid,
  input  wire  [DATA_W-1:0]   m_axi_host_rdata,
  input  wire  [1:0]          m_axi_host_rresp,
  input  wire                 m_axi_host_rlast,
  input  wire  [7:0]          m_axi_host_ruser,

  // ---- address translation checks
  output logic                m_ats_valid,
  input  wire                 m_ats_ready,
  output logic [7:0]          m_ats_fn,
  output logic [63:0]         m_ats_addr,
  output logic [31:0]         m_ats_len,
  input  wire                 m_ats_resp_valid,
  input  wire                 m_ats_resp_ok,

  // ---- MSI-X
  output logic                m_msix_valid,
  input  wire                 m_msix_ready,
  output logic [7:0]          m_msix_fn,
  output logic [15:0]         m_msix_vector,

  // ---- FLR and function events
  input  wire                 s_flr_valid,
  output logic                s_flr_ready,
  input  wire  [7:0]          s_flr_fn,
  output logic                m_evt_valid,
  output logic [7:0]          m_evt_fn,
  output logic [1:0]          m_evt_kind,

  // ---- AXI4 card DDR master
  output logic                m_axi_ddr_awvalid,
  input  wire                 m_axi_ddr_awready,
  output logic [63:0]         m_axi_ddr_awaddr,
  output logic [7:0]          m_axi_ddr_awlen,
  output logic                m_axi_ddr_wvalid,
  input  wire                 m_axi_ddr_wready,
  output logic [DATA_W-1:0]   m_axi_ddr_wdata,
  output logic [DATA_W/8-1:0] m_axi_ddr_wstrb,
  output logic                m_axi_ddr_wlast,
  input  wire                 m_axi_ddr_bvalid,
  output logic                m_axi_ddr_bready,
  input  wire  [1:0]          m_axi_ddr_bresp,
  output logic                m_axi_ddr_arvalid,
  input  wire                 m_axi_ddr_arready,
  output logic [63:0]         m_axi_ddr_araddr,
  output logic [7:0]          m_axi_ddr_arlen,
  input  wire                 m_axi_ddr_rvalid,
  output logic                m_axi_ddr_rready,
  input  wire  [DATA_W-1:0]   m_axi_ddr_rdata,
  input  wire  [1:0]          m_axi_ddr_rresp,
  input  wire                 m_axi_ddr_rlast,

  // ---- card DDR persistence
  output logic                m_flush_valid,
  input  wire                 m_flush_ready,
  output logic [63:0]         m_flush_addr,
  output logic [63:0]         m_flush_len,
  input  wire                 m_flush_done,
  input  wire                 m_flush_err,

  // ---- fault injection (simulation)
  input  wire                 s_dbg_valid,
  output logic                s_dbg_ready,
  input  wire  [2:0]          s_dbg_op,
  input  wire  [7:0]          s_dbg_vf,
  input  wire  [31:0]         s_dbg_arg0,
  input  wire  [63:0]         s_dbg_arg1,

  // ---- the NIC half (keel_nic): its own DMA, MSI-X and uplink ports
  input  wire  [NIC_VFS-1:0]  cfg_nic_removed,
  input  wire                 cfg_uplink_on,
  input  wire                 cfg_uplink_up,
  output logic                m_nic_rd_valid,
  input  wire                 m_nic_rd_ready,
  output logic [63:0]         m_nic_rd_addr,
  output logic [15:0]         m_nic_rd_len,
  output logic [7:0]          m_nic_rd_fn,
  input  wire                 s_nic_rd_valid,
  input  wire  [63:0]         s_nic_rd_data,
  input  wire                 s_nic_rd_last,
  input  wire                 s_nic_rd_err,
  output logic                m_nic_wr_valid,
  input  wire                 m_nic_wr_ready,
  output logic [63:0]         m_nic_wr_addr,
  output logic [15:0]         m_nic_wr_len,
  output logic [7:0]          m_nic_wr_fn,
  output logic                m_nic_wd_valid,
  input  wire                 m_nic_wd_ready,
  output logic [63:0]         m_nic_wd_data,
  output logic                m_nic_wd_last,
  input  wire                 s_nic_wb_valid,
  input  wire                 s_nic_wb_err,
  output logic                m_nic_msix_valid,
  input  wire                 m_nic_msix_ready,
  output logic [7:0]          m_nic_msix_fn,
  output logic [15:0]         m_nic_msix_vector,
  input  wire                 s_upl_valid,
  output logic                s_upl_ready,
  input  wire  [63:0]         s_upl_data,
  input  wire  [3:0]          s_upl_bytes,
  input  wire                 s_upl_last,
  output logic                m_upl_valid,
  input  wire                 m_upl_ready,
  output logic [63:0]         m_upl_data,
  output logic [3:0]          m_upl_bytes,
  output logic                m_upl_last,
  input  wire                 s_upl_overflow,
  input  wire                 s_upl_tx_drop,
  output logic [7:0]          status_nic_num_vfs,

  // ---- status for the shell
  output logic [7:0]          status_num_vfs,
  output logic [NUM_VFS-1:0]  status_vf_removed,
  output logic [63:0]         status_cycles,

  // ---- simulation fast-forward (tie s_skip_valid low on hardware)
  // status_idle: nothing in flight and nothing to start; only timers run. A shell may then
  // present s_skip_valid for one clock, which stands for 1 + s_skip_cycles cycles (counters and
  // timers advance by that much); it must not skip past status_wake (cycles to the next timer).
  input  wire                 s_skip_valid,
  input  wire  [31:0]         s_skip_cycles,
  output logic                status_idle,
  output logic [31:0]         status_wake
);

  if (DATA_W != 512) begin : g_bad_data_w
    $fatal(1, "keel_card: the data path is 512 bits wide (DATA_W must be 512)");
  end
  if (NUM_VFS < 1 || NUM_VFS > 64) begin : g_bad_vfs
    $fatal(1, "keel_card: NUM_VFS must be 1..64");
  end
  if (NUM_IOQ < 1 || NUM_IOQ > 255) begin : g_bad_ioq
    $fatal(1, "keel_card: NUM_IOQ must be 1..255");
  end

  localparam int GW = 4;
  localparam int QN = NUM_IOQ + 1;
  localparam int GQW = $clog2(NUM_VFS * QN);
  localparam int JW = $clog2(JOBQ);
  localparam int SW = MDTS;
  localparam int RW = keel_pkg::JR_W;

  // ---------------------------------------------------------------- cycle counter
  logic [63:0] cycles_q;
  always_ff @(posedge clk) begin
    if (rst) cycles_q <= '0;
    else cycles_q <= cycles_q + 64'd1 + (s_skip_valid ? {32'd0, s_skip_cycles} : 64'd0);
  end
  assign status_cycles = cycles_q;

  // ---------------------------------------------------------------- wires
  // VF state
  logic [7:0]            num_vfs;
  logic                  num_vfs_err;
  logic [NUM_VFS-1:0]    vf_present, vf_removed, vf_ready, vf_fatal, vf_blocked, rate_allow;
  logic [NUM_VFS*GW-1:0] vf_gen;
  logic [NUM_VFS*32-1:0] vf_cc, vf_aqa;
  logic [NUM_VFS*2-1:0]  vf_shst;
  logic [NUM_VFS*64-1:0] vf_asq, vf_acq;
  // resources
  logic [NUM_VFS-1:0]    res_enabled;
  logic [NUM_VFS*8-1:0]  res_ioq, res_weight;
  logic [NUM_VFS*32-1:0] res_rate;
  logic [NUM_VFS*64-1:0] res_base, res_lbas;
  // PF regs <-> MMIO <-> ctrl
  logic                  pf_wr_valid, pf_wr_lo, pf_wr_hi, pf_wr_done;
  logic [13:0]           pf_wr_addr, pf_rd_addr;
  logic                  pf_rd_en;
  logic [63:0]           pf_wr_data, pf_rd_data;
  logic                  creq_valid, creq_numvfs, creq_ack;
  logic [VFW-1:0]        creq_vf;
  logic [7:0]            creq_value;
  logic                  res_reset_valid, regs_clear_valid;
  logic [VFW-1:0]        res_reset_vf, regs_clear_vf;
  // counters
  logic [VFW-1:0]        cnt_rd_vf;
  logic [64*5-1:0]       cnt_rd_data;
  logic [63:0]           tot_cmds, tot_bytes, tot_faults;
  logic [VFW-1:0]        smart_vf;
  logic [63:0]           smart_hr, smart_hw, smart_ur, smart_uw;
  // doorbells
  logic [VFW-1:0]        scan_vf;
  logic                  scan_en;
  logic [QN*17-1:0]      db_sq_tail, db_cq_head;
  logic [GQW-1:0]        db_head_g, db_clr_g;
  logic [16:0]           db_head;
  logic                  db_clr_valid;
  logic [1:0]            db_clr_mask;
  // front end <-> completion writer
  logic [QN*16-1:0]      cq_tail;
  logic [QN*17-1:0]      cq_reserved;
  logic                  cq_init_valid;
  logic [GQW-1:0]        cq_init_g, cx_g, retire_g;
  logic                  cx_live, cx_ien;
  logic [63:0]           cx_base;
  logic [16:0]           cx_size;
  logic [15:0]           cx_iv;
  logic                  retire_valid;
  logic [VFW-1:0]        retire_vf;
  logic                  cqop_valid, cqop_done;
  logic [1:0]            cqop_kind;
  logic [VFW-1:0]        cqop_vf;
  logic [15:0]           cqop_qid, cqop_cid;
  logic [31:0]           cqop_dw0;
  // ctrl ops
  logic                  feop_valid, feop_enable, feop_done;
  logic [VFW-1:0]        feop_vf;
  logic [63:0]           feop_asq, feop_acq;
  logic [12:0]           feop_asqs, feop_acqs;
  logic                  cqclr_valid, cqclr_flr, cqclr_done;
  logic [VFW-1:0]        cqclr_vf;
  logic                  tok_reset_valid;
  logic [VFW-1:0]        tok_reset_vf;
  logic                  cqcfg_valid;
  logic [2:0]            cqcfg_op;
  logic [VFW-1:0]        cqcfg_vf;
  logic [31:0]           cqcfg_arg0;
  logic [63:0]           cqcfg_arg1;
  logic                  fe_fatal_valid, cqw_fatal_valid;
  logic [VFW-1:0]        fe_fatal_vf, cqw_fatal_vf;
  logic [NUM_VFS-1:0]    jobs_idle;
  // job queues
  logic [NUM_VFS*(JW+1)-1:0] jq_free_slots;
  logic [NUM_VFS*JW-1:0] jq_next_slot;
  logic [NUM_VFS-1:0]    jq_idle, jq_head_valid;
  logic                  push_valid;
  logic [VFW-1:0]        push_vf;
  logic [RW-1:0]         push_rec, head_rec;
  logic [JW-1:0]         head_slot;
  logic                  seg_wr_valid;
  logic [VFW-1:0]        seg_wr_vf;
  logic [JW-1:0]         seg_wr_slot;
  logic [SW-1:0]         seg_wr_idx;
  logic [63:0]           seg_wr_data;
  logic [3*VFW-1:0]      seg_rd_vf;
  logic [3*JW-1:0]       seg_rd_slot;
  logic [3*SW-1:0]       seg_rd_idx;
  logic [3*64-1:0]       seg_rd_data;
  logic [2:0]            seg_rd_en;
  logic                  grant_valid, job_take;
  logic [VFW-1:0]        grant_vf;
  // mover -> completion writer
  logic                  rec_valid, rec_ready;
  logic [RW-1:0]         rec;
  logic [VFW-1:0]        rec_vf;
  // faults
  logic                  fe_fault_valid, mv_rfault_valid, mv_bfault_valid, cqw_fault_valid;
  logic [VFW-1:0]        fe_fault_vf, mv_rfault_vf, mv_bfault_vf, cqw_fault_vf;
  // counters from the completion writer
  logic                  cnt_cmd_valid, cnt_cmd_err, cnt_work_valid, cnt_smart_valid;
  logic                  cnt_smart_write;
  logic [VFW-1:0]        cnt_cmd_vf, cnt_work_vf, cnt_smart_vf;
  logic [31:0]           cnt_work_busy, cnt_work_bytes;
  logic [16:0]           cnt_smart_nlb;
  logic                  tok_valid;
  logic [VFW-1:0]        tok_vf;
  logic [31:0]           tok_bytes;
  // host read arbiter
  logic                  fe_ar_valid, fe_ar_ready, fe_r_valid, fe_r_ready;
  logic [63:0]           fe_ar_addr;
  logic [7:0]            fe_ar_len, fe_ar_fn;
  logic                  mv_ar_valid, mv_ar_ready, mv_r_valid, mv_r_ready;
  logic [63:0]           mv_ar_addr;
  logic [7:0]            mv_ar_len, mv_ar_fn;
  // host write arbiter
  logic                  mv_aw_valid, mv_aw_ready, mv_w_valid, mv_w_ready, mv_w_last;
  logic                  mv_b_valid, mv_b_ready;
  logic [63:0]           mv_aw_addr;
  logic [7:0]            mv_aw_len, mv_aw_fn;
  logic [511:0]          mv_w_data;
  logic [63:0]           mv_w_strb;
  logic                  cq_aw_valid, cq_aw_ready, cq_w_valid, cq_w_ready, cq_w_last;
  logic                  cq_b_valid, cq_b_ready;
  logic [63:0]           cq_aw_addr;
  logic [7:0]            cq_aw_len, cq_aw_fn;
  logic [511:0]          cq_w_data;
  logic [63:0]           cq_w_strb;
  // flush
  logic                  cf_valid, cf_ready, mf_valid, mf_ready;
  logic [63:0]           cf_addr, cf_len, mf_addr, mf_len;
  logic [1:0]            flush_owner_q;  // 0 idle, 1 ctrl, 2 mover
  // idleness for the fast-forward
  logic                  mmio_idle, mmio_kick, pf_idle, ctrl_idle, rate_idle, fe_idle;
  logic                  mover_idle, cqw_idle;
  logic [31:0]           ctrl_wake, cqw_wake;

  assign status_num_vfs = num_vfs;
  assign status_vf_removed = vf_removed;

  // ---------------------------------------------------------------- registers
  // BAR accesses of functions 65 and up (the NIC PF and VFs) go to keel_nic; the shell has one
  // transaction outstanding at a time, so the split needs no ordering of its own.
  logic        nic_w, nic_r, n_awready, n_bvalid, n_arready, n_rvalid, nic_idle;
  logic        e_awready, e_wready, e_bvalid, e_arready, e_rvalid;
  logic [1:0]  e_bresp, e_rresp;
  logic [63:0] e_rdata, n_rdata;
  assign nic_w = s_axil_awuser >= 8'd65;
  assign nic_r = s_axil_aruser >= 8'd65;
  assign s_axil_awready = nic_w ? n_awready : e_awready;
  assign s_axil_wready = nic_w ? n_awready : e_wready;
  assign s_axil_bvalid = e_bvalid || n_bvalid;
  assign s_axil_bresp = e_bvalid ? e_bresp : 2'd0;
  assign s_axil_arready = nic_r ? n_arready : e_arready;
  assign s_axil_rvalid = e_rvalid || n_rvalid;
  assign s_axil_rdata = e_rvalid ? e_rdata : n_rdata;
  assign s_axil_rresp = e_rvalid ? e_rresp : 2'd0;

  keel_mmio #(.NUM_VFS(NUM_VFS), .NUM_IOQ(NUM_IOQ), .MQES(MQES)) u_mmio (
    .clk, .rst, .cfg_max_ioq,
    .s_axil_awvalid(s_axil_awvalid && !nic_w), .s_axil_awready(e_awready),
    .s_axil_awaddr, .s_axil_awuser,
    .s_axil_wvalid(s_axil_wvalid && !nic_w), .s_axil_wready(e_wready), .s_axil_wdata,
    .s_axil_wstrb, .s_axil_bvalid(e_bvalid), .s_axil_bready, .s_axil_bresp(e_bresp),
    .s_axil_arvalid(s_axil_arvalid && !nic_r), .s_axil_arready(e_arready), .s_axil_araddr,
    .s_axil_aruser, .s_axil_rvalid(e_rvalid), .s_axil_rready, .s_axil_rdata(e_rdata),
    .s_axil_rresp(e_rresp),
    .pf_wr_valid, .pf_wr_addr, .pf_wr_lo, .pf_wr_hi, .pf_wr_data, .pf_wr_done,
    .pf_rd_en, .pf_rd_addr, .pf_rd_data,
    .num_vfs, .vf_removed, .vf_ready, .vf_fatal, .vf_shst, .regs_clear_valid, .regs_clear_vf,
    .vf_cc, .vf_aqa, .vf_asq, .vf_acq,
    .db_rd_en(scan_en), .db_rd_vf(scan_vf), .db_rd_sq_tail(db_sq_tail), .db_rd_cq_head(db_cq_head),
    .db_head_g, .db_head, .db_clr_valid, .db_clr_g, .db_clr_mask,
    .idle(mmio_idle), .kick(mmio_kick)
  );

  keel_pf_regs #(.NUM_VFS(NUM_VFS), .CLOCK_MHZ(CLOCK_MHZ)) u_pf_regs (
    .clk, .rst, .cfg_max_vfs, .cfg_max_ioq, .cfg_storage_lbas,
    .wr_valid(pf_wr_valid), .wr_addr(pf_wr_addr), .wr_lo(pf_wr_lo), .wr_hi(pf_wr_hi),
    .wr_data(pf_wr_data), .wr_done(pf_wr_done), .rd_en(pf_rd_en), .rd_addr(pf_rd_addr),
    .rd_data(pf_rd_data),
    .num_vfs, .num_vfs_err, .vf_removed,
    .ctrl_req_valid(creq_valid), .ctrl_req_numvfs(creq_numvfs), .ctrl_req_vf(creq_vf),
    .ctrl_req_value(creq_value), .ctrl_ack(creq_ack),
    .res_reset_valid, .res_reset_vf,
    .cnt_rd_vf, .cnt_rd_data, .tot_dma_faults(tot_faults), .tot_cmds, .tot_bytes,
    .cycles(cycles_q),
    .res_enabled, .res_ioq, .res_weight, .res_rate, .res_base, .res_lbas,
    .idle(pf_idle)
  );

  // ---------------------------------------------------------------- VF lifecycle
  logic         ctl_evt_valid;
  keel_ctrl #(.NUM_VFS(NUM_VFS), .GW(GW)) u_ctrl (
    .clk, .rst, .cfg_max_vfs,
    .req_valid(creq_valid), .req_numvfs(creq_numvfs), .req_vf(creq_vf), .req_value(creq_value),
    .req_ack(creq_ack), .res_reset_valid, .res_reset_vf, .regs_clear_valid, .regs_clear_vf,
    .num_vfs, .num_vfs_err,
    .vf_cc, .vf_aqa, .vf_asq, .vf_acq, .res_enabled, .res_base, .res_lbas,
    .s_flr_valid, .s_flr_ready, .s_flr_fn,
    .m_evt_valid(ctl_evt_valid), .m_evt_fn, .m_evt_kind,
    .s_dbg_valid, .s_dbg_ready, .s_dbg_op, .s_dbg_vf, .s_dbg_arg0, .s_dbg_arg1,
    .cqw_fault_valid(cqcfg_valid), .cqw_fault_op(cqcfg_op), .cqw_fault_vf(cqcfg_vf),
    .cqw_fault_arg0(cqcfg_arg0), .cqw_fault_arg1(cqcfg_arg1),
    .fe_fatal_valid, .fe_fatal_vf, .cqw_fatal_valid, .cqw_fatal_vf,
    .jobs_idle,
    .fe_op_valid(feop_valid), .fe_op_enable(feop_enable), .fe_op_vf(feop_vf),
    .fe_op_asq(feop_asq), .fe_op_acq(feop_acq), .fe_op_asqs(feop_asqs), .fe_op_acqs(feop_acqs),
    .fe_op_done(feop_done),
    .cqw_clr_valid(cqclr_valid), .cqw_clr_vf(cqclr_vf), .cqw_clr_flr(cqclr_flr),
    .cqw_clr_done(cqclr_done),
    .tok_reset_valid, .tok_reset_vf,
    .m_flush_valid(cf_valid), .m_flush_ready(cf_ready), .m_flush_addr(cf_addr),
    .m_flush_len(cf_len), .s_flush_done(m_flush_done && flush_owner_q == 2'd1),
    .s_flush_err(m_flush_err),
    .vf_present, .vf_removed, .vf_ready, .vf_fatal, .vf_blocked, .vf_gen, .vf_shst,
    .skip_valid(s_skip_valid), .skip_cycles(s_skip_cycles), .idle(ctrl_idle), .wake(ctrl_wake)
  );
  assign m_evt_valid = ctl_evt_valid;

  keel_rate_limiter #(.NUM_VFS(NUM_VFS), .CLOCK_MHZ(CLOCK_MHZ)) u_rate (
    .clk, .rst, .rate(res_rate),
    .consume_valid(tok_valid), .consume_vf(tok_vf), .consume_bytes(tok_bytes),
    .reset_valid(tok_reset_valid), .reset_vf(tok_reset_vf),
    .allow(rate_allow),
    .skip_valid(s_skip_valid), .skip_cycles(s_skip_cycles), .idle(rate_idle)
  );

  keel_counters #(.NUM_VFS(NUM_VFS), .FAULT_SRCS(4)) u_counters (
    .clk, .rst,
    .cmd_valid(cnt_cmd_valid), .cmd_vf(cnt_cmd_vf), .cmd_err(cnt_cmd_err),
    .work_valid(cnt_work_valid), .work_vf(cnt_work_vf), .work_busy(cnt_work_busy),
    .work_bytes(cnt_work_bytes),
    .smart_valid(cnt_smart_valid), .smart_vf(cnt_smart_vf), .smart_write(cnt_smart_write),
    .smart_nlb(cnt_smart_nlb),
    .fault_valid({cqw_fault_valid, mv_bfault_valid, mv_rfault_valid, fe_fault_valid}),
    .fault_vf({cqw_fault_vf, mv_bfault_vf, mv_rfault_vf, fe_fault_vf}),
    .rd_vf(cnt_rd_vf), .rd_data(cnt_rd_data), .tot_cmds, .tot_bytes, .tot_faults,
    .smart_rd_vf(smart_vf), .smart_host_reads(smart_hr), .smart_host_writes(smart_hw),
    .smart_units_read(smart_ur), .smart_units_written(smart_uw)
  );

  // ---------------------------------------------------------------- command pipeline
  keel_frontend #(
    .NUM_VFS(NUM_VFS), .NUM_IOQ(NUM_IOQ), .MQES(MQES), .MDTS(MDTS), .JOBQ(JOBQ),
    .FETCH_MAX(FETCH_MAX), .GW(GW)
  ) u_frontend (
    .clk, .rst, .cfg_max_ioq,
    .vf_present, .vf_removed, .vf_ready, .vf_fatal, .vf_blocked, .vf_gen, .rate_allow, .vf_cc,
    .res_ioq, .res_base, .res_lbas,
    .scan_en, .scan_vf, .db_sq_tail, .db_cq_head, .cq_tail, .cq_reserved,
    .db_clr_valid, .db_clr_g, .db_clr_mask, .cq_init_valid, .cq_init_g,
    .cx_g, .cx_live, .cx_base, .cx_size, .cx_ien, .cx_iv,
    .retire_valid, .retire_g,
    .jq_free_slots, .jq_next_slot, .jq_idle,
    .push_valid, .push_vf, .push_rec,
    .seg_wr_valid, .seg_wr_vf, .seg_wr_slot, .seg_wr_idx, .seg_wr_data,
    .seg_rd_vf(seg_rd_vf[0 +: VFW]), .seg_rd_slot(seg_rd_slot[0 +: JW]),
    .seg_rd_idx(seg_rd_idx[0 +: SW]), .seg_rd_en(seg_rd_en[0]), .seg_rd_data(seg_rd_data[0 +: 64]),
    .jobs_idle,
    .op_valid(feop_valid), .op_enable(feop_enable), .op_vf(feop_vf), .op_asq(feop_asq),
    .op_acq(feop_acq), .op_asqs(feop_asqs), .op_acqs(feop_acqs), .op_done(feop_done),
    .fatal_valid(fe_fatal_valid), .fatal_vf(fe_fatal_vf),
    .cq_op_valid(cqop_valid), .cq_op_kind(cqop_kind), .cq_op_vf(cqop_vf),
    .cq_op_qid(cqop_qid), .cq_op_cid(cqop_cid), .cq_op_done(cqop_done), .cq_op_dw0(cqop_dw0),
    .m_ar_valid(fe_ar_valid), .m_ar_ready(fe_ar_ready), .m_ar_addr(fe_ar_addr),
    .m_ar_len(fe_ar_len), .m_ar_fn(fe_ar_fn),
    .s_r_valid(fe_r_valid), .s_r_ready(fe_r_ready), .s_r_data(m_axi_host_rdata),
    .s_r_resp(m_axi_host_rresp), .s_r_last(m_axi_host_rlast),
    .m_ats_valid, .m_ats_ready, .m_ats_fn, .m_ats_addr, .m_ats_len,
    .s_ats_resp_valid(m_ats_resp_valid), .s_ats_resp_ok(m_ats_resp_ok),
    .fault_valid(fe_fault_valid), .fault_vf(fe_fault_vf),
    .kick(mmio_kick), .idle(fe_idle)
  );

  keel_jobq #(.NUM_VFS(NUM_VFS), .JOBQ(JOBQ), .SEGS(1 << MDTS)) u_jobq (
    .clk, .rst,
    .push_valid, .push_vf, .push_rec,
    .free_slots(jq_free_slots), .next_slot(jq_next_slot), .jobs_idle(jq_idle),
    .head_valid(jq_head_valid), .head_vf(grant_vf), .head_rec, .head_slot,
    .pop_valid(job_take),
    .free_valid(retire_valid), .free_vf(retire_vf),
    .seg_wr_valid, .seg_wr_vf, .seg_wr_slot, .seg_wr_idx, .seg_wr_data,
    .seg_rd_vf, .seg_rd_slot, .seg_rd_idx, .seg_rd_en, .seg_rd_data
  );

  keel_qos_arbiter #(.NUM_VFS(NUM_VFS), .CMDS_PER_WEIGHT(CMDS_PER_WEIGHT)) u_qos (
    .clk, .rst, .req(jq_head_valid), .weight(res_weight),
    .grant_valid, .grant_vf, .take(job_take)
  );

  keel_mover #(
    .NUM_VFS(NUM_VFS), .JOBQ(JOBQ), .MDTS(MDTS), .MQES(MQES), .GW(GW),
    .SRC_DEPTH(SRC_DEPTH), .HOST_CHUNK_LOG2(HOST_CHUNK_LOG2), .DDR_BURST(DDR_BURST)
  ) u_mover (
    .clk, .rst,
    .job_valid(grant_valid), .job_vf(grant_vf), .job_rec(head_rec), .job_slot(head_slot),
    .job_take,
    .vf_gen, .vf_ready, .vf_fatal,
    .seg_s_vf(seg_rd_vf[VFW +: VFW]), .seg_s_slot(seg_rd_slot[JW +: JW]),
    .seg_s_idx(seg_rd_idx[SW +: SW]), .seg_s_en(seg_rd_en[1]), .seg_s_data(seg_rd_data[64 +: 64]),
    .seg_d_vf(seg_rd_vf[2*VFW +: VFW]), .seg_d_slot(seg_rd_slot[2*JW +: JW]),
    .seg_d_idx(seg_rd_idx[2*SW +: SW]), .seg_d_en(seg_rd_en[2]), .seg_d_data(seg_rd_data[128 +: 64]),
    .res_lbas, .smart_vf, .smart_host_reads(smart_hr), .smart_host_writes(smart_hw),
    .smart_units_read(smart_ur), .smart_units_written(smart_uw),
    .m_har_valid(mv_ar_valid), .m_har_ready(mv_ar_ready), .m_har_addr(mv_ar_addr),
    .m_har_len(mv_ar_len), .m_har_fn(mv_ar_fn),
    .s_hr_valid(mv_r_valid), .s_hr_ready(mv_r_ready), .s_hr_data(m_axi_host_rdata),
    .s_hr_resp(m_axi_host_rresp), .s_hr_last(m_axi_host_rlast), .s_hr_user(m_axi_host_ruser),
    .m_haw_valid(mv_aw_valid), .m_haw_ready(mv_aw_ready), .m_haw_addr(mv_aw_addr),
    .m_haw_len(mv_aw_len), .m_haw_fn(mv_aw_fn),
    .m_hw_valid(mv_w_valid), .m_hw_ready(mv_w_ready), .m_hw_data(mv_w_data),
    .m_hw_strb(mv_w_strb), .m_hw_last(mv_w_last),
    .s_hb_valid(mv_b_valid), .s_hb_ready(mv_b_ready), .s_hb_resp(m_axi_host_bresp),
    .s_hb_user(m_axi_host_buser),
    .m_dar_valid(m_axi_ddr_arvalid), .m_dar_ready(m_axi_ddr_arready),
    .m_dar_addr(m_axi_ddr_araddr), .m_dar_len(m_axi_ddr_arlen),
    .s_dr_valid(m_axi_ddr_rvalid), .s_dr_ready(m_axi_ddr_rready), .s_dr_data(m_axi_ddr_rdata),
    .s_dr_resp(m_axi_ddr_rresp), .s_dr_last(m_axi_ddr_rlast),
    .m_daw_valid(m_axi_ddr_awvalid), .m_daw_ready(m_axi_ddr_awready),
    .m_daw_addr(m_axi_ddr_awaddr), .m_daw_len(m_axi_ddr_awlen),
    .m_dw_valid(m_axi_ddr_wvalid), .m_dw_ready(m_axi_ddr_wready), .m_dw_data(m_axi_ddr_wdata),
    .m_dw_strb(m_axi_ddr_wstrb), .m_dw_last(m_axi_ddr_wlast),
    .s_db_valid(m_axi_ddr_bvalid), .s_db_ready(m_axi_ddr_bready), .s_db_resp(m_axi_ddr_bresp),
    .m_flush_valid(mf_valid), .m_flush_ready(mf_ready), .m_flush_addr(mf_addr),
    .m_flush_len(mf_len), .s_flush_done(m_flush_done && flush_owner_q == 2'd2),
    .s_flush_err(m_flush_err),
    .rfault_valid(mv_rfault_valid), .rfault_vf(mv_rfault_vf),
    .bfault_valid(mv_bfault_valid), .bfault_vf(mv_bfault_vf),
    .m_rec_valid(rec_valid), .m_rec_ready(rec_ready), .m_rec(rec), .m_rec_vf(rec_vf),
    .idle(mover_idle)
  );

  keel_cq_writer #(.NUM_VFS(NUM_VFS), .NUM_IOQ(NUM_IOQ), .GW(GW)) u_cq_writer (
    .clk, .rst, .cycles(cycles_q),
    .s_rec_valid(rec_valid), .s_rec_ready(rec_ready), .s_rec(rec), .s_rec_vf(rec_vf),
    .vf_gen, .vf_ready, .vf_fatal, .vf_removed,
    .retire_valid, .retire_vf, .retire_g,
    .cx_g, .cx_live, .cx_base, .cx_size, .cx_ien, .cx_iv, .db_head_g, .db_head,
    .scan_en, .scan_vf, .scan_tail(cq_tail), .scan_reserved(cq_reserved), .cq_init_valid, .cq_init_g,
    .op_valid(cqop_valid), .op_kind(cqop_kind), .op_vf(cqop_vf), .op_qid(cqop_qid),
    .op_cid(cqop_cid), .op_done(cqop_done), .op_dw0(cqop_dw0),
    .clr_valid(cqclr_valid), .clr_vf(cqclr_vf), .clr_flr(cqclr_flr), .clr_done(cqclr_done),
    .cfg_valid(cqcfg_valid), .cfg_op(cqcfg_op), .cfg_vf(cqcfg_vf), .cfg_arg0(cqcfg_arg0),
    .cfg_arg1(cqcfg_arg1),
    .m_aw_valid(cq_aw_valid), .m_aw_ready(cq_aw_ready), .m_aw_addr(cq_aw_addr),
    .m_aw_len(cq_aw_len), .m_aw_fn(cq_aw_fn),
    .m_w_valid(cq_w_valid), .m_w_ready(cq_w_ready), .m_w_data(cq_w_data),
    .m_w_strb(cq_w_strb), .m_w_last(cq_w_last),
    .s_b_valid(cq_b_valid), .s_b_ready(cq_b_ready), .s_b_resp(m_axi_host_bresp),
    .m_msix_valid, .m_msix_ready, .m_msix_fn, .m_msix_vector,
    .cnt_cmd_valid, .cnt_cmd_vf, .cnt_cmd_err, .cnt_work_valid, .cnt_work_vf, .cnt_work_busy,
    .cnt_work_bytes, .cnt_smart_valid, .cnt_smart_vf, .cnt_smart_write, .cnt_smart_nlb,
    .tok_valid, .tok_vf, .tok_bytes,
    .fatal_valid(cqw_fatal_valid), .fatal_vf(cqw_fatal_vf),
    .fault_valid(cqw_fault_valid), .fault_vf(cqw_fault_vf),
    .idle(cqw_idle), .wake(cqw_wake)
  );

  // ---------------------------------------------------------------- host DMA
  keel_host_rd_arb u_host_rd_arb (
    .clk, .rst,
    .s0_ar_valid(fe_ar_valid), .s0_ar_ready(fe_ar_ready), .s0_ar_addr(fe_ar_addr),
    .s0_ar_len(fe_ar_len), .s0_ar_fn(fe_ar_fn), .s0_r_valid(fe_r_valid), .s0_r_ready(fe_r_ready),
    .s1_ar_valid(mv_ar_valid), .s1_ar_ready(mv_ar_ready), .s1_ar_addr(mv_ar_addr),
    .s1_ar_len(mv_ar_len), .s1_ar_fn(mv_ar_fn), .s1_r_valid(mv_r_valid), .s1_r_ready(mv_r_ready),
    .m_ar_valid(m_axi_host_arvalid), .m_ar_ready(m_axi_host_arready), .m_ar_id(m_axi_host_arid),
    .m_ar_addr(m_axi_host_araddr), .m_ar_len(m_axi_host_arlen), .m_ar_user(m_axi_host_aruser),
    .m_r_valid(m_axi_host_rvalid), .m_r_ready(m_axi_host_rready), .m_r_id(m_axi_host_rid)
  );

  keel_host_wr_arb u_host_wr_arb (
    .clk, .rst,
    .s0_aw_valid(mv_aw_valid), .s0_aw_ready(mv_aw_ready), .s0_aw_addr(mv_aw_addr),
    .s0_aw_len(mv_aw_len), .s0_aw_fn(mv_aw_fn),
    .s0_w_valid(mv_w_valid), .s0_w_ready(mv_w_ready), .s0_w_data(mv_w_data),
    .s0_w_strb(mv_w_strb), .s0_w_last(mv_w_last),
    .s0_b_valid(mv_b_valid), .s0_b_ready(mv_b_ready),
    .s1_aw_valid(cq_aw_valid), .s1_aw_ready(cq_aw_ready), .s1_aw_addr(cq_aw_addr),
    .s1_aw_len(cq_aw_len), .s1_aw_fn(cq_aw_fn),
    .s1_w_valid(cq_w_valid), .s1_w_ready(cq_w_ready), .s1_w_data(cq_w_data),
    .s1_w_strb(cq_w_strb), .s1_w_last(cq_w_last),
    .s1_b_valid(cq_b_valid), .s1_b_ready(cq_b_ready),
    .m_aw_valid(m_axi_host_awvalid), .m_aw_ready(m_axi_host_awready), .m_aw_id(m_axi_host_awid),
    .m_aw_addr(m_axi_host_awaddr), .m_aw_len(m_axi_host_awlen), .m_aw_user(m_axi_host_awuser),
    .m_w_valid(m_axi_host_wvalid), .m_w_ready(m_axi_host_wready), .m_w_data(m_axi_host_wdata),
    .m_w_strb(m_axi_host_wstrb), .m_w_last(m_axi_host_wlast),
    .m_b_valid(m_axi_host_bvalid), .m_b_ready(m_axi_host_bready), .m_b_id(m_axi_host_bid)
  );

  // ---------------------------------------------------------------- the NIC half
  if (NIC != 0) begin : g_nic
    keel_nic #(.NV(NIC_VFS), .NQ(4), .CLOCK_MHZ(CLOCK_MHZ)) u_nic (
      .clk, .rst,
      .s_awvalid(s_axil_awvalid && nic_w), .s_awready(n_awready), .s_awaddr(s_axil_awaddr),
      .s_awuser(s_axil_awuser), .s_wdata(s_axil_wdata), .s_wstrb(s_axil_wstrb),
      .s_bvalid(n_bvalid), .s_bready(s_axil_bready),
      .s_arvalid(s_axil_arvalid && nic_r), .s_arready(n_arready), .s_araddr(s_axil_araddr),
      .s_aruser(s_axil_aruser), .s_rvalid(n_rvalid), .s_rready(s_axil_rready), .s_rdata(n_rdata),
      .cfg_removed(cfg_nic_removed), .cfg_uplink_on, .cfg_uplink_up,
      .m_rd_valid(m_nic_rd_valid), .m_rd_ready(m_nic_rd_ready), .m_rd_addr(m_nic_rd_addr),
      .m_rd_len(m_nic_rd_len), .m_rd_fn(m_nic_rd_fn), .s_rd_valid(s_nic_rd_valid),
      .s_rd_data(s_nic_rd_data), .s_rd_last(s_nic_rd_last), .s_rd_err(s_nic_rd_err),
      .m_wr_valid(m_nic_wr_valid), .m_wr_ready(m_nic_wr_ready), .m_wr_addr(m_nic_wr_addr),
      .m_wr_len(m_nic_wr_len), .m_wr_fn(m_nic_wr_fn), .m_wd_valid(m_nic_wd_valid),
      .m_wd_ready(m_nic_wd_ready), .m_wd_data(m_nic_wd_data), .m_wd_last(m_nic_wd_last),
      .s_wb_valid(s_nic_wb_valid), .s_wb_err(s_nic_wb_err),
      .m_msix_valid(m_nic_msix_valid), .m_msix_ready(m_nic_msix_ready),
      .m_msix_fn(m_nic_msix_fn), .m_msix_vector(m_nic_msix_vector),
      .s_upl_valid, .s_upl_ready, .s_upl_data, .s_upl_bytes, .s_upl_last,
      .m_upl_valid, .m_upl_ready, .m_upl_data, .m_upl_bytes, .m_upl_last,
      .s_upl_overflow, .s_upl_tx_drop, .status_num_vfs(status_nic_num_vfs),
      .skip_valid(s_skip_valid), .skip_cycles(s_skip_cycles), .idle(nic_idle)
    );
  end else begin : g_no_nic
    keel_no_nic u_no_nic (
      .clk, .rst, .s_awvalid(s_axil_awvalid && nic_w), .s_awready(n_awready),
      .s_bvalid(n_bvalid), .s_bready(s_axil_bready), .s_arvalid(s_axil_arvalid && nic_r),
      .s_arready(n_arready), .s_rvalid(n_rvalid), .s_rready(s_axil_rready), .s_rdata(n_rdata),
      .m_rd_valid(m_nic_rd_valid), .m_rd_addr(m_nic_rd_addr), .m_rd_len(m_nic_rd_len),
      .m_rd_fn(m_nic_rd_fn), .m_wr_valid(m_nic_wr_valid), .m_wr_addr(m_nic_wr_addr),
      .m_wr_len(m_nic_wr_len), .m_wr_fn(m_nic_wr_fn), .m_wd_valid(m_nic_wd_valid),
      .m_wd_data(m_nic_wd_data), .m_wd_last(m_nic_wd_last), .m_msix_valid(m_nic_msix_valid),
      .m_msix_fn(m_nic_msix_fn), .m_msix_vector(m_nic_msix_vector), .s_upl_ready,
      .m_upl_valid, .m_upl_data, .m_upl_bytes, .m_upl_last,
      .status_num_vfs(status_nic_num_vfs), .idle(nic_idle)
    );
  end

  // ---------------------------------------------------------------- fast-forward status
  assign status_idle = nic_idle && mmio_idle && pf_idle && ctrl_idle && rate_idle && fe_idle && &jq_idle &&
                       mover_idle && cqw_idle && flush_owner_q == 2'd0 && !cqop_valid &&
                       !cqclr_valid && !feop_valid;
  assign status_wake = ctrl_wake < cqw_wake ? ctrl_wake : cqw_wake;

  // ---------------------------------------------------------------- flush port: ctrl or mover
  always_comb begin
    m_flush_valid = flush_owner_q == 2'd0 && (cf_valid || mf_valid);
    m_flush_addr = cf_valid ? cf_addr : mf_addr;
    m_flush_len = cf_valid ? cf_len : mf_len;
    cf_ready = flush_owner_q == 2'd0 && cf_valid && m_flush_ready;
    mf_ready = flush_owner_q == 2'd0 && !cf_valid && mf_valid && m_flush_ready;
  end
  always_ff @(posedge clk) begin
    if (rst) flush_owner_q <= 2'd0;
    else if (cf_ready) flush_owner_q <= 2'd1;
    else if (mf_ready) flush_owner_q <= 2'd2;
    else if (m_flush_done) flush_owner_q <= 2'd0;
  end

endmodule
