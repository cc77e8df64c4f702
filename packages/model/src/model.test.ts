import { afterAll, describe, expect, it } from 'vitest';
import { Rng, relativeError, tensorLeak, tf } from '@tsformer/core';
import { DecoderLM, disposeCaches, generate, sampleToken, type ModelConfigInput } from './index.js';

const base: ModelConfigInput = {
  vocabSize: 37,
  dModel: 16,
  nLayers: 2,
  maxSeqLen: 12,
  attention: { type: 'mha', numHeads: 4, numKvHeads: 2 },
};
const made: DecoderLM[] = [];
const build = (cfg: Partial<ModelConfigInput> = {}, seed = 1) => {
  const m = new DecoderLM({ ...base, ...cfg } as ModelConfigInput, { seed });
  made.push(m);
  return m;
};
afterAll(() => made.forEach((m) => m.dispose()));

describe('DecoderLM', () => {
  it('names parameters by stable dotted paths', () => {
    const names = build().namedParameters().map(([n]) => n);
    expect(names.slice(0, 6)).toEqual([
      'embed.weight',
      'layers.0.attn_norm.weight',
      'layers.0.attn.q_proj.weight',
      'layers.0.attn.k_proj.weight',
      'layers.0.attn.v_proj.weight',
      'layers.0.attn.o_proj.weight',
    ]);
    expect(names).toContain('layers.1.mlp.down_proj.weight');
    expect(names.at(-1)).toBe('norm.weight');
    expect(build({ tieEmbeddings: false }).namedParameters().at(-1)![0]).toBe('lm_head.weight');
  });

  it('rejects an invalid config naming the dotted path', () => {
    expect(() => build({ attention: { type: 'mha', numHeads: 4, extra: 1 } as never })).toThrow(/model\.attention/);
    expect(() => build({ dModel: -3 })).toThrow(/model\.dModel/);
    expect(() => build({ attention: { type: 'nope', numHeads: 2 } as never })).toThrow(/model\.attention\.type/);
  });

  it('gives logits of shape [B, T, V], and cached incremental logits equal the full forward', async () => {
    const m = build();
    const ids = tf.tensor2d([[1, 5, 9, 2, 7, 3], [4, 4, 8, 1, 0, 36]], undefined, 'int32');
    const { logits } = m.forward(ids);
    expect(logits.shape).toEqual([2, 6, 37]);
    let caches = m.initCaches();
    const parts: tf.Tensor[] = [];
    for (const [s, n] of [[0, 3], [3, 1], [4, 2]] as const) {
      const piece = ids.slice([0, s], [2, n]);
      const r = m.forward(piece, { caches });
      disposeCaches(caches);
      caches = r.caches!;
      parts.push(r.logits);
      piece.dispose();
    }
    const inc = tf.concat(parts, 1);
    expect(relativeError(await inc.data(), await logits.data())).toBeLessThan(1e-5);
    disposeCaches(caches);
    tf.dispose([ids, logits, inc, ...parts]);
  });

  it('generates the same tokens with the KV cache as with full forward passes (greedy and sampled, past maxSeqLen)', async () => {
    const m = build({}, 7);
    const prompt = [3, 1, 4, 1, 5];
    for (const opts of [{ temperature: 0 }, { temperature: 0.9, topK: 10, topP: 0.9 }]) {
      const withCache = await generate(m, prompt, { maxNewTokens: 30, rng: Rng.seeded(5), useCache: true, ...opts });
      const without = await generate(m, prompt, { maxNewTokens: 30, rng: Rng.seeded(5), useCache: false, ...opts });
      expect(withCache).toHaveLength(30);
      expect(withCache).toEqual(without);
    }
  });

  it('generation and forward/backward leak no tensors', async () => {
    const m = build();
    expect(await tensorLeak(() => generate(m, [1, 2, 3], { maxNewTokens: 15, temperature: 0 }))).toBe(0);
    const ids = tf.tensor2d([[1, 2, 3, 4]], undefined, 'int32');
    expect(
      await tensorLeak(() => {
        const { value, grads } = tf.variableGrads(() => m.forward(ids).logits.square().mean() as tf.Scalar, m.trainableVariables());
        tf.dispose([value, ...Object.values(grads)]);
      }),
    ).toBe(0);
    ids.dispose();
  });

  it('rejects float ids and wrong ranks', () => {
    const m = build();
    const f = tf.zeros([1, 3]);
    expect(() => m.forward(f)).toThrow(/token ids must be int32/);
    const r3 = tf.zeros([1, 3, 2], 'int32');
    expect(() => m.forward(r3)).toThrow(/token ids: expected shape \[B, T\]/);
    tf.dispose([f, r3]);
  });
});

