// The error class of the vmlet image builder (scripts/build-image.mjs) and its helper modules: a stable code plus a short message.

export class ImageBuildError extends Error {
  /**
   * @param {string} code stable error code (IMAGE_*)
   * @param {string} message short message, without the code
   * @param {unknown} [cause]
   */
  constructor(code, message, cause) {
    super(`${code}: ${message}`, cause === undefined ? undefined : { cause });
    this.name = 'ImageBuildError';
    this.code = code;
  }
}
