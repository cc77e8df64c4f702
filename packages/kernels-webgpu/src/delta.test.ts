import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { TensorInfo } from '@tensorflow/tfjs-core';
import { registerFused, tf, unregisterFused } from '@tsformer/core';
import { deltaChunk, deltaChunkComposite, gatedDeltaChunk, gatedDeltaChunkComposite } from '@tsformer/ops';
import { DELTA_RECUR, DELTA_RECUR_GRAD, DELTA_SOLVE, deltaChunkKernels, deltaKernelSupported } from './delta.js';
import { randn, relRms } from './checks.js';

// Node (cpu) side of the DeltaNet kernels: the dispatch glue in @tsformer/ops deltaChunk, and the
// custom op around the kernels (its forward and its written-out backward) with the three WGSL
// kernels replaced by plain-JS reference kernels registered for cpu. The WGSL kernels themselves
// run in chromium (kernels.browser.test.ts, checkDelta).

function inputs(B: number, T: number, H: number, K: number, V: number, seed: number) {
  const l2 = (x: tf.Tensor) => x.div(x.square().sum(-1, true).sqrt()); // over K
  const q = tf.tidy(() => l2(randn([B, T, H, K], seed)));
  const k = tf.tidy(() => l2(randn([B, T, H, K], seed + 1)));
  const v = randn([B, T, H, V], seed + 2);
  const beta = tf.tidy(() => tf.sigmoid(randn([B, T, H], seed + 3)).mul(1.5)); // (0, 1.5)
  const g = tf.tidy(() => tf.softplus(randn([B, T, H], seed + 4)).mul(-0.7)); // log decay < 0
  return { q, k, v, beta, g };
}

interface CpuLike {
  data: { get(id: object): { values: Float32Array } };
  makeTensorInfo(shape: number[], dtype: 'float32', values: Float32Array): TensorInfo;
}

/** X = (I + L)^-1 per [C, C] block, by forward substitution (the spec of TsfDeltaSolve). */
function solveReference(be: CpuLike, l: TensorInfo): TensorInfo {
  const [M, C] = l.shape as [number, number, number];
  const L = be.data.get(l.dataId).values;
  const X = new Float32Array(M * C * C);
  for (let m = 0; m < M; m++) {
    const o = m * C * C;
    for (let r = 0; r < C; r++) {
      for (let j = 0; j < C; j++) {
        let x = r === j ? 1 : 0;
        for (let i = 0; i < r; i++) x -= L[o + r * C + i]! * X[o + i * C + j]!;
        X[o + r * C + j] = x;
      }
    }
  }
  return be.makeTensorInfo([M, C, C], 'float32', X);
}

/** The chunk recurrence of TsfDeltaRecur (reverse: TsfDeltaRecurGrad), as recurProgram documents it. */
function recurReference(be: CpuLike, ins: Record<string, TensorInfo>, reverse: boolean): TensorInfo[] {
  const [M, C, V] = ins.p!.shape as [number, number, number];
  const K = ins.q1!.shape[2]!;
  const BH = ins.s0!.shape[0]!;
  const N = M / BH;
  const [P, Q1, Q2, GAM, S0] = ['p', 'q1', 'q2', 'decay', 's0'].map((n) => be.data.get(ins[n]!.dataId).values) as Float32Array[];
  const R = reverse ? be.data.get(ins.r!.dataId).values : undefined;
  const Y = new Float32Array(M * C * V);
  const saved = new Float32Array(M * K * V);
  const last = new Float32Array(BH * K * V);
  for (let bh = 0; bh < BH; bh++) {
    const S = S0!.slice(bh * K * V, (bh + 1) * K * V);
    for (let step = 0; step < N; step++) {
      const m = (reverse ? N - 1 - step : step) * BH + bh;
      saved.set(S, m * K * V);
      for (let r = 0; r < C; r++) {
        for (let v = 0; v < V; v++) {
          let acc = 0;
          for (let kk = 0; kk < K; kk++) acc += Q1![(m * C + r) * K + kk]! * S[kk * V + v]!;
          Y[(m * C + r) * V + v] = P![(m * C + r) * V + v]! + (reverse ? acc : -acc);
        }
      }
      for (let kk = 0; kk < K; kk++) {
        for (let v = 0; v < V; v++) {
          let acc = 0;
          for (let r = 0; r < C; r++) acc += Q2![(m * C + r) * K + kk]! * Y[(m * C + r) * V + v]!;
          S[kk * V + v] = GAM![m]! * S[kk * V + v]! + (reverse ? -acc + R![(m * K + kk) * V + v]! : acc);
        }
      }
    }
    last.set(S, bh * K * V);
  }
  return [be.makeTensorInfo([M, C, V], 'float32', Y), be.makeTensorInfo([M, K, V], 'float32', saved), be.makeTensorInfo([BH, K, V], 'float32', last)];
}

