// Wire types of the QEMU guest agent (qemu-ga) commands the daemon uses, following qga/qapi-schema.json.

export interface GuestAgentCommandInfo {
  name: string;
  enabled: boolean;
  'success-response': boolean;
}
export interface GuestAgentInfo {
  version: string;
  supported_commands: GuestAgentCommandInfo[];
}

export interface GuestOSInfo {
  'kernel-release'?: string;
  'kernel-version'?: string;
  machine?: string;
  id?: string;
  name?: string;
  'pretty-name'?: string;
  version?: string;
  'version-id'?: string;
  variant?: string;
  'variant-id'?: string;
}

export interface GuestIpAddress {
  'ip-address': string;
  'ip-address-type': 'ipv4' | 'ipv6';
  prefix: number;
}
export interface GuestNetworkInterfaceStat {
  'rx-bytes': number;
  'rx-packets': number;
  'rx-errs': number;
  'rx-dropped': number;
  'tx-bytes': number;
  'tx-packets': number;
  'tx-errs': number;
  'tx-dropped': number;
}
export interface GuestNetworkInterface {
  name: string;
  'hardware-address'?: string;
  'ip-addresses'?: GuestIpAddress[];
  statistics?: GuestNetworkInterfaceStat;
}

export interface GuestDiskAddress {
  'bus-type': string;
  bus: number;
  target: number;
  unit: number;
  serial?: string;
  dev?: string;
  [field: string]: unknown;
}
export interface GuestFilesystemInfo {
  name: string;
  mountpoint: string;
  type: string;
  'used-bytes'?: number;
  'total-bytes'?: number;
  disk: GuestDiskAddress[];
}

export type GuestFsfreezeStatus = 'thawed' | 'frozen';
export type GuestShutdownMode = 'powerdown' | 'halt' | 'reboot';

export type GaEmpty = Record<string, never>;

export interface GuestAgentCommandMap {
  'guest-sync-delimited': { args: { id: number }; ret: number };
  'guest-sync': { args: { id: number }; ret: number };
  'guest-ping': { args: undefined; ret: GaEmpty };
  'guest-info': { args: undefined; ret: GuestAgentInfo };
  'guest-get-osinfo': { args: undefined; ret: GuestOSInfo };
  'guest-get-host-name': { args: undefined; ret: { 'host-name': string } };
  'guest-network-get-interfaces': { args: undefined; ret: GuestNetworkInterface[] };
  'guest-get-fsinfo': { args: undefined; ret: GuestFilesystemInfo[] };
  'guest-fsfreeze-status': { args: undefined; ret: GuestFsfreezeStatus };
  /** Returns the number of filesystems frozen. */
  'guest-fsfreeze-freeze': { args: undefined; ret: number };
  /** Returns the number of filesystems thawed. */
  'guest-fsfreeze-thaw': { args: undefined; ret: number };
  /** Sends no reply on success: the client resolves once the command is written. */
  'guest-shutdown': { args: { mode?: GuestShutdownMode }; ret: undefined };
}

export type GuestAgentCommandName = keyof GuestAgentCommandMap;
