import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Rng, relativeError, selectBackend, tensorLeak, tf } from '@tsformer/core';
import {
  deltaChunk,
  deltaHost,
  deltaNaive,
  deltaRecurrent,
  deltaStep,
  gatedDeltaChunk,
  gatedDeltaNaive,
  gatedDeltaRecurrent,
  gatedDeltaStep,
  type DeltaDims,
  type DeltaResult,
} from './index.js';

/** One draw of inputs: host copies (float32 values) and the same values as tensors. */
interface Draw {
  dims: DeltaDims;
  host: { q: Float32Array; k: Float32Array; v: Float32Array; beta: Float32Array; g?: Float32Array; s0: Float32Array };
  /** q, k, v, beta, (g,) initialState: the differentiable inputs, in this order. */
  inputs: tf.Tensor[];
  gated: boolean;
}

interface DrawSpec {
  dims: DeltaDims;
  gated: boolean;
  /** beta = betaMax * sigmoid(z): 1 for (0, 1), 2 for (0, 2) (negative eigenvalues allowed). */
  betaMax?: number;
  /** Maps a standard normal draw to g. Default -softplus(1.5 z - 1). */
  gate?: (z: number) => number;
  seed: number;
}

const drawn: Draw[] = [];
afterAll(() => drawn.forEach((d) => tf.dispose(d.inputs)));

/** L2-normalized q, k; beta = betaMax * sigmoid(z); g = -softplus(z) with a spread of decay rates. */
function draw({ dims, gated, betaMax = 1, gate = (z) => -Math.log1p(Math.exp(1.5 * z - 1)), seed }: DrawSpec): Draw {
  const { B, T, H, K, V } = dims;
  const rng = Rng.seeded(seed);
  const unitRows = (n: number, d: number): Float32Array => {
    const x = rng.normalArray(n * d);
    for (let r = 0; r < n; r++) {
      let norm = 0;
      for (let i = 0; i < d; i++) norm += x[r * d + i]! ** 2;
      for (let i = 0; i < d; i++) x[r * d + i] = x[r * d + i]! / Math.sqrt(norm);
    }
    return x;
  };
  const rows = B * T * H;
  const host = {
    q: unitRows(rows, K),
    k: unitRows(rows, K),
    v: rng.normalArray(rows * V),
    beta: rng.normalArray(rows).map((z) => betaMax / (1 + Math.exp(-z))),
    g: gated ? rng.normalArray(rows).map(gate) : undefined,
    s0: rng.normalArray(B * H * K * V, 0.5),
  };
  const inputs = [
    tf.tensor(host.q, [B, T, H, K]),
    tf.tensor(host.k, [B, T, H, K]),
    tf.tensor(host.v, [B, T, H, V]),
    tf.tensor(host.beta, [B, T, H]),
    ...(host.g ? [tf.tensor(host.g, [B, T, H])] : []),
    tf.tensor(host.s0, [B, H, K, V]),
  ];
  const d = { dims, host, inputs, gated };
  drawn.push(d);
  return d;
}

type Impl = 'naive' | 'recurrent' | { chunk: number };

/** Runs one implementation on inputs in `Draw.inputs` order (the last one is the initial state). */
function call(impl: Impl, gated: boolean, xs: tf.Tensor[], initial = true): DeltaResult {
  const [q, k, v, beta] = xs as [tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor];
  const g = gated ? xs[4]! : undefined;
  const opts = { initialState: initial ? xs[xs.length - 1]! : undefined };
  if (impl === 'naive') return g ? gatedDeltaNaive(q, k, v, beta, g, opts) : deltaNaive(q, k, v, beta, opts);
  if (impl === 'recurrent') return g ? gatedDeltaRecurrent(q, k, v, beta, g, opts) : deltaRecurrent(q, k, v, beta, opts);
  const chunk = { ...opts, chunkSize: impl.chunk };
  return g ? gatedDeltaChunk(q, k, v, beta, g, chunk) : deltaChunk(q, k, v, beta, chunk);
}

interface Evaluated {
  o: Float32Array;
  finalState: Float32Array;
  /** d loss / d each input, in `Draw.inputs` order. */
  grads: Float32Array[];
}

