import type { TensorInfo, NamedAttrMap } from '@tensorflow/tfjs-core';
import { f32 } from './program.js';

// WGSL pieces shared by the attention kernels (attention.ts: v1, attention-v2.ts: v2).

export interface Resolved {
  sigmoid: boolean;
  sigmoidBias: number;
  window: number; // 0: none
  scale: number;
  alibi: boolean;
}

export interface Dims {
  B: number;
  T: number;
  H: number;
  HKV: number;
  D: number;
}

export function dimsOf(q: TensorInfo, k: TensorInfo): Dims {
  const [B, T, H, D] = q.shape as [number, number, number, number];
  return { B, T, H, HKV: k.shape[2]!, D };
}

export function attrsOf(a: NamedAttrMap): Resolved {
  return { sigmoid: Boolean(a.sigmoid), sigmoidBias: a.sigmoidBias as number, window: a.window as number, scale: a.scale as number, alibi: Boolean(a.alibi) };
}

export function constants(d: Dims, r: Resolved): string {
  return `
    const B = ${d.B}u; const T = ${d.T}u; const H = ${d.H}u; const HKV = ${d.HKV}u; const G = ${d.H / d.HKV}u;
    const D4 = ${d.D / 4}u; const SCALE = ${f32(r.scale)}; const SBIAS = ${f32(r.sigmoidBias)};
    const WINDOW = ${r.window}u; const SIGMOID = ${r.sigmoid}; const ALIBI = ${r.alibi};
    const MASKED = -3.0e38;
    // key j is visible from query i (both < T); no short-circuit operators: branch-free code
    // (SwiftShader's compile time grows steeply with the branches of unrolled micro-tiles)
    fn visible(i: u32, j: u32) -> bool { return (j <= i) & ((WINDOW == 0u) | (i - j < WINDOW)) & (i < T) & (j < T); }
  `;
}

export function keyOf(name: string, d: Dims, r: Resolved, tiles: number[]): string {
  return `${name}_${d.B}_${d.T}_${d.H}_${d.HKV}_${d.D}_${r.sigmoid}_${r.sigmoidBias}_${r.window}_${r.scale}_${r.alibi}_${tiles.join('x')}`;
}

/** The shared part of both backward kernels: dS from the recomputed score. */
export const dsSnippet = `
  // p and dS for score x (already masked to MASKED when invisible), given dp = dO_i . v_j
  // (branch-free, see visible(); a masked x gives exp(-3e38 - lse) = 0 or sigmoid 0 anyway)
  fn weight(x: f32, lse: f32) -> f32 {
    let p = select(exp(x - lse), 1.0 / (1.0 + exp(-(x + SBIAS))), SIGMOID);
    return select(p, 0.0, x <= MASKED);
  }
  fn dscore(p: f32, dp: f32, delta: f32) -> f32 {
    return select(p * (dp - delta), dp * p * (1.0 - p), SIGMOID);
  }
`;

