`resetall
`timescale 1ns / 1ps
`default_nettype none

// keel_nic_regs: the NIC's registers - NIC PF (function 65: NICPF, NICVFCFG n) and NIC VF n
// (function 66 + n: NIC, NICQ q) - behind their own AXI4-Lite slave (keel_card routes the
// accesses whose function number is 65 or more here). Offsets come from keel_regs_pkg.
//
// A write is applied only while the data-path engine (keel_nic_engine) sits between frames:
// `hold` keeps it there while a write is pending, so every register write is atomic with
// respect to the frames, as in the reference model. Writes are applied as one or two 32-bit
// halves (the strobes say which), low half first, one per cycle.
//
// The per-VF and per-queue state lives in flat vectors. Every write to it uses a constant index:
// a run-time VF or queue number selects one iteration of a constant loop (`for (int v ...) if
// (sel == v) ...`), and the tasks below are only ever called with such constants. Written
// through a run-time part-select instead (`x[sel*64 +: 64] <= ...`), each write becomes a
// shift-and-mask of the whole vector, which yosys's `proc` cannot get through in reasonable
// time (docs/rtl-synthesis.md). Reads may use run-time indices.
module keel_nic_regs #(
  parameter int NV = 4,
  parameter int NQ = 4,
  parameter int VW = $clog2(NV)
) (
  input  wire                 clk,
  input  wire                 rst,
  // AXI4-Lite slave (function number in the user bits).
  input  wire                 s_awvalid,
  output logic                s_awready,
  input  wire  [15:0]         s_awaddr,
  input  wire  [7:0]          s_awuser,
  input  wire  [63:0]         s_wdata,
  input  wire  [7:0]          s_wstrb,
  output logic                s_bvalid,
  input  wire                 s_bready,
  input  wire                 s_arvalid,
  output logic                s_arready,
  input  wire  [15:0]         s_araddr,
  input  wire  [7:0]          s_aruser,
  output logic                s_rvalid,
  input  wire                 s_rready,
  output logic [63:0]         s_rdata,
  // Shell straps.
  input  wire  [NV-1:0]       removed,
  input  wire                 uplink_on,
  input  wire                 uplink_up,
  // To the engine.
  input  wire                 eng_idle,
  output logic                hold,
  output logic [NV*NQ-1:0]    q_en,
  output logic [NV*NQ*10-1:0] q_cfg,
  output logic [NV*NQ*64-1:0] tx_base, tx_cq_base, rx_base, rx_cq_base,
  output logic [NV*NQ*12-1:0] tx_tail, rx_tail, tx_cq_head, rx_cq_head,
  output logic [NV-1:0]       vf_run,   // present, not removed, CTRL.ENABLE, not FATAL
  output logic [NV-1:0]       port_up,  // switch port: enabled by the PF, present, not removed
  output logic [NV*14-1:0]    mtu,
  output logic [NV*48-1:0]    mac,
  output logic [NV*32-1:0]    rate,
  output logic [NV*NQ-1:0]    qreset,
  output logic [NV-1:0]       cnt_clear,
  output logic [NV-1:0]       bkt_fill,
  output logic [7:0]          num_vfs,
  // From the engine.
  input  wire                 fault_valid,
  input  wire  [VW-1:0]       fault_vf,
  input  wire  [1:0]          fault_q,
  input  wire  [NV*NQ*12-1:0] tx_head, rx_head,
  input  wire  [NV*12*64-1:0] cnt,
  input  wire  [6*64-1:0]     ucnt
);

  localparam int NQT = NV * NQ;
  localparam logic [7:0] FN_PF = 8'd65;

  // ---------------------------------------------------------------- state
  logic [NV-1:0]    present_q, enabled_q, fatal_q, mtu_err_q, port_en_q, cfg_err_q;
  logic [NV*4-1:0]  err_code_q;
  logic [NQT*32-1:0] cfg_q;
  logic [NQT*4-1:0] qerr_q;
  logic             num_vfs_err_q;
  logic [7:0]       num_vfs_q;
  logic [NV-1:0]    removed_q;

  assign num_vfs = num_vfs_q;
  always_comb begin
    for (int v = 0; v < NV; v++) begin
      vf_run[v] = present_q[v] && !removed[v] && enabled_q[v] && !fatal_q[v];
      port_up[v] = port_en_q[v] && present_q[v] && !removed[v];
    end
    for (int i = 0; i < NQT; i++) q_cfg[i*10 +: 10] = cfg_q[i*32 +: 10];
  end

  // ---------------------------------------------------------------- writes
  logic [1:0]  ws_q;  // 0 idle, 1 low half applied, 2 response
  logic [15:0] wa;
  logic [31:0] wv;
  logic        wgo;
  assign hold = s_awvalid || ws_q != 2'd0;
  always_comb begin
    wgo = 1'b0;
    wa = s_awaddr & ~16'd7;
    wv = s_wdata[31:0];
    if (ws_q == 2'd0 && s_awvalid && eng_idle && s_wstrb[3:0] != 4'd0) wgo = 1'b1;
    if (ws_q == 2'd1 && s_wstrb[7:4] != 4'd0) begin
      wgo = 1'b1;
      wa = (s_awaddr & ~16'd7) | 16'd4;
      wv = s_wdata[63:32];
    end
  end
  assign s_awready = ws_q == 2'd1;
  assign s_bvalid = ws_q == 2'd2;

  // A write to a NICQ register (of a VF that is present): wq_hit, the queue (VF-major) and the
  // register. vf_write leaves these to queue_write, which the always_ff below calls once per
  // queue at its top level: nested under apply's and vf_write's branches, each queue's copy
  // would put a dozen multiplexer levels in front of every bit of the queue's state.
  // wsize: the ring size (entries) that bounds a tail or head write, 1 << the TX (TX_TAIL,
  // TX_CQ_HEAD) or RX size field of that queue, computed once here rather than in each copy.
  logic          wq_hit;
  int            wq;
  logic [5:0]    wr;
  logic [15:0]   wsize;
  always_comb begin
    logic [VW-1:0] v;
    logic [3:0]    l2;
    v = VW'(s_awuser - FN_PF - 8'd1);
    wq_hit = s_awuser > FN_PF && s_awuser - FN_PF - 8'd1 < 8'(NV) &&
             present_q[v] && !removed[v] && 64'(wa) >= keel_regs_pkg::NICQ_BASE &&
             64'(wa) < keel_regs_pkg::NICQ_BASE + 64'(NQ) * keel_regs_pkg::NICQ_STRIDE;
    wq = 32'(v) * NQ + 32'((64'(wa) - keel_regs_pkg::NICQ_BASE) / keel_regs_pkg::NICQ_STRIDE);
    wr = 6'((64'(wa) - keel_regs_pkg::NICQ_BASE) % keel_regs_pkg::NICQ_STRIDE);
    l2 = (wr == 6'h28 || wr == 6'h30) ? cfg_q[wq*32 +: 4] : cfg_q[wq*32 + 4 +: 4];
    wsize = 16'd1 << l2;
  end

  // The VFs a register write resets as an FLR does (reset_vf): those that come or go when
  // NICPF NUM_VFS changes, or the one a NICVFCFG FLR names. The always_ff below does these
  // resets together with those of restored VFs, ahead of apply(), rather than in apply: one
  // copy of reset_vf (which writes every queue of the VF) per VF instead of four keeps yosys's
  // `proc` quick. In a cycle where apply() would reset a VF it writes nothing else reset_vf
  // writes, so doing the reset first changes nothing.
  function automatic logic num_vfs_bad(input logic [7:0] n);
    num_vfs_bad = n > 8'(NV) || (num_vfs_q != 8'd0 && n != 8'd0 && n != num_vfs_q);
  endfunction
  logic [NV-1:0] wreset;
  always_comb begin
    logic [VW-1:0] pv;  // the NICVFCFG instance and register the write addresses
    logic [7:0]    pr;
    pv = VW'((64'(wa) - keel_regs_pkg::NICVFCFG_BASE) / keel_regs_pkg::NICVFCFG_STRIDE);
    pr = 8'((64'(wa) - keel_regs_pkg::NICVFCFG_BASE) % keel_regs_pkg::NICVFCFG_STRIDE);
    wreset = '0;
    if (s_awuser == FN_PF && 64'(wa) == keel_regs_pkg::NICPF_NUM_VFS_OFFSET) begin
      if (!num_vfs_bad(wv[7:0]) && wv[7:0] != num_vfs_q) begin
        for (int v = 0; v < NV; v++) begin
          wreset[v] = wv[7:0] == 8'd0 ? 8'(v) < num_vfs_q : 8'(v) < wv[7:0];
        end
      end
    end else if (s_awuser == FN_PF && 64'(wa) >= keel_regs_pkg::NICVFCFG_BASE &&
                 64'(wa) < keel_regs_pkg::NICVFCFG_BASE + 64'(NV) * keel_regs_pkg::NICVFCFG_STRIDE &&
                 64'(pr) == keel_regs_pkg::NICVFCFG_FLR_OFFSET && wv[0]) begin
      for (int v = 0; v < NV; v++) wreset[v] = pv == VW'(v) && 8'(v) < num_vfs_q;
    end
  end

  always_ff @(posedge clk) begin
    qreset <= '0;
    cnt_clear <= '0;
    bkt_fill <= '0;
    removed_q <= removed;
    if (rst) begin
      ws_q <= 2'd0;
      present_q <= '0; enabled_q <= '0; fatal_q <= '0; mtu_err_q <= '0; port_en_q <= '0;
      cfg_err_q <= '0; err_code_q <= '0; cfg_q <= '0; qerr_q <= '0; q_en <= '0;
      num_vfs_err_q <= 1'b0; num_vfs_q <= 8'd0;
      tx_base <= '0; tx_cq_base <= '0; rx_base <= '0; rx_cq_base <= '0;
      tx_tail <= '0; rx_tail <= '0; tx_cq_head <= '0; rx_cq_head <= '0;
      mac <= '0; rate <= '0;
      for (int v = 0; v < NV; v++) mtu[v*14 +: 14] <= 14'd1500;
    end else begin
      // Write handshake: 0 -(low half or none)-> 1 -(high half)-> 2 -(B taken)-> 0.
      case (ws_q)
        2'd0: if (s_awvalid && eng_idle) ws_q <= 2'd1;
        2'd1: ws_q <= 2'd2;
        default: if (s_bready) ws_q <= 2'd0;
      endcase
      // Ring faults from the engine.
      if (fault_valid) begin
        for (int v = 0; v < NV; v++) begin
          if (fault_vf == VW'(v)) fatal_q[v] <= 1'b1;
        end
        for (int i = 0; i < NQT; i++) begin
          if (32'(fault_vf) * NQ + 32'(fault_q) == i) qerr_q[i*4 +: 4] <= 4'd3;
        end
      end
      // A restored VF comes back as after an FLR; the resets of the write applied (wreset).
      for (int v = 0; v < NV; v++) begin
        if ((removed_q[v] && !removed[v]) || (wgo && wreset[v])) reset_vf(v);
      end
      if (wgo) apply(s_awuser, wa, wv);
      for (int i = 0; i < NQT; i++) begin
        if (wgo && wq_hit && wq == i) queue_write(i, wr, wv);
      end
    end
  end

  task automatic stop_q(input int i);
    q_en[i] <= 1'b0;
    cfg_q[i*32 + 31] <= 1'b0;
    tx_tail[i*12 +: 12] <= '0; rx_tail[i*12 +: 12] <= '0;
    tx_cq_head[i*12 +: 12] <= '0; rx_cq_head[i*12 +: 12] <= '0;
    qreset[i] <= 1'b1;
  endtask

  task automatic reset_vf(input int v);
    for (int q = 0; q < NQ; q++) begin
      stop_q(v * NQ + q);
      tx_base[(v*NQ+q)*64 +: 64] <= '0; tx_cq_base[(v*NQ+q)*64 +: 64] <= '0;
      rx_base[(v*NQ+q)*64 +: 64] <= '0; rx_cq_base[(v*NQ+q)*64 +: 64] <= '0;
      cfg_q[(v*NQ+q)*32 +: 32] <= '0;
      qerr_q[(v*NQ+q)*4 +: 4] <= '0;
    end
    enabled_q[v] <= 1'b0; fatal_q[v] <= 1'b0; mtu_err_q[v] <= 1'b0;
    mtu[v*14 +: 14] <= 14'd1500;
  endtask

  task automatic apply(input logic [7:0] fn, input logic [15:0] a, input logic [31:0] d);
    if (fn == FN_PF) begin
      if (64'(a) == keel_regs_pkg::NICPF_NUM_VFS_OFFSET) begin
        if (num_vfs_bad(d[7:0])) begin
          num_vfs_err_q <= 1'b1;
        end else begin
          num_vfs_err_q <= 1'b0;
          if (d[7:0] != num_vfs_q) begin
            for (int v = 0; v < NV; v++) begin  // and reset_vf(v) (wreset)
              if (d[7:0] == 8'd0 && 8'(v) < num_vfs_q) begin
                present_q[v] <= 1'b0;
                port_en_q[v] <= 1'b0;
                cfg_err_q[v] <= 1'b0;
                err_code_q[v*4 +: 4] <= 4'd0;
                mac[v*48 +: 48] <= '0;
                rate[v*32 +: 32] <= '0;
                cnt_clear[v] <= 1'b1;
              end
              if (d[7:0] != 8'd0 && 8'(v) < d[7:0]) present_q[v] <= 1'b1;
            end
            num_vfs_q <= d[7:0];
          end
        end
      end else if (64'(a) >= keel_regs_pkg::NICVFCFG_BASE && 64'(a) < keel_regs_pkg::NICVFCFG_BASE + 64'(NV) * keel_regs_pkg::NICVFCFG_STRIDE) begin
        for (int v = 0; v < NV; v++) begin
          if (VW'((64'(a) - keel_regs_pkg::NICVFCFG_BASE) / keel_regs_pkg::NICVFCFG_STRIDE) == VW'(v)) begin
            pf_port_write(v, 8'((64'(a) - keel_regs_pkg::NICVFCFG_BASE) % keel_regs_pkg::NICVFCFG_STRIDE),
                          d);
          end
        end
      end
    end else if (fn > FN_PF && fn - FN_PF - 8'd1 < 8'(NV)) begin
      for (int v = 0; v < NV; v++) begin
        if (VW'(fn - FN_PF - 8'd1) == VW'(v)) vf_write(v, a, d[15:0]);
      end
    end
  endtask

  // NICVFCFG v, register r (v is a constant: see the module's header).
  task automatic pf_port_write(input int v, input logic [7:0] r, input logic [31:0] d);
    logic [47:0] m;
    logic [3:0]  code;
    m = mac[v*48 +: 48];
    if (64'(r) == keel_regs_pkg::NICVFCFG_CTRL_OFFSET) begin
      if (!d[0]) begin
        port_en_q[v] <= 1'b0;
        cfg_err_q[v] <= 1'b0;
        err_code_q[v*4 +: 4] <= 4'd0;
      end else if (!port_en_q[v]) begin
        code = 4'd0;
        if (!present_q[v] || removed[v]) code = 4'd5;
        else if (m[0] || m == 48'd0) code = 4'd1;
        else begin
          for (int u = 0; u < NV; u++) begin
            if (v != u && port_up[u] && mac[u*48 +: 48] == m) code = 4'd2;
          end
        end
        err_code_q[v*4 +: 4] <= code;
        cfg_err_q[v] <= code != 4'd0;
        if (code == 4'd0) begin
          port_en_q[v] <= 1'b1;
          bkt_fill[v] <= 1'b1;
        end
      end
    end else if (64'(r) == keel_regs_pkg::NICVFCFG_MAC_LO_OFFSET || 64'(r) == keel_regs_pkg::NICVFCFG_MAC_HI_OFFSET ||
                 64'(r) == keel_regs_pkg::NICVFCFG_RATE_OFFSET) begin
      if (port_en_q[v]) begin
        cfg_err_q[v] <= 1'b1;
        err_code_q[v*4 +: 4] <= 4'd6;
      end else if (64'(r) == keel_regs_pkg::NICVFCFG_RATE_OFFSET) begin
        rate[v*32 +: 32] <= d;
      end else if (64'(r) == keel_regs_pkg::NICVFCFG_MAC_LO_OFFSET) begin
        mac[v*48 +: 32] <= d;
      end else begin
        mac[v*48 + 32 +: 16] <= d[15:0];
      end
    end else if (64'(r) == keel_regs_pkg::NICVFCFG_FLR_OFFSET) begin
      // d[0] with v < NUM_VFS: reset_vf(v), done ahead of apply() (wreset).
    end
  endtask

  // NIC VF v's registers (v is a constant).
  task automatic vf_write(input int v, input logic [15:0] a, input logic [15:0] d);
    if (!present_q[v] || removed[v]) begin
      // gone: writes are ignored
    end else if (64'(a) == keel_regs_pkg::NIC_CTRL_OFFSET) begin
      if (d[0]) begin
        enabled_q[v] <= 1'b1;
      end else begin
        enabled_q[v] <= 1'b0;
        fatal_q[v] <= 1'b0;
        for (int q = 0; q < NQ; q++) stop_q(v * NQ + q);
      end
    end else if (64'(a) == keel_regs_pkg::NIC_MTU_OFFSET) begin
      if (d[15:0] < 16'(keel_regs_pkg::KEEL_NIC_MIN_MTU) || d[15:0] > 16'(keel_regs_pkg::KEEL_NIC_MAX_MTU)) begin
        mtu_err_q[v] <= 1'b1;
      end else begin
        mtu_err_q[v] <= 1'b0;
        mtu[v*14 +: 14] <= d[13:0];
      end
    end
    // NICQ registers: queue_write (wq_hit).
  endtask

  // NICQ register r of queue i (VF-major; i is a constant).
  task automatic queue_write(input int i, input logic [5:0] r, input logic [31:0] d);
    if (r < 6'h20) begin
      if (q_en[i]) qerr_q[i*4 +: 4] <= 4'd4;
      else begin
        for (int h = 0; h < 2; h++) begin  // r[2]: the half
          if (32'(r[2]) == h) begin
            case (r[4:3])
              2'd0: tx_base[i*64 + 32*h +: 32] <= d;
              2'd1: tx_cq_base[i*64 + 32*h +: 32] <= d;
              2'd2: rx_base[i*64 + 32*h +: 32] <= d;
              default: rx_cq_base[i*64 + 32*h +: 32] <= d;
            endcase
          end
        end
      end
    end else if (64'(r) == keel_regs_pkg::NICQ_CFG_OFFSET) begin
      if (q_en[i]) begin
        if (!d[31]) begin
          stop_q(i);
          cfg_q[i*32 +: 32] <= d;
        end else if ((d & ~32'h300) != (cfg_q[i*32 +: 32] & ~32'h300)) begin
          qerr_q[i*4 +: 4] <= 4'd4;
        end else begin
          cfg_q[i*32 +: 32] <= d;
        end
      end else begin
        cfg_q[i*32 +: 32] <= d;
        if (d[31]) begin
          if (d[3:0] < 4'd1 || d[3:0] > 4'd12 || d[7:4] < 4'd1 || d[7:4] > 4'd12) begin
            qerr_q[i*4 +: 4] <= 4'd1;
            cfg_q[i*32 + 31] <= 1'b0;
          end else if ((tx_base[i*64 +: 6] | tx_cq_base[i*64 +: 6] | rx_base[i*64 +: 6] |
                        rx_cq_base[i*64 +: 6]) != 6'd0) begin
            qerr_q[i*4 +: 4] <= 4'd2;
            cfg_q[i*32 + 31] <= 1'b0;
          end else begin
            stop_q(i);
            q_en[i] <= 1'b1;
            qerr_q[i*4 +: 4] <= 4'd0;
          end
        end
      end
    end else if (r >= 6'h28 && r < 6'h38) begin
      if (q_en[i]) begin
        if (d[15:0] >= wsize) qerr_q[i*4 +: 4] <= 4'd5;
        else begin
          case (r)
            6'h28: tx_tail[i*12 +: 12] <= d[11:0];
            6'h2C: rx_tail[i*12 +: 12] <= d[11:0];
            6'h30: tx_cq_head[i*12 +: 12] <= d[11:0];
            default: rx_cq_head[i*12 +: 12] <= d[11:0];
          endcase
        end
      end
    end
  endtask

  // ---------------------------------------------------------------- reads
  logic        rs_q;
  logic [63:0] rd_q;
  assign s_arready = !rs_q;
  assign s_rvalid = rs_q;
  assign s_rdata = rd_q;

  function automatic logic [31:0] rd32(input logic [7:0] fn, input logic [15:0] a);
    rd32 = 32'd0;
    if (fn == FN_PF) begin
      if (64'(a) == keel_regs_pkg::NICPF_ID_OFFSET) rd32 = 32'(keel_regs_pkg::KEEL_NIC_MAGIC);
      else if (64'(a) == keel_regs_pkg::NICPF_VERSION_OFFSET) rd32 = 32'(keel_regs_pkg::NICPF_VERSION_RESET);
      else if (64'(a) == keel_regs_pkg::NICPF_CAPS_OFFSET)
        rd32 = 32'(NV) | 32'(keel_regs_pkg::KEEL_NIC_MAX_QUEUES) << 8 | 32'h1000 | (uplink_on ? 32'h2000 : 32'd0);
      else if (64'(a) == keel_regs_pkg::NICPF_NUM_VFS_OFFSET) rd32 = 32'(num_vfs_q);
      else if (64'(a) == keel_regs_pkg::NICPF_STATUS_OFFSET)
        rd32 = {30'd0, uplink_on && uplink_up, num_vfs_err_q};
      else if (64'(a) >= keel_regs_pkg::NICPF_UPLINK_TX_FRAMES_OFFSET && 64'(a) < keel_regs_pkg::NICPF_UPLINK_TX_FRAMES_OFFSET + 48)
        rd32 = ucnt[(32'(a) - 32'(keel_regs_pkg::NICPF_UPLINK_TX_FRAMES_OFFSET)) * 8 +: 32];
      else if (64'(a) >= keel_regs_pkg::NICVFCFG_BASE && 64'(a) < keel_regs_pkg::NICVFCFG_BASE + 64'(NV) * keel_regs_pkg::NICVFCFG_STRIDE)
        rd32 = rd_port(VW'((64'(a) - keel_regs_pkg::NICVFCFG_BASE) / keel_regs_pkg::NICVFCFG_STRIDE),
                       8'((64'(a) - keel_regs_pkg::NICVFCFG_BASE) % keel_regs_pkg::NICVFCFG_STRIDE));
    end else if (fn > FN_PF && fn - FN_PF - 8'd1 < 8'(NV)) begin
      rd32 = rd_vf(VW'(fn - FN_PF - 8'd1), a);
    end
  endfunction

  function automatic logic [31:0] rd_port(input logic [VW-1:0] v, input logic [7:0] r);
    rd_port = 32'd0;
    if (64'(r) == keel_regs_pkg::NICVFCFG_CTRL_OFFSET) rd_port = {31'd0, port_en_q[v]};
    else if (64'(r) == keel_regs_pkg::NICVFCFG_STATUS_OFFSET)
      rd_port = {20'd0, err_code_q[v*4 +: 4], 4'd0, cfg_err_q[v], 1'b0,
                 present_q[v] && !removed[v], port_en_q[v]};
    else if (64'(r) == keel_regs_pkg::NICVFCFG_MAC_LO_OFFSET) rd_port = mac[v*48 +: 32];
    else if (64'(r) == keel_regs_pkg::NICVFCFG_MAC_HI_OFFSET) rd_port = {16'd0, mac[v*48 + 32 +: 16]};
    else if (64'(r) == keel_regs_pkg::NICVFCFG_RATE_OFFSET) rd_port = rate[v*32 +: 32];
    else if (r >= 8'h18 && r < 8'h78)
      rd_port = cnt[32'(v) * 768 + (32'(r) - 32'h18) * 8 +: 32];
  endfunction

  function automatic logic [31:0] rd_vf(input logic [VW-1:0] v, input logic [15:0] a);
    int          i;
    logic [5:0]  r;
    rd_vf = 32'd0;
    i = 32'(v) * NQ + 32'((64'(a) - keel_regs_pkg::NICQ_BASE) / keel_regs_pkg::NICQ_STRIDE);
    r = 6'((64'(a) - keel_regs_pkg::NICQ_BASE) % keel_regs_pkg::NICQ_STRIDE);
    if (!present_q[v] || removed[v]) rd_vf = 32'hFFFF_FFFF;
    else if (64'(a) >= keel_regs_pkg::NICQ_BASE && 64'(a) < keel_regs_pkg::NICQ_BASE + 64'(NQ) * keel_regs_pkg::NICQ_STRIDE) begin
      case (r)
        6'h00, 6'h04: rd_vf = tx_base[i*64 + 32*32'(r[2]) +: 32];
        6'h08, 6'h0C: rd_vf = tx_cq_base[i*64 + 32*32'(r[2]) +: 32];
        6'h10, 6'h14: rd_vf = rx_base[i*64 + 32*32'(r[2]) +: 32];
        6'h18, 6'h1C: rd_vf = rx_cq_base[i*64 + 32*32'(r[2]) +: 32];
        6'h20: rd_vf = cfg_q[i*32 +: 32];
        6'h24: rd_vf = {20'd0, qerr_q[i*4 +: 4], 6'd0, qerr_q[i*4 +: 4] != 4'd0, q_en[i]};
        6'h28: rd_vf = {20'd0, tx_tail[i*12 +: 12]};
        6'h2C: rd_vf = {20'd0, rx_tail[i*12 +: 12]};
        6'h30: rd_vf = {20'd0, tx_cq_head[i*12 +: 12]};
        6'h34: rd_vf = {20'd0, rx_cq_head[i*12 +: 12]};
        6'h38: rd_vf = {20'd0, tx_head[i*12 +: 12]};
        default: rd_vf = {20'd0, rx_head[i*12 +: 12]};
      endcase
    end else if (64'(a) == keel_regs_pkg::NIC_ID_OFFSET) rd_vf = 32'(keel_regs_pkg::KEEL_NIC_MAGIC);
    else if (64'(a) == keel_regs_pkg::NIC_CAPS_OFFSET)
      rd_vf = 32'(keel_regs_pkg::KEEL_NIC_MAX_QUEUES) | 32'(keel_regs_pkg::KEEL_NIC_MAX_RING_LOG2) << 8 |
              32'(keel_regs_pkg::KEEL_NIC_MAX_MTU) << 16;
    else if (64'(a) == keel_regs_pkg::NIC_CTRL_OFFSET) rd_vf = {31'd0, enabled_q[v]};
    else if (64'(a) == keel_regs_pkg::NIC_STATUS_OFFSET)
      rd_vf = {28'd0, mtu_err_q[v], fatal_q[v], port_en_q[v], enabled_q[v] && !fatal_q[v]};
    else if (64'(a) == keel_regs_pkg::NIC_MAC_LO_OFFSET) rd_vf = mac[v*48 +: 32];
    else if (64'(a) == keel_regs_pkg::NIC_MAC_HI_OFFSET) rd_vf = {16'd0, mac[v*48 + 32 +: 16]};
    else if (64'(a) == keel_regs_pkg::NIC_MTU_OFFSET) rd_vf = {18'd0, mtu[v*14 +: 14]};
  endfunction

  always_ff @(posedge clk) begin
    if (rst) begin
      rs_q <= 1'b0;
      rd_q <= '0;
    end else if (!rs_q) begin
      if (s_arvalid) begin
        rs_q <= 1'b1;
        rd_q <= {rd32(s_aruser, (s_araddr & ~16'd7) | 16'd4), rd32(s_aruser, s_araddr & ~16'd7)};
      end
    end else if (s_rready) begin
      rs_q <= 1'b0;
    end
  end

endmodule
