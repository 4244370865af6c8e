// Puts a containerDisk image into the test cluster's containerd with no registry: buildContainerDisk's OCI archive, imported by loadImage under the name pods give.
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { buildContainerDisk, containerDiskSkipReason } from '../container-disk.js';
import { which } from '../which.js';
import { ClusterError } from './errors.js';
import { run } from './exec.js';
import { loadImage } from './images.js';

/**
 * A full image reference with a registry host and a tag, e.g. `localhost/vmlet-test/disk:1`: ctr keeps such an
 * OCI `ref.name` as it is, but prefixes a bare tag with `import-<date>`, which no pod would find.
 */
const FULL_REF = /^[a-z0-9][a-z0-9.-]*(:[0-9]+)?\/[a-z0-9]+(?:[._-][a-z0-9]+)*(?:\/[a-z0-9]+(?:[._-][a-z0-9]+)*)*:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/;

/** Why importContainerDiskImage cannot work here (besides a running cluster), or false. */
export async function containerDiskImageSkipReason(): Promise<string | false> {
  const build = containerDiskSkipReason();
  if (build !== false) return build;
  if (which('ctr') === undefined) return 'ctr (containerd) is not installed';
  return false;
}

/**
 * Builds a containerDisk (`FROM scratch`, `disk` at /disk/<its base name>) named `name` into an OCI archive in
 * `workDir` (kept there) and imports it into the containerd at `containerdSock` (namespace k8s.io), so that a
 * pod naming `name` with `imagePullPolicy: IfNotPresent` or `Never` runs it without any registry.
 */
export async function importContainerDiskImage(containerdSock: string, opts: { disk: string; name: string; workDir: string }): Promise<void> {
  if (!FULL_REF.test(opts.name))
    throw new ClusterError('CLUSTER_BAD_IMAGE_NAME', `${JSON.stringify(opts.name)} is not a full image reference like localhost/vmlet-test/disk:1`);
  const skip = await containerDiskImageSkipReason();
  if (skip !== false) throw new ClusterError('CLUSTER_IMAGE_BUILD_FAILED', `cannot build ${opts.name}: ${skip}`);
  await fsp.mkdir(opts.workDir, { recursive: true });
  const archive = path.join(path.resolve(opts.workDir), `${opts.name.replace(/[^A-Za-z0-9_.-]/g, '-')}.oci.tar`);
  try {
    await buildContainerDisk({ disk: opts.disk, name: opts.name, format: 'oci-archive', out: archive });
  } catch (e) {
    throw new ClusterError('CLUSTER_IMAGE_BUILD_FAILED', `building ${opts.name} from ${opts.disk}`, { cause: e });
  }
  await loadImage(containerdSock, archive);
  // ctr names what it imports after the archive's annotations: check it is the name pods will ask for
  const names = (await run('ctr', ['--address', containerdSock, '-n', 'k8s.io', 'images', 'ls', '--quiet'])).split('\n');
  if (!names.includes(opts.name))
    throw new ClusterError('CLUSTER_IMAGE_NOT_IMPORTED', `${archive} was imported, but containerd has no image named ${opts.name}`);
}
