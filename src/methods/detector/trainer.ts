/**
 * Training of the anomaly detector on top of a trained AnoSeg model (paper 3.4, Appendix A.1, Fig. 9).
 *
 * Every step draws normal images (and, with L_cls, synthetic anomalies with their masks, makeSegmentationBatch),
 * computes AnoSeg's normal maps Â without gradients, and updates
 * - the generator with L1 reconstruction + the non-saturating adversarial term on the fake pair (x̂_Nor, Â_Nor)
 *   [+ L_fea between f(x_Nor, A_Nor) and f(x̂_Nor, Â_Nor)];
 * - the discriminator with L_Adv^AD (eq. 6: real (x_Nor, A_Nor), fake (x̂_Nor, Â_Nor)) [+ L_cls: (x_Ano, A_Ano) fake,
 *   (x_Nor, A_Nor) real].
 * The image threshold on the eq. 5 score is chosen on held-out validation images (normal vs their synthetic
 * anomalies, Youden's J); where the data has a labelled test split, test image AUROC is logged over time (never used
 * for choices). Checkpoints are atomic and a rerun resumes; the result is one 'anoseg.ts/anoseg+detector@1' file.
 */
import path from 'node:path';
import { Tensor, manualSeed, noGrad, tidy } from '../../engine/index.js';
import { imagesToTensor } from '../../models/image-tensor.js';
import { Adam, type Optimizer } from '../../nn/index.js';
import type { AnoSegGenerator } from '../anoseg/network.js';
import { loadAnoSegModel, type AnoSegModelMeta } from '../anoseg/model-file.js';
import {
  AnomalyDetector,
  detectorArchitectureFor,
  isDetectorVariant,
  saveDetectorModel,
  scoreDetectorBatch,
  variantSwitches,
  TABLE5_VARIANTS,
  type DetectorModelMeta,
  type DetectorSwitches,
  type DetectorVariant,
} from './model.js';
import {
  anomalyClassificationLoss,
  detectorAdversarialLoss,
  detectorFeatureMatchingLoss,
  detectorGeneratorAdversarialLoss,
  detectorReconstructionLoss,
  normalMaskLike,
  PAPER_SCORE_WEIGHTS,
  type DetectorScoreWeights,
} from './losses.js';
import { openTrainingData, type TestItem } from '../../data/dataset.js';
import { fitImage, loadImage } from '../../image/io.js';
import { imageTiles, type TileSeams } from '../../image/tiles.js';
import type { Image } from '../../image/types.js';
import { paperAnomalyOptions, type AnomalyOptions } from '../../synth/anomalies.js';
import { auroc, youdenThreshold } from '../../eval/metrics.js';
import { imageLevelScores } from '../../train/validation.js';
import { Rng } from '../../util/rng.js';
import {
  loadTrainingSet,
  makeSegmentationBatch,
  syntheticValidationSet,
  thresholdBase,
  type NormalAugment,
  type SyntheticValidationSet,
} from '../../train/data.js';
import { positiveInt } from '../anoseg/config.js';
import { rankSeedOffset, type DataParallel, type GradientSync } from '../../train/data-parallel.js';
import { RunClock, fitIntervalsToSteps, runTrainingLoop } from '../../train/loop.js';
import { RunFolder, type CurvesPage } from '../../train/run-folder.js';

export const DETECTOR_CHECKPOINT_FORMAT = 'anoseg.ts/detector-checkpoint@1';

export interface DetectorLossWeights {
  reconstruction: number;
  adversarial: number;
  featureMatching: number;
  classification: number;
}

export interface DetectorTrainConfig {
  variant: DetectorVariant;
  /** Table 5 switches (from the variant unless overridden). */
  switches: DetectorSwitches;
  /** Coordinate channels on the generator input (AnoSeg's structure). */
  coordChannels: boolean;
  /** Normal images per step. */
  batchSize: number;
  /** Synthetic anomalies per step for L_cls (unused without classification). */
  anomalyBatch: number;
  steps: number;
  /** Optional wall-clock budget (minutes); training stops and saves when reached. */
  maxMinutes: number | null;
  lr: number;
  betas: [number, number];
  weights: DetectorLossWeights;
  /**
   * The map paired with x_Ano in L_cls: 'mask' = the synthetic anomaly's mask A_Ano (as written in the paper),
   * 'anoseg' = AnoSeg's map of x_Ano, 'ones' = the normal mask (the anomaly claimed normal).
   */
  clsMap: 'mask' | 'anoseg' | 'ones';
  /** Eq. 5 weights (paper: alpha 1, beta 0.1). */
  score: DetectorScoreWeights;
  anomaly: AnomalyOptions;
  normalAugment: NormalAugment;
  validationFraction: number;
  evalEvery: number;
  checkpointEvery: number;
  seed: number;
}

