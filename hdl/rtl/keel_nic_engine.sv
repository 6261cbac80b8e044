`resetall
`timescale 1ns / 1ps
`default_nettype none

// keel_nic_engine: the NIC's data path, one frame at a time, 64 bits per cycle.
//
// A scan visits every TX queue pair (VF-major) and the uplink in turn. A TX frame: its
// descriptors are read (up to NIC_MAX_SEGS), checked (bad descriptor, MTU, rate limit), its
// buffers gathered into the frame buffer, the switch decides (the rules of docs/nic.md,
// "The switch", as fpga/eswitch applies them: port down, spoof, flood, MAC table, unknown unicast to the uplink, egress MTU),
// the frame is delivered to every egress port in turn (RX: flow hash, RX descriptors, scatter,
// per-buffer completions; uplink: streamed out), then its TX completions are written. An uplink
// frame is streamed into the frame buffer and switched the same way. At the end of each scan
// round, one MSI-X message per queue and direction that completed something (and has its
// CFG interrupt bit set). Ring accesses outside the VF's DMA windows set FATAL (ERR_CODE 3).
//
// DMA: a byte-addressed read and write port of its own on the shell (m_rd_*, m_wr_*), 8 bytes
// a beat, the function number (66 + VF) with every request; a refused request answers err (the
// data beats still come, or are still taken).
//
// The per-queue, per-VF and per-descriptor state lives in flat vectors. Every write to it uses
// a constant index: the run-time queue (qsel), VF or descriptor number selects one iteration
// of a constant loop. Written through a run-time part-select instead (`x[i*64 +: 64] <= ...`),
// each write becomes a shift-and-mask of the whole vector, which yosys's `proc` cannot get
// through in reasonable time (docs/rtl-synthesis.md). Reads may use run-time indices.
module keel_nic_engine #(
  parameter int NV = 4,
  parameter int NQ = 4,
  parameter int VW = $clog2(NV)
) (
  input  wire                 clk,
  input  wire                 rst,
  // Configuration (keel_nic_regs).
  input  wire                 hold,
  output logic                eng_idle,
  input  wire  [NV*NQ-1:0]    q_en,
  input  wire  [NV*NQ*10-1:0] q_cfg,
  input  wire  [NV*NQ*64-1:0] tx_base, tx_cq_base, rx_base, rx_cq_base,
  input  wire  [NV*NQ*12-1:0] tx_tail, rx_tail, tx_cq_head, rx_cq_head,
  input  wire  [NV-1:0]       vf_run,
  input  wire  [NV-1:0]       port_up,
  input  wire  [NV*14-1:0]    mtu,
  input  wire  [NV*48-1:0]    mac,
  input  wire  [NV*NQ-1:0]    qreset,
  input  wire  [NV-1:0]       cnt_clear,
  input  wire                 uplink_on,
  output logic                fault_valid,
  output logic [VW-1:0]       fault_vf,
  output logic [1:0]          fault_q,
  output logic [NV*NQ*12-1:0] tx_head, rx_head,
  output logic [NV*12*64-1:0] cnt,
  output logic [6*64-1:0]     ucnt,
  // Rate limiter (keel_nic_bucket).
  output logic [VW-1:0]       bk_vf,
  output logic [15:0]         bk_bytes,
  input  wire                 bk_ok,
  output logic                bk_take,
  // Host DMA.
  output logic                m_rd_valid,
  input  wire                 m_rd_ready,
  output logic [63:0]         m_rd_addr,
  output logic [15:0]         m_rd_len,
  output logic [7:0]          m_rd_fn,
  input  wire                 s_rd_valid,
  input  wire  [63:0]         s_rd_data,
  input  wire                 s_rd_last,
  input  wire                 s_rd_err,
  output logic                m_wr_valid,
  input  wire                 m_wr_ready,
  output logic [63:0]         m_wr_addr,
  output logic [15:0]         m_wr_len,
  output logic [7:0]          m_wr_fn,
  output logic                m_wd_valid,
  input  wire                 m_wd_ready,
  output logic [63:0]         m_wd_data,
  output logic                m_wd_last,
  input  wire                 s_wb_valid,
  input  wire                 s_wb_err,
  // MSI-X (function 66 + vf).
  output logic                m_msix_valid,
  input  wire                 m_msix_ready,
  output logic [7:0]          m_msix_fn,
  output logic [15:0]         m_msix_vector,
  // Uplink streams (bytes: 1..8 valid bytes in the beat).
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
  input  wire                 s_upl_overflow,  // the shell dropped a frame: UPLINK_DROPS
  input  wire                 s_upl_tx_drop,   // the shell could not send one: UPLINK_TX_DROPS
  output logic                idle
);

  localparam int NQT = NV * NQ;
  localparam int SW = $clog2(NQT + 1);
  localparam int IW = $clog2(NQT);
  localparam int MAXF = 9018;
  localparam int SEGS = 32;
  // Counter indices (NICVFCFG order from TX_FRAMES).
  localparam int C_TXF = 0, C_TXB = 1, C_RXF = 2, C_RXB = 3, C_SPOOF = 4, C_BAD = 5;
  localparam int C_OVER = 6, C_DMA = 7, C_NOBUF = 8, C_THR = 9, C_QOFF = 10, C_NOROUTE = 11;
  localparam logic [2:0] ST_OK = 3'd0, ST_BAD = 3'd1, ST_OVER = 3'd2, ST_DMA = 3'd3,
                         ST_SPOOF = 3'd4;

  typedef enum logic [5:0] {
    S_IDLE, S_IRQ, S_TXD, S_TXD_CHK, S_GATHER, S_UPL, S_HDR0, S_HDR1, S_ROUTE, S_NEXT,
    S_DELIVER, S_HASH, S_RXPICK, S_RXD, S_RXD_CHK, S_RXBAD, S_SCATTER, S_RXCQE, S_UTX, S_TXCQE,
    S_RD_REQ, S_RD_BEAT, S_WR_REQ, S_WR_BEAT, S_WR_RESP
  } state_t;
  state_t st_q, ret_q;

  // ---------------------------------------------------------------- per-queue card state
  logic [NQT*12-1:0] tx_cq_tail_q, rx_cq_tail_q;
  logic [NQT-1:0]    tx_ph_q, rx_ph_q, tx_fire_q, rx_fire_q, thr_q;
  logic [NV*12*64-1:0] cnt_q;
  logic [6*64-1:0]   ucnt_q;
  assign cnt = cnt_q;
  assign ucnt = ucnt_q;

  // ---------------------------------------------------------------- frame buffer
  logic        fb_we;
  logic [13:0] fb_woff, fb_roff;
  logic [63:0] fb_wdata, fb_rdata;
  logic [3:0]  fb_wbytes;
  keel_nic_fbuf u_fbuf (
    .clk, .we(fb_we), .woff(fb_woff), .wdata(fb_wdata), .wbytes(fb_wbytes),
    .roff(fb_roff), .rdata(fb_rdata)
  );

  // ---------------------------------------------------------------- frame state
  logic [SW-1:0]      scan_q;
  logic [VW-1:0]      v_q;       // VF of the TX queue, or the receiving VF
  logic [1:0]         q_q;
  logic               from_upl_q;
  logic [5:0]         n_q;       // descriptors of the TX frame / buffers of the RX frame
  logic [SEGS*64-1:0] da_q;      // their addresses
  logic [SEGS*16-1:0] dl_q;      // their lengths
  logic [5:0]         rn_q;      // RX buffers the frame takes
  logic [SEGS*64-1:0] ra_q;      // their addresses
  logic [SEGS*16-1:0] rl_q;      // their sizes
  logic [16:0]        total_q;   // frame length (TX: sum of the descriptors)
  logic               zero_q, more_q;
  logic [2:0]         status_q;
  logic [5:0]         i_q;
  logic [13:0]        off_q;
  logic [63:0]        w0_q;
  logic [51:0]        w1_q;     // header bytes 8..14 (14: IPv4 version and IHL)
  logic [NV:0]        egress_q;
  logic [VW:0]        p_q;
  logic [31:0]        h_q;
  logic [4:0]         hpos_q;    // hash step
  logic [7:0]         proto_q;
  logic [2:0]         rxst_q;
  logic [16:0]        room_q;
  logic [1:0]         rq_q;      // RX queue chosen
  logic               ovf_q;     // uplink frame longer than the buffer
  // DMA subroutine
  logic [63:0]        dma_addr_q;
  logic [15:0]        dma_len_q;
  logic [1:0]         dma_dst_q;  // reads: 0 TX desc, 1 RX desc, 2 frame buffer
  logic               dma_src_q;  // writes: 0 completion (cqe_q), 1 frame buffer
  logic [12:0]        beat_q;
  logic               dma_err_q;
  logic [127:0]       cqe_q;
  logic [SW-1:0]      irq_q;
  logic [7:0]         fn;

  // Current queue's view: the TX queue (v_q, q_q), or on the receive side the RX queue
  // (p_q, rq_q) of the port being delivered to.
  logic        rx_side;
  logic [VW-1:0] qv;
  int          qi;
  logic [NQT-1:0] qsel;  // qi, one-hot: the per-queue state the FSM writes
  logic [3:0]  tl2, rl2;
  logic [11:0] tmask, rmask, thead, ttail, rhead, rtail;
  logic [11:0] tavail, tcq_used, ravail, rcq_free;
  logic [13:0] vmtu;
  always_comb begin
    rx_side = (st_q >= S_HASH && st_q <= S_RXCQE) ||
              (st_q >= S_RD_REQ && ret_q >= S_RXD && ret_q <= S_RXCQE);
    qv = rx_side ? p_q[VW-1:0] : v_q;
    qi = 32'(qv) * NQ + (rx_side ? 32'(rq_q) : 32'(q_q));
    for (int i = 0; i < NQT; i++) qsel[i] = qi == i;
    tl2 = q_cfg[qi*10 +: 4];
    rl2 = q_cfg[qi*10 + 4 +: 4];
    tmask = 12'((13'd1 << tl2) - 13'd1);
    rmask = 12'((13'd1 << rl2) - 13'd1);
    thead = tx_head[qi*12 +: 12];
    ttail = tx_tail[qi*12 +: 12];
    rhead = rx_head[qi*12 +: 12];
    rtail = rx_tail[qi*12 +: 12];
    tavail = (ttail - thead) & tmask;
    tcq_used = (tx_cq_tail_q[qi*12 +: 12] - tx_cq_head[qi*12 +: 12]) & tmask;
    ravail = (rtail - rhead) & rmask;
    rcq_free = rmask - ((rx_cq_tail_q[qi*12 +: 12] - rx_cq_head[qi*12 +: 12]) & rmask);
    vmtu = mtu[v_q*14 +: 14];
    fn = 8'd66 + 8'(qv);
  end

  // Work pending anywhere (for the scan and the fast-forward).
  logic [NQT-1:0] txwork;
  always_comb begin
    for (int i = 0; i < NQT; i++) begin
      txwork[i] = vf_run[i / NQ] && q_en[i] && tx_tail[i*12 +: 12] != tx_head[i*12 +: 12];
    end
  end
  assign eng_idle = st_q == S_IDLE;
  assign idle = st_q == S_IDLE && txwork == '0 && !s_upl_valid && tx_fire_q == '0 &&
                rx_fire_q == '0;

  // Switch decision of the frame in the buffer (header in w0_q/w1_q).
  logic [47:0] dst, src;
  logic [NV:0] route;
  logic [2:0]  rstat;     // TX status the route gives
  logic        noroute;
  logic [VW:0] hit;
  always_comb begin
    dst = w0_q[47:0];
    src = {w1_q[31:0], w0_q[63:48]};
    route = '0;
    rstat = ST_OK;
    noroute = 1'b0;
    hit = (VW+1)'(NV);
    for (int p = NV - 1; p >= 0; p--) begin
      if (port_up[p] && mac[p*48 +: 48] == dst) hit = (VW+1)'(p);
    end
    if (from_upl_q ? !uplink_on : !port_up[v_q]) noroute = 1'b1;
    else if (!from_upl_q && total_q > 17'(vmtu) + 17'd18) rstat = ST_OVER;
    else if (from_upl_q && (total_q < 17'd14 || total_q > 17'(MAXF))) noroute = 1'b1;
    else if (!from_upl_q && src != mac[v_q*48 +: 48]) rstat = ST_SPOOF;
    else if (dst[0]) begin
      for (int p = 0; p < NV; p++) route[p] = port_up[p] && (from_upl_q || 32'(v_q) != p);
      route[NV] = uplink_on && !from_upl_q;
    end else if (hit != (VW+1)'(NV)) begin
      if (!from_upl_q && hit == {1'b0, v_q}) noroute = 1'b1;
      else route[hit] = 1'b1;
    end else if (uplink_on && !from_upl_q) route[NV] = 1'b1;
    else noroute = 1'b1;
  end

  // Enabled queues of the receiving VF p_q, and the one the hash picks.
  logic [2:0] nlive;
  logic [1:0] pick;
  logic [31:0] hmod;
  always_comb begin
    nlive = '0;
    for (int q = 0; q < NQ; q++) nlive = nlive + 3'(q_en[32'(p_q) * NQ + q]);
    hmod = nlive == 3'd0 ? 32'd0 : h_q % 32'(nlive);
    pick = '0;
    begin
      logic [2:0] k;
      k = '0;
      for (int q = 0; q < NQ; q++) begin
        if (q_en[32'(p_q) * NQ + q]) begin
          if (32'(k) == hmod) pick = 2'(q);
          k = k + 3'd1;
        end
      end
    end
  end

  // Beat sizes.
  logic [15:0] dma_beats;
  assign dma_beats = (dma_len_q + 16'd7) >> 3;
  logic [15:0] rem_bytes;  // bytes of the current DMA beat
  always_comb begin
    rem_bytes = dma_len_q - {beat_q[12:0], 3'd0};
    if (rem_bytes > 16'd8) rem_bytes = 16'd8;
  end
  logic [15:0] chunk;      // bytes of RX buffer i_q the frame fills
  always_comb begin
    chunk = rl_q[i_q*16 +: 16];
    if (17'(chunk) > total_q - 17'(off_q)) chunk = 16'(total_q - 17'(off_q));
  end

  // ---------------------------------------------------------------- outputs
  always_comb begin
    m_rd_valid = st_q == S_RD_REQ;
    m_rd_addr = dma_addr_q;
    m_rd_len = dma_len_q;
    m_rd_fn = fn;
    m_wr_valid = st_q == S_WR_REQ;
    m_wr_addr = dma_addr_q;
    m_wr_len = dma_len_q;
    m_wr_fn = fn;
    m_wd_valid = st_q == S_WR_BEAT;
    m_wd_last = 16'(beat_q) + 16'd1 == dma_beats;
    m_wd_data = dma_src_q ? fb_rdata : (beat_q[0] ? cqe_q[127:64] : cqe_q[63:0]);
    m_upl_valid = st_q == S_UTX;
    m_upl_data = fb_rdata;
    m_upl_bytes = 17'(off_q) + 17'd8 >= total_q ? 4'(total_q - 17'(off_q)) : 4'd8;
    m_upl_last = 17'(off_q) + 17'd8 >= total_q;
    s_upl_ready = st_q == S_UPL;
    m_msix_valid = st_q == S_IRQ && irq_q < SW'(NQT) &&
                   (tx_fire_q[IW'(irq_q)] && q_cfg[32'(irq_q)*10 + 8] ||
                    rx_fire_q[IW'(irq_q)] && q_cfg[32'(irq_q)*10 + 9]);
    m_msix_fn = 8'd66 + 8'(32'(irq_q) / NQ);
    m_msix_vector = 16'(2 * (32'(irq_q) % NQ)) +
                    ((tx_fire_q[IW'(irq_q)] && q_cfg[32'(irq_q)*10 + 8]) ? 16'd0 : 16'd1);
    fb_we = 1'b0;
    fb_woff = off_q + {beat_q[10:0], 3'd0};
    fb_wdata = s_rd_data;
    fb_wbytes = 4'(rem_bytes);
    fb_roff = off_q;
    if (st_q == S_RD_BEAT && dma_dst_q == 2'd2) fb_we = s_rd_valid;
    if (st_q == S_UPL) begin
      fb_we = s_upl_valid && total_q + 17'(s_upl_bytes) <= 17'(MAXF);
      fb_woff = total_q[13:0];
      fb_wdata = s_upl_data;
      fb_wbytes = s_upl_bytes;
    end
    if (st_q == S_WR_BEAT) fb_roff = off_q + {beat_q[10:0], 3'd0};
    if (st_q == S_HDR1) fb_roff = 14'd8;
    if (st_q == S_HDR0) fb_roff = 14'd0;
    if (st_q == S_HASH) fb_roff = hash_pos();
    bk_vf = v_q;
    bk_bytes = 16'(total_q);
    bk_take = st_q == S_TXD_CHK && !zero_q && !more_q && total_q >= 17'd14 &&
              total_q <= 17'(vmtu) + 17'd18 && (12'(tmask) - tcq_used >= 12'(n_q)) && bk_ok;
  end

  // Byte the hash mixes at step hpos_q: IPv4 protocol (23), addresses (26..33), ports (14 +
  // IHL * 4 ..+3); else the two MACs (0..11).
  function automatic logic [13:0] hash_pos();
    logic [13:0] ihl;
    ihl = 14'({w1_q[51:48], 2'b00});
    if (ipv4()) begin
      if (hpos_q == 5'd0) hash_pos = 14'd23;
      else if (hpos_q <= 5'd8) hash_pos = 14'd25 + 14'(hpos_q);
      else hash_pos = 14'd14 + ihl + 14'(hpos_q) - 14'd9;
    end else begin
      hash_pos = 14'(hpos_q);
    end
  endfunction
  function automatic logic ipv4();
    ipv4 = total_q >= 17'd34 && w1_q[39:32] == 8'h08 && w1_q[47:40] == 8'h00;
  endfunction
  function automatic logic [4:0] hash_steps();
    logic [16:0] ihl;
    ihl = 17'({w1_q[51:48], 2'b00});
    if (!ipv4()) hash_steps = 5'd12;
    else if ((proto_q == 8'd6 || proto_q == 8'd17) && total_q >= 17'd18 + ihl) hash_steps = 5'd13;
    else hash_steps = 5'd9;
  endfunction

  // ---------------------------------------------------------------- the FSM
  // Counter c (a constant) of VF v.
  task automatic count(input int v, input int c, input logic [63:0] by);
    for (int u = 0; u < NV; u++) begin
      if (v == u) cnt_q[(u * 12 + c) * 64 +: 64] <= cnt_q[(u * 12 + c) * 64 +: 64] + by;
    end
  endtask
  // A ring access failed: FATAL on that VF. A TX ring stops the frame; an RX ring only this
  // delivery (the frame goes on to the other ports and completes).
  task automatic ring_fault(input logic tx);
    fault_valid <= 1'b1;
    fault_vf <= tx ? v_q : p_q[VW-1:0];
    fault_q <= tx ? q_q : rq_q;
    if (tx) st_q <= S_IDLE;
    else begin
      p_q <= p_q + 1'b1;
      st_q <= S_NEXT;
    end
  endtask
  task automatic rd(input logic [63:0] a, input logic [15:0] l, input logic [1:0] to,
                    input state_t ret);
    dma_addr_q <= a; dma_len_q <= l; dma_dst_q <= to; ret_q <= ret; beat_q <= '0;
    dma_err_q <= 1'b0;
    st_q <= S_RD_REQ;
  endtask
  task automatic wr(input logic [63:0] a, input logic [15:0] l, input logic from_fb,
                    input state_t ret);
    dma_addr_q <= a; dma_len_q <= l; dma_src_q <= from_fb; ret_q <= ret; beat_q <= '0;
    st_q <= S_WR_REQ;
  endtask
  // A completion into TX (tx=1) or RX ring of queue qi.
  task automatic cqe(input logic tx, input logic [31:0] len, input logic [31:0] frame,
                     input logic [11:0] index, input logic [2:0] status, input logic more,
                     input state_t ret);
    logic [11:0] tail;
    tail = tx ? tx_cq_tail_q[qi*12 +: 12] : rx_cq_tail_q[qi*12 +: 12];
    cqe_q <= {6'd0, more, tx ? tx_ph_q[qi] : rx_ph_q[qi], 5'd0, status, 4'd0, index, 32'd0,
              frame, len};
    for (int i = 0; i < NQT; i++) begin
      if (qsel[i] && tx) begin
        tx_cq_tail_q[i*12 +: 12] <= (tail + 12'd1) & tmask;
        if (((tail + 12'd1) & tmask) == 12'd0) tx_ph_q[i] <= !tx_ph_q[i];
        tx_fire_q[i] <= 1'b1;
      end else if (qsel[i]) begin
        rx_cq_tail_q[i*12 +: 12] <= (tail + 12'd1) & rmask;
        if (((tail + 12'd1) & rmask) == 12'd0) rx_ph_q[i] <= !rx_ph_q[i];
        rx_fire_q[i] <= 1'b1;
      end
    end
    wr((tx ? tx_cq_base[qi*64 +: 64] : rx_cq_base[qi*64 +: 64]) + {48'd0, tail, 4'd0}, 16'd16,
       1'b0, ret);
  endtask
  task automatic next_port(input logic [VW:0] from);
    p_q <= from;
    st_q <= S_NEXT;
  endtask

  always_ff @(posedge clk) begin
    fault_valid <= 1'b0;
    if (rst) begin
      st_q <= S_IDLE; ret_q <= S_IDLE; scan_q <= '0; irq_q <= '0;
      tx_head <= '0; rx_head <= '0; tx_cq_tail_q <= '0; rx_cq_tail_q <= '0;
      tx_ph_q <= '1; rx_ph_q <= '1; tx_fire_q <= '0; rx_fire_q <= '0; thr_q <= '0;
      cnt_q <= '0; ucnt_q <= '0;
      v_q <= '0; q_q <= '0; from_upl_q <= 1'b0; n_q <= '0; da_q <= '0; dl_q <= '0;
      total_q <= '0; zero_q <= 1'b0; more_q <= 1'b0; status_q <= '0; i_q <= '0; off_q <= '0;
      rn_q <= '0; ra_q <= '0; rl_q <= '0;
      w0_q <= '0; w1_q <= '0; egress_q <= '0; p_q <= '0; h_q <= '0; hpos_q <= '0;
      proto_q <= '0; rxst_q <= '0; room_q <= '0; rq_q <= '0; ovf_q <= 1'b0;
      dma_addr_q <= '0; dma_len_q <= '0; dma_dst_q <= '0; dma_src_q <= 1'b0; beat_q <= '0;
      dma_err_q <= 1'b0; cqe_q <= '0; fault_vf <= '0; fault_q <= '0;
    end else begin
      case (st_q)
        S_IDLE: if (!hold) begin
          if (scan_q == SW'(NQT)) begin
            scan_q <= '0;
            if (s_upl_valid) begin
              from_upl_q <= 1'b1;
              total_q <= '0;
              ovf_q <= 1'b0;
              st_q <= S_UPL;
            end else begin
              irq_q <= '0;
              st_q <= S_IRQ;
            end
          end else begin
            scan_q <= scan_q + SW'(1);
            if (txwork[IW'(scan_q)]) begin
              v_q <= VW'(32'(scan_q) / NQ);
              q_q <= 2'(32'(scan_q) % NQ);
              from_upl_q <= 1'b0;
              n_q <= '0; total_q <= '0; zero_q <= 1'b0; more_q <= 1'b1;
              st_q <= S_TXD;
            end
          end
        end
        S_IRQ: begin
          if (irq_q == SW'(NQT)) st_q <= S_IDLE;
          else begin
            for (int i = 0; i < NQT; i++) begin
              if (IW'(irq_q) == IW'(i)) begin
                if (!m_msix_valid) begin
                  tx_fire_q[i] <= 1'b0;
                  rx_fire_q[i] <= 1'b0;
                end else if (m_msix_ready) begin
                  if (m_msix_vector[0]) rx_fire_q[i] <= 1'b0;
                  else tx_fire_q[i] <= 1'b0;
                end
              end
            end
            if (!m_msix_valid) irq_q <= irq_q + SW'(1);
          end
        end
        // ---- TX: descriptors
        S_TXD: begin
          if (32'(n_q) == 32'(tavail)) st_q <= S_IDLE;  // the rest is not posted yet
          else rd(tx_base[qi*64 +: 64] + {48'd0, (thead + 12'(n_q)) & tmask, 4'd0}, 16'd16,
                  2'd0, S_TXD_CHK);
        end
        S_TXD_CHK: begin
          if (more_q && n_q != 6'(SEGS)) st_q <= S_TXD;
          else if (12'(tmask) - tcq_used < 12'(n_q)) st_q <= S_IDLE;  // completions full
          else if (more_q || zero_q || total_q < 17'd14) begin
            status_q <= ST_BAD; count(32'(v_q), C_BAD, 64'd1); st_q <= S_TXCQE; i_q <= '0;
          end else if (total_q > 17'(vmtu) + 17'd18) begin
            status_q <= ST_OVER; count(32'(v_q), C_OVER, 64'd1); st_q <= S_TXCQE; i_q <= '0;
          end else if (!bk_ok) begin
            if (!thr_q[qi]) count(32'(v_q), C_THR, 64'd1);
            for (int i = 0; i < NQT; i++) if (qsel[i]) thr_q[i] <= 1'b1;
            st_q <= S_IDLE;
          end else begin
            for (int i = 0; i < NQT; i++) if (qsel[i]) thr_q[i] <= 1'b0;
            status_q <= ST_OK;
            i_q <= '0; off_q <= '0;
            st_q <= S_GATHER;
          end
        end
        S_GATHER: begin
          if (i_q == n_q || status_q != ST_OK) begin
            if (status_q != ST_OK) begin
              count(32'(v_q), C_DMA, 64'd1); i_q <= '0; st_q <= S_TXCQE;
            end else st_q <= S_HDR0;
          end else begin
            rd(da_q[i_q*64 +: 64], dl_q[i_q*16 +: 16], 2'd2, S_GATHER);
          end
        end
        // ---- uplink in
        S_UPL: if (s_upl_valid) begin
          if (total_q + 17'(s_upl_bytes) > 17'(MAXF)) ovf_q <= 1'b1;
          total_q <= total_q + 17'(s_upl_bytes) > 17'h1FFF0 ? 17'h1FFF0 :
                     total_q + 17'(s_upl_bytes);
          if (s_upl_last) begin
            ucnt_q[2*64 +: 64] <= ucnt_q[2*64 +: 64] + 64'd1;
            ucnt_q[3*64 +: 64] <= ucnt_q[3*64 +: 64] + 64'(total_q) + 64'(s_upl_bytes);
            st_q <= S_HDR0;
          end
        end
        // ---- the switch
        S_HDR0: begin w0_q <= fb_rdata; st_q <= S_HDR1; end
        S_HDR1: begin w1_q <= fb_rdata[51:0]; st_q <= S_ROUTE; end
        S_ROUTE: begin
          if (from_upl_q && (ovf_q || noroute)) begin
            ucnt_q[4*64 +: 64] <= ucnt_q[4*64 +: 64] + 64'd1;
            st_q <= S_IDLE;
          end else if (!from_upl_q && rstat == ST_SPOOF) begin
            status_q <= ST_SPOOF; count(32'(v_q), C_SPOOF, 64'd1); i_q <= '0; st_q <= S_TXCQE;
          end else begin
            logic [NV:0] eg;
            eg = route;
            for (int p = 0; p < NV; p++) begin
              if (route[p] && total_q > 17'(mtu[p*14 +: 14]) + 17'd18) begin
                eg[p] = 1'b0;
                count(p, C_OVER, 64'd1);
              end
            end
            egress_q <= noroute ? '0 : eg;
            if (!from_upl_q) begin
              count(32'(v_q), C_TXF, 64'd1);
              count(32'(v_q), C_TXB, 64'(total_q));
              if (noroute) count(32'(v_q), C_NOROUTE, 64'd1);
            end
            next_port('0);
          end
        end
        S_NEXT: begin
          if (32'(p_q) > NV) begin
            i_q <= '0;
            st_q <= from_upl_q ? S_IDLE : S_TXCQE;
          end else if (egress_q[p_q]) st_q <= S_DELIVER;
          else p_q <= p_q + 1'b1;
        end
        S_DELIVER: begin
          off_q <= '0;
          if (p_q == (VW+1)'(NV)) st_q <= S_UTX;
          else if (!vf_run[p_q[VW-1:0]] || nlive == 3'd0) begin
            count(32'(p_q), C_QOFF, 64'd1);
            next_port(p_q + 1'b1);
          end else begin
            h_q <= 32'd2166136261;
            hpos_q <= '0;
            st_q <= nlive == 3'd1 ? S_RXPICK : S_HASH;
          end
        end
        S_HASH: begin
          if (hpos_q == hash_steps()) st_q <= S_RXPICK;
          else begin
            if (hpos_q == 5'd0) proto_q <= fb_rdata[7:0];
            h_q <= (h_q ^ {24'd0, fb_rdata[7:0]}) * 32'd16777619;
            hpos_q <= hpos_q + 5'd1;
          end
        end
        S_RXPICK: begin
          rq_q <= pick;
          i_q <= '0; room_q <= '0;
          st_q <= S_RXD;
        end
        // ---- RX: buffers
        S_RXD: begin
          if (room_q >= total_q) begin
            rn_q <= i_q;
            i_q <= '0; off_q <= '0; rxst_q <= ST_OK; st_q <= S_SCATTER;
          end else if (12'(i_q) == ravail || 12'(i_q) == rcq_free || i_q == 6'(SEGS)) begin
            count(32'(p_q), C_NOBUF, 64'd1);
            next_port(p_q + 1'b1);
          end else begin
            rd(rx_base[qi*64 +: 64] + {48'd0, (rhead + 12'(i_q)) & rmask, 4'd0}, 16'd16, 2'd1,
               S_RXD_CHK);
          end
        end
        S_RXD_CHK: begin
          if (rl_q[i_q*16 +: 16] == 16'd0) begin
            count(32'(p_q), C_BAD, 64'd1);
            rn_q <= i_q + 6'd1;
            i_q <= '0;
            st_q <= S_RXBAD;
          end else begin
            room_q <= room_q + 17'(rl_q[i_q*16 +: 16]);
            i_q <= i_q + 6'd1;
            st_q <= S_RXD;
          end
        end
        S_RXBAD: begin
          if (i_q == rn_q) begin
            for (int i = 0; i < NQT; i++) begin
              if (qsel[i]) rx_head[i*12 +: 12] <= (rhead + 12'(rn_q)) & rmask;
            end
            next_port(p_q + 1'b1);
          end else begin
            i_q <= i_q + 6'd1;
            cqe(1'b0, 32'd0, 32'd0, (rhead + 12'(i_q)) & rmask, ST_BAD, 1'b0, S_RXBAD);
          end
        end
        S_SCATTER: begin
          if (17'(off_q) >= total_q || rxst_q != ST_OK) begin
            i_q <= '0; off_q <= '0;  // every buffer taken completes, even after a fault
            st_q <= S_RXCQE;
          end else begin
            wr(ra_q[i_q*64 +: 64], chunk, 1'b1, S_SCATTER);
          end
        end
        S_RXCQE: begin
          if (i_q == rn_q) begin
            for (int i = 0; i < NQT; i++) begin
              if (qsel[i]) rx_head[i*12 +: 12] <= (rhead + 12'(rn_q)) & rmask;
            end
            if (rxst_q == ST_OK) begin
              count(32'(p_q), C_RXF, 64'd1);
              count(32'(p_q), C_RXB, 64'(total_q));
            end else count(32'(p_q), C_DMA, 64'd1);
            next_port(p_q + 1'b1);
          end else begin
            i_q <= i_q + 6'd1;
            off_q <= off_q + 14'(chunk);
            cqe(1'b0, rxst_q == ST_OK ? 32'(chunk) : 32'd0, 32'(total_q),
                (rhead + 12'(i_q)) & rmask, rxst_q, i_q + 6'd1 != rn_q, S_RXCQE);
          end
        end
        // ---- uplink out
        S_UTX: if (m_upl_ready) begin
          off_q <= off_q + 14'd8;
          if (m_upl_last) begin
            ucnt_q[0 +: 64] <= ucnt_q[0 +: 64] + 64'd1;
            ucnt_q[64 +: 64] <= ucnt_q[64 +: 64] + 64'(total_q);
            next_port(p_q + 1'b1);
          end
        end
        // ---- TX completions
        S_TXCQE: begin
          if (from_upl_q) st_q <= S_IDLE;
          else if (i_q == n_q) begin
            for (int i = 0; i < NQT; i++) begin
              if (qsel[i]) tx_head[i*12 +: 12] <= (thead + 12'(n_q)) & tmask;
            end
            st_q <= S_IDLE;
          end else begin
            i_q <= i_q + 6'd1;
            cqe(1'b1, 32'(dl_q[i_q*16 +: 16]), 32'd0, (thead + 12'(i_q)) & tmask, status_q,
                1'b0, S_TXCQE);
          end
        end
        // ---- DMA subroutines
        S_RD_REQ: if (m_rd_ready) st_q <= S_RD_BEAT;
        S_RD_BEAT: if (s_rd_valid) begin
          beat_q <= beat_q + 13'd1;
          if (s_rd_err) dma_err_q <= 1'b1;
          for (int k = 0; k < SEGS; k++) begin  // descriptor k: RX buffer i_q, TX n_q
            if (dma_dst_q == 2'd1 && i_q == 6'(k)) begin
              if (beat_q == 13'd0) ra_q[k*64 +: 64] <= s_rd_data;
              if (beat_q == 13'd1) rl_q[k*16 +: 16] <= s_rd_data[15:0];
            end
            if (dma_dst_q == 2'd0 && n_q == 6'(k)) begin
              if (beat_q == 13'd0) da_q[k*64 +: 64] <= s_rd_data;
              if (beat_q == 13'd1) dl_q[k*16 +: 16] <= s_rd_data[15:0];
            end
          end
          if (dma_dst_q == 2'd0 && beat_q == 13'd1) begin
            n_q <= n_q + 6'd1;
            total_q <= total_q + 17'(s_rd_data[15:0]);
            if (s_rd_data[15:0] == 16'd0) zero_q <= 1'b1;
            more_q <= s_rd_data[16];
          end
          if (s_rd_last) begin
            if (dma_dst_q == 2'd2) begin
              off_q <= off_q + 14'(dma_len_q);
              i_q <= i_q + 6'd1;
              if (s_rd_err || dma_err_q) status_q <= ST_DMA;
              st_q <= ret_q;
            end else if (s_rd_err || dma_err_q) begin
              ring_fault(dma_dst_q == 2'd0);
            end else st_q <= ret_q;
          end
        end
        S_WR_REQ: if (m_wr_ready) st_q <= S_WR_BEAT;
        S_WR_BEAT: if (m_wd_ready) begin
          beat_q <= beat_q + 13'd1;
          if (m_wd_last) st_q <= S_WR_RESP;
        end
        S_WR_RESP: if (s_wb_valid) begin
          if (s_wb_err && !dma_src_q) begin
            ring_fault(ret_q == S_TXCQE);
          end else begin
            if (dma_src_q) begin
              if (s_wb_err) rxst_q <= ST_DMA;
              off_q <= off_q + 14'(dma_len_q);
              i_q <= i_q + 6'd1;
            end
            st_q <= ret_q;
          end
        end
        default: st_q <= S_IDLE;
      endcase
      // Queues stopped by the registers: their card state restarts.
      for (int i = 0; i < NQT; i++) begin
        if (qreset[i]) begin
          tx_head[i*12 +: 12] <= '0; rx_head[i*12 +: 12] <= '0;
          tx_cq_tail_q[i*12 +: 12] <= '0; rx_cq_tail_q[i*12 +: 12] <= '0;
          tx_ph_q[i] <= 1'b1; rx_ph_q[i] <= 1'b1;
          tx_fire_q[i] <= 1'b0; rx_fire_q[i] <= 1'b0; thr_q[i] <= 1'b0;
        end
      end
      for (int v = 0; v < NV; v++) begin
        if (cnt_clear[v]) cnt_q[v*768 +: 768] <= '0;
      end
      if (s_upl_overflow) ucnt_q[4*64 +: 64] <= ucnt_q[4*64 +: 64] + 64'd1;
      if (s_upl_tx_drop) ucnt_q[5*64 +: 64] <= ucnt_q[5*64 +: 64] + 64'd1;
    end
  end

endmodule
