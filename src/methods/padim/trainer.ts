/**
 * Fitting a PaDiM model (src/methods/padim/model.ts) to a folder of defect-free images and writing its model file.
 *
 * Data: an MVTec-layout category (train/good) or a plain folder of good images, fitted to resolution x resolution.
 * A deterministic validation split (splitValidation, 10%) is held out of the Gaussian fit and used only to choose
 * the thresholds: every validation image is scored as it is (normal) and with two synthetic anomalies
 * (makeSyntheticAnomaly, the paper's CutPaste settings); the image threshold maximises Youden's J between the
 * normal and the anomalous image scores, the pixel threshold likewise between map values outside and inside the
 * synthetic masks (every 7th pixel). The same data give a synthetic-validation image / pixel AUROC for the log.
 *
 * Backbones: 'random' (random-init ResNet18, width `width`, seeded), 'formula' (the shipped formula-pretrained
 * checkpoint assets/formula-backbone.safetensors) or the path of any backbone file (format anoseg.ts/backbone@1).
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { openTrainingData } from '../../data/dataset.js';
import type { FitAspect } from '../../image/io.js';
import type { Tiling } from '../../image/tiles.js';
import { openBackbone } from '../../models/backbone.js';
import {
  PADIM_DEFAULT_DIMS,
  PADIM_DEFAULT_RESOLUTION,
  PADIM_SIGMA,
  PadimModel,
  fitPadimStats,
  type PadimModelMeta,
} from './model.js';
import { PADIM_DEFAULT_EPS } from './stats.js';
import { writeFileAtomic } from '../../util/atomic.js';
import { ProgressBar, RunLog } from '../../util/progress.js';
import { syntheticValidation } from '../../train/validation.js';
import { loadTrainingImages, splitTrainingImages, thresholdBase } from '../../train/data.js';

export interface PadimTrainOptions {
  /** MVTec-layout category (train/good) or a plain folder of good images. */
  data: string;
  /** Run folder: model.safetensors, train.log, config.json. */
  out: string;
  /** 'random', 'formula' (shipped checkpoint) or a backbone file path. */
  backbone: 'random' | 'formula' | string;
  /** Model input side (multiple of 16; default PADIM_DEFAULT_RESOLUTION, 256). */
  resolution?: number;
  /** Modelled embedding channels (default 100). */
  dims?: number;
  /** Seed of the channel subset, the random backbone and the validation anomalies (default 0). */
  seed?: number;
  /** Width of a 'random' backbone (default 0.5, the width of the shipped formula backbone). */
  width?: number;
  aspect?: FitAspect;
  /** Near-square tiles of elongated images (src/image/tiles.ts; default 'none'). */
  tiling?: Tiling;
  validationFraction?: number;
  /** Images per feature-extraction batch (default 8). */
  batch?: number;
  eps?: number;
  /** Progress bar on stderr (default true). */
  progress?: boolean;
}

export interface PadimTrainResult {
  modelPath: string;
  minutes: number;
  trainImages: number;
  validationImages: number;
  imageThreshold: number;
  pixelThreshold: number;
  /** Image / pixel AUROC on the validation normals vs their synthetic anomalies. */
  validationImageAuroc: number;
  validationPixelAuroc: number;
}

