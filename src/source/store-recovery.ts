// The local store's recovery on open: load every object file, remove temp files left by interrupted writes, quarantine what cannot be trusted, and restore the resourceVersion counter.

import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { errnoCode, isTempName, moveAside, unlinkDurable } from './atomic-file.js';
import type { Kind, KubeObject } from './source.js';
import { deepFreeze, RV_FILE, type StoreCore } from './store-core.js';
import { isRecord, isSafeKeyPart, isStoredObject, objectProblem, PLURALS, rvOf, RV_RE, STORE_KINDS } from './store-keys.js';

/** Fill the core's cache from disk and tell it where resourceVersions continue. Throws only when a directory cannot be made or read. */
export async function loadStore(core: StoreCore): Promise<void> {
  await fsp.mkdir(core.root, { recursive: true, mode: 0o700 });
  await core.ensureDir(core.objectsDir);
  let maxRv = 0;
  for (const ent of await fsp.readdir(core.objectsDir, { withFileTypes: true })) {
    const p = path.join(core.objectsDir, ent.name);
    if (isTempName(ent.name)) await removeLeftover(core, p);
  }
  core.persistedRvFloor = await readRvFloor(core);
  for (const kind of STORE_KINDS) {
    const kindDir = path.join(core.objectsDir, PLURALS[kind]);
    await core.ensureDir(kindDir);
    for (const nsEnt of await fsp.readdir(kindDir, { withFileTypes: true })) {
      const nsDir = path.join(kindDir, nsEnt.name);
      if (!nsEnt.isDirectory() || !isSafeKeyPart('namespace', nsEnt.name)) {
        if (isTempName(nsEnt.name) && nsEnt.isFile()) await removeLeftover(core, nsDir);
        else await quarantine(core, nsDir, `${PLURALS[kind]}__${nsEnt.name}`, 'not a namespace directory');
        continue;
      }
      // Not marked known: the first write into it fsyncs its parent again, in case a crash came between its mkdir and that fsync.
      for (const ent of await fsp.readdir(nsDir, { withFileTypes: true })) {
        const file = path.join(nsDir, ent.name);
        if (isTempName(ent.name)) {
          await removeLeftover(core, file);
          continue;
        }
        const qname = `${PLURALS[kind]}__${nsEnt.name}__${ent.name}`;
        const name = ent.name.endsWith('.json') ? ent.name.slice(0, -'.json'.length) : '';
        if (!ent.isFile() || name === '' || !isSafeKeyPart('name', name)) {
          await quarantine(core, file, qname, 'not an object file');
          continue;
        }
        const loaded = await readObject(file, kind, nsEnt.name, name);
        if (typeof loaded === 'string') {
          await quarantine(core, file, qname, loaded);
          continue;
        }
        core.setCached(deepFreeze(loaded));
        maxRv = Math.max(maxRv, rvOf(loaded));
      }
    }
  }
  core.loaded(Math.max(maxRv, core.persistedRvFloor));
}

/** The object in `file`, or why it cannot be accepted. */
async function readObject(file: string, kind: Kind, ns: string, name: string): Promise<KubeObject | string> {
  let text: string;
  try {
    text = await fsp.readFile(file, 'utf8');
  } catch (e) {
    return `unreadable: ${errnoCode(e) ?? String(e)}`;
  }
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    return 'not valid JSON';
  }
  const problem = objectProblem(v);
  if (problem !== undefined || !isStoredObject(v)) return problem ?? 'malformed object';
  if (v.kind !== kind) return `kind ${v.kind} in the ${PLURALS[kind]} directory`;
  if (v.metadata.namespace !== ns || v.metadata.name !== name) return 'metadata.namespace/name do not match the file path';
  return v;
}

async function readRvFloor(core: StoreCore): Promise<number> {
  const file = path.join(core.objectsDir, RV_FILE);
  let text: string;
  try {
    text = await fsp.readFile(file, 'utf8');
  } catch (e) {
    if (errnoCode(e) === 'ENOENT') return 0;
    throw e;
  }
  try {
    const v: unknown = JSON.parse(text);
    if (isRecord(v) && typeof v['resourceVersion'] === 'string' && RV_RE.test(v['resourceVersion'])) return Number(v['resourceVersion']);
  } catch {
    // fall through to quarantine
  }
  await quarantine(core, file, `objects__${RV_FILE}`, 'unreadable resourceVersion floor');
  return 0;
}

async function removeLeftover(core: StoreCore, file: string): Promise<void> {
  try {
    await unlinkDurable(file);
    core.log.info({ file }, 'store: removed a temp file left by an interrupted write');
  } catch (e) {
    core.log.warn({ file, err: e }, 'store: could not remove a leftover temp file');
  }
}

async function quarantine(core: StoreCore, file: string, baseName: string, reason: string): Promise<void> {
  try {
    const to = await moveAside(file, core.quarantineDir, baseName);
    core.log.warn({ file, quarantinedTo: to, reason }, 'store: quarantined a file that is not a valid object');
  } catch (e) {
    core.log.error({ file, reason, err: e }, 'store: could not quarantine an invalid file; ignoring it');
  }
}
