/**
 * An S3-compatible server on loopback for tests and benchmarks: `s3rver` (a devDependency of the
 * repository) with a front middleware that
 *   - records every request (method, path, query keys),
 *   - implements AbortMultipartUpload, which s3rver lacks (it answers 405), by deleting the parts,
 *   - can drop connections on demand (`fault`), to stand in for a node whose network fails.
 * `stop()` closes the server and every open connection at once (a server that dies mid-upload);
 * `start()` brings it back on the same port with the same data.
 */
import { promises as fsp, readdirSync } from 'node:fs';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import S3rver from 's3rver';
import type { S3StoreOptions } from '../s3-store.js';

/** s3rver's fixed test credentials. */
export const S3RVER_CREDENTIALS = { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' } as const;

export interface RecordedRequest {
  method: string;
  /** Path without the query, e.g. `/bucket/prefix/step-00000001/model.safetensors`. */
  path: string;
  /** Query parameter names, e.g. `['uploadId', 'partNumber']`. */
  query: Record<string, string>;
}

export interface S3TestServer {
  /** `http://127.0.0.1:<port>` */
  readonly endpoint: string;
  readonly port: number;
  /** The directory s3rver keeps objects in. */
  readonly dir: string;
  readonly bucket: string;
  /** Every request served (or dropped) so far. */
  readonly requests: RecordedRequest[];
  /** When set and returning true for a request, its connection is destroyed before s3rver sees it. */
  fault?: (req: RecordedRequest) => boolean;
  /** Called for each request before it is served (after `fault`). */
  onRequest?: (req: RecordedRequest) => void;
  /** When set, each request waits this many ms before it is served (a slow link). */
  delay?: (req: RecordedRequest) => number;
  /** Options for an `S3Store` against this server (path style, test credentials, quick retries). */
  storeOptions(extra?: S3StoreOptions): S3StoreOptions;
  /** Environment for a child process using the standard credential chain against this server. */
  env(): Record<string, string>;
  /** Multipart uploads started and neither completed nor aborted. */
  openUploads(): string[];
  /** Stops serving now: closes the listener and destroys open connections. */
  stop(): Promise<void>;
  /** Serves again on the same port, with the same data. */
  start(): Promise<void>;
  /** Stops and removes the data directory. */
  close(): Promise<void>;
}

export interface S3TestServerOptions {
  /** Bucket created at start. Default `tsformer-test`. */
  bucket?: string;
  /** Data directory. Default: a fresh temp directory (removed by `close`). */
  dir?: string;
}

/** Starts an S3-compatible server on 127.0.0.1 with one bucket. */
export async function startS3Server(opts: S3TestServerOptions = {}): Promise<S3TestServer> {
  const bucket = opts.bucket ?? 'tsformer-test';
  const ownDir = opts.dir === undefined;
  const dir = opts.dir ?? (await fsp.mkdtemp(path.join(tmpdir(), 'tsformer-s3-')));
  let httpServer: http.Server | undefined;
  let port = 0;
  const sockets = new Set<import('node:net').Socket>();

  const uploadsDir = () => path.join(dir, bucket, '._S3rver_uploads');

  const server: S3TestServer = {
    get endpoint() {
      return `http://127.0.0.1:${port}`;
    },
    get port() {
      return port;
    },
    dir,
    bucket,
    requests: [],
    storeOptions: (extra = {}) => ({
      endpoint: server.endpoint,
      forcePathStyle: true,
      region: 'us-east-1',
      credentials: { ...S3RVER_CREDENTIALS },
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      attempts: 4,
      backoffMs: 20,
      maxBackoffMs: 200,
      ...extra,
    }),
    env: () => ({
      AWS_ACCESS_KEY_ID: S3RVER_CREDENTIALS.accessKeyId,
      AWS_SECRET_ACCESS_KEY: S3RVER_CREDENTIALS.secretAccessKey,
      AWS_REGION: 'us-east-1',
      AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true',
    }),
    openUploads: () => {
      try {
        return readdirSync(uploadsDir());
      } catch {
        return [];
      }
    },
    async start() {
      if (httpServer) return;
      const s3 = new S3rver({ directory: dir, silent: true, configureBuckets: [{ name: bucket, configs: [] }] });
      await s3.configureBuckets();
      // our middleware runs before all of s3rver's
      s3.middleware.unshift(async (ctx, next) => {
        const url = new URL(ctx.url, 'http://localhost');
        const rec: RecordedRequest = { method: ctx.method, path: decodeURIComponent(url.pathname), query: Object.fromEntries(url.searchParams) };
        server.requests.push(rec);
        if (server.fault?.(rec)) {
          ctx.req.socket.destroy();
          ctx.respond = false;
          return;
        }
        server.onRequest?.(rec);
        const wait = server.delay?.(rec) ?? 0;
        if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
        const uploadId = rec.query.uploadId;
        if (ctx.method === 'DELETE' && uploadId !== undefined) {
          // AbortMultipartUpload: s3rver keeps parts in <bucket>/._S3rver_uploads/<id>
          if (!/^[0-9a-f]+$/.test(uploadId)) {
            ctx.status = 400;
            return;
          }
          const parts = path.join(uploadsDir(), uploadId);
          try {
            await fsp.access(parts);
          } catch {
            ctx.status = 404;
            ctx.type = 'application/xml';
            ctx.body = '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>NoSuchUpload</Code><Message>The specified upload does not exist.</Message></Error>';
            return;
          }
          await fsp.rm(parts, { recursive: true, force: true });
          ctx.status = 204;
          return;
        }
        await next();
      });
      const srv = http.createServer(s3.callback());
      srv.on('connection', (socket) => {
        sockets.add(socket);
        socket.on('close', () => sockets.delete(socket));
      });
      await new Promise<void>((resolve, reject) => {
        srv.once('error', reject);
        srv.listen(port, '127.0.0.1', () => resolve());
      });
      port = (srv.address() as AddressInfo).port;
      httpServer = srv;
    },
    async stop() {
      const srv = httpServer;
      if (!srv) return;
      httpServer = undefined;
      const closed = new Promise<void>((resolve) => srv.close(() => resolve()));
      for (const s of sockets) s.destroy();
      sockets.clear();
      await closed;
    },
    async close() {
      await server.stop();
      if (ownDir) await fsp.rm(dir, { recursive: true, force: true });
    },
  };
  await server.start();
  return server;
}
