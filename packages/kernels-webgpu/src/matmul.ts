import type { KernelConfig, KernelFunc, TensorInfo } from '@tensorflow/tfjs-core';
import { tf } from '@tsformer/core';
import { type KernelProgram, cachedProgram, run, type KernelProgramArgs, type WebGpuBackendLike } from './program.js';

/**
 * A register-tiled fp32 BatchMatMul for webgpu, replacing tfjs-backend-webgpu's for the shapes it
 * takes: C[b] = op(A[b]) op(B[b]), op = identity or transpose, batch broadcast when one side has a
 * single matrix. tfjs's kernel reached 11.4 TFLOP/s at 4096^2 on the H100 (cuBLAS fp32: 51.7).
 *
 * One workgroup of 256 threads (16 x 16) computes a BM x BN block of C (64 x 128 by default, 64 x 64
 * when larger blocks would leave the GPU idle; 128 x 128 and 128 x 64 on request); each thread owns a
 * TM x TN micro-tile (BM/16 x BN/16) of accumulators in registers. K advances in steps of BK (8 when a
 * side is 128; 16 with 64-blocks where workgroup memory allows):
 * the A and B slices live in workgroup memory k-major (As[k][m], Bs[k][n]), double-buffered, so
 * one barrier per step suffices and the next slice's global loads are in flight while the current
 * one is multiplied. Global loads go in quads of 4 consecutive elements along the operand's
 * contiguous axis: one vec4 load when that axis is a multiple of 4, else 4 guarded scalar loads.
 * Transposes are only indexing: a transposed operand's quads run along the other axis. A thread's
 * rows and columns are spread in groups of 4 (rows ty*4 + 64 g + i), so the vec4 reads of a warp
 * from workgroup memory are consecutive (no bank conflicts) or broadcast.
 */
export interface MatMulShape {
  batch: number;
  /** 1 when A (or B) is one matrix broadcast over the batch. */
  batchA: number;
  batchB: number;
  M: number;
  N: number;
  K: number;
  transA: boolean;
  transB: boolean;
}

interface Tiles {
  order: 'n' | 'm';
  /** Slices of K computed by separate workgroups into partial products, then summed (1: none). */
  split: number;
  BM: number;
  BN: number;
  BK: number;
  TM: number;
  TN: number;
  /** The BK steps of a slice written out with constant offsets instead of a loop. */
  unroll: boolean;
}

const THREADS = 256;

/** Tile configuration for a shape on a device with `limit` bytes of workgroup memory. */
export function matMulTiles(s: MatMulShape, limit: number, force: TileChoice = {}): Tiles {
  // 64 x 128 blocks (4 x 8 per thread) by default, 64 x 64 when C is narrower than 128 columns. On the
  // H100 (gpu-host.ts, GPT-2-small shapes at 4096 tokens) 64 x 128 ran 5-50% faster than 128 x 128 on
  // 11 of 15 products (lm head dX 22.5 -> 34.1 TFLOP/s) and within 3% on the others; in the training
  // step (gpu-host.ts --by-shape, --policy) no other tile choice did better, and the 768 x 4096 x 768
  // weight gradients went 10.9 -> 8.9 ms per step against 64 x 64 blocks with K split in 4.
  const BM = force.bm ?? force.block ?? 64;
  const BN = force.bn ?? force.block ?? (s.N >= 128 ? 128 : 64);
  // 16 x 16 threads, each a (BM / 16) x (BN / 16) micro-tile
  const [TM, TN] = [BM / 16, BN / 16];
  const bytes = (bk: number) => 2 * bk * (BM + BN) * 4 + 16; // two buffers of A and B slices, + wgShared
  // 128-blocks step K by 8: on the H100 (gpu.ts --calibrate 4096) BK 8 ran 29-34 TFLOP/s in every
  // transpose combination against 17-25 with BK 16 (two 64 KiB-per-step tiles cut occupancy)
  const BK = force.bk ?? (BM === 128 || BN === 128 || bytes(16) > limit ? 8 : 16);
  // Split K when the blocks alone are few (under ~1.5 per SM of an H100) and K is long (>= 256
  // steps): the weight gradients X^T dY of a training step (M, N = the layer's widths, K = tokens).
  // On the H100, 768 x 4096 x 768 ran 5.4 TFLOP/s unsplit and 14.2 split in 4. Each slice keeps at
  // least 64 K steps. The sum of the slices is one more dispatch (~0.1 ms of host time on
  // tfjs-webgpu), so products that are merely short of a full wave are left whole.
  const blocks = s.batch * Math.ceil(s.M / BM) * Math.ceil(s.N / BN);
  const steps = Math.ceil(s.K / BK);
  const auto = blocks < 200 && steps >= 256 ? Math.max(1, Math.min(16, Math.ceil(528 / blocks), Math.floor(steps / 64))) : 1;
  const split = Math.max(1, Math.min(force.split ?? auto, steps));
  return { BM, BN, BK, TM, TN, order: force.order ?? 'n', split, unroll: force.unroll ?? false };
}

