// `vmlet image import|ls|rm`: the node image store that containerDisk volumes come from (standalone daemons only).
import path from 'node:path';
import YAML from 'yaml';
import { VmletError } from '../errors.js';
import type { Ctx } from './commands.js';
import { formatTable, humanAge } from './output.js';

export const IMAGES_PATH = '/images';

interface ImageRow {
  digest: string;
  names: string[];
  format: string;
  virtualSize: number;
  size: number;
  importedAt: string;
}

function usage(message: string): VmletError {
  return new VmletError('USAGE', message);
}

/** 1.5Gi-style sizes, as a person reads them. */
export function humanBytes(n: number): string {
  const units = ['B', 'Ki', 'Mi', 'Gi', 'Ti'];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${n}B` : `${v >= 10 ? Math.round(v) : Math.round(v * 10) / 10}${units[u]}`;
}

function isImageRow(v: unknown): v is ImageRow {
  return typeof v === 'object' && v !== null && 'digest' in v && 'names' in v;
}

function short(digest: string): string {
  return digest.replace(/^sha256:/, '').slice(0, 12);
}

export function imageTable(items: unknown[], now: number): string {
  const rows = items
    .filter(isImageRow)
    .flatMap((r) =>
      (r.names.length > 0 ? r.names : ['<none>']).map((n) => [
        n,
        short(r.digest),
        r.format,
        humanBytes(r.virtualSize),
        humanBytes(r.size),
        humanAge(r.importedAt, now),
      ]),
    );
  return formatTable(['NAME', 'DIGEST', 'FORMAT', 'VIRTUAL SIZE', 'FILE SIZE', 'AGE'], rows);
}

export async function image(ctx: Ctx, args: string[], opts: { name?: string; output?: string; cwd?: string }): Promise<number> {
  const [sub, ...rest] = args;
  const now = (ctx.io.now ?? Date.now)();
  if (opts.output !== undefined && !['json', 'yaml'].includes(opts.output)) throw usage(`unknown output format "${opts.output}" (use json or yaml)`);
  if (opts.name !== undefined && sub !== 'import') throw usage('--name only applies to "image import"');
  const print = (body: unknown): boolean => {
    if (opts.output === 'json') ctx.io.stdout.write(`${JSON.stringify(body, null, 2)}\n`);
    else if (opts.output === 'yaml') ctx.io.stdout.write(YAML.stringify(body));
    else return false;
    return true;
  };
  switch (sub) {
    case 'import': {
      if (rest.length !== 1) throw usage('image import takes one FILE: an image archive (docker or OCI) or a .qcow2/.img disk');
      // The daemon reads the file on this node, so it gets an absolute path.
      const file = path.resolve(opts.cwd ?? process.cwd(), rest[0]!);
      const rec = await ctx.client.call('POST', IMAGES_PATH, { body: opts.name === undefined ? { file } : { file, name: opts.name } });
      if (!print(rec) && isImageRow(rec))
        ctx.io.stdout.write(`image ${rec.names.join(', ') || short(rec.digest)} imported (${rec.digest}, ${rec.format}, ${humanBytes(rec.virtualSize)})\n`);
      return 0;
    }
    case 'ls':
    case 'list': {
      if (rest.length > 0) throw usage('image ls takes no arguments');
      const list = await ctx.client.call('GET', IMAGES_PATH);
      if (print(list)) return 0;
      const items = (list as { items?: unknown }).items;
      if (!Array.isArray(items) || items.length === 0) ctx.io.stderr.write('No images in the node image store.\n');
      else ctx.io.stdout.write(imageTable(items, now));
      return 0;
    }
    case 'rm': {
      if (rest.length === 0) throw usage('image rm takes one or more NAME[:TAG] or DIGEST');
      for (const ref of rest) {
        const rec = await ctx.client.call('DELETE', `${IMAGES_PATH}/${encodeURIComponent(ref)}`);
        if (!print(rec)) ctx.io.stdout.write(`image ${ref} removed\n`);
      }
      return 0;
    }
    default:
      throw usage('image needs a subcommand: import FILE [--name NAME], ls, rm NAME');
  }
}
