/** Where commands print: info to stdout, warnings and errors to stderr. Tests capture it. */
export interface Out {
  info(message: string): void;
  warn(message: string): void;
  /** The stream the progress display writes to. */
  stream: { write(s: string): unknown };
  tty: boolean;
}

export const consoleOut: Out = {
  info: (m) => void process.stdout.write(`${m}\n`),
  warn: (m) => void process.stderr.write(`${m}\n`),
  stream: process.stdout,
  tty: Boolean(process.stdout.isTTY),
};

/** Captures everything (for tests). */
export function memoryOut(): Out & { text(): string } {
  let buf = '';
  return {
    info: (m) => void (buf += `${m}\n`),
    warn: (m) => void (buf += `${m}\n`),
    stream: { write: (s: string) => (buf += s) },
    tty: false,
    text: () => buf,
  };
}