/** Forces a block size, K step or workgroup order (checks exercise every configuration; calibration picks). */
export interface TileChoice {
  /** Square blocks of this size (64: 4 x 4 per thread; 128: 8 x 8). */
  block?: 64 | 128;
  /** Block rows (of C) alone, overriding `block`: 64 or 128. */
  bm?: 64 | 128;
  /** Block columns alone, overriding `block`: 64 or 128. */
  bn?: 64 | 128;
  bk?: 8 | 16;
  /** Which block index runs fastest across consecutive workgroups: `n` (default; they share A's rows) or `m`. */
  order?: 'n' | 'm';
  /** K slices summed afterwards (default: automatic, more when the blocks alone are few and K long; 1: none). */
  split?: number;
  /** Write out the K steps of a slice with constant offsets (default: a loop). */
  unroll?: boolean;
}

/** The four transpose combinations of a product: `nt` is A @ B^T. */
export type MatMulCombo = 'nn' | 'nt' | 'tn' | 'tt';

/** Per combination: this package's kernel with a tile choice, or tfjs's own kernel. */
export type MatMulPolicy = Partial<Record<MatMulCombo, TileChoice | 'tfjs'>>;

const policy: MatMulPolicy = {};

/** Sets how the registered BatchMatMul routes each transpose combination (default: ours, automatic tiles). */
export function setMatMulPolicy(p: MatMulPolicy): void {
  for (const k of ['nn', 'nt', 'tn', 'tt'] as const) delete policy[k];
  Object.assign(policy, p);
}

export function matMulCombo(transA: boolean, transB: boolean): MatMulCombo {
  return `${transA ? 't' : 'n'}${transB ? 't' : 'n'}` as MatMulCombo;
}

/** The kernel for a shape and tile choice (its WGSL built once per distinct key). */
function program(s: MatMulShape, t: Tiles): KernelProgram {
  const key = `tsf_matmul_${s.batch}_${s.batchA}_${s.batchB}_${s.M}_${s.N}_${s.K}_${s.transA}_${s.transB}_${t.BM}x${t.BN}x${t.BK}_${t.TM}x${t.TN}_${t.order}_${t.split}${t.unroll ? '_u' : ''}`;
  return cachedProgram(key, () => programArgs(s, t, key));
}

