/**
 * The one TensorFlow.js instance every tsformer package uses: tfjs-core with all gradients
 * registered and the reference `cpu` backend. Other backends are loaded on demand by `selectBackend`.
 */
import '@tensorflow/tfjs-core/dist/register_all_gradients.js';
import '@tensorflow/tfjs-core/dist/public/chained_ops/register_all_chained_ops.js';
import '@tensorflow/tfjs-backend-cpu';
import * as tf from '@tensorflow/tfjs-core';

export { tf };
export type Tensor = tf.Tensor;
export type Variable = tf.Variable;

// Silence tfjs's "install tfjs-node" banner and other console warnings; we report backends ourselves.
tf.env().set('PROD', true);