/** Outputs, and the gradients of a random linear loss on o and the final state. */
async function evaluate(impl: Impl, d: Draw): Promise<Evaluated> {
  const r = call(impl, d.gated, d.inputs);
  const o = (await r.o.data()) as Float32Array;
  const finalState = (await r.finalState.data()) as Float32Array;
  const rng = Rng.seeded(99);
  const wO = tf.tensor(rng.normalArray(r.o.size), r.o.shape);
  const wS = tf.tensor(rng.normalArray(r.finalState.size), r.finalState.shape);
  tf.dispose([r.o, r.finalState]);
  const grads = tf.grads((...xs: tf.Tensor[]) => {
    const y = call(impl, d.gated, xs);
    return y.o.mul(wO).sum().add(y.finalState.mul(wS).sum());
  })(d.inputs);
  const out = { o, finalState, grads: await Promise.all(grads.map(async (t) => (await t.data()) as Float32Array)) };
  tf.dispose([wO, wS, ...grads]);
  return out;
}

const NAMES = ['q', 'k', 'v', 'beta', 'g', 'initialState'];
const inputNames = (gated: boolean) => (gated ? NAMES : NAMES.filter((n) => n !== 'g'));

function expectClose(got: Evaluated, ref: Evaluated, tol: number, gated: boolean): void {
  expect(relativeError(got.o, ref.o), 'o').toBeLessThan(tol);
  expect(relativeError(got.finalState, ref.finalState), 'finalState').toBeLessThan(tol);
  const names = inputNames(gated);
  expect(got.grads.length).toBe(names.length);
  got.grads.forEach((gr, i) => expect(relativeError(gr, ref.grads[i]!), `d${names[i]}`).toBeLessThan(tol));
}

/** Slices tokens [from, to) of a [B, T, ...] tensor. */
const tokens = (x: tf.Tensor, from: number, to: number): tf.Tensor =>
  x.slice([0, from, ...x.shape.slice(2).map(() => 0)], [x.shape[0]!, to - from, ...x.shape.slice(2)]);

beforeAll(() => selectBackend('cpu'));

