import { afterAll, describe, expect, it } from 'vitest';
import { Rng, TsformerError, relativeError, tensorLeak, tf } from '@tsformer/core';
import { glaChunk, glaNaive, glaNaiveHost, glaRecurrent, glaStep, type GlaDims } from './index.js';

/** How strongly the gates decay: logsigmoid(z)/16 (fla's test default), logsigmoid(z)*4, or
 * logsigmoid(z) with about one gate in fifteen near -100 (chunk sums in the thousands). */
type Gates = 'weak' | 'strong' | 'extreme';

interface Inputs {
  dims: GlaDims;
  q: tf.Tensor; // [B, T, H, K]
  k: tf.Tensor; // [B, T, H, K]
  v: tf.Tensor; // [B, T, H, V]
  g: tf.Tensor; // [B, T, H, K]
  s0: tf.Tensor; // [B, H, K, V]
}

const all: Inputs[] = [];
afterAll(() => all.forEach(disposeInputs));

function disposeInputs(x: Inputs): void {
  tf.dispose([x.q, x.k, x.v, x.g, x.s0]);
}

const logsigmoid = (x: number) => -(Math.max(-x, 0) + Math.log1p(Math.exp(-Math.abs(x))));

/** Fresh random inputs (owned by the module-level list, disposed after all tests). */
function inputs(seed: number, dims: GlaDims, gates: Gates): Inputs {
  const { B, T, H, K, V } = dims;
  const rng = Rng.seeded(seed);
  const nk = B * T * H * K;
  const z = rng.normalArray(nk);
  const gate = Float32Array.from(z, (x) => {
    if (gates === 'weak') return logsigmoid(x) / 16;
    if (gates === 'strong') return logsigmoid(x) * 4;
    return x < -1.5 ? -100 * (1 - 0.2 * rng.uniform()) : logsigmoid(x);
  });
  const x: Inputs = {
    dims,
    q: tf.tensor(rng.normalArray(nk), [B, T, H, K]),
    k: tf.tensor(rng.normalArray(nk), [B, T, H, K]),
    v: tf.tensor(rng.normalArray(B * T * H * V), [B, T, H, V]),
    g: tf.tensor(gate, [B, T, H, K]),
    s0: tf.tensor(rng.normalArray(B * H * K * V), [B, H, K, V]),
  };
  all.push(x);
  return x;
}

/** A sequence form under test: (q, k, v, g, initial state) -> output and final state. */
type Form = (q: tf.Tensor, k: tf.Tensor, v: tf.Tensor, g: tf.Tensor, s0: tf.Tensor) => { o: tf.Tensor; finalState?: tf.Tensor };

const naive: Form = (q, k, v, g, s0) => glaNaive(q, k, v, g, { initialState: s0 });
const chunked =
  (chunkSize: number, subChunkSize?: number): Form =>
  (q, k, v, g, s0) =>
    glaChunk(q, k, v, g, { initialState: s0, outputFinalState: true, chunkSize, subChunkSize });
const recurrent: Form = (q, k, v, g, s0) => glaRecurrent(q, k, v, g, { initialState: s0, outputFinalState: true });

interface Result {
  o: Float32Array;
  finalState: Float32Array;
  /** Gradients of a random projection of (o, finalState) for q, k, v, g, s0. */
  grads: Float32Array[];
}

const GRAD_NAMES = ['q', 'k', 'v', 'g', 'initialState'];

function evaluate(form: Form, x: Inputs, withGrads = true): Result {
  const { B, T, H, K, V } = x.dims;
  const rng = Rng.seeded(999);
  return tf.tidy(() => {
    const wo = tf.tensor(rng.normalArray(B * T * H * V), [B, T, H, V]);
    const ws = tf.tensor(rng.normalArray(B * H * K * V), [B, H, K, V]);
    const r = form(x.q, x.k, x.v, x.g, x.s0);
    const grads = withGrads
      ? tf
          .grads((q: tf.Tensor, k: tf.Tensor, v: tf.Tensor, g: tf.Tensor, s0: tf.Tensor) => {
            const y = form(q, k, v, g, s0);
            return y.o.mul(wo).sum().add(y.finalState!.mul(ws).sum());
          })([x.q, x.k, x.v, x.g, x.s0])
          .map((t) => t.dataSync() as Float32Array)
      : [];
    return { o: r.o.dataSync() as Float32Array, finalState: r.finalState!.dataSync() as Float32Array, grads };
  });
}

function expectClose(what: string, a: Result, b: Result, tol: number): void {
  const errs: Record<string, number> = { o: relativeError(a.o, b.o), finalState: relativeError(a.finalState, b.finalState) };
  a.grads.forEach((d, i) => (errs[`d${GRAD_NAMES[i]}`] = relativeError(d, b.grads[i]!)));
  for (const [name, e] of Object.entries(errs)) {
    expect(e, `${what}: ${name} relative error ${e.toExponential(2)}`).toBeLessThan(tol);
  }
  for (const arr of [a.o, a.finalState, ...a.grads]) expect(arr.every(Number.isFinite), `${what}: non-finite values`).toBe(true);
}

