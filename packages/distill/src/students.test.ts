import { afterAll, describe, expect, it } from 'vitest';
import { Rng, relativeError, tensorLeak, tf, type Module } from '@tsformer/core';
import { attentionConfigSchema, createAttention, DeltaNetAttention, GlaAttention, SoftmaxAttention } from '@tsformer/attention';
import { createPositional, positionalConfigSchema } from '@tsformer/positional';
import { linearStudentFromTeacher, linearStudentHeads, type LinearStudentConfigInput } from './index.js';

const made: Module[] = [];
afterAll(() => made.forEach((m) => m.dispose()));

const B = 2;
const T = 7;
const DM = 16;
const H = 4;
const HKV = 2;
const HD = 2;
const positional = createPositional(positionalConfigSchema.parse({ type: 'rope' }), HD);
const x = tf.keep(tf.tensor(Rng.seeded(1).normalArray(B * T * DM), [B, T, DM])); // [B, T, dModel]
const range = (n: number) => Int32Array.from({ length: n }, (_, i) => i);

function teacher(extra: Record<string, unknown> = {}): SoftmaxAttention {
  const t = createAttention(attentionConfigSchema.parse({ type: 'mha', numHeads: H, numKvHeads: HKV, headDim: HD, ...extra }), {
    dModel: DM,
    positional,
    rng: Rng.seeded(2),
    contextLength: 32,
  }) as SoftmaxAttention;
  made.push(t);
  return t;
}

const cases: LinearStudentConfigInput[] = [
  { type: 'gla', gateLowRank: 4, chunkSize: 4 },
  { type: 'gla', gateLowRank: 4, chunkSize: 4, useShortConv: true },
  { type: 'deltanet', chunkSize: 4 },
  { type: 'gated-deltanet', chunkSize: 4 },
];

describe('linear students from a softmax teacher', () => {
  for (const cfg of cases) {
    it(`${JSON.stringify(cfg)}: H heads of K = V = teacher head dim, projections copied (GQA columns repeated)`, async () => {
      const t = teacher();
      const s = linearStudentFromTeacher(t, cfg, { rng: Rng.seeded(3), contextLength: 32 });
      made.push(s);
      expect(s).toBeInstanceOf(cfg.type === 'gla' ? GlaAttention : DeltaNetAttention);
      expect([s.numHeads, s.headKDim, s.headVDim]).toEqual([H, HD, HD]);
      expect(relativeError(await s.q_proj.weight.data(), await t.q_proj.weight.data())).toBe(0);
      expect(relativeError(await s.o_proj.weight.data(), await t.o_proj.weight.data())).toBe(0);
      const tk = (await t.k_proj.weight.array()) as number[][]; // [dModel, Hkv*D]
      const sk = (await s.k_proj.weight.array()) as number[][]; // [dModel, H*D]
      const tv = (await t.v_proj.weight.array()) as number[][];
      const sv = (await s.v_proj.weight.array()) as number[][];
      for (let r = 0; r < DM; r++) for (let h = 0; h < H; h++) for (let d = 0; d < HD; d++) {
        const kvHead = Math.floor(h / (H / HKV));
        expect(sk[r]![h * HD + d]).toBe(tk[r]![kvHead * HD + d]);
        expect(sv[r]![h * HD + d]).toBe(tv[r]![kvHead * HD + d]);
      }
      for (const conv of [s.q_conv1d, s.k_conv1d, s.v_conv1d]) {
        if (!conv) continue;
        const w = (await conv.weight.array()) as number[][]; // [k, C]
        w.forEach((row, i) => expect(row.every((v) => v === (i === w.length - 1 ? 1 : 0))).toBe(true));
      }
      // the heads through o_proj are the layer's own forward
      const heads = linearStudentHeads(s, x);
      expect(heads.shape).toEqual([B, T, H, HD]);
      const viaHeads = tf.tidy(() => s.o_proj.forward(heads.reshape([B, T, H * HD]))); // [B, T, H*V] -> [B, T, dModel]
      const y = s.forward(x, { positions: range(T), training: false }).y;
      expect(relativeError(await viaHeads.data(), await y.data())).toBeLessThan(1e-5);
      const leak = await tensorLeak(() => {
        const r = tf.variableGrads(() => linearStudentHeads(s, x).square().mean() as tf.Scalar, s.trainableVariables());
        tf.dispose([r.value, ...Object.values(r.grads)]);
      });
      expect(leak).toBe(0);
      tf.dispose([heads, viaHeads, y]);
    });
  }

  it('fails clearly when the teacher has projection biases or is not softmax', () => {
    expect(() => linearStudentFromTeacher(teacher({ bias: true }), { type: 'gla' }, { rng: Rng.seeded(0), contextLength: 32 })).toThrow(/q_proj has a bias/);
    const gla = createAttention(attentionConfigSchema.parse({ type: 'gla', numHeads: 2 }), { dModel: DM, positional, rng: Rng.seeded(0), contextLength: 32 });
    made.push(gla);
    expect(() => linearStudentFromTeacher(gla, { type: 'deltanet' }, { rng: Rng.seeded(0), contextLength: 32 })).toThrow(/softmax \(mha\) teacher/);
  });
});
