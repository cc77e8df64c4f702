import { afterEach, describe, expect, it } from 'vitest';
import { registerFused, tf, unregisterFused } from '@tsformer/core';
import { glaChunk, glaChunkComposite } from '@tsformer/ops';
import { glaSupported } from './gla.js';
import { randn, relRms } from './checks.js';

// Node (cpu) side of the GLA kernel: the dispatch glue in @tsformer/ops glaChunk, and the gradient
// identity the backward kernel computes dg with, against autodiff of the composite. The kernel
// itself runs in chromium (kernels.browser.test.ts, checkGla).

function inputs(B: number, T: number, H: number, K: number, V: number, seed: number) {
  const q = randn([B, T, H, K], seed);
  const k = randn([B, T, H, K], seed + 1);
  const v = randn([B, T, H, V], seed + 2);
  const g = tf.tidy(() => tf.randomUniform([B, T, H, K], 0, 1, 'float32', seed + 3).mul(-2)); // log gates in (-2, 0]
  return { q, k, v, g };
}

describe('glaChunk dispatch', () => {
  afterEach(() => unregisterFused('glaChunk', 'cpu'));

  it('runs the composite bit for bit when no fused form is registered for the backend', async () => {
    const { q, k, v, g } = inputs(1, 21, 2, 8, 4, 1);
    const a = glaChunk(q, k, v, g, { chunkSize: 8, outputFinalState: true });
    const b = glaChunkComposite(q, k, v, g, { chunkSize: 8, outputFinalState: true });
    expect(Array.from(await a.o.data())).toEqual(Array.from(await b.o.data()));
    expect(Array.from(await a.finalState!.data())).toEqual(Array.from(await b.finalState!.data()));
    tf.dispose([q, k, v, g, a.o, a.finalState!, b.o, b.finalState!]);
  });

  it('returns the fused form when it takes the inputs, the composite when it answers undefined', async () => {
    const { q, k, v, g } = inputs(1, 9, 1, 4, 4, 2);
    const s0 = randn([1, 1, 4, 4], 3);
    const seen: Array<{ scale: number; chunkSize: number; initial: boolean; final: boolean }> = [];
    let answer: 'take' | 'decline' = 'take';
    registerFused(
      'glaChunk',
      (qq, _k, _v, _g, o) => {
        seen.push({ scale: o.scale, chunkSize: o.chunkSize, initial: o.initialState !== undefined, final: o.outputFinalState });
        return answer === 'take' ? { o: tf.zerosLike(qq) } : undefined;
      },
      'cpu',
    );
    const taken = glaChunk(q, k, v, g, { initialState: s0, chunkSize: 16 });
    expect((await taken.o.abs().sum().data())[0]).toBe(0);
    answer = 'decline';
    const declined = glaChunk(q, k, v, g, { scale: 0.3, outputFinalState: true });
    const want = glaChunkComposite(q, k, v, g, { scale: 0.3, outputFinalState: true });
    expect(await relRms(declined.o, want.o)).toBe(0);
    expect(seen).toEqual([
      { scale: 0.5, chunkSize: 16, initial: true, final: false },
      { scale: 0.3, chunkSize: 64, initial: false, final: true },
    ]);
    tf.dispose([q, k, v, g, s0, taken.o, declined.o, declined.finalState!, want.o, want.finalState!]);
  });

  it('takes key and value widths 1..256', () => {
    expect(glaSupported(64, 64)).toBe(true);
    expect(glaSupported(256, 1)).toBe(true);
    expect(glaSupported(257, 64)).toBe(false);
    expect(glaSupported(64, 0)).toBe(false);
  });
});

describe('the gate gradient identity of the backward kernel', () => {
  // dg_t = sum_{s >= t} (q_s dq_s - k_s dk_s) + S_T . dS_T (per key channel), q scaled, S_T the final
  // state and dS_T its cotangent; the kernel applies it per chunk (S_{n+1} . dS_{n+1} at each chunk end).
  it('matches autodiff of the composite for g, with a loss on o and on the final state', async () => {
    const [B, T, H, K, V] = [2, 19, 2, 6, 5];
    const scale = 0.7;
    const { q, k, v, g } = inputs(B, T, H, K, V, 7);
    const s0 = randn([B, H, K, V], 8);
    const wo = randn([B, T, H, V], 9);
    const ws = randn([B, H, K, V], 10);
    const loss = (qq: tf.Tensor, kk: tf.Tensor, gg: tf.Tensor) => {
      const r = glaChunkComposite(qq, kk, v, gg, { scale, chunkSize: 8, initialState: s0, outputFinalState: true });
      return tf.add(tf.sum(tf.mul(r.o, wo)), tf.sum(tf.mul(r.finalState!, ws))) as tf.Scalar;
    };
    const [dq, dk, dg] = tf.grads(loss)([q, k, g]);
    const identity = tf.tidy(() => {
      const final = glaChunkComposite(q, k, v, g, { scale, chunkSize: 8, initialState: s0, outputFinalState: true });
      const term = q.mul(scale).mul(dq!.div(scale)).sub(k.mul(dk!)); // q_s dq_s - k_s dk_s with q scaled: [B, T, H, K]
      const suffix = term.transpose([0, 2, 3, 1]).cumsum(3, false, true).transpose([0, 3, 1, 2]); // sum_{s >= t}: [B, T, H, K]
      const end = final.finalState!.mul(ws).sum(3).reshape([B, 1, H, K]); // S_T . dS_T over values: [B, 1, H, K]
      tf.dispose([final.o, final.finalState!]);
      return suffix.add(end);
    });
    expect(await relRms(identity, dg!)).toBeLessThan(1e-5);
    tf.dispose([q, k, v, g, s0, wo, ws, dq!, dk!, dg!, identity]);
  });
});
