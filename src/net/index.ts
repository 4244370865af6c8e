// The net library's public surface: planning, QEMU NIC arguments, IPAM, DHCP, and the standalone NetManager.
export * from './types.js';
export { planNetwork, DEFAULT_VM_NETWORK_CIDR, POD_INTERFACE, SANDBOX_BRIDGE, TAP_NAME, NIC_MODELS, type PlanOptions } from './plan.js';
export { normalizeMac, deriveMac } from './mac.js';
export { sandboxId, sandboxNames, DEFAULT_NAMES, type NameConfig } from './names.js';
export {
  checkSubnetClash,
  planHostBridge,
  hostNftRuleset,
  planSandboxHost,
  planSandboxInside,
  planBinding,
  planSandboxDelete,
  toBatch,
  gatewayOf,
  BRIDGE_BINDING_SERVER_IP,
  type BindingPlan,
  type BindingExtras,
  type PodInterfaceState,
  type TapOptions,
} from './commands.js';
export { qemuNicArgs, vhostAvailable, type NicArgsInput, type TapSource } from './qemu-args.js';
export { Ipam, writeFileAtomic, IPAM_FILE } from './ipam.js';
export { DhcpServer, answerDhcp, sanitizeHostname, type DhcpLeaseConfig, type DhcpEvent, type DhcpInterface, type NetLogger } from './dhcp-server.js';
export { decodeDhcp, encodeDhcpReply, encodeDhcpRequest, DhcpMessageType, DhcpOption } from './dhcp-codec.js';
export { parseResolvConf, readHostDns, type DnsSettings } from './resolv.js';
export { execRunner, type CommandRunner } from './exec.js';
export {
  NetManager,
  DEFAULT_SUBNET,
  DEFAULT_BRIDGE,
  DEFAULT_NFT_TABLE,
  DEFAULT_LEASE_SECONDS,
  type NetManagerOptions,
  type SandboxRequest,
  type SandboxInfo,
  type InterfaceStatus,
  type AdoptResult,
} from './sandbox.js';
export { PodNetwork, type PodNetworkOptions, type PodAttachRequest, type PodAttachment, type PodAttachResult, type PodNic } from './pod-network.js';
export {
  planPodAttach,
  readPodState,
  formatPodRecord,
  parsePodRecord,
  podInterfacesStatus,
  type PodAttachPlan,
  type PodRecord,
  type PodState,
  type IpLink,
} from './pod-plan.js';
