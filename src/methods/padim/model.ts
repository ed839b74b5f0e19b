/**
 * PaDiM (Defard et al., ICPR 2021) on a FeatureBackbone: the embedding of an image is the concatenation of the
 * backbone's layer1, layer2 and layer3 features, the latter two upsampled (nearest) to layer1's resolution (stride 4);
 * a seeded random subset of d of its channels (default 100) is modelled at every position by a Gaussian fitted to the
 * defect-free training images (PadimAccumulator: streaming mean / covariance, covariance + 0.01 I). A test image's
 * anomaly map is the Mahalanobis distance at every position, upsampled (bilinear) to the model input resolution and
 * smoothed with a Gaussian of sigma 4 (postprocessDistanceMap), then mapped back onto the input image (unfitMap);
 * the image score is the maximum of the map at model resolution.
 *
 * Model file 'anoseg.ts/padim@1': safetensors with the backbone weights ('backbone.*'), the statistics ('padim.mean'
 * [d, h, w], 'padim.inv_covariance' [h*w, d, d], 'padim.channel_indices' [d], 'padim.meta' [3]: see
 * PadimStats.toTensors) and metadata { format, meta: JSON(PadimModelMeta) } (resolution, aspect, channels,
 * thresholds, backbone metadata, training facts).
 *
 * Memory: features are extracted in batches and folded into the accumulator one image at a time, so training holds
 * only the statistics (padimMemoryBytes) besides one batch of embeddings.
 */
import { F, keep, noGrad, tidy, Tensor } from '../../engine/index.js';
import { saveSafetensors, sourceName, type SafetensorsSource } from '../../nn/index.js';
import type { FitAspect } from '../../image/io.js';
import { TILINGS, type Tiling } from '../../image/tiles.js';
import { FittedModelPredictor } from '../../models/fitted-prediction.js';
import type { Image } from '../../image/types.js';
import { Rng } from '../../util/rng.js';
import { FusedResNet } from '../../nn/fused.js';
import { postprocessDistanceMap } from '../../models/gaussian.js';
import { FeatureBackbone, loadBackboneModelFile, type BackboneMeta } from '../../models/backbone.js';
import { PADIM_DEFAULT_EPS, PadimAccumulator, PadimStats, selectRandomChannels, type PlainTensor } from './stats.js';

export const PADIM_FORMAT = 'anoseg.ts/padim@1';
export const PADIM_DEFAULT_DIMS = 100;
/**
 * Default model input side. 256 (the paper's size) over 128, chosen on bottle + KolektorSDD with magnetic tile held
 * out (shipped formula backbone, d = 100): pixel AUROC 0.909 -> 0.958 and 0.806 -> 0.837, image AUROC 0.987 -> 0.986
 * and 0.755 -> 0.790; held-out magnetic tile 0.702 -> 0.674 pixel, 0.785 -> 0.790 image (README "PaDiM").
 */
export const PADIM_DEFAULT_RESOLUTION = 256;
export const PADIM_SIGMA = 4;

export interface PadimModelMeta {
  /** Square model input side in pixels (a multiple of 16). */
  resolution: number;
  aspect: FitAspect;
  /** Absent in model files written before tiling existed: 'none'. */
  tiling?: Tiling;
  /** Image channels of the training data (1 or 3); inputs are converted to it, then replicated to RGB. */
  channels: 1 | 3;
  /** Modelled embedding channels (d) and the seed that chose them. */
  dims: number;
  seed: number;
  /** Ridge added to each covariance. */
  eps: number;
  /** Gaussian smoothing of the upsampled distance map, pixels at model resolution. */
  sigma: number;
  backbone: BackboneMeta;
  imageThreshold: number;
  pixelThreshold: number;
  facts: Record<string, string | number | boolean>;
}

export interface PadimFitOptions {
  /** Modelled embedding channels (default 100; capped at the embedding size). */
  dims?: number;
  /** Seed of the random channel subset (default 0). */
  seed?: number;
  /** Covariance ridge (default 0.01). */
  eps?: number;
  /** Images per feature-extraction batch (default 8). */
  batch?: number;
  /** Limit on the statistics' memory (see PadimAccumulator). */
  memoryBudgetBytes?: number;
  onProgress?: (done: number, total: number) => void;
}

/**
 * Runs the backbone over same-sized images in batches and calls fn with each image's embedding (layout [D, h, w],
 * valid only during the call) and its index. Returns the embedding shape.
 */
export function forEachEmbedding(
  backbone: FeatureBackbone,
  images: readonly Image[],
  batch: number,
  fn: (embedding: Float32Array, index: number, shape: [number, number, number]) => void,
): void {
  if (!(Number.isInteger(batch) && batch >= 1)) throw new Error(`forEachEmbedding: batch must be >= 1, got ${batch}`);
  for (let start = 0; start < images.length; start += batch) {
    const chunk = images.slice(start, start + batch);
    const { data, shape } = noGrad(() =>
      tidy(() => {
        const e = backbone.embed(backbone.prepare(chunk));
        return { data: e.toFloat32Array(), shape: e.shape };
      }),
    );
    const [, d, h, w] = shape;
    const per = d * h * w;
    chunk.forEach((_, i) => fn(data.subarray(i * per, (i + 1) * per), start + i, [d, h, w]));
  }
}

