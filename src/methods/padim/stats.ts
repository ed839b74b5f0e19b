/**
 * PaDiM statistics (Defard et al., "PaDiM: a Patch Distribution Modeling Framework for Anomaly Detection
 * and Localization", ICPR 2021), independent of the neural-network engine.
 *
 * Each training image gives an embedding of layout [D, H, W] (D feature dims at each of the H*W patch
 * positions, channel-major like Image). At every position PaDiM fits a multivariate Gaussian N(mu, Sigma)
 * to the embeddings of the defect-free training images; a test patch is scored by its Mahalanobis distance
 * sqrt((x - mu)^T Sigma^-1 (x - mu)). The distance map is then upsampled to the image size and smoothed with
 * a Gaussian of sigma 4 (see postprocessDistanceMap).
 *
 * Covariance: the unbiased sample covariance (divisor N - 1, like numpy.cov used by PaDiM) plus a ridge
 * eps * I; PaDiM uses eps = 0.01, which keeps Sigma invertible when N < D or features are correlated.
 * Accumulation is streaming (Welford's update, Float64), so training images never have to be held in memory.
 */
import { createImage, type Image } from '../../image/types.js';
import type { Rng } from '../../util/rng.js';
import { cholesky, choleskyInverse } from '../../models/gaussian.js';

/** Default ridge added to each covariance (PaDiM: 0.01 * I). */
export const PADIM_DEFAULT_EPS = 0.01;
/** Default memory budget for the statistics: 2 GiB. */
export const PADIM_DEFAULT_MEMORY_BUDGET = 2 * 1024 ** 3;

/** A plain tensor for checkpointing (the lead stores these in a safetensors file). */
export interface PlainTensor {
  shape: number[];
  data: Float32Array;
}

/**
 * Bytes needed to accumulate and finalise PaDiM statistics for d dims at height x width positions:
 * the Float64 running mean (d*P) and packed upper-triangle co-moment matrix (d(d+1)/2 * P), plus the
 * finalised Float32 inverse covariances (d*d*P) and means (d*P), with P = height * width.
 */
export function padimMemoryBytes(dims: number, height: number, width: number): number {
  const p = height * width;
  const accumulate = 8 * (dims + (dims * (dims + 1)) / 2) * p;
  const finalised = 4 * (dims * dims + dims) * p;
  return accumulate + finalised;
}

function formatBytes(bytes: number): string {
  return `${(bytes / 1024 ** 3).toFixed(2)} GiB`;
}

/**
 * PaDiM's random dimensionality reduction: picks `dims` distinct feature indices out of `inputDims`
 * uniformly at random (seeded through rng), returned in increasing order.
 */
export function selectRandomChannels(inputDims: number, dims: number, rng: Rng): Int32Array {
  if (!Number.isInteger(inputDims) || inputDims < 1)
    throw new Error(`selectRandomChannels: bad inputDims ${inputDims}`);
  if (!Number.isInteger(dims) || dims < 1 || dims > inputDims) {
    throw new Error(`selectRandomChannels: dims must be an integer in [1, ${inputDims}], got ${dims}`);
  }
  const all = Array.from({ length: inputDims }, (_, i) => i);
  rng.shuffle(all);
  return Int32Array.from(all.slice(0, dims)).sort();
}

/** Copies the selected channels of a [inputDims, H, W] embedding into a new [indices.length, H, W] array. */
export function selectChannels(embedding: Float32Array, positions: number, indices: Int32Array): Float32Array {
  const out = new Float32Array(indices.length * positions);
  for (let i = 0; i < indices.length; i++) {
    const src = indices[i] * positions;
    if (src + positions > embedding.length) {
      throw new Error(`selectChannels: channel ${indices[i]} is outside an embedding of ${embedding.length} values`);
    }
    out.set(embedding.subarray(src, src + positions), i * positions);
  }
  return out;
}

export interface PadimAccumulatorOptions {
  /** Feature dims of the embeddings passed to add() (the backbone's D). */
  inputDims: number;
  height: number;
  width: number;
  /** Optional subset of the input dims to model (see selectRandomChannels); default: all of them. */
  channelIndices?: Int32Array;
  /** Throw in the constructor if padimMemoryBytes() exceeds this (default 2 GiB). */
  memoryBudgetBytes?: number;
}

function validateIndices(indices: Int32Array, inputDims: number, where: string): void {
  const seen = new Set<number>();
  for (const i of indices) {
    if (!Number.isInteger(i) || i < 0 || i >= inputDims) {
      throw new Error(`${where}: channel index ${i} is outside [0, ${inputDims})`);
    }
    if (seen.has(i)) throw new Error(`${where}: channel index ${i} appears twice`);
    seen.add(i);
  }
}

