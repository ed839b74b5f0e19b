/**
 * AnoSeg training run: data, synthetic anomalies, the optimisation loop, diagnostics (held-out synthetic
 * validation AUROC and, where the data has a test split, real test image AUROC over all test images and pixel
 * AUROC over those with masks, over time), atomic checkpoints with resume, BatchNorm re-estimation, threshold
 * choice, and the final model file; optionally an early snapshot finished as a second model file.
 */
import { existsSync, promises as fs } from 'node:fs';
import path from 'node:path';
import { Tensor, manualSeed, noGrad, releaseDeferred, tidy } from '../../engine/index.js';
import {
  Adam,
  loadSafetensors,
  prefixed,
  reestimateBatchNorm,
  saveSafetensors,
  withoutPrefix,
} from '../../nn/index.js';
import {
  AnoSegGenerator,
  anoSegDiscriminator,
  cropCoordinates,
  type AnoSegArchitecture,
  type Discriminator,
} from './network.js';
import { initialiseEncoder, loadEncoderBackbone } from './encoder-init.js';
import { saveAnoSegModel, scoreBatch, type AnoSegModelMeta } from './model-file.js';
import { imagesToTensor } from '../../models/image-tensor.js';
import { DEFAULT_RECONSTRUCTION_BLUR, scoreParts, type ScoreOptions } from '../../models/scoring.js';
import { openTrainingData, loadMask, type TestItem } from '../../data/dataset.js';
import { fitImage, loadImage } from '../../image/io.js';
import { cropTiles, tileRects } from '../../image/tiles.js';
import type { Image } from '../../image/types.js';
import { auroc } from '../../eval/metrics.js';
import { escapeHtml, renderLineChart } from '../../eval/report.js';
import { Rng } from '../../util/rng.js';
import { anosegTrainStep, type StepLosses } from './step.js';
import { rankSeedOffset, type DataParallel } from '../../train/data-parallel.js';
import {
  adversarialSettings,
  discriminatorStepOptions,
  settingsDifferences,
  validateConfig,
  type AnoSegTrainConfig,
} from './config.js';
import {
  loadTrainingSet,
  makeSegmentationBatch,
  syntheticValidationSet,
  thresholdBase,
  type SyntheticValidationSet,
} from '../../train/data.js';
import { RunClock, runTrainingLoop } from '../../train/loop.js';
import { RunFolder, identityDifferences, type CurvesPage } from '../../train/run-folder.js';
import { thresholdsFromValidation, type SyntheticValidation } from '../../train/validation.js';

export const CHECKPOINT_FORMAT = 'anoseg.ts/checkpoint@1';
export const EARLY_SNAPSHOT_FORMAT = 'anoseg.ts/early-snapshot@1';
/** The generator at config.earlySnapshotStep, in the run folder until finishRun turns it into a model file. */
export const EARLY_SNAPSHOT_FILE = 'early-snapshot.safetensors';
export const EARLY_MODEL_FILE = 'early-model.safetensors';

export interface TrainRunOptions {
  /** MVTec-layout category folder (train/good used for training) or a plain folder of good images. */
  data: string;
  /** Run folder: checkpoint, model, logs, curves. */
  out: string;
  config: AnoSegTrainConfig;
  /** Continue from out/checkpoint.safetensors if present (default true). */
  resume?: boolean;
  /** Print progress to stderr (default true). */
  progress?: boolean;
  /**
   * Data-parallel training: this process is one rank of the group. Each rank trains on its own shard of the
   * training images with batch/worldSize images per step; gradients are averaged; rank 0 alone writes files.
   * Every rank must see the same data and, to resume, the same checkpoint (a shared --out folder).
   */
  distributed?: DataParallel;
}

export interface DiagnosticPoint {
  step: number;
  minutes: number;
  syntheticPixelAuroc: number;
  testPixelAuroc: number | null;
  testImageAuroc: number | null;
  /** L_Seg on the synthetic validation batch in eval mode vs train-mode BatchNorm (BN drift check). */
  evalSegLoss: number;
}

export interface TrainResult {
  modelPath: string;
  /** The model of the early snapshot (config.earlySnapshotStep) when the run took one and went on to twice its steps. */
  earlyModelPath: string | null;
  steps: number;
  minutes: number;
  diagnostics: DiagnosticPoint[];
}

interface TestSet {
  images: Image[];
  /** 1 = defect; null for a defective image without a mask (image-level only). */
  gt: (Image | null)[];
  anomalous: boolean[];
}

/**
 * The real test split for logged diagnostics: every readable test image (image AUROC over all of them) and, for
 * the images with pixel ground truth (good images and defective images with a mask), their masks (pixel AUROC
 * over those only). Null without test images.
 */
