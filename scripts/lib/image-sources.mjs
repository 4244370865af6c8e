// Finds the Debian mirrors this machine's apt uses (sources.list one-line and deb822 .sources files) and turns them into bookworm source lines for the image.
import fs from 'node:fs';
import path from 'node:path';

/** The image's Debian release, whatever the host runs. */
export const SUITE = 'bookworm';

/** A Debian archive URI (also a snapshot.debian.org one), as opposed to a third-party repository. */
const DEBIAN_URI = /\/debian(-security)?(\/\d{8}T\d{6}Z)?\/?$/;

/**
 * `deb` entries of one sources file's text: one-line format (`.list`) or deb822 (`.sources`).
 * @param {string} text
 * @param {'list' | 'sources'} format
 * @returns {Array<{ uri: string, suites: string[], components: string[] }>}
 */
export function parseSources(text, format) {
  const out = [];
  if (format === 'list') {
    for (const raw of text.split('\n')) {
      const line = raw.replace(/#.*/, '').trim();
      // `deb [opts] URI SUITE COMPONENT...`
      const m = /^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)\s*(.*)$/.exec(line);
      if (m) out.push({ uri: String(m[1]), suites: [String(m[2])], components: String(m[3]).split(/\s+/).filter(Boolean) });
    }
    return out;
  }
  for (const stanza of text.split(/\n\s*\n/)) {
    /** @type {Record<string, string>} */
    const f = {};
    let key = '';
    for (const raw of stanza.split('\n')) {
      if (raw.startsWith('#')) continue;
      const m = /^([A-Za-z-]+):\s*(.*)$/.exec(raw);
      if (m) {
        key = String(m[1]).toLowerCase();
        f[key] = String(m[2]);
      } else if (/^\s/.test(raw) && key) f[key] = `${f[key]} ${raw.trim()}`;
    }
    if (f.enabled === 'no' || !(f.types ?? '').split(/\s+/).includes('deb')) continue;
    const words = (k) => (f[k] ?? '').split(/\s+/).filter(Boolean);
    for (const uri of words('uris')) out.push({ uri, suites: words('suites'), components: words('components') });
  }
  return out;
}

/**
 * The image's apt source lines (`deb URI SUITE main`), from the Debian mirrors among `entries`: the main
 * archive for bookworm and bookworm-updates, the security archive (when configured) for bookworm-security.
 * @param {Array<{ uri: string, suites: string[], components: string[] }>} entries
 * @returns {string[]} empty when no Debian mirror is configured
 */
export function imageSourceLines(entries) {
  const debian = entries.filter((e) => DEBIAN_URI.test(e.uri) && e.components.includes('main'));
  const main = debian.find((e) => !/-security/.test(e.uri));
  const security = debian.find((e) => /-security/.test(e.uri));
  if (!main) return [];
  const lines = [`deb ${main.uri} ${SUITE} main`, `deb ${main.uri} ${SUITE}-updates main`];
  if (security) lines.push(`deb ${security.uri} ${SUITE}-security main`);
  return lines;
}

/** Reads `/etc/apt/sources.list` and `/etc/apt/sources.list.d/*.{list,sources}` (apt ignores other names) below `root`. */
export function readHostSources(root = '/') {
  const etc = path.join(root, 'etc', 'apt');
  /** @type {Array<[string, 'list' | 'sources']>} */
  const files = [[path.join(etc, 'sources.list'), 'list']];
  try {
    for (const n of fs.readdirSync(path.join(etc, 'sources.list.d')).sort()) {
      if (n.endsWith('.list')) files.push([path.join(etc, 'sources.list.d', n), 'list']);
      else if (n.endsWith('.sources')) files.push([path.join(etc, 'sources.list.d', n), 'sources']);
    }
  } catch {
    /* no .d folder */
  }
  const out = [];
  for (const [file, format] of files) {
    let text;
    try {
      text = fs.readFileSync(file, 'utf8');
    } catch {
      continue;
    }
    out.push(...parseSources(text, format));
  }
  return out;
}
