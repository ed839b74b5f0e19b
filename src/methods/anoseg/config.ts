/**
 * AnoSeg training configuration and presets. Every lever of the paper's ablation (Table 3) and of the
 * recipe study is a field here, so a run is fully described by its config (stored with the checkpoint).
 */
import type { AnomalyOptions } from '../../synth/anomalies.js';
import { paperAnomalyOptions } from '../../synth/anomalies.js';
import type { AnoSegArchitecture } from './network.js';
import { validateArchitecture } from './network.js';
import type { AnoSegLossConfig } from './step.js';
import type { FitAspect } from '../../image/io.js';

export interface AnoSegTrainConfig {
  preset: string;
  arch: AnoSegArchitecture;
  /** How non-square images become the square model input. */
  aspect: FitAspect;
  /**
   * Training on square windows of this many pixels cut from images held at arch.resolution (null = whole
   * images). The network is fully convolutional: it trains at the window's cost and predicts whole images at
   * arch.resolution, with the coordinate channels of each window's place (absent in configs written before).
   */
  trainCrop?: number | null;
  /** Images per step; `anomalyFraction` of them are synthetic anomalies. */
  batchSize: number;
  anomalyFraction: number;
  steps: number;
  /** Optional wall-clock budget; training stops (and saves) when it is reached. */
  maxMinutes: number | null;
  lr: number;
  betas: [number, number];
  /** 'cosine' decays the learning rate to 5% over `steps`. */
  schedule: 'constant' | 'cosine';
  loss: AnoSegLossConfig;
  /** Steps over which the adversarial weight ramps from 0 to loss.adversarialWeight (0 = no ramp). */
  adversarialRampSteps: number;
  anomaly: AnomalyOptions;
  /** Augmentation of normal images (and of the base of synthetic anomalies). */
  normalAugment: { hflip: boolean; vflip: boolean; rotate90: boolean; brightness: number };
  /** Image score from the map: max of the map smoothed with this Gaussian sigma (pixels at model resolution). */
  scoreSigma: number;
  /** Weight of the blurred reconstruction error added to 1 - map in the anomaly score (0 = map only). */
  reconstructionScoreWeight: number;
  /** Held-out share of the training images for validation (threshold choice, synthetic-validation AUROC). */
  validationFraction: number;
  /** Steps between validation / real-test diagnostics. */
  evalEvery: number;
  /** Steps between checkpoints. */
  checkpointEvery: number;
  /** Batches used to re-estimate BatchNorm statistics after training (0 = keep running averages). */
  bnRecalibrationBatches: number;
  seed: number;
}

const paper: AnoSegTrainConfig = {
  preset: 'paper',
  arch: { resolution: 256, channels: 3, width: 1, coordChannels: true, reconstruction: true, upsampling: 'transposed' },
  aspect: 'stretch',
  trainCrop: null,
  batchSize: 16,
  anomalyFraction: 0.5,
  steps: 20000,
  maxMinutes: null,
  lr: 1e-4,
  betas: [0.5, 0.999],
  schedule: 'constant',
  loss: { segLoss: 'l1', segWeight: 1, reconstructionWeight: 1, adversarialWeight: 1, fakePair: 'reconstruction' },
  adversarialRampSteps: 0,
  anomaly: { ...paperAnomalyOptions },
  normalAugment: { hflip: false, vflip: false, rotate90: false, brightness: 0 },
  scoreSigma: 4,
  reconstructionScoreWeight: 0,
  validationFraction: 0.1,
  evalEvery: 500,
  checkpointEvery: 250,
  bnRecalibrationBatches: 0,
  seed: 0,
};

/** The paper's networks and losses at CPU size: 128 px, widths x0.25, batch 8 (~20 img/s on 2 cores). */
const cpu: AnoSegTrainConfig = {
  ...paper,
  preset: 'cpu',
  arch: { ...paper.arch, resolution: 128, width: 0.25 },
  batchSize: 8,
  steps: 6000,
  evalEvery: 500,
};

/**
 * The recipe chosen by measurement (README, "Quality"): CPU size with U-Net skips into the map decoder,
 * synthetic anomalies of mixed shape (rectangles, Perlin and Gaussian-mixture blobs), border (hard/soft) and
 * source (same image, another image, procedural texture), focal segmentation loss, no adversarial term,
 * cosine schedule over a 60-minute budget, BatchNorm re-estimated after training, map + reconstruction error
 * as the score. Each choice was made on bottle and KolektorSDD with magnetic tile held out.
 */
