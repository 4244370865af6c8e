// The one place where values are put into QEMU option strings: commas doubled, control characters refused.

import { hasControlChars } from '../api/names.js';
import { VmletError } from '../errors.js';

/**
 * Escapes a value for QEMU's `key=value,key=value` option syntax (QemuOpts and keyval): every
 * `,` becomes `,,`, so the value can never end early and start another option. Values with
 * control characters (NUL, newline, ...) are refused with UNSAFE_VALUE, as is the empty string.
 */
export function escapeOptValue(value: string): string {
  if (value === '') throw new VmletError('UNSAFE_VALUE', 'empty value in a QEMU option');
  if (hasControlChars(value)) {
    throw new VmletError('UNSAFE_VALUE', `value ${JSON.stringify(value)} contains control characters and cannot be put into a QEMU option`);
  }
  return value.replace(/,/g, ',,');
}

export type OptValue = string | number | bigint | boolean | undefined;

/**
 * Builds one option string: `head,key=value,...`. The head (the implied first value, such as a
 * device driver) and every value are escaped; pairs whose value is undefined are left out;
 * booleans become on/off. Keys are vmlet's own and must be plain identifiers.
 */
export function qemuOpts(head: string | undefined, pairs: ReadonlyArray<readonly [string, OptValue]>): string {
  const parts: string[] = [];
  if (head !== undefined) parts.push(escapeOptValue(head));
  for (const [key, value] of pairs) {
    if (value === undefined) continue;
    if (!/^[a-z][a-z0-9._-]*$/i.test(key)) throw new VmletError('UNSAFE_VALUE', `bad QEMU option key ${JSON.stringify(key)}`);
    const text = typeof value === 'boolean' ? (value ? 'on' : 'off') : String(value);
    parts.push(`${key}=${escapeOptValue(text)}`);
  }
  return parts.join(',');
}

/**
 * Splits an option string the way QEMU does (`,,` is a literal comma) into its parts. Used by
 * tests and diagnostics to show that an escaped value stays one option.
 */
export function splitOpts(opts: string): string[] {
  const out: string[] = [];
  let cur = '';
  for (let i = 0; i < opts.length; i++) {
    const c = opts[i];
    if (c === ',') {
      if (opts[i + 1] === ',') {
        cur += ',';
        i++;
      } else {
        out.push(cur);
        cur = '';
      }
    } else {
      cur += c;
    }
  }
  out.push(cur);
  return out;
}
