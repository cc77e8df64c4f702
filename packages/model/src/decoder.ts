import { Module, Rng, TsformerError, checkShape, tf } from '@tsformer/core';
import { Dropout, Embedding, GeluMlp, LayerNorm, Linear, RMSNorm, SwiGLU } from '@tsformer/layers';
import { createPositional, noPositional, type PositionalEncoding } from '@tsformer/positional';
import { attentionHeadDim, attentionUsesPositional, createAttention, disposeCache, type Attention, type AttentionCache } from '@tsformer/attention';
import { layerSpecs, mlpHidden, modelConfigSchema, type LayerSpec, type ModelConfig, type ModelConfigInput } from './config.js';

type Norm = RMSNorm | LayerNorm;
type Mlp = SwiGLU | GeluMlp;

function makeNorm(cfg: ModelConfig): Norm {
  return cfg.norm.type === 'rmsnorm' ? new RMSNorm(cfg.dModel, cfg.norm.eps) : new LayerNorm(cfg.dModel, cfg.norm.eps);
}

/** A list of modules named 0, 1, 2, ... so their parameters are `layers.3.attn.q_proj.weight`. */
export class ModuleList<M extends Module> extends Module {
  readonly items: M[] = [];
  constructor(items: M[]) {
    super();
    items.forEach((m, i) => this.items.push(this.addModule(String(i), m)));
  }
}

/** A pre-norm transformer block. */
export class Block extends Module {
  readonly attn_norm: Norm;
  readonly attn: Attention;
  readonly mlp_norm: Norm;
  readonly mlp: Mlp;
  readonly dropout: Dropout;

  constructor(cfg: ModelConfig, spec: LayerSpec, positional: PositionalEncoding, rng: Rng) {
    super();
    const outStd = cfg.initStd / Math.sqrt(2 * cfg.nLayers);
    this.attn_norm = this.addModule('attn_norm', makeNorm(cfg));
    this.attn = this.addModule('attn', createAttention(spec.attention, { dModel: cfg.dModel, positional, rng, outStd, contextLength: cfg.maxSeqLen }));
    this.mlp_norm = this.addModule('mlp_norm', makeNorm(cfg));
    const hidden = mlpHidden(cfg);
    const mlpOpts = { bias: cfg.mlp.bias, outStd };
    this.mlp = this.addModule('mlp', cfg.mlp.type === 'swiglu' ? new SwiGLU(cfg.dModel, hidden, rng, mlpOpts) : new GeluMlp(cfg.dModel, hidden, rng, mlpOpts));
    this.dropout = this.addModule('dropout', new Dropout(cfg.dropout, rng));
  }

  /** x: [B, T, D] -> [B, T, D] */
  forward(x: tf.Tensor, positions: Int32Array, cache?: AttentionCache): { y: tf.Tensor; cache?: AttentionCache } {
    return blockForward(this, x, positions, cache);
  }
}

/** What a pre-norm block's forward reads: Block's modules, or a distilled student block's. */
export interface BlockParts {
  readonly attn_norm: Norm;
  readonly attn: Attention;
  readonly mlp_norm: Norm;
  readonly mlp: Mlp;
  readonly dropout: Dropout;
  readonly training: boolean;
}

/** The pre-norm residual lines: x + attn(norm(x)), then + mlp(norm(.)). x: [B, T, D] -> [B, T, D]. */
export function blockForward(b: BlockParts, x: tf.Tensor, positions: Int32Array, cache?: AttentionCache): { y: tf.Tensor; cache?: AttentionCache } {
  let newCache: AttentionCache | undefined;
  const y = tf.tidy(() => {
    const a = b.attn.forward(b.attn_norm.forward(x), { positions, cache, training: b.training });
    newCache = a.cache;
    const h = x.add(b.dropout.forward(a.y));
    return h.add(b.dropout.forward(b.mlp.forward(b.mlp_norm.forward(h))));
  });
  return { y, cache: newCache };
}

export interface ForwardOptions {
  /** Absolute positions of the T tokens. Default 0..T-1, or continuing after the caches. */
  positions?: Int32Array;
  /** One cache per layer (from `initCaches` or a previous call) to decode incrementally. */
  caches?: AttentionCache[];
}