const recipe: AnoSegTrainConfig = {
  ...cpu,
  preset: 'recipe',
  arch: { ...cpu.arch, skips: true },
  steps: 6000,
  maxMinutes: 60,
  lr: 2e-4,
  schedule: 'cosine',
  // focal vs class-balanced L1, both with skips, 800 steps: bottle pixel AUROC 0.959 vs 0.948, AUPRO 0.830 vs
  // 0.815; KolektorSDD 0.879 vs 0.862, AUPRO 0.524 vs 0.461 (README, "Quality")
  loss: { segLoss: 'focal', segWeight: 1, reconstructionWeight: 1, adversarialWeight: 0, fakePair: 'input' },
  adversarialRampSteps: 1000,
  anomaly: {
    ...paperAnomalyOptions,
    maskShape: 'mixed',
    blend: 'mixed',
    source: 'mixed',
    areaRange: [0.005, 0.1],
  },
  normalAugment: { hflip: false, vflip: false, rotate90: false, brightness: 0.05 },
  bnRecalibrationBatches: 20,
  // The map and the reconstruction error fail on different defects: with this recipe (800 steps) their sum
  // raised pixel AUROC from 0.947 to 0.959 on bottle and from 0.788 to 0.879 on KolektorSDD (README, "Quality").
  reconstructionScoreWeight: 1,
};

export const PRESETS: Record<string, AnoSegTrainConfig> = { paper, cpu, recipe };
export const DEFAULT_PRESET = 'recipe';

export function presetConfig(name: string): AnoSegTrainConfig {
  const p = PRESETS[name];
  if (!p) throw new Error(`unknown preset '${name}' (known: ${Object.keys(PRESETS).join(', ')})`);
  return structuredClone(p);
}

/** Throws "<name> must be a positive integer (got v)" unless v is one (config validation). */
export function positiveInt(v: number, name: string): void {
  if (!Number.isInteger(v) || v < 1) throw new Error(`${name} must be a positive integer (got ${v})`);
}

export function validateConfig(c: AnoSegTrainConfig): void {
  validateArchitecture(c.arch);
  positiveInt(c.batchSize, 'batch size');
  positiveInt(c.steps, 'steps');
  positiveInt(c.evalEvery, 'evalEvery');
  positiveInt(c.checkpointEvery, 'checkpointEvery');
  if (c.batchSize < 2) throw new Error('batch size must be at least 2 (BatchNorm needs a batch)');
  if (!(c.anomalyFraction >= 0 && c.anomalyFraction <= 1)) throw new Error('anomalyFraction must be in [0, 1]');
  if (!(c.lr > 0 && c.lr < 1)) throw new Error(`learning rate must be in (0, 1) (got ${c.lr})`);
  if (!(c.validationFraction >= 0 && c.validationFraction < 0.5))
    throw new Error('validationFraction must be in [0, 0.5)');
  if (c.maxMinutes !== null && !(c.maxMinutes > 0)) throw new Error('maxMinutes must be positive');
  const crop = c.trainCrop ?? null;
  if (
    crop !== null &&
    !(Number.isInteger(crop) && crop >= 32 && (crop & (crop - 1)) === 0 && crop <= c.arch.resolution)
  )
    throw new Error(`train crop must be a power of two >= 32 and <= the resolution ${c.arch.resolution} (got ${crop})`);
  for (const k of ['segWeight', 'reconstructionWeight', 'adversarialWeight'] as const) {
    if (!(c.loss[k] >= 0)) throw new Error(`loss.${k} must be >= 0 (got ${c.loss[k]})`);
  }
  if (!(c.scoreSigma >= 0)) throw new Error(`scoreSigma must be >= 0 (got ${c.scoreSigma})`);
  if (!(c.reconstructionScoreWeight >= 0)) throw new Error('reconstructionScoreWeight must be >= 0');
  if (!(Number.isInteger(c.bnRecalibrationBatches) && c.bnRecalibrationBatches >= 0))
    throw new Error('bnRecalibrationBatches must be an integer >= 0');
  if (!(c.normalAugment.brightness >= 0 && c.normalAugment.brightness < 1))
    throw new Error('normalAugment.brightness must be in [0, 1)');
  if (c.loss.fakePair === 'reconstruction' && !c.arch.reconstruction && c.loss.adversarialWeight > 0) {
    throw new Error("fakePair 'reconstruction' needs the reconstruction decoder");
  }
}
