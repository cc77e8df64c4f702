import { afterAll, describe, expect, it } from 'vitest';
import { Rng, relativeError, tf } from '@tsformer/core';
import { deltaNaive, gatedDeltaNaive } from '@tsformer/ops';
import { noPositional } from '@tsformer/positional';
import {
  DeltaNetAttention,
  attentionConfigSchema,
  attentionHeadDim,
  attentionUsesPositional,
  createAttention,
  deltaNetAttentionSchema,
  disposeCache,
  gatedDeltaNetAttentionSchema,
  kvCacheNumbersPerToken,
  mamba2DecayInit,
  recurrentStateNumbers,
  type AttentionCache,
  type DeltaNetCache,
} from './index.js';
import {
  decodeInPieces,
  decodeSteps,
  expectCausal,
  expectMatchesReference,
  expectNoLeaks,
  expectReferenceGradients,
  range,
  redrawParams,
} from './testing/support.js';

const B = 2;
const T = 9;
const D = 16;
/** K = 16 / 2 = 8; chunks of 4 so the full forward spans several chunks (and a ragged end). */
const base = { numHeads: 2, chunkSize: 4 } as const;

const made: Array<{ dispose(): void }> = [];
afterAll(() => made.forEach((m) => m.dispose()));

type Type = 'deltanet' | 'gated-deltanet';

/**
 * Builds a layer and redraws its parameters at unit scale (weights N(0, 1/fan_in), norm gains
 * around 1, conv taps at 0.5, A_log around ln 0.5 and dt_bias around 0 so the decays are strong
 * enough to shape the output), so every parameter matters.
 */
function make(type: Type, extra: Record<string, unknown> = {}, seed = 0): DeltaNetAttention {
  const cfg = attentionConfigSchema.parse({ type, ...base, ...extra });
  const m = createAttention(cfg, { dModel: D, positional: noPositional, rng: Rng.seeded(seed), contextLength: 64 }) as DeltaNetAttention;
  redrawParams(m, seed + 100, (name) => {
    if (name === 'o_norm.weight') return [1, 0.3];
    if (name.includes('conv1d')) return [0, 0.5];
    if (name === 'A_log') return [Math.log(0.5), 0.5];
    if (name === 'dt_bias') return [0, 0.5];
    return undefined;
  });
  made.push(m);
  return m;
}

const input = (seed: number, t = T) => tf.tensor(Rng.seeded(seed).normalArray(B * t * D), [B, t, D]);
const decode = (m: DeltaNetAttention, x: tf.Tensor, pieces: ReadonlyArray<readonly [number, number]>) =>
  decodeInPieces<DeltaNetCache>(m, x, pieces);
const steps = (prefill: number, n = T) => decodeSteps(prefill, n);

/**
 * The reference: the projections written out from the layer's weights (the short convolutions are
 * the layer's own modules), the recurrence by the op's naive form, the norms by their formulas.
 */
function reference(m: DeltaNetAttention, x: tf.Tensor): tf.Tensor {
  return tf.tidy(() => {
    const [b, t] = x.shape as [number, number, number];
    const H = m.numHeads;
    const K = m.headKDim;
    const V = m.headVDim;
    const x2 = x.reshape([b * t, D]); // [b*t, D]
    const lin = (w: tf.Tensor) => tf.matMul(x2, w).reshape([b, t, -1]); // [b, t, out]
    const silu = (z: tf.Tensor) => z.mul(z.sigmoid());
    let q = lin(m.q_proj.weight);
    let k = lin(m.k_proj.weight);
    let v = lin(m.v_proj.weight);
    if (m.q_conv1d) {
      q = m.q_conv1d.forward(q).y;
      k = m.k_conv1d!.forward(k).y;
      v = m.v_conv1d!.forward(v).y;
    } else {
      [q, k, v] = [silu(q), silu(k), silu(v)];
    }
    const l2 = (z: tf.Tensor) => z.div(z.square().sum(-1, true).add(1e-6).sqrt()); // per head
    const q4 = l2(q.reshape([b, t, H, K])); // [b, t, H, K]
    const k4 = l2(k.reshape([b, t, H, K])); // [b, t, H, K]
    const v4 = v.reshape([b, t, H, V]); // [b, t, H, V]
    let beta = m.b_proj ? lin(m.b_proj.weight).sigmoid() : tf.ones([b, t, H]); // [b, t, H]
    if (m.allowNegEigval) beta = beta.mul(2);
    let o: tf.Tensor;
    if (m.type === 'gated-deltanet') {
      const dt = tf.log1p(lin(m.a_proj!.weight).add(m.dt_bias!).exp()); // softplus: [b, t, H]
      const g = dt.mul(m.A_log!.exp()).neg();
      o = gatedDeltaNaive(q4, k4, v4, beta, g).o;
    } else {
      o = deltaNaive(q4, k4, v4, beta).o;
    }
    const rms = o.square().mean(-1, true).add(1e-5).rsqrt();
    let normed = o.mul(rms).mul(m.o_norm.weight); // [b, t, H, V]
    if (m.g_proj) normed = normed.mul(silu(lin(m.g_proj.weight).reshape([b, t, H, V])));
    return tf.matMul(normed.reshape([b * t, H * V]), m.o_proj.weight).reshape([b, t, D]);
  });
}

