// A tiny DecoderLM training step on webgpu with the fused kernels, against the same step on cpu
// (the composite paths): the loss, every parameter gradient, and the loss after one full training
// step (global-norm clip and AdamW). Run in headless Chromium by the package's test and on a GPU by
// scripts/bench/gpu-check.ts. Test-only: the package itself does not depend on model or train.
import { selectBackend, tf } from '@tsformer/core';
import { DecoderLM, type ModelConfigInput } from '@tsformer/model';
import { AdamW, adamwConfigSchema, batchLoss, sparseCrossEntropy, trainStep, type Batch } from '@tsformer/train';
import { relRms } from '../checks.js';

/** Two layer kinds: GQA with RoPE and q/k RMSNorm; a sliding window with ALiBi. RMSNorm, SwiGLU (hidden 128). */
export const MODEL_STEP_CONFIG: ModelConfigInput = {
  vocabSize: 97,
  dModel: 48,
  nLayers: 2,
  maxSeqLen: 32,
  norm: { type: 'rmsnorm' },
  mlp: { type: 'swiglu' },
  layers: {
    pattern: ['global', 'local'],
    defs: {
      global: { attention: { type: 'mha', numHeads: 4, numKvHeads: 2, qkNorm: true } },
      local: { attention: { type: 'mha', numHeads: 4, window: 5 }, positional: { type: 'alibi' } },
    },
  },
};

/** GPT-2's layer: LayerNorm (with bias), GELU MLP, full causal MHA with RoPE, tied embeddings. */
export const GPT2_STEP_CONFIG: ModelConfigInput = {
  vocabSize: 97,
  dModel: 48,
  nLayers: 2,
  maxSeqLen: 32,
  norm: { type: 'layernorm' },
  mlp: { type: 'gelu' },
  attention: { type: 'mha', numHeads: 4 },
  positional: { type: 'rope', theta: 10000 },
  tieEmbeddings: true,
};

/** The kernels the GPT-2-shaped step must run on webgpu (each at least once). */
export const GPT2_STEP_KERNELS = ['TsfFlashAttention', 'TsfFlashAttentionGrad', 'TsfLayerNorm', 'TsfLayerNormGrad', 'TsfGelu', 'TsfGeluGrad', 'TsfRope', 'TsfSparseXent', 'TsfSumSquares', 'TsfAdamW'];

/** The kernels the step must run on webgpu (each at least once). */
export const MODEL_STEP_KERNELS = [
  'TsfFlashAttention',
  'TsfFlashAttentionGrad',
  'TsfRmsNorm',
  'TsfRmsNormGrad',
  'TsfRope',
  'TsfSparseXent',
  'TsfSparseXentGrad',
  'TsfAdamW',
];

export interface ModelStepReport {
  /** How often each of MODEL_STEP_KERNELS ran during the webgpu step. */
  kernelCalls: Record<string, number>;
  loss: { webgpu: number; cpu: number };
  /** |loss_webgpu - loss_cpu| / |loss_cpu| before and after one training step. */
  lossError: number;
  stepLossError: number;
  /** Relative RMS error of each parameter's gradient. */
  gradErrors: Record<string, number>;
  /** Tensors left behind by the webgpu step. */
  leaked: number;
}

interface StepResult {
  loss: number;
  grads: Map<string, Float32Array>;
  lossAfter: number;
}

/**
 * Counts the calls of each named kernel on `backend` by wrapping its registered kernel function;
 * the returned function restores the original registrations.
 */
function countKernels(names: string[], backend: string, counts: Record<string, number>): () => void {
  const originals: tf.KernelConfig[] = [];
  for (const name of names) {
    const cfg = tf.getKernel(name, backend);
    counts[name] = 0;
    if (!cfg) continue;
    originals.push(cfg);
    tf.unregisterKernel(name, backend);
    tf.registerKernel({
      ...cfg,
      kernelFunc: (args) => {
        counts[name]!++;
        return cfg.kernelFunc(args);
      },
    });
  }
  return () => {
    for (const cfg of originals) {
      tf.unregisterKernel(cfg.kernelName, backend);
      tf.registerKernel(cfg);
    }
  };
}

async function step(seed: number, batch: Batch, config: ModelConfigInput): Promise<StepResult> {
  const model = new DecoderLM(config, { seed });
  const ids = tf.tensor2d(batch.inputs, [batch.batchSize, batch.seqLen], 'int32');
  const targets = tf.tensor2d(batch.targets, [batch.batchSize, batch.seqLen], 'int32');
  const { value, grads } = tf.variableGrads(() => sparseCrossEntropy(model.forward(ids).logits, targets), model.trainableVariables());
  const out = new Map<string, Float32Array>();
  for (const [n, p] of model.namedParameters()) out.set(n, (await grads[p.variable.name]!.data()) as Float32Array);
  const loss = (await value.data())[0]!;
  tf.dispose([ids, targets, value, ...Object.values(grads)]);
  // one full step (clip + AdamW through the fused update where registered), then the loss again
  const opt = new AdamW(model.namedParameters(), adamwConfigSchema.parse({ type: 'adamw', lr: 1e-2 }));
  await trainStep(model, opt, [batch], { lr: 1e-2, clipGradNorm: 1 });
  const after = batchLoss(model, batch);
  const lossAfter = (await after.data())[0]!;
  after.dispose();
  opt.dispose();
  model.dispose();
  return { loss, grads: out, lossAfter };
}

