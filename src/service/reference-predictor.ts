import { resizeImage } from '../image/io.js';
import type { Image } from '../image/types.js';
import type { AnomalyPrediction, AnomalyPredictor, ModelInfo } from '../models/predictor.js';

/**
 * The reference predictor: a small, exact, model-free AnomalyPredictor used by the service tests and
 * the service benchmark (and usable as a sanity baseline for "parts of one known colour").
 *
 * Definition. Every input is area-averaged down to `resolution` x `resolution` and converted to RGB
 * (grey is replicated, alpha is dropped). The anomaly value of a low-resolution pixel is its mean
 * absolute difference to the reference over the three channels, in [0, 1]:
 *
 *     a(y, x) = (|R - r0| + |G - g0| + |B - b0|) / 3
 *
 * where (r0, g0, b0) is either a fixed reference colour or the matching pixel of a reference image
 * (also area-averaged to `resolution`). The image score is the maximum of the 3x3 box-smoothed map, so
 * one noisy pixel does not decide the verdict. The map is bilinearly resized back to the input size,
 * so it honours the AnomalyPrediction contract (1 channel, input size, higher = more anomalous).
 *
 * It is deterministic (pure arithmetic on the input), has no native state, and gives meaningful
 * results on images of a uniform part: a blob of another colour lights up and flips the verdict.
 */
export interface ReferencePredictorOptions {
  /** Reference colour as RGB in [0, 1] or a reference image (any size, 1/3/4 channels). Default mid grey. */
  reference?: readonly [number, number, number] | Image;
  /** Side of the square grid the map is computed on. Default 64. */
  resolution?: number;
  /** Image-score threshold (score >= threshold => defective). Default 0.2. */
  imageThreshold?: number;
  /** Pixel threshold on the map for the defect mask. Default 0.2. */
  pixelThreshold?: number;
}

export const REFERENCE_METHOD = 'reference-colour-distance';

export class ReferencePredictor implements AnomalyPredictor {
  readonly info: ModelInfo;
  private readonly resolution: number;
  /** Reference as RGB planes at resolution x resolution. */
  private readonly ref: Float32Array;
  private disposed = false;

  constructor(opts: ReferencePredictorOptions = {}) {
    const resolution = opts.resolution ?? 64;
    if (!Number.isInteger(resolution) || resolution < 1 || resolution > 4096) {
      throw new RangeError(`ReferencePredictor: resolution must be an integer in [1, 4096], got ${resolution}`);
    }
    const imageThreshold = opts.imageThreshold ?? 0.2;
    const pixelThreshold = opts.pixelThreshold ?? 0.2;
    for (const [k, v] of [
      ['imageThreshold', imageThreshold],
      ['pixelThreshold', pixelThreshold],
    ] as const) {
      if (!Number.isFinite(v)) throw new RangeError(`ReferencePredictor: ${k} must be finite, got ${v}`);
    }
    this.resolution = resolution;
    const reference = opts.reference ?? [0.5, 0.5, 0.5];
    const plane = resolution * resolution;
    let refDesc: string;
    if (isImage(reference)) {
      validateImage(reference, 'reference image');
      this.ref = toRgb(areaResize(reference, resolution, resolution)).data;
      refDesc = `image ${reference.width}x${reference.height}`;
    } else {
      if (reference.length !== 3 || !reference.every((v) => Number.isFinite(v) && v >= 0 && v <= 1)) {
        throw new RangeError('ReferencePredictor: reference colour must be three numbers in [0, 1]');
      }
      this.ref = new Float32Array(3 * plane);
      for (let c = 0; c < 3; c++) this.ref.fill(reference[c], c * plane, (c + 1) * plane);
      refDesc = `rgb(${reference.map((v) => +v.toFixed(4)).join(', ')})`;
    }
    this.info = {
      method: REFERENCE_METHOD,
      resolution,
      channels: 3,
      imageThreshold,
      pixelThreshold,
      meta: {
        description: 'mean absolute RGB difference to a reference, area-averaged grid, bilinear back to input size',
        reference: refDesc,
      },
    };
  }

  async predict(images: Image[]): Promise<AnomalyPrediction[]> {
    if (this.disposed) throw new Error('ReferencePredictor: predict() after dispose()');
    return images.map((img) => this.predictOne(img));
  }

  dispose(): void {
    this.disposed = true;
  }

