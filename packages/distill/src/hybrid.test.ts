import { afterAll, describe, expect, it } from 'vitest';
import { Rng, finiteDifferenceGradient, relativeError, tensorLeak, tf } from '@tsformer/core';
import { hybridBlocked, hybridDense, hybridNaive, hybridWeights, absorbIntoState, type HybridInputs } from './index.js';

const kept: tf.Tensor[] = [];
afterAll(() => tf.dispose(kept));

const B = 2;
const H = 2;
const D = 4;
const V = 3;
const F = 6;

interface Host {
  q: Float32Array;
  k: Float32Array;
  v: Float32Array;
  fq: Float32Array;
  fk: Float32Array;
  gamma: Float32Array;
  kv0: Float32Array;
  z0: Float32Array;
}

/** Random inputs: queries the last T of S keys; feature maps positive (as a softmax map makes them). */
function make(T: number, S: number, seed: number, withState: boolean): { inp: HybridInputs; host: Host } {
  const rng = Rng.seeded(seed);
  const host: Host = {
    q: rng.normalArray(B * T * H * D),
    k: rng.normalArray(B * S * H * D),
    v: rng.normalArray(B * S * H * V),
    fq: rng.uniformArray(B * T * H * F, 0.05, 1),
    fk: rng.uniformArray(B * S * H * F, 0.05, 1),
    gamma: Float32Array.from([0.1, 0.7]),
    kv0: rng.normalArray(B * H * F * V),
    z0: rng.uniformArray(B * H * F, 1, 3),
  };
  const t = (a: Float32Array, shape: number[]) => {
    const x = tf.tensor(a, shape);
    kept.push(x);
    return x;
  };
  const inp: HybridInputs = {
    q: t(host.q, [B, T, H, D]),
    k: t(host.k, [B, S, H, D]),
    v: t(host.v, [B, S, H, V]),
    fq: t(host.fq, [B, T, H, F]),
    fk: t(host.fk, [B, S, H, F]),
    gamma: t(host.gamma, [H]),
    window: 4,
  };
  if (withState) inp.state = { kv: t(host.kv0, [B, H, F, V]), z: t(host.z0, [B, H, F]) };
  return { inp, host };
}

function naive(T: number, S: number, host: Host, withState: boolean, window = 4): Float64Array {
  const { kv0, z0, ...rest } = host;
  return hybridNaive({ ...rest, dims: [B, T, S, H, D, V, F], window, ...(withState ? { kv0, z0 } : {}) });
}

