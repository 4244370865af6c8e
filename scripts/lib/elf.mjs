// Reads 64-bit little-endian (amd64) ELF files for the guest builder: shared-library dependencies, named sections, a kernel's PVH entry note.
//
// Plain Node with no npm dependencies (scripts/build-guest-image.mjs runs before node_modules exists).
// Errors are GuestImageError with code GUEST_BAD_ELF.
import fs from 'node:fs';
import { GuestImageError } from './guest-image-error.mjs';

/** Parses the ELF header of `buf` (`what` names it in errors). */
export function elfHeader(buf, what) {
  if (buf.length < 64 || buf.readUInt32BE(0) !== 0x7f454c46) throw new GuestImageError('GUEST_BAD_ELF', `${what} is not an ELF file`);
  if (buf[4] !== 2 || buf[5] !== 1) throw new GuestImageError('GUEST_BAD_ELF', `${what} is not 64-bit little-endian ELF`);
  return {
    phoff: Number(buf.readBigUInt64LE(0x20)),
    shoff: Number(buf.readBigUInt64LE(0x28)),
    phentsize: buf.readUInt16LE(0x36),
    phnum: buf.readUInt16LE(0x38),
    shentsize: buf.readUInt16LE(0x3a),
    shnum: buf.readUInt16LE(0x3c),
    shstrndx: buf.readUInt16LE(0x3e),
  };
}

function cstr(buf, off) {
  const end = buf.indexOf(0, off);
  return buf.toString('latin1', off, end < 0 ? buf.length : end);
}

/** Program interpreter and DT_NEEDED sonames of an executable or shared library. */
export function elfDeps(file) {
  const buf = fs.readFileSync(file);
  const h = elfHeader(buf, file);
  const loads = [];
  let interp = null;
  let dyn = null;
  for (let i = 0; i < h.phnum; i++) {
    const o = h.phoff + i * h.phentsize;
    const type = buf.readUInt32LE(o);
    const offset = Number(buf.readBigUInt64LE(o + 8));
    const vaddr = Number(buf.readBigUInt64LE(o + 16));
    const filesz = Number(buf.readBigUInt64LE(o + 32));
    if (type === 1) loads.push({ offset, vaddr, filesz });
    else if (type === 2) dyn = { offset, filesz };
    else if (type === 3) interp = cstr(buf, offset);
  }
  const needed = [];
  if (dyn) {
    const neededOffsets = [];
    let strtab = null;
    for (let o = dyn.offset; o + 16 <= dyn.offset + dyn.filesz; o += 16) {
      const tag = buf.readBigInt64LE(o);
      const val = Number(buf.readBigUInt64LE(o + 8));
      if (tag === 0n) break;
      if (tag === 1n) neededOffsets.push(val);
      else if (tag === 5n) strtab = val;
    }
    if (neededOffsets.length > 0) {
      const seg = loads.find((l) => strtab !== null && strtab >= l.vaddr && strtab < l.vaddr + l.filesz);
      if (!seg) throw new GuestImageError('GUEST_BAD_ELF', `${file}: cannot locate its dynamic string table`);
      const base = strtab - seg.vaddr + seg.offset;
      for (const off of neededOffsets) needed.push(cstr(buf, base + off));
    }
  }
  return { interp, needed };
}

/** Contents of a named section (used for a kernel module's .modinfo), or null. */
export function elfSection(buf, name, what) {
  const h = elfHeader(buf, what);
  const sh = (i) => {
    const o = h.shoff + i * h.shentsize;
    return { name: buf.readUInt32LE(o), offset: Number(buf.readBigUInt64LE(o + 24)), size: Number(buf.readBigUInt64LE(o + 32)) };
  };
  const strs = sh(h.shstrndx);
  for (let i = 0; i < h.shnum; i++) {
    const s = sh(i);
    if (cstr(buf, strs.offset + s.name) === name) return buf.subarray(s.offset, s.offset + s.size);
  }
  return null;
}

/**
 * For an uncompressed kernel image: whether it has a PVH entry point (the Xen ELF note
 * XEN_ELFNOTE_PHYS32_ENTRY, 18), and where the ELF image ends (the end of its last segment or of the
 * section header table; what follows is the relocation table KASLR uses).
 */
export function elfPvhInfo(elf, what) {
  const h = elfHeader(elf, what);
  let pvh = false;
  let end = h.shoff + h.shnum * h.shentsize;
  for (let i = 0; i < h.phnum; i++) {
    const o = h.phoff + i * h.phentsize;
    const type = elf.readUInt32LE(o);
    const offset = Number(elf.readBigUInt64LE(o + 8));
    const filesz = Number(elf.readBigUInt64LE(o + 32));
    end = Math.max(end, offset + filesz);
    if (type !== 4) continue;
    for (let n = offset; n + 12 <= offset + filesz; ) {
      const namesz = elf.readUInt32LE(n);
      const descsz = elf.readUInt32LE(n + 4);
      const ntype = elf.readUInt32LE(n + 8);
      const name = elf.toString('latin1', n + 12, n + 12 + namesz).replace(/\0+$/, '');
      if (name === 'Xen' && ntype === 18) pvh = true;
      n += 12 + Math.ceil(namesz / 4) * 4 + Math.ceil(descsz / 4) * 4;
    }
  }
  return { pvh, end };
}
