/**
 * The blockwise (training and prefill) form of PaTH attention. The sequence is cut into blocks of
 * C tokens. Inside a block the product of Householder transforms is kept in UT form, so all
 * intra-block logits come from a few C x C matrix products; across blocks, the keys of earlier
 * blocks are carried forward, transformed to the start of the current block, and the current
 * block's queries are pulled back to that start. No product of transforms is ever formed as a
 * D x D matrix, and the T^2 logits cost O(T^2 D) like softmax attention. See README.md.
 *
 * Per block (local rows r, c = 0..C-1; Q already scaled; G_r = sum of log f over the block up to r):
 *   A  = I + strictly_lower(diag(beta) W W^T),   T = A^-1 diag(beta)   (forward substitution)
 *   H_r ... H_s = I - W_[s..r]^T T_[s..r] W_[s..r]                     (any s <= r in the block)
 *   intra logits   = Q K^T - tril(Q W^T) T strictly_lower(W K^T)       (kept where c <= r)
 *   pulled queries = Q - tril(Q W^T) T W                               (q_r^T H_r ... H_0)
 *   keys to the block end   K_end = K - (T strictly_lower(W K^T))^T W  (H_{C-1} ... H_{c+1} k_c)
 *   carried keys onward     K_past <- K_past - (K_past W^T) (T^T W)   (H_{C-1} ... H_0 k)
 */
import { matMul, tf, TsformerError } from '@tsformer/core';
import { splitAll } from '../delta/types.js';
import { checkPathInputs, checkPathState, logitScale, MASKED, type PathBlockwiseOptions, type PathResult, type PathState } from './types.js';

/**
 * PaTH attention, blockwise. q, k, w: [B, T, H, D]; v: [B, T, H, V]; beta (and opts.g): [B, T, H].
 * With `opts.past` the queries also attend to earlier tokens; with `opts.outputState` the result
 * carries the transformed keys (and values, gates) of all tokens for decoding.
 */