const variants: Array<[Type, Record<string, unknown>]> = [
  ['deltanet', {}],
  ['deltanet', { useShortConv: false, useOutputGate: true, allowNegEigval: true }],
  ['gated-deltanet', {}],
  ['gated-deltanet', { useShortConv: false, useBeta: false, expandV: 2, useOutputGate: false }],
];

for (const [type, extra] of variants) {
  describe(`${type} attention ${JSON.stringify(extra)}`, () => {
    const x = input(1);

    it('matches the reference (projections + naive recurrence + output norm)', async () => {
      const m = make(type, extra);
      await expectMatchesReference({ m, reference: (xx) => reference(m, xx) }, x);
    });

    it('has the gradients of the reference (all parameters and x)', async () => {
      const m = make(type, extra, 3);
      await expectReferenceGradients({ m, reference: (xx) => reference(m, xx) }, x);
    });

    it('decodes (prefill 3 then 1 at a time; 1 at a time; two prefills) like the full forward', async () => {
      const m = make(type, extra, 5);
      const full = m.forward(x, { positions: range(T), training: false }).y;
      const fullData = await full.data();
      const conv = extra.useShortConv !== false;
      for (const pieces of [steps(3), steps(1), [[0, 5], [5, 4]] as Array<[number, number]>]) {
        const { y, cache } = decode(m, x, pieces);
        expect(cache.kind).toBe('deltanet');
        expect(cache.length).toBe(T);
        expect(cache.state!.shape).toEqual([B, 2, m.headKDim, m.headVDim]);
        expect(cache.tensors.length).toBe(conv ? 4 : 1);
        if (conv) expect(cache.conv!.v.shape).toEqual([B, 3, 2 * m.headVDim]);
        else expect(cache.conv).toBeNull();
        const numbers = cache.tensors.reduce((n, t) => n + t.size, 0);
        expect(numbers).toBe(B * recurrentStateNumbers(attentionConfigSchema.parse({ type, ...base, ...extra }), D));
        expect(relativeError(await y.data(), fullData), JSON.stringify(pieces)).toBeLessThan(1e-4);
        y.dispose();
        disposeCache(cache);
      }
      full.dispose();
    });

    it('is causal: changing token 5 changes no output before it', async () => {
      await expectCausal(make(type, extra, 7), x, 5);
    });

    it('leaks no tensors in forward + backward or in decoding', async () => {
      await expectNoLeaks(make(type, extra, 9), x, steps(3, 6));
    });
  });
}

