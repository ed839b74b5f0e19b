/**
 * Small dense linear algebra in Float64 (for PaDiM's per-position covariances) and separable Gaussian
 * smoothing of anomaly maps. (Bilinear resampling lives in src/image/io.ts: resizeImage.)
 *
 * Matrices are square, row-major Float64Arrays of length n*n.
 */
import { createImage, type Image } from '../image/types.js';
import { resizeImage } from '../image/io.js';

/**
 * Cholesky decomposition A = L L^T of a symmetric positive-definite n x n matrix.
 * Only the lower triangle of `a` is read. Returns L (row-major, upper triangle zero).
 * Throws if A is not (numerically) positive definite.
 */
export function cholesky(a: Float64Array, n: number): Float64Array {
  checkSquare(a, n, 'cholesky');
  const l = new Float64Array(n * n);
  for (let j = 0; j < n; j++) {
    const rowJ = j * n;
    let diag = a[rowJ + j];
    for (let k = 0; k < j; k++) diag -= l[rowJ + k] * l[rowJ + k];
    if (!(diag > 0) || !Number.isFinite(diag)) {
      throw new Error(
        `cholesky: matrix is not positive definite (pivot ${j} = ${diag}); add a ridge (eps * I) or check the data`,
      );
    }
    const ljj = Math.sqrt(diag);
    l[rowJ + j] = ljj;
    for (let i = j + 1; i < n; i++) {
      const rowI = i * n;
      let s = a[rowI + j];
      for (let k = 0; k < j; k++) s -= l[rowI + k] * l[rowJ + k];
      l[rowI + j] = s / ljj;
    }
  }
  return l;
}

/**
 * Solves A X = B given the Cholesky factor L of A. `b` holds `nrhs` right-hand sides as an n x nrhs
 * row-major matrix (nrhs = 1: a plain vector). Returns X with the same layout.
 */
export function choleskySolve(l: Float64Array, n: number, b: Float64Array, nrhs = 1): Float64Array {
  checkSquare(l, n, 'choleskySolve');
  if (!(Number.isInteger(nrhs) && nrhs >= 1) || b.length !== n * nrhs) {
    throw new Error(`choleskySolve: right-hand side has length ${b.length}, expected ${n} x ${nrhs}`);
  }
  const x = Float64Array.from(b);
  // Forward substitution: L Y = B.
  for (let i = 0; i < n; i++) {
    const rowI = i * n;
    for (let c = 0; c < nrhs; c++) {
      let s = x[i * nrhs + c];
      for (let k = 0; k < i; k++) s -= l[rowI + k] * x[k * nrhs + c];
      x[i * nrhs + c] = s / l[rowI + i];
    }
  }
  // Back substitution: L^T X = Y.
  for (let i = n - 1; i >= 0; i--) {
    for (let c = 0; c < nrhs; c++) {
      let s = x[i * nrhs + c];
      for (let k = i + 1; k < n; k++) s -= l[k * n + i] * x[k * nrhs + c];
      x[i * nrhs + c] = s / l[i * n + i];
    }
  }
  return x;
}

/** Inverse of A from its Cholesky factor L: A^-1 = L^-T L^-1 (exactly symmetric on output). */
export function choleskyInverse(l: Float64Array, n: number): Float64Array {
  checkSquare(l, n, 'choleskyInverse');
  // M = L^-1 (lower triangular), column by column.
  const m = new Float64Array(n * n);
  for (let j = 0; j < n; j++) {
    m[j * n + j] = 1 / l[j * n + j];
    for (let i = j + 1; i < n; i++) {
      let s = 0;
      for (let k = j; k < i; k++) s -= l[i * n + k] * m[k * n + j];
      m[i * n + j] = s / l[i * n + i];
    }
  }
  // A^-1 = M^T M; entry (i, j) = sum_{k >= max(i,j)} M[k,i] M[k,j].
  const inv = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j <= i; j++) {
      let s = 0;
      for (let k = i; k < n; k++) s += m[k * n + i] * m[k * n + j];
      inv[i * n + j] = s;
      inv[j * n + i] = s;
    }
  }
  return inv;
}

/** log det A = 2 * sum log L_ii, from the Cholesky factor. */
export function choleskyLogDet(l: Float64Array, n: number): number {
  checkSquare(l, n, 'choleskyLogDet');
  let s = 0;
  for (let i = 0; i < n; i++) s += Math.log(l[i * n + i]);
  return 2 * s;
}

/** Inverse of a symmetric positive-definite matrix (via Cholesky). */
export function invertSpd(a: Float64Array, n: number): Float64Array {
  return choleskyInverse(cholesky(a, n), n);
}