function host(x: Inputs) {
  return glaNaiveHost(x.q.dataSync(), x.k.dataSync(), x.v.dataSync(), x.g.dataSync(), x.dims, { initialState: x.s0.dataSync() });
}

const DIMS: GlaDims = { B: 2, T: 150, H: 2, K: 8, V: 16 };

describe('glaNaive', () => {
  it('matches the float64 host oracle, weak and strong gates, with an initial state', () => {
    for (const gates of ['weak', 'strong', 'extreme'] as const) {
      const x = inputs(1, { ...DIMS, T: 40 }, gates);
      const r = evaluate(naive, x, false);
      const ref = host(x);
      expect(relativeError(r.o, ref.o)).toBeLessThan(1e-5);
      expect(relativeError(r.finalState, ref.finalState)).toBeLessThan(1e-5);
    }
  });

  it('has a host oracle that takes an explicit scale and rejects wrong lengths', () => {
    const d: GlaDims = { B: 1, T: 1, H: 1, K: 2, V: 1 };
    // S = k v^T = [[1], [2]], o = scale * (q . S) = 0.5 * (3*1 + 4*2)
    expect(Array.from(glaNaiveHost([3, 4], [1, 2], [1], [0, 0], d, { scale: 0.5 }).o)).toEqual([5.5]);
    expect(() => glaNaiveHost([3], [1, 2], [1], [0, 0], d)).toThrow(/q: expected 2 numbers, got 1/);
  });
});

describe.each(['weak', 'strong', 'extreme'] as const)('against the naive recurrence, %s gates', (gates) => {
  const x = inputs(gates === 'weak' ? 2 : gates === 'strong' ? 3 : 4, DIMS, gates);
  let reference: Result | undefined;
  const ref = () => (reference ??= evaluate(naive, x));

  it.each([16, 64])('glaChunk (chunk %i, T not a multiple) matches outputs, final state and all gradients', (chunkSize) => {
    expectClose(`chunk ${chunkSize}`, evaluate(chunked(chunkSize), x), ref(), 1e-4);
  });

  it('glaChunk with other sub-chunkings (16 of 64, 5 of 20, one sub-chunk per chunk) matches', () => {
    expectClose('chunk 64/16', evaluate(chunked(64, 16), x), ref(), 1e-4);
    expectClose('chunk 20/5 (default sub-chunk)', evaluate(chunked(20), x), ref(), 1e-4);
    expectClose('chunk 16/16', evaluate(chunked(16, 16), x), ref(), 1e-4);
  });

  it('glaRecurrent matches outputs, final state and all gradients', () => {
    expectClose('recurrent', evaluate(recurrent, x), ref(), 1e-5);
  });

  it('glaChunk matches the float64 host oracle', () => {
    const r = evaluate(chunked(64), x, false);
    const h = host(x);
    expect(relativeError(r.o, h.o)).toBeLessThan(1e-4);
    expect(relativeError(r.finalState, h.finalState)).toBeLessThan(1e-4);
  });
});

describe('state passing', () => {
  const x = inputs(5, DIMS, 'strong');
  const { B, T, H, K, V } = DIMS;
  /** q, k, v, g restricted to tokens [from, to). */
  const span = (from: number, to: number) =>
    [x.q, x.k, x.v, x.g].map((t) => t.slice([0, from, 0, 0], [B, to - from, H, -1])) as [tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor];
  const read = (o: tf.Tensor, state: tf.Tensor) => ({ o: o.dataSync() as Float32Array, state: state.dataSync() as Float32Array });

  it.each([
    ['glaChunk (chunk 16)', chunked(16)],
    ['glaChunk (chunk 64)', chunked(64)],
    ['glaRecurrent', recurrent],
  ] as const)('%s over two halves with the carried state equals the whole', (_, form) => {
    const T1 = 70; // not a multiple of either chunk size
    const { whole, halves } = tf.tidy(() => {
      const w = form(x.q, x.k, x.v, x.g, x.s0);
      const first = form(...span(0, T1), x.s0);
      const second = form(...span(T1, T), first.finalState!);
      return { whole: read(w.o, w.finalState!), halves: read(tf.concat([first.o, second.o], 1), second.finalState!) };
    });
    expect(relativeError(halves.o, whole.o)).toBeLessThan(1e-5);
    expect(relativeError(halves.state, whole.state)).toBeLessThan(1e-5);
  });

  it('decoding with glaStep after a chunked prefill equals the chunked forward', () => {
    const prefill = 100;
    const { full, decoded } = tf.tidy(() => {
      const w = glaChunk(x.q, x.k, x.v, x.g, { initialState: x.s0, outputFinalState: true });
      const pre = glaChunk(...span(0, prefill), { initialState: x.s0, outputFinalState: true });
      let state = pre.finalState!;
      const outs = [pre.o];
      for (let t = prefill; t < T; t++) {
        const r = glaStep(...span(t, t + 1), state); // [B, 1, H, V], [B, H, K, V]
        outs.push(r.o);
        state = r.state;
      }
      return { full: read(w.o, w.finalState!), decoded: read(tf.concat(outs, 1), state) };
    });
    expect(decoded.state.length).toBe(B * H * K * V);
    expect(relativeError(decoded.o, full.o)).toBeLessThan(1e-5);
    expect(relativeError(decoded.state, full.state)).toBeLessThan(1e-5);
  });

  it('defaults to a zero initial state and returns no final state unless asked', () => {
    const { o, finalState } = glaChunk(x.q, x.k, x.v, x.g);
    expect(finalState).toBeUndefined();
    const zero = tf.zeros([B, H, K, V]);
    const ref = glaNaive(x.q, x.k, x.v, x.g, { initialState: zero });
    expect(relativeError(o.dataSync(), ref.o.dataSync())).toBeLessThan(1e-4);
    tf.dispose([o, zero, ref.o, ref.finalState]);
  });
});

