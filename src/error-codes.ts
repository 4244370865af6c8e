// The one table of vmlet's error codes: each code's HTTP status, its area (the docs/errors-<area>.md that explains it) and a one-line meaning; the ErrorCode type and the HTTP mapping derive from it.

/** Where a code is explained: `docs/errors-<area>.md` (merged into docs/errors.md by scripts/merge-error-docs.mjs). */
export type ErrorArea = 'daemon' | 'http' | 'api' | 'store' | 'qmp' | 'launcher' | 'cgroups' | 'net' | 'cluster' | 'disk' | 'install';

export interface ErrorCodeInfo {
  /** The HTTP status an API answer carries when this error reaches a request (500: not a client's fault, or never reaches the API). */
  readonly http: number;
  readonly area: ErrorArea;
  /** One line; docs/errors-<area>.md has the whole story and what to do. */
  readonly meaning: string;
}

/**
 * Every code vmlet's errors carry (VmletError, QmpError, ValidationError details). Adding a code:
 * add it here and to docs/errors-<area>.md, then run `node scripts/merge-error-docs.mjs`;
 * test/unit/docs-errors.test.ts compares this table with the docs both ways.
 */
export const ERROR_CODES = {
  // daemon: docs/errors-daemon.md
  ALREADY_EXISTS: { http: 409, area: 'daemon', meaning: 'create of a name that exists' },
  VMI_SPEC_IMMUTABLE: { http: 422, area: 'daemon', meaning: "a replace that changes a VMI's spec" },
  VMI_NOT_RUNNING: { http: 409, area: 'daemon', meaning: 'pause/unpause/reset/softreboot/qmp/console of a VMI that has no running QEMU on this node' },
  QMP_UNAVAILABLE: { http: 503, area: 'daemon', meaning: 'the VMI runs but its QEMU does not answer QMP' },
  PEER_NOT_ALLOWED: { http: 403, area: 'daemon', meaning: 'a connection from a process that is neither root nor in the socket group' },
  READ_ONLY_SOCKET: { http: 403, area: 'daemon', meaning: 'a change, console or QMP request on the read-only socket' },
  NODE_LIMIT_VMIS: { http: 403, area: 'daemon', meaning: 'a new VMI would exceed limits.maxVmis (VMIs not Succeeded/Failed on this node)' },
  NODE_LIMIT_MEMORY: { http: 403, area: 'daemon', meaning: "a new VMI would push the sum of the guests' memory over limits.maxGuestMemory" },
  NODE_LIMIT_VCPUS: { http: 403, area: 'daemon', meaning: "a new VMI would push the sum of the guests' vCPUs over limits.maxVcpus" },
  API_TOO_MANY_CONNECTIONS: { http: 429, area: 'daemon', meaning: 'a client uid already holds limits.maxConnectionsPerClient connections to the API' },
  QMP_COMMAND_NOT_ALLOWED: {
    http: 403,
    area: 'daemon',
    meaning: 'a `vmlet qmp` command that is neither a query nor on the safe list nor allowed by the config',
  },
  VMI_ALREADY_PAUSED: { http: 409, area: 'daemon', meaning: 'pause of a paused VMI' },
  VMI_NOT_PAUSED: { http: 409, area: 'daemon', meaning: 'unpause of a VMI that is not paused' },
  VMI_AGENT_UNAVAILABLE: { http: 409, area: 'daemon', meaning: 'softreboot without a connected guest agent' },
  VM_ALREADY_RUNNING: { http: 409, area: 'daemon', meaning: 'start of a VM whose VMI is not finished' },
  VM_NOT_RUNNING: { http: 409, area: 'daemon', meaning: 'stop/restart of a VM without a VMI' },
  CONSOLE_UNAVAILABLE: { http: 409, area: 'daemon', meaning: 'console of a VMI without a serial console or not connected' },
  CONSOLE_BUSY: { http: 409, area: 'daemon', meaning: 'a second writer on a console' },
  CONSOLE_TIMEOUT: { http: 504, area: 'daemon', meaning: 'expected console output did not appear in time' },
  TIMEOUT: { http: 504, area: 'daemon', meaning: 'an old VMI did not go away in time during start/restart' },
  HOSTDISK_MISSING: { http: 500, area: 'daemon', meaning: 'a hostDisk of type: Disk does not exist' },
  HOSTDISK_NOT_A_DISK: { http: 422, area: 'daemon', meaning: 'a hostDisk path is a directory, fifo or socket, not a disk image or block device' },
  CLOUDINIT_ISO_FAILED: { http: 500, area: 'daemon', meaning: 'genisoimage could not build the cidata image' },
  PREPARE_FAILED: { http: 500, area: 'daemon', meaning: 'anything else before QEMU could start' },
  VM_CGROUP_FAILED: { http: 500, area: 'daemon', meaning: "the VM's cgroup could not be created or its limits written" },
  VCPU_PINNING_FAILED: { http: 500, area: 'daemon', meaning: 'dedicatedCpuPlacement: the vCPU threads could not be placed' },
  VCPU_PINNING_UNAVAILABLE: { http: 500, area: 'daemon', meaning: 'dedicatedCpuPlacement on a daemon without VM cgroups' },
  SUPERVISOR_BAD_TRANSITION: { http: 500, area: 'daemon', meaning: "a bug: a transition the supervisor's state machine forbids" },
  CONFIG_INVALID: { http: 500, area: 'daemon', meaning: 'the config file is unreadable, not YAML, has an unknown key or a wrong type' },
  DAEMON_ALREADY_RUNNING: { http: 500, area: 'daemon', meaning: 'another vmlet daemon holds the lock of the state or run folder' },
  DAEMON_LOCK_FAILED: { http: 500, area: 'daemon', meaning: "the state or run folder's lock file could not be locked" },
  SCRATCH_SPACE_LOW: { http: 507, area: 'daemon', meaning: "a VMI's emptyDisk capacity exceeds the free space of the state folder's file system" },
  LAUNCHER_MISSING: { http: 500, area: 'daemon', meaning: 'vmlet-launch is not built' },
  QEMU_USER_MISSING: { http: 500, area: 'daemon', meaning: 'the config names a qemuUser that does not exist on the host (the daemon does not start)' },
  QEMU_NO_SECCOMP: {
    http: 422,
    area: 'daemon',
    meaning: 'the QEMU binary has no seccomp support, so its -sandbox cannot be applied; the VM is refused rather than started without it',
  },
  SHUTTING_DOWN: { http: 503, area: 'daemon', meaning: 'the daemon is stopping and takes no new work' },
  CONFLICT: { http: 409, area: 'daemon', meaning: 'the request conflicts with the current state of the object' },
  SD_NOTIFY_FAILED: { http: 500, area: 'daemon', meaning: 'the NOTIFY_SOCKET datagram could not be sent' },
  SYS_NO_FD: { http: 500, area: 'daemon', meaning: 'a socket without an OS fd was asked to pass fds' },
  SYS_SPAWN_FAILED: { http: 500, area: 'daemon', meaning: 'posix_spawn of a program (vmlet-launch, ip, nft) failed' },
  SYS_SENDMSG: { http: 500, area: 'daemon', meaning: 'sendmsg with SCM_RIGHTS failed or wrote short' },
  SYS_PEERCRED: { http: 500, area: 'daemon', meaning: 'getsockopt(SO_PEERCRED) failed' },
  // http: docs/errors-http.md
  NOT_FOUND: { http: 404, area: 'http', meaning: 'unknown path, or the VM or VMI named in the request does not exist' },
  BAD_REQUEST: { http: 400, area: 'http', meaning: 'a malformed request: bad body, bad HTTP, unsupported fieldSelector or upgrade' },
  INVALID_PATH: { http: 400, area: 'http', meaning: 'a name or namespace in the path is not a DNS label, or bad percent-encoding' },
  NAMESPACE_MISMATCH: { http: 400, area: 'http', meaning: "the body's metadata.namespace differs from the path's" },
  NAME_MISMATCH: { http: 400, area: 'http', meaning: "on PUT, the body's metadata.name differs from the path's" },
  METHOD_NOT_ALLOWED: { http: 405, area: 'http', meaning: 'the path exists but not for this method (details.allow lists the methods)' },
  REQUEST_TIMEOUT: { http: 408, area: 'http', meaning: 'the request headers (or the whole request) did not arrive in time' },
  BODY_TOO_LARGE: { http: 413, area: 'http', meaning: 'the request body exceeds the limit' },
  UNSUPPORTED_MEDIA_TYPE: { http: 415, area: 'http', meaning: 'a body Content-Type other than JSON or YAML' },
  UPGRADE_REQUIRED: { http: 426, area: 'http', meaning: 'the console was asked for without Connection: Upgrade / Upgrade: vmlet-console' },
  INTERNAL: { http: 500, area: 'http', meaning: 'an unexpected exception in a handler or in the daemon core' },
  SOCKET_IN_USE: { http: 500, area: 'http', meaning: 'at start: another daemon answers on the socket path' },
  SOCKET_PATH_INVALID: { http: 500, area: 'http', meaning: 'at start: the socket path exists and is not a socket, or whether it is in use cannot be told' },
  LISTEN_FAILED: { http: 500, area: 'http', meaning: 'at start: listening on the API socket failed' },
  USAGE: { http: 500, area: 'http', meaning: 'CLI: unknown verb, option or resource type, or wrong arguments' },
  DAEMON_UNREACHABLE: { http: 500, area: 'http', meaning: "CLI: cannot connect to the daemon's socket" },
  DAEMON_CONNECTION_LOST: { http: 500, area: 'http', meaning: 'CLI: the connection broke during a request or a watch' },
  MANIFEST_READ: { http: 500, area: 'http', meaning: 'CLI: apply -f FILE could not read the file' },
  WATCH_ERROR: { http: 500, area: 'http', meaning: 'CLI: an ERROR watch event without a reason' },
  DAEMON_ERROR: {
    http: 500,
    area: 'http',
    meaning: 'CLI: the daemon answered with an error code this CLI does not know (it is printed as the daemon gave it)',
  },
  // api: docs/errors-api.md
  QEMU_NOT_FOUND: { http: 500, area: 'api', meaning: 'the configured QEMU binary does not exist' },
  MANIFEST_PARSE: { http: 422, area: 'api', meaning: 'malformed YAML/JSON manifest, duplicate keys, or a document that is not a mapping' },
  UNSUPPORTED_KIND: { http: 422, area: 'api', meaning: 'kind is not the expected one' },
  INVALID_FIELD: { http: 422, area: 'api', meaning: 'wrong type, value not in the enum, bad pattern or otherwise invalid field' },
  UNSUPPORTED_API_VERSION: { http: 422, area: 'api', meaning: 'apiVersion is neither vmlet.io/v1alpha1 nor kubevirt.io/v1' },
  UNKNOWN_FIELD: { http: 422, area: 'api', meaning: 'a field vmlet does not support' },
  MISSING_FIELD: { http: 422, area: 'api', meaning: 'a required field is absent' },
  INVALID_NAME: { http: 422, area: 'api', meaning: 'metadata.name, metadata.namespace, a disk or a volume name is not a DNS-1123 label' },
  INVALID_QUANTITY: { http: 422, area: 'api', meaning: 'a quantity does not parse' },
  OUT_OF_RANGE: { http: 422, area: 'api', meaning: 'a number or quantity outside its bounds' },
  INVALID_RESOURCES: { http: 422, area: 'api', meaning: 'limits below requests, or guest memory above limits.memory' },
  MISSING_VOLUME: { http: 422, area: 'api', meaning: 'a disk names no volume' },
  UNUSED_VOLUME: { http: 422, area: 'api', meaning: 'a volume is not used by any disk' },
  DUPLICATE_NAME: { http: 422, area: 'api', meaning: 'two disks or two volumes share a name' },
  CONFLICTING_FIELDS: { http: 422, area: 'api', meaning: 'mutually exclusive fields both set' },
  INVALID_HOST_PATH: { http: 422, area: 'api', meaning: 'a node path (hostDisk, kernel, initrd) is not absolute and normalised, or holds NUL or a comma' },
  UNSAFE_VALUE: { http: 422, area: 'api', meaning: 'a value contains control characters' },
  VALIDATION_FAILED: { http: 422, area: 'api', meaning: 'a manifest was refused for several reasons at once (details lists them)' },
  SCHEMA_LOAD: { http: 500, area: 'api', meaning: 'the CRD files in deploy/crds/ cannot be read or compiled' },
  MISSING_UID: { http: 500, area: 'api', meaning: 'buildArgv got a VMI without metadata.uid' },
  UNSUPPORTED_MACHINE: { http: 422, area: 'api', meaning: "the machine type is not in the probed binary's list" },
  UNSUPPORTED_CPU_MODEL: { http: 422, area: 'api', meaning: "the named CPU model is not in the probed binary's list" },
  FIRMWARE_UNAVAILABLE: { http: 500, area: 'api', meaning: 'the VMI boots with EFI but no OVMF firmware was found' },
  QEMU_PROBE_FAILED: { http: 500, area: 'api', meaning: 'the binary did not answer -version / -machine help as QEMU does' },
  KVM_UNAVAILABLE: { http: 500, area: 'api', meaning: 'KVM was asked for (or auto without emulation allowed) and KVM is not usable' },
  KVM_PROBE_FAILED: { http: 500, area: 'api', meaning: 'the KVM probe itself could not run' },
  ACCEL_UNAVAILABLE: { http: 500, area: 'api', meaning: 'tcg was needed but the binary was built without it' },
  // store: docs/errors-store.md
  STORE_INVALID_KEY: { http: 400, area: 'store', meaning: 'a name, namespace or kind that the store cannot use as a key' },
  STORE_INVALID_OBJECT: { http: 422, area: 'store', meaning: 'the object is not serialisable JSON, too large, or has malformed metadata' },
  STORE_ALREADY_EXISTS: { http: 409, area: 'store', meaning: 'create of an object whose kind/namespace/name is taken' },
  STORE_NOT_FOUND: { http: 404, area: 'store', meaning: 'update, updateStatus or delete of an object that does not exist' },
  STORE_CONFLICT: { http: 409, area: 'store', meaning: 'update/delete with a resourceVersion or uid that is no longer current' },
  STORE_WRITE_FAILED: { http: 507, area: 'store', meaning: 'the file system refused the write or delete' },
  STORE_WATCH_OVERFLOW: {
    http: 410,
    area: 'store',
    meaning: 'a watcher fell more than its buffer behind, or asked to watch from a resourceVersion older than the kept history; the watch is closed',
  },
  STORE_WATCH_BUSY: { http: 500, area: 'store', meaning: 'next() on a watch while a previous next() is still pending' },
  STORE_CLOSED: { http: 503, area: 'store', meaning: 'a write or watch after close()' },
  STORE_OPEN_FAILED: { http: 500, area: 'store', meaning: 'the state directory or objects/ cannot be created or read' },
  STORE_INVALID_OPTION: {
    http: 500,
    area: 'store',
    meaning: 'a store or watch option is invalid: a size that is not a positive integer, or a malformed watch resourceVersion',
  },
  // qmp: docs/errors-qmp.md
  QMP_CONNECT_FAILED: { http: 502, area: 'qmp', meaning: 'could not connect to the QMP socket before connectTimeoutMs' },
  QMP_GREETING_TIMEOUT: { http: 504, area: 'qmp', meaning: 'connected, but no greeting within greetingTimeoutMs' },
  QMP_NEGOTIATION_FAILED: { http: 502, area: 'qmp', meaning: 'qmp_capabilities was refused or failed' },
  QMP_COMMAND_ERROR: { http: 502, area: 'qmp', meaning: 'QEMU answered the command with an error (errorClass, desc)' },
  QMP_TIMEOUT: { http: 504, area: 'qmp', meaning: "no reply within the command's timeout" },
  QMP_DISCONNECTED: { http: 502, area: 'qmp', meaning: 'the QMP socket closed (QEMU exited, EOF, socket error, timeout or close())' },
  QMP_PROTOCOL: { http: 502, area: 'qmp', meaning: 'QEMU sent something that is not QMP' },
  QMP_NOT_CONNECTED: { http: 502, area: 'qmp', meaning: 'execute() before connect() finished, or connect() called a second time' },
  QMP_ABORTED: { http: 502, area: 'qmp', meaning: 'the signal of connect() or execute() was aborted' },
  QMP_SEND_FDS: { http: 502, area: 'qmp', meaning: 'sendmsg with SCM_RIGHTS failed, or src/sys/scm.ts could not be loaded' },
  QMP_INVALID_ARGUMENT: { http: 502, area: 'qmp', meaning: 'getfd / add-fd without exactly one fd in opts.fds, or oob: true while oob was not negotiated' },
  QGA_CONNECT_FAILED: { http: 502, area: 'qmp', meaning: 'the chardev socket could not be connected within connectTimeoutMs' },
  QGA_TIMEOUT: { http: 504, area: 'qmp', meaning: 'no answer to guest-sync-delimited within syncTimeoutMs' },
  QGA_COMMAND_ERROR: { http: 502, area: 'qmp', meaning: 'the agent answered with an error' },
  QGA_DISCONNECTED: { http: 502, area: 'qmp', meaning: 'the socket closed while a command ran' },
  QGA_PROTOCOL: { http: 502, area: 'qmp', meaning: 'a malformed reply, or a line over maxLineBytes' },
  QGA_ABORTED: { http: 502, area: 'qmp', meaning: "the call's signal was aborted" },
  QGA_CLOSED: { http: 502, area: 'qmp', meaning: 'the client was closed with close()' },
  // launcher: docs/errors-launcher.md
  LAUNCH_BAD_ARGUMENT: { http: 500, area: 'launcher', meaning: 'a bad uid, pid or linger given to the launch functions' },
  LAUNCH_SPAWN_FAILED: { http: 500, area: 'launcher', meaning: 'the launcher log could not be opened, or vmlet-launch could not be started' },
  LAUNCH_BAD_EXIT_STATUS: { http: 500, area: 'launcher', meaning: 'text that is not exit=N / signal=N' },
  LAUNCH_RUNDIR_MISSING: { http: 500, area: 'launcher', meaning: 'readRunDir: the run directory does not exist' },
  LAUNCH_RUNDIR_UNREADABLE: { http: 500, area: 'launcher', meaning: 'readRunDir: a run-dir file exists but cannot be read' },
  LAUNCH_RUNDIR_CORRUPT: {
    http: 500,
    area: 'launcher',
    meaning: 'readRunDir: launcher.pid / qemu.pid does not hold a pid, or exit-status is not an exit status',
  },
  LAUNCH_PROC_UNREADABLE: { http: 500, area: 'launcher', meaning: 'isLiveProcessFor: /proc/PID exists but cannot be read' },
  LAUNCHER_LISTEN_FAILED: { http: 500, area: 'launcher', meaning: 'the launcher socket could not be bound, or listen() was called twice' },
  LAUNCHER_BAD_MESSAGE: { http: 500, area: 'launcher', meaning: 'parseLauncherLine: a line that is not a protocol message' },
  LAUNCHER_BAD_ARGV: { http: 500, area: 'launcher', meaning: 'the argv/fds returned by onHello cannot be sent to the launcher' },
  LAUNCHER_SEND_FAILED: { http: 500, area: 'launcher', meaning: 'sendmsg of the ARGV message with its fds failed' },
  LAUNCHER_TIMEOUT: { http: 500, area: 'launcher', meaning: 'LauncherLink.waitFor saw no such event in time' },
  LAUNCHER_SANDBOX: { http: 500, area: 'launcher', meaning: "the launcher reported ERROR netns or ERROR cgroup: it could not join the VM's sandbox" },
  LAUNCHER_EXEC: { http: 500, area: 'launcher', meaning: 'the launcher reported ERROR exec: execv of QEMU failed' },
  LAUNCHER_FORK: { http: 500, area: 'launcher', meaning: 'the launcher reported ERROR fork' },
  LAUNCHER_PROTOCOL: { http: 500, area: 'launcher', meaning: "the launcher reported ERROR protocol: it found the daemon's message malformed" },
  LAUNCHER_FAILED: { http: 500, area: 'launcher', meaning: 'the launcher reported an ERROR with a reason this daemon does not know' },
  // cgroups: docs/errors-cgroups.md
  CGROUP_NOT_MOUNTED: { http: 500, area: 'cgroups', meaning: 'no cgroup/cgroup2 mount at or below the root given to detectCgroupLayout' },
  CGROUP_MOUNTINFO_UNREADABLE: { http: 500, area: 'cgroups', meaning: 'the mount table (/proc/self/mountinfo or the path given) cannot be read' },
  CGROUP_MODE_MISMATCH: { http: 500, area: 'cgroups', meaning: "statfs: true and the root's file-system type disagrees with the mount table" },
  CGROUP_INVALID_RESOURCES: { http: 500, area: 'cgroups', meaning: 'a resource value has the wrong type or is out of range' },
  CGROUP_INVALID_QUANTITY: { http: 500, area: 'cgroups', meaning: 'resourcesFromSpec: a CPU or memory quantity does not parse or is out of range' },
  CGROUP_LIMIT_BELOW_REQUEST: { http: 500, area: 'cgroups', meaning: 'resourcesFromSpec: limits.cpu < requests.cpu or limits.memory < requests.memory' },
  CGROUP_CPUSET_TOO_SMALL: { http: 500, area: 'cgroups', meaning: 'planDedicatedCpus: more vCPUs than distinct host CPUs' },
  CGROUP_INVALID_PATH: { http: 500, area: 'cgroups', meaning: 'a group path is empty or has ., .. or NUL segments; a bad child name' },
  CGROUP_CONTROLLER_UNAVAILABLE: { http: 500, area: 'cgroups', meaning: 'a needed controller is not offered by the root or not enabled for the group' },
  CGROUP_ENABLE_FAILED: { http: 500, area: 'cgroups', meaning: "v2: writing +ctrl … into an ancestor's cgroup.subtree_control failed" },
  CGROUP_CREATE_FAILED: { http: 500, area: 'cgroups', meaning: 'mkdir of a group, setting it threaded or seeding a v1 cpuset failed' },
  CGROUP_WRITE_FAILED: { http: 500, area: 'cgroups', meaning: 'a resource or control file write was refused' },
  CGROUP_READ_FAILED: { http: 500, area: 'cgroups', meaning: 'a cgroup file that should exist cannot be read' },
  CGROUP_ADD_FAILED: { http: 500, area: 'cgroups', meaning: 'a pid/tid could not be moved into the group' },
  CGROUP_FREEZE_TIMEOUT: { http: 500, area: 'cgroups', meaning: 'the kernel did not report the group frozen or thawed within timeoutMs' },
  CGROUP_KILL_TIMEOUT: { http: 500, area: 'cgroups', meaning: 'after SIGKILL the group still had processes after timeoutMs' },
  CGROUP_KILL_FAILED: { http: 500, area: 'cgroups', meaning: 'sending SIGKILL failed with something other than ESRCH' },
  CGROUP_UNSUPPORTED: { http: 500, area: 'cgroups', meaning: 'kill() on a threaded / per-thread group' },
  CGROUP_DELETE_FAILED: { http: 500, area: 'cgroups', meaning: 'rmdir of a group kept failing' },
  // net: docs/errors-net.md
  NET_DISABLED: { http: 422, area: 'net', meaning: 'a VMI or VM template has interfaces or networks while the daemon runs with network.enabled: false' },
  NET_INTERFACE_WITHOUT_NETWORK: {
    http: 422,
    area: 'net',
    meaning: 'an entry of spec.domain.devices.interfaces has no network of the same name in spec.networks',
  },
  NET_NETWORK_WITHOUT_INTERFACE: { http: 422, area: 'net', meaning: 'a network in spec.networks is used by no interface' },
  NET_DUPLICATE_NAME: { http: 422, area: 'net', meaning: 'two interfaces, or two networks, share a name' },
  NET_DUPLICATE_MAC: { http: 422, area: 'net', meaning: 'two interfaces have the same macAddress' },
  NET_MAC_IN_USE: { http: 409, area: 'net', meaning: 'an interface macAddress that another VMI on this node (not Succeeded/Failed) already uses' },
  NET_INVALID_MAC: { http: 422, area: 'net', meaning: 'macAddress is not a unicast MAC of six hex octets' },
  NET_UNKNOWN_BINDING: { http: 422, area: 'net', meaning: 'an interface has no binding, several, or one vmlet does not implement' },
  NET_UNSUPPORTED_NETWORK: { http: 422, area: 'net', meaning: 'a multus network, a network without pod: {}, or more than one pod network' },
  NET_UNSUPPORTED_MODEL: { http: 422, area: 'net', meaning: 'model is not virtio, e1000, e1000e or rtl8139' },
  NET_INVALID_PORT: {
    http: 422,
    area: 'net',
    meaning: 'ports on a bridge interface, a port outside 1–65535, a protocol other than TCP/UDP, or a port listed twice',
  },
  NET_INVALID_QUEUES: { http: 422, area: 'net', meaning: 'a queue count outside 1–64, or multiqueue on a non-virtio NIC' },
  NET_INVALID_SUBNET: { http: 422, area: 'net', meaning: 'the configured subnet or a vmNetworkCIDR is not a.b.c.d/len, has host bits set, or is too small' },
  NET_INVALID_ADDRESS: { http: 500, area: 'net', meaning: 'a value that must be an IPv4 address is not one' },
  NET_INVALID_NAME: { http: 422, area: 'net', meaning: 'a name that would reach ip, nft or QEMU has characters outside its strict set or is too long' },
  NET_INVALID_UID: { http: 500, area: 'net', meaning: 'the uid is empty, longer than 253 characters or holds control characters' },
  NET_INVALID_FD: {
    http: 500,
    area: 'net',
    meaning: 'tap/vhost fd numbers given to qemuNicArgs are not integers ≥ 3, or their count does not match the queues',
  },
  NET_INVALID_PLAN: { http: 500, area: 'net', meaning: 'an internal inconsistency of a network plan' },
  NET_SUBNET_CLASH: { http: 422, area: 'net', meaning: 'the node subnet overlaps a host route, or a vmNetworkCIDR overlaps the node subnet' },
  NET_BRIDGE_CONFLICT: { http: 500, area: 'net', meaning: "the bridge name exists but is not a bridge, or carries an address other than the subnet's gateway" },
  NET_NAME_COLLISION: { http: 500, area: 'net', meaning: 'two uids share the first 8 hex digits, so their sandbox names collide' },
  NET_COMMAND_FAILED: {
    http: 500,
    area: 'net',
    meaning: 'ip, nft or nsenter exited non-zero (exitCode and stderr are fields), or an ip command sent over rtnetlink failed (errno)',
  },
  NET_CLEANUP_FAILED: { http: 500, area: 'net', meaning: 'deleting a sandbox\'s veth or netns failed for another reason than "already gone"' },
  NET_SANDBOX_NOT_FOUND: { http: 500, area: 'net', meaning: 'openTapFds for a uid without a sandbox, or an interface it does not have' },
  NET_SANDBOX_UNFINISHED: {
    http: 500,
    area: 'net',
    meaning: 'after a restart: the daemon stopped while the sandbox of a VM whose guest never ran was being made',
  },
  NET_NOT_STARTED: { http: 500, area: 'net', meaning: 'a NetManager method before start()' },
  IPAM_EXHAUSTED: { http: 500, area: 'net', meaning: 'every address of the subnet is leased' },
  IPAM_NO_LEASE: { http: 500, area: 'net', meaning: 'update of a uid without a lease' },
  IPAM_STATE_CORRUPT: {
    http: 500,
    area: 'net',
    meaning: 'net-leases.json is unreadable, not JSON, of an unknown version, malformed, or gives one address to two uids',
  },
  IPAM_SUBNET_CHANGED: { http: 500, area: 'net', meaning: 'the lease file holds leases in another subnet than the configured one' },
  IPAM_WRITE_FAILED: { http: 500, area: 'net', meaning: 'writing the lease file failed' },
  DHCP_MALFORMED: { http: 500, area: 'net', meaning: 'a received packet is not DHCP' },
  DHCP_BAD_OPTION: { http: 500, area: 'net', meaning: 'a DHCP option cannot be encoded' },
  DHCP_SOCKET_FAILED: { http: 500, area: 'net', meaning: 'the UDP socket on port 67 could not be made in the sandbox' },
  DHCP_NOT_SERVING: { http: 500, area: 'net', meaning: 'DhcpServer.update of a key it does not serve' },
  SYS_SETNS: { http: 500, area: 'net', meaning: 'opening a netns file or setns(CLONE_NEWNET) failed' },
  SYS_SETNS_RESTORE: { http: 500, area: 'net', meaning: 'the main thread could not return to its own netns: the process is in an unsafe state' },
  SYS_SOCKET: { http: 500, area: 'net', meaning: 'socket, setsockopt or bind failed inside a netns' },
  SYS_TUN: { http: 500, area: 'net', meaning: 'open(/dev/net/tun) or TUNSETIFF failed' },
  // cluster: docs/errors-cluster.md
  // cluster (Kubernetes source)
  KUBE_API_UNAVAILABLE: { http: 503, area: 'cluster', meaning: 'the Kubernetes API server cannot be reached, or answered 429/5xx, also after retries' },
  KUBE_API_FORBIDDEN: { http: 403, area: 'cluster', meaning: "the Kubernetes API server refused vmlet's credentials (401) or its RBAC rules (403)" },
  KUBE_API_UNEXPECTED: { http: 502, area: 'cluster', meaning: 'the Kubernetes API server answered with a status or body the Kubernetes source cannot use' },
  // cluster (controller: node assignment, launcher pods)
  HOST_PATH_NOT_ALLOWED: {
    http: 422,
    area: 'cluster',
    meaning: 'a hostDisk or kernelBoot path is not below a folder of hostPaths.allow (the daemon config standalone, the cluster config in a cluster)',
  },
  LAUNCHER_POD_BAD_INPUT: {
    http: 500,
    area: 'cluster',
    meaning: 'the launcher pod cannot be rendered: the VMI has no uid, or the name suffix is not 5 lowercase letters or digits',
  },
  // cluster (admission webhook, serving cert)
  WEBHOOK_BAD_REVIEW: { http: 400, area: 'cluster', meaning: 'the admission webhook got a body that is not an admission.k8s.io/v1 AdmissionReview request' },
  WEBHOOK_INTERNAL: { http: 500, area: 'cluster', meaning: 'a bug: the admission webhook failed while judging a request' },
  WEBHOOK_CERT_UNAVAILABLE: { http: 503, area: 'cluster', meaning: "the webhook's serving certificate is not loaded yet, or its Secret is missing" },
  WEBHOOK_CERT_INVALID: { http: 500, area: 'cluster', meaning: "the webhook cert Secret's tls.crt, tls.key and ca.crt do not parse or do not belong together" },
  WEBHOOK_CERT_CONFLICT: {
    http: 409,
    area: 'cluster',
    meaning: 'the webhook cert Secret or caBundle kept changing under the controller (too many write conflicts)',
  },
  WEBHOOK_CONFIG_NOT_FOUND: { http: 500, area: 'cluster', meaning: 'the ValidatingWebhookConfiguration whose caBundle the controller keeps does not exist' },
  WEBHOOK_API_FAILED: { http: 500, area: 'cluster', meaning: 'a Kubernetes API call for the webhook cert Secret or caBundle failed' },
  WEBHOOK_SERVER_FAILED: { http: 500, area: 'cluster', meaning: 'the webhook HTTPS server could not listen (port taken, bad address) or has no certificate' },
  // cluster (node registration, device plugin)
  NODE_UNREGISTER_FAILED: { http: 500, area: 'cluster', meaning: 'stop({unregister}) could not set vmlet.io/schedulable=false or delete the node Lease' },
  NODE_LEASE_EXPIRED: {
    http: 500,
    area: 'cluster',
    meaning: 'the node Lease has not been renewed for longer than its duration (the API server is unreachable or refuses)',
  },
  DEVICE_PLUGIN_PROTO_MISSING: { http: 500, area: 'cluster', meaning: 'deviceplugin-v1beta1.proto was not found or does not parse' },
  DEVICE_PLUGIN_SERVE_FAILED: { http: 500, area: 'cluster', meaning: "the device plugin could not bind its socket in the kubelet's device plugin folder" },
  DEVICE_PLUGIN_REGISTER_FAILED: { http: 500, area: 'cluster', meaning: 'the kubelet refused or did not answer the device plugin registration' },
  // cluster (launcher in a pod)
  POD_UID_INVALID: { http: 500, area: 'cluster', meaning: 'PodLauncherSockets: a pod uid or VMI uid that is not safe as a file name' },
  POD_RUN_DIR_TIMEOUT: { http: 500, area: 'cluster', meaning: "the launcher pod's vmlet-run emptyDir did not appear below the kubelet root in time" },
  POD_RUN_DIR_FAILED: { http: 500, area: 'cluster', meaning: "linking, unlinking or chowning in a launcher pod's run folder failed" },
  // cluster (pod network)
  POD_NETNS_NOT_FOUND: { http: 500, area: 'cluster', meaning: "the launcher pod's netns (/proc/<launcher pid>/ns/net) does not exist: the launcher is gone" },
  POD_NET_NO_ADDRESS: {
    http: 500,
    area: 'cluster',
    meaning: "the launcher pod's netns has no eth0, or eth0 has no IPv4 address: CNI did not give the pod an IPv4 network",
  },
  POD_NET_CONFLICT: {
    http: 500,
    area: 'cluster',
    meaning: "the launcher pod's netns already has a link named like vmlet's bridge or tap (k6t-eth0, tap0) that vmlet did not make",
  },
  POD_NET_NOT_ATTACHED: {
    http: 500,
    area: 'cluster',
    meaning: "adopt found no binding of vmlet's in the launcher pod's netns (no k6t-eth0 with vmlet's record, or no tap0)",
  },
  // cluster (deploy, image)
  API_GROUP_NOT_VMLET: {
    http: 500,
    area: 'cluster',
    meaning:
      "controller for kubevirt.io: the group's CRDs are missing or not labelled app.kubernetes.io/part-of=vmlet (a real KubeVirt's); it refuses to start",
  },
  KUBECONFIG_INVALID: {
    http: 500,
    area: 'cluster',
    meaning: 'CLI: the kubeconfig (--kubeconfig or $KUBECONFIG) is missing, does not parse, or its current context has no cluster server or usable credentials',
  },
  NODE_LOCAL_VERB: {
    http: 500,
    area: 'cluster',
    meaning: "CLI: pause/unpause/softreboot/reset/console/qmp against a cluster: they need the daemon of the VMI's node",
  },
  API_SERVER_VERB: {
    http: 409,
    area: 'cluster',
    meaning: "start/stop/restart through a node daemon's socket in cluster mode: a VM is the API server's object",
  },
  // install: docs/errors-install.md
  INSTALL_NOT_ROOT: { http: 500, area: 'install', meaning: 'vmlet install/uninstall run by a user other than root' },
  INSTALL_NODE_UNSUITABLE: { http: 500, area: 'install', meaning: 'the Node.js running vmlet install is older than 20, or its path cannot go into a unit' },
  INSTALL_MISSING_PACKAGES: { http: 500, area: 'install', meaning: 'programs the daemon runs are missing; the message names the Debian packages' },
  INSTALL_NO_SYSTEMD: { http: 500, area: 'install', meaning: 'systemd is not PID 1 on this host' },
  INSTALL_TREE_INCOMPLETE: { http: 500, area: 'install', meaning: 'the tree to install from was not built (dist/, native/build/, package-lock.json)' },
  INSTALL_COPY_FAILED: { http: 500, area: 'install', meaning: 'copying the tree under /opt/vmlet failed; nothing was switched' },
  INSTALL_MANIFEST_CORRUPT: { http: 500, area: 'install', meaning: '/opt/vmlet/install.json is not an install record of vmlet' },
  INSTALL_COMMAND_FAILED: { http: 500, area: 'install', meaning: 'systemctl, useradd or userdel failed during install or uninstall' },
  INSTALL_NOT_FOUND: { http: 500, area: 'install', meaning: 'uninstall on a host without an install record' },
  INSTALL_VMS_RUNNING: { http: 500, area: 'install', meaning: 'uninstall while VMs run (without --stop-vms), or VMs that did not stop in time' },
  INSTALL_DAEMON_DOWN: { http: 500, area: 'install', meaning: 'uninstall --stop-vms with VMs running but no daemon to stop them' },
  // disk: docs/errors-disk.md
  IMAGE_FORMAT_UNSUPPORTED: {
    http: 422,
    area: 'disk',
    meaning: 'an image file in a format vmlet does not open (only raw and qcow2), or a qcow2 feature it does not allow',
  },
  IMAGE_BACKING_FILE_REFUSED: { http: 422, area: 'disk', meaning: 'a qcow2 image names a backing file, and vmlet did not make it' },
  IMAGE_DATA_FILE_REFUSED: { http: 422, area: 'disk', meaning: 'a qcow2 image keeps its data in an external data file' },
  IMAGE_CORRUPT: { http: 422, area: 'disk', meaning: "an image's header is truncated or inconsistent" },
  IMAGE_ARCHIVE_INVALID: {
    http: 422,
    area: 'disk',
    meaning: 'an image archive is not a readable OCI or docker archive (truncated, no manifest, a missing blob)',
  },
  IMAGE_DIGEST_MISMATCH: { http: 422, area: 'disk', meaning: 'a blob of an image archive does not match its digest' },
  IMAGE_NO_DISK: { http: 422, area: 'disk', meaning: 'a containerDisk image has no disk file in /disk/, or more than one, or a symlink there' },
  IMAGE_LAYER_UNSUPPORTED: { http: 422, area: 'disk', meaning: 'an image layer is compressed in a way vmlet cannot read (only tar and gzip)' },
  IMAGE_NAME_INVALID: { http: 422, area: 'disk', meaning: 'an image name or reference that is not a valid image reference' },
  IMAGE_NOT_FOUND: { http: 404, area: 'disk', meaning: 'no image of that name or digest in the node image store' },
  IMAGE_IN_USE: { http: 409, area: 'disk', meaning: 'removal of an image that a VMI uses' },
  IMAGE_STORE_FAILED: { http: 500, area: 'disk', meaning: 'the node image store could not read or write its files' },
  VOLUME_NEEDS_CLUSTER: { http: 422, area: 'disk', meaning: 'a persistentVolumeClaim or ephemeral volume given to a standalone daemon' },
  OVERLAY_FAILED: { http: 500, area: 'disk', meaning: "a VMI's copy-on-write overlay could not be made" },
} as const satisfies Record<string, ErrorCodeInfo>;