export async function trainPadim(o: PadimTrainOptions): Promise<PadimTrainResult> {
  const resolution = o.resolution ?? PADIM_DEFAULT_RESOLUTION;
  if (!(Number.isInteger(resolution) && resolution >= 32 && resolution % 16 === 0)) {
    throw new Error(`trainPadim: resolution must be a multiple of 16 and >= 32, got ${resolution}`);
  }
  const seed = o.seed ?? 0;
  const dimsWanted = o.dims ?? PADIM_DEFAULT_DIMS;
  if (!(Number.isInteger(dimsWanted) && dimsWanted >= 1))
    throw new Error(`trainPadim: dims must be an integer >= 1, got ${dimsWanted}`);
  const aspect = o.aspect ?? 'stretch';
  const tiling = o.tiling ?? 'none';
  const eps = o.eps ?? PADIM_DEFAULT_EPS;
  const showProgress = o.progress ?? true;
  const t0 = performance.now();
  const minutes = (): number => (performance.now() - t0) / 60000;
  await fs.mkdir(o.out, { recursive: true });
  const log = new RunLog(path.join(o.out, 'train.log'));

  const paths = (await openTrainingData(o.data)).train;
  const loaded = await loadTrainingImages(
    paths,
    resolution,
    aspect,
    'auto',
    (f) => log.info(`skipped unreadable training image ${f.path}: ${f.reason}`),
    tiling,
  );
  const { train, validation, validationTiles } = splitTrainingImages(loaded, o.validationFraction ?? 0.1);
  log.info(
    `data ${o.data}: ${train.length} training, ${validation.length} validation images, ${loaded.channels} channel(s), ${resolution} px`,
  );

  const { backbone, label } = await openBackbone(o.backbone, o.width ?? 0.5, seed);
  let model: PadimModel | null = null;
  try {
    log.info(`backbone ${label}: ${backbone.embeddingDims} embedding dims`);
    const bar = showProgress ? new ProgressBar(train.length, 'padim fit', process.stderr) : null;
    const stats = fitPadimStats(backbone, train, {
      dims: dimsWanted,
      seed,
      eps,
      batch: o.batch,
      onProgress: (done) => bar?.update(done),
    });
    bar?.finish();
    log.info(
      `fitted ${stats.dims} of ${stats.inputDims} dims at ${stats.height}x${stats.width} positions on ${stats.count} images`,
    );
    const meta: PadimModelMeta = {
      resolution,
      aspect,
      tiling,
      channels: loaded.channels,
      dims: stats.dims,
      seed,
      eps,
      sigma: PADIM_SIGMA,
      backbone: backbone.meta,
      imageThreshold: 0,
      pixelThreshold: 0,
      facts: {},
    };
    model = new PadimModel(backbone, stats, meta);

    // Thresholds from held-out normals and their synthetic anomalies.
    const valBase = thresholdBase(train, validation, validationTiles);
    if (valBase.fromTraining)
      log.info('too few images for a validation split: thresholds come from training images (biased low)');
    const v = syntheticValidation((x) => model!.scoreFitted(x), valBase.images, seed, valBase.tilesPerImage);
    meta.imageThreshold = v.imageThreshold;
    meta.pixelThreshold = v.pixelThreshold;
    const validationImageAuroc = v.imageAuroc;
    const validationPixelAuroc = v.pixelAuroc;
    meta.facts = {
      data: path.resolve(o.data),
      backbone: label,
      trainImages: train.length,
      validationImages: validation.length,
      validationImageAuroc: Number(validationImageAuroc.toFixed(4)),
      validationPixelAuroc: Number(validationPixelAuroc.toFixed(4)),
      seed,
      minutes: Number(minutes().toFixed(2)),
      trainedAt: new Date().toISOString(),
    };
    const modelPath = path.join(o.out, 'model.safetensors');
    await model.save(modelPath);
    await writeFileAtomic(
      path.join(o.out, 'config.json'),
      `${JSON.stringify({ data: o.data, backbone: o.backbone, resolution, dims: dimsWanted, seed, width: o.width ?? 0.5, aspect, tiling, eps, validationFraction: o.validationFraction ?? 0.1 }, null, 2)}\n`,
    );
    log.info(
      `saved ${modelPath}: image threshold ${meta.imageThreshold.toFixed(4)}, pixel threshold ${meta.pixelThreshold.toFixed(4)}, ` +
        `synthetic validation image AUROC ${validationImageAuroc.toFixed(3)}, pixel AUROC ${validationPixelAuroc.toFixed(3)}, ${minutes().toFixed(2)} min`,
    );
    return {
      modelPath,
      minutes: minutes(),
      trainImages: train.length,
      validationImages: validation.length,
      imageThreshold: meta.imageThreshold,
      pixelThreshold: meta.pixelThreshold,
      validationImageAuroc,
      validationPixelAuroc,
    };
  } finally {
    if (model) model.dispose();
    else backbone.dispose();
  }
}