/**
 * Defaults: the paper's losses and score; CPU-sized batch (8 normal images, 4 synthetic anomalies for L_cls), the
 * paper's CutPaste + hard augmentation anomalies, Adam with betas (0.5, 0.999) as for AnoSeg. The paper gives no
 * loss weights or learning rate for the detector: all weights are 1 and lr 2e-4 (DCGAN's default).
 */
export function detectorConfig(
  variant: DetectorVariant = 'full',
  overrides: Partial<DetectorTrainConfig> = {},
): DetectorTrainConfig {
  const base: DetectorTrainConfig = {
    variant,
    switches: variantSwitches(variant),
    coordChannels: true,
    batchSize: 8,
    anomalyBatch: 4,
    steps: 3000,
    maxMinutes: null,
    lr: 2e-4,
    betas: [0.5, 0.999],
    weights: { reconstruction: 1, adversarial: 1, featureMatching: 1, classification: 1 },
    clsMap: 'mask',
    score: { ...PAPER_SCORE_WEIGHTS },
    anomaly: { ...paperAnomalyOptions },
    normalAugment: { hflip: false, vflip: false, rotate90: false, brightness: 0 },
    validationFraction: 0.1,
    evalEvery: 250,
    checkpointEvery: 250,
    seed: 0,
  };
  return structuredClone({ ...base, ...overrides });
}

export function validateDetectorConfig(c: DetectorTrainConfig): void {
  if (!isDetectorVariant(c.variant))
    throw new Error(`unknown detector variant '${c.variant}' (known: ${TABLE5_VARIANTS.join(', ')})`);
  positiveInt(c.batchSize, 'batch size');
  positiveInt(c.steps, 'steps');
  positiveInt(c.evalEvery, 'evalEvery');
  positiveInt(c.checkpointEvery, 'checkpointEvery');
  if (c.batchSize < 2) throw new Error('batch size must be at least 2 (BatchNorm needs a batch)');
  if (c.switches.classification) positiveInt(c.anomalyBatch, 'anomaly batch');
  if (!(c.lr > 0 && c.lr < 1)) throw new Error(`learning rate must be in (0, 1) (got ${c.lr})`);
  if (c.maxMinutes !== null && !(c.maxMinutes > 0)) throw new Error('maxMinutes must be positive');
  if (!(c.validationFraction >= 0 && c.validationFraction < 0.5))
    throw new Error('validationFraction must be in [0, 0.5)');
  for (const [k, v] of Object.entries(c.weights))
    if (!(v >= 0)) throw new Error(`loss weight ${k} must be >= 0 (got ${v})`);
  if (!(c.score.alpha >= 0 && c.score.beta >= 0)) throw new Error('score weights alpha and beta must be >= 0');
  if (!['mask', 'anoseg', 'ones'].includes(c.clsMap))
    throw new Error(`clsMap must be mask, anoseg or ones (got ${c.clsMap})`);
}

// ---------------------------------------------------------------------------------------------------------------
// One optimisation step

export interface DetectorStepLosses {
  reconstruction: number;
  adversarial: number;
  featureMatching: number;
  discriminator: number;
  classification: number;
  total: number;
}

export interface DetectorTrainables {
  detector: AnomalyDetector;
  generatorOptimizer: Optimizer;
  discriminatorOptimizer: Optimizer;
  /** Called after each backward pass, before the optimiser step (data-parallel gradient averaging). */
  syncGradients?: GradientSync;
}

export interface DetectorBatch {
  /** x_Nor [N, C, H, W]. */
  normals: Tensor;
  /** Â_Nor: AnoSeg's normal maps of the normal images [N, 1, H, W]. */
  normalMaps: Tensor;
  /** x_Ano for L_cls, or null. */
  anomalies: Tensor | null;
  /** The map paired with x_Ano in L_cls (see DetectorTrainConfig.clsMap). */
  anomalyMaps: Tensor | null;
}

