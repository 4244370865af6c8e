// Reads the host's DNS settings (nameservers, search domains) from resolv.conf files for the DHCP server, skipping loopback stub resolvers.
import fs from 'node:fs';
import { isIPv4 } from './ipv4.js';

export interface DnsSettings {
  nameservers: string[];
  search: string[];
}

/** Parses resolv.conf text: IPv4 nameservers except 127.0.0.0/8 (stubs like systemd-resolved's 127.0.0.53 are unreachable from a guest), and `search`/`domain`. */
export function parseResolvConf(text: string): DnsSettings {
  const nameservers: string[] = [];
  let search: string[] = [];
  for (const raw of text.split('\n')) {
    const line = raw.replace(/[#;].*$/, '').trim();
    const [key, ...rest] = line.split(/\s+/);
    if (key === 'nameserver' && rest[0] !== undefined && isIPv4(rest[0]) && !rest[0].startsWith('127.') && !nameservers.includes(rest[0])) {
      nameservers.push(rest[0]);
    } else if (key === 'search') {
      search = rest.filter(Boolean);
    } else if (key === 'domain' && rest[0] !== undefined) {
      search = [rest[0]];
    }
  }
  return { nameservers, search };
}

/**
 * DNS for guests: the first file in `paths` that names a usable nameserver wins (e.g.
 * ['/etc/resolv.conf', '/run/systemd/resolve/resolv.conf'] finds the real upstreams behind a
 * systemd-resolved stub). Missing files are skipped; no usable server gives empty lists.
 */
export function readHostDns(paths: readonly string[]): DnsSettings {
  let firstSearch: string[] = [];
  for (const p of paths) {
    let text: string;
    try {
      text = fs.readFileSync(p, 'utf8');
    } catch {
      continue;
    }
    const s = parseResolvConf(text);
    if (firstSearch.length === 0) firstSearch = s.search;
    if (s.nameservers.length > 0) return { nameservers: s.nameservers, search: s.search.length > 0 ? s.search : firstSearch };
  }
  return { nameservers: [], search: firstSearch };
}
