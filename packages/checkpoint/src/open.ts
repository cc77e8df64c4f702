/**
 * Stores from a location string: `s3://bucket/prefix` is an `S3Store`, anything else (a path, or
 * `file:///abs/path`) a `LocalStore`.
 */
import { fileURLToPath } from 'node:url';
import * as path from 'node:path';
import { TsformerError } from '@tsformer/core';
import { S3Store, isS3Uri, parseS3Uri, type S3StoreOptions } from './s3-store.js';
import { LocalStore, parseStepDirName, type CheckpointStore } from './store.js';

/** Options of `openStore`. */
export interface OpenStoreOptions {
  /** Used when the location is `s3://...`. */
  s3?: S3StoreOptions;
}

/** The store at `location`: `s3://bucket/prefix`, `file:///path` or a local path. */
export function openStore(location: string, opts: OpenStoreOptions = {}): CheckpointStore {
  if (location.trim() === '') throw new TsformerError('checkpoint location is empty', 'checkpoint');
  if (isS3Uri(location)) return new S3Store(location, opts.s3);
  if (/^file:\/\//i.test(location)) return new LocalStore(fileURLToPath(location));
  const scheme = /^([a-z][a-z0-9+.-]*):\/\//i.exec(location);
  if (scheme) {
    throw new TsformerError(`checkpoint location "${location.split('?')[0]}": unsupported scheme ${scheme[1]}:// (use a local path or s3://bucket/prefix)`, 'checkpoint');
  }
  return new LocalStore(location);
}

/**
 * A single step's location (`.../step-00000100`, local or S3) as its store (the parent) and step.
 * A location whose last segment is not a step directory is a TsformerError.
 */
export function openStepLocation(location: string, opts: OpenStoreOptions = {}): { store: CheckpointStore; step: number } {
  const trimmed = location.replace(/\/+$/, '');
  if (isS3Uri(trimmed)) {
    const { bucket, prefix } = parseS3Uri(trimmed);
    const parts = prefix.split('/');
    const step = parseStepDirName(parts.at(-1) ?? '');
    if (step === undefined) throw new TsformerError(`${location}: not a step directory (expected s3://bucket/prefix/step-<N>)`, 'checkpoint');
    return { store: new S3Store({ bucket, prefix: parts.slice(0, -1).join('/') }, opts.s3), step };
  }
  const local = /^file:\/\//i.test(trimmed) ? fileURLToPath(trimmed) : trimmed;
  const step = parseStepDirName(path.basename(local));
  if (step === undefined) throw new TsformerError(`${location}: not a step directory (expected .../step-<N>)`, 'checkpoint');
  return { store: openStore(path.dirname(path.resolve(local)), opts), step };
}
