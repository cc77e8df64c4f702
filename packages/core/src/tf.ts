/**
 * The one TensorFlow.js instance every tsformer package uses.
 *
 * `@tensorflow/tfjs` is imported for its side effects: it registers every gradient and the chained
 * tensor methods against the shared engine, in a form that works the same under Node (CommonJS
 * builds), vitest and bundlers (ES module builds). Mixing `tfjs-core`'s CommonJS entry with its ES
 * module `register_all_gradients` file would load two copies of the ops and break gradients.
 */
import '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-cpu';
import * as tf from '@tensorflow/tfjs-core';

export { tf };
export type Tensor = tf.Tensor;
export type Variable = tf.Variable;

// Silence tfjs's "install tfjs-node" banner and other console warnings; we report backends ourselves.
tf.env().set('PROD', true);