/** Generator update, then discriminator update; returns the losses as numbers and frees every intermediate. */
export function detectorTrainStep(
  m: DetectorTrainables,
  b: DetectorBatch,
  switches: DetectorSwitches,
  w: DetectorLossWeights,
): DetectorStepLosses {
  return tidy(() => {
    const det = m.detector;
    const G = det.generator;
    const D = det.discriminator;
    const ones = normalMaskLike(b.normals);
    const realPair = det.pair(b.normals, ones);

    const xhat = G.forward(b.normals, det.arch.mapInput ? b.normalMaps : null);
    const lRec = detectorReconstructionLoss(b.normals, xhat);
    // The discriminator's own gradients are not needed in the generator's update (see Module.frozen).
    const fake = D.frozen(() => D.forward(det.pair(xhat, b.normalMaps)));
    const lAdv = detectorGeneratorAdversarialLoss(fake.logits);
    let total = lRec.mul(w.reconstruction).add(lAdv, w.adversarial);
    let lFea: Tensor | null = null;
    if (switches.featureMatching) {
      const realFeatures = noGrad(() => D.forward(realPair).features);
      lFea = detectorFeatureMatchingLoss(realFeatures, fake.features);
      total = total.add(lFea, w.featureMatching);
    }
    m.generatorOptimizer.zeroGrad();
    total.backward();
    m.syncGradients?.(G.parameters());
    m.generatorOptimizer.step();

    const realLogits = D.forward(realPair).logits;
    const fakeLogits = D.forward(det.pair(xhat.detach(), b.normalMaps)).logits;
    const lD = detectorAdversarialLoss(realLogits, fakeLogits);
    let dTotal = lD;
    let lCls: Tensor | null = null;
    if (switches.classification) {
      if (!b.anomalies || !b.anomalyMaps)
        throw new Error('detectorTrainStep: L_cls needs synthetic anomalies and their maps');
      const anomalyLogits = D.forward(det.pair(b.anomalies, b.anomalyMaps)).logits;
      lCls = anomalyClassificationLoss(realLogits, anomalyLogits);
      dTotal = dTotal.add(lCls, w.classification);
    }
    m.discriminatorOptimizer.zeroGrad();
    dTotal.backward();
    m.syncGradients?.(D.parameters());
    m.discriminatorOptimizer.step();
    return {
      reconstruction: lRec.item(),
      adversarial: lAdv.item(),
      featureMatching: lFea ? lFea.item() : 0,
      discriminator: lD.item(),
      classification: lCls ? lCls.item() : 0,
      total: total.item(),
    };
  });
}

// ---------------------------------------------------------------------------------------------------------------
// The run

export interface DetectorTrainOptions {
  /** A trained AnoSeg model file ('anoseg.ts/anoseg@1'). */
  anosegModel: string;
  /** MVTec-layout category (train/good; a labelled test split enables logged test AUROC) or a folder of good images. */
  data: string;
  /** Run folder: checkpoint, model, logs, curves. */
  out: string;
  /** Shorthands for config fields (they win over `config`). */
  steps?: number;
  minutes?: number;
  seed?: number;
  variant?: DetectorVariant;
  config?: Partial<DetectorTrainConfig>;
  /** Continue from out/checkpoint.safetensors if present (default true). */
  resume?: boolean;
  /** Progress bar on stderr (default true). */
  progress?: boolean;
  /**
   * Data-parallel training (as trainAnoSeg's): each rank trains on its shard of the training images with batch/N
   * normal and anomaly-batch/N anomalous images per step; gradients are averaged; rank 0 alone writes files.
   */
  distributed?: DataParallel;
}

export interface DetectorDiagnostic {
  step: number;
  minutes: number;
  /** Image AUROC of eq. 5 on the validation set (normal validation images vs their synthetic anomalies). */
  validationImageAuroc: number;
  /** Image AUROC of eq. 5 on the real test split (logged only). */
  testImageAuroc: number | null;
  /** Image AUROC of AnoSeg's own map score on the test split, for comparison (constant over training). */
  testMapImageAuroc: number | null;
}

export interface DetectorTrainResult {
  modelPath: string;
  steps: number;
  minutes: number;
  imageThreshold: number;
  diagnostics: DetectorDiagnostic[];
}

/** A detector run's data: the training images, this process's share of them for batches, validation, test. */
interface DetectorData {
  pool: Image[];
  /** This process's training images and their tile seams. */
  batch: { pool: Image[]; seams: TileSeams[] };
  val: SyntheticValidationSet;
  testSet: LabelledImages | null;
}