async function loadTestSet(items: TestItem[], cfg: AnoSegTrainConfig, channels: 1 | 3): Promise<TestSet | null> {
  if (items.length === 0) return null;
  const res = cfg.arch.resolution;
  const set: TestSet = { images: [], gt: [], anomalous: [] };
  for (const item of items) {
    try {
      const full = await loadImage(item.path, { channels });
      const rects = tileRects(full.height, full.width, cfg.tiling ?? 'none');
      const mask = item.maskPath ? await loadMask(item.maskPath, full.height, full.width) : null;
      const maskTiles = mask ? cropTiles(mask, rects) : null;
      // with tiling every tile is a test image; a tile of a defective image is anomalous where its mask says so (an
      // untiled image keeps its label, also with an empty mask)
      cropTiles(full, rects).forEach((tile, k) => {
        let gt: Image | null = null;
        if (maskTiles) {
          gt = fitImage(maskTiles[k], res, cfg.aspect, { padFill: 'black' }).image;
          for (let i = 0; i < gt.data.length; i++) gt.data[i] = gt.data[i] >= 0.5 ? 1 : 0;
        } else if (item.defect === 'good') {
          gt = { channels: 1, height: res, width: res, data: new Float32Array(res * res) };
        }
        set.images.push(fitImage(tile, res, cfg.aspect).image);
        set.gt.push(gt);
        const tiled = rects.length > 1;
        set.anomalous.push(item.defect !== 'good' && (!tiled || gt === null || gt.data.some((v) => v > 0)));
      });
    } catch {
      // unreadable test files are reported by `anoseg eval`; diagnostics just skip them
    }
  }
  return set.images.length ? set : null;
}

/** What the test diagnostics cover, for the log: image AUROC over all images, pixel AUROC over the masked ones. */
function describeTestSet(t: TestSet): string {
  const withGt = t.gt.filter((g) => g !== null).length;
  const defectiveWithMask = t.gt.filter((g, i) => g !== null && t.anomalous[i]).length;
  return (
    `${t.images.length} test images (${t.anomalous.filter(Boolean).length} defective, ${defectiveWithMask} of them ` +
    `with masks; pixel AUROC over the ${withGt} images with pixel ground truth` +
    `${defectiveWithMask === 0 ? ': no defective image has a mask, so no pixel AUROC' : ''})`
  );
}

function evalSegLoss(generator: AnoSegGenerator, val: SyntheticValidationSet): number {
  return noGrad(() =>
    tidy(() => {
      const x = imagesToTensor(val.images.slice(0, 16));
      const a = imagesToTensor(val.masks.slice(0, 16));
      return generator.forward(x).map.sub(a).abs().mean().item();
    }),
  );
}

/**
 * Scores images 16 at a time, turning the event loop after each batch (releaseDeferred): without the turn the
 * handles' native wrappers pin freed blocks and the heap grew ~0.3 GB per batch at 256 px (a 582-image test set
 * ran a training out of memory).
 */
async function scoreInBatches(
  generator: AnoSegGenerator,
  images: Image[],
  score: ScoreOptions,
): Promise<{ maps: Image[]; scores: number[] }> {
  const maps: Image[] = [];
  const scores: number[] = [];
  for (let i = 0; i < images.length; i += 16) {
    const r = scoreBatch(generator, images.slice(i, i + 16), score);
    maps.push(...r.maps);
    scores.push(...r.scores);
    await releaseDeferred();
  }
  return { maps, scores };
}

/** Standard deviations of 1 - map and of the reconstruction error (blurred with `blur`) over every pixel of `images`. */
export async function scorePartSpreads(
  generator: AnoSegGenerator,
  images: readonly Image[],
  blur: number,
): Promise<{ map: number; error: number } | null> {
  if (!generator.reconstructionDecoder || images.length === 0) return null;
  // sums in float64 of the values less a shift (the first value seen), so that a spread far below the mean keeps
  // its digits: the plain sum of squares loses them (a near-constant map gave 3e-7 for 4e-10)
  const sums = { map: [0, 0, Number.NaN], error: [0, 0, Number.NaN], n: 0 };
  for (let i = 0; i < images.length; i += 16) {
    noGrad(() =>
      tidy(() => {
        const x = imagesToTensor(images.slice(i, i + 16));
        const out = generator.forward(x);
        const { anomaly, error } = scoreParts(x, out.map, out.reconstruction, blur);
        for (const [key, t] of [
          ['map', anomaly],
          ['error', error as Tensor],
        ] as const) {
          const sum = sums[key];
          const values = t.toFloat32Array();
          if (Number.isNaN(sum[2])) sum[2] = values[0];
          for (const v of values) {
            const d = v - sum[2];
            sum[0] += d;
            sum[1] += d * d;
          }
        }
        sums.n += anomaly.numel;
      }),
    );
    await releaseDeferred();
  }
  const std = ([s, q]: number[]) => Math.sqrt(Math.max(0, q / sums.n - (s / sums.n) ** 2));
  return { map: std(sums.map), error: std(sums.error) };
}

/**
 * The score settings of the config for this generator. With reconstructionScoreScale 'standardised' the error's
 * weight is put on the scale of 1 - map: multiplied by std(1 - map) / std(error) over the pixels of the held-out
 * good images (the validation set's normal images), so the weight means the same on every category. The raw sum
 * weighted the error 1.4-4x below the map on the development sets (docs/quality-rounds.md, tenth round).
 */
