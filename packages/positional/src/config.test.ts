import { describe, expect, it } from 'vitest';
import { TsformerError } from '@tsformer/core';
import { Alibi, Rope, createPositional, positionalConfigSchema } from './index.js';

/** Each problem as `dotted.path: message`, the way the config layer reports it. */
function problems(input: unknown): string[] {
  const r = positionalConfigSchema.safeParse(input);
  if (r.success) return [];
  return r.error.issues.flatMap((i) =>
    i.code === 'unrecognized_keys' ? i.keys.map((k) => [...i.path, k].join('.') + ': unknown key') : [`${i.path.join('.')}: ${i.message}`],
  );
}

describe('positional config', () => {
  it('keeps { type: rope } and { type: none } as they were', () => {
    expect(positionalConfigSchema.parse({ type: 'rope' })).toEqual({ type: 'rope', theta: 10000 });
    expect(positionalConfigSchema.parse({ type: 'none' })).toEqual({ type: 'none' });
    const rope = createPositional(positionalConfigSchema.parse({ type: 'rope' }), 16) as Rope;
    expect([rope.headDim, rope.rotaryDim, rope.theta, rope.layout, rope.fraction, rope.scaling]).toEqual([16, 16, 10000, 'half', 1, undefined]);
    expect(createPositional({ type: 'none' }, 16).rotate).toBeUndefined();
    expect(createPositional({ type: 'alibi' }, 16)).toBeInstanceOf(Alibi);
  });

  it('round-trips every option, filling YaRN defaults', () => {
    const raw = { type: 'rope', theta: 500000, fraction: 0.5, layout: 'interleaved', scaling: { type: 'yarn', factor: 4, originalMaxPositions: 2048 } };
    const cfg = positionalConfigSchema.parse(raw);
    expect(cfg).toEqual({ ...raw, scaling: { ...raw.scaling, betaFast: 32, betaSlow: 1, truncate: true } });
    expect(positionalConfigSchema.parse(JSON.parse(JSON.stringify(cfg)))).toEqual(cfg);
    const rope = createPositional(cfg, 64) as Rope;
    expect([rope.rotaryDim, rope.theta, rope.layout]).toEqual([32, 500000, 'interleaved']);
    expect(rope.scaling).toEqual(cfg.type === 'rope' ? cfg.scaling : undefined);
    for (const scaling of [
      { type: 'linear', factor: 2 },
      { type: 'ntk', factor: 8 },
      { type: 'dynamic', factor: 2, originalMaxPositions: 4096 },
      { type: 'yarn', factor: 32, originalMaxPositions: 4096, betaFast: 16, betaSlow: 2, attentionFactor: 1.2, truncate: false },
    ]) {
      const c = positionalConfigSchema.parse({ type: 'rope', scaling });
      expect(c).toEqual({ type: 'rope', theta: 10000, scaling });
      expect((createPositional(c, 32) as Rope).scaling).toEqual(scaling);
    }
  });

  it('names the field of each bad value', () => {
    expect(problems({ type: 'rope', fraction: 0 })).toEqual(['fraction: fraction must be in (0, 1]']);
    expect(problems({ type: 'rope', fraction: 1.5 })).toEqual(['fraction: fraction must be in (0, 1]']);
    expect(problems({ type: 'rope', theta: -1 })).toEqual(['theta: theta must be > 0']);
    expect(problems({ type: 'rope', scaling: { type: 'linear', factor: 0.5 } })).toEqual(['scaling.factor: factor must be >= 1']);
    expect(problems({ type: 'rope', scaling: { type: 'yarn', factor: 0.5, originalMaxPositions: 2048 } })).toEqual(['scaling.factor: factor must be >= 1']);
    expect(problems({ type: 'rope', scaling: { type: 'dynamic', factor: 2, originalMaxPositions: 1.5 } })).toEqual([
      'scaling.originalMaxPositions: originalMaxPositions must be a positive integer',
    ]);
    expect(problems({ type: 'rope', scaling: { type: 'yarn', factor: 4, originalMaxPositions: 64, betaFast: 1, betaSlow: 2 } })).toEqual([
      'scaling.betaFast: betaFast must be greater than betaSlow',
    ]);
    expect(problems({ type: 'rope', scaling: { type: 'dynamic', factor: 2 } })[0]).toMatch(/^scaling\.originalMaxPositions: /);
    expect(problems({ type: 'rope', layout: 'neox' })[0]).toMatch(/^layout: .*"half"\|"interleaved"/);
  });

  it('rejects unknown keys and types by path', () => {
    expect(problems({ type: 'rope', thetaa: 1 })).toEqual(['thetaa: unknown key']);
    expect(problems({ type: 'rope', scaling: { type: 'yarn', factor: 4, originalMaxPositions: 64, mscale: 1 } })).toEqual(['scaling.mscale: unknown key']);
    expect(problems({ type: 'alibi', slopes: [1] })).toEqual(['slopes: unknown key']);
    const unknownScaling = problems({ type: 'rope', scaling: { type: 'longrope', factor: 4 } });
    expect(unknownScaling).toHaveLength(1);
    expect(unknownScaling[0]).toMatch(/^scaling\.type: .*'linear' \| 'ntk' \| 'dynamic' \| 'yarn'/);
    expect(problems({ type: 'xpos' })[0]).toMatch(/^type: /);
  });

  it('reports head-dim dependent problems when building', () => {
    const build = (cfg: unknown, headDim: number) => () => createPositional(positionalConfigSchema.parse(cfg), headDim);
    expect(build({ type: 'rope', fraction: 0.1 }, 8)).toThrow(TsformerError);
    expect(build({ type: 'rope', fraction: 0.1 }, 8)).toThrow(/fraction 0.1 of head dim 8 rounds to 0 rotary dims/);
    expect(build({ type: 'rope', fraction: 0.25, scaling: { type: 'dynamic', factor: 2, originalMaxPositions: 8 } }, 8)).toThrow(/needs at least 4 rotary dims/);
    expect(build({ type: 'rope' }, 7)).toThrow(/even head dim/);
  });
});