function programArgs(s: MatMulShape, t: Tiles, key: string): KernelProgramArgs {
  const { M, N, K, transA, transB } = s;
  const { BM, BN, BK, TM, TN, order } = t;
  const TX = BN / TN; // threads along n (16)
  const TY = BM / TM; // threads along m (16)
  const GM = TM / 4; // vec4 groups of rows per thread
  const GN = TN / 4;
  // stored layouts: A is [M, K] (or [K, M] transposed), B is [K, N] (or [N, K])
  const aRows = transA ? K : M;
  const aCols = transA ? M : K;
  const bRows = transB ? N : K;
  const bCols = transB ? K : N;
  const vecA = aCols % 4 === 0;
  const vecB = bCols % 4 === 0;
  // a tile of A in its stored layout: SR rows x SC contiguous columns, read in quads
  const [aSR, aSC] = transA ? [BK, BM] : [BM, BK];
  const [bSR, bSC] = transB ? [BN, BK] : [BK, BN];
  // quads per tile, and per thread (the last round guarded when the tile has fewer than THREADS x rounds)
  const aTotal = (aSR * aSC) / 4;
  const bTotal = (bSR * bSC) / 4;
  const aQuads = Math.ceil(aTotal / THREADS);
  const bQuads = Math.ceil(bTotal / THREADS);
  const guard = (l: number, total: number, line: string) => ((l + 1) * THREADS > total ? `if (localIndex + ${l * THREADS}u < ${total}u) { ${line} }` : line);
  const tilesM = Math.ceil(M / BM);
  const tilesN = Math.ceil(N / BN);
  const steps = Math.ceil(K / BK);
  // K slices: slice sp takes steps [sp * PER, min(STEPS, (sp + 1) * PER)); every slice non-empty
  const per = Math.ceil(steps / t.split);
  const split = Math.ceil(steps / per);

  // global quad loader of one operand: element (r, c..c+3) of the stored matrix at offset `off`
  const loader = (name: string, rows: number, cols: number, vec: boolean) =>
    vec
      ? `fn load${name}(off: u32, r: u32, c: u32) -> vec4<f32> {
          if (r < ${rows}u && c < ${cols}u) { return ${name}[(off + r * ${cols}u + c) / 4u]; }
          return vec4<f32>(0.0);
        }`
      : `fn load${name}(off: u32, r: u32, c: u32) -> vec4<f32> {
          var v = vec4<f32>(0.0);
          if (r < ${rows}u) {
            let base = off + r * ${cols}u;
            for (var i = 0u; i < 4u; i++) { if (c + i < ${cols}u) { v[i] = ${name}[base + c + i]; } }
          }
          return v;
        }`;

  // loads of step `kt` into registers ra[], rb[]
  const loadRegs = (kt: string) => {
    const lines: string[] = [];
    for (let l = 0; l < aQuads; l++) {
      const q = `(localIndex + ${l * THREADS}u)`;
      const sr = `${q} / ${aSC / 4}u`;
      const sc = `(${q} % ${aSC / 4}u) * 4u`;
      // stored rows/cols of A: transposed [K, M] -> (k, m), else [M, K] -> (m, k)
      lines.push(guard(l, aTotal, transA ? `ra${l} = loadA(aOff, ${kt} * BK + ${sr}, m0 + ${sc});` : `ra${l} = loadA(aOff, m0 + ${sr}, ${kt} * BK + ${sc});`));
    }
    for (let l = 0; l < bQuads; l++) {
      const q = `(localIndex + ${l * THREADS}u)`;
      const sr = `${q} / ${bSC / 4}u`;
      const sc = `(${q} % ${bSC / 4}u) * 4u`;
      lines.push(guard(l, bTotal, transB ? `rb${l} = loadB(bOff, n0 + ${sr}, ${kt} * BK + ${sc});` : `rb${l} = loadB(bOff, ${kt} * BK + ${sr}, n0 + ${sc});`));
    }
    return lines.join('\n');
  };

  // registers -> workgroup buffer `buf` (As[buf][k][m], Bs[buf][k][n], both vec4 along m / n)
  const storeRegs = (buf: string) => {
    const lines: string[] = [];
    for (let l = 0; l < aQuads; l++) {
      const q = `(localIndex + ${l * THREADS}u)`;
      const sr = `(${q} / ${aSC / 4}u)`;
      const sc = `((${q} % ${aSC / 4}u) * 4u)`;
      const st = transA
        ? `As[(${buf} * BK + ${sr}) * ${BM / 4}u + ${sc} / 4u] = ra${l};`
        : [0, 1, 2, 3].map((i) => `As[(${buf} * BK + ${sc} + ${i}u) * ${BM / 4}u + ${sr} / 4u][${sr} % 4u] = ra${l}[${i}];`).join(' ');
      lines.push(guard(l, aTotal, st));
    }
    for (let l = 0; l < bQuads; l++) {
      const q = `(localIndex + ${l * THREADS}u)`;
      const sr = `(${q} / ${bSC / 4}u)`;
      const sc = `((${q} % ${bSC / 4}u) * 4u)`;
      const st = !transB
        ? `Bs[(${buf} * BK + ${sr}) * ${BN / 4}u + ${sc} / 4u] = rb${l};`
        : [0, 1, 2, 3].map((i) => `Bs[(${buf} * BK + ${sc} + ${i}u) * ${BN / 4}u + ${sr} / 4u][${sr} % 4u] = rb${l}[${i}];`).join(' ');
      lines.push(guard(l, bTotal, st));
    }
    return lines.join('\n');
  };

  // the micro-tile update for one k (`kk`: a WGSL expression) of buffer `buf`, fully unrolled
  const fmaAt = (kk: string) => {
    const lines: string[] = [];
    for (let g = 0; g < GM; g++) lines.push(`let a${g} = As[(buf * BK + ${kk}) * ${BM / 4}u + ${g * TY}u + ty];`);
    for (let h = 0; h < GN; h++) lines.push(`let b${h} = Bs[(buf * BK + ${kk}) * ${BN / 4}u + ${h * TX}u + tx];`);
    for (let i = 0; i < TM; i++) {
      for (let h = 0; h < GN; h++) lines.push(`acc${i * GN + h} = fma(vec4<f32>(a${Math.floor(i / 4)}[${i % 4}]), b${h}, acc${i * GN + h});`);
    }
    return lines.join('\n            ');
  };
  // the BK steps of one slice: a loop, or written out with constant k offsets (`unroll`)
  const kLoop = t.unroll
    ? Array.from({ length: BK }, (_, kk) => `{\n            ${fmaAt(`${kk}u`)}\n          }`).join('\n          ')
    : `for (var kk = 0u; kk < BK; kk++) {\n            ${fmaAt('kk')}\n          }`;

  // write-back: row m0 + g*TY*4 + ty*4 + i, columns n0 + h*TX*4 + tx*4 + 0..3
  const write: string[] = [];
  for (let i = 0; i < TM; i++) {
    const row = `m0 + ${Math.floor(i / 4) * TY * 4}u + ty * 4u + ${i % 4}u`;
    write.push(`{ let r = ${row}; if (r < M) {`);
    for (let h = 0; h < GN; h++) {
      write.push(`{ let c = n0 + ${h * TX * 4}u + tx * 4u; let v = acc${i * GN + h}; let o = cOff + r * N;`);
      write.push(N % 4 === 0 ? `if (c < N) { result[o + c] = v.x; result[o + c + 1u] = v.y; result[o + c + 2u] = v.z; result[o + c + 3u] = v.w; }` : `for (var j = 0u; j < 4u; j++) { if (c + j < N) { result[o + c + j] = v[j]; } }`);
      write.push('}');
    }
    write.push('} }');
  }

  const regDecl = [...Array.from({ length: aQuads }, (_, l) => `var ra${l} = vec4<f32>(0.0);`), ...Array.from({ length: bQuads }, (_, l) => `var rb${l} = vec4<f32>(0.0);`)].join(' ');

  return {
    key,
    outputShape: [split * s.batch, M, N],
    inputs: ['A', 'B'],
    components: [vecA ? 4 : 1, vecB ? 4 : 1],
    threads: THREADS,
    numGroups: split * s.batch * tilesM * tilesN,
    body: `
      const M = ${M}u; const N = ${N}u; const K = ${K}u; const BATCH = ${s.batch}u;
      const BK = ${BK}u; const STEPS = ${steps}u; const TILES_M = ${tilesM}u; const TILES_N = ${tilesN}u;
      const PER = ${per}u; const SPLIT = ${split}u;
      var<workgroup> As: array<vec4<f32>, ${(2 * BK * BM) / 4}>;
      var<workgroup> Bs: array<vec4<f32>, ${(2 * BK * BN) / 4}>;
      var<workgroup> wgShared: u32;
      ${loader('A', aRows, aCols, vecA)}
      ${loader('B', bRows, bCols, vecB)}
      fn kernel() {
        if (localIndex == 0u) { wgShared = wgIndex(); }
        let wgAll = workgroupUniformLoad(&wgShared);
        if (wgAll >= SPLIT * BATCH * TILES_M * TILES_N) { return; }
        // the K slice, then the block within the batch
        let sp = wgAll / (BATCH * TILES_M * TILES_N);
        let wg = wgAll % (BATCH * TILES_M * TILES_N);
        let kt0 = sp * PER;
        let kt1 = min(STEPS, kt0 + PER);
        ${order === 'n' ? `let n0 = (wg % TILES_N) * ${BN}u;
        let m0 = ((wg / TILES_N) % TILES_M) * ${BM}u;` : `let m0 = (wg % TILES_M) * ${BM}u;
        let n0 = ((wg / TILES_M) % TILES_N) * ${BN}u;`}
        let b = wg / (TILES_N * TILES_M);
        let aOff = ${s.batchA === 1 ? '0u' : `b * ${M * K}u`};
        let bOff = ${s.batchB === 1 ? '0u' : `b * ${K * N}u`};
        let cOff = (sp * BATCH + b) * ${M * N}u;
        let tx = localIndex % ${TX}u;
        let ty = localIndex / ${TX}u;
        // one variable per accumulator (not an array: an array with any dynamic index may be kept
        // out of registers by the driver's compiler)
        ${Array.from({ length: (TM * TN) / 4 }, (_, i) => `var acc${i} = vec4<f32>(0.0);`).join(' ')}
        ${regDecl}
        ${loadRegs('kt0')}
        ${storeRegs('0u')}
        workgroupBarrier();
        for (var kt = kt0; kt < kt1; kt++) {
          let buf = (kt - kt0) % 2u;
          let more = kt + 1u < kt1;
          if (more) {
            ${loadRegs('(kt + 1u)')}
          }
          ${kLoop}
          if (more) {
            let nbuf = 1u - buf;
            ${storeRegs('nbuf')}
          }
          workgroupBarrier();
        }
        ${write.join('\n        ')}
      }`,
  };
}