async function scoreSettings(
  generator: AnoSegGenerator,
  cfg: AnoSegTrainConfig,
  val: SyntheticValidationSet,
): Promise<{ score: ScoreOptions; spreads: { map: number; error: number } | null }> {
  const base = {
    sigma: cfg.scoreSigma,
    imageScore: cfg.imageScore ?? 'map+reconstruction',
    reconstructionBlur: cfg.reconstructionScoreBlur ?? DEFAULT_RECONSTRUCTION_BLUR,
  } as const;
  const weight = cfg.reconstructionScoreWeight;
  if ((cfg.reconstructionScoreScale ?? 'raw') === 'raw' || weight === 0)
    return { score: { ...base, reconstructionWeight: weight }, spreads: null };
  const normal = val.images.filter((_, i) => val.masks[i].data.every((v) => v >= 0.5));
  const spreads = await scorePartSpreads(generator, normal, base.reconstructionBlur);
  // without a reconstruction decoder or with a constant error there is nothing to put on a scale
  const usable = spreads !== null && spreads.map > 0 && spreads.error > 0;
  return {
    score: { ...base, reconstructionWeight: usable ? (weight * spreads.map) / spreads.error : weight },
    spreads: usable ? spreads : null,
  };
}

function pixelAuroc(maps: Image[], defectMasks: Image[]): number {
  const n = maps.reduce((s, m) => s + m.data.length, 0);
  const scores = new Float32Array(n);
  const labels = new Uint8Array(n);
  let o = 0;
  maps.forEach((m, i) => {
    scores.set(m.data, o);
    const g = defectMasks[i].data;
    for (let j = 0; j < g.length; j++) labels[o + j] = g[j] > 0.5 ? 1 : 0;
    o += m.data.length;
  });
  return auroc(scores, labels);
}

async function diagnose(
  generator: AnoSegGenerator,
  cfg: AnoSegTrainConfig,
  val: SyntheticValidationSet,
  test: TestSet | null,
  step: number,
  minutes: number,
): Promise<DiagnosticPoint> {
  generator.eval();
  const { score } = await scoreSettings(generator, cfg, val);
  const synth = await scoreInBatches(generator, val.images, score);
  const invMasks = val.masks.map((m) => ({ ...m, data: m.data.map((v) => 1 - v) }));
  const point: DiagnosticPoint = {
    step,
    minutes,
    syntheticPixelAuroc: pixelAuroc(synth.maps, invMasks),
    testPixelAuroc: null,
    testImageAuroc: null,
    evalSegLoss: evalSegLoss(generator, val),
  };
  if (test) {
    const r = await scoreInBatches(generator, test.images, score);
    const withGt = test.gt.flatMap((g, i) => (g === null ? [] : [i]));
    const pixelPositives = withGt.some((i) => (test.gt[i] as Image).data.some((v) => v > 0.5));
    point.testPixelAuroc = pixelPositives
      ? pixelAuroc(
          withGt.map((i) => r.maps[i]),
          withGt.map((i) => test.gt[i] as Image),
        )
      : null;
    point.testImageAuroc =
      test.anomalous.some((a) => a) && test.anomalous.some((a) => !a) ? auroc(r.scores, test.anomalous) : null;
  }
  generator.train();
  return point;
}

/**
 * The adversarial balance charts of the curves page (runs with L_Adv): D's accuracy on real and fake pairs, and the
 * norms of the gradients of the weighted L_Seg and L_Adv w.r.t. the map, from the smoothed step figures.
 */
function adversarialCharts(losses: { step: number; l: Partial<StepLosses> }[]): string {
  const series = (name: string, pick: (l: Partial<StepLosses>) => number | undefined) => ({
    name,
    x: losses.map((q) => q.step),
    y: losses.map((q) => pick(q.l) ?? Number.NaN),
  });
  const accuracy = renderLineChart(
    [
      series('D accuracy, real pairs', (l) => l.dRealAccuracy),
      series('D accuracy, fake pairs', (l) => l.dFakeAccuracy),
    ],
    { title: 'Discriminator accuracy', xLabel: 'step', yLabel: 'accuracy', yDomain: [0, 1] },
  );
  const gradients = renderLineChart(
    [
      series('|grad of L_Seg term w.r.t. map|', (l) => l.segGradNorm),
      series('|grad of L_Adv term w.r.t. map|', (l) => l.advGradNorm),
    ],
    { title: 'Gradient norms at the map', xLabel: 'step', yLabel: 'L2 norm' },
  );
  return `<h2>Adversarial balance</h2>${accuracy}${gradients}`;
}