interface LabelledImages {
  images: Image[];
  anomalous: boolean[];
}

/** Resolves the shorthands into a full config. */
export function resolveDetectorConfig(
  o: Pick<DetectorTrainOptions, 'steps' | 'minutes' | 'seed' | 'variant' | 'config'>,
): DetectorTrainConfig {
  const variant = o.variant ?? o.config?.variant ?? 'full';
  const cfg = detectorConfig(variant, { ...o.config, variant });
  if (!o.config?.switches) cfg.switches = variantSwitches(variant);
  if (o.steps !== undefined) cfg.steps = o.steps;
  if (o.minutes !== undefined) cfg.maxMinutes = o.minutes;
  if (o.seed !== undefined) cfg.seed = o.seed;
  fitIntervalsToSteps(cfg);
  return cfg;
}

async function loadTestImages(items: TestItem[], meta: AnoSegModelMeta): Promise<LabelledImages | null> {
  if (!items.some((t) => t.defect !== 'good') || !items.some((t) => t.defect === 'good')) return null;
  const set: LabelledImages = { images: [], anomalous: [] };
  for (const item of items) {
    try {
      // with tiling each tile is scored as an image, labelled as the image it comes from (diagnostics only)
      const img = await loadImage(item.path, { channels: meta.arch.channels as 1 | 3 });
      for (const tile of imageTiles(img, meta.tiling ?? 'none')) {
        set.images.push(fitImage(tile, meta.arch.resolution, meta.aspect).image);
        set.anomalous.push(item.defect !== 'good');
      }
    } catch {
      // unreadable test files are reported by `anoseg eval`; diagnostics skip them
    }
  }
  return set.images.length ? set : null;
}

function scoresInBatches(
  anoseg: AnoSegGenerator,
  detector: AnomalyDetector,
  meta: DetectorModelMeta,
  images: Image[],
): { detector: number[]; map: number[] } {
  const out = { detector: [] as number[], map: [] as number[] };
  for (let i = 0; i < images.length; i += 16) {
    const r = scoreDetectorBatch(anoseg, detector, meta, images.slice(i, i + 16));
    out.detector.push(...r.detectorScores);
    out.map.push(...r.mapScores);
  }
  return out;
}

function curvesPage(losses: { step: number; l: DetectorStepLosses }[], diags: DetectorDiagnostic[]): CurvesPage {
  const points = (pick: (d: DetectorDiagnostic) => number | null): { step: number; value: number | null }[] =>
    diags.map((d) => ({ step: d.step, value: pick(d) }));
  return {
    title: 'detector training',
    heading: 'Detector training curves',
    losses,
    lossKeys: ['reconstruction', 'adversarial', 'featureMatching', 'discriminator', 'classification'],
    lossTitle: 'Detector training losses',
    diagnostics: [
      { name: 'validation image AUROC (eq. 5)', points: points((d) => d.validationImageAuroc) },
      { name: 'test image AUROC (eq. 5)', points: points((d) => d.testImageAuroc) },
      { name: 'test image AUROC (map score)', points: points((d) => d.testMapImageAuroc), dashed: true },
    ],
  };
}

/** The detector's inputs for one step: normal images, AnoSeg's maps of them and, for L_cls, the anomalies. */
function detectorBatch(
  anoseg: AnoSegGenerator,
  batch: { images: Image[]; masks: Image[] },
  nAno: number,
  clsMap: DetectorTrainConfig['clsMap'],
): DetectorBatch {
  // makeSegmentationBatch puts the synthetic anomalies first.
  const x = imagesToTensor(batch.images);
  const normals = x.slice(0, nAno);
  const anomalies = nAno > 0 ? x.slice(0, 0, nAno) : null;
  const needAll = nAno > 0 && clsMap === 'anoseg';
  const maps = noGrad(() => anoseg.forward(needAll ? x : normals).map);
  const normalMaps = needAll ? maps.slice(0, nAno) : maps;
  let anomalyMaps: Tensor | null = null;
  if (anomalies) {
    if (clsMap === 'anoseg') anomalyMaps = maps.slice(0, 0, nAno);
    else if (clsMap === 'ones') anomalyMaps = normalMaskLike(anomalies);
    else anomalyMaps = imagesToTensor(batch.masks.slice(0, nAno));
  }
  return { normals, normalMaps, anomalies, anomalyMaps };
}