/** The shape of a BatchMatMul call, or undefined when this kernel does not take it. */
export function matMulShape(a: TensorInfo, b: TensorInfo, transA: boolean, transB: boolean): (MatMulShape & { outShape: number[] }) | undefined {
  if (a.dtype !== 'float32' || b.dtype !== 'float32' || a.shape.length < 2 || b.shape.length < 2) return undefined;
  const ra = a.shape.length;
  const rb = b.shape.length;
  const M = transA ? a.shape[ra - 1]! : a.shape[ra - 2]!;
  const K = transA ? a.shape[ra - 2]! : a.shape[ra - 1]!;
  const K2 = transB ? b.shape[rb - 1]! : b.shape[rb - 2]!;
  const N = transB ? b.shape[rb - 2]! : b.shape[rb - 1]!;
  if (K !== K2 || M === 0 || N === 0 || K === 0) return undefined;
  const outerA = a.shape.slice(0, -2);
  const outerB = b.shape.slice(0, -2);
  const batchA = tf.util.sizeFromShape(outerA);
  const batchB = tf.util.sizeFromShape(outerB);
  // one matrix broadcast over the other's batch, or equal batches of the same outer shape
  if (batchA !== batchB && batchA !== 1 && batchB !== 1) return undefined;
  if (batchA === batchB && batchA > 1 && !tf.util.arraysEqual(outerA, outerB)) return undefined;
  const outer = tf.backend_util.assertAndGetBroadcastShape(outerA, outerB);
  // sizes up to 2^32 elements per index (u32 arithmetic)
  if (Math.max(batchA * M * K, batchB * K * N, Math.max(batchA, batchB) * M * N) >= 2 ** 32) return undefined;
  return { batch: Math.max(batchA, batchB), batchA, batchB, M, N, K, transA, transB, outShape: [...outer, M, N] };
}

