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
import { existsSync, promises as fs } from 'node:fs';
import path from 'node:path';
import { Tensor, manualSeed, noGrad, releaseDeferred, tidy } from '../engine/index.js';
import { imagesToTensor } from '../models/image-tensor.js';
import { Adam, loadSafetensors, saveSafetensors, type Optimizer } from '../nn/index.js';
import type { AnoSegGenerator } from '../models/anoseg.js';
import { loadAnoSegModel, type AnoSegModelMeta } from '../models/anoseg-model.js';
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
} from '../models/detector.js';
import {
  anomalyClassificationLoss,
  detectorAdversarialLoss,
  detectorFeatureMatchingLoss,
  detectorGeneratorAdversarialLoss,
  detectorReconstructionLoss,
  normalMaskLike,
  PAPER_SCORE_WEIGHTS,
  type DetectorScoreWeights,
} from '../models/detector-losses.js';
import { openTrainingData, type TestItem } from '../data/dataset.js';
import { fitImage, loadImage } from '../image/io.js';
import type { Image } from '../image/types.js';
import { makeSyntheticAnomaly, paperAnomalyOptions, type AnomalyOptions } from '../synth/anomalies.js';
import { auroc } from '../eval/metrics.js';
import { renderLineChart } from '../eval/report.js';
import { writeFileAtomic } from '../util/atomic.js';
import { ProgressBar } from '../util/progress.js';
import { Rng } from '../util/rng.js';
import { youdenThreshold } from './anoseg-trainer.js';
import { loadTrainingImages, makeSegmentationBatch, splitValidation, type NormalAugment } from './data.js';
import { positiveInt } from './config.js';
import {
  rankSeedOffset,
  runLogFor,
  startGroup,
  stepAgreement,
  type DataParallel,
  type GradientSync,
} from './data-parallel.js';

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
  cfg.evalEvery = Math.min(cfg.evalEvery, cfg.steps);
  cfg.checkpointEvery = Math.min(cfg.checkpointEvery, cfg.steps);
  return cfg;
}

