import { Module, fused, tf, type Rng } from '@tsformer/core';
import { Linear } from './linear.js';

export interface MlpOptions {
  /** Bias on the projections. Default false. */
  bias?: boolean;
  /** Init std of the output projection (scaled down for deep residual stacks). Default 0.02. */
  outStd?: number;
}

/** SwiGLU feed-forward (Llama): down(silu(gate(x)) * up(x)). Names match Hugging Face's. */
export class SwiGLU extends Module {
  readonly gate_proj: Linear;
  readonly up_proj: Linear;
  readonly down_proj: Linear;

  constructor(dim: number, hidden: number, rng: Rng, opts: MlpOptions = {}) {
    super();
    this.gate_proj = this.addModule('gate_proj', new Linear(dim, hidden, rng, { bias: opts.bias }));
    this.up_proj = this.addModule('up_proj', new Linear(dim, hidden, rng, { bias: opts.bias }));
    this.down_proj = this.addModule('down_proj', new Linear(hidden, dim, rng, { bias: opts.bias, std: opts.outStd }));
  }

  forward(x: tf.Tensor): tf.Tensor {
    return tf.tidy(() => {
      const g = this.gate_proj.forward(x);
      return this.down_proj.forward(g.mul(g.sigmoid()).mul(this.up_proj.forward(x)));
    });
  }
}

/** GELU feed-forward (GPT-2): fc2(gelu(fc1(x))), tanh approximation. */
export class GeluMlp extends Module {
  readonly fc1: Linear;
  readonly fc2: Linear;

  constructor(dim: number, hidden: number, rng: Rng, opts: MlpOptions = {}) {
    super();
    this.fc1 = this.addModule('fc1', new Linear(dim, hidden, rng, { bias: opts.bias ?? true }));
    this.fc2 = this.addModule('fc2', new Linear(hidden, dim, rng, { bias: opts.bias ?? true, std: opts.outStd }));
  }

  forward(x: tf.Tensor): tf.Tensor {
    return tf.tidy(() => this.fc2.forward(gelu(this.fc1.forward(x))));
  }
}

/** gelu(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) */
export function gelu(x: tf.Tensor): tf.Tensor {
  // the fused kernel where one is registered for the active backend (webgpu), else tfjs ops
  const f = fused('gelu')?.(x);
  if (f) return f;
  return tf.tidy(() => {
    const inner = x.add(x.pow(3).mul(0.044715)).mul(Math.sqrt(2 / Math.PI));
    return x.mul(inner.tanh().add(1)).mul(0.5);
  });
}
