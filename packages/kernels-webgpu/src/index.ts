export { registerWebGpuKernels } from './register.js';
export {
  flashAttention,
  flashAttentionComposite,
  flashAttentionSupported,
  FLASH_ATTENTION,
  FLASH_ATTENTION_GRAD,
  type FlashAttentionOptions,
} from './attention.js';
export { kernelActive } from './program.js';
export { runChecks, type CheckResult } from './checks.js';