/** Decoder-only LM: embeddings, pre-norm blocks, final norm, (tied) output head. */
export class DecoderLM extends Module {
  readonly config: ModelConfig;
  readonly embed: Embedding;
  readonly embedDropout: Dropout;
  readonly layers: ModuleList<Block>;
  readonly norm: Norm;
  readonly lm_head?: Linear;
  /** One positional encoding per layer kind, shared by the layers of that kind. */
  readonly #positionals = new Map<string, PositionalEncoding>();

  /** Builds a model from a config (validated here; defaults filled). `seed` drives the init. */
  constructor(config: ModelConfigInput | ModelConfig, opts: { seed?: number; rng?: Rng } = {}) {
    super();
    const parsed = modelConfigSchema.safeParse(config);
    if (!parsed.success) {
      const issues = parsed.error.issues.map((i) => `model.${i.path.join('.')}: ${i.message}`).join('\n  ');
      throw new TsformerError(`invalid model config:\n  ${issues}`, 'config');
    }
    const cfg = (this.config = parsed.data);
    const rng = opts.rng ?? Rng.seeded(opts.seed ?? 0);
    this.embed = this.addModule('embed', new Embedding(cfg.vocabSize, cfg.dModel, rng, { std: cfg.initStd }));
    this.embedDropout = this.addModule('embed_dropout', new Dropout(cfg.dropout, rng));
    const blocks = layerSpecs(cfg).map((spec) => {
      let positional = this.#positionals.get(spec.kind);
      if (!positional) {
        positional = attentionUsesPositional(spec.attention) ? createPositional(spec.positional, attentionHeadDim(spec.attention, cfg.dModel)) : noPositional;
        this.#positionals.set(spec.kind, positional);
      }
      return new Block(cfg, spec, positional, rng);
    });
    this.layers = this.addModule('layers', new ModuleList(blocks));
    this.norm = this.addModule('norm', makeNorm(cfg));
    if (!cfg.tieEmbeddings) this.lm_head = this.addModule('lm_head', new Linear(cfg.dModel, cfg.vocabSize, rng, { std: cfg.initStd }));
  }

  initCaches(): AttentionCache[] {
    return this.layers.items.map((b) => b.attn.initCache());
  }

  /** ids: int32 [B, T] -> logits [B, T, V] (and the extended caches when caches were given). */
  forward(ids: tf.Tensor, opts: ForwardOptions = {}): { logits: tf.Tensor; caches?: AttentionCache[] } {
    return decoderForward(this, ids, opts);
  }
}

/** What a decoder's forward reads: DecoderLM's modules, or a distilled student's. */
export interface DecoderParts {
  readonly embed: Embedding;
  readonly embedDropout: Dropout;
  readonly layers: { readonly items: ReadonlyArray<{ forward(x: tf.Tensor, positions: Int32Array, cache?: AttentionCache): { y: tf.Tensor; cache?: AttentionCache } }> };
  readonly norm: Norm;
  readonly lm_head?: Linear;
}

/** Embeddings, the blocks, the final norm and the (tied) head: ids int32 [B, T] -> logits [B, T, V]. */
export function decoderForward(m: DecoderParts, ids: tf.Tensor, opts: ForwardOptions = {}): { logits: tf.Tensor; caches?: AttentionCache[] } {
  const { T } = checkShape('token ids', ids, ['B', 'T']) as { T: number };
  if (ids.dtype !== 'int32') throw new TsformerError(`token ids must be int32, got ${ids.dtype}`, 'shape');
  const layers = m.layers.items;
  if (opts.caches && opts.caches.length !== layers.length) {
    throw new TsformerError(`expected ${layers.length} caches, got ${opts.caches.length}`, 'shape');
  }
  const start = opts.caches?.[0]?.length ?? 0;
  const positions = opts.positions ?? Int32Array.from({ length: T }, (_, i) => start + i);
  const newCaches: AttentionCache[] = [];
  const logits = tf.tidy(() => {
    let h = m.embedDropout.forward(m.embed.forward(ids)); // [B, T, D]
    layers.forEach((block, i) => {
      const out = block.forward(h, positions, opts.caches?.[i]);
      h = out.y;
      if (out.cache) newCaches.push(out.cache);
    });
    h = m.norm.forward(h);
    return m.lm_head ? m.lm_head.forward(h) : m.embed.attend(h); // [B, T, V]
  });
  return opts.caches ? { logits, caches: newCaches } : { logits };
}

export function disposeCaches(caches: AttentionCache[] | undefined): void {
  caches?.forEach(disposeCache);
}
