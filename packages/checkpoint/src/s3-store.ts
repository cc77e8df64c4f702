/**
 * A `CheckpointStore` on S3 or an S3-compatible object store (MinIO, R2, Ceph, ...):
 *
 *   s3://<bucket>/<prefix>/step-00000100/model.safetensors  ->  object key "<prefix>/step-00000100/model.safetensors"
 *
 * A PUT (and a completed multipart upload) replaces an object atomically, so readers see the old
 * content or the new, never a part: that is all `saveStep` needs for "manifest last" to hold.
 * Credentials and region come from the standard AWS chain (environment, shared config/credentials
 * files, SSO, web identity, instance/container metadata); nothing here reads or prints them, and
 * every error message passes through `redactSecrets` before it leaves this file.
 */
import {
  AbortMultipartUploadCommand,
  DeleteObjectCommand,
  DeleteObjectsCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  type S3ClientConfig,
} from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { TsformerError } from '@tsformer/core';
import type { CheckpointStore } from './store.js';

/** Options of `S3Store`. Every field is optional; the defaults suit AWS S3. */
export interface S3StoreOptions {
  /** AWS region. Default: the standard chain (`AWS_REGION`, the shared config file, ...), else `us-east-1`. */
  region?: string;
  /**
   * Endpoint URL of an S3-compatible store, e.g. `http://127.0.0.1:9000` (MinIO) or
   * `https://<account>.r2.cloudflarestorage.com`. Default: AWS (or `AWS_ENDPOINT_URL_S3` /
   * `AWS_ENDPOINT_URL`, which the SDK reads itself). Must not contain credentials.
   */
  endpoint?: string;
  /** Path-style addressing (`<endpoint>/<bucket>/<key>`), which most self-hosted stores need. Default false. */
  forcePathStyle?: boolean;
  /**
   * When the SDK adds request checksums. Default `WHEN_SUPPORTED` (the SDK's CRC32 on every upload);
   * `WHEN_REQUIRED` for stores that reject it.
   */
  requestChecksumCalculation?: 'WHEN_SUPPORTED' | 'WHEN_REQUIRED';
  /** When the SDK validates response checksums. Default `WHEN_SUPPORTED`; `WHEN_REQUIRED` to turn it off. */
  responseChecksumValidation?: 'WHEN_SUPPORTED' | 'WHEN_REQUIRED';
  /** Multipart part size in bytes (S3's minimum is 5 MiB). Default 16 MiB. */
  partSize?: number;
  /** Files of at least this many bytes go up as multipart uploads, smaller ones with one PUT. Default `partSize`. */
  multipartThreshold?: number;
  /** Parts of one file uploaded at once. Default 4. */
  queueSize?: number;
  /** Attempts of each operation (ours, around the SDK's own retry of single requests). Default 5. */
  attempts?: number;
  /** First backoff in ms; it doubles per attempt (with jitter) up to `maxBackoffMs`. Default 250. */
  backoffMs?: number;
  /** Largest backoff in ms. Default 8000. */
  maxBackoffMs?: number;
  /** Attempts of a single request inside the SDK. Default 2. */
  sdkMaxAttempts?: number;
  /** Explicit credentials (tests, or a caller with its own source). Default: the standard AWS chain. */
  credentials?: S3ClientConfig['credentials'];
  /** A ready client (its own configuration wins over the fields above). */
  client?: S3Client;
  /** Receives a line for each retried operation. Default: silent. */
  onRetry?: (msg: string) => void;
}

/** An `s3://bucket/prefix` URI taken apart. */
export interface S3Uri {
  bucket: string;
  /** Key prefix without leading or trailing `/`; `''` for the bucket root. */
  prefix: string;
}

/** Whether `uri` names an S3 location (`s3://...`). */
export function isS3Uri(uri: string): boolean {
  return /^s3:\/\//i.test(uri);
}

const BUCKET_NAME = /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/;