/**
 * Streaming per-position mean and covariance of [inputDims, H, W] embeddings (Welford, Float64).
 * The co-moment matrices are stored as packed upper triangles, laid out [pair, position] so each update
 * is a contiguous sweep over positions.
 */
export class PadimAccumulator {
  readonly inputDims: number;
  readonly dims: number;
  readonly height: number;
  readonly width: number;
  readonly channelIndices: Int32Array;
  private n = 0;
  private readonly positions: number;
  private readonly meanAcc: Float64Array;
  private readonly m2: Float64Array;
  private readonly delta: Float64Array;

  constructor(options: PadimAccumulatorOptions) {
    const { inputDims, height, width } = options;
    for (const [name, v] of [
      ['inputDims', inputDims],
      ['height', height],
      ['width', width],
    ] as const) {
      if (!Number.isInteger(v) || v < 1)
        throw new Error(`PadimAccumulator: ${name} must be a positive integer, got ${v}`);
    }
    const indices = options.channelIndices ?? Int32Array.from({ length: inputDims }, (_, i) => i);
    if (indices.length < 1) throw new Error('PadimAccumulator: channelIndices is empty');
    validateIndices(indices, inputDims, 'PadimAccumulator');
    this.inputDims = inputDims;
    this.dims = indices.length;
    this.height = height;
    this.width = width;
    this.channelIndices = Int32Array.from(indices);
    this.positions = height * width;
    const budget = options.memoryBudgetBytes ?? PADIM_DEFAULT_MEMORY_BUDGET;
    const need = padimMemoryBytes(this.dims, height, width);
    if (need > budget) {
      throw new Error(
        `PaDiM statistics for d=${this.dims} dims at ${height}x${width} positions need ${formatBytes(need)}, ` +
          `over the memory budget of ${formatBytes(budget)}: pick fewer dims (selectRandomChannels), ` +
          `use a smaller feature map, or raise memoryBudgetBytes`,
      );
    }
    const d = this.dims;
    const p = this.positions;
    this.meanAcc = new Float64Array(d * p);
    this.m2 = new Float64Array(((d * (d + 1)) / 2) * p);
    this.delta = new Float64Array(d * p);
  }

  /** Number of embeddings added so far. */
  get count(): number {
    return this.n;
  }

  /** Adds one image's embedding, layout [inputDims, H, W]. */
  add(embedding: Float32Array): void {
    const p = this.positions;
    const d = this.dims;
    if (embedding.length !== this.inputDims * p) {
      throw new Error(
        `PadimAccumulator.add: embedding has ${embedding.length} values, expected ` +
          `${this.inputDims} x ${this.height} x ${this.width} = ${this.inputDims * p}`,
      );
    }
    this.n += 1;
    const invN = 1 / this.n;
    const { meanAcc, delta, m2 } = this;
    for (let i = 0; i < d; i++) {
      const src = this.channelIndices[i] * p;
      const row = i * p;
      for (let q = 0; q < p; q++) {
        const v = embedding[src + q];
        if (!Number.isFinite(v)) {
          this.n -= 1;
          throw new Error(`PadimAccumulator.add: non-finite value at channel ${this.channelIndices[i]}, position ${q}`);
        }
        const dl = v - meanAcc[row + q];
        delta[row + q] = dl;
      }
    }
    for (let i = 0; i < d * p; i++) meanAcc[i] += delta[i] * invN;
    // M2 += (x - mean_old)(x - mean_new)^T = (n - 1)/n * delta delta^T.
    const c = (this.n - 1) * invN;
    if (c === 0) return;
    let k = 0;
    for (let i = 0; i < d; i++) {
      const ri = i * p;
      for (let j = i; j < d; j++, k++) {
        const rj = j * p;
        const rk = k * p;
        for (let q = 0; q < p; q++) m2[rk + q] += c * delta[ri + q] * delta[rj + q];
      }
    }
  }

  /** Current per-position means, layout [dims, H, W] (Float64 copy). */
  mean(): Float64Array {
    return this.meanAcc.slice();
  }

