`resetall
`timescale 1ns / 1ps
`default_nettype none

// PRP walk of one command (NVMe 1.4 section 4.3), in the reference model's order: PRP1, then
// PRP2 as a data pointer or as a PRP list (lists read from host memory, chained lists followed),
// every entry stored in the job's segment RAM; every list is read and checked before any data
// region is, so alignment errors win over unmapped data. Then every data region (PRP1 and each
// segment) is checked on the address-translation port.
//
// keel_frontend starts a walk on the cycle it decodes a transfer command (the command's PRP1,
// PRP2, byte count and page size are its record registers from the next cycle on, stable while
// the walk runs) and pushes the job record in the cycle `done` is high. A failed walk reports
// the status the record must carry instead of the decoder's.
module keel_prp_walker #(
  // Width of a segment index (MDTS: at most 2^SW segments after PRP1).
  parameter int SW = 5
) (
  input  wire                clk,
  input  wire                rst,

  // The decoder is looking at a new command: no segments stored yet.
  input  wire                clr,
  // Walk the command whose fields follow (from the next cycle on).
  input  wire                start,
  input  wire  [63:0]        prp1,
  input  wire  [63:0]        prp2,
  input  wire  [31:0]        bytes,
  input  wire  [2:0]         mps,          // host page 4 KiB << mps

  // Walk finished (one cycle); err: the command fails with err_status and moves nothing.
  output logic               busy,
  output logic               done,
  output logic               err,
  output logic [14:0]        err_status,
  // Segments stored after PRP1.
  output logic [SW:0]        nseg,

  // The job's segment RAM.
  output logic               seg_wr_valid,
  output logic [SW-1:0]      seg_wr_idx,
  output logic [63:0]        seg_wr_data,
  output logic [SW-1:0]      seg_rd_idx,
  output logic               seg_rd_en,
  input  wire  [63:0]        seg_rd_data,

  // Host reads of PRP lists (the function number is the front end's).
  output logic               m_ar_valid,
  input  wire                m_ar_ready,
  output logic [63:0]        m_ar_addr,
  output logic [7:0]         m_ar_len,
  input  wire                s_r_valid,
  output logic               s_r_ready,
  input  wire  [511:0]       s_r_data,
  input  wire  [1:0]         s_r_resp,

  // Address translation checks.
  output logic               m_ats_valid,
  input  wire                m_ats_ready,
  output logic [63:0]        m_ats_addr,
  output logic [31:0]        m_ats_len,
  input  wire                s_ats_resp_valid,
  input  wire                s_ats_resp_ok,

  // A list read or a translation check was refused (one cycle).
  output logic               fault_valid
);

  if (SW < 1 || SW > 8) begin : g_bad_sw
    $fatal(1, "keel_prp_walker: SW must be 1..8");
  end

  typedef enum logic [3:0] {
    W_IDLE, W_PRP0, W_LCHK, W_LCHK_W, W_LAR, W_LR, W_CHK, W_CHK_W, W_DONE
  } state_t;
  state_t st_q;

  logic [31:0]    first_q, rem_q, crem_q;
  logic [SW:0]    nseg_q;
  logic [63:0]    list_q, laddr_q;
  logic [13:0]    entries_q, ent_i_q, lleft_q, cleft_q, chunk_q;
  logic           chained_q, perr_q, lerr_q;
  logic [SW+1:0]  ci_q;                 // segment being checked (0: PRP1)
  logic           err_q;
  logic [14:0]    err_status_q;

  // ---------------------------------------------------------------- helpers
  logic [31:0] p_size, p_mask, p_off, p_first, p_slots, p_pages, p_seg_len;
  logic [13:0] p_chunk;
  logic [63:0] p_entry;
  logic [16:0] p_span;
  logic        p_data_entry;
  always_comb begin
    p_size = 32'd4096 << mps;
    p_mask = p_size - 32'd1;
    p_off = prp1[31:0] & p_mask;
    p_first = (bytes < p_size - p_off) ? bytes : p_size - p_off;
    p_slots = (p_size - (list_q[31:0] & p_mask)) >> 3;
    p_pages = (rem_q + p_mask) >> (5'd12 + {2'd0, mps});
    p_chunk = lleft_q;
    if ({2'd0, lleft_q} > ((16'd4096 - {4'd0, laddr_q[11:0]}) >> 3)) begin
      p_chunk = 14'((16'd4096 - {4'd0, laddr_q[11:0]}) >> 3);
    end
    p_entry = s_r_data[{laddr_q[5:3], 6'd0} +: 64];
    p_seg_len = crem_q < p_size ? crem_q : p_size;
    p_span = {11'd0, laddr_q[5:0]} + {p_chunk, 3'd0} + 17'd63;
    p_data_entry = {2'd0, ent_i_q} < {2'd0, entries_q} - (chained_q ? 16'd1 : 16'd0);
  end

  always_comb begin
    busy = st_q != W_IDLE;
    done = st_q == W_DONE;
    err = err_q;
    err_status = err_status_q;
    nseg = nseg_q;
    seg_rd_idx = SW'(ci_q - 1'b1);
    seg_rd_en = st_q == W_CHK;
    // A list beat is taken once its last entry is processed.
    s_r_ready = st_q == W_LR && !m_ar_valid && (laddr_q[5:3] == 3'd7 || cleft_q == 14'd1);
  end

  logic unused_ok;
  always_comb unused_ok = ^{p_span[16:14], p_span[5:0], prp2[63:32]};

  always_ff @(posedge clk) begin
    seg_wr_valid <= 1'b0;
    fault_valid <= 1'b0;
    if (clr) nseg_q <= '0;
    if (rst) begin
      st_q <= W_IDLE;
      m_ar_valid <= 1'b0;
      m_ats_valid <= 1'b0;
    end else begin
      case (st_q)
        W_IDLE: if (start) begin
          err_q <= 1'b0;
          st_q <= W_PRP0;
        end

        W_PRP0: begin
          logic [31:0] rem;
          rem = bytes - p_first;
          first_q <= p_first;
          rem_q <= rem;
          crem_q <= rem;
          ci_q <= '0;
          st_q <= W_CHK;
          if (prp1[1:0] != 2'd0) begin
            err_q <= 1'b1;
            err_status_q <= keel_pkg::SC_PRP_OFFSET_INVALID | keel_pkg::SC_DNR;
            st_q <= W_DONE;
          end else if (rem == 32'd0) begin
            st_q <= W_CHK;
          end else if (rem <= p_size) begin
            if ((prp2[31:0] & p_mask) != 32'd0) begin
              err_q <= 1'b1;
              err_status_q <= keel_pkg::SC_PRP_OFFSET_INVALID | keel_pkg::SC_DNR;
              st_q <= W_DONE;
            end else begin
              seg_wr_valid <= 1'b1;
              seg_wr_idx <= '0;
              seg_wr_data <= prp2;
              nseg_q <= (SW+1)'(1);
              rem_q <= 32'd0;
            end
          end else if (prp2[2:0] != 3'd0) begin
            err_q <= 1'b1;
            err_status_q <= keel_pkg::SC_PRP_OFFSET_INVALID | keel_pkg::SC_DNR;
            st_q <= W_DONE;
          end else begin
            list_q <= prp2;
            st_q <= W_LCHK;
          end
        end
        W_LCHK: begin
          logic [31:0] entries;
          entries = p_pages > p_slots ? p_slots : p_pages;
          chained_q <= p_pages > p_slots;
          entries_q <= 14'(entries);
          ent_i_q <= '0;
          lleft_q <= 14'(entries);
          laddr_q <= list_q;
          perr_q <= 1'b0;
          lerr_q <= 1'b0;
          m_ats_valid <= 1'b1;
          m_ats_addr <= list_q;
          m_ats_len <= entries << 3;
          st_q <= W_LCHK_W;
        end
        W_LCHK_W: begin
          if (m_ats_ready) m_ats_valid <= 1'b0;
          if (s_ats_resp_valid) begin
            if (!s_ats_resp_ok) begin
              fault_valid <= 1'b1;
              err_q <= 1'b1;
              err_status_q <= keel_pkg::SC_DATA_XFER_ERROR;
              st_q <= W_DONE;
            end else begin
              st_q <= W_LAR;
            end
          end
        end
        W_LAR: begin
          chunk_q <= p_chunk;
          cleft_q <= p_chunk;
          m_ar_valid <= 1'b1;
          m_ar_addr <= {laddr_q[63:6], 6'd0};
          m_ar_len <= p_span[13:6] - 8'd1;
          st_q <= W_LR;
        end
        W_LR: begin
          if (m_ar_valid && m_ar_ready) m_ar_valid <= 1'b0;
          if (s_r_valid && !m_ar_valid) begin
            if (s_r_resp != keel_pkg::AXI_RESP_OKAY) lerr_q <= 1'b1;
            if (p_data_entry) begin
              if ((p_entry[31:0] & p_mask) != 32'd0) begin
                perr_q <= 1'b1;
              end else if (!perr_q) begin
                seg_wr_valid <= 1'b1;
                seg_wr_idx <= SW'(nseg_q);
                seg_wr_data <= p_entry;
                nseg_q <= nseg_q + 1'b1;
                rem_q <= rem_q > p_size ? rem_q - p_size : 32'd0;
              end
            end
            laddr_q <= laddr_q + 64'd8;
            ent_i_q <= ent_i_q + 14'd1;
            cleft_q <= cleft_q - 14'd1;
            if (cleft_q == 14'd1) begin
              // End of this read; more of the list page, or the page is done.
              st_q <= W_LAR;
              lleft_q <= lleft_q - chunk_q;
              if (lleft_q == chunk_q) begin
                st_q <= W_CHK;
                if (lerr_q || s_r_resp != keel_pkg::AXI_RESP_OKAY) begin
                  fault_valid <= 1'b1;
                  err_q <= 1'b1;
                  err_status_q <= keel_pkg::SC_DATA_XFER_ERROR;
                  st_q <= W_DONE;
                end else if (perr_q || (p_data_entry && (p_entry[31:0] & p_mask) != 32'd0)) begin
                  err_q <= 1'b1;
                  err_status_q <= keel_pkg::SC_PRP_OFFSET_INVALID | keel_pkg::SC_DNR;
                  st_q <= W_DONE;
                end else if (chained_q) begin
                  list_q <= p_entry;
                  if (p_entry[2:0] != 3'd0) begin
                    err_q <= 1'b1;
                    err_status_q <= keel_pkg::SC_PRP_OFFSET_INVALID | keel_pkg::SC_DNR;
                    st_q <= W_DONE;
                  end else begin
                    st_q <= W_LCHK;
                  end
                end
              end
            end
          end
        end
        W_CHK: begin
          // Segment ci_q: 0 is PRP1 (first_q bytes), n >= 1 is segment RAM entry n - 1.
          if ({1'b0, ci_q} > {2'b0, nseg_q}) begin
            st_q <= W_DONE;
          end else begin
            m_ats_valid <= 1'b1;
            if (ci_q == '0) begin
              m_ats_addr <= prp1;
              m_ats_len <= first_q;
            end else begin
              m_ats_addr <= seg_rd_data;
              m_ats_len <= p_seg_len;
              crem_q <= crem_q - p_seg_len;
            end
            st_q <= W_CHK_W;
          end
        end
        W_CHK_W: begin
          if (m_ats_ready) m_ats_valid <= 1'b0;
          if (s_ats_resp_valid) begin
            if (!s_ats_resp_ok) begin
              fault_valid <= 1'b1;
              err_q <= 1'b1;
              err_status_q <= keel_pkg::SC_DATA_XFER_ERROR;
              st_q <= W_DONE;
            end else begin
              ci_q <= ci_q + 1'b1;
              st_q <= W_CHK;
            end
          end
        end

        // keel_frontend pushes the record this cycle.
        W_DONE: st_q <= W_IDLE;
        default: st_q <= W_IDLE;
      endcase
    end
  end

endmodule
