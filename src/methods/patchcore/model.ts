/**
 * PatchCore (Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022) on a FeatureBackbone,
 * beside PaDiM (src/methods/padim/model.ts) on the same backbones.
 *
 * Features: locally aware patch features. layer2 (stride 8) and layer3 (stride 16) of the backbone are each
 * average-pooled over 3x3 neighbourhoods (stride 1, padding 1, zero padding counted, as torch's AvgPool2d(3, 1, 1)),
 * layer3 is upsampled (bilinear) to layer2's resolution and the two are concatenated: one feature vector of
 * layer2 + layer3 channels (192 at width 0.5) per stride-8 patch, resolution/8 x resolution/8 patches per image.
 * No projection is applied to stored features.
 *
 * Memory bank: every patch of every training image, reduced by the greedy k-center coreset
 * (coreset.ts: the paper's iterative farthest-point selection, distances on a seeded 128-dim
 * Johnson-Lindenstrauss projection, seeded random start; clusters the new point cannot reach are skipped) to
 * ceil(coresetRatio * patches) rows (default ratio 0.1), capped at maxBank rows (default 16,384) so the selection
 * (one matrix-vector product over all patches per chosen row) stays minutes on a CPU.
 *
 * Scoring: a test patch's score is the L2 distance to its nearest bank row (nearestDistances, libtorch matrix
 * form, in chunks). The patch map is upsampled (bilinear) to the model resolution and smoothed with a Gaussian of
 * sigma 4 (postprocessDistanceMap, as PaDiM), then mapped back onto the input image (predictFitted). The image score
 * is the maximum patch score (the paper's s* without its reweighting by the nearest bank row's neighbourhood, eq. 7:
 * kept out for simplicity).
 *
 * Model file 'anoseg.ts/patchcore@1': safetensors with the backbone weights ('backbone.*'), the bank
 * ('patchcore.bank' [M, D] float32) and metadata { format, meta: JSON(PatchcoreModelMeta) }.
 */
import { F, Tensor, keep, noGrad, releaseDeferred, tidy } from '../../engine/index.js';
import { saveSafetensors, sourceName, type SafetensorsSource } from '../../nn/index.js';
import type { FitAspect } from '../../image/io.js';
import { TILINGS, type Tiling } from '../../image/tiles.js';
import type { Image } from '../../image/types.js';
import { FusedResNet } from '../../nn/fused.js';
import { FeatureBackbone, loadBackboneModelFile, type BackboneMeta } from '../../models/backbone.js';
import { FittedModelPredictor } from '../../models/fitted-prediction.js';
import { postprocessDistanceMap } from '../../models/gaussian.js';
import {
  PATCHCORE_PROJECTION_DIMS,
  coresetSize,
  greedyCoreset,
  nearestDistances,
  type CoresetOptions,
} from './coreset.js';

export const PATCHCORE_FORMAT = 'anoseg.ts/patchcore@1';
export const PATCHCORE_DEFAULT_CORESET_RATIO = 0.1;
export const PATCHCORE_DEFAULT_MAX_BANK = 16_384;
export const PATCHCORE_SIGMA = 4;
/** Patch stride in pixels (layer2 of the ResNet). */
export const PATCHCORE_STRIDE = 8;
export { PATCHCORE_PROJECTION_DIMS };

export interface PatchcoreModelMeta {
  /** Square model input side in pixels (a multiple of 16). */
  resolution: number;
  aspect: FitAspect;
  /** Absent in model files written before tiling existed: 'none'. */
  tiling?: Tiling;
  /** Image channels of the training data (1 or 3); inputs are converted to it, then replicated to RGB. */
  channels: 1 | 3;
  /** Coreset settings the bank was chosen with. */
  coresetRatio: number;
  maxBank: number;
  projectionDims: number;
  seed: number;
  /** Training patches the coreset was chosen from. */
  patches: number;
  /** Gaussian smoothing of the upsampled patch map, pixels at model resolution. */
  sigma: number;
  backbone: BackboneMeta;
  imageThreshold: number;
  pixelThreshold: number;
  facts: Record<string, string | number | boolean>;
}

/** Feature dims of a patch: layer2 + layer3 channels. */
export function patchcoreFeatureDims(backbone: FeatureBackbone): number {
  const [, c2, c3] = backbone.featureChannels;
  return c2 + c3;
}

