// Kubernetes resource quantities ("128Mi", "1.5", "500m", "1e3") parsed exactly into integers of bytes, cores or millicores.

import { VmletError } from '../errors.js';
import type { Quantity } from './types.js';

// <sign><number><suffix>, suffix = binarySI | decimalExponent | decimalSI (as in k8s.io/apimachinery resource.Quantity).
const QUANTITY_RE = /^([+-]?)(\d+(?:\.\d*)?|\.\d+)(Ki|Mi|Gi|Ti|Pi|Ei|[eE][+-]?\d+|n|u|m|k|M|G|T|P|E)?$/;

const BINARY: Record<string, number> = { Ki: 10, Mi: 20, Gi: 30, Ti: 40, Pi: 50, Ei: 60 };
const DECIMAL: Record<string, number> = { n: -9, u: -6, m: -3, k: 3, M: 6, G: 9, T: 12, P: 15, E: 18 };

const MAX_TEXT = 64;
const MAX_EXPONENT = 64;

/** An exact rational value: num / den, den > 0. */
export interface Rational {
  num: bigint;
  den: bigint;
}

function invalid(q: unknown, why: string): VmletError {
  return new VmletError('INVALID_QUANTITY', `invalid quantity ${JSON.stringify(q)}: ${why}`);
}

/** Parses a quantity into an exact rational number of base units. Throws INVALID_QUANTITY. */
export function parseQuantityExact(q: Quantity): Rational {
  let text: string;
  if (typeof q === 'number') {
    if (!Number.isFinite(q)) throw invalid(q, 'not a finite number');
    if (Number.isSafeInteger(q)) return { num: BigInt(q), den: 1n };
    text = String(q).replace('e+', 'e');
  } else if (typeof q === 'string') {
    text = q;
  } else {
    throw invalid(q, 'must be a string or a number');
  }
  if (text.length === 0) throw invalid(q, 'empty');
  if (text.length > MAX_TEXT) throw invalid(q, `longer than ${MAX_TEXT} characters`);
  const m = QUANTITY_RE.exec(text);
  if (m === null) throw invalid(q, 'expected a number with an optional suffix (Ki, Mi, Gi, Ti, Pi, Ei, n, u, m, k, M, G, T, P, E or an exponent like e3)');
  const sign = m[1] === '-' ? -1n : 1n;
  const numberText = m[2] ?? '';
  const suffix = m[3] ?? '';
  const [intPart = '', fracPart = ''] = numberText.split('.');
  let num = BigInt((intPart || '0') + fracPart) * sign;
  let den = 10n ** BigInt(fracPart.length);
  let exp10 = 0;
  let exp2 = 0;
  if (suffix in BINARY) exp2 = BINARY[suffix] ?? 0;
  else if (suffix in DECIMAL) exp10 = DECIMAL[suffix] ?? 0;
  else if (suffix !== '') {
    exp10 = Number.parseInt(suffix.slice(1), 10);
    if (!Number.isSafeInteger(exp10) || Math.abs(exp10) > MAX_EXPONENT) throw invalid(q, `exponent beyond ±${MAX_EXPONENT}`);
  }
  if (exp10 >= 0) num *= 10n ** BigInt(exp10);
  else den *= 10n ** BigInt(-exp10);
  num *= 2n ** BigInt(exp2);
  return { num, den };
}

function ceilDiv(num: bigint, den: bigint): bigint {
  const q = num / den;
  return num % den > 0n ? q + 1n : q;
}

/**
 * Parses a quantity into an integer number of base units (bytes for memory, cores for cpu),
 * rounding fractions up like Kubernetes' Quantity.Value(). Throws INVALID_QUANTITY.
 */
export function parseQuantity(q: Quantity): bigint {
  const r = parseQuantityExact(q);
  return ceilDiv(r.num, r.den);
}

/** Parses a quantity into thousandths of its unit (millicores for cpu), rounding up like MilliValue(). */
export function parseMilliQuantity(q: Quantity): bigint {
  const r = parseQuantityExact(q);
  return ceilDiv(r.num * 1000n, r.den);
}

/** Formats a byte count with the largest exact binary suffix ("128Mi", "1536Ki", "1000"). */
export function formatBytes(bytes: bigint): string {
  const units: Array<[string, bigint]> = [
    ['Ei', 1n << 60n],
    ['Pi', 1n << 50n],
    ['Ti', 1n << 40n],
    ['Gi', 1n << 30n],
    ['Mi', 1n << 20n],
    ['Ki', 1n << 10n],
  ];
  if (bytes !== 0n) {
    for (const [suffix, size] of units) {
      if (bytes % size === 0n) return `${bytes / size}${suffix}`;
    }
  }
  return bytes.toString();
}