/** The curves page: smoothed losses, diagnostics over time and their table. */
function curvesPage(
  losses: { step: number; l: StepLosses }[],
  diags: DiagnosticPoint[],
  title: string,
  cfg: AnoSegTrainConfig,
): CurvesPage {
  const adversarial = cfg.loss.adversarialWeight > 0;
  const points = (pick: (d: DiagnosticPoint) => number | null): { step: number; value: number | null }[] =>
    diags.map((d) => ({ step: d.step, value: pick(d) }));
  const rows = diags
    .map(
      (d) =>
        `<tr><td>${d.step}</td><td>${d.minutes.toFixed(1)}</td><td>${d.syntheticPixelAuroc.toFixed(3)}</td>` +
        `<td>${d.testPixelAuroc?.toFixed(3) ?? '-'}</td><td>${d.testImageAuroc?.toFixed(3) ?? '-'}</td><td>${d.evalSegLoss.toFixed(3)}</td></tr>`,
    )
    .join('');
  return {
    title: `${escapeHtml(title)} training`,
    heading: 'Training curves',
    losses,
    lossKeys: [
      'seg',
      'reconstruction',
      'adversarial',
      'discriminator',
      ...(adversarial && adversarialSettings(cfg).r1Weight > 0 ? ['r1'] : []),
    ],
    lossTitle: 'Training losses',
    diagnostics: [
      { name: 'synthetic validation pixel AUROC', points: points((d) => d.syntheticPixelAuroc) },
      { name: 'real test pixel AUROC', points: points((d) => d.testPixelAuroc) },
      { name: 'real test image AUROC', points: points((d) => d.testImageAuroc), dashed: true },
    ],
    style: 'table{border-collapse:collapse}td,th{padding:2px 8px;border-bottom:1px solid #ddd}',
    after:
      (adversarial ? adversarialCharts(losses) : '') +
      `<table><tr><th>step</th><th>min</th><th>synthetic val pixel AUROC</th>` +
      `<th>test pixel AUROC</th><th>test image AUROC</th><th>eval-mode L_Seg</th></tr>${rows}</table>`,
  };
}

/**
 * Learning rate at a point of the run; `progress` in [0, 1] is the larger of the step fraction and, with a
 * time budget, the elapsed-time fraction, so a budget-limited run still anneals to the end of its budget.
 */
function scheduledLr(cfg: AnoSegTrainConfig, progress: number): number {
  if (cfg.schedule === 'constant') return cfg.lr;
  const floor = 0.05 * cfg.lr;
  return floor + (cfg.lr - floor) * 0.5 * (1 + Math.cos(Math.PI * Math.min(1, progress)));
}

/** The networks and optimisers of a run. */
interface AnoSegNets {
  generator: AnoSegGenerator;
  discriminator: Discriminator | null;
  optG: Adam;
  optD: Adam | null;
}

function createNets(cfg: AnoSegTrainConfig): AnoSegNets {
  manualSeed(cfg.seed);
  const generator = new AnoSegGenerator(cfg.arch);
  const adv = adversarialSettings(cfg);
  const discriminator: Discriminator | null =
    cfg.loss.adversarialWeight > 0
      ? anoSegDiscriminator(cfg.arch, cfg.trainCrop ?? cfg.arch.resolution, { spectralNorm: adv.spectralNorm })
      : null;
  const optG = new Adam(generator.parameters(), { lr: cfg.lr, betas: cfg.betas });
  const optD = discriminator ? new Adam(discriminator.parameters(), { lr: cfg.lr * adv.dLr, betas: cfg.betas }) : null;
  return { generator, discriminator, optG, optD };
}

/** A checkpoint of another architecture (the discriminator's spectral normalisation included) cannot be resumed. */
function checkArchitecture(file: string, saved: AnoSegTrainConfig, cfg: AnoSegTrainConfig): void {
  // architectures written before the skips lever existed have no 'skips' field: they had none
  const withSkips = (a: AnoSegArchitecture): AnoSegArchitecture => ({ ...a, skips: a.skips ?? false });
  const diff = identityDifferences(saved.arch ? withSkips(saved.arch) : undefined, withSkips(cfg.arch));
  const sn = (c: AnoSegTrainConfig): boolean => c.loss?.adversarialWeight > 0 && adversarialSettings(c).spectralNorm;
  if (saved.arch && sn(saved) !== sn(cfg)) diff.push(`discriminator spectral norm ${sn(saved)} vs ${sn(cfg)}`);
  if (diff.length) {
    throw new Error(
      `${file} was trained with another architecture (${diff.join(', ')}); use a new --out folder or the same settings`,
    );
  }
}

/** What the run's data gives the loop and the final steps. */
interface AnoSegData {
  pool: Image[];
  val: SyntheticValidationSet;
  testSet: TestSet | null;
  /**
   * A training batch as tensors: images, masks (1 = normal) and, when cropping, the crops' coordinates; with
   * `anomalyFraction`, that share of its images carries a synthetic anomaly instead of the config's.
   */
  trainingBatch(rng: Rng, anomalyFraction?: number): { x: Tensor; a: Tensor; coords?: Tensor };
}

