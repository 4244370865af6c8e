// Where an installed vmlet lives on a host (versioned trees, the `current` link, unit, CLI wrapper, config), all under one root so tests can install into a scratch folder.
import path from 'node:path';

export interface InstallLayout {
  /** '/' on a real host */
  root: string;
  /** the versioned trees and the `current` link: /opt/vmlet */
  prefix: string;
  /** the link the unit and the wrapper run through */
  current: string;
  /** what was installed, for upgrades and uninstall */
  manifest: string;
  configDir: string;
  configFile: string;
  unitFile: string;
  /** the `vmlet` command on the PATH */
  wrapper: string;
}

/** The layout under `root`; every path in it is absolute on the real host when root is '/'. */
export function installLayout(root = '/'): InstallLayout {
  const at = (p: string): string => path.join(root, p);
  const prefix = at('/opt/vmlet');
  return {
    root,
    prefix,
    current: path.join(prefix, 'current'),
    manifest: path.join(prefix, 'install.json'),
    configDir: at('/etc/vmlet'),
    configFile: at('/etc/vmlet/vmlet.yaml'),
    unitFile: at('/etc/systemd/system/vmlet.service'),
    wrapper: at('/usr/local/bin/vmlet'),
  };
}

/** The path a file of the layout has on the host it serves (for the unit's and the wrapper's contents). */
export function hostPath(layout: InstallLayout, p: string): string {
  return '/' + path.relative(layout.root, p);
}
