// Writes a directory tree as a newc cpio archive (the initramfs format): root-owned, mtime 0, names sorted, so the same tree gives the same bytes.
//
// Plain Node with no npm dependencies (scripts/build-guest-image.mjs runs before node_modules exists).
import fs from 'node:fs';
import path from 'node:path';
import { GuestImageError } from './guest-image-error.mjs';

/** Serialises the tree at `stage` into a newc cpio archive, owned by root, with fixed mtimes, padded to 512 bytes. */
export function cpioNewc(stage) {
  const chunks = [];
  let ino = 1;
  const pad4 = (n) => (4 - (n % 4)) % 4;
  const hex = (n) => n.toString(16).padStart(8, '0');
  const entry = (name, mode, data, nlink = 1) => {
    const nameBuf = Buffer.from(`${name}\0`, 'utf8');
    const header =
      '070701' + hex(ino++) + hex(mode) + hex(0) + hex(0) + hex(nlink) + hex(0) +
      hex(data.length) + hex(0) + hex(0) + hex(0) + hex(0) + hex(nameBuf.length) + hex(0);
    chunks.push(Buffer.from(header, 'latin1'), nameBuf, Buffer.alloc(pad4(110 + nameBuf.length)), data, Buffer.alloc(pad4(data.length)));
  };
  const walk = (rel) => {
    const names = fs.readdirSync(path.join(stage, rel)).sort();
    for (const n of names) {
      const r = rel ? `${rel}/${n}` : n;
      const p = path.join(stage, r);
      const st = fs.lstatSync(p);
      const perm = st.mode & 0o7777;
      if (st.isSymbolicLink()) entry(r, 0o120000 | 0o777, Buffer.from(fs.readlinkSync(p), 'utf8'));
      else if (st.isDirectory()) {
        entry(r, 0o040000 | perm, Buffer.alloc(0), 2);
        walk(r);
      } else if (st.isFile()) entry(r, 0o100000 | perm, fs.readFileSync(p));
      else throw new GuestImageError('GUEST_BUILD_FAILED', `unexpected file type in the initramfs tree: ${r}`);
    }
  };
  entry('.', 0o040755, Buffer.alloc(0), 2);
  walk('');
  entry('TRAILER!!!', 0, Buffer.alloc(0));
  const body = Buffer.concat(chunks);
  return Buffer.concat([body, Buffer.alloc((512 - (body.length % 512)) % 512)]);
}