/** The data of a detector run: training pool, the synthetic validation set, the test split (rank 0). */
async function prepareDetectorData(
  cfg: DetectorTrainConfig,
  trainPaths: string[],
  test: TestItem[],
  anosegMeta: AnoSegModelMeta,
  run: RunFolder,
  o: DetectorTrainOptions,
): Promise<DetectorData> {
  const dp = run.dp;
  const { pool, validation, validationTiles, poolSeams, validationSeams } = await loadTrainingSet(trainPaths, {
    resolution: anosegMeta.arch.resolution,
    aspect: anosegMeta.aspect,
    tiling: anosegMeta.tiling ?? 'none',
    channels: anosegMeta.arch.channels as 1 | 3,
    validationFraction: cfg.validationFraction,
    log: run.log,
  });
  run.log.info(
    `detector '${cfg.variant}' (${JSON.stringify(cfg.switches)}) on AnoSeg model ${o.anosegModel}; data ${o.data}: ` +
      `${pool.length} training, ${validation.length} validation images`,
  );
  // Fixed validation set: each validation image once normal and twice with a synthetic anomaly.
  const valBase = thresholdBase(pool, validation, validationTiles);
  const val = syntheticValidationSet(
    valBase.images,
    new Rng(cfg.seed + 1_000_003),
    cfg.anomaly,
    valBase.tilesPerImage,
    valBase.fromTraining ? undefined : validationSeams,
  );
  const testSet = run.isMain ? await loadTestImages(test, anosegMeta) : null;
  const batchPool = dp ? dp.shard(pool) : pool;
  if (batchPool.length === 0)
    throw new Error(`${pool.length} training images cannot be shared by ${dp?.worldSize} processes`);
  if (testSet)
    run.log.info(`test diagnostics on ${testSet.images.length} test images (logged only, never used for choices)`);
  return { pool, batch: { pool: batchPool, seams: dp ? dp.shard(poolSeams) : poolSeams }, val, testSet };
}

/** Trains the detector on top of an AnoSeg model and writes out/model.safetensors (AnoSeg + detector). */
export async function trainDetector(o: DetectorTrainOptions): Promise<DetectorTrainResult> {
  const cfg = resolveDetectorConfig(o);
  validateDetectorConfig(cfg);
  // Open the data before creating the run folder, so a wrong path leaves nothing behind.
  const { train: trainPaths, test } = await openTrainingData(o.data);
  const dp = o.distributed ?? null;
  const run = await RunFolder.open(o.out, {
    checkpointFormat: DETECTOR_CHECKPOINT_FORMAT,
    checkpointKind: 'a detector training checkpoint',
    distributed: dp,
  });
  const { generator: anoseg, meta: anosegMeta } = await loadAnoSegModel(o.anosegModel);
  const arch = detectorArchitectureFor(anosegMeta.arch, cfg.switches.mapInput, cfg.coordChannels);
  let nets: { detector: AnomalyDetector; optim_g: Adam; optim_d: Adam } | null = null;
  try {
    const data = await prepareDetectorData(cfg, trainPaths, test, anosegMeta, run, o);
    manualSeed(cfg.seed);
    const detector = new AnomalyDetector(arch);
    nets = {
      detector,
      optim_g: new Adam(detector.generator.parameters(), { lr: cfg.lr, betas: cfg.betas }),
      optim_d: new Adam(detector.discriminator.parameters(), { lr: cfg.lr, betas: cfg.betas }),
    };
    return await runDetector(cfg, o, run, anoseg, anosegMeta, nets, data);
  } finally {
    anoseg.dispose();
    nets?.detector.dispose();
    nets?.optim_g.dispose();
    nets?.optim_d.dispose();
  }
}