/** Runs this package's matmul on the webgpu backend; undefined for shapes it does not take. */
export function runMatMul(be: WebGpuBackendLike, a: TensorInfo, b: TensorInfo, transA: boolean, transB: boolean, force?: TileChoice): TensorInfo | undefined {
  const s = matMulShape(a, b, transA, transB);
  if (!s) return undefined;
  const t = matMulTiles(s, be.device.limits.maxComputeWorkgroupStorageSize, force);
  const out = run(be, program(s, t), [a, b]);
  const steps = Math.ceil(s.K / t.BK);
  const split = Math.ceil(steps / Math.ceil(steps / t.split));
  if (split === 1) return { ...out, shape: s.outShape };
  const sum = run(be, sumSlicesProgram(split, s.batch * s.M * s.N), [out]); // [batch * M * N]
  be.disposeData(out.dataId);
  return { ...sum, shape: s.outShape };
}

/** The sum of `split` partial products of `size` elements each, vec4 wide where size allows. */
function sumSlicesProgram(split: number, size: number): KernelProgram {
  const key = `tsf_matmul_sum_${split}_${size}`;
  return cachedProgram(key, () => sumSlicesArgs(split, size, key));
}

function sumSlicesArgs(split: number, size: number, key: string): KernelProgramArgs {
  const vec = size % 4 === 0;
  const n = vec ? size / 4 : size;
  return {
    key,
    outputShape: [size],
    inputs: ['P'],
    components: [vec ? 4 : 1],
    threads: THREADS,
    numGroups: Math.ceil(n / THREADS),
    body: `
      fn kernel() {
        let i = wgIndex() * ${THREADS}u + localIndex;
        if (i >= ${n}u) { return; }
        var acc = P[i];
        for (var sp = 1u; sp < ${split}u; sp++) { acc += P[sp * ${n}u + i]; }
        ${vec ? 'result[4u * i] = acc.x; result[4u * i + 1u] = acc.y; result[4u * i + 2u] = acc.z; result[4u * i + 3u] = acc.w;' : 'result[i] = acc;'}
      }`,
  };
}

