// Checkpoint save/load time and throughput of a 100M-parameter training state (weights + AdamW
// moments, float32) on the local store and on a loopback S3 server (s3rver, through the AWS SDK).
//
//   npm run bench:checkpoint [-- --params 100e6 --stores local,s3 --repeats 1 --part-mb 16 --shard-mb 2048]
//
// "save" is what a step costs end to end: encoding the tensors into safetensors bytes (the snapshot
// training waits for), hashing and writing every file, then the manifest. "load" reads the step back,
// checks every file's sha256 against the manifest and decodes the tensors.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  LocalStore,
  S3Store,
  decodeSafetensors,
  decodeShardedSafetensors,
  encodeSafetensors,
  encodeShardedSafetensors,
  readStep,
  saveStep,
  type CheckpointStore,
  type HostTensor,
  type StepFiles,
} from '@tsformer/checkpoint';
import { startS3Server } from '@tsformer/checkpoint/testing';

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && process.argv[i + 1] !== undefined ? process.argv[i + 1]! : fallback;
}

// the SDK's notice about Node < 22 would land in the middle of the table
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

const params = Number(arg('params', '100e6'));
const stores = arg('stores', 'local,s3').split(',');
const repeats = Number(arg('repeats', '1'));
const partMB = Number(arg('part-mb', '16'));
const shardMB = Number(arg('shard-mb', '2048'));
if (!(params > 0) || !(repeats >= 1)) throw new Error('--params and --repeats must be positive');

/** Weight matrices of 1024 x 1024 (plus a remainder), named like a model's parameters. */
function makeState(n: number): { weights: Map<string, HostTensor>; moments: Map<string, HostTensor> } {
  const weights = new Map<string, HostTensor>();
  const moments = new Map<string, HostTensor>();
  let s = 12345;
  const fill = (a: Float32Array) => {
    for (let i = 0; i < a.length; i++) {
      s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
      a[i] = (s / 4294967296 - 0.5) * 0.02;
    }
    return a;
  };
  let left = Math.round(n);
  for (let i = 0; left > 0; i++) {
    const rows = Math.min(1024, Math.ceil(left / 1024));
    const shape = [rows, 1024];
    const name = `layers.${Math.floor(i / 4)}.${['attn.q_proj', 'attn.o_proj', 'mlp.up', 'mlp.down'][i % 4]}.weight`;
    weights.set(name, { dtype: 'float32', shape, data: fill(new Float32Array(rows * 1024)) });
    moments.set(`${name}.exp_avg`, { dtype: 'float32', shape, data: fill(new Float32Array(rows * 1024)) });
    moments.set(`${name}.exp_avg_sq`, { dtype: 'float32', shape, data: fill(new Float32Array(rows * 1024)).map(Math.abs) });
    left -= rows * 1024;
  }
  return { weights, moments };
}

interface Row {
  store: string;
  mb: number;
  snapshot: number;
  save: number;
  load: number;
}

async function bench(label: string, store: CheckpointStore, state: ReturnType<typeof makeState>, step: number): Promise<Row> {
  const t0 = performance.now();
  const files: StepFiles = {};
  for (const [name, bytes] of encodeShardedSafetensors(state.weights, { maxShardBytes: shardMB * 1024 * 1024 })) files[name] = bytes;
  files['optimizer.safetensors'] = encodeSafetensors(state.moments);
  files['trainer-state.json'] = JSON.stringify({ step });
  const t1 = performance.now();
  await saveStep(store, step, files);
  const t2 = performance.now();
  const back = await readStep(store, step);
  const weights = decodeShardedSafetensors(back, 'model', label).tensors;
  const moments = decodeSafetensors(back.get('optimizer.safetensors')!, 'optimizer.safetensors').tensors;
  const t3 = performance.now();
  if (weights.size !== state.weights.size || moments.size !== state.moments.size) throw new Error(`${label}: tensors lost in the round trip`);
  let bytes = 0;
  for (const f of Object.values(files)) bytes += typeof f === 'string' ? f.length : f.byteLength;
  return { store: label, mb: bytes / 1e6, snapshot: (t1 - t0) / 1000, save: (t2 - t0) / 1000, load: (t3 - t2) / 1000 };
}

const state = makeState(params);
const nParams = [...state.weights.values()].reduce((a, t) => a + t.data.length, 0);
console.log(`state: ${(nParams / 1e6).toFixed(1)}M parameters (float32 weights + AdamW moments), node ${process.version}`);
const rows: Row[] = [];
const cleanup: Array<() => Promise<void>> = [];
try {
  for (const kind of stores) {
    let store: CheckpointStore;
    let label: string;
    if (kind === 'local') {
      const dir = mkdtempSync(join(tmpdir(), 'tsformer-bench-ckpt-'));
      cleanup.push(async () => rmSync(dir, { recursive: true, force: true }));
      store = new LocalStore(dir);
      label = 'local (fsync + rename)';
    } else if (kind === 's3') {
      const server = await startS3Server();
      cleanup.push(() => server.close());
      store = new S3Store(`s3://${server.bucket}/bench`, server.storeOptions({ partSize: partMB * 1024 * 1024 }));
      label = `S3 loopback (s3rver, ${partMB} MiB parts)`;
    } else throw new Error(`unknown store "${kind}" (local, s3)`);
    for (let r = 0; r < repeats; r++) {
      const row = await bench(label, store, state, r + 1);
      rows.push(row);
      console.log(`${label}: save ${row.save.toFixed(2)} s, load ${row.load.toFixed(2)} s`);
    }
  }
} finally {
  for (const c of cleanup) await c();
}

console.log('\n| store | step size (MB) | snapshot (s) | save (s) | save MB/s | load + verify (s) | load MB/s |');
console.log('| --- | ---: | ---: | ---: | ---: | ---: | ---: |');
for (const r of rows) {
  console.log(
    `| ${r.store} | ${r.mb.toFixed(0)} | ${r.snapshot.toFixed(2)} | ${r.save.toFixed(2)} | ${(r.mb / r.save).toFixed(0)} | ${r.load.toFixed(2)} | ${(r.mb / r.load).toFixed(0)} |`,
  );
}