async function prepareData(
  cfg: AnoSegTrainConfig,
  trainPaths: string[],
  test: TestItem[],
  run: RunFolder,
  o: TrainRunOptions,
): Promise<AnoSegData> {
  const dp = run.dp;
  const set = await loadTrainingSet(trainPaths, {
    resolution: cfg.arch.resolution,
    aspect: cfg.aspect,
    tiling: cfg.tiling ?? 'none',
    channels: 'auto',
    validationFraction: cfg.validationFraction,
    log: run.log,
    warn: (o.progress ?? true) && run.isMain,
  });
  cfg.arch.channels = set.channels;
  const { pool, validation } = set;
  run.log.info(
    `data ${o.data}: ${pool.length} training, ${validation.length} validation images, ${set.channels} channel(s)`,
  );
  // Fixed synthetic validation set: every validation image once normal and twice with an anomaly. It is scored
  // whole, as test images are; when training on crops its anomalies keep the crops' sizes in pixels.
  const crop = cfg.trainCrop ?? null;
  const res = cfg.arch.resolution;
  const cropArea = crop === null ? 1 : (crop / res) ** 2;
  const valAnomaly = { ...cfg.anomaly, areaRange: cfg.anomaly.areaRange.map((a) => a * cropArea) as [number, number] };
  const valBase = thresholdBase(pool, validation, set.validationTiles);
  const val = syntheticValidationSet(
    valBase.images,
    new Rng(cfg.seed + 1_000_003),
    valAnomaly,
    valBase.tilesPerImage,
    valBase.fromTraining ? undefined : set.validationSeams,
  );
  const testSet = run.isMain ? await loadTestSet(test, cfg, set.channels) : null;
  // Data-parallel: this rank's disjoint shard of the training images and its part of every batch.
  const batchPool = dp ? dp.shard(pool) : pool;
  const batchSeams = dp ? dp.shard(set.poolSeams) : set.poolSeams;
  const batchSize = dp ? dp.localBatch(cfg.batchSize) : cfg.batchSize;
  if (batchPool.length === 0)
    throw new Error(`${pool.length} training images cannot be shared by ${dp?.worldSize} processes`);
  if (dp) run.log.info(`data-parallel over ${dp.worldSize} processes: ${batchSize} images per step per process`);
  if (testSet)
    run.log.info(`real test diagnostics on ${describeTestSet(testSet)} (logged only, never used for choices)`);
  const trainingBatch = (
    rng: Rng,
    anomalyFraction = cfg.anomalyFraction,
  ): { x: Tensor; a: Tensor; coords?: Tensor } => {
    const b = makeSegmentationBatch(
      batchPool,
      batchSize,
      anomalyFraction,
      cfg.anomaly,
      cfg.normalAugment,
      rng,
      crop,
      batchSeams,
    );
    const coords = crop !== null && cfg.arch.coordChannels ? cropCoordinates(b.offsets, crop, res) : undefined;
    return { x: imagesToTensor(b.images), a: imagesToTensor(b.masks), coords };
  };
  return { pool, val, testSet, trainingBatch };
}

/**
 * Image and pixel thresholds from validation data only: normal validation images vs their synthetic anomalies (with
 * tiling the image threshold and AUROC per image, imageLevelScores); the synthetic-validation AUROCs for the log.
 */
async function validationThresholds(
  generator: AnoSegGenerator,
  score: ScoreOptions,
  val: SyntheticValidationSet,
): Promise<SyntheticValidation> {
  const anomalyMasks = val.masks.map((m) => (m.data.some((v) => v < 0.5) ? m : null));
  return thresholdsFromValidation(await scoreInBatches(generator, val.images, score), anomalyMasks, val.tiles);
}

/** Rank 0 after the loop: BatchNorm re-estimation, final diagnostics, thresholds, the model file. */
async function finishRun(
  nets: AnoSegNets,
  cfg: AnoSegTrainConfig,
  d: AnoSegData,
  run: RunFolder,
  history: { diagnostics: DiagnosticPoint[]; losses: { step: number; l: StepLosses }[] },
  step: number,
  clock: RunClock,
  o: TrainRunOptions,
): Promise<TrainResult> {
  const { generator } = nets;
  const { diagnostics } = history;
  reestimateStatistics(generator, cfg, d);
  generator.eval();
  const final = await diagnose(generator, cfg, d.val, d.testSet, step, clock.minutes());
  if (diagnostics.at(-1)?.step !== step || cfg.bnRecalibrationBatches > 0) diagnostics.push(final);
  await run.writeCurves(curvesPage(history.losses, diagnostics, path.basename(o.out), cfg));

  const facts = {
    preset: cfg.preset,
    data: path.resolve(o.data),
    steps: step,
    minutes: Number(clock.minutes().toFixed(1)),
    trainImages: d.pool.length,
    seed: cfg.seed,
    trainedAt: new Date().toISOString(),
  };
  const modelPath = run.file('model.safetensors');
  await saveModel(modelPath, generator, cfg, d, run, facts);
  await run.writeConfig(cfg);
  const earlyModelPath = await finishEarlySnapshot(cfg, d, run, step, facts);
  return { modelPath, earlyModelPath, steps: step, minutes: clock.minutes(), diagnostics };
}