export function pathBlockwise(q: tf.Tensor, k: tf.Tensor, v: tf.Tensor, w: tf.Tensor, beta: tf.Tensor, opts: PathBlockwiseOptions = {}): PathResult {
  const op = 'pathBlockwise';
  const g = opts.g;
  const dims = checkPathInputs(op, q, k, v, w, beta, g);
  const { B, T, H, D, V } = dims;
  const S = opts.past ? checkPathState(op, opts.past, { B, H, D, V }, g !== undefined) : 0;
  const scale = logitScale(op, D, opts.scale);
  const blockSize = opts.blockSize ?? 64;
  if (!Number.isInteger(blockSize) || blockSize < 1) {
    throw new TsformerError(`${op}: blockSize must be a positive integer, got ${blockSize}`, 'config');
  }
  const C = Math.min(blockSize, T); // a sequence shorter than one block is one block, unpadded
  const N = Math.ceil(T / C);
  const BH = B * H;
  const M = N * BH; // block-heads, block-major: block n is rows [n * BH, (n + 1) * BH)

  // [o] or [o, keys, values, (logGates)]
  const [o, ...carried] = tf.tidy((): tf.Tensor[] => {
    // Padding has w = 0, beta = 0 (H = I), k = q = v = 0, log f = 0: inert, and after every real token.
    const pad = N * C - T;
    const toBlocks = (x: tf.Tensor, n: number): tf.Tensor => {
      const padded = pad > 0 ? x.pad([[0, 0], [0, pad], [0, 0], [0, 0]]) : x; // [B, N*C, H, n]
      return padded
        .transpose([0, 2, 1, 3]) // [B, H, N*C, n]
        .reshape([BH, N, C, n]) // [B*H, N, C, n]
        .transpose([1, 0, 2, 3]) // [N, B*H, C, n]
        .reshape([M, C, n]); // [N*B*H, C, n]
    };
    const scalarsToBlocks = (x: tf.Tensor): tf.Tensor => {
      const padded = pad > 0 ? x.pad([[0, 0], [0, pad], [0, 0]]) : x; // [B, N*C, H]
      return padded
        .transpose([0, 2, 1]) // [B, H, N*C]
        .reshape([BH, N, C]) // [B*H, N, C]
        .transpose([1, 0, 2]) // [N, B*H, C]
        .reshape([M, C]); // [N*B*H, C]
    };

    const qb = toBlocks(q, D).mul(scale); // [M, C, D]
    const kb = toBlocks(k, D); // [M, C, D]
    const wb = toBlocks(w, D); // [M, C, D]
    const vb = toBlocks(v, V); // [M, C, V]
    const bb = scalarsToBlocks(beta); // [M, C]

    const lower = tf.linalg.bandPart(tf.ones([C, C]), -1, 0); // [C, C], 1 where c <= r
    const strict = lower.sub(tf.eye(C)); // [C, C], 1 where c < r

    // The UT transform of each block's Householder product.
    const L = matMul(wb, wb, false, true).mul(bb.reshape([M, C, 1])).mul(strict); // [M, C, C]: beta_r (w_r . w_c), c < r
    const Tm = unitLowerInverse(L).mul(bb.reshape([M, 1, C])); // [M, C, C]: A^-1 diag(beta), lower triangular
    const QW = matMul(qb, wb, false, true).mul(lower); // [M, C, C]: q_r . w_a for a <= r
    const WK = matMul(wb, kb, false, true).mul(strict); // [M, C, C]: w_b . k_c for b > c
    // Two C x C x C products per block (T WK and QW (T WK)); everything else is C x C x D.
    const TWK = matMul(Tm, WK); // [M, C, C]
    let intra = matMul(qb, kb, false, true).sub(matMul(QW, TWK)); // [M, C, C]: q_r^T H_r ... H_{c+1} k_c for c <= r
    const pulledQ = qb.sub(matMul(QW, matMul(Tm, wb))); // [M, C, D]: (q_r^T H_r ... H_0)^T
    // Only needed to carry keys past a block: not for a single block without a returned state.
    const carry = N > 1 || opts.outputState === true;
    const keysToEnd = carry ? kb.sub(matMul(TWK, wb, true, false)) : undefined; // [M, C, D]: H_{C-1} ... H_{c+1} k_c
    const TtW = carry ? matMul(Tm, wb, true, false) : undefined; // [M, C, D]: T^T W, moves carried keys across the block

    // PaTH-FoX: G_r = in-block cumulative log gate (inclusive), on the last axis.
    let G: tf.Tensor | undefined; // [M, C]
    let gatesToEnd: tf.Tensor | undefined; // [M, C]: sum of log f over (c, C-1]
    let blockGate: tf.Tensor | undefined; // [M, 1]: sum of log f over the whole block
    if (g) {
      G = scalarsToBlocks(g).cumsum(1); // [M, C]
      blockGate = G.slice([0, C - 1], [M, 1]); // [M, 1]
      gatesToEnd = blockGate.sub(G); // [M, C]
      intra = intra.add(G.reshape([M, C, 1]).sub(G.reshape([M, 1, C]))); // + sum_{s=c+1..r} log f_s
    }
    intra = intra.add(tf.onesLike(lower).sub(lower).mul(MASKED)); // [M, C, C], causal

    // Across blocks: N steps over [B*H, ...] pieces.
    const perBlock = (x: tf.Tensor): tf.Tensor[] => {
      const rest = x.shape.slice(1);
      const size = rest.reduce((a, b) => a * b, 1);
      if (N === 1) return [x];
      // [N, B*H*size], then each [1, B*H*size] piece -> [B*H, ...rest]
      return splitAll(x.reshape([N, BH * size]), 0).map((piece) => piece.reshape([BH, ...rest]));
    };
    const intras = perBlock(intra); // N x [B*H, C, C]
    const pulled = perBlock(pulledQ); // N x [B*H, C, D]
    const ends = keysToEnd ? perBlock(keysToEnd) : []; // N x [B*H, C, D]
    const ws = carry ? perBlock(wb) : []; // N x [B*H, C, D]
    const twS = TtW ? perBlock(TtW) : []; // N x [B*H, C, D]
    const vs = perBlock(vb); // N x [B*H, C, V]
    const Gs = G ? perBlock(G) : undefined; // N x [B*H, C]
    const toEnds = gatesToEnd ? perBlock(gatesToEnd) : undefined; // N x [B*H, C]
    const blockGates = blockGate ? perBlock(blockGate) : undefined; // N x [B*H, 1]

    // Keys of all earlier tokens, transformed to the start of the current block.
    let keys = opts.past ? opts.past.keys.reshape([BH, S, D]) : undefined; // [B*H, S', D]
    let values = opts.past ? opts.past.values.reshape([BH, S, V]) : undefined; // [B*H, S', V]
    let gates = opts.past?.logGates ? opts.past.logGates.reshape([BH, S]) : undefined; // [B*H, S']: sum of log f from after the key to the block start
    const outs: tf.Tensor[] = [];
    for (let n = 0; n < N; n++) {
      let logits = intras[n]!; // [B*H, C, C]
      if (keys) {
        let inter = matMul(pulled[n]!, keys, false, true); // [B*H, C, S']
        if (gates) {
          const Sn = gates.shape[1]!;
          inter = inter.add(Gs![n]!.reshape([BH, C, 1])).add(gates.reshape([BH, 1, Sn])); // + sum_{s=j+1..i} log f_s
        }
        logits = tf.concat([inter, logits], 2); // [B*H, C, S'+C]
      }
      const allValues = values ? tf.concat([values, vs[n]!], 1) : vs[n]!; // [B*H, S'+C, V]
      outs.push(matMul(tf.softmax(logits), allValues)); // [B*H, C, V]
      if (n === N - 1 && !opts.outputState) break;
      // Move everything to the start of block n+1.
      const moved = keys ? keys.sub(matMul(matMul(keys, ws[n]!, false, true), twS[n]!)) : undefined; // [B*H, S', D]
      keys = moved ? tf.concat([moved, ends[n]!], 1) : ends[n]!; // [B*H, S'+C, D]
      values = allValues;
      if (g) gates = gates ? tf.concat([gates.add(blockGates![n]!), toEnds![n]!], 1) : toEnds![n]!; // [B*H, S'+C]
    }
    const out = (N === 1 ? outs[0]! : tf.concat(outs, 0)) // [N*B*H, C, V]
      .reshape([N, BH, C, V]) // [N, B*H, C, V]
      .transpose([1, 0, 2, 3]) // [B*H, N, C, V]
      .reshape([B, H, N * C, V]) // [B, H, N*C, V]
      .transpose([0, 2, 1, 3]); // [B, N*C, H, V]
    const o = pad > 0 ? out.slice([0, 0, 0, 0], [B, T, H, V]) : out; // [B, T, H, V]
    if (!opts.outputState) return [o];
    const total = S + T; // drop the padding at the end
    return [
      o,
      keys!.slice([0, 0, 0], [BH, total, D]).reshape([B, H, total, D]), // [B, H, S+T, D]
      values!.slice([0, 0, 0], [BH, total, V]).reshape([B, H, total, V]), // [B, H, S+T, V]
      ...(gates ? [gates.slice([0, 0], [BH, total]).reshape([B, H, total])] : []), // [B, H, S+T]
    ];
  });
  if (!opts.outputState) return { o: o! };
  const [keys, values, logGates] = carried as [tf.Tensor, tf.Tensor, tf.Tensor | undefined];
  const state: PathState = logGates ? { keys, values, logGates } : { keys, values };
  return { o: o!, state };
}

