// Testbench: one exported binary layer as XNOR + popcount + threshold, checked against golden bits.
//
// Reads (all with $readmemb, MSB = index 0, bit 1 = +1):
//   `WEIGHTS  COUT lines of K bits       weights/L<i>.memb
//   `THRESH   COUT lines, 32-bit two's complement threshold T   thresholds/L<i>_thr.memb
//   `FLIPS    COUT lines of 1 bit        thresholds/L<i>_flip.memb
//   `PATCHES  NPOS lines of K bits       golden/img<n>/L<i>_patches.memb (im2col, (c, kh, kw) order)
//   `EXPECTED NPOS lines of COUT bits    golden/img<n>/L<i>_prepool.memb (MSB = channel 0)
// For every position p and channel o: D = K - 2*popcount(patch XOR weight);
// bit = flip ? (D <= T) : (D >= T). Prints "PASS <n>" or "FAIL <mismatches>" and finishes.
//
//   iverilog -g2012 -P xnor_layer_tb.K=288 -P xnor_layer_tb.COUT=64 -P xnor_layer_tb.NPOS=196 \
//     -DWEIGHTS='"w.memb"' -DTHRESH='"t.memb"' -DFLIPS='"f.memb"' -DPATCHES='"p.memb"' -DEXPECTED='"e.memb"' \
//     -o tb hw/xnor_layer_tb.v && vvp tb
`timescale 1ns/1ps
module xnor_layer_tb;
  parameter integer K = 9;
  parameter integer COUT = 1;
  parameter integer NPOS = 1;

  reg [K-1:0] weights [0:COUT-1];
  reg [31:0] thresh [0:COUT-1];
  reg flips [0:COUT-1];
  reg [K-1:0] patches [0:NPOS-1];
  reg [COUT-1:0] expected [0:NPOS-1];

  function automatic integer popcount(input [K-1:0] v);
    integer i;
    begin
      popcount = 0;
      for (i = 0; i < K; i = i + 1) popcount = popcount + v[i];
    end
  endfunction

  integer p, o, d, mismatches, checked;
  reg bit_out;
  initial begin
    $readmemb(`WEIGHTS, weights);
    $readmemb(`THRESH, thresh);
    $readmemb(`FLIPS, flips);
    $readmemb(`PATCHES, patches);
    $readmemb(`EXPECTED, expected);
    mismatches = 0;
    checked = 0;
    for (p = 0; p < NPOS; p = p + 1) begin
      for (o = 0; o < COUT; o = o + 1) begin
        d = K - 2 * popcount(patches[p] ^ weights[o]);
        bit_out = flips[o] ? (d <= $signed(thresh[o])) : (d >= $signed(thresh[o]));
        if (bit_out !== expected[p][COUT-1-o]) begin
          if (mismatches < 5) $display("mismatch at position %0d channel %0d: D=%0d T=%0d flip=%0d", p, o, d,
                                       $signed(thresh[o]), flips[o]);
          mismatches = mismatches + 1;
        end
        checked = checked + 1;
      end
    end
    if (mismatches == 0) $display("PASS %0d", checked);
    else $display("FAIL %0d", mismatches);
    $finish;
  end
endmodule
