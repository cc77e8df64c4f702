export { main } from './cli.js';
export { loadConfig, resolveConfig, applyOverride, checkConfigFiles, runConfigSchema, ConfigError, type RunConfig, type LoadedConfig } from './config.js';
export { trainCommand, type TrainOptions, type TrainSummary } from './train-command.js';
export { sampleCommand, evalCommand, loadRun, type LoadedRun } from './inspect-commands.js';
export { benchCommand, type BenchRow } from './bench.js';
export { consoleOut, memoryOut, type Out } from './out.js';