describe('hybrid layer schedules', () => {
  const hybrid: Partial<ModelConfigInput> = {
    nLayers: 4,
    attention: undefined,
    layers: {
      pattern: ['global', 'local'],
      defs: {
        global: { attention: { type: 'mha', numHeads: 4, numKvHeads: 1 }, positional: { type: 'none' } },
        local: { attention: { type: 'mha', numHeads: 4, numKvHeads: 2, window: 3 } },
      },
    },
  };

  it('expands the pattern over the layers, each def with its own attention and positional encoding', () => {
    const m = build(hybrid);
    const kinds = m.layers.items.map((b) => [(b.attn as unknown as { numKvHeads: number }).numKvHeads]);
    expect(kinds).toEqual([[1], [2], [1], [2]]);
    expect(m.namedParameters().find(([n]) => n === 'layers.0.attn.k_proj.weight')![1].variable.shape).toEqual([16, 4]);
    expect(m.namedParameters().find(([n]) => n === 'layers.1.attn.k_proj.weight')![1].variable.shape).toEqual([16, 8]);
  });

  it('decodes with caches (sliding-window ring buffers included) exactly like the full forward', async () => {
    const m = build(hybrid, 3);
    const prompt = [5, 6, 7];
    const a = await generate(m, prompt, { maxNewTokens: 14, temperature: 0, useCache: true });
    const b = await generate(m, prompt, { maxNewTokens: 14, temperature: 0, useCache: false });
    expect(a).toEqual(b);
  });

  it('validates the schedule field by field', () => {
    expect(() => build({ ...hybrid, layers: { ...hybrid.layers!, pattern: ['global', 'nope'] } })).toThrow(/model\.layers\.pattern\.1: "nope" is not one of model\.layers\.defs \(global, local\)/);
    expect(() => build({ ...hybrid, nLayers: 3 })).toThrow(/model\.layers\.pattern: has 2 entries, which does not divide model\.nLayers \(3\)/);
    expect(() => build({ ...hybrid, attention: { type: 'mha', numHeads: 4 } })).toThrow(/model\.attention: give either/);
    expect(() => build({ attention: undefined })).toThrow(/model\.attention: required/);
    expect(() => build({ ...hybrid, layers: { pattern: ['a'], defs: { a: { attention: { type: 'mha', numHeads: 4 }, extra: 1 } } } as never })).toThrow(/model\.layers\.defs\.a/);
  });
});

describe('sampleToken', () => {
  const logits = Float32Array.from([0.1, 3, 2.9, -1, 0]);
  it('greedy picks the argmax', () => expect(sampleToken(logits, { temperature: 0 }, Rng.seeded(0))).toBe(1));
  it('top-k 2 only ever picks the two best', () => {
    const rng = Rng.seeded(1);
    const seen = new Set(Array.from({ length: 200 }, () => sampleToken(logits, { temperature: 1, topK: 2 }, rng)));
    expect([...seen].sort()).toEqual([1, 2]);
  });
  it('top-p keeps the nucleus only', () => {
    const rng = Rng.seeded(2);
    const peaked = Float32Array.from([10, 0, 0, 0]);
    const seen = new Set(Array.from({ length: 100 }, () => sampleToken(peaked, { temperature: 1, topP: 0.9 }, rng)));
    expect([...seen]).toEqual([0]);
  });
  it('follows the softmax distribution at temperature 1', () => {
    const rng = Rng.seeded(3);
    const two = Float32Array.from([Math.log(3), 0]);
    const n = 4000;
    const zeros = Array.from({ length: n }, () => sampleToken(two, { temperature: 1 }, rng)).filter((t) => t === 0).length;
    expect(Math.abs(zeros / n - 0.75)).toBeLessThan(0.03);
  });
});

describe('The linear family (GLA, DeltaNet, Gated DeltaNet) and PaTH in a DecoderLM', () => {
  it('builds no positional encoding for GLA (an odd key width would not fit RoPE)', () => {
    const m = new DecoderLM({ vocabSize: 29, dModel: 12, nLayers: 1, maxSeqLen: 8, attention: { type: 'gla', numHeads: 2 } }, { seed: 1 });
    made.push(m);
    expect(m.layers.items[0]!.attn.type).toBe('gla');
  });

  const base: ModelConfigInput = { vocabSize: 29, dModel: 16, nLayers: 2, maxSeqLen: 12, attention: { type: 'gla', numHeads: 2 } };

  for (const attention of [
    { type: 'gla', numHeads: 2 },
    { type: 'gla', numHeads: 2, useShortConv: true, chunkSize: 4, gateLogitNormalizer: 2 },
    { type: 'deltanet', numHeads: 2, chunkSize: 4 },
    { type: 'gated-deltanet', numHeads: 2, chunkSize: 4, allowNegEigval: true },
    { type: 'path', numHeads: 2, blockSize: 4 },
  ] as const) {
    it(`builds and generates the same tokens with and without the cache (${JSON.stringify(attention)})`, async () => {
      const m = new DecoderLM({ ...base, attention } as ModelConfigInput, { seed: 4 });
      made.push(m);
      expect(m.namedParameters().some(([n]) => n === 'layers.1.attn.o_proj.weight')).toBe(true);
      expect(m.layers.items[1]!.attn.type).toBe(attention.type);
      // Unit-scale weights so the greedy tokens vary.
      const rng = Rng.seeded(8);
      for (const [name, p] of m.namedParameters()) {
        if (name.endsWith('norm.weight')) continue;
        const v = p.variable;
        const t = tf.tensor(rng.normalArray(v.size, 1 / Math.sqrt(v.shape[0]!)), v.shape);
        v.assign(t);
        t.dispose();
      }
      const prompt = [3, 1, 4, 1, 5];
      // 14 new tokens run past maxSeqLen (12), so the window jump (and a fresh prefill) is exercised too.
      const withCache = await generate(m, prompt, { maxNewTokens: 14, temperature: 0, useCache: true });
      const without = await generate(m, prompt, { maxNewTokens: 14, temperature: 0, useCache: false });
      expect(withCache).toEqual(without);
      expect(new Set(withCache).size).toBeGreaterThan(1);
      expect(await tensorLeak(() => generate(m, [1, 2, 3], { maxNewTokens: 4, temperature: 0 }))).toBe(0);
    });
  }
});
