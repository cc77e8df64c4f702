import type { RopeScaling } from './schema.js';
import { llama3InverseFrequencies } from './llama3.js';

// RoPE frequency math, in float64 on the host. R is the rotary dim (even); pair i < R/2 turns at
// inverse frequency theta^(-2i/R) radians per position before any scaling. The scalings follow
// Hugging Face transformers `modeling_rope_utils.py` (see docs/positional.md for the field map).

/** Rotated dims for a head dim: floor(fraction * headDim) (as HF's int()), rounded down to even. */
export function rotaryDimFor(headDim: number, fraction: number): number {
  const r = Math.floor(fraction * headDim);
  return r - (r % 2);
}

/** Unscaled inverse frequencies theta^(-2i/R), i < R/2. */
export function baseInverseFrequencies(rotaryDim: number, theta: number): Float64Array {
  const out = new Float64Array(rotaryDim / 2);
  for (let i = 0; i < out.length; i++) out[i] = Math.pow(theta, (-2 * i) / rotaryDim);
  return out;
}

/** NTK-aware base: theta * factor^(R/(R-2)), which stretches the lowest frequency by exactly `factor`. */
export function ntkTheta(theta: number, factor: number, rotaryDim: number): number {
  return theta * Math.pow(factor, rotaryDim / (rotaryDim - 2));
}

/**
 * Dynamic NTK base at sequence length L (HF `_compute_dynamic_ntk_parameters`): the unscaled theta
 * while L <= originalMaxPositions, else theta * (factor L / originalMaxPositions - (factor - 1))^(R/(R-2)).
 */
export function dynamicNtkTheta(theta: number, factor: number, originalMaxPositions: number, rotaryDim: number, seqLen: number): number {
  if (seqLen <= originalMaxPositions) return theta;
  return theta * Math.pow((factor * seqLen) / originalMaxPositions - (factor - 1), rotaryDim / (rotaryDim - 2));
}

/**
 * YaRN: the (fractional) pair index whose wavelength fits `rotations` times into the original
 * context: solves originalMaxPositions / (2 pi theta^(2d/R)) = rotations for d.
 */
export function yarnCorrectionDim(rotations: number, rotaryDim: number, theta: number, originalMaxPositions: number): number {
  return (rotaryDim * Math.log(originalMaxPositions / (rotations * 2 * Math.PI))) / (2 * Math.log(theta));
}

/**
 * YaRN ramp bounds [low, high]: pairs below `low` (more than betaFast turns) keep their frequency,
 * pairs above `high` (fewer than betaSlow turns) are fully interpolated. With `truncate` the bounds
 * are rounded outwards (floor, ceil), as HF does by default; clipped to [0, R - 1] as HF does.
 */
export function yarnCorrectionRange(
  rotaryDim: number,
  theta: number,
  originalMaxPositions: number,
  betaFast: number,
  betaSlow: number,
  truncate = true,
): [number, number] {
  let low = yarnCorrectionDim(betaFast, rotaryDim, theta, originalMaxPositions);
  let high = yarnCorrectionDim(betaSlow, rotaryDim, theta, originalMaxPositions);
  if (truncate) {
    low = Math.floor(low);
    high = Math.ceil(high);
  }
  return [Math.max(low, 0), Math.min(high, rotaryDim - 1)];
}

/** YaRN's default attention factor ("mscale"): 0.1 ln(factor) + 1, and 1 for factor <= 1. */
export function yarnAttentionFactor(factor: number): number {
  return factor <= 1 ? 1 : 0.1 * Math.log(factor) + 1;
}

/**
 * YaRN inverse frequencies: with ramp r_i = clamp((i - low) / (high - low), 0, 1),
 *   invFreq_i = theta^(-2i/R) * ((1 - r_i) + r_i / factor)
 * (extrapolated, i.e. unchanged, below low; interpolated, i.e. divided by factor, above high).
 */
export function yarnInverseFrequencies(
  rotaryDim: number,
  theta: number,
  s: { factor: number; originalMaxPositions: number; betaFast: number; betaSlow: number; truncate: boolean },
): Float64Array {
  const out = baseInverseFrequencies(rotaryDim, theta);
  const [low, high0] = yarnCorrectionRange(rotaryDim, theta, s.originalMaxPositions, s.betaFast, s.betaSlow, s.truncate);
  const high = high0 === low ? low + 0.001 : high0; // HF: avoids a zero-width ramp
  for (let i = 0; i < out.length; i++) {
    const ramp = Math.min(1, Math.max(0, (i - low) / (high - low)));
    out[i] = out[i]! * (1 - ramp + ramp / s.factor);
  }
  return out;
}

/** What one call's rotation uses: inverse frequencies [R/2] and the factor applied to cos and sin. */
export interface RopeFrequencies {
  invFreq: Float64Array;
  attentionFactor: number;
}

/**
 * Inverse frequencies and attention factor for a scaling. `seqLen` (largest position + 1) matters
 * only for `dynamic`.
 */
export function ropeFrequencies(rotaryDim: number, theta: number, scaling: RopeScaling | undefined, seqLen: number): RopeFrequencies {
  if (!scaling) return { invFreq: baseInverseFrequencies(rotaryDim, theta), attentionFactor: 1 };
  switch (scaling.type) {
    case 'linear': {
      // positions / factor == frequencies / factor (HF divides inv_freq)
      const invFreq = baseInverseFrequencies(rotaryDim, theta).map((f) => f / scaling.factor);
      return { invFreq, attentionFactor: 1 };
    }
    case 'ntk':
      return { invFreq: baseInverseFrequencies(rotaryDim, ntkTheta(theta, scaling.factor, rotaryDim)), attentionFactor: 1 };
    case 'dynamic': {
      const t = dynamicNtkTheta(theta, scaling.factor, scaling.originalMaxPositions, rotaryDim, seqLen);
      return { invFreq: baseInverseFrequencies(rotaryDim, t), attentionFactor: 1 };
    }
    case 'yarn':
      return {
        invFreq: yarnInverseFrequencies(rotaryDim, theta, scaling),
        attentionFactor: scaling.attentionFactor ?? yarnAttentionFactor(scaling.factor),
      };
    case 'llama3':
      return { invFreq: llama3InverseFrequencies(rotaryDim, theta, scaling), attentionFactor: 1 };
  }
}
