// Which build of the engine this browser runs. scripts/build-wasm.sh writes two from the same
// code and one JavaScript glue (pkg/quant_playground.js):
// - pkg/quant_playground_relaxed_bg.wasm, SIMD128 + relaxed SIMD, where the browser validates
//   relaxed SIMD: the int8 GEMM then uses the relaxed dot product if this machine computes it
//   exactly (the engine probes that itself, crate/src/kernels/int8/relaxed.rs);
// - pkg/quant_playground_bg.wasm, SIMD128 only, everywhere else.

// A module with one function using `i32x4.relaxed_dot_i8x16_i7x16_add_s` (opcode 0xfd 0x113):
// (func (param i32 i32) (result i32) (i32x4.extract_lane 0 (i32x4.relaxed_dot_i8x16_i7x16_add_s
//   (i8x16.splat (local.get 0)) (i8x16.splat (local.get 1)) (v128.const i32x4 0 0 0 0))))
const RELAXED_SIMD_MODULE = new Uint8Array([
  0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, 0x01, 0x07, 0x01, 0x60, 0x02, 0x7f, 0x7f, 0x01,
  0x7f, 0x03, 0x02, 0x01, 0x00, 0x07, 0x07, 0x01, 0x03, 0x64, 0x6f, 0x74, 0x00, 0x00, 0x0a, 0x24,
  0x01, 0x22, 0x00, 0x20, 0x00, 0xfd, 0x0f, 0x20, 0x01, 0xfd, 0x0f, 0xfd, 0x0c, 0x00, 0x00, 0x00,
  0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xfd, 0x93, 0x02,
  0xfd, 0x1b, 0x00, 0x0b,
]);

/** Whether this browser compiles relaxed SIMD. */
export function hasRelaxedSimd() {
  try {
    return WebAssembly.validate(RELAXED_SIMD_MODULE);
  } catch {
    return false;
  }
}

/** The builds, by name: their wasm files next to the glue. */
export const BUILDS = { relaxed: 'quant_playground_relaxed_bg.wasm', simd128: 'quant_playground_bg.wasm' };

/** The build this browser runs: 'relaxed' where it compiles relaxed SIMD, else 'simd128'. */
export function preferredBuild() {
  return hasRelaxedSimd() ? 'relaxed' : 'simd128';
}

/**
 * Fetches, compiles and instantiates the engine through its glue module (imported from
 * `glueUrl`), with the wasm file of `build` (benchmarks compare the two).
 * @param {{default: (init: {module_or_path: URL}) => Promise<unknown>}} glue
 * @param {string | URL} glueUrl
 * @param {keyof BUILDS} [build]
 */
export async function initEngine(glue, glueUrl, build = preferredBuild()) {
  if (!(build in BUILDS)) throw new Error(`unknown engine build '${build}' (expected ${Object.keys(BUILDS).join(' or ')})`);
  await glue.default({ module_or_path: new URL(BUILDS[build], glueUrl) });
  return build;
}