/** Fits PaDiM's per-position Gaussians to the embeddings of defect-free images (already fitted to model size). */
export function fitPadimStats(
  backbone: FeatureBackbone,
  images: readonly Image[],
  o: PadimFitOptions = {},
): PadimStats {
  if (images.length < 2) throw new Error(`PaDiM needs at least 2 training images, got ${images.length}`);
  const inputDims = backbone.embeddingDims;
  const dims = Math.min(o.dims ?? PADIM_DEFAULT_DIMS, inputDims);
  const channelIndices = selectRandomChannels(inputDims, dims, new Rng(o.seed ?? 0));
  let acc: PadimAccumulator | null = null;
  backbone.eval();
  forEachEmbedding(backbone, images, o.batch ?? 8, (embedding, index, [d, h, w]) => {
    acc ??= new PadimAccumulator({
      inputDims: d,
      height: h,
      width: w,
      channelIndices,
      memoryBudgetBytes: o.memoryBudgetBytes,
    });
    acc.add(embedding);
    o.onProgress?.(index + 1, images.length);
  });
  return (acc as PadimAccumulator | null)!.finalize(o.eps ?? PADIM_DEFAULT_EPS);
}

function checkModelMeta(meta: PadimModelMeta, where: string): void {
  const bad = (why: string): never => {
    throw new Error(`${where}: bad PaDiM model metadata: ${why}`);
  };
  if (!meta || typeof meta !== 'object') bad('not an object');
  if (!(Number.isInteger(meta.resolution) && meta.resolution >= 16 && meta.resolution % 16 === 0)) {
    bad(`resolution ${meta.resolution} is not a multiple of 16`);
  }
  if (!['stretch', 'pad', 'crop'].includes(meta.aspect)) bad(`aspect '${String(meta.aspect)}'`);
  if (meta.tiling !== undefined && !TILINGS.includes(meta.tiling)) bad(`tiling '${String(meta.tiling)}'`);
  if (meta.channels !== 1 && meta.channels !== 3) bad(`channels ${meta.channels}`);
  for (const key of ['dims', 'seed', 'eps', 'sigma', 'imageThreshold', 'pixelThreshold'] as const) {
    if (typeof meta[key] !== 'number' || !Number.isFinite(meta[key])) bad(`${key} is not a finite number`);
  }
  if (!meta.backbone) bad('no backbone metadata');
  if (!meta.facts || typeof meta.facts !== 'object') bad('no training facts');
}

/**
 * What scoring runs, built once from a fitted model: the backbone with BatchNorm folded (stem + layer1..3), and the
 * statistics as tensors, so every position's Mahalanobis distance is one batched matrix product in libtorch.
 */
class PadimScorer {
  private readonly net: FusedResNet;
  private readonly channelIndices: Tensor;
  /** [P, 1, d]: each position's mean as a row. */
  private readonly mean: Tensor;
  /** [P, d, d]. */
  private readonly invCovariance: Tensor;

  constructor(
    private readonly backbone: FeatureBackbone,
    private readonly stats: PadimStats,
  ) {
    const { dims: d, height: h, width: w } = stats;
    const p = h * w;
    this.net = noGrad(() => FusedResNet.fold(backbone.net, 3));
    this.channelIndices = keep(Tensor.from(stats.channelIndices, [d], { dtype: 'int64' }));
    this.mean = keep(tidy(() => Tensor.from(stats.mean, [d, p]).transpose(0, 1).reshape([p, 1, d])));
    this.invCovariance = keep(Tensor.from(stats.invCovariance, [p, d, d]));
  }

  /** Mahalanobis distance maps [N, H*W] (layout [H, W]) of fitted images. */
  distances(images: readonly Image[]): Float32Array {
    return noGrad(() =>
      tidy(() => {
        const x = this.backbone.prepare(images).contiguous('channels_last');
        const [, f1, f2, f3] = this.net.forwardStages(x);
        const size: [number, number] = [f1.shape[2], f1.shape[3]];
        const embedding = Tensor.cat([f1, F.interpolate(f2, size, 'nearest'), F.interpolate(f3, size, 'nearest')], 1);
        const n = images.length;
        const { dims: d, height: h, width: w } = this.stats;
        const delta = embedding
          .indexSelect(1, this.channelIndices)
          .reshape([n, d, h * w])
          .permute([2, 0, 1])
          .sub(this.mean) // [P, N, d]
          .contiguous(); // a strided batch makes bmm copy every position's rows
        const squared = delta.matmul(this.invCovariance).mul(delta).sum(2); // [P, N]
        return squared.clamp(0).sqrt().transpose(0, 1).contiguous().toFloat32Array();
      }),
    );
  }

