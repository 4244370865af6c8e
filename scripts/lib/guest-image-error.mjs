// The error class of the test-guest builder (scripts/build-guest-image.mjs) and its helper modules: a stable code plus a short message.

export class GuestImageError extends Error {
  /**
   * @param {string} code stable error code
   * @param {string} message short message, without the code
   * @param {unknown} [cause]
   */
  constructor(code, message, cause) {
    super(`${code}: ${message}`, cause === undefined ? undefined : { cause });
    this.name = 'GuestImageError';
    this.code = code;
  }
}