async function loadTestImages(items: TestItem[], meta: AnoSegModelMeta): Promise<LabelledImages | null> {
  if (!items.some((t) => t.defect !== 'good') || !items.some((t) => t.defect === 'good')) return null;
  const set: LabelledImages = { images: [], anomalous: [] };
  for (const item of items) {
    try {
      const img = await loadImage(item.path, { channels: meta.arch.channels as 1 | 3 });
      set.images.push(fitImage(img, meta.arch.resolution, meta.aspect).image);
      set.anomalous.push(item.defect !== 'good');
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

function smooth(avg: DetectorStepLosses, l: DetectorStepLosses): DetectorStepLosses {
  const keys = Object.keys(avg) as (keyof DetectorStepLosses)[];
  return Object.fromEntries(keys.map((k) => [k, 0.95 * avg[k] + 0.05 * l[k]])) as unknown as DetectorStepLosses;
}

async function writeCurves(
  file: string,
  losses: { step: number; l: DetectorStepLosses }[],
  diags: DetectorDiagnostic[],
): Promise<void> {
  const lossChart = renderLineChart(
    (['reconstruction', 'adversarial', 'featureMatching', 'discriminator', 'classification'] as const).map((k) => ({
      name: k,
      x: losses.map((p) => p.step),
      y: losses.map((p) => p.l[k]),
    })),
    { title: 'Detector training losses', xLabel: 'step', yLabel: 'loss' },
  );
  const aurocChart = renderLineChart(
    [
      {
        name: 'validation image AUROC (eq. 5)',
        x: diags.map((d) => d.step),
        y: diags.map((d) => d.validationImageAuroc),
      },
      {
        name: 'test image AUROC (eq. 5)',
        x: diags.map((d) => d.step),
        y: diags.map((d) => d.testImageAuroc ?? Number.NaN),
      },
      {
        name: 'test image AUROC (map score)',
        x: diags.map((d) => d.step),
        y: diags.map((d) => d.testMapImageAuroc ?? Number.NaN),
        dashed: true,
      },
    ],
    { title: 'Diagnostics', xLabel: 'step', yLabel: 'AUROC', yDomain: [0, 1], legendPosition: 'bottom-right' },
  );
  const html =
    `<!doctype html><meta charset="utf-8"><title>detector training</title>` +
    `<style>body{font-family:sans-serif;margin:2em}</style><h1>Detector training curves</h1>${lossChart}${aurocChart}`;
  await writeFileAtomic(file, html);
}

/** Trains the detector on top of an AnoSeg model and writes out/model.safetensors (AnoSeg + detector). */
export async function trainDetector(o: DetectorTrainOptions): Promise<DetectorTrainResult> {
  const cfg = resolveDetectorConfig(o);
  validateDetectorConfig(cfg);
  await fs.mkdir(o.out, { recursive: true });
  const dp = o.distributed ?? null;
  const isMain = dp?.isMain ?? true;
  const log = runLogFor(dp, path.join(o.out, 'train.log'));
  const ckptPath = path.join(o.out, 'checkpoint.safetensors');
  const showProgress = (o.progress ?? true) && isMain;

  const { generator: anoseg, meta: anosegMeta } = await loadAnoSegModel(o.anosegModel);
  const arch = detectorArchitectureFor(anosegMeta.arch, cfg.switches.mapInput, cfg.coordChannels);
  manualSeed(cfg.seed);
  const detector = new AnomalyDetector(arch);
  const optG = new Adam(detector.generator.parameters(), { lr: cfg.lr, betas: cfg.betas });
  const optD = new Adam(detector.discriminator.parameters(), { lr: cfg.lr, betas: cfg.betas });
  const release = (): void => {
    anoseg.dispose();
    detector.dispose();
    optG.dispose();
    optD.dispose();
  };

  try {
    const { train: trainPaths, test } = await openTrainingData(o.data);
    const loaded = await loadTrainingImages(
      trainPaths,
      anosegMeta.arch.resolution,
      anosegMeta.aspect,
      anosegMeta.arch.channels as 1 | 3,
      (f) => log.info(`skipped unreadable training image ${f.path}: ${f.reason}`),
    );
    const { train: pool, validation } = splitValidation(loaded.images, cfg.validationFraction);
    log.info(
      `detector '${cfg.variant}' (${JSON.stringify(cfg.switches)}) on AnoSeg model ${o.anosegModel}; data ${o.data}: ` +
        `${pool.length} training, ${validation.length} validation images`,
    );

    // Fixed validation set: each validation image once normal and twice with a synthetic anomaly.
    const valRng = new Rng(cfg.seed + 1_000_003);
    const valBase = validation.length ? validation : pool.slice(0, Math.min(8, pool.length));
    const val: LabelledImages = { images: [], anomalous: [] };
    for (const img of valBase) {
      for (let k = 0; k < 2; k++) {
        const donor =
          cfg.anomaly.source === 'other-image' || cfg.anomaly.source === 'mixed' ? valRng.pick(valBase) : undefined;
        val.images.push(makeSyntheticAnomaly(img, valRng, cfg.anomaly, donor).image);
        val.anomalous.push(true);
      }
      val.images.push(img);
      val.anomalous.push(false);
    }
    const testSet = isMain ? await loadTestImages(test, anosegMeta) : null;
    const batchPool = dp ? dp.shard(pool) : pool;
    if (batchPool.length === 0)
      throw new Error(`${pool.length} training images cannot be shared by ${dp?.worldSize} processes`);
    if (testSet)
      log.info(`test diagnostics on ${testSet.images.length} test images (logged only, never used for choices)`);

    const meta: DetectorModelMeta = {
      anoseg: anosegMeta,
      detector: { arch, variant: cfg.variant, switches: cfg.switches, score: cfg.score, imageThreshold: Number.NaN },
      facts: {},
    };

    let startStep = 0;
    let elapsedBefore = 0;
    const diagnostics: DetectorDiagnostic[] = [];
    const lossHistory: { step: number; l: DetectorStepLosses }[] = [];
    if ((o.resume ?? true) && existsSync(ckptPath)) {
      const { tensors, metadata } = await loadSafetensors(ckptPath);
      try {
        if (metadata.format !== DETECTOR_CHECKPOINT_FORMAT)
          throw new Error(`${ckptPath}: not a detector training checkpoint`);
        const saved = JSON.parse(metadata.model ?? '{}') as unknown;
        if (JSON.stringify(saved) !== JSON.stringify({ arch, switches: cfg.switches })) {
          throw new Error(
            `${ckptPath} was trained with another architecture or variant; use a new --out folder or the same settings`,
          );
        }
        const part = (prefix: string): Map<string, Tensor> =>
          new Map([...tensors].filter(([k]) => k.startsWith(prefix)).map(([k, v]) => [k.slice(prefix.length), v]));
        detector.loadStateDict(part('detector.'));
        optG.loadStateDict(part('optim_g.'));
        optD.loadStateDict(part('optim_d.'));
        startStep = Number(metadata.step);
        elapsedBefore = Number(metadata.minutes ?? 0);
        diagnostics.push(...(JSON.parse(metadata.diagnostics ?? '[]') as DetectorDiagnostic[]));
        lossHistory.push(...(JSON.parse(metadata.losses ?? '[]') as { step: number; l: DetectorStepLosses }[]));
        log.info(`resumed from ${ckptPath} at step ${startStep}`);
      } finally {
        for (const t of tensors.values()) t.dispose();
      }
    }

    startGroup(dp, startStep, detector);

    const saveCheckpoint = async (step: number, minutes: number): Promise<void> => {
      dp?.averageBatchNormStatistics(detector);
      if (!isMain) return;
      const t = new Map<string, Tensor>();
      for (const [k, v] of detector.stateDict()) t.set(`detector.${k}`, v);
      const og = optG.stateDict();
      const od = optD.stateDict();
      for (const [k, v] of og) t.set(`optim_g.${k}`, v);
      for (const [k, v] of od) t.set(`optim_d.${k}`, v);
      try {
        await saveSafetensors(ckptPath, t, {
          format: DETECTOR_CHECKPOINT_FORMAT,
          model: JSON.stringify({ arch, switches: cfg.switches }),
          config: JSON.stringify(cfg),
          anosegModel: path.resolve(o.anosegModel),
          step: String(step),
          minutes: String(minutes),
          diagnostics: JSON.stringify(diagnostics),
          losses: JSON.stringify(lossHistory),
        });
      } finally {
        og.get('step')?.dispose();
        od.get('step')?.dispose();
      }
    };

    const t0 = performance.now();
    const minutesNow = (): number => elapsedBefore + (performance.now() - t0) / 60000;
    let testMapAuroc: number | null = null;
    /** Eq. 5 scores of the validation set at the last diagnostics (the threshold is chosen on them). */
    let lastValidationScores: number[] = [];
    const diagnose = async (step: number): Promise<void> => {
      detector.eval();
      const v = scoresInBatches(anoseg, detector, meta, val.images);
      lastValidationScores = v.detector;
      const d: DetectorDiagnostic = {
        step,
        minutes: minutesNow(),
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
      log.record('diagnostics', { ...d });
      log.info(
        `step ${step}: validation image AUROC ${d.validationImageAuroc.toFixed(3)}` +
          (d.testImageAuroc !== null
            ? `, test image AUROC ${d.testImageAuroc.toFixed(3)} (map score ${d.testMapImageAuroc?.toFixed(3)})`
            : ''),
      );
      await writeCurves(path.join(o.out, 'curves.html'), lossHistory, diagnostics);
    };

    let stopRequested = false;
    const onSignal = (): void => {
      stopRequested = true;
    };
    process.once('SIGINT', onSignal);
    process.once('SIGTERM', onSignal);

    const bar = showProgress ? new ProgressBar(cfg.steps, 'detector', process.stderr, startStep) : null;
    const rng = new Rng(cfg.seed * 7919 + startStep + 31 + rankSeedOffset(dp));
    const nAnoGlobal = cfg.switches.classification ? cfg.anomalyBatch : 0;
    const nAno = dp && nAnoGlobal > 0 ? dp.localBatch(nAnoGlobal) : nAnoGlobal;
    const nAll = (dp ? dp.localBatch(cfg.batchSize) : cfg.batchSize) + nAno;
    if (dp) log.info(`data-parallel over ${dp.worldSize} processes: ${nAll} images per step per process`);
    detector.train();
    let step = startStep;
    let lossAvg: DetectorStepLosses | null = null;
    try {
      while (step < cfg.steps) {
        const { stop, minutes: now } = stepAgreement(dp, stopRequested, minutesNow());
        if (stop) {
          stopRequested = true;
          break;
        }
        if (cfg.maxMinutes !== null && now >= cfg.maxMinutes) {
          log.info(`time budget of ${cfg.maxMinutes} min reached at step ${step}`);
          break;
        }
        const batch = makeSegmentationBatch(batchPool, nAll, nAno / nAll, cfg.anomaly, cfg.normalAugment, rng);
        const l = tidy(() => {
          // makeSegmentationBatch puts the synthetic anomalies first.
          const x = imagesToTensor(batch.images);
          const normals = x.slice(0, nAno);
          const anomalies = nAno > 0 ? x.slice(0, 0, nAno) : null;
          const needAll = nAno > 0 && cfg.clsMap === 'anoseg';
          const maps = noGrad(() => anoseg.forward(needAll ? x : normals).map);
          const normalMaps = needAll ? maps.slice(0, nAno) : maps;
          let anomalyMaps: Tensor | null = null;
          if (anomalies) {
            if (cfg.clsMap === 'anoseg') anomalyMaps = maps.slice(0, 0, nAno);
            else if (cfg.clsMap === 'ones') anomalyMaps = normalMaskLike(anomalies);
            else anomalyMaps = imagesToTensor(batch.masks.slice(0, nAno));
          }
          return detectorTrainStep(
            {
              detector,
              generatorOptimizer: optG,
              discriminatorOptimizer: optD,
              syncGradients: dp?.averageGradients,
            },
            { normals, normalMaps, anomalies, anomalyMaps },
            cfg.switches,
            cfg.weights,
          );
        });
        if (!Number.isFinite(l.total) || !Number.isFinite(l.discriminator)) {
          throw new Error(
            `detector training diverged at step ${step} (losses ${JSON.stringify(l)}); lower the learning rate`,
          );
        }
        step++;
        lossAvg = lossAvg ? smooth(lossAvg, l) : l;
        if (step % 25 === 0) {
          lossHistory.push({ step, l: lossAvg });
          log.record('loss', { step, ...lossAvg });
        }
        bar?.update(step, {
          rec: lossAvg.reconstruction,
          adv: lossAvg.adversarial,
          fea: lossAvg.featureMatching,
          d: lossAvg.discriminator,
          cls: lossAvg.classification,
        });
        if (step % cfg.evalEvery === 0 || step === cfg.steps) {
          dp?.averageBatchNormStatistics(detector);
          if (isMain) await diagnose(step);
        }
        if (step % cfg.checkpointEvery === 0) await saveCheckpoint(step, minutesNow());
        // Every step: lets signals and I/O through and frees released tensor wrappers (see releaseDeferred).
        await releaseDeferred();
      }
    } finally {
      bar?.finish();
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
    }
    await saveCheckpoint(step, minutesNow());
    if (stopRequested) {
      log.info(`stopped by signal at step ${step}; checkpoint saved, rerun the same command to resume`);
      throw new Error(`detector training interrupted at step ${step}; checkpoint saved in ${ckptPath}`);
    }
    // Rank 0 alone finishes the run (threshold, model file).
    if (!isMain) {
      const modelPath = path.join(o.out, 'model.safetensors');
      return { modelPath, steps: step, minutes: minutesNow(), imageThreshold: Number.NaN, diagnostics };
    }

    // Final diagnostics (unless the last step had them); the threshold comes from their validation scores.
    if (diagnostics.at(-1)?.step !== step || lastValidationScores.length === 0) await diagnose(step);
    detector.eval();
    const threshold = youdenThreshold(
      lastValidationScores.filter((_, i) => !val.anomalous[i]),
      lastValidationScores.filter((_, i) => val.anomalous[i]),
    );
    const last = diagnostics.at(-1);
    meta.detector.imageThreshold = threshold;
    meta.facts = {
      method: 'anoseg+detector',
      variant: cfg.variant,
      data: path.resolve(o.data),
      anosegModel: path.resolve(o.anosegModel),
      anosegPreset: anosegMeta.facts.preset ?? '',
      steps: step,
      minutes: Number(minutesNow().toFixed(1)),
      trainImages: pool.length,
      seed: cfg.seed,
      validationImageAuroc: Number((last?.validationImageAuroc ?? Number.NaN).toFixed(4)),
      trainedAt: new Date().toISOString(),
    };
    const modelPath = path.join(o.out, 'model.safetensors');
    await saveDetectorModel(modelPath, anoseg, detector, meta);
    await writeFileAtomic(path.join(o.out, 'config.json'), JSON.stringify(cfg, null, 2));
    log.info(`saved ${modelPath} (eq. 5 image threshold ${threshold.toPrecision(5)})`);
    return { modelPath, steps: step, minutes: minutesNow(), imageThreshold: threshold, diagnostics };
  } finally {
    release();
  }
}
