import { describe, expect, it } from 'vitest';
import { Rng, relativeError, tensorLeak, tf } from '@tsformer/core';
import { scoreAttention, type AttentionPath } from './softmax.js';
import { normalize, type ScoreSpec } from './softmax-ops.js';
import { naiveAttention } from './softmax-naive.js';
import { bandable, bandedAttention } from './window.js';

const H = 4;
const D = 8;
const B = 2;

/** ALiBi-like bias, -slope_h * (pos_i - pos_j), as a JS formula and as the tensor [H, Tq, Tk]. */
const slope = (h: number) => 2 ** -(h + 1);
const alibi = (h: number, qp: number, kp: number) => -slope(h) * (qp - kp);
function alibiTensor(qp: Int32Array, kp: Int32Array): tf.Tensor {
  const out = new Float32Array(H * qp.length * kp.length);
  for (let h = 0; h < H; h++) for (let i = 0; i < qp.length; i++) for (let j = 0; j < kp.length; j++) out[(h * qp.length + i) * kp.length + j] = alibi(h, qp[i]!, kp[j]!);
  return tf.tensor(out, [H, qp.length, kp.length]);
}

interface Case {
  name: string;
  /** New tokens (queries). */
  T: number;
  /** Keys from a cache in front of them. */
  P: number;
  window: number;
  Hkv: number;
  score: 'softmax' | 'sigmoid';
  bias?: boolean;
  /** Gaps in the (strictly increasing) positions. */
  gaps?: boolean;
}

const cases: Case[] = [
  { name: 'softmax, T a multiple of the block', T: 12, P: 0, window: 4, Hkv: 4, score: 'softmax' },
  { name: 'sigmoid + GQA, T not a multiple of the block', T: 13, P: 0, window: 4, Hkv: 2, score: 'sigmoid' },
  { name: 'softmax + GQA + ALiBi, cache prefix shorter than the block', T: 10, P: 3, window: 4, Hkv: 2, score: 'softmax', bias: true },
  { name: 'sigmoid + MQA + ALiBi, prefix of one block', T: 9, P: 4, window: 4, Hkv: 1, score: 'sigmoid', bias: true },
  { name: 'softmax, prefix longer than the block', T: 7, P: 6, window: 4, Hkv: 4, score: 'softmax' },
  { name: 'sigmoid + ALiBi, window >= T', T: 5, P: 0, window: 8, Hkv: 2, score: 'sigmoid', bias: true },
  { name: 'softmax, window 1 (each token sees itself)', T: 6, P: 0, window: 1, Hkv: 4, score: 'softmax' },
  { name: 'softmax + ALiBi, positions with gaps', T: 11, P: 2, window: 5, Hkv: 2, score: 'softmax', bias: true, gaps: true },
];

function setup(c: Case) {
  const S = c.P + c.T;
  const kPositions = new Int32Array(S);
  for (let j = 0; j < S; j++) kPositions[j] = 5 + j + (c.gaps ? Math.floor(j / 3) : 0);
  const qPositions = kPositions.slice(c.P);
  const rng = Rng.seeded(c.T * 31 + c.P);
  const q = tf.tensor(rng.normalArray(B * c.T * H * D), [B, c.T, H, D]); // [B, T, H, D]
  const k = tf.tensor(rng.normalArray(B * S * c.Hkv * D), [B, S, c.Hkv, D]); // [B, S, Hkv, D]
  const v = tf.tensor(rng.normalArray(B * S * c.Hkv * D), [B, S, c.Hkv, D]);
  const r = tf.tensor(rng.normalArray(B * c.T * H * D), [B, c.T, H, D]);
  const spec: ScoreSpec = { score: c.score, sigmoidBias: -1.3, window: c.window, scoreBias: c.bias ? alibiTensor : undefined };
  return { q, k, v, r, qPositions, kPositions, spec };
}

