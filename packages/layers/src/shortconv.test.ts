import { afterAll, describe, expect, it } from 'vitest';
import { Rng, TsformerError, relativeError, tensorLeak, tf, finiteDifferenceGradient, dot } from '@tsformer/core';
import { ShortConv1d, type ShortConvOptions } from './index.js';

/** The spec, in float64 loops: x [B, T, C], w [k, C], b [C], s0 [B, k-1, C] (all flat, row-major). */
function naiveShortConv(
  x: ArrayLike<number>,
  w: ArrayLike<number>,
  b: ArrayLike<number> | undefined,
  s0: ArrayLike<number> | undefined,
  [B, T, C, k]: [number, number, number, number],
  act: 'silu' | 'none',
): { y: number[]; state: number[] } {
  // Input at time t (t < 0 reaches into the state, whose last row is time -1).
  const at = (bi: number, t: number, c: number): number =>
    t >= 0 ? x[(bi * T + t) * C + c]! : s0 ? s0[(bi * (k - 1) + (k - 1 + t)) * C + c]! : 0;
  const y: number[] = [];
  for (let bi = 0; bi < B; bi++)
    for (let t = 0; t < T; t++)
      for (let c = 0; c < C; c++) {
        let z = b ? b[c]! : 0;
        for (let i = 0; i < k; i++) z += w[i * C + c]! * at(bi, t - k + 1 + i, c);
        y.push(act === 'silu' ? z / (1 + Math.exp(-z)) : z);
      }
  const state: number[] = [];
  for (let bi = 0; bi < B; bi++) for (let j = 0; j < k - 1; j++) for (let c = 0; c < C; c++) state.push(at(bi, T - (k - 1) + j, c));
  return { y, state };
}

/** Central differences of a float64 function of a flat vector. */
const made: ShortConv1d[] = [];
function make(C: number, opts: ShortConvOptions = {}): ShortConv1d {
  const m = new ShortConv1d(C, Rng.seeded(3), opts);
  made.push(m);
  return m;
}
afterAll(() => made.forEach((m) => m.dispose()));

const [B, T, C] = [2, 7, 5];
const data = (seed: number, n: number) => Rng.seeded(seed).normalArray(n);

