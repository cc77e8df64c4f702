import { Module, Rng, TsformerError, tf, type Parameter } from '@tsformer/core';
import { attentionHeadDim, attentionUsesPositional, type Attention, type AttentionCache } from '@tsformer/attention';
import { Block, ModuleList, blockForward, decoderForward, layerSpecs, type DecoderLM, type ForwardOptions, type LanguageModel, type ModelConfig } from '@tsformer/model';
import { createPositional, noPositional, type PositionalEncoding } from '@tsformer/positional';
import { z } from 'zod';
import { LolcatsAttention, lolcatsConfigSchema } from './lolcats.js';
import { deltaNetStudentSchema, gatedDeltaNetStudentSchema, glaStudentSchema, linearStudentFromTeacher, type LinearStudentConfig } from './students.js';

/** What replaces a converted layer's attention: LoLCATs (default) or a registered linear attention. */
export const studentConfigSchema = z.discriminatedUnion('type', [lolcatsConfigSchema, glaStudentSchema, deltaNetStudentSchema, gatedDeltaNetStudentSchema]);
export type StudentConfig = z.infer<typeof studentConfigSchema>;
export type StudentConfigInput = z.input<typeof studentConfigSchema>;

/** A language model's surface (DecoderLM and StudentLM both have it): `@tsformer/model`'s interface. */
export type { LanguageModel };

/**
 * A converted block: the teacher block's norms, MLP and dropout (the same modules) around a new
 * attention. Same residual lines and parameter names as `Block`.
 */
export class StudentBlock extends Module {
  readonly attn_norm: Block['attn_norm'];
  readonly attn: Attention;
  readonly mlp_norm: Block['mlp_norm'];
  readonly mlp: Block['mlp'];
  readonly dropout: Block['dropout'];

  constructor(teacher: Block, attn: Attention) {
    super();
    this.attn_norm = this.addModule('attn_norm', teacher.attn_norm);
    this.attn = this.addModule('attn', attn);
    this.mlp_norm = this.addModule('mlp_norm', teacher.mlp_norm);
    this.mlp = this.addModule('mlp', teacher.mlp);
    this.dropout = this.addModule('dropout', teacher.dropout);
  }

  /** x: [B, T, D] -> [B, T, D]: Block's residual lines. */
  forward(x: tf.Tensor, positions: Int32Array, cache?: AttentionCache): { y: tf.Tensor; cache?: AttentionCache } {
    return blockForward(this, x, positions, cache);
  }
}

export interface BuildStudentOptions {
  /** Indices of the layers whose attention is replaced; the others stay the teacher's softmax. */
  convert: readonly number[];
  /** The replacement. Default `{ type: lolcats }` with its defaults. */
  student?: StudentConfigInput;
  /** Seed of the new parameters (feature maps, gates). Default 0. */
  seed?: number;
  /**
   * LoLCATs only: register the teacher's projection modules in converted layers instead of copies.
   * Saves memory in stage 1, but stage 2 (LoRA, merge) would then change the teacher. Default false.
   */
  shareProjections?: boolean;
}

/**
 * The student: the teacher with some layers' attention replaced. Embeddings, norms, MLPs, the head
 * and every kept softmax layer are the teacher's own modules (shared, not copied); a converted
 * layer is a `StudentBlock` around the new attention. Parameter names are the teacher's
 * (`layers.3.attn.q_proj.weight`), plus the new ones (`layers.3.attn.feature_map_q.weight`), so
 * teacher checkpoints and stage states load by name. The forward is DecoderLM's.
 *
 * `dispose()` frees only what the student owns (the converted attentions' new parameters, copied
 * projections and LoRA factors); the teacher owns the rest.
 */
export class StudentLM extends Module implements LanguageModel {
  readonly config: ModelConfig;
  readonly student: StudentConfig;
  /** Converted layer indices, ascending. */
  readonly converted: number[];
  readonly embed: DecoderLM['embed'];
  readonly embedDropout: DecoderLM['embedDropout'];
  readonly layers: ModuleList<Block | StudentBlock>;
  readonly norm: DecoderLM['norm'];
  readonly lm_head?: DecoderLM['lm_head'];
  /** The positional encoding of each layer, built from the config as DecoderLM builds it. */
  readonly positionals: PositionalEncoding[];
  /** Whether converted LoLCATs layers hold the teacher's projection modules (see BuildStudentOptions). */
  readonly sharedProjections: boolean;
  readonly #ownedPositionals: PositionalEncoding[] = [];

  constructor(teacher: DecoderLM, opts: BuildStudentOptions) {
    super();
    const cfg = (this.config = teacher.config);
    this.student = studentConfigSchema.parse(opts.student ?? { type: 'lolcats' });
    const n = cfg.nLayers;
    const converted = [...new Set(opts.convert)].sort((a, b) => a - b);
    for (const i of converted) if (!(Number.isInteger(i) && i >= 0 && i < n)) throw new TsformerError(`convert: layer ${i} is not in 0..${n - 1}`, 'config');
    this.converted = converted;
    this.sharedProjections = opts.shareProjections ?? false;
    const specs = layerSpecs(cfg);
    const byKind = new Map<string, PositionalEncoding>();
    this.positionals = specs.map((spec) => {
      if (!attentionUsesPositional(spec.attention)) return noPositional;
      let p = byKind.get(spec.kind);
      if (!p) {
        p = createPositional(spec.positional, attentionHeadDim(spec.attention, cfg.dModel));
        byKind.set(spec.kind, p);
        this.#ownedPositionals.push(p);
      }
      return p;
    });
    const rng = Rng.seeded(opts.seed ?? 0);
    const outStd = cfg.initStd / Math.sqrt(2 * cfg.nLayers);
    const blocks = teacher.layers.items.map((block, i) => {
      if (!converted.includes(i)) return block;
      const layerRng = rng.fork(i);
      const attn =
        this.student.type === 'lolcats'
          ? LolcatsAttention.fromTeacher(block.attn, this.positionals[i]!, this.student, layerRng, { share: this.sharedProjections })
          : linearStudentFromTeacher(block.attn, this.student as LinearStudentConfig, { rng: layerRng, contextLength: cfg.maxSeqLen, outStd });
      return new StudentBlock(block, attn);
    });
    this.embed = this.addModule('embed', teacher.embed);
    this.embedDropout = this.addModule('embed_dropout', teacher.embedDropout);
    this.layers = this.addModule('layers', new ModuleList<Block | StudentBlock>(blocks));
    this.norm = this.addModule('norm', teacher.norm);
    if (teacher.lm_head) this.lm_head = this.addModule('lm_head', teacher.lm_head);
  }