describe.each([
  { name: 'DeltaNet', gated: false },
  { name: 'Gated DeltaNet', gated: true },
])('$name', ({ gated }) => {
  it('naive (tfjs, float32) matches the float64 host recurrence, beta in (0, 2)', async () => {
    const d = draw({ dims: { B: 2, T: 37, H: 2, K: 8, V: 12 }, gated, betaMax: 2, seed: 1 });
    const ref = deltaHost(d.dims, { ...d.host, initialState: d.host.s0 });
    const r = call('naive', gated, d.inputs);
    expect(relativeError((await r.o.data()) as Float32Array, ref.o)).toBeLessThan(1e-5);
    expect(relativeError((await r.finalState.data()) as Float32Array, ref.finalState)).toBeLessThan(1e-5);
    tf.dispose([r.o, r.finalState]);
  });

  it.each([
    { C: 64, T: 150, K: 16, V: 8, betaMax: 1 },
    { C: 64, T: 150, K: 8, V: 16, betaMax: 2 },
    { C: 16, T: 150, K: 16, V: 16, betaMax: 1 },
    { C: 16, T: 43, K: 8, V: 8, betaMax: 2 },
  ])('chunked (C = $C, T = $T, K = $K, V = $V, beta < $betaMax) matches naive in outputs and gradients', async ({ C, T, K, V, betaMax }) => {
    const d = draw({ dims: { B: 2, T, H: 2, K, V }, gated, betaMax, seed: 10 + C + T + betaMax });
    const ref = await evaluate('naive', d);
    expectClose(await evaluate({ chunk: C }, d), ref, 1e-4, gated);
    // and the float32 reference itself against float64
    const host = deltaHost(d.dims, { ...d.host, initialState: d.host.s0 });
    expect(relativeError(ref.o, host.o)).toBeLessThan(1e-5);
  });

  if (gated) {
    it.each([0.01, 0.1, 1, 10])('chunked matches naive in outputs and gradients with log gates logsigmoid(z) / %s', async (normalizer) => {
      const gate = (z: number) => -Math.log1p(Math.exp(-z)) / normalizer; // logsigmoid(z) / normalizer
      const d = draw({ dims: { B: 1, T: 48, H: 2, K: 8, V: 8 }, gated, betaMax: 2, gate, seed: 20 + Math.round(100 * normalizer) });
      expectClose(await evaluate({ chunk: 16 }, d), await evaluate('naive', d), 1e-4, gated);
    });
  }

  it('recurrent matches naive in outputs and gradients', async () => {
    const d = draw({ dims: { B: 2, T: 40, H: 2, K: 16, V: 8 }, gated, betaMax: 2, seed: 3 });
    expectClose(await evaluate('recurrent', d), await evaluate('naive', d), 1e-5, gated);
  });

  it('passes state: two halves with the carried state equal the whole, for chunked and recurrent', async () => {
    const d = draw({ dims: { B: 2, T: 90, H: 2, K: 8, V: 8 }, gated, seed: 4 });
    for (const impl of [{ chunk: 16 }, 'recurrent'] as Impl[]) {
      const whole = call(impl, gated, d.inputs);
      const half = (from: number, to: number) => d.inputs.slice(0, -1).map((x) => tokens(x, from, to));
      const first = half(0, 37);
      const a = call(impl, gated, [...first, d.inputs.at(-1)!]);
      const second = half(37, 90);
      const b = call(impl, gated, [...second, a.finalState]);
      const joined = tf.concat([a.o, b.o], 1);
      expect(relativeError((await joined.data()) as Float32Array, (await whole.o.data()) as Float32Array)).toBeLessThan(1e-5);
      expect(relativeError((await b.finalState.data()) as Float32Array, (await whole.finalState.data()) as Float32Array)).toBeLessThan(1e-5);
      tf.dispose([whole.o, whole.finalState, a.o, a.finalState, b.o, b.finalState, joined, ...first, ...second]);
    }
  });

  it('starts from zeros without an initial state, also with a chunk longer than the sequence', async () => {
    const d = draw({ dims: { B: 1, T: 20, H: 2, K: 8, V: 8 }, gated, seed: 5 });
    const ref = deltaHost(d.dims, d.host);
    // chunk 64 > T: one unpadded chunk of 20 rows (a single-level solve)
    for (const impl of ['naive', 'recurrent', { chunk: 16 }, { chunk: 64 }] as Impl[]) {
      const r = call(impl, gated, d.inputs, false);
      expect(relativeError((await r.o.data()) as Float32Array, ref.o)).toBeLessThan(1e-4);
      expect(relativeError((await r.finalState.data()) as Float32Array, ref.finalState)).toBeLessThan(1e-4);
      tf.dispose([r.o, r.finalState]);
    }
  });

  it('decodes token by token (step) exactly as the chunked forward', async () => {
    const d = draw({ dims: { B: 2, T: 30, H: 2, K: 8, V: 8 }, gated, seed: 6 });
    const whole = call({ chunk: 16 }, gated, d.inputs);
    const prompt = d.inputs.slice(0, -1).map((x) => tokens(x, 0, 20));
    const prefill = call({ chunk: 16 }, gated, [...prompt, d.inputs.at(-1)!]);
    let state = prefill.finalState;
    const outs = [prefill.o];
    for (let t = 20; t < 30; t++) {
      const [q, k, v, beta, g] = d.inputs.slice(0, -1).map((x) => tf.tidy(() => tokens(x, t, t + 1).squeeze([1])));
      const r = gated ? gatedDeltaStep(q!, k!, v!, beta!, g!, { initialState: state }) : deltaStep(q!, k!, v!, beta!, { initialState: state });
      expect(r.o.shape).toEqual([2, 2, 8]);
      outs.push(r.o.expandDims(1));
      tf.dispose([state, r.o, q!, k!, v!, beta!, ...(g ? [g] : [])]);
      state = r.finalState;
    }
    const joined = tf.concat(outs, 1);
    expect(relativeError((await joined.data()) as Float32Array, (await whole.o.data()) as Float32Array)).toBeLessThan(1e-5);
    expect(relativeError((await state.data()) as Float32Array, (await whole.finalState.data()) as Float32Array)).toBeLessThan(1e-5);
    tf.dispose([whole.o, whole.finalState, state, joined, ...outs, ...prompt]);
  });

  it('is causal: changing tokens from t0 on leaves earlier outputs unchanged', async () => {
    const d = draw({ dims: { B: 1, T: 40, H: 2, K: 8, V: 8 }, gated, seed: 7 });
    const t0 = 23; // inside the second chunk of 16
    const e = draw({ dims: { B: 1, T: 40, H: 2, K: 8, V: 8 }, gated, seed: 8 });
    // d's tokens before t0, e's from t0 on
    const mixed = d.inputs.slice(0, -1).map((x, i) => tf.concat([tokens(x, 0, t0), tokens(e.inputs[i]!, t0, 40)], 1));
    for (const impl of ['naive', 'recurrent', { chunk: 16 }] as Impl[]) {
      const a = call(impl, gated, d.inputs);
      const b = call(impl, gated, [...mixed, d.inputs.at(-1)!]);
      const [aBefore, bBefore, aAfter, bAfter] = [tokens(a.o, 0, t0), tokens(b.o, 0, t0), tokens(a.o, t0, 40), tokens(b.o, t0, 40)];
      expect(relativeError((await bBefore.data()) as Float32Array, (await aBefore.data()) as Float32Array)).toBeLessThan(1e-7);
      expect(relativeError((await bAfter.data()) as Float32Array, (await aAfter.data()) as Float32Array)).toBeGreaterThan(0.1);
      tf.dispose([a.o, a.finalState, b.o, b.finalState, aBefore, bBefore, aAfter, bAfter]);
    }
    tf.dispose(mixed);
  });
});

