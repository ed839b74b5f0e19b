/**
 * AnoSeg training configuration and presets. Every lever of the paper's ablation (Table 3) and of the
 * recipe study is a field here, so a run is fully described by its config (stored with the checkpoint).
 */
import type { AnomalyOptions } from '../../synth/anomalies.js';
import { paperAnomalyOptions, validateAnomalyOptions } from '../../synth/anomalies.js';
import type { AnoSegArchitecture } from './network.js';
import { validateArchitecture } from './network.js';
import { REAL_PAIRS, type AnoSegLossConfig, type DiscriminatorStepOptions, type RealPairs } from './step.js';
import { ADVERSARIAL_LOSSES, type AdversarialLossKind } from './losses.js';
import type { FitAspect } from '../../image/io.js';
import { tilingOf, type Tiling } from '../../image/tiles.js';
import { jsonDifferences } from '../../util/json-diff.js';
import { DEFAULT_RECONSTRUCTION_BLUR, IMAGE_SCORE_SOURCES, type ImageScoreSource } from '../../models/scoring.js';

/** How the reconstruction error's weight in the score applies: to the raw error, or to it standardised (config). */
export const RECONSTRUCTION_SCORE_SCALES = ['raw', 'standardised'] as const;
export type ReconstructionScoreScale = (typeof RECONSTRUCTION_SCORE_SCALES)[number];

/**
 * Stabilisers of adversarial learning (none is in the paper; each defaults to off, i.e. the plain eq. 3 with the
 * generator's learning rate), the discriminator side of AnoSegTrainConfig. Every field is optional and the whole
 * object may be absent (configs written before it existed): adversarialSettings fills in the defaults.
 */
export interface AdversarialConfig {
  /** Loss kind of both players: 'bce' (eq. 3), 'hinge' or 'least-squares' (losses.ts). */
  loss: AdversarialLossKind;
  /** Spectral normalisation in every convolution of D (one power-iteration step per forward; u in checkpoints). */
  spectralNorm: boolean;
  /** Target of real pairs in D's loss: 1 = none, e.g. 0.9 = one-sided label smoothing ('bce', 'least-squares'). */
  realLabel: number;
  /** Std of Gaussian instance noise added to every pair D sees (real and fake) at step 0 (0 = off). */
  instanceNoise: number;
  /** Steps over which the instance-noise std decays linearly to 0 (0 = over the whole run, cfg.steps). */
  instanceNoiseSteps: number;
  /** Weight γ of the R1 gradient penalty γ/2·E‖∇D(real pair)‖² (0 = off). */
  r1Weight: number;
  /** D's learning rate as a multiple of the generator's (two time-scale update rule; 1 = the same). */
  dLr: number;
  /** D is updated only while its loss (this step's, R1 not included) is above this floor (0 = always). */
  dLossFloor: number;
  /** Eq. 3's real pairs: 'all' images of the batch with their masks, or the 'normal' ones with all-ones masks. */
  realPairs: RealPairs;
  /**
   * Gaussian sigma (pixels) that softens the masks of real pairs (0 = the hard 0/1 masks): the generator's map is
   * a soft sigmoid output, so with hard masks D can tell real from fake by edge sharpness alone.
   */
  realMaskBlur: number;
}

/** The settings of a config written without them: the plain eq. 3 as before. */
export const ADVERSARIAL_DEFAULTS: AdversarialConfig = {
  loss: 'bce',
  spectralNorm: false,
  realLabel: 1,
  instanceNoise: 0,
  instanceNoiseSteps: 0,
  r1Weight: 0,
  dLr: 1,
  dLossFloor: 0,
  realPairs: 'all',
  realMaskBlur: 0,
};

/** A config's adversarial settings, absent fields (or the whole object, in older configs) as the defaults. */
export function adversarialSettings(c: Pick<AnoSegTrainConfig, 'adversarial'>): AdversarialConfig {
  return { ...ADVERSARIAL_DEFAULTS, ...c.adversarial };
}

/** The instance-noise std at `step`: instanceNoise decaying linearly to 0 over instanceNoiseSteps (or `steps`). */
export function instanceNoiseStd(a: AdversarialConfig, step: number, steps: number): number {
  if (a.instanceNoise <= 0) return 0;
  const span = a.instanceNoiseSteps > 0 ? a.instanceNoiseSteps : steps;
  return a.instanceNoise * Math.max(0, 1 - step / span);
}