/** Rows of the leaf blocks that are solved by plain forward substitution. */
const LEAF = 8;

/**
 * (I + L)^-1 for strictly lower triangular L: [M, n, n], the inverse of a unit lower triangular
 * matrix, by divide and conquer: with L split into halves,
 *   [[A11, 0], [A21, A22]]^-1 = [[A11^-1, 0], [-A22^-1 A21 A11^-1, A22^-1]]
 * where both diagonal halves are inverted together (stacked on the batch axis) down to leaves of at
 * most LEAF rows, which `forwardSubstitute` solves row by row. This is block forward substitution
 * (exact, no power series); it keeps the sequential row loop at LEAF steps and the rest in matmuls.
 * n is padded with identity rows to leaf * 2^levels.
 */
function unitLowerInverse(L: tf.Tensor): tf.Tensor {
  const [M, n] = L.shape as [number, number, number];
  if (n <= LEAF) return forwardSubstitute(L);
  const levels = Math.ceil(Math.log2(n / LEAF));
  const leaf = Math.ceil(n / 2 ** levels);
  const size = leaf * 2 ** levels;
  return tf.tidy(() => {
    // Zero rows/columns of L append an identity block to A: its inverse is the same plus identity.
    const padded = size > n ? L.pad([[0, 0], [0, size - n], [0, size - n]]) : L; // [M, size, size]
    const inv = halve(padded, levels);
    return size > n ? inv.slice([0, 0, 0], [M, n, n]) : inv; // [M, n, n]
  });
}