  /** Unbiased sample covariance (divisor N - 1) at one position (row-major dims x dims, no ridge). */
  covarianceAt(position: number): Float64Array {
    if (!Number.isInteger(position) || position < 0 || position >= this.positions) {
      throw new Error(`PadimAccumulator.covarianceAt: position ${position} outside [0, ${this.positions})`);
    }
    if (this.n < 2) throw new Error(`PadimAccumulator: need at least 2 embeddings for a covariance, have ${this.n}`);
    const d = this.dims;
    const p = this.positions;
    const cov = new Float64Array(d * d);
    const div = 1 / (this.n - 1);
    let k = 0;
    for (let i = 0; i < d; i++) {
      for (let j = i; j < d; j++, k++) {
        const v = this.m2[k * p + position] * div;
        cov[i * d + j] = v;
        cov[j * d + i] = v;
      }
    }
    return cov;
  }

  /**
   * Finalises: Sigma = cov + eps * I at each position (eps >= 0, default 0.01 as in PaDiM), inverted via
   * Cholesky in Float64 and stored as Float32. Costs O(H*W*d^3); throws if some Sigma is not positive
   * definite (possible only with eps = 0). Adding more embeddings afterwards and finalising again is fine.
   */
  finalize(eps = PADIM_DEFAULT_EPS): PadimStats {
    if (!(eps >= 0) || !Number.isFinite(eps))
      throw new Error(`PadimAccumulator.finalize: eps must be >= 0, got ${eps}`);
    if (this.n < 2) throw new Error(`PadimAccumulator: need at least 2 embeddings to finalise, have ${this.n}`);
    const d = this.dims;
    const p = this.positions;
    const invCov = new Float32Array(p * d * d);
    for (let q = 0; q < p; q++) {
      const cov = this.covarianceAt(q);
      for (let i = 0; i < d; i++) cov[i * d + i] += eps;
      let l: Float64Array;
      try {
        l = cholesky(cov, d);
      } catch (err) {
        throw new Error(`PadimAccumulator.finalize: covariance at position ${q} is singular (eps=${eps}): ${err}`);
      }
      invCov.set(choleskyInverse(l, d), q * d * d);
    }
    return new PadimStats({
      inputDims: this.inputDims,
      height: this.height,
      width: this.width,
      channelIndices: this.channelIndices,
      mean: Float32Array.from(this.meanAcc),
      invCovariance: invCov,
      count: this.n,
      eps,
    });
  }
}

export interface PadimStatsInit {
  inputDims: number;
  height: number;
  width: number;
  /** Which input dims are modelled (length d). */
  channelIndices: Int32Array;
  /** Layout [d, H, W]. */
  mean: Float32Array;
  /** Layout [H*W, d, d]: the inverse covariance of each position. */
  invCovariance: Float32Array;
  /** Number of training embeddings. */
  count: number;
  /** Ridge that was added to the covariances. */
  eps: number;
}

/** Finalised PaDiM statistics: per-position means and inverse covariances (Float32). */
export class PadimStats {
  readonly inputDims: number;
  readonly dims: number;
  readonly height: number;
  readonly width: number;
  readonly channelIndices: Int32Array;
  readonly mean: Float32Array;
  readonly invCovariance: Float32Array;
  readonly count: number;
  readonly eps: number;

  constructor(init: PadimStatsInit) {
    const d = init.channelIndices.length;
    const p = init.height * init.width;
    if (!(
      d >= 1 &&
      Number.isInteger(init.height) &&
      init.height >= 1 &&
      Number.isInteger(init.width) &&
      init.width >= 1
    )) {
      throw new Error(`PadimStats: bad sizes d=${d} H=${init.height} W=${init.width}`);
    }
    validateIndices(init.channelIndices, init.inputDims, 'PadimStats');
    if (init.mean.length !== d * p)
      throw new Error(`PadimStats: mean has ${init.mean.length} values, expected ${d * p}`);
    if (init.invCovariance.length !== p * d * d) {
      throw new Error(`PadimStats: invCovariance has ${init.invCovariance.length} values, expected ${p * d * d}`);
    }
    this.inputDims = init.inputDims;
    this.dims = d;
    this.height = init.height;
    this.width = init.width;
    this.channelIndices = init.channelIndices;
    this.mean = init.mean;
    this.invCovariance = init.invCovariance;
    this.count = init.count;
    this.eps = init.eps;
  }

