// Shared helpers for the object-store tests: a capturing logger, fixed clocks and VM-shaped objects.

import { pino, type Logger } from 'pino';
import type { NewObject } from '../../src/source/local-store.js';

export interface CapturedLog {
  logger: Logger;
  lines: Array<Record<string, unknown>>;
}

/** A pino logger that keeps its records in memory. */
export function captureLogger(): CapturedLog {
  const lines: Array<Record<string, unknown>> = [];
  const logger = pino(
    { level: 'info' },
    {
      write(s: string): void {
        lines.push(JSON.parse(s) as Record<string, unknown>);
      },
    },
  );
  return { logger, lines };
}

/** A clock that advances by `stepMs` on every call, starting at `start`. */
export function steppingClock(start = '2026-01-01T00:00:00.000Z', stepMs = 1000): () => Date {
  let t = Date.parse(start);
  return () => {
    const d = new Date(t);
    t += stepMs;
    return d;
  };
}

export function vm(name: string, namespace = 'default', spec: unknown = { runStrategy: 'Always' }): NewObject {
  return { apiVersion: 'vmlet.io/v1alpha1', kind: 'VirtualMachine', metadata: { name, namespace }, spec };
}

export function vmi(name: string, namespace = 'default', spec: unknown = { domain: {} }): NewObject {
  return { apiVersion: 'vmlet.io/v1alpha1', kind: 'VirtualMachineInstance', metadata: { name, namespace }, spec };
}
