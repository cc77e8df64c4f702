/**
 * The chunked (training) form of DeltaNet and Gated DeltaNet: the sequence is cut into chunks of C
 * tokens; inside a chunk the sequential delta updates collapse into matrix products through the
 * WY/UT representation, and only the state crosses chunk boundaries. See README.md for the
 * derivation. Gradients come from tfjs autodiff.
 *
 * Per chunk (rows r, i = 0..C-1 of the chunk; G_r = sum of g over the chunk up to r, 0 ungated;
 * gamma_r = exp(G_r); D_ri = exp(G_r - G_i) for i <= r, else 0; D = ones-lower ungated):
 *   A = I + tril(diag(beta) (K K^T o D), -1)        unit lower triangular
 *   T = A^-1 diag(beta)                              forward substitution, row by row
 *   W = T (gamma o K),  U~ = T V
 *   U = U~ - W S                                     the chunk's true pseudo-values
 *   O = scale (gamma o Q) S + scale (tril(Q K^T) o D) U
 *   S <- gamma_C S + (K o exp(G_C - G))^T U
 */
import { fused, matMul, tf, TsformerError } from '@tsformer/core';
import { checkDeltaInputs, readoutScale, splitAll, type DeltaChunkOptions, type DeltaResult } from './types.js';

/** DeltaNet, chunked. q, k: [B, T, H, K]; v: [B, T, H, V]; beta: [B, T, H]. */
export function deltaChunk(q: tf.Tensor, k: tf.Tensor, v: tf.Tensor, beta: tf.Tensor, opts: DeltaChunkOptions = {}): DeltaResult {
  return chunked('deltaChunk', q, k, v, beta, undefined, opts);
}

/**
 * `deltaChunk` as plain tfjs ops, whatever the backend (no fused kernel): the definition the
 * kernels are checked against. Same arguments and result as `deltaChunk`.
 */
export function deltaChunkComposite(q: tf.Tensor, k: tf.Tensor, v: tf.Tensor, beta: tf.Tensor, opts: DeltaChunkOptions = {}): DeltaResult {
  return chunkedComposite('deltaChunk', q, k, v, beta, undefined, opts);
}

/** Gated DeltaNet, chunked; g: [B, T, H] is the log decay (g <= 0). */
export function gatedDeltaChunk(
  q: tf.Tensor,
  k: tf.Tensor,
  v: tf.Tensor,
  beta: tf.Tensor,
  g: tf.Tensor,
  opts: DeltaChunkOptions = {},
): DeltaResult {
  return chunked('gatedDeltaChunk', q, k, v, beta, g, opts);
}

/** `gatedDeltaChunk` as plain tfjs ops, whatever the backend (the kernels' oracle). */
export function gatedDeltaChunkComposite(
  q: tf.Tensor,
  k: tf.Tensor,
  v: tf.Tensor,
  beta: tf.Tensor,
  g: tf.Tensor,
  opts: DeltaChunkOptions = {},
): DeltaResult {
  return chunkedComposite('gatedDeltaChunk', q, k, v, beta, g, opts);
}

/** A fused kernel where one is registered for the active backend (webgpu) and takes the shapes, else the composite. */
function chunked(
  op: string,
  q: tf.Tensor,
  k: tf.Tensor,
  v: tf.Tensor,
  beta: tf.Tensor,
  g: tf.Tensor | undefined,
  opts: DeltaChunkOptions,
): DeltaResult {
  const kernel = fused('deltaChunk');
  if (kernel) {
    const { K } = checkDeltaInputs(op, q, k, v, beta, g, opts.initialState);
    const chunkSize = chunkSizeOf(op, opts);
    const r = kernel(q, k, v, beta, g, { scale: readoutScale(op, K, opts.scale), chunkSize, initialState: opts.initialState });
    if (r) return r;
  }
  return chunkedComposite(op, q, k, v, beta, g, opts);
}

function chunkSizeOf(op: string, opts: DeltaChunkOptions): number {
  const chunkSize = opts.chunkSize ?? 64;
  if (!Number.isInteger(chunkSize) || chunkSize < 1) {
    throw new TsformerError(`${op}: chunkSize must be a positive integer, got ${chunkSize}`, 'config');
  }
  return chunkSize;
}

