// Sizes QEMU's TCG translation-block cache from the guest, so software emulation has a bounded and known memory cost (the formula lives in src/api/overhead.ts, shared with the controller).

export { TCG_TB_CACHE, tcgTbSizeMiB } from '../api/overhead.js';