/**
 * The locally aware patch features of a backbone, with BatchNorm folded (stem + layer1..3, as PaDiM's scorer); the
 * same extractor serves fitting and scoring. Owns native memory: dispose().
 */
export class PatchFeatures {
  private readonly net: FusedResNet;

  constructor(private readonly backbone: FeatureBackbone) {
    backbone.eval();
    this.net = noGrad(() => FusedResNet.fold(backbone.net, 3));
  }

  /** [N, D, H/8, W/8] features of same-sized images. */
  embed(images: readonly Image[]): Tensor {
    return noGrad(() =>
      tidy(() => {
        const x = this.backbone.prepare(images).contiguous('channels_last');
        const [, , f2, f3] = this.net.forwardStages(x);
        const size: [number, number] = [f2.shape[2], f2.shape[3]];
        const p2 = F.avgPool2d(f2, 3, 1, 1);
        const p3 = F.interpolate(F.avgPool2d(f3, 3, 1, 1), size, 'bilinear');
        return Tensor.cat([p2, p3], 1).contiguous();
      }),
    );
  }

  /** Patch feature rows [N * h * w, D] (image by image, then row-major positions) and the patch grid h x w. */
  patches(images: readonly Image[]): { rows: Tensor; height: number; width: number } {
    return noGrad(() =>
      tidy(() => {
        const e = this.embed(images);
        const [n, d, h, w] = e.shape;
        return {
          rows: e
            .permute([0, 2, 3, 1])
            .reshape([n * h * w, d])
            .contiguous(),
          height: h,
          width: w,
        };
      }),
    );
  }

  dispose(): void {
    this.net.dispose();
  }
}

/** A memory bank: `size` rows of `dims` features, row-major. */
export interface PatchcoreBank {
  size: number;
  dims: number;
  data: Float32Array;
  /** Training patches it was chosen from. */
  patches: number;
}

export interface PatchcoreFitOptions extends Omit<CoresetOptions, 'onProgress'> {
  /** Fraction of the training patches kept (default 0.1). */
  coresetRatio?: number;
  /** Most bank rows (default 16,384). */
  maxBank?: number;
  /** Images per feature-extraction batch (default 8). */
  batch?: number;
  /** Feature extraction progress (images). */
  onProgress?: (done: number, total: number) => void;
  /** Coreset selection progress (bank rows). */
  onCoresetProgress?: (done: number, total: number) => void;
}

/**
 * Builds PatchCore's memory bank from defect-free images already fitted to model size: the patch features of every
 * image, then the greedy coreset of them.
 */
export async function fitPatchcoreBank(
  backbone: FeatureBackbone,
  images: readonly Image[],
  o: PatchcoreFitOptions = {},
): Promise<PatchcoreBank> {
  if (images.length < 1) throw new Error('PatchCore needs at least 1 training image');
  const batch = o.batch ?? 8;
  if (!(Number.isInteger(batch) && batch >= 1)) throw new Error(`PatchCore: batch must be >= 1, got ${batch}`);
  const ratio = o.coresetRatio ?? PATCHCORE_DEFAULT_CORESET_RATIO;
  const maxBank = o.maxBank ?? PATCHCORE_DEFAULT_MAX_BANK;
  coresetSize(1, ratio, maxBank); // validates both
  const extractor = new PatchFeatures(backbone);
  let all = null as Tensor | null; // [images * patches per image, dims]
  try {
    let perImage = 0;
    const dims = patchcoreFeatureDims(backbone);
    for (let start = 0; start < images.length; start += batch) {
      const chunk = images.slice(start, start + batch);
      tidy(() => {
        const { rows, height, width } = extractor.patches(chunk);
        if (!all) {
          perImage = height * width;
          all = keep(Tensor.zeros([images.length * perImage, dims]));
        }
        all.slice(0, start * perImage, (start + chunk.length) * perImage).copy_(rows);
      });
      o.onProgress?.(start + chunk.length, images.length);
      await releaseDeferred();
    }
    const features = all!;
    const n = images.length * perImage;
    const indices = await greedyCoreset(features, coresetSize(n, ratio, maxBank), {
      seed: o.seed,
      projectionDims: o.projectionDims,
      progressEvery: o.progressEvery,
      prune: o.prune,
      onProgress: o.onCoresetProgress,
    });
    const size = indices.length;
    const data = noGrad(() =>
      tidy(() => features.indexSelect(0, Tensor.from(indices, [size], { dtype: 'int64' })).toFloat32Array()),
    );
    return { size, dims, data, patches: n };
  } finally {
    all?.dispose();
    extractor.dispose();
  }
}