function chunkedComposite(
  op: string,
  q: tf.Tensor,
  k: tf.Tensor,
  v: tf.Tensor,
  beta: tf.Tensor,
  g: tf.Tensor | undefined,
  opts: DeltaChunkOptions,
): DeltaResult {
  const { B, T, H, K, V } = checkDeltaInputs(op, q, k, v, beta, g, opts.initialState);
  const scale = readoutScale(op, K, opts.scale);
  const chunkSize = chunkSizeOf(op, opts);
  const C = Math.min(chunkSize, T); // a sequence shorter than one chunk is one chunk, unpadded
  const N = Math.ceil(T / C);
  const BH = B * H;
  const M = N * BH; // chunk-heads, chunk-major: chunk n is rows [n * BH, (n + 1) * BH)

  const [o, finalState] = tf.tidy(() => {
    // Padding has beta = 0, k = 0, g = 0: its delta updates are the identity, so it is inert.
    const toChunks = (x: tf.Tensor, D: number): tf.Tensor => {
      const padded = N * C > T ? x.pad([[0, 0], [0, N * C - T], [0, 0], [0, 0]]) : x; // [B, N*C, H, D]
      return padded
        .transpose([0, 2, 1, 3]) // [B, H, N*C, D]
        .reshape([BH, N, C, D]) // [B*H, N, C, D]
        .transpose([1, 0, 2, 3]) // [N, B*H, C, D]
        .reshape([M, C, D]); // [N*B*H, C, D]
    };
    const perToken = (x: tf.Tensor): tf.Tensor => toChunks(x.expandDims(3), 1); // [B, T, H] -> [N*B*H, C, 1]

    const qc = toChunks(q, K).mul(scale); // [M, C, K]
    const kc = toChunks(k, K); // [M, C, K]
    const vc = toChunks(v, V); // [M, C, V]
    const bc = perToken(beta); // [M, C, 1]

    const lower = tf.linalg.bandPart(tf.ones([C, C]), -1, 0); // [C, C], 1 where i <= r
    const strict = lower.sub(tf.eye(C)); // [C, C], 1 where i < r

    // In-chunk decay (gated only). Every factor is exp of a non-positive number: no overflow.
    let decay: tf.Tensor | undefined; // [M, C, C]: D_ri = exp(G_r - G_i) for i <= r, else 0
    let gamma: tf.Tensor | undefined; // [M, C, 1]: exp(G_r), decay from the chunk start through r
    let toEnd: tf.Tensor | undefined; // [M, C, 1]: exp(G_C - G_r), decay after r to the chunk end
    let chunkDecay: tf.Tensor | undefined; // [M, 1, 1]: exp(G_C)
    if (g) {
      // cumsum along the last axis: tfjs 4.22's Cumsum gradient mis-shapes other axes
      const G = perToken(g).reshape([M, C]).cumsum(1).reshape([M, C, 1]); // [M, C, 1]
      const last = G.slice([0, C - 1, 0], [M, 1, 1]); // [M, 1, 1]
      // Masking the exponent first keeps the (unused) upper triangle at exp(0) instead of overflowing.
      decay = G.sub(G.reshape([M, 1, C])).mul(lower).exp().mul(lower); // [M, C, C]
      gamma = G.exp();
      toEnd = last.sub(G).exp();
      chunkDecay = last.exp();
    }
    const withDecay = (x: tf.Tensor): tf.Tensor => (decay ? x.mul(decay) : x);

    const L = withDecay(matMul(kc.mul(bc), kc, false, true).mul(strict)); // [M, C, C]: A - I
    const Tm = unitLowerSolveDiag(L, bc); // [M, C, C]: A^-1 diag(beta)
    const w = matMul(Tm, gamma ? kc.mul(gamma) : kc); // [M, C, K]
    const uTilde = matMul(Tm, vc); // [M, C, V]
    const attn = withDecay(matMul(qc, kc, false, true).mul(lower)); // [M, C, C]
    const qRead = gamma ? qc.mul(gamma) : qc; // [M, C, K]
    const kWrite = toEnd ? kc.mul(toEnd) : kc; // [M, C, K]

    // The inter-chunk recurrence: N steps over [B*H, ...] slices.
    const perChunk = (x: tf.Tensor): tf.Tensor[] => {
      const [, R, D] = x.shape as [number, number, number];
      // [N, B*H*R, D], then each [1, B*H*R, D] piece -> [B*H, R, D]
      return splitAll(x.reshape([N, BH * R, D]), 0).map((piece) => piece.reshape([BH, R, D]));
    };
    const ws = perChunk(w); // N x [B*H, C, K]
    const us = perChunk(uTilde); // N x [B*H, C, V]
    const attns = perChunk(attn); // N x [B*H, C, C]
    const qs = perChunk(qRead); // N x [B*H, C, K]
    const ks = perChunk(kWrite); // N x [B*H, C, K]
    const decays = chunkDecay ? perChunk(chunkDecay) : undefined; // N x [B*H, 1, 1]
    let S = opts.initialState ? opts.initialState.reshape([BH, K, V]) : tf.zeros([BH, K, V]); // [B*H, K, V]
    const outs: tf.Tensor[] = [];
    for (let n = 0; n < N; n++) {
      const u = us[n]!.sub(matMul(ws[n]!, S)); // [B*H, C, V]
      outs.push(matMul(qs[n]!, S).add(matMul(attns[n]!, u))); // [B*H, C, V]
      S = (decays ? S.mul(decays[n]!) : S).add(matMul(ks[n]!, u, true, false)); // [B*H, K, V]
    }
    const out = tf
      .concat(outs, 0) // [N*B*H, C, V]
      .reshape([N, BH, C, V]) // [N, B*H, C, V]
      .transpose([1, 0, 2, 3]) // [B*H, N, C, V]
      .reshape([B, H, N * C, V]) // [B, H, N*C, V]
      .transpose([0, 2, 1, 3]); // [B, N*C, H, V]
    const o = N * C > T ? out.slice([0, 0, 0, 0], [B, T, H, V]) : out; // [B, T, H, V]
    return [o, S.reshape([B, H, K, V])] as [tf.Tensor, tf.Tensor]; // [B, H, K, V]
  });
  return { o, finalState };
}