describe('deltaChunk dispatch', () => {
  afterEach(() => unregisterFused('deltaChunk', 'cpu'));

  it('runs the composite bit for bit when no fused form is registered for the backend', async () => {
    const { q, k, v, beta, g } = inputs(1, 21, 2, 8, 4, 1);
    const pairs = [
      [deltaChunk(q, k, v, beta, { chunkSize: 8 }), deltaChunkComposite(q, k, v, beta, { chunkSize: 8 })],
      [gatedDeltaChunk(q, k, v, beta, g, { chunkSize: 8 }), gatedDeltaChunkComposite(q, k, v, beta, g, { chunkSize: 8 })],
    ];
    for (const [a, b] of pairs) {
      expect(Array.from(await a!.o.data())).toEqual(Array.from(await b!.o.data()));
      expect(Array.from(await a!.finalState.data())).toEqual(Array.from(await b!.finalState.data()));
    }
    tf.dispose([q, k, v, beta, g, ...pairs.flatMap(([a, b]) => [a!.o, a!.finalState, b!.o, b!.finalState])]);
  });

  it('returns the fused form when it takes the inputs, the composite when it answers undefined', async () => {
    const { q, k, v, beta, g } = inputs(1, 9, 1, 4, 4, 2);
    const s0 = randn([1, 1, 4, 4], 3);
    const seen: Array<{ gated: boolean; scale: number; chunkSize: number; initial: boolean }> = [];
    let answer: 'take' | 'decline' = 'take';
    registerFused(
      'deltaChunk',
      (qq, _k, _v, _b, gg, o) => {
        seen.push({ gated: gg !== undefined, scale: o.scale, chunkSize: o.chunkSize, initial: o.initialState !== undefined });
        return answer === 'take' ? { o: tf.zerosLike(qq), finalState: tf.zeros([1, 1, 4, 4]) } : undefined;
      },
      'cpu',
    );
    const taken = gatedDeltaChunk(q, k, v, beta, g, { initialState: s0, chunkSize: 16 });
    expect((await taken.o.abs().sum().data())[0]).toBe(0);
    answer = 'decline';
    const declined = deltaChunk(q, k, v, beta, { scale: 0.3 });
    const want = deltaChunkComposite(q, k, v, beta, { scale: 0.3 });
    expect(await relRms(declined.o, want.o)).toBe(0);
    expect(await relRms(declined.finalState, want.finalState)).toBe(0);
    expect(seen).toEqual([
      { gated: true, scale: 0.5, chunkSize: 16, initial: true },
      { gated: false, scale: 0.3, chunkSize: 64, initial: false },
    ]);
    tf.dispose([q, k, v, beta, g, s0, taken.o, taken.finalState, declined.o, declined.finalState, want.o, want.finalState]);
  });

  it('takes key and value widths 1..128', () => {
    expect(deltaKernelSupported(128, 128)).toBe(true);
    expect(deltaKernelSupported(1, 64)).toBe(true);
    expect(deltaKernelSupported(129, 64)).toBe(false);
    expect(deltaKernelSupported(64, 0)).toBe(false);
  });
});

describe('the custom op around the kernels (reference kernels on cpu)', () => {
  beforeAll(() => {
    const cpu = (f: (be: CpuLike, ins: Record<string, TensorInfo>) => TensorInfo | TensorInfo[]) => ({ inputs, backend }: { inputs: object; backend: unknown }) =>
      f(backend as CpuLike, inputs as Record<string, TensorInfo>);
    tf.registerKernel({ kernelName: DELTA_SOLVE, backendName: 'cpu', kernelFunc: cpu((be, ins) => solveReference(be, ins.l!)) });
    tf.registerKernel({ kernelName: DELTA_RECUR, backendName: 'cpu', kernelFunc: cpu((be, ins) => recurReference(be, ins, false)) });
    tf.registerKernel({ kernelName: DELTA_RECUR_GRAD, backendName: 'cpu', kernelFunc: cpu((be, ins) => recurReference(be, ins, true)) });
  });
  afterAll(() => {
    for (const name of [DELTA_SOLVE, DELTA_RECUR, DELTA_RECUR_GRAD]) tf.unregisterKernel(name, 'cpu');
  });

  for (const gated of [false, true]) {
    it(`${gated ? 'Gated DeltaNet' : 'DeltaNet'}: o, the final state and every gradient match the composite (ragged T, initial state)`, async () => {
      const [B, T, H, K, V] = [2, 21, 2, 6, 5];
      const { q, k, v, beta, g } = inputs(B, T, H, K, V, 11);
      const s0 = randn([B, H, K, V], 12);
      const wo = randn([B, T, H, V], 13);
      const ws = randn([B, H, K, V], 14);
      const xs = gated ? [q, k, v, beta, g, s0] : [q, k, v, beta, s0];
      const run = (composite: boolean) => (...a: tf.Tensor[]) => {
        const [qq, kk, vv, bb] = a as [tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor];
        const gg = gated ? a[4] : undefined;
        const init = a[a.length - 1]!;
        if (!composite) return deltaChunkKernels(qq, kk, vv, bb, gg, { scale: 0.7, chunkSize: 8, initialState: init });
        return gg
          ? gatedDeltaChunkComposite(qq, kk, vv, bb, gg, { scale: 0.7, chunkSize: 8, initialState: init })
          : deltaChunkComposite(qq, kk, vv, bb, { scale: 0.7, chunkSize: 8, initialState: init });
      };
      const got = run(false)(...xs);
      const want = run(true)(...xs);
      expect(await relRms(got.o, want.o)).toBeLessThan(1e-5);
      expect(await relRms(got.finalState, want.finalState)).toBeLessThan(1e-5);
      tf.dispose([got.o, got.finalState, want.o, want.finalState]);
      const loss = (composite: boolean) => (...a: tf.Tensor[]) => {
        const r = run(composite)(...a);
        return tf.add(tf.sum(tf.mul(r.o, wo)), tf.sum(tf.mul(r.finalState, ws))) as tf.Scalar;
      };
      tf.dispose(tf.grads(loss(false))(xs)); // warm-up, then no tensor may be left behind
      const before = tf.memory().numTensors;
      const gk = tf.grads(loss(false))(xs);
      const gc = tf.grads(loss(true))(xs);
      for (let i = 0; i < xs.length; i++) expect(await relRms(gk[i]!, gc[i]!), `gradient ${i}`).toBeLessThan(1e-5);
      tf.dispose([...gk, ...gc]);
      expect(tf.memory().numTensors).toBe(before);
      tf.dispose([...xs, g, wo, ws]);
    });
  }
});