describe('hybrid window + linear attention', () => {
  // (T, P): whole blocks, a ragged last block, a cache prefix shorter than / equal to the window
  const cases: Array<[number, number, boolean]> = [[8, 0, false], [11, 0, false], [9, 2, true], [6, 4, true], [1, 4, true], [3, 1, false]];
  for (const [T, P, st] of cases) {
    it(`dense and blocked paths match the float64 definition (T=${T}, P=${P}, state=${st})`, async () => {
      const S = T + P;
      const { inp, host } = make(T, S, 10 * T + P, st);
      const ref = naive(T, S, host, st);
      const yd = hybridDense(inp);
      const yb = hybridBlocked(inp);
      expect(yd.shape).toEqual([B, T, H, V]);
      expect(yb.shape).toEqual([B, T, H, V]);
      expect(relativeError(await yd.data(), ref)).toBeLessThan(1e-5);
      expect(relativeError(await yb.data(), ref)).toBeLessThan(1e-5);
      tf.dispose([yd, yb]);
    });
  }

  it('window and linear parts both matter (a large window or zero features change the output)', async () => {
    const T = 10;
    const { inp, host } = make(T, T, 3, false);
    const ref = naive(T, T, host, false);
    const wide = naive(T, T, host, false, T); // every key in the window: no linear part
    expect(relativeError(wide, ref)).toBeGreaterThan(1e-2);
    const noLin = hybridNaive({ ...host, kv0: undefined, z0: undefined, fk: new Float32Array(host.fk.length), dims: [B, T, T, H, D, V, F], window: 4 });
    expect(relativeError(noLin, ref)).toBeGreaterThan(1e-2);
    const y = hybridBlocked({ ...inp, window: T });
    expect(relativeError(await y.data(), wide)).toBeLessThan(1e-5);
    y.dispose();
  });

  it('blocked gradients equal dense gradients (q, k, v, fq, fk, gamma, state)', async () => {
    const T = 11;
    const P = 3;
    const { inp } = make(T, T + P, 7, true);
    const w = tf.tensor(Rng.seeded(8).normalArray(B * T * H * V), [B, T, H, V]);
    kept.push(w);
    const names = ['q', 'k', 'v', 'fq', 'fk', 'gamma', 'kv', 'z'] as const;
    const loss = (f: (i: HybridInputs) => tf.Tensor) => (...xs: tf.Tensor[]) => {
      const [q, k, v, fq, fk, gamma, kv, z] = xs as [tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor];
      return f({ q, k, v, fq, fk, gamma, window: 4, state: { kv, z } }).mul(w).sum();
    };
    const args = [inp.q, inp.k, inp.v, inp.fq, inp.fk, inp.gamma, inp.state!.kv, inp.state!.z];
    const gd = tf.grads(loss(hybridDense))(args);
    const gb = tf.grads(loss(hybridBlocked))(args);
    for (let i = 0; i < names.length; i++) {
      const a = await gb[i]!.data();
      const b = await gd[i]!.data();
      expect(relativeError(a, b), names[i]).toBeLessThan(1e-5);
      expect(relativeError(b, new Float32Array(b.length)), `${names[i]} has a gradient`).toBeGreaterThan(0);
      expect(Array.from(a).every(Number.isFinite), `${names[i]} is finite`).toBe(true);
    }
    tf.dispose([...gd, ...gb]);
  });

  it('dense gradients match finite differences of the float64 definition (q, fk, gamma)', async () => {
    const T = 6;
    const { inp, host } = make(T, T, 9, false);
    const wv = Rng.seeded(10).normalArray(B * T * H * V);
    const w = tf.tensor(wv, [B, T, H, V]);
    kept.push(w);
    const obj = (over: Record<string, ArrayLike<number>>) => {
      const o = hybridNaive({ ...host, ...over, dims: [B, T, T, H, D, V, F], window: 3, kv0: undefined, z0: undefined });
      return o.reduce((s, x, i) => s + x * wv[i]!, 0);
    };
    const g = tf.grads((q: tf.Tensor, fk: tf.Tensor, gamma: tf.Tensor) => hybridDense({ ...inp, q, fk, gamma, window: 3 }).mul(w).sum())([inp.q, inp.fk, inp.gamma]);
    const fdQ = finiteDifferenceGradient((x) => obj({ q: x }), host.q!);
    const fdFk = finiteDifferenceGradient((x) => obj({ fk: x }), host.fk!);
    const fdG = finiteDifferenceGradient((x) => obj({ gamma: x }), host.gamma!);
    expect(relativeError(await g[0]!.data(), fdQ)).toBeLessThan(1e-3);
    expect(relativeError(await g[1]!.data(), fdFk)).toBeLessThan(1e-3);
    expect(relativeError(await g[2]!.data(), fdG)).toBeLessThan(1e-3);
    tf.dispose(g);
  });

  it('weights are the normalized terms: rows sum to 1 without a state, and weights x v is the output', async () => {
    const T = 7;
    const { inp } = make(T, T, 11, false);
    const a = hybridWeights(inp); // [B, H, T, T]
    const rows = a.sum(-1);
    expect(Math.max(...Array.from(await rows.data(), (x) => Math.abs(x - 1)))).toBeLessThan(1e-5);
    const viaWeights = tf.tidy(() => tf.matMul(a, inp.v.transpose([0, 2, 1, 3])).transpose([0, 2, 1, 3])); // [B, T, H, V]
    const y = hybridDense(inp);
    expect(relativeError(await viaWeights.data(), await y.data())).toBeLessThan(1e-5);
    const upper = (await a.array()) as number[][][][];
    expect(upper[1]![1]![2]![5]).toBe(0); // causal
    tf.dispose([a, rows, viaWeights, y]);
  });

  it('absorbs keys into the state (sum phi_k v^T, sum phi_k), starting from zeros or a state', async () => {
    const T = 5;
    const { inp, host } = make(T, T, 12, true);
    const s = absorbIntoState(inp.fk, inp.v, 3, inp.state);
    const kv = (await s.kv.data()) as Float32Array;
    const z = (await s.z.data()) as Float32Array;
    for (let b = 0; b < B; b++) for (let h = 0; h < H; h++) for (let f = 0; f < F; f++) {
      let zz = host.z0![(b * H + h) * F + f]!;
      for (let j = 0; j < 3; j++) zz += host.fk![((b * T + j) * H + h) * F + f]!;
      expect(z[(b * H + h) * F + f]).toBeCloseTo(zz, 4);
      for (let y = 0; y < V; y++) {
        let e = host.kv0![((b * H + h) * F + f) * V + y]!;
        for (let j = 0; j < 3; j++) e += host.fk![((b * T + j) * H + h) * F + f]! * host.v![((b * T + j) * H + h) * V + y]!;
        expect(kv[((b * H + h) * F + f) * V + y]).toBeCloseTo(e, 4);
      }
    }
    const empty = absorbIntoState(inp.fk, inp.v, 0);
    expect(Array.from(await empty.z.data()).every((x) => x === 0)).toBe(true);
    tf.dispose([s.kv, s.z, empty.kv, empty.z]);
  });

  it('leaks no tensors (forward and backward of both paths)', async () => {
    const { inp } = make(9, 11, 13, true);
    const leak = await tensorLeak(() => {
      for (const f of [hybridDense, hybridBlocked]) {
        const g = tf.grads((q: tf.Tensor, fk: tf.Tensor) => f({ ...inp, q, fk }).square().sum())([inp.q, inp.fk]);
        tf.dispose(g);
      }
    });
    expect(leak).toBe(0);
  });
});