function checkModelMeta(meta: PatchcoreModelMeta, where: string): void {
  const bad = (why: string): never => {
    throw new Error(`${where}: bad PatchCore model metadata: ${why}`);
  };
  if (!meta || typeof meta !== 'object') bad('not an object');
  if (!(Number.isInteger(meta.resolution) && meta.resolution >= 16 && meta.resolution % 16 === 0)) {
    bad(`resolution ${meta.resolution} is not a multiple of 16`);
  }
  if (!['stretch', 'pad', 'crop'].includes(meta.aspect)) bad(`aspect '${String(meta.aspect)}'`);
  if (meta.tiling !== undefined && !TILINGS.includes(meta.tiling)) bad(`tiling '${String(meta.tiling)}'`);
  if (meta.channels !== 1 && meta.channels !== 3) bad(`channels ${meta.channels}`);
  for (const key of [
    'coresetRatio',
    'maxBank',
    'projectionDims',
    'seed',
    'patches',
    'sigma',
    'imageThreshold',
    'pixelThreshold',
  ] as const) {
    if (typeof meta[key] !== 'number' || !Number.isFinite(meta[key])) bad(`${key} is not a finite number`);
  }
  if (!(meta.sigma >= 0)) bad(`sigma ${meta.sigma}`);
  if (!meta.backbone) bad('no backbone metadata');
  if (!meta.facts || typeof meta.facts !== 'object') bad('no training facts');
}

/** What scoring runs: the feature extractor and the bank (with its squared row norms) as tensors. */
class PatchcoreScorer {
  private readonly features: PatchFeatures;
  private readonly bank: Tensor;
  private readonly bankNorms: Tensor;

  constructor(backbone: FeatureBackbone, bank: PatchcoreBank) {
    this.features = new PatchFeatures(backbone);
    this.bank = keep(Tensor.from(bank.data, [bank.size, bank.dims]));
    this.bankNorms = keep(noGrad(() => tidy(() => this.bank.square().sum(1))));
  }

  /** Nearest-bank-row distances [N * h * w] (image by image, row-major patches) of fitted images. */
  distances(images: readonly Image[]): Float32Array {
    return noGrad(() =>
      tidy(() => {
        const { rows } = this.features.patches(images);
        return nearestDistances(rows, this.bank, this.bankNorms).toFloat32Array();
      }),
    );
  }

  dispose(): void {
    this.features.dispose();
    this.bank.dispose();
    this.bankNorms.dispose();
  }
}

/** A fitted PatchCore model: backbone + memory bank + settings. Owns native memory: dispose(). */
export class PatchcoreModel {
  private readonly scorer: PatchcoreScorer;
  /** Patch grid side (resolution / 8). */
  readonly side: number;

  constructor(
    readonly backbone: FeatureBackbone,
    readonly bank: PatchcoreBank,
    readonly meta: PatchcoreModelMeta,
    private readonly maxBatch = 8,
  ) {
    checkModelMeta(meta, 'PatchcoreModel');
    const dims = patchcoreFeatureDims(backbone);
    if (!(Number.isInteger(bank.size) && bank.size >= 1) || bank.dims !== dims) {
      throw new Error(
        `PatchcoreModel: a bank of ${bank.size} rows x ${bank.dims} dims does not fit a backbone with ${dims} ` +
          `layer2 + layer3 channels`,
      );
    }
    if (bank.data.length !== bank.size * bank.dims) {
      throw new Error(`PatchcoreModel: bank has ${bank.data.length} values, expected ${bank.size} x ${bank.dims}`);
    }
    this.side = meta.resolution / PATCHCORE_STRIDE;
    backbone.eval();
    this.scorer = new PatchcoreScorer(backbone, bank);
  }

