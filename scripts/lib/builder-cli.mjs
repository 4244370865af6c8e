// The command line of the guest builders that start from Debian packages: `[--force] [--out DIR] [--mirror URL]`, a one-line JSON summary on stdout, the error on stderr.
import path from 'node:path';

/**
 * Parses `args` (exits 2 with the usage line on anything it does not know), runs `ensure` with what they
 * say and prints what `summary` makes of its result as one line of JSON; a failure is printed on stderr
 * after `prefix` and exits 1.
 * @template R
 * @param {{
 *   args: string[],
 *   usage: string,
 *   prefix: string,
 *   ensure: (o: {force?: boolean, out?: string, mirror?: string}) => Promise<R>,
 *   summary: (r: R) => unknown,
 * }} o
 */
export async function builderMain({ args, usage, prefix, ensure, summary }) {
  /** @type {{force?: boolean, out?: string, mirror?: string}} */
  const o = {};
  let bad = false;
  for (let i = 0; i < args.length; i++) {
    if (args[i] === '--force') o.force = true;
    else if (args[i] === '--out' && args[i + 1]) o.out = path.resolve(args[++i]);
    else if (args[i] === '--mirror' && args[i + 1]) o.mirror = args[++i];
    else bad = true;
  }
  if (bad) {
    process.stderr.write(`usage: ${usage}\n`);
    process.exit(2);
  }
  try {
    process.stdout.write(`${JSON.stringify(summary(await ensure(o)))}\n`);
  } catch (e) {
    process.stderr.write(`${prefix}: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exit(1);
  }
}