/**
 * The step on webgpu (kernels registered by the caller) and then on cpu; leaves cpu active.
 * `webgpuModule`: the backend module, for bundles that cannot import it by name.
 */
export async function modelStepCheck(seed: number, webgpuModule?: unknown, variant: 'llama' | 'gpt2' = 'llama'): Promise<ModelStepReport> {
  const config = variant === 'gpt2' ? GPT2_STEP_CONFIG : MODEL_STEP_CONFIG;
  const kernels = variant === 'gpt2' ? GPT2_STEP_KERNELS : MODEL_STEP_KERNELS;
  // B * T = 64 rows: the MLP and output-head products take the package's matmul (>= 64 rows and columns)
  const B = 2;
  const T = 32;
  let s = seed >>> 0;
  const next = (n: number) => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s % n;
  };
  const vocab = config.vocabSize;
  const batch: Batch = {
    inputs: Int32Array.from({ length: B * T }, () => next(vocab)),
    targets: Int32Array.from({ length: B * T }, () => next(vocab)),
    batchSize: B,
    seqLen: T,
  };
  await selectBackend('webgpu', { webgpuModule });
  const kernelCalls: Record<string, number> = {};
  const restore = countKernels(kernels, 'webgpu', kernelCalls);
  let gpu: StepResult;
  let leaked: number;
  try {
    await step(seed, batch, config); // warm-up: compiles every pipeline, so the count below is not the pool's growth
    const before = tf.memory().numTensors;
    gpu = await step(seed, batch, config);
    leaked = tf.memory().numTensors - before;
  } finally {
    restore();
  }
  await selectBackend('cpu');
  const cpu = await step(seed, batch, config);
  const gradErrors: Record<string, number> = {};
  for (const [name, g] of cpu.grads) {
    const a = tf.tensor(gpu.grads.get(name)!);
    const b = tf.tensor(g);
    gradErrors[name] = await relRms(a, b);
    tf.dispose([a, b]);
  }
  return {
    kernelCalls,
    loss: { webgpu: gpu.loss, cpu: cpu.loss },
    lossError: Math.abs(gpu.loss - cpu.loss) / Math.abs(cpu.loss),
    stepLossError: Math.abs(gpu.lossAfter - cpu.lossAfter) / Math.abs(cpu.lossAfter),
    gradErrors,
    leaked,
  };
}

export interface NonFiniteStepReport {
  /** The error trainStep threw (NonFiniteError expected). */
  error: string;
  /** Every parameter bit for bit as before the step. */
  unchanged: boolean;
  /** The optimizer's step count after the failed step (0: taken back). */
  optimizerStep: number;
  /** Whether the fused AdamW ran (the guarded path was taken). */
  fusedAdamW: boolean;
}

/**
 * A training step whose loss is NaN (one embedding row poisoned) on webgpu: the guarded fused AdamW
 * is enqueued before the loss is read back, so the weights must come back unchanged from the device
 * and trainStep must still throw NonFiniteError.
 */
export async function nonFiniteStepCheck(webgpuModule?: unknown): Promise<NonFiniteStepReport> {
  await selectBackend('webgpu', { webgpuModule });
  const model = new DecoderLM(GPT2_STEP_CONFIG, { seed: 5 });
  const opt = new AdamW(model.namedParameters(), adamwConfigSchema.parse({ type: 'adamw', lr: 1e-2 }));
  const counts: Record<string, number> = {};
  const restore = countKernels(['TsfAdamW'], 'webgpu', counts);
  try {
    const embed = model.namedParameters().find(([n]) => n.includes('embed'))![1].variable;
    const poisoned = tf.tidy(() => embed.add(tf.oneHot(tf.tensor1d([3], 'int32'), embed.shape[0]!).reshape([embed.shape[0]!, 1]).mul(NaN)));
    embed.assign(poisoned);
    poisoned.dispose();
    const before = await Promise.all(model.namedParameters().map(([, p]) => p.variable.data()));
    const T = 8;
    const batch: Batch = { inputs: Int32Array.from({ length: T }, (_, i) => (i * 5) % 97), targets: Int32Array.from({ length: T }, (_, i) => (i * 7) % 97), batchSize: 1, seqLen: T };
    let error = '';
    try {
      await trainStep(model, opt, [batch], { lr: 1e-2, clipGradNorm: 1 });
    } catch (e) {
      error = String((e as Error).name) + ': ' + (e as Error).message;
    }
    const after = await Promise.all(model.namedParameters().map(([, p]) => p.variable.data()));
    let unchanged = after.length === before.length;
    for (let i = 0; i < after.length && unchanged; i++) {
      const a = after[i] as Float32Array;
      const b = before[i] as Float32Array;
      for (let j = 0; j < a.length; j++) if (!Object.is(a[j], b[j])) unchanged = false;
    }
    return { error, unchanged, optimizerStep: opt.step, fusedAdamW: (counts.TsfAdamW ?? 0) > 0 };
  } finally {
    restore();
    opt.dispose();
    model.dispose();
  }
}