/**
 * BatchNorm statistics re-estimated on training batches with config.bnRecalibrationAnomalies of their images
 * anomalous (a fixed stream, so every model of a run sees the same batches).
 */
function reestimateStatistics(generator: AnoSegGenerator, cfg: AnoSegTrainConfig, d: AnoSegData): void {
  if (cfg.bnRecalibrationBatches <= 0) return;
  const bnRng = new Rng(cfg.seed + 17);
  const anomalies = cfg.bnRecalibrationAnomalies ?? cfg.anomalyFraction;
  reestimateBatchNorm(generator, cfg.bnRecalibrationBatches, () => {
    const { x, coords } = d.trainingBatch(bnRng, anomalies);
    generator.forward(x, coords);
  });
}

/**
 * The model file of a trained generator: score settings, thresholds from validation data, facts. The generator is
 * put in eval mode first: scored in training mode, the threshold passes would use batch statistics and move the
 * re-estimated BatchNorm statistics toward the validation batches (which a model saved before 2026-12-07 did).
 */
async function saveModel(
  file: string,
  generator: AnoSegGenerator,
  cfg: AnoSegTrainConfig,
  d: AnoSegData,
  run: RunFolder,
  facts: AnoSegModelMeta['facts'],
): Promise<void> {
  generator.eval();
  const { score, spreads } = await scoreSettings(generator, cfg, d.val);
  if (spreads)
    run.log.info(
      `score: reconstruction error x${score.reconstructionWeight.toFixed(4)} = ${cfg.reconstructionScoreWeight} x ` +
        `std(1 - map) ${spreads.map.toPrecision(4)} / std(error) ${spreads.error.toPrecision(4)} on the held-out good images`,
    );
  else if (cfg.reconstructionScoreScale === 'standardised' && cfg.reconstructionScoreWeight > 0)
    run.log.info(
      `score: reconstruction error x${score.reconstructionWeight} as given: no reconstruction decoder, or an error ` +
        'without spread on the held-out good images, to put it on the scale of 1 - map',
    );
  const v = await validationThresholds(generator, score, d.val);
  const meta: AnoSegModelMeta = {
    arch: cfg.arch,
    aspect: cfg.aspect,
    tiling: cfg.tiling ?? 'none',
    score,
    imageThreshold: v.imageThreshold,
    pixelThreshold: v.pixelThreshold,
    facts,
  };
  await saveAnoSegModel(file, generator, meta);
  run.log.info(
    `saved ${file} (image threshold ${meta.imageThreshold.toFixed(4)}, pixel threshold ${meta.pixelThreshold.toFixed(4)}; ` +
      `synthetic validation image AUROC ${v.imageAuroc.toFixed(4)}, pixel AUROC ${v.pixelAuroc.toFixed(4)})`,
  );
}

/** Writes the generator as the run's early snapshot (rank 0, after step config.earlySnapshotStep). */
async function saveEarlySnapshot(run: RunFolder, generator: AnoSegGenerator, step: number): Promise<void> {
  await saveSafetensors(run.file(EARLY_SNAPSHOT_FILE), prefixed(generator.stateDict(), 'generator.'), {
    format: EARLY_SNAPSHOT_FORMAT,
    step: String(step),
  });
  run.log.info(`early snapshot of step ${step} kept in ${run.file(EARLY_SNAPSHOT_FILE)}`);
}

/**
 * The early snapshot as a model of its own (BatchNorm re-estimated as the final model's, thresholds from the same
 * validation data) when the run went on to at least twice its steps; null otherwise. Closer to the end it would
 * add little beside the final model but its inference cost.
 */
async function finishEarlySnapshot(
  cfg: AnoSegTrainConfig,
  d: AnoSegData,
  run: RunFolder,
  step: number,
  facts: AnoSegModelMeta['facts'],
): Promise<string | null> {
  const at = cfg.earlySnapshotStep ?? 0;
  const file = run.file(EARLY_SNAPSHOT_FILE);
  const earlyModelPath = run.file(EARLY_MODEL_FILE);
  if (at <= 0 || !existsSync(file) || step < 2 * at) {
    if (at > 0 && step < 2 * at)
      run.log.info(`no early model: the run ended at step ${step}, before twice the snapshot's ${at}`);
    // an early model left by an earlier run in this folder does not belong to this run's model
    await fs.rm(earlyModelPath, { force: true });
    return null;
  }
  const { tensors, metadata } = await loadSafetensors(file);
  const generator = new AnoSegGenerator(cfg.arch);
  try {
    if (metadata.format !== EARLY_SNAPSHOT_FORMAT) throw new Error(`${file}: not an early snapshot`);
    generator.loadStateDict(withoutPrefix(tensors, 'generator.'));
    // reestimateBatchNorm switches to training mode and saveModel to eval mode
    reestimateStatistics(generator, cfg, d);
    await saveModel(earlyModelPath, generator, cfg, d, run, {
      ...facts,
      steps: Number(metadata.step),
      snapshotOf: step,
    });
    return earlyModelPath;
  } finally {
    for (const t of tensors.values()) t.dispose();
    generator.dispose();
  }
}

