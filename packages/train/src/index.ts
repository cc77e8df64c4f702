export { sparseCrossEntropy } from './losses.js';
export { AdamW, adamwConfigSchema, type AdamWConfig } from './adamw.js';
export { learningRate, scheduleConfigSchema, type ScheduleConfig } from './schedule.js';
export { clipByGlobalNorm } from './clip.js';
export { trainConfigSchema, type TrainConfig } from './config.js';
export { trainStep, evaluate, batchLoss, NonFiniteError, type Batch, type StepResult } from './step.js';
export { trainLoop, type BatchSource, type LoopState, type LoopOptions, type LoopResult, type StepLog, type EvalLog } from './loop.js';
export { Progress, formatDuration } from './progress.js';
