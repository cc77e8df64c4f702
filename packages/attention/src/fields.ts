import { z } from 'zod';

/** A positive integer config field, with a message that names it (`attention.<field>`). */
export function posInt(field: string) {
  const error = (issue: { input?: unknown }) => `attention.${field} must be a positive integer (got ${JSON.stringify(issue.input)})`;
  return z.number({ error }).int({ error }).positive({ error });
}

/** A positive finite number config field, with a message that names it. */
export function posNumber(field: string) {
  const error = (issue: { input?: unknown }) => `attention.${field} must be a positive number (got ${JSON.stringify(issue.input)})`;
  return z.number({ error }).positive({ error }).finite({ error });
}