/**
 * Time spent making batches (decoding is done up front; this is augmentation and synthetic anomalies, on this thread
 * while libtorch's threads wait) against the whole step, reported with the diagnostics.
 */
class DataTime {
  batchMs = 0;
  private stepMs = 0;
  private last: number | null = null;

  /** Called at the start of every step (and after the last): the time since the previous call is step time. */
  lap(): void {
    const now = performance.now();
    if (this.last !== null) this.stepMs += now - this.last;
    this.last = now;
  }

  share(): string {
    return `data ${((100 * this.batchMs) / Math.max(1e-9, this.stepMs)).toFixed(1)}% of step time`;
  }
}

/** The loop's step: learning-rate schedule, adversarial ramp, a batch, anosegTrainStep, the divergence check. */
function stepFunction(
  nets: AnoSegNets,
  cfg: AnoSegTrainConfig,
  d: AnoSegData,
  rng: Rng,
  dataTime: DataTime,
  dp: DataParallel | null,
): { step: (step: number, now: number) => StepLosses; lr: () => number } {
  const { generator, discriminator, optG, optD } = nets;
  const dLr = adversarialSettings(cfg).dLr;
  let lr = cfg.lr;
  const step = (step: number, now: number): StepLosses => {
    dataTime.lap();
    const stepStart = performance.now();
    const progress = Math.max(step / cfg.steps, cfg.maxMinutes !== null ? now / cfg.maxMinutes : 0);
    lr = scheduledLr(cfg, progress);
    optG.lr = lr;
    if (optD) optD.lr = lr * dLr;
    const ramp = cfg.adversarialRampSteps > 0 ? Math.min(1, step / cfg.adversarialRampSteps) : 1;
    const { x, a, coords } = d.trainingBatch(rng);
    dataTime.batchMs += performance.now() - stepStart;
    const l = anosegTrainStep(
      {
        generator,
        discriminator,
        generatorOptimizer: optG,
        discriminatorOptimizer: optD,
        syncGradients: dp?.averageGradients,
      },
      x,
      a,
      { ...cfg.loss, adversarialWeight: cfg.loss.adversarialWeight * ramp },
      coords,
      discriminatorStepOptions(cfg, step),
    );
    x.dispose();
    a.dispose();
    coords?.dispose();
    if (!Number.isFinite(l.total))
      throw new Error(`training diverged at step ${step} (loss ${l.total}); lower the learning rate`);
    return l;
  };
  return { step, lr: () => lr };
}

/** The adversarial balance in words (smoothed step figures), for the diagnostics line of runs with L_Adv. */
function adversarialBalance(l: StepLosses): string {
  return (
    `; D accuracy real ${l.dRealAccuracy.toFixed(2)} / fake ${l.dFakeAccuracy.toFixed(2)}, ` +
    `D updated in ${(100 * l.dUpdated).toFixed(0)}% of steps, ` +
    `gradient norm at the map: L_Seg ${l.segGradNorm.toExponential(2)}, L_Adv ${l.advGradNorm.toExponential(2)}`
  );
}

function logDiagnostics(run: RunFolder, p: DiagnosticPoint, dataShare: string, balance = ''): void {
  run.log.record('diagnostics', { ...p });
  run.log.info(
    `step ${p.step}: synthetic val pixel AUROC ${p.syntheticPixelAuroc.toFixed(3)}` +
      (p.testPixelAuroc !== null ? `, test pixel AUROC ${p.testPixelAuroc.toFixed(3)}` : '') +
      (p.testImageAuroc !== null ? `, test image AUROC ${p.testImageAuroc.toFixed(3)}` : '') +
      `, eval-mode L_Seg ${p.evalSegLoss.toFixed(3)}${balance}; ${dataShare}`,
  );
}

