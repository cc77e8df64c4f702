/**
 * One tsformer attention module (Gated DeltaNet) inside plain TensorFlow.js code: the embedding,
 * the output head and the optimizer are ordinary tfjs (`tf.variable`, `tf.train.adam`); the
 * module's weights are ordinary `tf.Variable`s too, handed to the optimizer with the rest.
 * The task needs memory: predict the next element of repeating random cycles.
 * Then the module decodes token by token with its recurrent cache and is checked against its
 * full forward.
 *
 *   npm run example examples/attention-in-tfjs.ts -- --steps 80
 *
 * The last line is a JSON summary.
 */
import * as tf from '@tensorflow/tfjs';
import { Rng, selectBackend } from '@tsformer/core';
import { attentionConfigSchema, createAttention, disposeCache } from '@tsformer/attention';
import { noPositional } from '@tsformer/positional';

const i = process.argv.indexOf('--steps');
const steps = i >= 0 ? Number(process.argv[i + 1]) : 80;
await selectBackend('auto'); // tensorflow > webgpu > wasm > cpu, whichever starts here

const vocab = 16, dModel = 32, T = 24, B = 16;
// someone else's model: an embedding table and an output head
const embed = tf.variable(tf.randomNormal([vocab, dModel], 0, 0.5, 'float32', 1));
const head = tf.variable(tf.randomNormal([dModel, vocab], 0, 0.1, 'float32', 2));
// ...with a Gated DeltaNet layer in the middle: x [B, T, D] -> y [B, T, D]
const attn = createAttention(attentionConfigSchema.parse({ type: 'gated-deltanet', numHeads: 2, chunkSize: 8 }), {
  dModel,
  positional: noPositional,
  rng: Rng.seeded(3),
  contextLength: T,
});
const positions = Int32Array.from({ length: T }, (_, t) => t);
const logitsOf = (ids: tf.Tensor2D, training: boolean) => {
  // one-hot times the table (tf.gather's gradient needs UnsortedSegmentSum, which tfjs-wasm lacks)
  const x = tf.oneHot(ids.reshape([-1]), vocab).toFloat().matMul(embed).reshape([B, T, dModel]); // [B, T, D]
  const { y } = attn.forward(x, { positions, training });
  return tf.matMul(x.add(y).reshape([-1, dModel]), head); // residual, then [B*T, vocab]
};

// sequences that repeat a random cycle of length 4: after one cycle, the next token is predictable
const rng = Rng.seeded(5);
function batch(): { ids: tf.Tensor2D; next: tf.Tensor1D } {
  const ids = new Int32Array(B * (T + 1));
  for (let b = 0; b < B; b++) {
    const cycle = Array.from({ length: 4 }, () => rng.int(vocab));
    for (let t = 0; t <= T; t++) ids[b * (T + 1) + t] = cycle[t % 4]!;
  }
  const all = tf.tensor2d(ids, [B, T + 1], 'int32');
  const out = { ids: all.slice([0, 0], [B, T]) as tf.Tensor2D, next: all.slice([0, 1], [B, T]).reshape([-1]) as tf.Tensor1D };
  all.dispose();
  return out;
}

const optimizer = tf.train.adam(1e-2);
const varList = [embed, head, ...attn.namedParameters().map(([, p]) => p.variable)];
const losses: number[] = [];
for (let step = 0; step < steps; step++) {
  const { ids, next } = batch();
  const loss = optimizer.minimize(() => tf.losses.softmaxCrossEntropy(tf.oneHot(next, vocab), logitsOf(ids, true)) as tf.Scalar, true, varList)!;
  losses.push((await loss.data())[0]!);
  tf.dispose([ids, next, loss]);
  if (step % 20 === 0 || step === steps - 1) console.log(`step ${step} loss ${losses[step]!.toFixed(4)}`);
}

// decode one token at a time with the module's cache: the same outputs as the full forward
const { ids } = batch();
const x = tf.oneHot(ids.slice([0, 0], [1, T]).reshape([-1]), vocab).toFloat().matMul(embed).reshape([1, T, dModel]);
const full = attn.forward(x, { positions, training: false }).y;
let cache = attn.initCache();
const stepsOut: tf.Tensor[] = [];
for (let t = 0; t < T; t++) {
  const r = attn.forward(x.slice([0, t, 0], [1, 1, dModel]), { positions: Int32Array.of(t), cache, training: false });
  stepsOut.push(r.y);
  cache = r.cache!;
}
const decoded = tf.concat(stepsOut, 1);
const decodeMaxDiff = (await tf.max(tf.abs(decoded.sub(full))).data())[0]!;
disposeCache(cache);
console.log(`decode vs forward: max |diff| ${decodeMaxDiff.toExponential(2)}`);
console.log(JSON.stringify({ firstLoss: losses[0], lastLoss: losses[losses.length - 1], decodeMaxDiff, uniformLoss: Math.log(vocab) }));