/** Rows per diagonal block of the two-level forward substitution. */
const SOLVE_BLOCK = 16;

/**
 * X = (I + L)^-1 diag(beta) for strictly lower triangular L: [M, C, C] and beta: [M, C, 1], by
 * block forward substitution, vectorized over the M chunk-heads:
 *  1. the diagonal b x b blocks (b = 16 when it divides C, else C) are inverted all at once by
 *     plain forward substitution over their rows (`forwardSubstitute`);
 *  2. block row J of A^-1 is then Y_J ([0 .. I .. 0] - L_{J,<J} A^-1_{<J}) with Y_J the inverse of
 *     the diagonal block J: C / b block steps of ordinary matmuls.
 * Row-by-row over the whole chunk would copy the growing solution C times (O(C^3) time and memory
 * per chunk-head under autodiff); blocking keeps the row loop short and the rest in matmuls.
 */
function unitLowerSolveDiag(L: tf.Tensor, beta: tf.Tensor): tf.Tensor {
  const [M, C] = L.shape as [number, number, number];
  const b = C % SOLVE_BLOCK === 0 ? SOLVE_BLOCK : C;
  const nb = C / b;
  return tf.tidy(() => {
    const diagonal = nb === 1 ? L : tf.concat(Array.from({ length: nb }, (_, J) => L.slice([0, J * b, J * b], [M, b, b])), 0); // [nb*M, b, b]
    const Y = forwardSubstitute(diagonal); // [nb*M, b, b]: inverses of the diagonal blocks of A
    const Ys = nb === 1 ? [Y] : tf.split(Y, nb, 0); // nb x [M, b, b]
    let inv = nb === 1 ? Y : Ys[0]!.pad([[0, 0], [0, 0], [0, C - b]]); // [M, b, C]: block rows of A^-1 so far
    for (let J = 1; J < nb; J++) {
      const LJ = L.slice([0, J * b, 0], [M, b, J * b]); // [M, b, J*b]
      const YJ = Ys[J]!;
      const rowsJ = YJ.pad([[0, 0], [0, 0], [J * b, C - (J + 1) * b]]).sub(matMul(YJ, matMul(LJ, inv))); // [M, b, C]
      inv = tf.concat([inv, rowsJ], 1); // [M, (J+1)*b, C]
    }
    return inv.mul(beta.reshape([M, 1, C])); // A^-1 diag(beta)
  });
}

/**
 * (I + L)^-1 for strictly lower triangular L: [P, n, n], by forward substitution over the rows:
 * row r is e_r - sum_{i<r} L_ri x_i, so it needs only the rows above it (one small product each).
 */
function forwardSubstitute(L: tf.Tensor): tf.Tensor {
  const [P, n] = L.shape as [number, number, number];
  return tf.tidy(() => {
    const eye = tf.eye(n).expandDims(0); // [1, n, n]
    let X = eye.slice([0, 0, 0], [1, 1, n]).tile([P, 1, 1]); // [P, 1, n]: rows solved so far
    for (let r = 1; r < n; r++) {
      const Lr = L.slice([0, r, 0], [P, 1, r]); // [P, 1, r]
      const xr = eye.slice([0, r, 0], [1, 1, n]).sub(matMul(Lr, X)); // [P, 1, n]
      X = tf.concat([X, xr], 1); // [P, r + 1, n]
    }
    return X;
  });
}
