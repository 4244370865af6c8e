// Newline-delimited JSON framing shared by the QMP and guest-agent clients: line splitting with a size limit, 0xFF resync, and encoding.

export interface LineSplitterOptions {
  /** Longest accepted line in bytes, newline excluded; a longer one is reported once through onOversize. */
  maxLineBytes: number;
  /** Called with each complete, non-blank line (without its newline; a trailing \r is kept, JSON.parse ignores it). */
  onLine(line: string): void;
  /** Called when a line grows past maxLineBytes; the splitter then stops until reset(). */
  onOversize(bytes: number): void;
}

const NL = 0x0a;
const SENTINEL = 0xff;

/**
 * Splits a byte stream into lines. The common case (a whole line inside one chunk) decodes straight
 * out of the chunk without copying; partial lines are kept as a list of slices until their newline
 * arrives. Oversize is detected as soon as the partial line passes the limit, not when it ends,
 * so a peer cannot make us buffer without bound.
 */
export class LineSplitter {
  private parts: Buffer[] = [];
  private partBytes = 0;
  private skipping = false;
  private stopped = false;
  private readonly max: number;
  private readonly onLine: (line: string) => void;
  private readonly onOversize: (bytes: number) => void;

  constructor(opts: LineSplitterOptions) {
    this.max = opts.maxLineBytes;
    this.onLine = opts.onLine;
    this.onOversize = opts.onOversize;
  }

  /**
   * Discard everything up to and including the next 0xFF byte (guest-agent resync). Any partial
   * line is dropped at once. Takes effect for the bytes not yet split, including the rest of the
   * chunk being processed when called from inside onLine.
   */
  skipToSentinel(): void {
    this.skipping = true;
    this.parts = [];
    this.partBytes = 0;
  }

  get isSkipping(): boolean {
    return this.skipping;
  }

  /** Stop splitting: later chunks are ignored (used once the connection is being torn down). */
  stop(): void {
    this.stopped = true;
    this.parts = [];
    this.partBytes = 0;
  }

  push(chunk: Buffer): void {
    let start = 0;
    const len = chunk.length;
    while (start < len && !this.stopped) {
      if (this.skipping) {
        const s = chunk.indexOf(SENTINEL, start);
        if (s < 0) return;
        this.skipping = false;
        start = s + 1;
        continue;
      }
      const nl = chunk.indexOf(NL, start);
      if (nl < 0) {
        this.partBytes += len - start;
        if (this.partBytes > this.max) return this.oversize(this.partBytes);
        this.parts.push(start === 0 ? chunk : chunk.subarray(start));
        return;
      }
      let line: string;
      if (this.partBytes === 0) {
        if (nl - start > this.max) return this.oversize(nl - start);
        line = chunk.toString('utf8', start, nl);
      } else {
        const total = this.partBytes + (nl - start);
        if (total > this.max) return this.oversize(total);
        this.parts.push(chunk.subarray(start, nl));
        line = Buffer.concat(this.parts, total).toString('utf8');
        this.parts = [];
        this.partBytes = 0;
      }
      start = nl + 1;
      if (!isBlank(line)) this.onLine(line);
    }
  }

  private oversize(bytes: number): void {
    this.stop();
    this.onOversize(bytes);
  }
}

function isBlank(line: string): boolean {
  // Cheap check first: almost every line starts with '{'.
  if (line.charCodeAt(0) === 0x7b) return false;
  return line.trim().length === 0;
}

/** A JSON object, as every QMP/QGA message must be. */
export type JsonObject = Record<string, unknown>;

/** Parses one line into a JSON object, or returns an Error saying why not. */
export function parseObjectLine(line: string): JsonObject | Error {
  let v: unknown;
  try {
    v = JSON.parse(line);
  } catch (e) {
    return e instanceof Error ? e : new Error(String(e));
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return new Error('message is not a JSON object');
  return v as JsonObject;
}

/** One line for the wire: a short excerpt for logs and error messages, never the whole (maybe huge) line. */
export function excerpt(line: string, max = 120): string {
  return line.length <= max ? line : `${line.slice(0, max)}… (${line.length} chars)`;
}
