import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Rng, relativeError, selectBackend, tf } from '@tsformer/core';
import { pathNaive } from '@tsformer/ops';
import { noPositional } from '@tsformer/positional';
import { PathAttention, pathAttentionSchema, pathKvNumbersPerToken, type PathCache } from './path.js';
import { disposeCache, type AttentionCache } from './types.js';
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
const T = 11;
const D = 16;
/** headDim 8; blocks of 4 so the full forward spans several blocks (and a ragged end). */
const base = { type: 'path', numHeads: 2, wLowRank: 4, blockSize: 4 } as const;
const deps = { dModel: D, positional: noPositional, rng: Rng.seeded(0), contextLength: 64 };

beforeAll(() => selectBackend('cpu'));

const made: Array<{ dispose(): void }> = [];
afterAll(() => made.forEach((m) => m.dispose()));

/**
 * Builds a PaTH layer and redraws its parameters at unit scale (weights N(0, 1/fan_in), norm gains
 * around 1, biases around 0.5), so every parameter matters and the transforms are far from I.
 */
function make(extra: Record<string, unknown> = {}, seed = 0): PathAttention {
  const cfg = pathAttentionSchema.parse({ ...base, ...extra });
  const m = new PathAttention(cfg, { ...deps, rng: Rng.seeded(seed) });
  redrawParams(m, seed + 100, (name, shape) =>
    name.endsWith('_norm.weight') ? [1, 0.3] : name.endsWith('.bias') || name.includes('conv1d') ? [0, 0.5] : [0, 1.5 / Math.sqrt(shape[0]!)],
  );
  made.push(m);
  return m;
}

const input = (seed: number, t = T) => tf.tensor(Rng.seeded(seed).normalArray(B * t * D), [B, t, D]);

/**
 * The reference: the projections written out from the layer's weights (the short convolution is the
 * layer's own module), the attention by `pathNaive` (the definition), the output projection.
 */
function reference(m: PathAttention, x: tf.Tensor): tf.Tensor {
  return tf.tidy(() => {
    const [b, t] = x.shape as [number, number, number];
    const H = m.numHeads;
    const Dh = m.headDim;
    const x2 = x.reshape([b * t, D]);
    const heads = (y: tf.Tensor) => y.reshape([b, t, H, Dh]);
    const rms = (y: tf.Tensor, gain: tf.Tensor) => y.mul(y.square().mean(-1, true).add(1e-5).rsqrt()).mul(gain);
    let q = heads(tf.matMul(x2, m.q_proj.weight));
    let k = heads(tf.matMul(x2, m.k_proj.weight));
    if (m.q_norm) {
      q = rms(q, m.q_norm.weight);
      k = rms(k, m.k_norm!.weight);
    }
    const v = heads(tf.matMul(x2, m.v_proj.weight));
    const wLin = tf.matMul(tf.matMul(x2, m.w_proj_a.weight), m.w_proj_b.weight).reshape([b, t, H * Dh]);
    const wRaw = heads(m.w_conv1d.forward(wLin).y);
    const w = wRaw.div(wRaw.square().sum(-1, true).add(1e-6).sqrt()); // unit rows
    const beta = tf.sigmoid(tf.matMul(x2, m.bt_proj.weight).add(m.bt_proj.bias!)).mul(2).reshape([b, t, H]);
    const g = m.g_proj ? tf.softplus(tf.matMul(x2, m.g_proj.weight).add(m.g_proj.bias!).neg()).neg().reshape([b, t, H]) : undefined; // logsigmoid
    const { o } = pathNaive(q, k, v, w, beta, g ? { g } : {});
    return tf.matMul(o.reshape([b * t, H * Dh]), m.o_proj.weight).reshape([b, t, D]);
  });
}

const decode = (m: PathAttention, x: tf.Tensor, pieces: ReadonlyArray<readonly [number, number]>) => decodeInPieces<PathCache>(m, x, pieces);

const steps = (prefill: number, n = T) => decodeSteps(prefill, n);

for (const extra of [{}, { forgetGate: true, qkNorm: true }]) {
  describe(`PaTH attention ${JSON.stringify(extra)}`, () => {
    const x = input(1);
    const gated = 'forgetGate' in extra;

    it('matches the reference (projections + pathNaive)', async () => {
      const m = make(extra);
      await expectMatchesReference({ m, reference: (xx) => reference(m, xx) }, x);
    });

    it('has the gradients of the reference (all parameters and x)', async () => {
      const m = make(extra, 3);
      await expectReferenceGradients({ m, reference: (xx) => reference(m, xx) }, x);
    });

    it('decodes (prefill 3 then 1 at a time; 1 at a time; two prefills) like the full forward', async () => {
      const m = make(extra, 5);
      const full = m.forward(x, { positions: range(T), training: false }).y;
      const fullData = await full.data();
      for (const pieces of [steps(3), steps(1), [[0, 6], [6, 5]] as Array<[number, number]>]) {
        const { y, cache } = decode(m, x, pieces);
        expect(cache.kind).toBe('path');
        expect(cache.length).toBe(T);
        expect(cache.keys!.shape).toEqual([B, 2, T, 8]);
        expect(cache.values!.shape).toEqual([B, 2, T, 8]);
        expect(cache.conv!.shape).toEqual([B, 2, 16]);
        if (gated) {
          expect(cache.logGates!.shape).toEqual([B, 2, T]);
          expect(cache.tensors.length).toBe(4);
        } else {
          expect(cache.logGates).toBeNull();
          expect(cache.tensors.length).toBe(3);
        }
        // the cache holds pathKvNumbersPerToken numbers per token and sequence (besides the conv tail)
        const numbers = cache.tensors.filter((t) => t !== cache.conv).reduce((n, t) => n + t.size, 0);
        expect(numbers / (B * T)).toBe(pathKvNumbersPerToken(pathAttentionSchema.parse({ ...base, ...extra }), D));
        expect(relativeError(await y.data(), fullData), JSON.stringify(pieces)).toBeLessThan(1e-4);
        y.dispose();
        disposeCache(cache);
      }
      full.dispose();
    });

    it('is causal: changing token 6 changes no output before it', async () => {
      await expectCausal(make(extra, 7), x, 6, true);
    });

    it('leaks no tensors in forward + backward or in decoding', async () => {
      await expectNoLeaks(make(extra, 9), x, steps(3, 6));
    });
  });
}