  dispose(): void {
    this.net.dispose();
    this.channelIndices.dispose();
    this.mean.dispose();
    this.invCovariance.dispose();
  }
}

/** A fitted PaDiM model: backbone + statistics + settings. Owns native memory: dispose(). */
export class PadimModel {
  private readonly scorer: PadimScorer;

  constructor(
    readonly backbone: FeatureBackbone,
    readonly stats: PadimStats,
    readonly meta: PadimModelMeta,
    private readonly maxBatch = 8,
  ) {
    checkModelMeta(meta, 'PadimModel');
    const side = meta.resolution / 4;
    if (stats.inputDims !== backbone.embeddingDims || stats.height !== side || stats.width !== side) {
      throw new Error(
        `PadimModel: statistics for ${stats.inputDims} dims at ${stats.height}x${stats.width} do not fit a backbone with ` +
          `${backbone.embeddingDims} embedding dims at resolution ${meta.resolution} (${side}x${side} positions)`,
      );
    }
    backbone.eval();
    this.scorer = new PadimScorer(backbone, stats);
  }

  /**
   * Anomaly maps at model resolution (Mahalanobis distance, upsampled, smoothed) and image scores (map maximum) for
   * images already fitted to resolution x resolution with the model's channel count.
   */
  scoreFitted(inputs: readonly Image[]): { maps: Image[]; scores: Float32Array } {
    const res = this.meta.resolution;
    for (const [i, img] of inputs.entries()) {
      if (img.height !== res || img.width !== res) {
        throw new Error(`PadimModel.scoreFitted: input ${i} is ${img.height}x${img.width}, expected ${res}x${res}`);
      }
    }
    const maps: Image[] = new Array(inputs.length);
    const scores = new Float32Array(inputs.length);
    const { height: h, width: w } = this.stats;
    for (let start = 0; start < inputs.length; start += this.maxBatch) {
      const chunk = inputs.slice(start, start + this.maxBatch);
      const distances = this.scorer.distances(chunk);
      chunk.forEach((_, i) => {
        const distance: Image = {
          channels: 1,
          height: h,
          width: w,
          data: distances.subarray(i * h * w, (i + 1) * h * w),
        };
        const map = postprocessDistanceMap(distance, res, res, this.meta.sigma);
        let max = -Infinity;
        for (const v of map.data) if (v > max) max = v;
        maps[start + i] = map;
        scores[start + i] = max;
      });
    }
    return { maps, scores };
  }

  /** Writes the model file atomically. */
  async save(file: string): Promise<void> {
    const tensors = new Map<string, Tensor>();
    const own: Tensor[] = [];
    try {
      for (const [k, v] of this.backbone.tensors('backbone.')) tensors.set(k, v);
      for (const [k, v] of Object.entries(this.stats.toTensors())) {
        const t = Tensor.from(v.data, v.shape);
        own.push(t);
        tensors.set(`padim.${k}`, t);
      }
      const meta: PadimModelMeta = { ...this.meta, backbone: this.backbone.meta };
      await saveSafetensors(file, tensors, { format: PADIM_FORMAT, meta: JSON.stringify(meta) });
    } finally {
      for (const t of own) t.dispose();
    }
  }

  /** Reads a model file; any other format, missing or inconsistent content is rejected naming the file. */
  static async load(source: SafetensorsSource): Promise<PadimModel> {
    const file = sourceName(source);
    return loadBackboneModelFile(source, {
      format: PADIM_FORMAT,
      method: 'PaDiM',
      checkMeta: (meta: PadimModelMeta, f) => checkModelMeta(meta, f),
      read: (tensors) => {
        const plain: Record<string, PlainTensor> = {};
        for (const name of ['mean', 'inv_covariance', 'channel_indices', 'meta']) {
          const t = tensors.get(`padim.${name}`);
          if (!t) throw new Error(`${file}: PaDiM statistics tensor 'padim.${name}' is missing`);
          if (t.dtype !== 'float32') throw new Error(`${file}: 'padim.${name}' is ${t.dtype}, expected float32`);
          plain[name] = { shape: t.shape, data: t.toFloat32Array() };
        }
        try {
          return PadimStats.fromTensors(plain);
        } catch (e) {
          throw new Error(`${file}: ${(e as Error).message}`);
        }
      },
      create: (backbone, stats, meta) => new PadimModel(backbone, stats, meta),
    });
  }

  dispose(): void {
    this.scorer.dispose();
    this.backbone.dispose();
  }
}

/** The AnomalyPredictor of a PaDiM model file (maps and scores: higher = more anomalous). */
export class PadimPredictor extends FittedModelPredictor<PadimModel> {
  constructor(model: PadimModel, maxBatch = 8) {
    const m = model.meta;
    const facts = { backboneTraining: m.backbone.training.kind, backboneWidth: m.backbone.width, dims: m.dims };
    super(model, 'padim', { ...m.facts, ...facts }, maxBatch);
  }

  static async load(source: SafetensorsSource): Promise<PadimPredictor> {
    return new PadimPredictor(await PadimModel.load(source));
  }
}