export type ErrorCode = keyof typeof ERROR_CODES;

const REGISTRY: Readonly<Record<string, ErrorCodeInfo | undefined>> = ERROR_CODES;

/** Whether `code` is a registered code (for codes that arrive as data: from the wire, from a table). */
export function isErrorCode(code: string): code is ErrorCode {
  return Object.hasOwn(REGISTRY, code);
}

/** The registry entry of a code, or undefined for a string that is not one. */
export function errorCodeInfo(code: string): ErrorCodeInfo | undefined {
  return isErrorCode(code) ? REGISTRY[code] : undefined;
}

/**
 * The HTTP status of an error code: the registry's. A code outside it is the server's problem (500),
 * except that an unregistered `QMP_*`/`QGA_*` code (QEMU's side failed) is 502, or 504 when it ends
 * in `_TIMEOUT`, as every registered one is; this rule goes once VmletError only takes an ErrorCode.
 */
export function httpStatusOf(code: string): number {
  const info = errorCodeInfo(code);
  if (info !== undefined) return info.http;
  if (code.startsWith('QMP_') || code.startsWith('QGA_')) return code.endsWith('_TIMEOUT') ? 504 : 502;
  return 500;
}

/** Every registered code, in table order. */
export function errorCodes(): ErrorCode[] {
  return Object.keys(ERROR_CODES).filter(isErrorCode);
}