export async function trainAnoSeg(o: TrainRunOptions): Promise<TrainResult> {
  const cfg = structuredClone(o.config);
  validateConfig(cfg);
  // Open the data before creating the run folder, so a wrong path leaves nothing behind.
  const { train: trainPaths, test } = await openTrainingData(o.data);
  // so is a wrong --encoder-init file
  let encoderBackbone = cfg.encoderInit ? await loadEncoderBackbone(cfg.encoderInit, cfg.arch.width) : null;
  const dp = o.distributed ?? null;
  let nets: AnoSegNets | null = null;
  try {
    const run = await RunFolder.open(o.out, {
      checkpointFormat: CHECKPOINT_FORMAT,
      checkpointKind: 'an AnoSeg training checkpoint',
      distributed: dp,
    });
    const d = await prepareData(cfg, trainPaths, test, run, o);
    nets = createNets(cfg);
    const { generator, discriminator, optG } = nets;
    const parts = { generator, discriminator, optim_g: optG, optim_d: nets.optD };
    const diagnostics: DiagnosticPoint[] = [];
    const lossHistory: { step: number; l: StepLosses }[] = [];
    const resumed = await run.resume(o.resume ?? true, parts, (m) =>
      checkArchitecture(run.checkpointPath, JSON.parse(m.config ?? '{}') as AnoSegTrainConfig, cfg),
    );
    if (resumed) {
      const saved = JSON.parse(resumed.metadata.config ?? '{}') as AnoSegTrainConfig;
      // the architecture was checked above (checkArchitecture, which also reads configs from before 'skips')
      const changed = settingsDifferences({ ...saved, arch: cfg.arch }, cfg);
      if (changed.length)
        run.log.info(
          `warning: the checkpoint was trained with other settings (${changed.join(', ')}); the new ones apply ` +
            `from step ${resumed.step} on (a new --out folder starts afresh)`,
        );
      diagnostics.push(...(JSON.parse(resumed.metadata.diagnostics ?? '[]') as DiagnosticPoint[]));
      lossHistory.push(...(JSON.parse(resumed.metadata.losses ?? '[]') as { step: number; l: StepLosses }[]));
    }
    // a resumed run continues from its checkpoint's weights
    if (!resumed && encoderBackbone && cfg.encoderInit) {
      const where = `--encoder-init ${cfg.encoderInit}`;
      const n = initialiseEncoder(generator.encoder, encoderBackbone, cfg.arch.channels, where);
      run.log.info(`encoder initialised from ${path.resolve(cfg.encoderInit)} (${n} tensors; layer4 random)`);
    }
    encoderBackbone?.dispose();
    encoderBackbone = null;
    const startStep = resumed?.step ?? 0;
    const earlyAt = cfg.earlySnapshotStep ?? 0;
    // A snapshot in the folder that this run's history cannot have written belongs to another run.
    if (run.isMain && (!resumed || startStep < earlyAt)) await fs.rm(run.file(EARLY_SNAPSHOT_FILE), { force: true });
    const clock = new RunClock(resumed?.minutes ?? 0);
    // A resumed run draws a fresh, seeded stream: batches differ from an uninterrupted run, statistics do not.
    // Each rank of a data-parallel group draws its own stream (rank 0 the single-process one).
    const rng = new Rng(cfg.seed * 7919 + startStep + rankSeedOffset(dp));
    generator.train();
    discriminator?.train();
    const dataTime = new DataTime();
    const train = stepFunction(nets, cfg, d, rng, dataTime, dp);
    const step = await runTrainingLoop<StepLosses>({
      run,
      clock,
      what: 'training',
      steps: cfg.steps,
      startStep,
      maxMinutes: cfg.maxMinutes,
      modules: [generator, discriminator],
      step: train.step,
      progress:
        (o.progress ?? true)
          ? {
              label: 'train',
              figures: (l) => ({ seg: l.seg, rec: l.reconstruction, adv: l.adversarial, d: l.discriminator }),
              budgetSeconds: cfg.maxMinutes !== null ? (cfg.maxMinutes - clock.minutesBefore) * 60 : undefined,
            }
          : null,
      lossHistory,
      lossRecordExtra: () => ({ lr: train.lr() }),
      evalEvery: cfg.evalEvery,
      evaluate: async (step, average) => {
        const p = await diagnose(generator, cfg, d.val, d.testSet, step, clock.minutes());
        diagnostics.push(p);
        logDiagnostics(run, p, dataTime.share(), discriminator ? adversarialBalance(average) : '');
        await run.writeCurves(curvesPage(lossHistory, diagnostics, path.basename(o.out), cfg));
      },
      atStep: earlyAt > 0 ? { step: earlyAt, run: (step) => saveEarlySnapshot(run, generator, step) } : undefined,
      checkpointEvery: cfg.checkpointEvery,
      checkpoint: (step) =>
        run.saveCheckpoint(parts, {
          config: JSON.stringify(cfg),
          step: String(step),
          minutes: String(clock.minutes()),
          diagnostics: JSON.stringify(diagnostics),
          losses: JSON.stringify(lossHistory),
        }),
      onLoopEnd: (step) => {
        dataTime.lap();
        if (step > startStep)
          run.log.info(`steps ${startStep}-${step}: ${dataTime.share()} (making batches on the training thread)`);
      },
    });
    // Rank 0 alone finishes the run (BatchNorm re-estimation, thresholds, model file).
    if (!run.isMain)
      return {
        modelPath: run.file('model.safetensors'),
        earlyModelPath: null,
        steps: step,
        minutes: clock.minutes(),
        diagnostics,
      };
    return await finishRun(nets, cfg, d, run, { diagnostics, losses: lossHistory }, step, clock, o);
  } finally {
    // Also on errors: a long-running process (service, tests, ablation) keeps neither handlers nor tensors.
    encoderBackbone?.dispose();
    nets?.generator.dispose();
    nets?.discriminator?.dispose();
    nets?.optG.dispose();
    nets?.optD?.dispose();
  }
}
