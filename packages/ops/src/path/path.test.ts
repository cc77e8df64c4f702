import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Rng, relativeError, selectBackend, tensorLeak, tf } from '@tsformer/core';
import { disposePathState, pathBlockwise, pathDecodeStep, pathHost, pathNaive, type PathDims, type PathResult, type PathState } from './index.js';

/** One draw of inputs: host copies (float32 values) and the same values as tensors. */
interface Draw {
  dims: PathDims;
  host: { q: Float32Array; k: Float32Array; v: Float32Array; w: Float32Array; beta: Float32Array; g?: Float32Array };
  /** q, k, v, w, beta (, g): the differentiable inputs, in this order. */
  inputs: tf.Tensor[];
  gated: boolean;
}

const drawn: Draw[] = [];
afterAll(() => drawn.forEach((d) => tf.dispose(d.inputs)));

/**
 * q, k ~ N(0, qkStd^2) (logits of order one and more), unit-norm w, beta = 2 sigmoid(z) in (0, 2),
 * log f = logsigmoid(1.5 z + 2) (mostly near 0, some strong forgetting).
 */
function draw(dims: PathDims, gated: boolean, seed: number, qkStd = 1.5, wSpread = 1): Draw {
  const { B, T, H, D, V } = dims;
  const rng = Rng.seeded(seed);
  const rows = B * T * H;
  // wSpread < 1: every w is a shared direction plus wSpread times noise (nearly collinear transforms)
  const shared = rng.normalArray(D);
  const w = rng.normalArray(rows * D).map((z, i) => (wSpread < 1 ? shared[i % D]! : 0) + wSpread * z);
  for (let r = 0; r < rows; r++) {
    let norm = 0;
    for (let i = 0; i < D; i++) norm += w[r * D + i]! ** 2;
    for (let i = 0; i < D; i++) w[r * D + i] = w[r * D + i]! / Math.sqrt(norm);
  }
  const host = {
    q: rng.normalArray(rows * D, qkStd),
    k: rng.normalArray(rows * D, qkStd),
    v: rng.normalArray(rows * V),
    w,
    beta: rng.normalArray(rows).map((z) => 2 / (1 + Math.exp(-z))),
    g: gated ? rng.normalArray(rows).map((z) => -Math.log1p(Math.exp(-(1.5 * z + 2)))) : undefined,
  };
  const inputs = [
    tf.tensor(host.q, [B, T, H, D]),
    tf.tensor(host.k, [B, T, H, D]),
    tf.tensor(host.v, [B, T, H, V]),
    tf.tensor(host.w, [B, T, H, D]),
    tf.tensor(host.beta, [B, T, H]),
    ...(host.g ? [tf.tensor(host.g, [B, T, H])] : []),
  ];
  const d = { dims, host, inputs, gated };
  drawn.push(d);
  return d;
}

type Impl = 'naive' | { block: number };

function call(impl: Impl, xs: tf.Tensor[]): PathResult {
  const [q, k, v, w, beta, g] = xs as [tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor | undefined];
  const opts = g ? { g } : {};
  return impl === 'naive' ? pathNaive(q, k, v, w, beta, opts) : pathBlockwise(q, k, v, w, beta, { ...opts, blockSize: impl.block });
}

interface Evaluated {
  o: Float32Array;
  /** d loss / d each input, in `Draw.inputs` order. */
  grads: Float32Array[];
}

/** Outputs, and the gradients of a random linear loss on o. */
async function evaluate(impl: Impl, d: Draw): Promise<Evaluated> {
  const r = call(impl, d.inputs);
  const o = (await r.o.data()) as Float32Array;
  const wO = tf.tensor(Rng.seeded(99).normalArray(r.o.size), r.o.shape);
  r.o.dispose();
  const grads = tf.grads((...xs: tf.Tensor[]) => call(impl, xs).o.mul(wO).sum())(d.inputs);
  const out = { o, grads: await Promise.all(grads.map(async (t) => (await t.data()) as Float32Array)) };
  tf.dispose([wO, ...grads]);
  return out;
}

const NAMES = ['q', 'k', 'v', 'w', 'beta', 'g'];

function expectClose(got: Evaluated, ref: Evaluated, tol: number): void {
  expect(relativeError(got.o, ref.o), 'o').toBeLessThan(tol);
  got.grads.forEach((gr, i) => {
    expect(relativeError(gr, ref.grads[i]!), `d${NAMES[i]}`).toBeLessThan(tol);
    expect(relativeError(ref.grads[i]!, new Float32Array(gr.length)), `d${NAMES[i]} is not zero`).toBeGreaterThan(0.5);
  });
  expect(got.grads.length).toBe(ref.grads.length);
}