/**
 * Dotted paths where two training configs differ, their budget (steps, maxMinutes) aside: what continuing a run
 * saved with `saved` under `config` would change (a longer budget is no change).
 */
export function settingsDifferences(saved: AnoSegTrainConfig, config: AnoSegTrainConfig): string[] {
  const withoutBudget = (c: AnoSegTrainConfig) => ({ ...c, steps: 0, maxMinutes: null });
  return jsonDifferences(withoutBudget(saved), withoutBudget(config));
}

/** The discriminator-side options of anosegTrainStep for one step of a run. */
export function discriminatorStepOptions(c: AnoSegTrainConfig, step: number): DiscriminatorStepOptions {
  const a = adversarialSettings(c);
  return {
    loss: a.loss,
    realLabel: a.realLabel,
    noiseStd: instanceNoiseStd(a, step, c.steps),
    r1Weight: a.r1Weight,
    lossFloor: a.dLossFloor,
    realPairs: a.realPairs,
    realMaskBlur: a.realMaskBlur,
  };
}

export interface AnoSegTrainConfig {
  preset: string;
  arch: AnoSegArchitecture;
  /** How non-square images become the square model input. */
  aspect: FitAspect;
  /**
   * 'long-side': elongated images are split into near-square tiles (src/image/tiles.ts), each fitted to the input,
   * in training and prediction; 'none' (absent in configs written before): the whole image.
   */
  tiling?: Tiling;
  /**
   * Training on square windows of this many pixels cut from images held at arch.resolution (null = whole
   * images). The network is fully convolutional: it trains at the window's cost and predicts whole images at
   * arch.resolution, with the coordinate channels of each window's place (absent in configs written before).
   */
  trainCrop?: number | null;
  /**
   * A backbone file of 'anoseg pretrain' whose stem and layer1..layer3 initialise the encoder (encoder-init.ts);
   * null = random initialisation (absent in configs written before).
   */
  encoderInit?: string | null;
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
  /** Stabilisers of adversarial learning (absent or partial = the defaults, ADVERSARIAL_DEFAULTS: all off). */
  adversarial?: Partial<AdversarialConfig>;
  anomaly: AnomalyOptions;
  /** Augmentation of normal images (and of the base of synthetic anomalies). */
  normalAugment: { hflip: boolean; vflip: boolean; rotate90: boolean; brightness: number };
  /** Image score from the map: max of the map smoothed with this Gaussian sigma (pixels at model resolution). */
  scoreSigma: number;
  /** Weight of the blurred reconstruction error added to 1 - map in the anomaly score (0 = map only). */
  reconstructionScoreWeight: number;
  /**
   * How that weight applies (absent in configs written before: 'raw'). 'raw': to the error as it is. 'standardised':
   * to the error on the scale of 1 - map, both measured by their standard deviation over the pixels of the held-out
   * good images when the model is saved; the model file keeps weight x std(1 - map) / std(error).
   */
  reconstructionScoreScale?: ReconstructionScoreScale;
  /** What the image score is the smoothed maximum of (absent in configs written before: 'map+reconstruction'). */
  imageScore?: ImageScoreSource;
  /** Gaussian sigma (pixels at model resolution) of the reconstruction error's blur (absent in configs before: 2). */
  reconstructionScoreBlur?: number;
  /** Held-out share of the training images for validation (threshold choice, synthetic-validation AUROC). */
  validationFraction: number;
  /** Steps between validation / real-test diagnostics. */
  evalEvery: number;
  /** Steps between checkpoints. */
  checkpointEvery: number;
  /** Batches used to re-estimate BatchNorm statistics after training (0 = keep running averages). */
  bnRecalibrationBatches: number;
  /**
   * Share of each re-estimation batch's images that carry a synthetic anomaly (absent in configs written before:
   * anomalyFraction, the training batches' share).
   */
  bnRecalibrationAnomalies?: number;
  /**
   * Keep the generator of this step as a second model, OUT/early-model.safetensors, when the run goes on to at least
   * twice as many steps (0 = none; absent in configs written before). `anoseg train` fuses it into the ensemble's map.
   */
  earlySnapshotStep?: number;
  seed: number;
}

