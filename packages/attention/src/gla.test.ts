import { afterAll, describe, expect, it } from 'vitest';
import { Rng, relativeError, tf } from '@tsformer/core';
import { glaNaive } from '@tsformer/ops';
import { noPositional } from '@tsformer/positional';
import {
  GlaAttention,
  attentionConfigSchema,
  attentionHeadDim,
  createAttention,
  disposeCache,
  glaAttentionSchema,
  kvCacheNumbersPerToken,
  type AttentionCache,
  type GlaCache,
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
/** K = 16 * 0.5 / 2 = 4, V = 8; chunks of 4 so the full forward spans several chunks (and a ragged end). */
const base = { type: 'gla', numHeads: 2, gateLowRank: 4, chunkSize: 4 } as const;

const made: Array<{ dispose(): void }> = [];
afterAll(() => made.forEach((m) => m.dispose()));

/**
 * Builds a GLA layer and redraws its parameters at unit scale (weights N(0, 1/fan_in), norm gains
 * around 1, biases around 0), so every parameter matters. `gateLogitNormalizer: 1` makes the
 * forget gates strong enough that the decay visibly shapes the output.
 */
function make(extra: Record<string, unknown> = {}, seed = 0): GlaAttention {
  const cfg = attentionConfigSchema.parse({ ...base, ...extra });
  const m = createAttention(cfg, { dModel: D, positional: noPositional, rng: Rng.seeded(seed), contextLength: 64 }) as GlaAttention;
  redrawParams(m, seed + 100, (name) => (name === 'g_norm.weight' ? [1, 0.3] : name.endsWith('.bias') || name.includes('conv1d') ? [0, 0.5] : undefined));
  made.push(m);
  return m;
}

const input = (seed: number, t = T) => tf.tensor(Rng.seeded(seed).normalArray(B * t * D), [B, t, D]);

/**
 * The reference: the projections written out from the layer's weights (the short convolutions
 * are the layer's own modules), the recurrence by `glaNaive`, the gated norm by its formula.
 */
function reference(m: GlaAttention, x: tf.Tensor): tf.Tensor {
  return tf.tidy(() => {
    const [b, t] = x.shape as [number, number, number];
    const H = m.numHeads;
    const K = m.headKDim;
    const V = m.headVDim;
    const x2 = x.reshape([b * t, D]);
    const lin = (w: tf.Tensor, bias?: tf.Tensor) => {
      const y = tf.matMul(x2, w);
      return (bias ? y.add(bias) : y).reshape([b, t, -1]);
    };
    let q = lin(m.q_proj.weight);
    let k = lin(m.k_proj.weight);
    let v = lin(m.v_proj.weight);
    if (m.q_conv1d) {
      q = m.q_conv1d.forward(q).y;
      k = m.k_conv1d!.forward(k).y;
      v = m.v_conv1d!.forward(v).y;
    }
    const z = tf.matMul(tf.matMul(x2, m.gk_proj_a.weight), m.gk_proj_b.weight).add(m.gk_proj_b.bias!); // [b*t, H*K]
    const g = tf.softplus(z.neg()).neg().div(m.gateLogitNormalizer).reshape([b, t, H, K]); // logsigmoid / normalizer
    const { o } = glaNaive(q.reshape([b, t, H, K]), k.reshape([b, t, H, K]), v.reshape([b, t, H, V]), g);
    const gate = lin(m.g_proj.weight).reshape([b, t, H, V]);
    const rms = o.square().mean(-1, true).add(m.g_norm.eps).rsqrt();
    const normed = o.mul(rms).mul(m.g_norm.weight).mul(gate.mul(gate.sigmoid())); // [b, t, H, V]
    return tf.matMul(normed.reshape([b * t, H * V]), m.o_proj.weight).reshape([b, t, D]);
  });
}

const decode = (m: GlaAttention, x: tf.Tensor, pieces: ReadonlyArray<readonly [number, number]>) => decodeInPieces<GlaCache>(m, x, pieces);
const steps = (prefill: number, n = T) => decodeSteps(prefill, n);

for (const useShortConv of [false, true]) {
  describe(`GLA attention${useShortConv ? ' with short convolutions' : ''}`, () => {
    const extra = { useShortConv, gateLogitNormalizer: 1 };
    const x = input(1);

    it('matches the reference (projections + glaNaive + gated norm)', async () => {
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
      for (const pieces of [steps(3), steps(1), [[0, 5], [5, 4]] as Array<[number, number]>]) {
        const { y, cache } = decode(m, x, pieces);
        expect(cache.kind).toBe('gla');
        expect(cache.length).toBe(T);
        expect(cache.state!.shape).toEqual([B, 2, 4, 8]);
        if (useShortConv) {
          expect(cache.conv!.q.shape).toEqual([B, 3, 8]);
          expect(cache.conv!.k.shape).toEqual([B, 3, 8]);
          expect(cache.conv!.v.shape).toEqual([B, 3, 16]);
          expect(cache.tensors.length).toBe(4);
        } else {
          expect(cache.conv).toBeNull();
          expect(cache.tensors.length).toBe(1);
        }
        expect(relativeError(await y.data(), fullData), JSON.stringify(pieces)).toBeLessThan(1e-4);
        y.dispose();
        disposeCache(cache);
      }
      full.dispose();
    });

    it('is causal: changing token 5 changes no output before it', async () => {
      await expectCausal(make(extra, 7), x, 5);
    });

    it('leaks no tensors in forward + backward or in decoding', async () => {
      await expectNoLeaks(make(extra, 9), x, steps(3, 6));
    });
  });
}

describe('GLA config and registry', () => {
  it('fills the defaults and names its parameters like flash-linear-attention', () => {
    const cfg = glaAttentionSchema.parse({ type: 'gla', numHeads: 2 });
    expect(cfg).toEqual({
      type: 'gla',
      numHeads: 2,
      expandK: 0.5,
      expandV: 1,
      gateLowRank: 16,
      gateLogitNormalizer: 16,
      useShortConv: false,
      convSize: 4,
      chunkSize: 64,
      normEps: 1e-5,
    });
    const m = make({ useShortConv: true });
    expect(m.namedParameters().map(([n, p]) => `${n} [${p.variable.shape.join(',')}]`)).toEqual([
      'q_proj.weight [16,8]',
      'k_proj.weight [16,8]',
      'v_proj.weight [16,16]',
      'g_proj.weight [16,16]',
      'gk_proj_a.weight [16,4]',
      'gk_proj_b.weight [4,8]',
      'gk_proj_b.bias [8]',
      'q_conv1d.weight [4,8]',
      'k_conv1d.weight [4,8]',
      'v_conv1d.weight [4,16]',
      'g_norm.weight [8]',
      'o_proj.weight [16,16]',
    ]);
    expect(attentionHeadDim(cfg, D)).toBe(4);
    expect(kvCacheNumbersPerToken(cfg, D)).toBe(0);
  });

  it('rejects bad configs with messages that name the field', () => {
    const bad: Array<[Record<string, unknown>, string]> = [
      [{ numHeads: 0 }, 'numHeads'],
      [{ numHeads: 1.5 }, 'numHeads'],
      [{ numHeads: 2, expandK: -1 }, 'expandK'],
      [{ numHeads: 2, gateLowRank: 0 }, 'gateLowRank'],
      [{ numHeads: 2, gateLogitNormalizer: 0 }, 'gateLogitNormalizer'],
      [{ numHeads: 2, convSize: 2.5 }, 'convSize'],
      [{ numHeads: 2, chunkSize: -4 }, 'chunkSize'],
      [{ numHeads: 2, normEps: 0 }, 'normEps'],
      [{ numHeads: 2, window: 4 }, 'window'],
    ];
    for (const [cfg, field] of bad) {
      const r = attentionConfigSchema.safeParse({ type: 'gla', ...cfg });
      expect(r.success, field).toBe(false);
      expect(JSON.stringify(r.error!.issues), field).toContain(field);
    }
    const deps = { dModel: D, positional: noPositional, rng: Rng.seeded(0), contextLength: 64 };
    expect(() => createAttention(glaAttentionSchema.parse({ type: 'gla', numHeads: 3 }), deps)).toThrow(/attention\.expandK.*numHeads/);
    expect(() => createAttention(glaAttentionSchema.parse({ type: 'gla', numHeads: 2, expandK: 0.3 }), deps)).toThrow(/attention\.expandK/);
    expect(() => createAttention(glaAttentionSchema.parse({ type: 'gla', numHeads: 4, expandV: 0.125 }), deps)).toThrow(/attention\.expandV/);
  });

  it('rejects a foreign cache and a positions/token count mismatch', () => {
    const m = make();
    const x = input(2, 3);
    const foreign: AttentionCache = { kind: 'kv', length: 0, tensors: [] };
    expect(() => m.forward(x, { positions: range(3), cache: foreign, training: false })).toThrow(/gla attention got a "kv" cache/);
    expect(() => m.forward(x, { positions: range(2), training: false })).toThrow(/2 positions for 3 tokens/);
    x.dispose();
  });
});
