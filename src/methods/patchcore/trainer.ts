/**
 * Fitting a PatchCore model (src/methods/patchcore/model.ts) to a folder of defect-free images and writing its model file;
 * the same data handling, held-out split, thresholds and run folder as trainPadim (src/methods/padim/trainer.ts).
 *
 * Data: an MVTec-layout category (train/good) or a plain folder of good images, fitted to resolution x resolution.
 * A deterministic validation split (splitValidation, 10%) is held out of the memory bank and used only to choose the
 * thresholds: every validation image is scored as it is (normal) and with two synthetic anomalies
 * (makeSyntheticAnomaly, the paper's CutPaste settings); the image threshold maximises Youden's J between the normal
 * and the anomalous image scores, the pixel threshold likewise between map values outside and inside the synthetic
 * masks (every 7th pixel). The same data give a synthetic-validation image / pixel AUROC for the log.
 *
 * Backbones: 'random' (random-init ResNet18, width `width`, seeded), 'formula' (the shipped formula-pretrained
 * checkpoint assets/formula-backbone.safetensors) or the path of any backbone file (format anoseg.ts/backbone@1).
 *
 * Defaults and validation live in resolvePatchcoreOptions, so a command line can reuse them.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { openTrainingData } from '../../data/dataset.js';
import type { FitAspect } from '../../image/io.js';
import { TILINGS, type Tiling } from '../../image/tiles.js';
import { openBackbone } from '../../models/backbone.js';
import {
  PATCHCORE_DEFAULT_CORESET_RATIO,
  PATCHCORE_DEFAULT_MAX_BANK,
  PATCHCORE_PROJECTION_DIMS,
  PATCHCORE_SIGMA,
  PatchcoreModel,
  fitPatchcoreBank,
  type PatchcoreModelMeta,
} from './model.js';
import { writeFileAtomic } from '../../util/atomic.js';
import { ProgressBar, RunLog } from '../../util/progress.js';
import { loadTrainingImages, splitTrainingImages, thresholdBase } from '../../train/data.js';
import { syntheticValidation } from '../../train/validation.js';

export interface PatchcoreTrainOptions {
  /** MVTec-layout category (train/good) or a plain folder of good images. */
  data: string;
  /** Run folder: model.safetensors, train.log, config.json. */
  out: string;
  /** 'random', 'formula' (shipped checkpoint) or a backbone file path (default 'formula'). */
  backbone?: 'random' | 'formula' | string;
  /** Model input side (multiple of 16, >= 32; default 256: 32 x 32 patches at stride 8). */
  resolution?: number;
  /** Fraction of the training patches kept in the memory bank (in (0, 1]; default 0.1). */
  coresetRatio?: number;
  /** Most memory-bank rows (integer >= 1; default 16,384). */
  maxBank?: number;
  /** Random-projection dims of the coreset distances (integer >= 0, 0 = exact distances; default 128). */
  projectionDims?: number;
  /** Seed of the coreset (projection, start), the random backbone and the validation anomalies (default 0). */
  seed?: number;
  /** Width of a 'random' backbone (default 0.5, the width of the shipped formula backbone). */
  width?: number;
  /** How images of another aspect ratio are fitted to the square input (default 'stretch'). */
  aspect?: FitAspect;
  /** Near-square tiles of elongated images (src/image/tiles.ts; default 'none'). */
  tiling?: Tiling;
  /** Share of the training images held out for the thresholds (in [0, 0.5]; default 0.1). */
  validationFraction?: number;
  /** Images per feature-extraction batch (default 8). */
  batch?: number;
  /** Progress bars on stderr (default true). */
  progress?: boolean;
}

export type ResolvedPatchcoreOptions = Required<PatchcoreTrainOptions>;

export const PATCHCORE_TRAIN_DEFAULTS: Omit<ResolvedPatchcoreOptions, 'data' | 'out'> = {
  backbone: 'formula',
  resolution: 256,
  coresetRatio: PATCHCORE_DEFAULT_CORESET_RATIO,
  maxBank: PATCHCORE_DEFAULT_MAX_BANK,
  projectionDims: PATCHCORE_PROJECTION_DIMS,
  seed: 0,
  width: 0.5,
  aspect: 'stretch',
  tiling: 'none',
  validationFraction: 0.1,
  batch: 8,
  progress: true,
};