/** The loop's step: a batch of normal images (and synthetic anomalies for L_cls), detectorTrainStep, the check. */
function detectorStepFunction(
  cfg: DetectorTrainConfig,
  anoseg: AnoSegGenerator,
  nets: { detector: AnomalyDetector; optim_g: Adam; optim_d: Adam },
  training: DetectorData['batch'],
  startStep: number,
  run: RunFolder,
): (step: number) => DetectorStepLosses {
  const dp = run.dp;
  const rng = new Rng(cfg.seed * 7919 + startStep + 31 + rankSeedOffset(dp));
  const nAnoGlobal = cfg.switches.classification ? cfg.anomalyBatch : 0;
  const nAno = dp && nAnoGlobal > 0 ? dp.localBatch(nAnoGlobal) : nAnoGlobal;
  const nAll = (dp ? dp.localBatch(cfg.batchSize) : cfg.batchSize) + nAno;
  if (dp) run.log.info(`data-parallel over ${dp.worldSize} processes: ${nAll} images per step per process`);
  const trainables = {
    detector: nets.detector,
    generatorOptimizer: nets.optim_g,
    discriminatorOptimizer: nets.optim_d,
  };
  return (step) => {
    const batch = makeSegmentationBatch(
      training.pool,
      nAll,
      nAno / nAll,
      cfg.anomaly,
      cfg.normalAugment,
      rng,
      null,
      training.seams,
    );
    const l = tidy(() =>
      detectorTrainStep(
        { ...trainables, syncGradients: dp?.averageGradients },
        detectorBatch(anoseg, batch, nAno, cfg.clsMap),
        cfg.switches,
        cfg.weights,
      ),
    );
    if (!Number.isFinite(l.total) || !Number.isFinite(l.discriminator)) {
      throw new Error(
        `detector training diverged at step ${step} (losses ${JSON.stringify(l)}); lower the learning rate`,
      );
    }
    return l;
  };
}

/** The training facts recorded in the model file. */
function detectorFacts(
  cfg: DetectorTrainConfig,
  o: DetectorTrainOptions,
  anosegMeta: AnoSegModelMeta,
  step: number,
  clock: RunClock,
  trainImages: number,
  last: DetectorDiagnostic | undefined,
): DetectorModelMeta['facts'] {
  return {
    method: 'anoseg+detector',
    variant: cfg.variant,
    data: path.resolve(o.data),
    anosegModel: path.resolve(o.anosegModel),
    anosegPreset: anosegMeta.facts.preset ?? '',
    steps: step,
    minutes: Number(clock.minutes().toFixed(1)),
    trainImages,
    seed: cfg.seed,
    validationImageAuroc: Number((last?.validationImageAuroc ?? Number.NaN).toFixed(4)),
    trainedAt: new Date().toISOString(),
  };
}

/**
 * Diagnostics at evaluation steps: eq. 5 image AUROC on the validation set and, where there is one, the test split
 * (with AnoSeg's own map score beside it); logged, kept in the history, drawn on the curves page.
 */
function diagnoser(
  anoseg: AnoSegGenerator,
  detector: AnomalyDetector,
  meta: DetectorModelMeta,
  data: { val: SyntheticValidationSet; testSet: LabelledImages | null },
  run: RunFolder,
  clock: RunClock,
  history: { diagnostics: DetectorDiagnostic[]; losses: { step: number; l: DetectorStepLosses }[] },
): { diagnose: (step: number) => Promise<void>; lastValidationScores: () => number[] } {
  const { val, testSet } = data;
  const { diagnostics } = history;
  let testMapAuroc: number | null = null;
  /** Eq. 5 scores of the validation set at the last diagnostics (the threshold is chosen on them). */
  let lastValidationScores: number[] = [];
  const diagnose = async (step: number): Promise<void> => {
    detector.eval();
    const v = scoresInBatches(anoseg, detector, meta, val.images);
    lastValidationScores = v.detector;
    const d: DetectorDiagnostic = {
      step,
      minutes: clock.minutes(),
      validationImageAuroc: auroc(v.detector, val.anomalous),
      testImageAuroc: null,
      testMapImageAuroc: null,
    };
    if (testSet) {
      const t = scoresInBatches(anoseg, detector, meta, testSet.images);
      d.testImageAuroc = auroc(t.detector, testSet.anomalous);
      testMapAuroc ??= auroc(t.map, testSet.anomalous);
      d.testMapImageAuroc = testMapAuroc;
    }
    detector.train();
    if (diagnostics.at(-1)?.step === step) diagnostics.pop(); // recomputed after a resume at the last step
    diagnostics.push(d);
    run.log.record('diagnostics', { ...d });
    run.log.info(
      `step ${step}: validation image AUROC ${d.validationImageAuroc.toFixed(3)}` +
        (d.testImageAuroc !== null
          ? `, test image AUROC ${d.testImageAuroc.toFixed(3)} (map score ${d.testMapImageAuroc?.toFixed(3)})`
          : ''),
    );
    await run.writeCurves(curvesPage(history.losses, diagnostics));
  };

  return { diagnose, lastValidationScores: () => lastValidationScores };
}