describe('causality', () => {
  it.each([
    ['glaChunk 16', chunked(16)],
    ['glaChunk 64', chunked(64)],
    ['glaRecurrent', recurrent],
  ] as const)('%s: changing tokens from t0 on leaves earlier outputs unchanged', (_, form) => {
    const x = inputs(6, { ...DIMS, T: 100 }, 'weak');
    const { B, T, H } = x.dims;
    const t0 = 37; // inside a sub-chunk and a chunk
    const [before, after] = tf.tidy(() => {
      const future = tf.tensor(Float32Array.from({ length: T }, (_, t) => (t >= t0 ? 1 : 0)), [1, T, 1, 1]);
      const noise = (t: tf.Tensor, s: number) => t.add(tf.randomNormal(t.shape, 0, 3, 'float32', s).mul(future));
      const a = form(x.q, x.k, x.v, x.g, x.s0).o.slice([0, 0, 0, 0], [B, t0, H, -1]);
      const gNew = noise(x.g, 4).minimum(0); // log gates stay <= 0
      const b = form(noise(x.q, 1), noise(x.k, 2), noise(x.v, 3), gNew, x.s0).o;
      const changed = relativeError(b.dataSync(), form(x.q, x.k, x.v, x.g, x.s0).o.dataSync());
      expect(changed).toBeGreaterThan(0.1); // the perturbation does reach later outputs
      return [a.dataSync(), b.slice([0, 0, 0, 0], [B, t0, H, -1]).dataSync()];
    });
    expect(relativeError(after, before)).toBeLessThan(1e-7);
  });
});

describe('tensor hygiene and errors', () => {
  const x = inputs(7, { B: 2, T: 40, H: 2, K: 8, V: 8 }, 'weak');

  it('leaks no tensors, forward and backward', async () => {
    const run = (form: Form, grads: boolean) => () => {
      const r = form(x.q, x.k, x.v, x.g, x.s0);
      tf.dispose([r.o, r.finalState!]);
      if (grads) tf.dispose(tf.grads((q: tf.Tensor, g: tf.Tensor) => form(q, x.k, x.v, g, x.s0).o.sum())([x.q, x.g]));
    };
    for (const form of [naive, chunked(16), chunked(32, 8), recurrent]) {
      expect(await tensorLeak(run(form, false))).toBe(0);
      expect(await tensorLeak(run(form, true))).toBe(0);
    }
    expect(await tensorLeak(() => glaChunk(x.q, x.k, x.v, x.g).o.dispose())).toBe(0);
    expect(await tensorLeak(() => glaRecurrent(x.q, x.k, x.v, x.g).o.dispose())).toBe(0);
    const one = (t: tf.Tensor) => t.slice([0, 0, 0, 0], [2, 1, 2, -1]);
    const [q1, k1, v1, g1] = [x.q, x.k, x.v, x.g].map(one) as [tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor];
    expect(
      await tensorLeak(() => {
        const r = glaStep(q1, k1, v1, g1, x.s0);
        tf.dispose([r.o, r.state]);
      }),
    ).toBe(0);
    tf.dispose([q1, k1, v1, g1]);
  });

  it('names the culprit of a bad shape or option', () => {
    const wrongV = tf.zeros([2, 39, 2, 8]);
    const wrongS = tf.zeros([2, 2, 8, 4]);
    expect(() => glaChunk(x.q, x.k, wrongV, x.g)).toThrow(/glaChunk v: expected shape \[B, T, H, V\], got \[2, 39, 2, 8\]/);
    expect(() => glaNaive(x.q, x.k, x.v, x.g, { initialState: wrongS })).toThrow(TsformerError);
    expect(() => glaChunk(x.q, x.k, x.v, x.g, { chunkSize: 32, subChunkSize: 12 })).toThrow(/subChunkSize must be a positive integer dividing chunkSize 32, got 12/);
    expect(() => glaChunk(x.q, x.k, x.v, x.g, { chunkSize: 0 })).toThrow(/chunkSize must be a positive integer/);
    expect(() => glaStep(x.q, x.k, x.v, x.g, x.s0)).toThrow(/glaStep takes one token/);
    tf.dispose([wrongV, wrongS]);
  });
});