let original: KernelConfig | undefined;

/** tfjs's own BatchMatMul for webgpu (the fallback), once registerFastMatMul has run. */
export function originalMatMul(): KernelConfig | undefined {
  return original;
}

/**
 * Replaces tfjs's webgpu BatchMatMul with one that runs this package's kernel on the shapes it
 * takes (float32, batch broadcast from one side, at least 64 output rows and columns: smaller
 * products leave most of a 64 x 64 block idle) and tfjs's kernel on the others, as `setMatMulPolicy`
 * routes each transpose combination (default: this kernel, automatic tiles). Idempotent.
 */
export function registerFastMatMul(): void {
  const current = tf.getKernel('BatchMatMul', 'webgpu');
  if (!current || (current as { tsformer?: boolean }).tsformer) return;
  original = current;
  const tfjsMatMul = current.kernelFunc;
  const kernelFunc: KernelFunc = (args) => {
    const { a, b } = args.inputs as { a: TensorInfo; b: TensorInfo };
    const { transposeA, transposeB } = args.attrs as { transposeA: boolean; transposeB: boolean };
    const s = matMulShape(a, b, transposeA, transposeB);
    const route = policy[matMulCombo(transposeA, transposeB)] ?? {};
    if (!s || s.M < 64 || s.N < 64 || route === 'tfjs') return tfjsMatMul(args);
    return runMatMul(args.backend as unknown as WebGpuBackendLike, a, b, transposeA, transposeB, route)!;
  };
  tf.unregisterKernel('BatchMatMul', 'webgpu');
  tf.registerKernel(Object.assign({ kernelName: 'BatchMatMul', backendName: 'webgpu', kernelFunc }, { tsformer: true }));
}