async function runDetector(
  cfg: DetectorTrainConfig,
  o: DetectorTrainOptions,
  run: RunFolder,
  anoseg: AnoSegGenerator,
  anosegMeta: AnoSegModelMeta,
  nets: { detector: AnomalyDetector; optim_g: Adam; optim_d: Adam },
  data: DetectorData,
): Promise<DetectorTrainResult> {
  const { detector } = nets;
  const { val } = data;
  const arch = detector.arch;
  const meta: DetectorModelMeta = {
    anoseg: anosegMeta,
    detector: { arch, variant: cfg.variant, switches: cfg.switches, score: cfg.score, imageThreshold: Number.NaN },
    facts: {},
  };
  const diagnostics: DetectorDiagnostic[] = [];
  const lossHistory: { step: number; l: DetectorStepLosses }[] = [];
  const resumed = await run.resume(o.resume ?? true, nets, (m) => {
    const saved = JSON.parse(m.model ?? '{}') as unknown;
    if (JSON.stringify(saved) !== JSON.stringify({ arch, switches: cfg.switches })) {
      throw new Error(
        `${run.checkpointPath} was trained with another architecture or variant; use a new --out folder or the same settings`,
      );
    }
  });
  if (resumed) {
    diagnostics.push(...(JSON.parse(resumed.metadata.diagnostics ?? '[]') as DetectorDiagnostic[]));
    lossHistory.push(...(JSON.parse(resumed.metadata.losses ?? '[]') as { step: number; l: DetectorStepLosses }[]));
  }
  const startStep = resumed?.step ?? 0;
  const clock = new RunClock(resumed?.minutes ?? 0);
  const diagnosis = diagnoser(anoseg, detector, meta, data, run, clock, { diagnostics, losses: lossHistory });
  const diagnose = diagnosis.diagnose;
  detector.train();
  const step = await runTrainingLoop<DetectorStepLosses>({
    run,
    clock,
    what: 'detector training',
    steps: cfg.steps,
    startStep,
    maxMinutes: cfg.maxMinutes,
    modules: [detector],
    step: detectorStepFunction(cfg, anoseg, nets, data.batch, startStep, run),
    progress:
      (o.progress ?? true)
        ? {
            label: 'detector',
            figures: (l) => ({
              rec: l.reconstruction,
              adv: l.adversarial,
              fea: l.featureMatching,
              d: l.discriminator,
              cls: l.classification,
            }),
          }
        : null,
    lossHistory,
    evalEvery: cfg.evalEvery,
    evaluate: diagnose,
    checkpointEvery: cfg.checkpointEvery,
    checkpoint: (step) =>
      run.saveCheckpoint(nets, {
        model: JSON.stringify({ arch, switches: cfg.switches }),
        config: JSON.stringify(cfg),
        anosegModel: path.resolve(o.anosegModel),
        step: String(step),
        minutes: String(clock.minutes()),
        diagnostics: JSON.stringify(diagnostics),
        losses: JSON.stringify(lossHistory),
      }),
  });
  // Rank 0 alone finishes the run (threshold, model file).
  const modelPath = run.file('model.safetensors');
  if (!run.isMain) return { modelPath, steps: step, minutes: clock.minutes(), imageThreshold: Number.NaN, diagnostics };

  // Final diagnostics (unless the last step had them); the threshold comes from their validation scores.
  if (diagnostics.at(-1)?.step !== step || diagnosis.lastValidationScores().length === 0) await diagnose(step);
  detector.eval();
  const imageScores = imageLevelScores(diagnosis.lastValidationScores(), val.anomalous, val.tiles);
  const threshold = youdenThreshold(imageScores.normal, imageScores.anomalous);
  meta.detector.imageThreshold = threshold;
  meta.facts = detectorFacts(cfg, o, anosegMeta, step, clock, data.pool.length, diagnostics.at(-1));
  await saveDetectorModel(modelPath, anoseg, detector, meta);
  await run.writeConfig(cfg);
  run.log.info(`saved ${modelPath} (eq. 5 image threshold ${threshold.toPrecision(5)})`);
  return { modelPath, steps: step, minutes: clock.minutes(), imageThreshold: threshold, diagnostics };
}