  /** The attention of layer i. */
  attention(i: number): Attention {
    const b = this.layers.items[i];
    if (!b) throw new TsformerError(`layer ${i} is not in 0..${this.layers.items.length - 1}`, 'config');
    return b.attn;
  }

  initCaches(): AttentionCache[] {
    return this.layers.items.map((b) => b.attn.initCache());
  }

  /** ids: int32 [B, T] -> logits [B, T, V] (and the extended caches when caches were given): DecoderLM's forward. */
  forward(ids: tf.Tensor, opts: ForwardOptions = {}): { logits: tf.Tensor; caches?: AttentionCache[] } {
    return decoderForward(this, ids, opts);
  }

  /** The parameters this student created (not the teacher's): what `dispose` frees. */
  ownParameters(): Array<[string, Parameter]> {
    const teacherVars = new Set<tf.Variable>();
    for (const [i, b] of this.layers.items.entries()) {
      if (!this.converted.includes(i)) for (const [, p] of b.namedParameters()) teacherVars.add(p.variable);
    }
    for (const m of [this.embed, this.norm, this.lm_head]) if (m) for (const [, p] of m.namedParameters()) teacherVars.add(p.variable);
    for (const i of this.converted) {
      const b = this.layers.items[i] as StudentBlock;
      for (const m of [b.attn_norm, b.mlp_norm, b.mlp]) for (const [, p] of m.namedParameters()) teacherVars.add(p.variable);
      if (this.sharedProjections && b.attn instanceof LolcatsAttention) {
        for (const m of [b.attn.q_proj, b.attn.k_proj, b.attn.v_proj, b.attn.o_proj, b.attn.q_norm, b.attn.k_norm, b.attn.g_proj]) {
          if (!m) continue;
          // LoRA factors attached to a shared projection are the student's own
          for (const [name, p] of m.namedParameters()) if (!/^lora_[AB]\./.test(name)) teacherVars.add(p.variable);
        }
      }
    }
    return this.namedParameters().filter(([, p]) => !teacherVars.has(p.variable));
  }

  override dispose(): void {
    for (const [, p] of this.ownParameters()) p.variable.dispose();
    for (const p of this.#ownedPositionals) p.dispose?.();
  }
}

/** `new StudentLM(teacher, opts)`. */
export function buildStudent(teacher: DecoderLM, opts: BuildStudentOptions): StudentLM {
  return new StudentLM(teacher, opts);
}

/**
 * Which layers to convert: `layers` (a range "a:b", a list "0,3,5", "all", or indices; default all)
 * minus `keepSoftmax` (by index). See `parseLayers` for the range syntax.
 */
export function layersToConvert(nLayers: number, opts: { layers?: string | readonly number[]; keepSoftmax?: readonly number[] } = {}): number[] {
  const chosen = typeof opts.layers === 'string' ? parseLayers(opts.layers, nLayers) : opts.layers ? [...opts.layers] : range(0, nLayers);
  for (const i of [...chosen, ...(opts.keepSoftmax ?? [])]) {
    if (!(Number.isInteger(i) && i >= 0 && i < nLayers)) throw new TsformerError(`layer ${i} is not in 0..${nLayers - 1}`, 'config');
  }
  const keep = new Set(opts.keepSoftmax ?? []);
  return [...new Set(chosen)].filter((i) => !keep.has(i)).sort((a, b) => a - b);
}

/**
 * Layer selections as the CLI writes them: "a:b" (a <= i < b, either end optional: "4:" and ":4"),
 * "3" (one layer), "0,3,5" (a list, whose items may be ranges too), "all".
 */
export function parseLayers(spec: string, nLayers: number): number[] {
  const s = spec.trim();
  if (s === 'all' || s === ':') return range(0, nLayers);
  const out = new Set<number>();
  for (const part of s.split(',')) {
    const p = part.trim();
    const m = /^(\d*):(\d*)$/.exec(p);
    let items: number[];
    if (m) {
      const a = m[1] ? Number(m[1]) : 0;
      const b = m[2] ? Number(m[2]) : nLayers;
      if (a >= b) throw new TsformerError(`layers "${spec}": empty range ${p}`, 'config');
      items = range(a, b);
    } else if (/^\d+$/.test(p)) {
      items = [Number(p)];
    } else {
      throw new TsformerError(`layers "${spec}": "${p}" is not a layer index or a range a:b`, 'config');
    }
    for (const i of items) {
      if (i >= nLayers) throw new TsformerError(`layers "${spec}": layer ${i} is not in 0..${nLayers - 1}`, 'config');
      out.add(i);
    }
  }
  return [...out].sort((a, b) => a - b);
}

function range(a: number, b: number): number[] {
  return Array.from({ length: b - a }, (_, i) => a + i);
}
