import { z } from 'zod';
import type { Attention, AttentionDeps } from './types.js';
import { SoftmaxAttention, softmaxAttentionSchema, type SoftmaxAttentionConfig } from './softmax.js';
import { MlaAttention, mlaAttentionSchema, type MlaAttentionConfig } from './mla.js';
import { GlaAttention, glaAttentionSchema, type GlaAttentionConfig } from './gla.js';
import {
  DeltaNetAttention,
  deltaNetAttentionSchema,
  gatedDeltaNetAttentionSchema,
  type DeltaNetAttentionConfig,
  type GatedDeltaNetAttentionConfig,
} from './deltanet.js';
import { PathAttention, pathAttentionSchema, pathKvNumbersPerToken, type PathAttentionConfig } from './path.js';

/**
 * Attention types by config `type:`. The config schema is the discriminated union of the entries'
 * schemas; later types (gla, deltanet, ...) register here.
 */
export const attentionRegistry = {
  mha: {
    schema: softmaxAttentionSchema,
    create: (cfg: SoftmaxAttentionConfig, deps: AttentionDeps): Attention => new SoftmaxAttention(cfg, deps),
  },
  mla: {
    schema: mlaAttentionSchema,
    create: (cfg: MlaAttentionConfig, deps: AttentionDeps): Attention => new MlaAttention(cfg, deps),
  },
  gla: {
    schema: glaAttentionSchema,
    create: (cfg: GlaAttentionConfig, deps: AttentionDeps): Attention => new GlaAttention(cfg, deps),
  },
  deltanet: {
    schema: deltaNetAttentionSchema,
    create: (cfg: DeltaNetAttentionConfig, deps: AttentionDeps): Attention => new DeltaNetAttention(cfg, deps),
  },
  'gated-deltanet': {
    schema: gatedDeltaNetAttentionSchema,
    create: (cfg: GatedDeltaNetAttentionConfig, deps: AttentionDeps): Attention => new DeltaNetAttention(cfg, deps),
  },
  path: {
    schema: pathAttentionSchema,
    create: (cfg: PathAttentionConfig, deps: AttentionDeps): Attention => new PathAttention(cfg, deps),
  },
} as const;

export type AttentionType = keyof typeof attentionRegistry;

export const attentionConfigSchema = z.discriminatedUnion('type', [
  attentionRegistry.mha.schema,
  attentionRegistry.mla.schema,
  attentionRegistry.gla.schema,
  attentionRegistry.deltanet.schema,
  attentionRegistry['gated-deltanet'].schema,
  attentionRegistry.path.schema,
]);
export type AttentionConfig = z.infer<typeof attentionConfigSchema>;

export function createAttention(cfg: AttentionConfig, deps: AttentionDeps): Attention {
  switch (cfg.type) {
    case 'mha':
      return attentionRegistry.mha.create(cfg, deps);
    case 'mla':
      return attentionRegistry.mla.create(cfg, deps);
    case 'gla':
      return attentionRegistry.gla.create(cfg, deps);
    case 'deltanet':
      return attentionRegistry.deltanet.create(cfg, deps);
    case 'gated-deltanet':
      return attentionRegistry['gated-deltanet'].create(cfg, deps);
    case 'path':
      return attentionRegistry.path.create(cfg, deps);
  }
}

/**
 * Per-head dim the positional encoding is built for, for a model width: the head dim for mha, the
 * rotated part (qkRopeHeadDim) for mla, the per-head key width for gla (which uses no positional
 * encoding: the model may build one, the layer ignores it).
 */
export function attentionHeadDim(cfg: AttentionConfig, dModel: number): number {
  switch (cfg.type) {
    case 'mha':
      return cfg.headDim ?? dModel / cfg.numHeads;
    case 'mla':
      return cfg.qkRopeHeadDim;
    case 'gla':
      return (dModel * cfg.expandK) / cfg.numHeads;
    case 'deltanet':
    case 'gated-deltanet':
    case 'path':
      return cfg.headDim ?? dModel / cfg.numHeads;
  }
}

/**
 * Whether an attention type takes a positional encoding. The linear family (GLA, DeltaNet, Gated
 * DeltaNet) takes none: order enters through the recurrence; PaTH is its own (data-dependent)
 * position encoding.
 */
export function attentionUsesPositional(cfg: AttentionConfig): boolean {
  return cfg.type === 'mha' || cfg.type === 'mla';
}

/**
 * Numbers a decoding cache holds per token, per layer and per sequence: 2 * numKvHeads * headDim
 * for mha (keys and values), kvLoraRank + qkRopeHeadDim for mla (the latent and the shared rope key),
 * 2 * numHeads * headDim for path (its keys kept transformed, values; + numHeads gate sums with FoX).
 * 0 for the linear family (gla, deltanet, gated-deltanet): the cache is a recurrent state of constant
 * size, numHeads * K * V numbers per layer and sequence (K, V the per-head key and value widths;
 * plus (convSize - 1) * (2 * H*K + H*V) for the short-convolution tails when enabled), however
 * many tokens it has absorbed (see `recurrentStateNumbers`).
 */
export function kvCacheNumbersPerToken(cfg: AttentionConfig, dModel: number): number {
  switch (cfg.type) {
    case 'mha':
      return 2 * (cfg.numKvHeads ?? cfg.numHeads) * (cfg.headDim ?? dModel / cfg.numHeads);
    case 'mla':
      return cfg.kvLoraRank + cfg.qkRopeHeadDim;
    case 'path':
      return pathKvNumbersPerToken(cfg, dModel);
    case 'gla':
    case 'deltanet':
    case 'gated-deltanet':
      return 0;
  }
}

/**
 * Numbers a decoding cache holds per sequence and layer whatever its length: the recurrent state
 * and short-convolution tails of the linear family; 0 for the KV-cache types.
 */
export function recurrentStateNumbers(cfg: AttentionConfig, dModel: number): number {
  switch (cfg.type) {
    case 'mha':
    case 'mla':
    case 'path':
      return 0;
    case 'gla': {
      const hk = dModel * cfg.expandK;
      const hv = dModel * cfg.expandV;
      return (hk / cfg.numHeads) * hv + (cfg.useShortConv ? (cfg.convSize - 1) * (2 * hk + hv) : 0);
    }
    case 'deltanet':
    case 'gated-deltanet': {
      const k = cfg.headDim ?? dModel / cfg.numHeads;
      const hk = cfg.numHeads * k;
      const hv = hk * cfg.expandV;
      return k * hv + (cfg.useShortConv ? (cfg.convSize - 1) * (2 * hk + hv) : 0);
    }
  }
}
