// Just what our test server uses of s3rver (a Koa application), which ships no types.
declare module 's3rver' {
  import type { IncomingMessage, ServerResponse } from 'node:http';
  interface S3rverContext {
    url: string;
    method: string;
    req: IncomingMessage;
    status: number;
    type: string;
    body: unknown;
    respond: boolean;
  }
  type Middleware = (ctx: S3rverContext, next: () => Promise<void>) => Promise<void> | void;
  interface S3rverOptions {
    directory: string;
    silent?: boolean;
    address?: string;
    port?: number;
    configureBuckets?: Array<{ name: string; configs: unknown[] }>;
  }
  export default class S3rver {
    constructor(options: S3rverOptions);
    middleware: Middleware[];
    configureBuckets(): Promise<void>;
    callback(): (req: IncomingMessage, res: ServerResponse) => void;
  }
}