describe('PaTH config', () => {
  it('fills the defaults and names its parameters like flash-linear-attention', () => {
    const cfg = pathAttentionSchema.parse({ type: 'path', numHeads: 2 });
    expect(cfg).toEqual({ type: 'path', numHeads: 2, wLowRank: 32, convSize: 3, forgetGate: false, blockSize: 64, qkNorm: false });
    const m = make({ forgetGate: true, qkNorm: true });
    expect(m.namedParameters().map(([n, p]) => `${n} [${p.variable.shape.join(',')}]`)).toEqual([
      'q_proj.weight [16,16]',
      'k_proj.weight [16,16]',
      'v_proj.weight [16,16]',
      'w_proj_a.weight [16,4]',
      'w_proj_b.weight [4,16]',
      'w_conv1d.weight [3,16]',
      'bt_proj.weight [16,2]',
      'bt_proj.bias [2]',
      'g_proj.weight [16,2]',
      'g_proj.bias [2]',
      'q_norm.weight [8]',
      'k_norm.weight [8]',
      'o_proj.weight [16,16]',
    ]);
    expect(pathKvNumbersPerToken(cfg, 512)).toBe(512 * 2);
    expect(pathKvNumbersPerToken(pathAttentionSchema.parse({ type: 'path', numHeads: 4, headDim: 32, forgetGate: true }), 512)).toBe(2 * 4 * 32 + 4);
    const wide = new PathAttention(pathAttentionSchema.parse({ type: 'path', numHeads: 2, headDim: 12 }), deps);
    made.push(wide);
    expect(wide.q_proj.weight.shape).toEqual([16, 24]);
    expect(wide.o_proj.weight.shape).toEqual([24, 16]);
  });

  it('initializes o_proj with deps.outStd', async () => {
    const m = new PathAttention(pathAttentionSchema.parse({ type: 'path', numHeads: 2 }), { ...deps, dModel: 64, outStd: 0.002 });
    made.push(m);
    const w = (await m.o_proj.weight.data()) as Float32Array;
    const std = Math.sqrt(w.reduce((s, e) => s + e * e, 0) / w.length);
    expect(std).toBeGreaterThan(0.0015);
    expect(std).toBeLessThan(0.0025);
  });

  it('rejects bad configs with messages that name the field', () => {
    const bad: Array<[Record<string, unknown>, string]> = [
      [{ numHeads: 0 }, 'numHeads'],
      [{ numHeads: 1.5 }, 'numHeads'],
      [{ numHeads: 2, headDim: -8 }, 'headDim'],
      [{ numHeads: 2, wLowRank: 0 }, 'wLowRank'],
      [{ numHeads: 2, convSize: 2.5 }, 'convSize'],
      [{ numHeads: 2, blockSize: -4 }, 'blockSize'],
      [{ numHeads: 2, forgetGate: 'yes' }, 'forgetGate'],
      [{ numHeads: 2, window: 4 }, 'window'],
    ];
    for (const [cfg, field] of bad) {
      const r = pathAttentionSchema.safeParse({ type: 'path', ...cfg });
      expect(r.success, field).toBe(false);
      expect(JSON.stringify(r.error!.issues), field).toContain(field);
    }
    expect(() => new PathAttention(pathAttentionSchema.parse({ type: 'path', numHeads: 3 }), deps)).toThrow(/attention\.numHeads.*multiple/);
  });

  it('rejects a foreign cache and a positions/token count mismatch', () => {
    const m = make();
    const x = input(2, 3);
    const foreign: AttentionCache = { kind: 'kv', length: 0, tensors: [] };
    expect(() => m.forward(x, { positions: range(3), cache: foreign, training: false })).toThrow(/path attention got a "kv" cache/);
    expect(() => m.forward(x, { positions: range(2), training: false })).toThrow(/2 positions for 3 tokens/);
    x.dispose();
  });
});

describe('PaTH attention on the wasm backend', () => {
  beforeAll(() => selectBackend('wasm'));
  afterAll(() => selectBackend('cpu'));

  it('with the forget gate, forward and backward match the reference', async () => {
    const m = make({ forgetGate: true }, 11);
    const x = input(13);
    const w = tf.tensor(Rng.seeded(14).normalArray(B * T * D), [B, T, D]);
    const vars = m.trainableVariables();
    const g1 = tf.variableGrads(() => m.forward(x, { positions: range(T), training: true }).y.mul(w).sum() as tf.Scalar, vars);
    const g2 = tf.variableGrads(() => reference(m, x).mul(w).sum() as tf.Scalar, vars);
    expect(relativeError(await g1.value.data(), await g2.value.data())).toBeLessThan(1e-4);
    for (const [name, p] of m.namedParameters()) {
      expect(relativeError(await g1.grads[p.variable.name]!.data(), await g2.grads[p.variable.name]!.data()), name).toBeLessThan(1e-4);
    }
    tf.dispose([x, w, g1.value, g2.value, ...Object.values(g1.grads), ...Object.values(g2.grads)]);
  });
});
