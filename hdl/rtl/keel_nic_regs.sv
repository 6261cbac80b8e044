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

  function automatic logic [15:0] qsize(input logic [3:0] l2);
    qsize = 16'd1 << l2;
  endfunction

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
        fatal_q[fault_vf] <= 1'b1;
        qerr_q[(32'(fault_vf) * NQ + 32'(fault_q)) * 4 +: 4] <= 4'd3;
      end
      // A restored VF comes back as after an FLR.
      for (int v = 0; v < NV; v++) begin
        if (removed_q[v] && !removed[v]) reset_vf(v);
      end
      if (wgo) apply(s_awuser, wa, wv);
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
        if (d[7:0] > 8'(NV) || (num_vfs_q != 8'd0 && d[7:0] != 8'd0 && d[7:0] != num_vfs_q)) begin
          num_vfs_err_q <= 1'b1;
        end else begin
          num_vfs_err_q <= 1'b0;
          if (d[7:0] != num_vfs_q) begin
            for (int v = 0; v < NV; v++) begin
              if (d[7:0] == 8'd0 && 8'(v) < num_vfs_q) begin
                reset_vf(v);
                present_q[v] <= 1'b0;
                port_en_q[v] <= 1'b0;
                cfg_err_q[v] <= 1'b0;
                err_code_q[v*4 +: 4] <= 4'd0;
                mac[v*48 +: 48] <= '0;
                rate[v*32 +: 32] <= '0;
                cnt_clear[v] <= 1'b1;
              end
              if (d[7:0] != 8'd0 && 8'(v) < d[7:0]) begin
                reset_vf(v);
                present_q[v] <= 1'b1;
              end
            end
            num_vfs_q <= d[7:0];
          end
        end
      end else if (64'(a) >= keel_regs_pkg::NICVFCFG_BASE && 64'(a) < keel_regs_pkg::NICVFCFG_BASE + 64'(NV) * keel_regs_pkg::NICVFCFG_STRIDE) begin
        pf_port_write(VW'((64'(a) - keel_regs_pkg::NICVFCFG_BASE) / keel_regs_pkg::NICVFCFG_STRIDE),
                      8'((64'(a) - keel_regs_pkg::NICVFCFG_BASE) % keel_regs_pkg::NICVFCFG_STRIDE), d);
      end
    end else if (fn > FN_PF && fn - FN_PF - 8'd1 < 8'(NV)) begin
      vf_write(VW'(fn - FN_PF - 8'd1), a, d);
    end
  endtask

  task automatic pf_port_write(input logic [VW-1:0] v, input logic [7:0] r, input logic [31:0] d);
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
            if (32'(v) != u && port_up[u] && mac[u*48 +: 48] == m) code = 4'd2;
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
      if (d[0] && 8'(v) < num_vfs_q) reset_vf(32'(v));
    end
  endtask

  task automatic vf_write(input logic [VW-1:0] v, input logic [15:0] a, input logic [31:0] d);
    if (!present_q[v] || removed[v]) begin
      // gone: writes are ignored
    end else if (64'(a) == keel_regs_pkg::NIC_CTRL_OFFSET) begin
      if (d[0]) begin
        enabled_q[v] <= 1'b1;
      end else begin
        enabled_q[v] <= 1'b0;
        fatal_q[v] <= 1'b0;
        for (int q = 0; q < NQ; q++) stop_q(32'(v) * NQ + q);
      end
    end else if (64'(a) == keel_regs_pkg::NIC_MTU_OFFSET) begin
      if (d[15:0] < 16'(keel_regs_pkg::KEEL_NIC_MIN_MTU) || d[15:0] > 16'(keel_regs_pkg::KEEL_NIC_MAX_MTU)) begin
        mtu_err_q[v] <= 1'b1;
      end else begin
        mtu_err_q[v] <= 1'b0;
        mtu[v*14 +: 14] <= d[13:0];
      end
    end else if (64'(a) >= keel_regs_pkg::NICQ_BASE && 64'(a) < keel_regs_pkg::NICQ_BASE + 64'(NQ) * keel_regs_pkg::NICQ_STRIDE) begin
      queue_write(32'(v) * NQ + 32'((64'(a) - keel_regs_pkg::NICQ_BASE) / keel_regs_pkg::NICQ_STRIDE),
                  6'((64'(a) - keel_regs_pkg::NICQ_BASE) % keel_regs_pkg::NICQ_STRIDE), d);
    end
  endtask

  task automatic queue_write(input int i, input logic [5:0] r, input logic [31:0] d);
    logic [3:0]  tl, rl;
    logic [15:0] size;
    tl = cfg_q[i*32 +: 4];
    rl = cfg_q[i*32 + 4 +: 4];
    if (r < 6'h20) begin
      if (q_en[i]) qerr_q[i*4 +: 4] <= 4'd4;
      else begin
        case (r[4:3])
          2'd0: tx_base[i*64 + 32*32'(r[2]) +: 32] <= d;
          2'd1: tx_cq_base[i*64 + 32*32'(r[2]) +: 32] <= d;
          2'd2: rx_base[i*64 + 32*32'(r[2]) +: 32] <= d;
          default: rx_cq_base[i*64 + 32*32'(r[2]) +: 32] <= d;
        endcase
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
      size = (r == 6'h28 || r == 6'h30) ? qsize(tl) : qsize(rl);
      if (q_en[i]) begin
        if (d[15:0] >= size) qerr_q[i*4 +: 4] <= 4'd5;
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