/** Fills in the defaults and checks every option; errors name the option and the value. */
export function resolvePatchcoreOptions(o: PatchcoreTrainOptions): ResolvedPatchcoreOptions {
  const r: ResolvedPatchcoreOptions = { ...PATCHCORE_TRAIN_DEFAULTS, ...stripUndefined(o) } as ResolvedPatchcoreOptions;
  const bad = (what: string, v: unknown): never => {
    throw new Error(`trainPatchcore: ${what}, got ${typeof v === 'string' ? `'${v}'` : String(v)}`);
  };
  if (typeof r.data !== 'string' || r.data === '') bad('data must be a folder', r.data);
  if (typeof r.out !== 'string' || r.out === '') bad('out must be a folder', r.out);
  if (typeof r.backbone !== 'string' || r.backbone === '')
    bad("backbone must be 'random', 'formula' or a file", r.backbone);
  const int = (v: number): boolean => Number.isInteger(v);
  if (!(int(r.resolution) && r.resolution >= 32 && r.resolution % 16 === 0))
    bad('resolution must be a multiple of 16 and >= 32', r.resolution);
  if (!(r.coresetRatio > 0 && r.coresetRatio <= 1)) bad('coresetRatio must be in (0, 1]', r.coresetRatio);
  if (!(int(r.maxBank) && r.maxBank >= 1)) bad('maxBank must be an integer >= 1', r.maxBank);
  if (!(int(r.projectionDims) && r.projectionDims >= 0))
    bad('projectionDims must be an integer >= 0', r.projectionDims);
  if (!(int(r.seed) && r.seed >= 0)) bad('seed must be an integer >= 0', r.seed);
  if (!(r.width > 0 && r.width <= 4)) bad('width must be in (0, 4]', r.width);
  if (!['stretch', 'pad', 'crop'].includes(r.aspect)) bad('aspect must be stretch, pad or crop', r.aspect);
  if (!TILINGS.includes(r.tiling)) bad(`tiling must be ${TILINGS.join(' or ')}`, r.tiling);
  if (!(r.validationFraction >= 0 && r.validationFraction <= 0.5))
    bad('validationFraction must be in [0, 0.5]', r.validationFraction);
  if (!(int(r.batch) && r.batch >= 1)) bad('batch must be an integer >= 1', r.batch);
  if (typeof r.progress !== 'boolean') bad('progress must be true or false', r.progress);
  return r;
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

export interface PatchcoreTrainResult {
  modelPath: string;
  minutes: number;
  /** Minutes of feature extraction + coreset selection. */
  fitMinutes: number;
  trainImages: number;
  validationImages: number;
  /** Training patches and the memory-bank rows chosen from them. */
  patches: number;
  bankSize: number;
  imageThreshold: number;
  pixelThreshold: number;
  /** Image / pixel AUROC on the validation normals vs their synthetic anomalies. */
  validationImageAuroc: number;
  validationPixelAuroc: number;
}

/** Fits PatchCore on a folder of good images and writes OUT/model.safetensors, OUT/config.json, OUT/train.log. */
export async function trainPatchcore(options: PatchcoreTrainOptions): Promise<PatchcoreTrainResult> {
  const o = resolvePatchcoreOptions(options);
  const t0 = performance.now();
  const minutes = (): number => (performance.now() - t0) / 60000;
  await fs.mkdir(o.out, { recursive: true });
  const log = new RunLog(path.join(o.out, 'train.log'));

  const paths = (await openTrainingData(o.data)).train;
  const loaded = await loadTrainingImages(
    paths,
    o.resolution,
    o.aspect,
    'auto',
    (f) => log.info(`skipped unreadable training image ${f.path}: ${f.reason}`),
    o.tiling,
  );
  const { train, validation, validationTiles } = splitTrainingImages(loaded, o.validationFraction);
  log.info(
    `data ${o.data}: ${train.length} training, ${validation.length} validation images, ${loaded.channels} channel(s), ${o.resolution} px`,
  );

  const { backbone, label } = await openBackbone(o.backbone, o.width, o.seed);
  let model: PatchcoreModel | null = null;
  try {
    const [, c2, c3] = backbone.featureChannels;
    log.info(`backbone ${label}: layer2 + layer3 = ${c2} + ${c3} patch feature dims`);
    const tFit = performance.now();
    const extractBar = o.progress ? new ProgressBar(train.length, 'patchcore features', process.stderr) : null;
    let coresetBar: ProgressBar | null = null;
    const bank = await fitPatchcoreBank(backbone, train, {
      coresetRatio: o.coresetRatio,
      maxBank: o.maxBank,
      projectionDims: o.projectionDims,
      seed: o.seed,
      batch: o.batch,
      onProgress: (done) => {
        extractBar?.update(done);
        if (done === train.length) extractBar?.finish();
      },
      onCoresetProgress: (done, total) => {
        if (!o.progress) return;
        coresetBar ??= new ProgressBar(total, 'patchcore coreset', process.stderr);
        coresetBar.update(done);
        if (done === total) coresetBar.finish();
      },
    });
    const fitMinutes = (performance.now() - tFit) / 60000;
    log.info(
      `memory bank: ${bank.size} of ${bank.patches} training patches (${((100 * bank.size) / bank.patches).toFixed(2)}%; ` +
        `ratio ${o.coresetRatio}, at most ${o.maxBank}), ${bank.dims} dims, ${fitMinutes.toFixed(2)} min`,
    );
    const meta: PatchcoreModelMeta = {
      resolution: o.resolution,
      aspect: o.aspect,
      tiling: o.tiling,
      channels: loaded.channels,
      coresetRatio: o.coresetRatio,
      maxBank: o.maxBank,
      projectionDims: o.projectionDims,
      seed: o.seed,
      patches: bank.patches,
      sigma: PATCHCORE_SIGMA,
      backbone: backbone.meta,
      imageThreshold: 0,
      pixelThreshold: 0,
      facts: {},
    };
    model = new PatchcoreModel(backbone, bank, meta);

    const valBase = thresholdBase(train, validation, validationTiles);
    if (valBase.fromTraining)
      log.info('too few images for a validation split: thresholds come from training images (biased low)');
    const current = model;
    const v = syntheticValidation((x) => current.scoreFitted(x), valBase.images, o.seed, valBase.tilesPerImage);
    meta.imageThreshold = v.imageThreshold;
    meta.pixelThreshold = v.pixelThreshold;
    meta.facts = {
      data: path.resolve(o.data),
      backbone: label,
      trainImages: train.length,
      validationImages: validation.length,
      bankSize: bank.size,
      validationImageAuroc: Number(v.imageAuroc.toFixed(4)),
      validationPixelAuroc: Number(v.pixelAuroc.toFixed(4)),
      seed: o.seed,
      fitMinutes: Number(fitMinutes.toFixed(2)),
      minutes: Number(minutes().toFixed(2)),
      trainedAt: new Date().toISOString(),
    };
    const modelPath = path.join(o.out, 'model.safetensors');
    await model.save(modelPath);
    const { progress: _progress, ...config } = o;
    await writeFileAtomic(
      path.join(o.out, 'config.json'),
      `${JSON.stringify({ method: 'patchcore', ...config }, null, 2)}\n`,
    );
    log.info(
      `saved ${modelPath}: image threshold ${meta.imageThreshold.toFixed(4)}, pixel threshold ${meta.pixelThreshold.toFixed(4)}, ` +
        `synthetic validation image AUROC ${v.imageAuroc.toFixed(3)}, pixel AUROC ${v.pixelAuroc.toFixed(3)}, ${minutes().toFixed(2)} min`,
    );
    return {
      modelPath,
      minutes: minutes(),
      fitMinutes,
      trainImages: train.length,
      validationImages: validation.length,
      patches: bank.patches,
      bankSize: bank.size,
      imageThreshold: meta.imageThreshold,
      pixelThreshold: meta.pixelThreshold,
      validationImageAuroc: v.imageAuroc,
      validationPixelAuroc: v.pixelAuroc,
    };
  } finally {
    if (model) model.dispose();
    else backbone.dispose();
  }
}
