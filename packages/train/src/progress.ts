import type { StepLog } from './loop.js';

interface Out {
  write(s: string): unknown;
  isTTY?: boolean;
  columns?: number;
}

/**
 * Progress display: a redrawn bar with loss, tokens/s and ETA on a terminal; plain periodic lines
 * (every `logEvery` steps) when stdout is a file or a pipe.
 */
export class Progress {
  #rate = 0; // smoothed seconds per step
  #lastElapsed?: number;
  #drawn = false;

  constructor(
    readonly total: number,
    readonly logEvery: number,
    private readonly out: Out = process.stdout,
    private readonly tty = Boolean(process.stdout.isTTY),
  ) {}

  update(s: StepLog): void {
    if (this.#lastElapsed !== undefined) {
      const dt = s.elapsed - this.#lastElapsed;
      this.#rate = this.#rate === 0 ? dt : 0.9 * this.#rate + 0.1 * dt;
    }
    this.#lastElapsed = s.elapsed;
    const eta = this.#rate * (this.total - s.step);
    const text = `step ${s.step}/${this.total}  loss ${s.loss.toFixed(4)}  lr ${s.lr.toExponential(2)}  ${Math.round(s.tokensPerSec).toLocaleString('en-US')} tok/s  ETA ${formatDuration(eta)}`;
    if (this.tty) {
      const width = 24;
      const filled = Math.round((width * s.step) / this.total);
      const bar = `[${'='.repeat(filled)}${filled < width ? '>' : ''}${' '.repeat(Math.max(0, width - filled - 1))}]`;
      this.out.write(`\r\x1b[2K${bar} ${text}`);
      this.#drawn = true;
    } else if (s.step % this.logEvery === 0 || s.step === this.total) {
      this.out.write(`${text}\n`);
    }
  }

  /** A message on its own line (validation results, checkpoints), keeping the bar intact. */
  note(message: string): void {
    if (this.tty && this.#drawn) this.out.write('\r\x1b[2K');
    this.out.write(`${message}\n`);
    this.#drawn = false;
  }

  done(): void {
    if (this.tty && this.#drawn) this.out.write('\n');
    this.#drawn = false;
  }
}

export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return '?';
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const r = s % 60;
  return h > 0 ? `${h}h${String(m).padStart(2, '0')}m` : m > 0 ? `${m}m${String(r).padStart(2, '0')}s` : `${r}s`;
}