/** Parses `s3://bucket[/prefix]`; a malformed URI is a TsformerError naming it. */
export function parseS3Uri(uri: string): S3Uri {
  const m = /^s3:\/\/([^/?#]*)(\/[^?#]*)?$/i.exec(uri);
  const fail = (why: string) => new TsformerError(`invalid S3 location "${redactSecrets(uri)}": ${why} (expected s3://<bucket>/<prefix>)`, 'checkpoint');
  if (!m) throw fail('not of the form s3://bucket/prefix (no query or fragment)');
  const bucket = m[1]!;
  if (bucket.includes('@') || bucket.includes(':')) throw fail('credentials or a port do not belong in an S3 URI; use the AWS credential chain and the endpoint option');
  if (!BUCKET_NAME.test(bucket)) throw fail(`bucket name "${bucket}" is not valid (3-63 characters: lowercase letters, digits, "." and "-")`);
  const prefix = (m[2] ?? '').replace(/^\/+|\/+$/g, '');
  if (prefix.split('/').some((p) => p === '.' || p === '..') || prefix.includes('//')) throw fail('the prefix has an empty, "." or ".." segment');
  return { bucket, prefix };
}

// ---------------------------------------------------------------------------------------------
// Secrets never leave this file in a message

const SECRET_PATTERNS: RegExp[] = [
  /\b(?:AKIA|ASIA|AIDA|AROA|ANPA|AGPA)[A-Z0-9]{12,}\b/g, // access key ids
  /(X-Amz-(?:Signature|Credential|Security-Token)=)[^&\s"']+/gi, // presigned URL parameters
  /((?:aws_secret_access_key|aws_session_token|secretAccessKey|sessionToken|accessKeyId)["']?\s*[:=]\s*["']?)[^\s"',}]+/gi,
  /(Signature=)[0-9a-f]{16,}/gi, // an Authorization header
  /(\/\/)[^/@\s]+:[^/@\s]+@/g, // user:password@ in URLs
];

/**
 * Removes credentials from a message: the values of the AWS credential variables of this process,
 * values given to `addSecret`, access key ids, signed-URL parameters and `user:password@` in URLs.
 */
export function redactSecrets(text: string): string {
  let out = text;
  for (const secret of knownSecrets()) out = out.split(secret).join('[REDACTED]');
  for (const re of SECRET_PATTERNS) out = out.replace(re, (_m, keep?: string) => `${typeof keep === 'string' ? keep : ''}[REDACTED]`);
  return out;
}

const extraSecrets = new Set<string>();

/** Registers a secret value (e.g. explicit credentials) to be removed from every message. */
export function addSecret(value: string | undefined): void {
  if (value && value.length >= 4) extraSecrets.add(value);
}

function knownSecrets(): string[] {
  const env = ['AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY', 'AWS_SESSION_TOKEN', 'AWS_SECURITY_TOKEN'].map((k) => process.env[k]);
  // longest first, so that a secret containing another is removed whole
  return [...env, ...extraSecrets].filter((s): s is string => typeof s === 'string' && s.length >= 4).sort((a, b) => b.length - a.length);
}

// ---------------------------------------------------------------------------------------------

interface SdkError {
  name?: string;
  code?: string;
  message?: string;
  $metadata?: { httpStatusCode?: number };
  $retryable?: unknown;
}

const RETRYABLE_NAMES = new Set([
  'TimeoutError',
  'RequestTimeout',
  'RequestTimeoutException',
  'SlowDown',
  'InternalError',
  'ServiceUnavailable',
  'Throttling',
  'ThrottlingException',
  'RequestThrottled',
  'TooManyRequestsException',
  'NetworkingError',
  'AbortError', // a socket aborted under us (not our own cancel: we never cancel)
]);
const RETRYABLE_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'EAI_AGAIN', 'ENOTFOUND', 'EHOSTUNREACH', 'ENETUNREACH', 'ECONNABORTED', 'UND_ERR_SOCKET']);

/** Transient failures worth another attempt: the network, 5xx, throttling. 4xx (access, missing bucket) are not. */
function isRetryable(e: unknown): boolean {
  const err = (e ?? {}) as SdkError;
  const status = err.$metadata?.httpStatusCode;
  if (status !== undefined && (status >= 500 || status === 429 || status === 408)) return true;
  if (status !== undefined && status >= 400) return false;
  if (err.$retryable) return true;
  if (err.name && RETRYABLE_NAMES.has(err.name)) return true;
  if (err.code && RETRYABLE_CODES.has(err.code)) return true;
  const msg = String(err.message ?? '');
  return /socket hang up|ECONNREFUSED|ECONNRESET|EPIPE|other side closed|premature close|network/i.test(msg);
}

function isNotFound(e: unknown): boolean {
  const err = (e ?? {}) as SdkError;
  return err.name === 'NoSuchKey' || err.name === 'NotFound' || err.$metadata?.httpStatusCode === 404;
}

function describeError(e: unknown): string {
  const err = (e ?? {}) as SdkError;
  const status = err.$metadata?.httpStatusCode;
  const name = err.name && err.name !== 'Error' ? err.name : err.code;
  const msg = err.message && err.message !== 'UnknownError' ? err.message : '';
  return redactSecrets([name, status !== undefined ? `HTTP ${status}` : undefined, msg].filter(Boolean).join(': ') || String(e));
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

const MIN_PART = 5 * 1024 * 1024;

/** Checkpoint files in an S3 bucket under a key prefix. */
export class S3Store implements CheckpointStore {
  readonly bucket: string;
  /** Key prefix without trailing `/`; `''` for the bucket root. */
  readonly prefix: string;
  readonly client: S3Client;
  readonly #o: Required<Pick<S3StoreOptions, 'partSize' | 'multipartThreshold' | 'queueSize' | 'attempts' | 'backoffMs' | 'maxBackoffMs'>>;
  readonly #onRetry: (msg: string) => void;
  /** Multipart uploads whose abort failed (the server was unreachable): retried before later writes. */
  readonly #pendingAborts: Array<{ key: string; uploadId: string }> = [];
  /** Upload ids this store aborted, for tests and diagnostics. */
  readonly abortedUploads: string[] = [];

  constructor(uri: string | S3Uri, opts: S3StoreOptions = {}) {
    const { bucket, prefix } = typeof uri === 'string' ? parseS3Uri(uri) : uri;
    this.bucket = bucket;
    this.prefix = prefix;
    const partSize = opts.partSize ?? 16 * 1024 * 1024;
    if (!Number.isSafeInteger(partSize) || partSize < MIN_PART) {
      throw new TsformerError(`S3 partSize must be an integer of at least ${MIN_PART} bytes (5 MiB), got ${partSize}`, 'checkpoint');
    }
    this.#o = {
      partSize,
      multipartThreshold: opts.multipartThreshold ?? partSize,
      queueSize: opts.queueSize ?? 4,
      attempts: Math.max(1, opts.attempts ?? 5),
      backoffMs: opts.backoffMs ?? 250,
      maxBackoffMs: opts.maxBackoffMs ?? 8000,
    };
    this.#onRetry = opts.onRetry ?? (() => {});
    if (opts.endpoint !== undefined) checkEndpoint(opts.endpoint);
    const creds = opts.credentials;
    if (creds && typeof creds === 'object') {
      addSecret(creds.accessKeyId);
      addSecret(creds.secretAccessKey);
      addSecret(creds.sessionToken);
    }
    this.client =
      opts.client ??
      new S3Client({
        region: opts.region ?? process.env.AWS_REGION ?? process.env.AWS_DEFAULT_REGION ?? 'us-east-1',
        ...(opts.endpoint !== undefined ? { endpoint: opts.endpoint } : {}),
        forcePathStyle: opts.forcePathStyle ?? false,
        ...(opts.requestChecksumCalculation ? { requestChecksumCalculation: opts.requestChecksumCalculation } : {}),
        ...(opts.responseChecksumValidation ? { responseChecksumValidation: opts.responseChecksumValidation } : {}),
        ...(creds ? { credentials: creds } : {}),
        maxAttempts: opts.sdkMaxAttempts ?? 2,
      });
  }

  get location(): string {
    return `s3://${this.bucket}${this.prefix ? `/${this.prefix}` : ''}`;
  }

  #key(rel: string): string {
    const parts = rel.split('/');
    if (rel !== '' && (rel.startsWith('/') || rel.includes('\\') || parts.some((p) => p === '' || p === '.' || p === '..'))) {
      throw new TsformerError(`invalid checkpoint store path "${rel}" (relative, '/'-separated, no '.' or '..')`, 'checkpoint');
    }
    return this.prefix ? (rel ? `${this.prefix}/${rel}` : `${this.prefix}/`) : rel;
  }

  #where(rel: string): string {
    return `${this.location}/${rel}`;
  }

  /** Runs `op` with retries and exponential backoff (with jitter) on transient failures. */
  async #retry<T>(what: string, rel: string, op: () => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await op();
      } catch (e) {
        if (e instanceof TsformerError) throw e;
        const last = attempt >= this.#o.attempts;
        if (!isRetryable(e) || last) {
          const tries = attempt > 1 ? ` after ${attempt} attempts` : '';
          throw new TsformerError(`${what} ${this.#where(rel)} failed${tries}: ${describeError(e)}`, 'checkpoint');
        }
        const base = Math.min(this.#o.maxBackoffMs, this.#o.backoffMs * 2 ** (attempt - 1));
        const wait = Math.round(base / 2 + Math.random() * (base / 2));
        this.#onRetry(`${what} ${this.#where(rel)}: ${describeError(e)}; attempt ${attempt + 1} of ${this.#o.attempts} in ${wait} ms`);
        await sleep(wait);
      }
    }
  }

  async #abortUpload(key: string, uploadId: string): Promise<boolean> {
    try {
      await this.client.send(new AbortMultipartUploadCommand({ Bucket: this.bucket, Key: key, UploadId: uploadId }));
      this.abortedUploads.push(uploadId);
      return true;
    } catch (e) {
      // an upload the server no longer knows is as good as aborted
      if ((e as SdkError).name === 'NoSuchUpload' || (e as SdkError).$metadata?.httpStatusCode === 404) {
        this.abortedUploads.push(uploadId);
        return true;
      }
      return false;
    }
  }

  /** Retries aborts that failed earlier (the server was down); keeps those that fail again. */
  async #retryPendingAborts(): Promise<void> {
    const pending = this.#pendingAborts.splice(0);
    for (const p of pending) if (!(await this.#abortUpload(p.key, p.uploadId))) this.#pendingAborts.push(p);
  }

  /** Multipart uploads this store failed to abort so far (a lifecycle rule cleans them up otherwise). */
  get pendingAborts(): number {
    return this.#pendingAborts.length;
  }

  async writeFile(rel: string, bytes: Uint8Array): Promise<void> {
    const key = this.#key(rel);
    if (rel === '') throw new TsformerError('S3Store.writeFile: empty path', 'checkpoint');
    await this.#retryPendingAborts();
    if (bytes.byteLength < this.#o.multipartThreshold) {
      await this.#retry('upload of', rel, () => this.client.send(new PutObjectCommand({ Bucket: this.bucket, Key: key, Body: bytes, ContentLength: bytes.byteLength })));
      return;
    }
    await this.#retry('multipart upload of', rel, async () => {
      const upload = new Upload({
        client: this.client,
        params: { Bucket: this.bucket, Key: key, Body: bytes, ContentLength: bytes.byteLength },
        partSize: this.#o.partSize,
        queueSize: this.#o.queueSize,
        // we abort ourselves, with a retry, so that a failed abort cannot hide the upload's own error
        leavePartsOnError: true,
      });
      try {
        await upload.done();
      } catch (e) {
        const uploadId = (upload as unknown as { uploadId?: string }).uploadId;
        if (uploadId !== undefined && !(await this.#abortUpload(key, uploadId))) {
          await sleep(this.#o.backoffMs);
          if (!(await this.#abortUpload(key, uploadId))) this.#pendingAborts.push({ key, uploadId });
        }
        throw e;
      }
    });
  }

  async readFile(rel: string): Promise<Uint8Array> {
    const key = this.#key(rel);
    return this.#retry('download of', rel, async () => {
      let res;
      try {
        res = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: key }));
      } catch (e) {
        if (isNotFound(e)) throw new TsformerError(`cannot read ${this.#where(rel)}: file not found`, 'checkpoint');
        throw e;
      }
      if (!res.Body) throw new TsformerError(`cannot read ${this.#where(rel)}: the response has no body`, 'checkpoint');
      const bytes = await res.Body.transformToByteArray();
      if (res.ContentLength !== undefined && bytes.byteLength !== res.ContentLength) {
        // a connection cut mid-body: transient
        throw Object.assign(new Error(`received ${bytes.byteLength} of ${res.ContentLength} bytes`), { name: 'NetworkingError' });
      }
      return bytes;
    });
  }

  async list(prefix: string): Promise<string[]> {
    const full = this.prefix ? `${this.prefix}/${prefix}` : prefix;
    const strip = this.prefix ? this.prefix.length + 1 : 0;
    const out: string[] = [];
    let token: string | undefined;
    do {
      const res = await this.#retry('listing of', prefix, () =>
        this.client.send(new ListObjectsV2Command({ Bucket: this.bucket, Prefix: full, ContinuationToken: token })),
      );
      for (const o of res.Contents ?? []) if (o.Key !== undefined && o.Key.length > strip) out.push(o.Key.slice(strip));
      token = res.IsTruncated ? res.NextContinuationToken : undefined;
    } while (token);
    return out.sort();
  }

  async remove(rel: string): Promise<void> {
    const key = this.#key(rel);
    const under = (await this.list(`${rel}/`)).map((r) => this.#key(r));
    const keys = [...under, key];
    for (let i = 0; i < keys.length; i += 1000) {
      const batch = keys.slice(i, i + 1000);
      if (batch.length === 1) {
        await this.#retry('deletion of', rel, () => this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: batch[0] })));
        continue;
      }
      const res = await this.#retry('deletion of', rel, () =>
        this.client.send(new DeleteObjectsCommand({ Bucket: this.bucket, Delete: { Objects: batch.map((Key) => ({ Key })), Quiet: true } })),
      );
      const failed = (res.Errors ?? []).filter((e) => e.Code !== 'NoSuchKey');
      if (failed.length > 0) {
        const first = failed[0]!;
        throw new TsformerError(`deletion of ${this.#where(rel)} failed for ${failed.length} object(s), e.g. ${first.Key}: ${redactSecrets(`${first.Code}: ${first.Message}`)}`, 'checkpoint');
      }
    }
  }

  async exists(rel: string): Promise<boolean> {
    const key = this.#key(rel);
    return this.#retry('lookup of', rel, async () => {
      try {
        await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: key }));
        return true;
      } catch (e) {
        if (isNotFound(e)) return false;
        throw e;
      }
    });
  }

  /** Closes the client's sockets. */
  destroy(): void {
    this.client.destroy();
  }
}

function checkEndpoint(endpoint: string): void {
  let url: URL;
  try {
    url = new URL(endpoint);
  } catch {
    throw new TsformerError(`S3 endpoint "${redactSecrets(endpoint)}" is not a URL (e.g. http://127.0.0.1:9000)`, 'checkpoint');
  }
  if (url.username || url.password) {
    throw new TsformerError('S3 endpoint must not contain credentials: use the AWS credential chain (AWS_ACCESS_KEY_ID, profiles, roles)', 'checkpoint');
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new TsformerError(`S3 endpoint "${endpoint}" must be http:// or https://`, 'checkpoint');
  }
}
