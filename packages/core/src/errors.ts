/** An error a user can act on: its message names the culprit (a key, a path, a tensor). */
export class TsformerError extends Error {
  constructor(
    message: string,
    /** Machine-readable kind, e.g. `config`, `backend`, `shape`, `checkpoint`, `data`. */
    readonly kind: string = 'error',
  ) {
    super(message);
    this.name = 'TsformerError';
  }
}