describe.each(cases)('banded sliding window: $name', (c) => {
  it('matches the naive loops, and the dense masked path', async () => {
    const { q, k, v, r, qPositions, kPositions, spec } = setup(c);
    expect(bandable(qPositions, kPositions)).toBe(true);
    const banded = bandedAttention(q, k, v, qPositions, kPositions, spec);
    const dense = scoreAttention(q, k, v, qPositions, kPositions, spec, 'dense');
    expect(banded.shape).toEqual([B, c.T, H, D]);
    const want = naiveAttention({
      q: (await q.array()) as number[][][][],
      k: (await k.array()) as number[][][][],
      v: (await v.array()) as number[][][][],
      qPositions,
      kPositions,
      score: c.score,
      sigmoidBias: -1.3,
      window: c.window,
      bias: c.bias ? alibi : undefined,
    });
    expect(relativeError(await banded.data(), want)).toBeLessThan(1e-5);
    expect(relativeError(await banded.data(), await dense.data())).toBeLessThan(1e-5);
    tf.dispose([q, k, v, r, banded, dense]);
  });

  it('has the gradients of the dense masked path', async () => {
    const { q, k, v, r, qPositions, kPositions, spec } = setup(c);
    const grads = (path: AttentionPath) =>
      tf.grads((qq: tf.Tensor, kk: tf.Tensor, vv: tf.Tensor) => scoreAttention(qq, kk, vv, qPositions, kPositions, spec, path).mul(r).sum())([q, k, v]);
    const gb = grads('banded');
    const gd = grads('dense');
    for (let i = 0; i < 3; i++) expect(relativeError(await gb[i]!.data(), await gd[i]!.data())).toBeLessThan(1e-5);
    tf.dispose([q, k, v, r, ...gb, ...gd]);
  });
});

describe('banded path', () => {
  it('never builds a [T, T] tensor: the largest kernel output is the [B, Hkv, nB, L*G, 2L] scores', async () => {
    const T = 64;
    const L = 8;
    const { q, k, v, qPositions, kPositions, spec } = setup({ name: '', T, P: 0, window: L, Hkv: 2, score: 'softmax', bias: true });
    const largest = async (path: AttentionPath) => {
      const info = await tf.profile(() => {
        const o = scoreAttention(q, k, v, qPositions, kPositions, spec, path);
        const g = tf.grads((qq: tf.Tensor, kk: tf.Tensor, vv: tf.Tensor) => scoreAttention(qq, kk, vv, qPositions, kPositions, spec, path).sum())([q, k, v]);
        tf.dispose([o, ...g]);
      });
      return Math.max(...info.kernels.flatMap((kr) => kr.outputShapes.map((s) => (s ?? []).reduce((a, b) => a * b, 1))));
    };
    expect(await largest('banded')).toBe(B * H * T * 2 * L); // scores and weights
    expect(await largest('dense')).toBe(B * H * T * T);
    tf.dispose([q, k, v]);
  });

  it('is chosen by auto only where it computes fewer scores and the positions allow it', async () => {
    const { q, k, v, qPositions, kPositions, spec } = setup(cases[1]!);
    // Shuffled key positions: not bandable, so auto must take the dense path (and banded refuses).
    const shuffled = kPositions.slice().reverse();
    expect(bandable(qPositions, shuffled)).toBe(false);
    expect(() => bandedAttention(q, k, v, qPositions, shuffled, spec)).toThrow(/positions must increase strictly/);
    const auto = scoreAttention(q, k, v, qPositions, shuffled, spec);
    const dense = scoreAttention(q, k, v, qPositions, shuffled, spec, 'dense');
    expect(Array.from(await auto.data())).toEqual(Array.from(await dense.data()));
    tf.dispose([q, k, v, auto, dense]);
  });

  it('gives masked keys a sigmoid weight of exactly 0, even for huge scores', async () => {
    const scores = tf.tensor([[50, 1e6, -3]]);
    const mask = tf.tensor([[1, 0, 0]]);
    const p = normalize(scores, mask, { score: 'sigmoid', sigmoidBias: -2 });
    const w = await p.data();
    expect(w[1]).toBe(0);
    expect(w[2]).toBe(0);
    expect(w[0]).toBeCloseTo(1, 6);
    tf.dispose([scores, mask, p]);
  });

  it('leaks no tensors in forward + backward', async () => {
    const { q, k, v, qPositions, kPositions, spec } = setup(cases[2]!);
    expect(
      await tensorLeak(() => {
        const g = tf.grads((qq: tf.Tensor, kk: tf.Tensor, vv: tf.Tensor) => bandedAttention(qq, kk, vv, qPositions, kPositions, spec).square().sum())([q, k, v]);
        tf.dispose(g);
      }),
    ).toBe(0);
    tf.dispose([q, k, v]);
  });
});
