import { Module, TsformerError, checkShape, fused, init, sameShape, tf } from '@tsformer/core';
import { rmsNormalize } from './norm.js';

/**
 * Gated RMSNorm over the last axis: RMSNorm(x) * weight * silu(gate), the per-head output norm of
 * GLA and DeltaNet layers. x, gate: [..., D] -> [..., D].
 */
export class GatedRMSNorm extends Module {
  readonly weight: tf.Variable; // [D]

  /**
   * @param dim size D of the normalized (last) axis.
   * @param eps added to the mean square. Default 1e-5.
   */
  constructor(
    readonly dim: number,
    readonly eps = 1e-5,
  ) {
    super();
    this.weight = this.addParam('weight', init.ones([dim]), { decay: false });
  }

  forward(x: tf.Tensor, gate: tf.Tensor): tf.Tensor {
    checkShape('GatedRMSNorm input x', x, [...x.shape.slice(0, -1).map(() => null), this.dim]);
    if (!sameShape(gate.shape, x.shape)) {
      throw new TsformerError(`GatedRMSNorm gate: expected shape [${x.shape.join(', ')}] (that of x), got [${gate.shape.join(', ')}]`, 'shape');
    }
    const f = fused('rmsNorm')?.(x, this.weight, this.eps, gate);
    return f ?? tf.tidy(() => rmsNormalize(x, this.eps).mul(this.weight).mul(gate.mul(gate.sigmoid()))); // * silu(gate)
  }
}