describe('DeltaNet config and registry', () => {
  it('fills the defaults and names its parameters like flash-linear-attention', () => {
    const cfg = deltaNetAttentionSchema.parse({ type: 'deltanet', numHeads: 2 });
    expect(cfg).toEqual({
      type: 'deltanet',
      numHeads: 2,
      expandV: 1,
      useShortConv: true,
      convSize: 4,
      useBeta: true,
      allowNegEigval: false,
      chunkSize: 64,
      normEps: 1e-5,
      useOutputGate: false,
    });
    const gated = gatedDeltaNetAttentionSchema.parse({ type: 'gated-deltanet', numHeads: 2, headDim: 4 });
    expect(gated).toMatchObject({ useOutputGate: true, aInitRange: [1, 16], dtMin: 0.001, dtMax: 0.1, dtInitFloor: 1e-4 });
    const m = make('gated-deltanet');
    expect(m.namedParameters().map(([n, p]) => `${n} [${p.variable.shape.join(',')}]${p.decay ? '' : ' no-decay'}`)).toEqual([
      'A_log [2] no-decay',
      'dt_bias [2] no-decay',
      'q_proj.weight [16,16]',
      'k_proj.weight [16,16]',
      'v_proj.weight [16,16]',
      'b_proj.weight [16,2]',
      'a_proj.weight [16,2]',
      'q_conv1d.weight [4,16]',
      'k_conv1d.weight [4,16]',
      'v_conv1d.weight [4,16]',
      'g_proj.weight [16,16]',
      'o_norm.weight [8] no-decay',
      'o_proj.weight [16,16]',
    ]);
    expect(attentionHeadDim(cfg, D)).toBe(8);
    expect(attentionHeadDim(gated, D)).toBe(4);
    expect(attentionUsesPositional(cfg)).toBe(false);
    expect(kvCacheNumbersPerToken(gated, D)).toBe(0);
    // state 2 heads x 4 x 4 + 3 conv taps x (8 + 8 + 8) channels
    expect(recurrentStateNumbers(gated, D)).toBe(2 * 4 * 4 + 3 * 24);
  });

  it('initializes the decay like Mamba2: A in range, softplus(dt_bias) log-uniform in [dtMin, dtMax]', () => {
    const { aLog, dtBias } = mamba2DecayInit(Rng.seeded(4), 64, { aInitRange: [1, 16], dtMin: 0.001, dtMax: 0.1, dtInitFloor: 1e-4 });
    for (let h = 0; h < 64; h++) {
      const a = Math.exp(aLog[h]!);
      const dt = Math.log1p(Math.exp(dtBias[h]!));
      expect(a).toBeGreaterThanOrEqual(1);
      expect(a).toBeLessThanOrEqual(16);
      expect(dt).toBeGreaterThanOrEqual(0.001 * 0.9999);
      expect(dt).toBeLessThanOrEqual(0.1 * 1.0001);
    }
    // the draws spread over the range (not all at one end)
    const dts = Array.from(dtBias, (b) => Math.log10(Math.log1p(Math.exp(b))));
    expect(Math.min(...dts)).toBeLessThan(-2.5);
    expect(Math.max(...dts)).toBeGreaterThan(-1.5);
  });

  it('rejects bad configs with messages that name the field', () => {
    const bad: Array<[Type, Record<string, unknown>, string]> = [
      ['deltanet', { numHeads: 0 }, 'numHeads'],
      ['deltanet', { numHeads: 2, headDim: 2.5 }, 'headDim'],
      ['deltanet', { numHeads: 2, expandV: 0 }, 'expandV'],
      ['deltanet', { numHeads: 2, convSize: 0 }, 'convSize'],
      ['deltanet', { numHeads: 2, chunkSize: -4 }, 'chunkSize'],
      ['deltanet', { numHeads: 2, aInitRange: [1, 2] }, 'aInitRange'],
      ['gated-deltanet', { numHeads: 2, dtMin: 0 }, 'dtMin'],
      ['gated-deltanet', { numHeads: 2, aInitRange: [1] }, 'aInitRange'],
      ['gated-deltanet', { numHeads: 2, window: 4 }, 'window'],
    ];
    for (const [type, cfg, field] of bad) {
      const r = attentionConfigSchema.safeParse({ type, ...cfg });
      expect(r.success, field).toBe(false);
      expect(JSON.stringify(r.error!.issues), field).toContain(field);
    }
    const deps = { dModel: D, positional: noPositional, rng: Rng.seeded(0), contextLength: 64 };
    expect(() => createAttention(deltaNetAttentionSchema.parse({ type: 'deltanet', numHeads: 3 }), deps)).toThrow(/attention\.numHeads.*headDim/);
    expect(() => createAttention(deltaNetAttentionSchema.parse({ type: 'deltanet', numHeads: 2, expandV: 0.3 }), deps)).toThrow(/attention\.expandV/);
    expect(() =>
      createAttention(gatedDeltaNetAttentionSchema.parse({ type: 'gated-deltanet', numHeads: 2, aInitRange: [4, 2] }), deps),
    ).toThrow(/attention\.aInitRange/);
  });

  it('rejects a foreign cache and a positions/token count mismatch', () => {
    const m = make('deltanet');
    const x = input(2, 3);
    const foreign: AttentionCache = { kind: 'gla', length: 0, tensors: [] };
    expect(() => m.forward(x, { positions: range(3), cache: foreign, training: false })).toThrow(/deltanet attention got a "gla" cache/);
    expect(() => m.forward(x, { positions: range(2), training: false })).toThrow(/2 positions for 3 tokens/);
    x.dispose();
  });
});