function halve(L: tf.Tensor, levels: number): tf.Tensor {
  if (levels === 0) return forwardSubstitute(L);
  const [M, n] = L.shape as [number, number, number];
  const h = n / 2;
  const [top, bottom] = tf.split(L, 2, 1) as [tf.Tensor, tf.Tensor]; // 2 x [M, h, n]
  const [L11] = tf.split(top, 2, 2) as [tf.Tensor, tf.Tensor]; // [M, h, h] (the right half is zero)
  const [L21, L22] = tf.split(bottom, 2, 2) as [tf.Tensor, tf.Tensor]; // 2 x [M, h, h]
  const X = halve(tf.concat([L11, L22], 0), levels - 1); // [2M, h, h]: both diagonal inverses at once
  const [X11, X22] = tf.split(X, 2, 0) as [tf.Tensor, tf.Tensor]; // 2 x [M, h, h]
  const X21 = matMul(matMul(X22, L21), X11).neg(); // [M, h, h]
  const upper = X11.pad([[0, 0], [0, 0], [0, h]]); // [M, h, n]
  return tf.concat([upper, tf.concat([X21, X22], 2)], 1); // [M, n, n]
}

/**
 * (I + L)^-1 for strictly lower triangular L: [P, b, b], row by row: row r of the inverse is
 * e_r - sum_{i<r} L_ri x_i, which needs only the rows above it. The solved rows are kept zero-padded
 * to b rows, so each step is one [1, b] x [b, b] product per batch entry.
 */
function forwardSubstitute(L: tf.Tensor): tf.Tensor {
  const [P, b] = L.shape as [number, number, number];
  return tf.tidy(() => {
    const eye = tf.eye(b); // [b, b]
    if (b === 1) return eye.reshape([1, 1, 1]).tile([P, 1, 1]); // [P, 1, 1]
    const unitRows = splitAll(eye.reshape([1, b, b]), 1); // b x [1, 1, b]
    const lRows = splitAll(L, 1); // b x [P, 1, b]: row r is zero from column r on
    const solved: tf.Tensor[] = [unitRows[0]!.tile([P, 1, 1])]; // [P, 1, b]
    for (let r = 1; r < b; r++) {
      const above = tf.concat(solved, 1).pad([[0, 0], [0, b - r], [0, 0]]); // [P, b, b]: rows < r solved, the rest zero
      solved.push(unitRows[r]!.sub(matMul(lRows[r]!, above))); // [P, 1, b]
    }
    return tf.concat(solved, 1); // [P, b, b]
  });
}
