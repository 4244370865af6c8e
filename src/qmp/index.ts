// Public entry of the QMP and guest-agent client library (imports nothing from the rest of vmlet but the SCM_RIGHTS helper).
export { QmpClient } from './client.js';
export type { QmpClientOptions, ConnectCallOptions, ExecuteOptions, ExecuteParams, ExecuteResult, QmpEventListener, QmpState } from './client.js';
export { QmpError, isQmpError } from './errors.js';
export type { QmpErrorCode, QmpErrorOptions } from './errors.js';
export { BoundedQueue } from './event-queue.js';
export { LineSplitter } from './framing.js';
export type { QmpLogger } from './logger.js';
export { defaultTimeoutFor, QUERY_TIMEOUT_MS, CONTROL_TIMEOUT_MS, DEVICE_TIMEOUT_MS, DEFAULT_TIMEOUT_MS } from './timeouts.js';
export * from './types.js';
export { GuestAgentClient, gaDefaultTimeoutFor, GA_DEFAULT_TIMEOUT_MS, GA_FSFREEZE_TIMEOUT_MS, GA_SYNC_TIMEOUT_MS } from './guest-agent.js';
export type { GuestAgentClientOptions, GuestAgentExecuteOptions, GaExecuteParams, GaExecuteResult, GuestAgentState } from './guest-agent.js';
export * from './guest-agent-types.js';