  /**
   * Anomaly maps at model resolution (nearest-neighbour distance per patch, upsampled, smoothed) and image scores
   * (the maximum patch distance) for images already fitted to resolution x resolution with the model's channels.
   */
  scoreFitted(inputs: readonly Image[]): { maps: Image[]; scores: Float32Array } {
    const res = this.meta.resolution;
    for (const [i, img] of inputs.entries()) {
      if (img.height !== res || img.width !== res) {
        throw new Error(`PatchcoreModel.scoreFitted: input ${i} is ${img.height}x${img.width}, expected ${res}x${res}`);
      }
    }
    const maps: Image[] = new Array(inputs.length);
    const scores = new Float32Array(inputs.length);
    const s = this.side;
    const per = s * s;
    for (let start = 0; start < inputs.length; start += this.maxBatch) {
      const chunk = inputs.slice(start, start + this.maxBatch);
      const distances = this.scorer.distances(chunk);
      if (distances.length !== chunk.length * per) {
        throw new Error(`PatchcoreModel: got ${distances.length} patch scores, expected ${chunk.length} x ${s}x${s}`);
      }
      chunk.forEach((_, i) => {
        const patch: Image = { channels: 1, height: s, width: s, data: distances.subarray(i * per, (i + 1) * per) };
        let max = -Infinity;
        for (const v of patch.data) if (v > max) max = v;
        maps[start + i] = postprocessDistanceMap(patch, res, res, this.meta.sigma);
        scores[start + i] = max;
      });
    }
    return { maps, scores };
  }

  /** Writes the model file atomically. */
  async save(file: string): Promise<void> {
    const tensors = new Map<string, Tensor>();
    const bank = Tensor.from(this.bank.data, [this.bank.size, this.bank.dims]);
    try {
      for (const [k, v] of this.backbone.tensors('backbone.')) tensors.set(k, v);
      tensors.set('patchcore.bank', bank);
      const meta: PatchcoreModelMeta = { ...this.meta, backbone: this.backbone.meta };
      await saveSafetensors(file, tensors, { format: PATCHCORE_FORMAT, meta: JSON.stringify(meta) });
    } finally {
      bank.dispose();
    }
  }

  /** Reads a model file; any other format, missing, corrupt or inconsistent content is rejected naming the file. */
  static async load(source: SafetensorsSource): Promise<PatchcoreModel> {
    const file = sourceName(source);
    return loadBackboneModelFile(source, {
      format: PATCHCORE_FORMAT,
      method: 'PatchCore',
      checkMeta: (meta: PatchcoreModelMeta, f) => checkModelMeta(meta, f),
      read: (tensors, meta): PatchcoreBank => {
        const t = tensors.get('patchcore.bank');
        if (!t) throw new Error(`${file}: PatchCore memory bank tensor 'patchcore.bank' is missing`);
        if (t.dtype !== 'float32') throw new Error(`${file}: 'patchcore.bank' is ${t.dtype}, expected float32`);
        if (t.ndim !== 2 || t.shape[0] < 1 || t.shape[1] < 1) {
          throw new Error(`${file}: 'patchcore.bank' has shape [${t.shape}], expected [rows, dims]`);
        }
        const data = t.toFloat32Array();
        for (let i = 0; i < data.length; i++) {
          if (!Number.isFinite(data[i])) throw new Error(`${file}: 'patchcore.bank' has a non-finite value`);
        }
        return { size: t.shape[0], dims: t.shape[1], data, patches: meta.patches };
      },
      create: (backbone, bank, meta) => new PatchcoreModel(backbone, bank, meta),
    });
  }

  dispose(): void {
    this.scorer.dispose();
    this.backbone.dispose();
  }
}

/** The AnomalyPredictor of a PatchCore model file (maps and scores: higher = more anomalous). */
export class PatchcorePredictor extends FittedModelPredictor<PatchcoreModel> {
  constructor(model: PatchcoreModel, maxBatch = 8) {
    const m = model.meta;
    super(
      model,
      'patchcore',
      {
        ...m.facts,
        backboneTraining: m.backbone.training.kind,
        backboneWidth: m.backbone.width,
        bankSize: model.bank.size,
        featureDims: model.bank.dims,
      },
      maxBatch,
    );
  }

  static async load(source: SafetensorsSource): Promise<PatchcorePredictor> {
    return new PatchcorePredictor(await PatchcoreModel.load(source));
  }
}