describe('delta ops', () => {
  it('gated chunked stays finite and matches naive under extreme decays (g down to -40)', async () => {
    const d = draw({ dims: { B: 1, T: 70, H: 2, K: 8, V: 8 }, gated: true, gate: (z) => -40 * Math.min(1, z * z), seed: 11 });
    const ref = await evaluate('naive', d);
    const got = await evaluate({ chunk: 64 }, d);
    expect([got.o, got.finalState, ...got.grads].every((a) => a.every(Number.isFinite))).toBe(true);
    expectClose(got, ref, 1e-4, true);
  });

  it('leak no tensors, forward or backward', async () => {
    for (const gated of [false, true]) {
      const d = draw({ dims: { B: 1, T: 20, H: 2, K: 8, V: 8 }, gated, seed: 9 });
      for (const impl of ['naive', 'recurrent', { chunk: 16 }, { chunk: 64 }] as Impl[]) {
        const leaked = await tensorLeak(() => {
          const r = call(impl, gated, d.inputs);
          tf.dispose([r.o, r.finalState]);
          const grads = tf.grads((...xs: tf.Tensor[]) => {
            const y = call(impl, gated, xs);
            return y.o.sum().add(y.finalState.sum());
          })(d.inputs);
          tf.dispose(grads);
        });
        expect(leaked, JSON.stringify({ impl, gated })).toBe(0);
      }
      const [q, k, v, beta, g] = d.inputs.slice(0, -1).map((x) => tf.tidy(() => tokens(x, 0, 1).squeeze([1]))); // [B, H, *]
      const state = d.inputs.at(-1)!;
      const steps = await tensorLeak(() => {
        const r = g
          ? gatedDeltaStep(q!, k!, v!, beta!, g, { initialState: state })
          : deltaStep(q!, k!, v!, beta!, { initialState: state });
        tf.dispose([r.o, r.finalState]);
      });
      expect(steps).toBe(0);
      tf.dispose([q!, k!, v!, beta!, ...(g ? [g] : [])]);
    }
  });

  it('rejects inconsistent shapes and bad options with errors naming the tensor', () => {
    const q = tf.zeros([1, 5, 2, 8]);
    const v = tf.zeros([1, 5, 2, 4]);
    const beta = tf.zeros([1, 5, 2]);
    expect(() => deltaChunk(q, q, v, tf.zeros([1, 5, 3]))).toThrow(/deltaChunk beta: expected shape \[B, T, H\], got \[1, 5, 3\]/);
    expect(() => gatedDeltaNaive(q, q, v, beta, tf.zeros([1, 4, 2]))).toThrow(/gatedDeltaNaive g/);
    expect(() => deltaRecurrent(q, q, v, beta, { initialState: tf.zeros([1, 2, 4, 8]) })).toThrow(/deltaRecurrent initialState: .*dimension 2 \(K\) is 4, not 8/);
    expect(() => deltaChunk(q, q, v, beta, { chunkSize: 0 })).toThrow(/chunkSize must be a positive integer/);
    expect(() => deltaStep(q, q, v, beta)).toThrow(/deltaStep q: expected shape \[B, H, K\]/);
    tf.dispose([q, v, beta]);
  });
});

describe('on the wasm backend', () => {
  beforeAll(() => selectBackend('wasm'));
  afterAll(() => selectBackend('cpu'));

  it.each([false, true])('chunked matches naive (gated: %s)', async (gated) => {
    const d = draw({ dims: { B: 2, T: 70, H: 2, K: 16, V: 8 }, gated, betaMax: 2, seed: 12 });
    // inputs were made on cpu; tfjs moves them on first use
    expectClose(await evaluate({ chunk: 32 }, d), await evaluate('naive', d), 1e-4, gated);
    expectClose(await evaluate('recurrent', d), await evaluate('naive', d), 1e-5, gated);
  });
});
