import { Module, init, matMul, tf, type Rng } from '@tsformer/core';

export interface LinearOptions {
  /** Add a bias vector. Default false (Llama-style). */
  bias?: boolean;
  /** Std of the normal init. Default 0.02. */
  std?: number;
}

/** y = x W + b with W: [in, out]. Works on any leading shape: [..., in] -> [..., out]. */
export class Linear extends Module {
  readonly weight: tf.Variable; // [in, out]
  readonly bias?: tf.Variable; // [out]

  constructor(
    readonly inFeatures: number,
    readonly outFeatures: number,
    rng: Rng,
    opts: LinearOptions = {},
  ) {
    super();
    this.weight = this.addParam('weight', init.normal(rng, [inFeatures, outFeatures], opts.std ?? 0.02));
    if (opts.bias) this.bias = this.addParam('bias', init.zeros([outFeatures]));
  }

  forward(x: tf.Tensor): tf.Tensor {
    return tf.tidy(() => {
      const lead = x.shape.slice(0, -1);
      const x2 = x.reshape([-1, this.inFeatures]); // [N, in]
      let y = matMul(x2, this.weight); // [N, out]
      if (this.bias) y = y.add(this.bias);
      return y.reshape([...lead, this.outFeatures]); // [..., out]
    });
  }
}
