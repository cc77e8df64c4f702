import { Module, customOp, init, matMul, tf, type Rng } from '@tsformer/core';

/** Token embedding table [vocab, dim]; `attend` reuses it as a tied output head. No weight decay. */
export class Embedding extends Module {
  readonly weight: tf.Variable; // [V, D]

  constructor(
    readonly vocabSize: number,
    readonly dim: number,
    rng: Rng,
    opts: { std?: number } = {},
  ) {
    super();
    this.weight = this.addParam('weight', init.normal(rng, [vocabSize, dim], opts.std ?? 0.02), { decay: false });
  }

  /** ids: int32 [B, T] -> [B, T, D] */
  forward(ids: tf.Tensor): tf.Tensor {
    return tf.tidy(() => {
      const flat = ids.reshape([-1]); // [B*T]
      return embeddingLookup(this.weight, flat).reshape([...ids.shape, this.dim]); // [B, T, D]
    });
  }

  /** Tied output projection: h [..., D] -> logits [..., V] = h E^T */
  attend(h: tf.Tensor): tf.Tensor {
    return tf.tidy(() => {
      const lead = h.shape.slice(0, -1);
      const logits = matMul(h.reshape([-1, this.dim]), this.weight, false, true); // [N, V]
      return logits.reshape([...lead, this.vocabSize]);
    });
  }
}

/**
 * gather(table, ids) with a hand-written gradient: the rows of dy are summed into the rows of the
 * table they came from. On cpu/wasm that scatter-add runs on the host (the data is in host memory
 * already; tfjs's cpu UnsortedSegmentSum builds one mask per row, and wasm has none); other
 * backends use their UnsortedSegmentSum kernel.
 */
export function embeddingLookup(table: tf.Tensor, ids: tf.Tensor): tf.Tensor {
  const [V, D] = table.shape as [number, number];
  return customOp((...args) => {
    const [w, save] = args as [tf.Tensor, tf.GradSaveFunc];
    save([ids]);
    return {
      value: tf.gather(w, ids), // [N, D]
      gradFunc: (dy, saved) => {
        const idx = saved[0]! as tf.Tensor1D;
        const backend = tf.getBackend();
        if (backend !== 'cpu' && backend !== 'wasm') return tf.unsortedSegmentSum(dy, idx, V);
        const g = dy.dataSync(); // [N, D]
        const rows = idx.dataSync();
        const out = new Float32Array(V * D);
        for (let n = 0; n < rows.length; n++) {
          const r = rows[n]! * D;
          const s = n * D;
          for (let d = 0; d < D; d++) out[r + d] = out[r + d]! + g[s + d]!;
        }
        return tf.tensor(out, [V, D]);
      },
    };
  })(table);
}