/** Slices tokens [from, to) of a [B, T, ...] tensor. */
const tokens = (x: tf.Tensor, from: number, to: number): tf.Tensor =>
  x.slice([0, from, ...x.shape.slice(2).map(() => 0)], [x.shape[0]!, to - from, ...x.shape.slice(2)]);

/** Token t of each input as the decode step wants it: [B, H, *]. */
const tokenAt = (xs: tf.Tensor[], t: number): tf.Tensor[] => xs.map((x) => tf.tidy(() => tokens(x, t, t + 1).squeeze([1])));

/** Decodes tokens [from, to) one at a time from `state`; returns the outputs [B, to-from, H, V] and the final state. */
function decodeSteps(xs: tf.Tensor[], from: number, to: number, state: PathState | undefined): { o: tf.Tensor; state: PathState } {
  const outs: tf.Tensor[] = [];
  for (let t = from; t < to; t++) {
    const [q, k, v, w, beta, g] = tokenAt(xs, t);
    const r = pathDecodeStep(q!, k!, v!, w!, beta!, { past: state, ...(g ? { g } : {}) });
    disposePathState(state);
    tf.dispose([q!, k!, v!, w!, beta!, ...(g ? [g] : [])]);
    state = r.state;
    outs.push(r.o);
  }
  const o = tf.stack(outs, 1); // [B, n, H, V]
  tf.dispose(outs);
  return { o, state: state! };
}

beforeAll(() => selectBackend('cpu'));

describe.each([
  { name: 'PaTH', gated: false },
  { name: 'PaTH-FoX', gated: true },
])('$name', ({ gated }) => {
  it('naive (tfjs, float32) matches the float64 definition', async () => {
    const d = draw({ B: 2, T: 23, H: 2, D: 8, V: 6 }, gated, 1);
    const ref = pathHost(d.dims, d.host);
    const r = call('naive', d.inputs);
    expect(relativeError((await r.o.data()) as Float32Array, ref)).toBeLessThan(1e-5);
    r.o.dispose();
  });

  it.each([
    { C: 16, T: 64, D: 16, V: 8 },
    { C: 16, T: 45, D: 8, V: 8 },
    { C: 8, T: 29, D: 8, V: 12 },
    { C: 64, T: 40, D: 16, V: 8 },
    { C: 12, T: 37, D: 8, V: 8 },
  ])('blockwise (C = $C, T = $T, D = $D, V = $V) matches naive in outputs and gradients', async ({ C, T, D, V }) => {
    const d = draw({ B: 2, T, H: 2, D, V }, gated, 10 + C + T);
    const ref = await evaluate('naive', d);
    expectClose(await evaluate({ block: C }, d), ref, 1e-4);
    expect(relativeError(ref.o, pathHost(d.dims, d.host))).toBeLessThan(1e-5);
  });

  it('decodes token by token exactly as the definition, and prefill + decode equals the whole', async () => {
    const d = draw({ B: 2, T: 30, H: 2, D: 8, V: 8 }, gated, 3);
    const ref = pathHost(d.dims, d.host);
    const all = decodeSteps(d.inputs, 0, 30, undefined);
    expect(relativeError((await all.o.data()) as Float32Array, ref)).toBeLessThan(1e-5);
    // prefill 19 tokens blockwise (ragged blocks of 8), then decode the rest
    const prompt = d.inputs.map((x) => tokens(x, 0, 19));
    const [q, k, v, w, beta, g] = prompt as [tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor | undefined];
    const pre = pathBlockwise(q, k, v, w, beta, { blockSize: 8, outputState: true, ...(g ? { g } : {}) });
    expect(pre.state!.keys.shape).toEqual([2, 2, 19, 8]);
    expect(pre.state!.values.shape).toEqual([2, 2, 19, 8]);
    if (gated) expect(pre.state!.logGates!.shape).toEqual([2, 2, 19]);
    else expect(pre.state!.logGates).toBeUndefined();
    // the prefill's keys are the step-by-step keys after token 18
    const stepped = decodeSteps(d.inputs, 0, 19, undefined);
    expect(relativeError(await pre.state!.keys.data(), await stepped.state.keys.data())).toBeLessThan(1e-5);
    if (gated) expect(relativeError(await pre.state!.logGates!.data(), await stepped.state.logGates!.data())).toBeLessThan(1e-5);
    const rest = decodeSteps(d.inputs, 19, 30, pre.state);
    const joined = tf.concat([pre.o, rest.o], 1);
    expect(relativeError((await joined.data()) as Float32Array, ref)).toBeLessThan(1e-5);
    expect(relativeError(await rest.state.keys.data(), await all.state.keys.data())).toBeLessThan(1e-5);
    tf.dispose([all.o, pre.o, rest.o, joined, stepped.o, ...prompt]);
    [all.state, rest.state, stepped.state].forEach(disposePathState);
  });

  it('passes state: blockwise over two pieces with the carried state equals the whole, in outputs and gradients', async () => {
    const d = draw({ B: 1, T: 41, H: 2, D: 8, V: 8 }, gated, 4);
    const split = (xs: tf.Tensor[]): tf.Tensor => {
      const [first, second] = [xs.map((x) => tokens(x, 0, 17)), xs.map((x) => tokens(x, 17, 41))];
      const [q1, k1, v1, w1, b1, g1] = first as [tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor | undefined];
      const a = pathBlockwise(q1, k1, v1, w1, b1, { blockSize: 8, outputState: true, ...(g1 ? { g: g1 } : {}) });
      const [q2, k2, v2, w2, b2, g2] = second as [tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor | undefined];
      const b = pathBlockwise(q2, k2, v2, w2, b2, { blockSize: 8, past: a.state!, ...(g2 ? { g: g2 } : {}) });
      return tf.concat([a.o, b.o], 1);
    };
    const wO = tf.tensor(Rng.seeded(99).normalArray(41 * 2 * 8), [1, 41, 2, 8]); // the weights `evaluate` uses
    const whole = await evaluate('naive', d);
    const o = tf.tidy(() => split(d.inputs));
    expect(relativeError((await o.data()) as Float32Array, whole.o)).toBeLessThan(1e-4);
    const grads = tf.grads((...xs: tf.Tensor[]) => split(xs).mul(wO).sum())(d.inputs);
    for (let i = 0; i < grads.length; i++) expect(relativeError(await grads[i]!.data(), whole.grads[i]!), `d${NAMES[i]}`).toBeLessThan(1e-4);
    tf.dispose([wO, o, ...grads]);
  });

  it('is causal: changing tokens from t0 on leaves earlier outputs unchanged', async () => {
    const d = draw({ B: 1, T: 40, H: 2, D: 8, V: 8 }, gated, 7);
    const e = draw({ B: 1, T: 40, H: 2, D: 8, V: 8 }, gated, 8);
    const t0 = 21; // inside the third block of 8
    const mixed = d.inputs.map((x, i) => tf.concat([tokens(x, 0, t0), tokens(e.inputs[i]!, t0, 40)], 1));
    for (const impl of ['naive', { block: 8 }] as Impl[]) {
      const a = call(impl, d.inputs).o;
      const b = call(impl, mixed).o;
      const [aBefore, bBefore, aAfter, bAfter] = [tokens(a, 0, t0), tokens(b, 0, t0), tokens(a, t0, 40), tokens(b, t0, 40)];
      expect(relativeError((await bBefore.data()) as Float32Array, (await aBefore.data()) as Float32Array)).toBeLessThan(1e-7);
      expect(relativeError((await bAfter.data()) as Float32Array, (await aAfter.data()) as Float32Array)).toBeGreaterThan(0.1);
      tf.dispose([a, b, aBefore, bBefore, aAfter, bAfter]);
    }
    tf.dispose(mixed);
  });
});

