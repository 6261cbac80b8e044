`resetall
`timescale 1ns / 1ps
`default_nettype none

// SQE fetch of keel_frontend: reads a batch of up to FETCH_MAX consecutive SQEs (one 64-byte
// beat each) from host memory in one burst and holds them for the decoder.
//
// keel_frontend starts a fetch in the cycle it takes the scheduler's pick and waits for
// `done`, the cycle the last beat arrives (combinational, so the decoder starts on the next
// cycle); `err` then says a beat came back refused, which the front end treats as controller
// fatal status (the controller cannot fetch its own queue). The SQEs stay readable until the
// next fetch starts.
module keel_sqe_fetch #(
  // Largest number of SQEs fetched in one host read (power of two, <= 8).
  parameter int FETCH_MAX = 4,
  // Width of a batch size, 0..FETCH_MAX (derived).
  parameter int FW = $clog2(FETCH_MAX) + 1,
  // Width of an SQE index in the batch (derived).
  parameter int FI = (FETCH_MAX > 1) ? $clog2(FETCH_MAX) : 1
) (
  input  wire           clk,
  input  wire           rst,

  // Fetch `beats` SQEs from `addr` (ignored while busy).
  input  wire           start,
  input  wire  [63:0]   addr,
  input  wire  [7:0]    len,          // beats - 1
  output logic          done,
  output logic          err,

  // The batch.
  input  wire  [FI-1:0] idx,
  output logic [511:0]  sqe,

  // Host reads (the function number is the front end's).
  output logic          m_ar_valid,
  input  wire           m_ar_ready,
  output logic [63:0]   m_ar_addr,
  output logic [7:0]    m_ar_len,
  input  wire           s_r_valid,
  output logic          s_r_ready,
  input  wire  [511:0]  s_r_data,
  input  wire  [1:0]    s_r_resp,
  input  wire           s_r_last,

  // The fetch was refused (one cycle, the cycle after done).
  output logic          fault_valid
);

  if (FETCH_MAX < 1 || FETCH_MAX > 8 || (FETCH_MAX & (FETCH_MAX - 1)) != 0) begin : g_bad_fetch
    $fatal(1, "keel_sqe_fetch: FETCH_MAX must be 1, 2, 4 or 8");
  end

  typedef enum logic [1:0] {F_IDLE, F_AR, F_R} state_t;
  state_t st_q;

  logic [FW-1:0]  rcnt_q;               // SQE beats received
  logic           rerr_q;
  logic [511:0]   sqe_q [FETCH_MAX];

  always_comb begin
    sqe = sqe_q[idx];
    // SQE beats are taken as they come.
    s_r_ready = st_q == F_R;
    done = st_q == F_R && s_r_valid && s_r_last;
    err = rerr_q || s_r_resp != keel_pkg::AXI_RESP_OKAY;
  end

  always_ff @(posedge clk) begin
    fault_valid <= 1'b0;
    if (rst) begin
      st_q <= F_IDLE;
      m_ar_valid <= 1'b0;
    end else begin
      case (st_q)
        F_IDLE: if (start) begin
          m_ar_valid <= 1'b1;
          m_ar_addr <= addr;
          m_ar_len <= len;
          rcnt_q <= '0;
          rerr_q <= 1'b0;
          st_q <= F_AR;
        end
        F_AR: if (m_ar_ready) begin
          m_ar_valid <= 1'b0;
          st_q <= F_R;
        end
        F_R: if (s_r_valid) begin
          sqe_q[rcnt_q[FI-1:0]] <= s_r_data;
          rcnt_q <= rcnt_q + 1'b1;
          if (s_r_resp != keel_pkg::AXI_RESP_OKAY) rerr_q <= 1'b1;
          if (s_r_last) begin
            if (err) fault_valid <= 1'b1;
            st_q <= F_IDLE;
          end
        end
        default: st_q <= F_IDLE;
      endcase
    end
  end

endmodule
