/**
 * What the GPU benchmarks share (gpu.ts, gpu-attn.ts, gpu-linear.ts, gpu-host.ts): waiting for the
 * GPU, timing a call, GPU time per program, freeing tfjs-webgpu's buffer pool, and the
 * GPT-2-small-shaped model they train.
 */
import { Rng, tf } from '@tsformer/core';
import { DecoderLM } from '@tsformer/model';

const now = () => performance.now();

/**
 * Waits until the GPU has produced `r`: reads back a sum made on the GPU. (Reading a tiny tensor
 * made on the host would not wait: tfjs-webgpu runs ops whose inputs are all small and on the host
 * on the CPU.)
 */
export async function sync(r: tf.Tensor | tf.Tensor[]): Promise<void> {
  const ts = Array.isArray(r) ? r : [r];
  const s = tf.tidy(() => ts.map((t) => t.sum()).reduce((a, b) => a.add(b)));
  await s.data();
  s.dispose();
}

/**
 * A timer: mean wall ms per call of `fn` after a warm-up (compiles), `warmMs` of busy GPU and a probe, over as many calls
 * as fit `budgetMs` (between `minReps` and `maxReps`), with one sync at the end.
 */
export function timer(budgetMs: number, minReps = 1, maxReps = 20, warmMs = 300): (fn: () => tf.Tensor | tf.Tensor[]) => Promise<{ ms: number }> {
  return async (fn) => {
    let r = fn();
    await sync(r);
    tf.dispose(r);
    // keep the GPU busy for warmMs first: after the host made the inputs (seconds at the largest
    // sizes) the GPU has idled, and the first call timed then read 40-60% low on the H100 (clocks)
    // (10 calls between syncs: short kernels synced one by one leave the GPU mostly idle)
    for (const w0 = now(); now() - w0 < warmMs; ) {
      for (let i = 0; i < 10; i++) {
        r = fn();
        if (i === 9) await sync(r);
        tf.dispose(r);
      }
    }
    const t0 = now();
    r = fn();
    await sync(r);
    tf.dispose(r);
    const one = now() - t0;
    const reps = Math.max(minReps, Math.min(maxReps, Math.floor(budgetMs / Math.max(one, 1e-3))));
    const t1 = now();
    for (let i = 0; i < reps; i++) {
      r = fn();
      if (i === reps - 1) await sync(r);
      tf.dispose(r);
    }
    return { ms: (now() - t1) / reps };
  };
}

/** GPU ms of one call from timestamp queries (`tf.time`): the total and the sum per program name. */
export async function profileGpu(fn: () => tf.TensorContainer): Promise<{ kernelMs: number; wallMs: number; by: Map<string, number> }> {
  const r = await tf.time(() => tf.dispose(fn()));
  const by = new Map<string, number>();
  const info = (r as unknown as { getExtraProfileInfo?: () => string }).getExtraProfileInfo?.() ?? '';
  for (const part of info.split(', ')) {
    const m = /^(.*): ([\d.eE+-]+)$/.exec(part);
    if (m) by.set(m[1]!, (by.get(m[1]!) ?? 0) + Number(m[2]));
  }
  return { kernelMs: r.kernelMs as number, wallMs: r.wallMs, by };
}

/** `name ms, ...` of the largest entries of a per-program profile. */
export function topPrograms(by: Map<string, number>, most = 8, digits = 1): string {
  return [...by.entries()]
    .sort((a, b) => b[1] - a[1])
    .slice(0, most)
    .map(([n, ms]) => `${n} ${ms.toFixed(digits)}`)
    .join(', ');
}

/**
 * Frees tfjs-webgpu's pool of released buffers. The pool keeps every released buffer for reuse by
 * exact size, so a sweep over shapes would hold the largest of each size ever seen.
 */
export function releasePool(): void {
  const bm = (tf.backend() as unknown as { bufferManager?: { freeBuffers: Map<string, Array<{ destroy(): void; size: number }>>; numBytesAllocated: number; numFreeBuffers: number } }).bufferManager;
  if (!bm) return;
  for (const list of bm.freeBuffers.values()) {
    for (const b of list) {
      bm.numBytesAllocated -= b.size;
      b.destroy();
    }
    list.length = 0;
  }
  bm.numFreeBuffers = 0;
}

/** The GPT-2-small-shaped DecoderLM of the training measurements: LayerNorm, GELU MLP, RoPE, tied embeddings. */
export function gpt2Model(o: { vocab: number; dModel: number; layers: number; heads: number; T: number; rng: Rng }): DecoderLM {
  return new DecoderLM(
    {
      vocabSize: o.vocab,
      dModel: o.dModel,
      nLayers: o.layers,
      maxSeqLen: o.T,
      attention: { type: 'mha', numHeads: o.heads },
      positional: { type: 'rope', theta: 10000 },
      norm: { type: 'layernorm' },
      mlp: { type: 'gelu' },
      tieEmbeddings: true,
    },
    { rng: o.rng },
  );
}