describe('path ops', () => {
  it('the transforms matter: with beta = 0 (H = I) PaTH is causal softmax attention, otherwise not', async () => {
    const d = draw({ B: 1, T: 20, H: 2, D: 8, V: 8 }, false, 12);
    const [q, k, v, w, beta] = d.inputs as [tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor];
    const plain = tf.tidy(() => {
      const s = tf.einsum('bihd,bjhd->bhij', q, k).div(Math.sqrt(8)); // [B, H, T, T]
      const mask = tf.linalg.bandPart(tf.ones([20, 20]), -1, 0);
      const p = tf.softmax(s.add(tf.onesLike(mask).sub(mask).mul(-1e9)));
      return tf.einsum('bhij,bjhd->bihd', p, v); // [B, T, H, V]
    });
    const zero = tf.zerosLike(beta);
    for (const impl of ['naive', { block: 8 }] as Impl[]) {
      const r0 = call(impl, [q, k, v, w, zero]).o;
      const r1 = call(impl, [q, k, v, w, beta]).o;
      expect(relativeError(await r0.data(), await plain.data())).toBeLessThan(1e-5);
      expect(relativeError(await r1.data(), await plain.data())).toBeGreaterThan(0.05);
      tf.dispose([r0, r1]);
    }
    tf.dispose([plain, zero]);
  });

  it('blockwise stays accurate with nearly collinear w and beta near 2 (long reflection chains)', async () => {
    const d = draw({ B: 1, T: 70, H: 2, D: 8, V: 8 }, false, 14, 1.5, 0.05);
    for (let i = 0; i < d.host.beta.length; i++) d.host.beta[i] = 1.9 + 0.099 * Math.sin(i);
    const beta = tf.tensor(d.host.beta, [1, 70, 2]);
    d.inputs[4]!.dispose();
    d.inputs[4] = beta;
    const ref = await evaluate('naive', d);
    expectClose(await evaluate({ block: 32 }, d), ref, 1e-4);
    expect(relativeError(ref.o, pathHost(d.dims, d.host))).toBeLessThan(1e-4);
  });

  it('blockwise stays accurate over a longer sequence with the default block (T = 150, C = 64)', async () => {
    const d = draw({ B: 1, T: 150, H: 1, D: 16, V: 8 }, true, 13);
    const r = call({ block: 64 }, d.inputs);
    expect(relativeError((await r.o.data()) as Float32Array, pathHost(d.dims, d.host))).toBeLessThan(1e-4);
    r.o.dispose();
  });

  it('leaks no tensors, forward or backward, blockwise, naive and decode', async () => {
    for (const gated of [false, true]) {
      const d = draw({ B: 1, T: 20, H: 2, D: 8, V: 8 }, gated, 9);
      for (const impl of ['naive', { block: 8 }, { block: 64 }] as Impl[]) {
        const leaked = await tensorLeak(() => {
          tf.dispose(call(impl, d.inputs).o);
          tf.dispose(tf.grads((...xs: tf.Tensor[]) => call(impl, xs).o.sum())(d.inputs));
        });
        expect(leaked, JSON.stringify({ impl, gated })).toBe(0);
      }
      const [q, k, v, w, beta, g] = d.inputs as [tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor | undefined];
      const withState = await tensorLeak(() => {
        const r = pathBlockwise(q, k, v, w, beta, { blockSize: 8, outputState: true, ...(g ? { g } : {}) });
        const s = decodeSteps(d.inputs, 0, 3, r.state);
        tf.dispose([r.o, s.o]);
        disposePathState(s.state);
      });
      expect(withState).toBe(0);
    }
  });

  it('rejects inconsistent shapes and bad options with errors naming the tensor', () => {
    const q = tf.zeros([1, 5, 2, 8]);
    const v = tf.zeros([1, 5, 2, 4]);
    const beta = tf.zeros([1, 5, 2]);
    expect(() => pathBlockwise(q, q, v, q, tf.zeros([1, 5, 3]))).toThrow(/pathBlockwise beta: expected shape \[B, T, H\], got \[1, 5, 3\]/);
    expect(() => pathBlockwise(q, q, v, tf.zeros([1, 5, 2, 6]), beta)).toThrow(/pathBlockwise w: .*dimension 3 \(D\) is 6, not 8/);
    expect(() => pathNaive(q, q, v, q, beta, { g: tf.zeros([1, 4, 2]) })).toThrow(/pathNaive g/);
    expect(() => pathNaive(q, tf.zeros([1, 5, 2]), v, q, beta)).toThrow(/pathNaive k: expected shape \[B, T, H, D\]/);
    expect(() => pathBlockwise(q, q, v, q, beta, { blockSize: 0 })).toThrow(/blockSize must be a positive integer/);
    const past = { keys: tf.zeros([1, 2, 3, 8]), values: tf.zeros([1, 2, 3, 5]) };
    expect(() => pathBlockwise(q, q, v, q, beta, { past })).toThrow(/pathBlockwise past.values: .*dimension 3 \(V\) is 5, not 4/);
    expect(() => pathBlockwise(q, q, v, q, beta, { past: { keys: past.keys, values: tf.zeros([1, 2, 3, 4]) }, g: beta })).toThrow(/g is given but past.logGates is missing/);
    expect(() => pathDecodeStep(q, q, v, q, beta)).toThrow(/pathDecodeStep q: expected shape \[B, H, D\]/);
    const [q1, v1, b1] = [tf.zeros([1, 2, 8]), tf.zeros([1, 2, 4]), tf.zeros([1, 2])];
    expect(() => pathDecodeStep(q1, q1, v1, q1, b1, { past: { keys: tf.zeros([1, 2, 3, 7]), values: tf.zeros([1, 2, 3, 4]) } })).toThrow(/pathDecodeStep past.keys/);
    tf.dispose([q, v, beta, past.keys, past.values, q1, v1, b1]);
  });
});

describe('on the wasm backend', () => {
  beforeAll(() => selectBackend('wasm'));
  afterAll(() => selectBackend('cpu'));

  it.each([false, true])('blockwise matches naive, and decode the definition (gated: %s)', async (gated) => {
    const d = draw({ B: 2, T: 45, H: 2, D: 16, V: 8 }, gated, 15);
    // inputs were made on cpu; tfjs moves them on first use
    expectClose(await evaluate({ block: 16 }, d), await evaluate('naive', d), 1e-4);
    const steps = decodeSteps(d.inputs, 0, 45, undefined);
    expect(relativeError((await steps.o.data()) as Float32Array, pathHost(d.dims, d.host))).toBeLessThan(1e-5);
    steps.o.dispose();
    disposePathState(steps.state);
  });
});