const paper: AnoSegTrainConfig = {
  preset: 'paper',
  arch: { resolution: 256, channels: 3, width: 1, coordChannels: true, reconstruction: true, upsampling: 'transposed' },
  aspect: 'stretch',
  tiling: 'none',
  trainCrop: null,
  encoderInit: null,
  batchSize: 16,
  anomalyFraction: 0.5,
  steps: 20000,
  maxMinutes: null,
  lr: 1e-4,
  betas: [0.5, 0.999],
  schedule: 'constant',
  // Eq. 3 made stable by settings the paper does not state (ours, chosen on bottle + KolektorSDD at CPU size; README
  // "Making L_Adv work", S8): L_Adv weighted 0.1 after a 200-step ramp, R1 penalty 10, one-sided label smoothing
  // 0.9, D at half the generator's learning rate, and D's pairs with the input image: fake (x, Â) instead of eq. 3's
  // (x̂, Â), real (x, A) with A blurred (sigma 2 px). With (x̂, Â) D tells fakes by the blurred reconstruction alone
  // and with hard masks by the map's soft edges; then L_Adv pulls the map to nothing useful (S1-S7).
  loss: { segLoss: 'l1', segWeight: 1, reconstructionWeight: 1, adversarialWeight: 0.1, fakePair: 'input' },
  adversarialRampSteps: 200,
  adversarial: { realLabel: 0.9, r1Weight: 10, dLr: 0.5, realMaskBlur: 2 },
  anomaly: { ...paperAnomalyOptions },
  normalAugment: { hflip: false, vflip: false, rotate90: false, brightness: 0 },
  scoreSigma: 4,
  reconstructionScoreWeight: 0,
  reconstructionScoreScale: 'raw',
  imageScore: 'map+reconstruction',
  reconstructionScoreBlur: DEFAULT_RECONSTRUCTION_BLUR,
  validationFraction: 0.1,
  evalEvery: 500,
  checkpointEvery: 250,
  bnRecalibrationBatches: 0,
  bnRecalibrationAnomalies: 0.5,
  earlySnapshotStep: 0,
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
 * as the score. Each choice was made on bottle and KolektorSDD with magnetic tile held out, except three settled
 * with magnetic tile in view (the budget, no early snapshot, 128 px; their comments give the figures).
 */
const recipe: AnoSegTrainConfig = {
  ...cpu,
  preset: 'recipe',
  // 128 px: 256 px at the full budget (3,400 steps, ensemble) raised KolektorSDD (pixel AUROC 0.848 -> 0.913),
  // left bottle level (0.982 -> 0.980) and lowered the held-out magnetic tile (0.739 -> 0.699) and image AUROC on both
  // texture sets; bottle + KolektorSDD alone would pick 256 px, so this choice was made with magnetic tile in view
  // (docs/quality-rounds.md, fourth, eighth and ninth rounds). `--resolution 256` is the switch.
  arch: { ...cpu.arch, skips: true },
  // Elongated images in near-square tiles, not squeezed into the square input (a square image is one tile: bottle is
  // unchanged): ensemble at 12,000 steps (`anoseg study`), pixel / image AUROC / IoU / AUPRO, KolektorSDD (102 x 256,
  // 3 tiles) 0.890 / 0.796 / 0.132 / 0.520 -> 0.938 / 0.821 / 0.270 / 0.711, magnetic tile (held out; 40% of its
  // images are tiled) 0.734 / 0.825 / 0.162 / 0.654 -> 0.678 / 0.826 / 0.124 / 0.666. The fold with magnetic tile
  // held out picks it, the two others do not; the three-set means of image AUROC, IoU and AUPRO favour it, pixel
  // AUROC is level (docs/quality-rounds.md, eleventh and twelfth rounds). `--tiling none` is the switch.
  tiling: 'long-side',
  // The 60-minute budget ends the run, not a step count: a quiet 2-core machine makes ~13,000 steps in it. The old
  // 6,000-step cap stopped runs after 26-53 minutes; 12,000 steps against 6,000 raised bottle (choosing set) from
  // 0.977 / 0.986 / IoU 0.535 to 0.981 / 0.987 / 0.575 and the held-out magnetic tile from 0.712 / 0.803 to 0.741 /
  // 0.820 pixel / image AUROC, ensemble, and lowered KolektorSDD from 0.877 / 0.789 to 0.849 / 0.813 (its fine texture
  // overfits the synthetic task); leave-one-set-out keeps the budget in two folds of three (docs/quality-rounds.md,
  // sixth round).
  steps: 20000,
  maxMinutes: 60,
  lr: 2e-4,
  schedule: 'cosine',
  // focal vs class-balanced L1, both with skips, 800 steps: bottle pixel AUROC 0.959 vs 0.948, AUPRO 0.830 vs
  // 0.815; KolektorSDD 0.879 vs 0.862, AUPRO 0.524 vs 0.461 (docs/quality-rounds.md, first round). No Dice term:
  // at 12,000 steps it raised KolektorSDD (ensemble pixel AUROC 0.848 -> 0.862) and lowered the held-out magnetic
  // tile (0.739 -> 0.715) and image AUROC on KolektorSDD (0.797 -> 0.748) (ninth round); `--dice-weight` is the switch.
  loss: { segLoss: 'focal', segWeight: 1, reconstructionWeight: 1, adversarialWeight: 0, fakePair: 'input' },
  adversarialRampSteps: 1000,
  anomaly: {
    ...paperAnomalyOptions,
    maskShape: 'mixed',
    blend: 'mixed',
    source: 'mixed',
    areaRange: [0.005, 0.1],
    // Boxes may cross the edges a tile shares with its neighbours ('seams'; the image's own border stays closed):
    // with 'inside' every tile edge looked like a border where anomalies never are, and AnoSeg's map dipped there.
    // Ensemble at 12,000 steps, pixel / image AUROC / IoU / AUPRO, KolektorSDD 0.938 / 0.821 / 0.270 / 0.711 -> 0.941
    // / 0.807 / 0.302 / 0.708, magnetic tile (held out) 0.678 / 0.826 / 0.124 / 0.666 -> 0.679 / 0.842 / 0.117 /
    // 0.679; bottle (one tile) is unchanged draw for draw. Every leave-one-set-out fold picks it, by seed-sized margins
    // (docs/quality-rounds.md, thirteenth round). `--placement inside` is the switch.
    placement: 'seams',
  },
  normalAugment: { hflip: false, vflip: false, rotate90: false, brightness: 0.05 },
  bnRecalibrationBatches: 20,
  // Statistics from batches in which every image carries a synthetic anomaly, not the training batches' half:
  // AnoSeg alone after 12,000 steps, pixel AUROC bottle 0.982 -> 0.983, KolektorSDD 0.769 -> 0.805, magnetic tile
  // (held out) 0.736 -> 0.741 (ensemble 0.981 -> 0.982, 0.838 -> 0.848, 0.736 -> 0.739; docs/quality-rounds.md,
  // seventh round).
  bnRecalibrationAnomalies: 1,
  // An early snapshot fused into the ensemble's map (--early-snapshot 1000) raised KolektorSDD (0.848 -> 0.889) and
  // lowered the held-out magnetic tile (0.739 -> 0.714): a switch, not the default (docs/quality-rounds.md, seventh
  // round).
  earlySnapshotStep: 0,
  // The map and the reconstruction error fail on different defects: with this recipe (800 steps) their sum
  // raised pixel AUROC from 0.947 to 0.959 on bottle and from 0.788 to 0.879 on KolektorSDD (docs/quality-rounds.md,
  // first round).
  reconstructionScoreWeight: 1,
  // The error on the scale of 1 - map (the raw sum weighted it 1.4-4x below the map's spread on the development
  // sets) and the image score from the map alone: at 12,000 steps, the error still blurred with sigma 2, ensemble
  // pixel / image AUROC / IoU, bottle 0.982 / 0.987 / 0.578 -> 0.981 / 0.987 / 0.575, KolektorSDD 0.848 / 0.797 /
  // 0.057 -> 0.865 / 0.796 / 0.120, magnetic tile (held out) 0.739 / 0.817 / 0.164 -> 0.740 / 0.825 / 0.161. A raised
  // fixed weight instead (8: KolektorSDD 0.869) lowered the held-out set (0.725 / 0.769); this one is picked by every
  // leave-one-set-out fold (docs/quality-rounds.md, tenth round).
  reconstructionScoreScale: 'standardised',
  imageScore: 'map',
  // The error unblurred (it was blurred with sigma 2): ensemble pixel AUROC / AUPRO at 12,000 steps, bottle 0.981 /
  // 0.916 -> 0.981 / 0.917, KolektorSDD 0.865 / 0.459 -> 0.890 / 0.520, magnetic tile (held out) 0.740 / 0.641 ->
  // 0.734 / 0.654. Two leave-one-set-out folds of three pick it; bottle + magnetic tile pick sigma 4, and KolektorSDD
  // then scores 0.841: thin cracks want the error sharp, large regions a little blurred (docs/quality-rounds.md,
  // tenth round). `--recon-score-blur` is the switch.
  reconstructionScoreBlur: 0,
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
  tilingOf(c.tiling, 'config');
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
  const scale = c.reconstructionScoreScale ?? 'raw';
  if (!(RECONSTRUCTION_SCORE_SCALES as readonly string[]).includes(scale))
    throw new Error(`reconstructionScoreScale must be one of ${RECONSTRUCTION_SCORE_SCALES.join(', ')} (got ${scale})`);
  const imageScore = c.imageScore ?? 'map+reconstruction';
  if (!(IMAGE_SCORE_SOURCES as readonly string[]).includes(imageScore))
    throw new Error(`imageScore must be one of ${IMAGE_SCORE_SOURCES.join(', ')} (got ${imageScore})`);
  const blur = c.reconstructionScoreBlur ?? DEFAULT_RECONSTRUCTION_BLUR;
  if (!(blur >= 0 && Number.isFinite(blur))) throw new Error(`reconstructionScoreBlur must be >= 0 (got ${blur})`);
  if (!(Number.isInteger(c.bnRecalibrationBatches) && c.bnRecalibrationBatches >= 0))
    throw new Error('bnRecalibrationBatches must be an integer >= 0');
  if (!(c.normalAugment.brightness >= 0 && c.normalAugment.brightness < 1))
    throw new Error('normalAugment.brightness must be in [0, 1)');
  if (c.loss.fakePair === 'reconstruction' && !c.arch.reconstruction && c.loss.adversarialWeight > 0) {
    throw new Error("fakePair 'reconstruction' needs the reconstruction decoder");
  }
  const bnAnomalies = c.bnRecalibrationAnomalies ?? c.anomalyFraction;
  if (!(bnAnomalies >= 0 && bnAnomalies <= 1))
    throw new Error(`bnRecalibrationAnomalies must be in [0, 1] (got ${bnAnomalies})`);
  const early = c.earlySnapshotStep ?? 0;
  if (!(Number.isInteger(early) && early >= 0))
    throw new Error(`earlySnapshotStep must be an integer >= 0 (got ${early})`);
  if (!(Number.isInteger(c.adversarialRampSteps) && c.adversarialRampSteps >= 0))
    throw new Error(`adversarialRampSteps must be an integer >= 0 (got ${c.adversarialRampSteps})`);
  validateAdversarial(c);
  validateAnomalyOptions(c.anomaly);
}

/** The adversarial settings' checks (messages name the config field). */
function validateAdversarial(c: AnoSegTrainConfig): void {
  const a = adversarialSettings(c);
  if (!(ADVERSARIAL_LOSSES as readonly string[]).includes(a.loss))
    throw new Error(`adversarial.loss must be one of ${ADVERSARIAL_LOSSES.join(', ')} (got ${a.loss})`);
  if (!(REAL_PAIRS as readonly string[]).includes(a.realPairs))
    throw new Error(`adversarial.realPairs must be one of ${REAL_PAIRS.join(', ')} (got ${a.realPairs})`);
  if (typeof a.spectralNorm !== 'boolean') throw new Error('adversarial.spectralNorm must be true or false');
  if (!(a.realLabel > 0 && a.realLabel <= 1))
    throw new Error(`adversarial.realLabel must be in (0, 1] (got ${a.realLabel})`);
  if (a.loss === 'hinge' && a.realLabel !== 1)
    throw new Error("adversarial.realLabel (label smoothing) has no meaning for the 'hinge' loss; leave it at 1");
  for (const k of ['instanceNoise', 'r1Weight', 'dLossFloor', 'realMaskBlur'] as const)
    if (!(a[k] >= 0 && Number.isFinite(a[k]))) throw new Error(`adversarial.${k} must be >= 0 (got ${a[k]})`);
  if (!(Number.isInteger(a.instanceNoiseSteps) && a.instanceNoiseSteps >= 0))
    throw new Error(`adversarial.instanceNoiseSteps must be an integer >= 0 (got ${a.instanceNoiseSteps})`);
  if (!(a.dLr > 0 && c.lr * a.dLr < 1))
    throw new Error(`adversarial.dLr must be > 0 with a discriminator learning rate below 1 (got ${a.dLr})`);
  if (a.realPairs === 'normal' && Math.round(c.batchSize * c.anomalyFraction) >= c.batchSize)
    throw new Error("adversarial.realPairs 'normal' needs a normal image in every batch (lower anomalyFraction)");
}