/** Product of two n x n row-major matrices (used in tests and diagnostics). */
export function matMul(a: Float64Array, b: Float64Array, n: number): Float64Array {
  checkSquare(a, n, 'matMul');
  checkSquare(b, n, 'matMul');
  const c = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    for (let k = 0; k < n; k++) {
      const aik = a[i * n + k];
      if (aik === 0) continue;
      for (let j = 0; j < n; j++) c[i * n + j] += aik * b[k * n + j];
    }
  }
  return c;
}

function checkSquare(a: Float64Array, n: number, fn: string): void {
  if (!(Number.isInteger(n) && n >= 1) || a.length !== n * n) {
    throw new Error(`${fn}: expected a ${n} x ${n} matrix (length ${n * n}), got length ${a.length}`);
  }
}

/**
 * Normalised 1-D Gaussian kernel of radius floor(truncate * sigma + 0.5) (2 * radius + 1 taps), the radius of
 * scipy.ndimage.gaussian_filter, so blurred maps and evaluation scores match the Python tools.
 */
export function gaussianKernel1d(sigma: number, truncate = 4): Float64Array {
  if (!(sigma > 0) || !Number.isFinite(sigma)) throw new Error(`gaussianKernel1d: sigma must be > 0, got ${sigma}`);
  if (!(truncate > 0)) throw new Error(`gaussianKernel1d: truncate must be > 0, got ${truncate}`);
  const radius = Math.max(1, Math.floor(truncate * sigma + 0.5));
  const k = new Float64Array(2 * radius + 1);
  let sum = 0;
  for (let i = -radius; i <= radius; i++) {
    const v = Math.exp((-0.5 * i * i) / (sigma * sigma));
    k[i + radius] = v;
    sum += v;
  }
  for (let i = 0; i < k.length; i++) k[i] /= sum;
  return k;
}

/**
 * Index into [0, n) for an out-of-range position under scipy.ndimage's default 'reflect' mode
 * (half-sample symmetric: d c b a | a b c d | d c b a), valid for any offset (period 2n).
 */
export function reflectIndex(i: number, n: number): number {
  if (n === 1) return 0;
  const period = 2 * n;
  let m = i % period;
  if (m < 0) m += period;
  return m < n ? m : period - 1 - m;
}

/**
 * Separable Gaussian blur of every channel of an image (normally a 1-channel anomaly map), with
 * scipy-style 'reflect' borders. Computed in Float64, returned as a new Image.
 */
export function gaussianBlur(img: Image, sigma: number, truncate = 4): Image {
  const kernel = gaussianKernel1d(sigma, truncate);
  const radius = (kernel.length - 1) / 2;
  const { channels: c, height: h, width: w } = img;
  const out = createImage(c, h, w);
  const tmp = new Float64Array(h * w);
  // Precomputed reflected indices for each output coordinate and tap.
  const xIdx = reflectTable(w, radius);
  const yIdx = reflectTable(h, radius);
  const taps = kernel.length;
  for (let ch = 0; ch < c; ch++) {
    const base = ch * h * w;
    // Horizontal pass.
    for (let y = 0; y < h; y++) {
      const row = base + y * w;
      for (let x = 0; x < w; x++) {
        const t = x * taps;
        let s = 0;
        for (let k = 0; k < taps; k++) s += kernel[k] * img.data[row + xIdx[t + k]];
        tmp[y * w + x] = s;
      }
    }
    // Vertical pass.
    for (let y = 0; y < h; y++) {
      const t = y * taps;
      for (let x = 0; x < w; x++) {
        let s = 0;
        for (let k = 0; k < taps; k++) s += kernel[k] * tmp[yIdx[t + k] * w + x];
        out.data[base + y * w + x] = s;
      }
    }
  }
  return out;
}

function reflectTable(n: number, radius: number): Int32Array {
  const taps = 2 * radius + 1;
  const table = new Int32Array(n * taps);
  for (let i = 0; i < n; i++) {
    for (let k = 0; k < taps; k++) table[i * taps + k] = reflectIndex(i + k - radius, n);
  }
  return table;
}

/**
 * PaDiM / anomalib post-processing (PaDiM, PatchCore) of a patch-level distance map: bilinear upsampling to the image size
 * (resizeImage: F.interpolate(mode='bilinear', align_corners=False) semantics) followed by a Gaussian blur
 * (default sigma 4, scipy 'reflect' borders; sigma 0 skips the blur).
 */
export function postprocessDistanceMap(map: Image, outHeight: number, outWidth: number, sigma = 4): Image {
  if (map.channels !== 1) throw new Error(`postprocessDistanceMap: expected a 1-channel map, got ${map.channels}`);
  const up =
    map.height === outHeight && map.width === outWidth ? map : resizeImage(map, outHeight, outWidth, 'bilinear');
  return sigma > 0 ? gaussianBlur(up, sigma) : { ...up, data: up.data.slice() };
}
