/**
 * Seeded, serializable random numbers (sfc32). Every random choice in tsformer (initialization,
 * dropout seeds, shuffling, sampling) draws from one of these, never from `Math.random`, so a run
 * is reproducible from its seed and resumable from `rng.state()`.
 */
export type RngState = readonly [number, number, number, number];

/** splitmix32: spreads one 32-bit seed into well-mixed words for the sfc32 state. */
function splitmix32(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x9e3779b9) >>> 0;
    let z = s;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
    return (z ^ (z >>> 16)) >>> 0;
  };
}

export class Rng {
  #a: number;
  #b: number;
  #c: number;
  #d: number;

  private constructor(state: RngState) {
    [this.#a, this.#b, this.#c, this.#d] = state.map((x) => x >>> 0) as unknown as RngState;
  }

  /** A generator seeded from an integer (any JS number; only its low 32 bits matter, plus an optional stream id). */
  static seeded(seed: number, stream = 0): Rng {
    const mix = splitmix32((seed >>> 0) ^ Math.imul(stream >>> 0, 0x27d4eb2d));
    const rng = new Rng([mix(), mix(), mix(), mix()]);
    for (let i = 0; i < 12; i++) rng.nextUint32(); // discard the first outputs, as sfc32 recommends
    return rng;
  }

  static fromState(state: RngState): Rng {
    if (!Array.isArray(state) || state.length !== 4 || state.some((x) => !Number.isInteger(x) || x < 0 || x > 0xffffffff)) {
      throw new Error(`invalid RNG state ${JSON.stringify(state)}: expected 4 unsigned 32-bit integers`);
    }
    return new Rng(state);
  }

  state(): RngState {
    return [this.#a >>> 0, this.#b >>> 0, this.#c >>> 0, this.#d >>> 0];
  }

  /** Rewinds this generator (and everything holding it, e.g. dropout layers) to a saved state. */
  restore(state: RngState): void {
    [this.#a, this.#b, this.#c, this.#d] = Rng.fromState(state).state();
  }

  /** A new independent generator derived from this one (advances this one by one draw). */
  fork(stream: number): Rng {
    return Rng.seeded(this.nextUint32(), stream);
  }

  nextUint32(): number {
    const t = (((this.#a + this.#b) >>> 0) + this.#d) >>> 0;
    this.#d = (this.#d + 1) >>> 0;
    this.#a = (this.#b ^ (this.#b >>> 9)) >>> 0;
    this.#b = (this.#c + (this.#c << 3)) >>> 0;
    this.#c = ((this.#c << 21) | (this.#c >>> 11)) >>> 0;
    this.#c = (this.#c + t) >>> 0;
    return t;
  }

  /** Uniform in [0, 1) with 32 bits of resolution. */
  uniform(): number {
    return this.nextUint32() / 4294967296;
  }

  /** Uniform integer in [0, n). */
  int(n: number): number {
    if (!(n > 0) || !Number.isInteger(n)) throw new Error(`Rng.int: n must be a positive integer, got ${n}`);
    return Math.floor(this.uniform() * n);
  }

  /** Standard normal (Box-Muller; one draw per call keeps the state simple to serialize). */
  normal(): number {
    const u1 = 1 - this.uniform(); // (0, 1]
    const u2 = this.uniform();
    return Math.sqrt(-2 * Math.log(u1)) * Math.cos(2 * Math.PI * u2);
  }

  /** `n` normals with the given standard deviation, clipped to +-`truncate` std devs when given. */
  normalArray(n: number, std = 1, truncate?: number): Float32Array {
    const out = new Float32Array(n);
    for (let i = 0; i < n; i++) {
      let z = this.normal();
      if (truncate !== undefined) while (Math.abs(z) > truncate) z = this.normal();
      out[i] = z * std;
    }
    return out;
  }

  uniformArray(n: number, lo = 0, hi = 1): Float32Array {
    const out = new Float32Array(n);
    for (let i = 0; i < n; i++) out[i] = lo + (hi - lo) * this.uniform();
    return out;
  }

  /** In-place Fisher-Yates shuffle. */
  shuffle<T extends { length: number; [i: number]: unknown }>(xs: T): T {
    for (let i = xs.length - 1; i > 0; i--) {
      const j = this.int(i + 1);
      const t = xs[i];
      xs[i] = xs[j];
      xs[j] = t;
    }
    return xs;
  }

  /** A seed for tfjs ops that take one (e.g. `tf.dropout`): drawn from this generator. */
  opSeed(): number {
    return this.nextUint32();
  }
}
