/**
 * Loads a run's newest complete checkpoint (written by `tsformer train`) and generates text: the
 * model is rebuilt from the config saved in the checkpoint step itself, the weights are checked
 * against the manifest's sha256 hashes and loaded by their parameter names.
 *
 *   npm run example examples/generate-from-run.ts -- runs/tiny-brown "The jury said" 80
 *
 * Byte-level runs only (tokenizer `byte`, as the default run); the last line is a JSON summary.
 */
import { Rng, selectBackend, tf } from '@tsformer/core';
import { DecoderLM, generate, modelConfigSchema } from '@tsformer/model';
import { decodeShardedSafetensors, findResumeStep, hostToTensors, openStore, readStep, stepDirName } from '@tsformer/checkpoint';
import YAML from 'yaml';

const [runDir, promptText = 'The ', n = '60'] = process.argv.slice(2);
if (!runDir) throw new Error('usage: generate-from-run.ts <run dir> [prompt] [tokens]');
await selectBackend('auto');

const store = openStore(`${runDir}/checkpoints`);
// the newest step whose manifest verifies (a corrupt newest step is skipped with a warning)
const step = await findResumeStep(store, { onWarning: (m) => console.warn(`warning: ${m}`) });
if (step === undefined) throw new Error(`${runDir}/checkpoints has no complete checkpoint`);
const files = await readStep(store, step);

// the step carries its resolved config: the model is rebuilt from it alone
const config = YAML.parse(new TextDecoder().decode(files.get('config.yaml')!)) as { model: unknown; data?: { tokenizer?: { type?: string } } };
if (config.data?.tokenizer?.type && config.data.tokenizer.type !== 'byte') throw new Error(`this example decodes bytes; the run uses tokenizer ${config.data.tokenizer.type}`);
const model = new DecoderLM(modelConfigSchema.parse(config.model)).eval();
const weights = hostToTensors(decodeShardedSafetensors(files, 'model', `${runDir}/${stepDirName(step)}`).tensors);
model.loadStateDict(weights); // checks names, shapes and dtypes before assigning anything
tf.dispose([...weights.values()]);

const prompt = new TextEncoder().encode(promptText);
const tokens = await generate(model, prompt, { maxNewTokens: Number(n), temperature: 0.8, topK: 40, rng: Rng.seeded(1) });
const text = new TextDecoder().decode(Uint8Array.from([...prompt, ...tokens]));
console.log(`step ${step}:\n${text}`);
console.log(JSON.stringify({ step, tokens: tokens.length, text }));
model.dispose();