  private predictOne(img: Image): AnomalyPrediction {
    validateImage(img, 'input image');
    const r = this.resolution;
    const plane = r * r;
    const rgb = toRgb(areaResize(img, r, r)).data;
    const low = new Float32Array(plane);
    const ref = this.ref;
    for (let i = 0; i < plane; i++) {
      low[i] =
        (Math.abs(rgb[i] - ref[i]) +
          Math.abs(rgb[plane + i] - ref[plane + i]) +
          Math.abs(rgb[2 * plane + i] - ref[2 * plane + i])) /
        3;
    }
    const score = maxOfBoxSmoothed(low, r, r);
    const map = resizeImage({ channels: 1, height: r, width: r, data: low }, img.height, img.width, 'bilinear');
    return { score, map };
  }
}

export function createReferencePredictor(opts: ReferencePredictorOptions = {}): ReferencePredictor {
  return new ReferencePredictor(opts);
}

function isImage(x: unknown): x is Image {
  return typeof x === 'object' && x !== null && 'data' in x && (x as Image).data instanceof Float32Array;
}

function validateImage(img: Image, what: string): void {
  const { channels, height, width, data } = img;
  if (![1, 3, 4].includes(channels) || !(height > 0 && width > 0) || !Number.isInteger(height * width)) {
    throw new Error(`ReferencePredictor: ${what} has unsupported shape ${channels}x${height}x${width}`);
  }
  if (data.length !== channels * height * width) {
    throw new Error(`ReferencePredictor: ${what} data length ${data.length} != ${channels}x${height}x${width}`);
  }
}

/** 1 -> grey replicated to 3 planes, 3 -> as is, 4 -> alpha dropped. */
function toRgb(img: Image): Image {
  if (img.channels === 3) return img;
  const plane = img.height * img.width;
  const out = new Float32Array(3 * plane);
  if (img.channels === 1) {
    for (let c = 0; c < 3; c++) out.set(img.data.subarray(0, plane), c * plane);
  } else {
    out.set(img.data.subarray(0, 3 * plane));
  }
  return { channels: 3, height: img.height, width: img.width, data: out };
}

/**
 * Exact area-coverage weights along one axis. Output index o covers source indices
 * first[o] .. first[o] + count[o] - 1; their weights (summing to 1) are packed consecutively in
 * `weight`, output after output, so callers walk them with a running offset.
 */
function areaWeights(src: number, dst: number): { first: Int32Array; count: Int32Array; weight: Float32Array } {
  const scale = src / dst;
  const first = new Int32Array(dst);
  const count = new Int32Array(dst);
  const weights: number[] = [];
  for (let o = 0; o < dst; o++) {
    const lo = o * scale;
    const hi = (o + 1) * scale;
    const s = Math.min(src - 1, Math.floor(lo));
    const e = Math.max(s + 1, Math.min(src, Math.ceil(hi)));
    first[o] = s;
    count[o] = e - s;
    for (let i = s; i < e; i++) weights.push((Math.min(hi, i + 1) - Math.max(lo, i)) / scale);
  }
  return { first, count, weight: Float32Array.from(weights) };
}

/** Exact area-average resize (separable), any channel count. */
export function areaResize(img: Image, height: number, width: number): Image {
  const { channels, height: H, width: W, data } = img;
  if (H === height && W === width) return img;
  const wx = areaWeights(W, width);
  const wy = areaWeights(H, height);
  const tmp = new Float32Array(channels * H * width);
  const out = new Float32Array(channels * height * width);
  for (let c = 0; c < channels; c++) {
    for (let y = 0; y < H; y++) {
      const row = c * H * W + y * W;
      const orow = c * H * width + y * width;
      let k = 0;
      for (let x = 0; x < width; x++) {
        let acc = 0;
        const s = wx.first[x];
        for (let j = 0; j < wx.count[x]; j++) acc += data[row + s + j] * wx.weight[k++];
        tmp[orow + x] = acc;
      }
    }
    let k = 0;
    for (let y = 0; y < height; y++) {
      const s = wy.first[y];
      const n = wy.count[y];
      const orow = c * height * width + y * width;
      for (let x = 0; x < width; x++) {
        let acc = 0;
        for (let j = 0; j < n; j++) acc += tmp[c * H * width + (s + j) * width + x] * wy.weight[k + j];
        out[orow + x] = acc;
      }
      k += n;
    }
  }
  return { channels, height, width, data: out };
}

/** Maximum of the 3x3 box mean (edges averaged over the in-bounds neighbours). */
function maxOfBoxSmoothed(map: Float32Array, h: number, w: number): number {
  let best = -Infinity;
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      let acc = 0;
      let n = 0;
      for (let dy = -1; dy <= 1; dy++) {
        const yy = y + dy;
        if (yy < 0 || yy >= h) continue;
        for (let dx = -1; dx <= 1; dx++) {
          const xx = x + dx;
          if (xx < 0 || xx >= w) continue;
          acc += map[yy * w + xx];
          n++;
        }
      }
      if (acc / n > best) best = acc / n;
    }
  }
  return best;
}