  /**
   * Mahalanobis distance sqrt((x - mu)^T Sigma^-1 (x - mu)) at every position of one embedding of layout
   * [inputDims, H, W] (the full backbone embedding: the channel subset is applied here). Returns an H x W
   * 1-channel Image (not in [0, 1]; higher = more anomalous).
   */
  mahalanobisMap(embedding: Float32Array): Image {
    const d = this.dims;
    const p = this.height * this.width;
    if (embedding.length !== this.inputDims * p) {
      throw new Error(
        `PadimStats.mahalanobisMap: embedding has ${embedding.length} values, expected ` +
          `${this.inputDims} x ${this.height} x ${this.width} = ${this.inputDims * p}`,
      );
    }
    const out = createImage(1, this.height, this.width);
    const delta = new Float64Array(d);
    const idx = this.channelIndices;
    const s = this.invCovariance;
    for (let q = 0; q < p; q++) {
      for (let i = 0; i < d; i++) delta[i] = embedding[idx[i] * p + q] - this.mean[i * p + q];
      const base = q * d * d;
      let dist2 = 0;
      for (let i = 0; i < d; i++) {
        const row = base + i * d;
        let t = 0;
        for (let j = 0; j < d; j++) t += s[row + j] * delta[j];
        dist2 += delta[i] * t;
      }
      out.data[q] = Math.sqrt(Math.max(0, dist2));
    }
    return out;
  }

  /**
   * Plain tensors for a checkpoint:
   *  - mean: [d, H, W]
   *  - inv_covariance: [H*W, d, d]
   *  - channel_indices: [d] (integers stored as float32, exact below 2^24)
   *  - meta: [3] = [inputDims, count, eps]
   */
  toTensors(): Record<string, PlainTensor> {
    const d = this.dims;
    return {
      mean: { shape: [d, this.height, this.width], data: this.mean.slice() },
      inv_covariance: { shape: [this.height * this.width, d, d], data: this.invCovariance.slice() },
      channel_indices: { shape: [d], data: Float32Array.from(this.channelIndices) },
      meta: { shape: [3], data: Float32Array.from([this.inputDims, this.count, this.eps]) },
    };
  }

  /** Inverse of toTensors(); validates that all tensors are present, consistent and finite. */
  static fromTensors(tensors: Record<string, PlainTensor>): PadimStats {
    const get = (name: string, rank: number): PlainTensor => {
      const t = tensors[name];
      if (!t) throw new Error(`PadimStats.fromTensors: missing tensor '${name}'`);
      if (!Array.isArray(t.shape) || t.shape.length !== rank || !t.shape.every((s) => Number.isInteger(s) && s >= 1)) {
        throw new Error(`PadimStats.fromTensors: '${name}' must have ${rank} positive dims, got [${t.shape}]`);
      }
      const size = t.shape.reduce((a, b) => a * b, 1);
      if (!(t.data instanceof Float32Array) || t.data.length !== size) {
        throw new Error(`PadimStats.fromTensors: '${name}' of shape [${t.shape}] needs ${size} float32 values`);
      }
      for (let i = 0; i < t.data.length; i++) {
        if (!Number.isFinite(t.data[i])) throw new Error(`PadimStats.fromTensors: '${name}' has a non-finite value`);
      }
      return t;
    };
    const mean = get('mean', 3);
    const inv = get('inv_covariance', 3);
    const idx = get('channel_indices', 1);
    const meta = get('meta', 1);
    const [d, h, w] = mean.shape;
    if (inv.shape[0] !== h * w || inv.shape[1] !== d || inv.shape[2] !== d) {
      throw new Error(
        `PadimStats.fromTensors: inv_covariance has shape [${inv.shape}], expected [${h * w}, ${d}, ${d}] ` +
          `to match mean [${mean.shape}]`,
      );
    }
    if (idx.shape[0] !== d) {
      throw new Error(`PadimStats.fromTensors: channel_indices has shape [${idx.shape}], expected [${d}]`);
    }
    if (meta.shape[0] !== 3) throw new Error(`PadimStats.fromTensors: meta has shape [${meta.shape}], expected [3]`);
    const [inputDims, count, eps] = meta.data;
    if (!Number.isInteger(inputDims) || inputDims < d) {
      throw new Error(`PadimStats.fromTensors: meta inputDims ${inputDims} must be an integer >= d = ${d}`);
    }
    if (!Number.isInteger(count) || count < 0 || !(eps >= 0)) {
      throw new Error(`PadimStats.fromTensors: bad meta count=${count} eps=${eps}`);
    }
    for (const v of idx.data) {
      if (!Number.isInteger(v)) throw new Error(`PadimStats.fromTensors: channel index ${v} is not an integer`);
    }
    return new PadimStats({
      inputDims,
      height: h,
      width: w,
      channelIndices: Int32Array.from(idx.data),
      mean: mean.data.slice(),
      invCovariance: inv.data.slice(),
      count,
      eps,
    });
  }
}