describe('ShortConv1d', () => {
  it('has a [k, C] weight (uniform in +-1/sqrt(k)), an optional bias and default options', async () => {
    const m = make(C, { bias: true });
    expect(m.kernelSize).toBe(4);
    expect(m.activation).toBe('silu');
    expect(m.namedParameters().map(([n, p]) => [n, p.variable.shape])).toEqual([['weight', [4, C]], ['bias', [C]]]);
    (await m.weight.data()).forEach((v) => expect(Math.abs(v)).toBeLessThanOrEqual(0.5));
    expect(make(C).namedParameters().map(([n]) => n)).toEqual(['weight']);
  });

  for (const [label, opts, withState] of [
    ['silu, bias, initial state', { bias: true }, true],
    ['no activation, k = 3, no state', { kernelSize: 3, activation: 'none' }, false],
    ['k = 1', { kernelSize: 1 }, false],
  ] as Array<[string, ShortConvOptions, boolean]>) {
    it(`matches the float64 reference in output, state and gradients (${label})`, async () => {
      const m = make(C, opts);
      const k = m.kernelSize;
      if (m.bias) m.bias.assign(tf.tensor(data(10, C)));
      const xs = data(11, B * T * C);
      const ss = withState ? data(12, B * (k - 1) * C) : undefined;
      const r = data(13, B * T * C);
      const r2 = data(14, B * (k - 1) * C);
      const x = tf.tensor(xs, [B, T, C]);
      const s = ss ? tf.tensor(ss, [B, k - 1, C]) : undefined;
      const w = await m.weight.data();
      const b = m.bias ? await m.bias.data() : undefined;
      const dims: [number, number, number, number] = [B, T, C, k];
      const ref = naiveShortConv(xs, w, b, ss, dims, m.activation);

      const out = m.forward(x, s);
      expect(out.y.shape).toEqual([B, T, C]);
      expect(out.state.shape).toEqual([B, k - 1, C]);
      expect(relativeError(await out.y.data(), ref.y)).toBeLessThan(1e-5);
      if (k > 1) expect(relativeError(await out.state.data(), ref.state)).toBeLessThan(1e-5);

      // Loss = <y, r> + <state, r2>, so the state's gradient path is checked as well.
      const loss = (yy: tf.Tensor, st: tf.Tensor) => yy.mul(tf.tensor(r, [B, T, C])).sum().add(st.mul(tf.tensor(r2, st.shape)).sum()) as tf.Scalar;
      const refLoss = (o: { y: number[]; state: number[] }) => dot(o.y, r) + dot(o.state, r2);
      const dx = tf.grad((xx: tf.Tensor) => {
        const o = m.forward(xx, s);
        return loss(o.y, o.state);
      })(x);
      expect(relativeError(await dx.data(), finiteDifferenceGradient((v) => refLoss(naiveShortConv(v, w, b, ss, dims, m.activation)), xs))).toBeLessThan(1e-5);
      if (s && ss) {
        const ds = tf.grad((st: tf.Tensor) => {
          const o = m.forward(x, st);
          return loss(o.y, o.state);
        })(s);
        expect(relativeError(await ds.data(), finiteDifferenceGradient((v) => refLoss(naiveShortConv(xs, w, b, v, dims, m.activation)), ss))).toBeLessThan(1e-5);
        ds.dispose();
      }
      const { value, grads } = tf.variableGrads(() => {
        const o = m.forward(x, s);
        return loss(o.y, o.state);
      }, m.trainableVariables());
      const dw = finiteDifferenceGradient((v) => refLoss(naiveShortConv(xs, v, b, ss, dims, m.activation)), w);
      expect(relativeError(await grads[m.weight.name]!.data(), dw)).toBeLessThan(1e-5);
      if (m.bias && b) {
        const db = finiteDifferenceGradient((v) => refLoss(naiveShortConv(xs, w, v, ss, dims, m.activation)), b);
        expect(relativeError(await grads[m.bias.name]!.data(), db)).toBeLessThan(1e-5);
      }
      tf.dispose([x, s, out.y, out.state, dx, value, ...Object.values(grads)]);
    });
  }

  it('is causal: changing x_s leaves every y_t with t < s unchanged', async () => {
    const m = make(C);
    const xs = data(20, B * T * C);
    const s = 4;
    const xs2 = xs.slice();
    for (let bi = 0; bi < B; bi++) for (let c = 0; c < C; c++) xs2[(bi * T + s) * C + c] = 100;
    const inputs = [xs, xs2].map((v) => tf.tensor(v, [B, T, C]));
    const [a, b] = inputs.map((v) => m.forward(v));
    const ya = (await a!.y.array()) as number[][][];
    const yb = (await b!.y.array()) as number[][][];
    for (let bi = 0; bi < B; bi++) {
      expect(yb[bi]!.slice(0, s)).toEqual(ya[bi]!.slice(0, s));
      expect(yb[bi]![s]).not.toEqual(ya[bi]![s]);
    }
    tf.dispose([...inputs, a!.y, a!.state, b!.y, b!.state]);
  });

  for (const prefill of [2, 5]) {
    it(`decodes token by token after a prefill of ${prefill} exactly like the full forward`, async () => {
      const m = make(C, { bias: true });
      m.bias!.assign(tf.tensor(data(21, C)));
      const x = tf.tensor(data(22, B * T * C), [B, T, C]);
      const full = m.forward(x);
      const first = m.forward(x.slice([0, 0, 0], [B, prefill, C]));
      const ys = [first.y];
      let state = first.state;
      for (let t = prefill; t < T; t++) {
        const step = m.forward(x.slice([0, t, 0], [B, 1, C]), state);
        state.dispose();
        state = step.state;
        ys.push(step.y);
      }
      const y = tf.concat(ys, 1); // [B, T, C]
      expect(relativeError(await y.data(), await full.y.data())).toBeLessThan(1e-6);
      expect(relativeError(await state.data(), await full.state.data())).toBeLessThan(1e-6);
      tf.dispose([x, full.y, full.state, ...ys, state, y]);
    });
  }

  it('leaks nothing in forward + backward, with and without state', async () => {
    const m = make(C, { bias: true });
    const x = tf.tensor(data(30, B * T * C), [B, T, C]);
    const s = tf.zeros([B, 3, C]);
    const run = (st?: tf.Tensor) => () => {
      const { value, grads } = tf.variableGrads(() => {
        const o = m.forward(x, st);
        return o.y.square().mean().add(o.state.sum()) as tf.Scalar;
      }, m.trainableVariables());
      tf.dispose([value, ...Object.values(grads)]);
    };
    expect(await tensorLeak(run())).toBe(0);
    expect(await tensorLeak(run(s))).toBe(0);
    expect(await tensorLeak(() => tf.dispose(Object.values(m.forward(x, s))))).toBe(0);
    tf.dispose([x, s]);
  });

  it('rejects bad shapes with errors naming the tensor', () => {
    const m = make(C);
    const x2 = tf.zeros([T, C]);
    const xc = tf.zeros([B, T, C + 1]);
    const x = tf.zeros([B, T, C]);
    const badState = tf.zeros([B, 2, C]);
    const badBatch = tf.zeros([B + 1, 3, C]);
    expect(() => m.forward(x2)).toThrow(/ShortConv1d input x.*rank 2/);
    expect(() => m.forward(xc)).toThrow(TsformerError);
    expect(() => m.forward(xc)).toThrow(/ShortConv1d input x/);
    expect(() => m.forward(x, badState)).toThrow(/ShortConv1d state/);
    expect(() => m.forward(x, badBatch)).toThrow(/ShortConv1d state/);
    expect(() => new ShortConv1d(C, Rng.seeded(0), { kernelSize: 0 })).toThrow(/kernelSize/);
    tf.dispose([x2, xc, x, badState, badBatch]);
  });
});
