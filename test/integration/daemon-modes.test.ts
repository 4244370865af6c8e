// The daemon's modes load what they need at run time: `--mode kubernetes` gets the Kubernetes client, which the standalone daemon no longer loads at start-up.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { daemonSkipReason, distCli } from '../support/daemon.js';

const skip = daemonSkipReason({ guest: false });

t.test('--mode kubernetes loads the Kubernetes client lazily and fails on a missing kubeconfig with its own error', { skip }, async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmlet-modes-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const kubeconfig = path.join(dir, 'no-such-kubeconfig');
  const r = spawnSync(
    process.execPath,
    [
      distCli,
      'daemon',
      '--mode',
      'kubernetes',
      '--kubeconfig',
      kubeconfig,
      '--socket',
      path.join(dir, 's.sock'),
      '--state-dir',
      path.join(dir, 'state'),
      '--run-dir',
      path.join(dir, 'run'),
      '--accel',
      'tcg',
      '--log-format',
      'json',
    ],
    { encoding: 'utf8', timeout: 60_000, env: { ...process.env, VMLET_LOG_LEVEL: 'info' } },
  );
  t.equal(r.status, 1, 'the daemon does not start');
  t.match(r.stderr, `vmlet daemon: ENOENT: no such file or directory, open '${kubeconfig}'`, 'the kubeconfig is what is missing');
  t.match(
    r.stdout,
    /KubeConfig\.loadFromFile \(\S*@kubernetes\/client-node\/\S*config\.[jt]s/,
    "the error comes from the Kubernetes client's loader, so the module loaded",
  );
  t.notMatch(`${r.stdout}${r.stderr}`, /ERR_MODULE_NOT_FOUND|Cannot find module/, 'no module is missing');
});
