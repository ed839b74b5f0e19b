/** `anoseg train`: an AnoSeg model on good images (or, with --method padim, `anoseg padim`). */
import { existsSync } from 'node:fs';
import path from 'node:path';
import type { ProcessGroupOptions } from '../../engine/distributed.js';
import {
  AREA_SAMPLINGS,
  BLENDS,
  DEFAULT_MIXED_SHAPES,
  MASK_SHAPES,
  PATCH_SOURCES,
  PLACEMENTS,
  REGION_SHAPES,
} from '../../synth/anomalies.js';
import { REAL_PAIRS, SEG_LOSSES } from '../../methods/anoseg/step.js';
import { ADVERSARIAL_LOSSES } from '../../methods/anoseg/losses.js';
import { trainAnoSeg } from '../../methods/anoseg/trainer.js';
import { anosegMinutesBesidePadim, fuseWithPadim } from '../../methods/ensemble/with-padim.js';
import { loadPredictor } from '../../methods/load.js';
import {
  DEFAULT_PRESET,
  PRESETS,
  RECONSTRUCTION_SCORE_SCALES,
  adversarialSettings,
  presetConfig,
  validateConfig,
  type AdversarialConfig,
  type AnoSegTrainConfig,
} from '../../methods/anoseg/config.js';
import type { PadimTrainOptions } from '../../methods/padim/trainer.js';
import type { PatchcoreTrainOptions } from '../../methods/patchcore/trainer.js';
import { ASPECTS, FAKE_PAIRS, UPSAMPLINGS, tilingChoice } from '../choices.js';
import { GROUP_OPTIONS, groupFromValues, inGroup, otherRankDone } from '../distributed.js';
import {
  UsageError,
  choice,
  choiceList,
  convertValues,
  custom,
  flag,
  integer,
  invalid,
  number,
  parseCommand,
  section,
  text,
  type Command,
  type CommandSpec,
  type Options,
  type RawValue,
  type Values,
} from '../options.js';
import { resolvePadim, runPadimWith } from './padim.js';
import { resolvePatchcore, runPatchcoreWith } from './patchcore.js';
import { fitIntervalsToSteps } from '../../train/loop.js';
import { DEFAULT_RECONSTRUCTION_BLUR, IMAGE_SCORE_SOURCES } from '../../models/scoring.js';

/** A default as the presets give it: the default preset's value, then the presets whose value differs. */
export function fromPresets(get: (c: AnoSegTrainConfig) => unknown): string {
  const show = (v: unknown): string =>
    v === null || v === undefined
      ? 'none'
      : Array.isArray(v)
        ? v.join(',')
        : typeof v === 'boolean'
          ? v
            ? 'on'
            : 'off'
          : String(v);
  const base = show(get(PRESETS[DEFAULT_PRESET]));
  const others = new Map<string, string[]>();
  for (const [name, c] of Object.entries(PRESETS)) {
    const v = show(get(c));
    if (v !== base) others.set(v, [...(others.get(v) ?? []), name]);
  }
  return [base, ...[...others].map(([v, names]) => `${names.join(', ')}: ${v}`)].join('; ');
}

function areaRange(s: string, name: string): [number, number] {
  const r = s.split(',').map((x) => (x.trim() === '' ? NaN : Number(x)));
  if (r.length !== 2 || !(r[0] > 0 && r[1] >= r[0] && r[1] <= 1))
    throw invalid(name, s, 'LO,HI with 0 < LO <= HI <= 1');
  return [r[0], r[1]];
}

/** The options that shape the synthetic anomalies (train and synth). */
export const ANOMALY_OPTIONS = section('Synthetic anomalies:', {
  'no-hard-aug': flag('CutPaste without rotation/perm/jitter (ablation)'),
  'mask-shape': choice(MASK_SHAPES, "shape of the pasted region; 'mixed' draws one of --mixed-shapes per anomaly", {
    default: fromPresets((c) => c.anomaly.maskShape),
  }),
  'mixed-shapes': choiceList(REGION_SHAPES, "the shapes 'mixed' draws from", {
    default: fromPresets((c) => c.anomaly.mixedShapes ?? DEFAULT_MIXED_SHAPES),
  }),
  blend: choice(BLENDS, 'opaque paste, feathered border, or one of them per anomaly', {
    default: fromPresets((c) => c.anomaly.blend),
  }),
  source: choice(
    PATCH_SOURCES,
    'where the patch comes from: the image itself, another image, a texture, or one of them per anomaly',
    {
      default: fromPresets((c) => c.anomaly.source),
    },
  ),
  'area-range': custom('LO,HI', 'anomaly patch area as fractions of the image', areaRange, {
    default: fromPresets((c) => c.anomaly.areaRange),
  }),
  'area-sampling': choice(AREA_SAMPLINGS, 'how the area is drawn from --area-range', {
    default: fromPresets((c) => c.anomaly.areaSampling ?? 'uniform'),
  }),
  placement: choice(
    PLACEMENTS,
    'anomaly boxes inside the image (CutPaste), also across the seams between tiles, or overhanging every border (even coverage)',
    {
      default: fromPresets((c) => c.anomaly.placement ?? 'inside'),
    },
  ),
});

const PRESET_OPTION = choice(Object.keys(PRESETS), 'the starting configuration, which the other options change', {
  default: DEFAULT_PRESET,
});

const RUN_OPTIONS = section('Run:', {
  steps: integer('N', 'optimisation steps', {}, { default: fromPresets((c) => c.steps) }),
  minutes: number(
    'M',
    'wall-clock budget; training stops there and saves',
    { above: 0 },
    { default: fromPresets((c) => c.maxMinutes) },
  ),
  batch: integer('N', 'images per step', { min: 2 }, { default: fromPresets((c) => c.batchSize) }),
  lr: number('LR', 'learning rate', { above: 0, below: 1 }, { default: fromPresets((c) => c.lr) }),
  seed: integer('N', 'random seed', { min: 0 }, { default: fromPresets((c) => c.seed) }),
  'eval-every': integer('N', 'steps between diagnostics', {}, { default: fromPresets((c) => c.evalEvery) }),
  'checkpoint-every': integer('N', 'steps between checkpoints', {}, { default: fromPresets((c) => c.checkpointEvery) }),
  'bn-anomalies': number(
    'F',
    'share of the images of the BatchNorm re-estimation batches (after training) that carry a synthetic anomaly',
    { min: 0, max: 1 },
    { default: fromPresets((c) => c.bnRecalibrationAnomalies) },
  ),
  'early-snapshot': integer(
    'N',
    "keep the network of step N as a second model (OUT/early-model.safetensors, fused into the ensemble's map) " +
      'when the run reaches 2N steps; 0 = none',
    { min: 0 },
    { default: fromPresets((c) => c.earlySnapshotStep ?? 0) },
  ),
});

const NETWORK_OPTIONS = section('Network and input:', {
  resolution: integer(
    'PX',
    'input size',
    { min: 32, powerOfTwo: true },
    { default: fromPresets((c) => c.arch.resolution) },
  ),
  width: number(
    'W',
    'channel multiplier of Table 6',
    { above: 0, max: 4 },
    { default: fromPresets((c) => c.arch.width) },
  ),
  'train-crop': integer(
    'PX',
    'train on random PX-pixel windows of the images held at --resolution (at most the resolution)',
    { min: 32, powerOfTwo: true },
    { default: fromPresets((c) => c.trainCrop) },
  ),
  'encoder-init': text(
    'FILE',
    "initialise the encoder's stem and layer1-3 from a backbone file of 'anoseg pretrain' of the same --width",
    { default: fromPresets((c) => c.encoderInit ?? null) },
  ),
  aspect: choice(ASPECTS, 'how non-square images become the square input', { default: fromPresets((c) => c.aspect) }),
  tiling: tilingChoice(fromPresets((c) => c.tiling ?? 'none')),
  skips: flag('U-Net skip connections into the map decoder', { default: fromPresets((c) => c.arch.skips ?? false) }),
  'no-skips': flag("Table 6's plain map decoder, without skip connections"),
  upsampling: choice(UPSAMPLINGS, 'decoder upsampling', { default: fromPresets((c) => c.arch.upsampling) }),
  'no-coords': flag('no coordinate channels (ablation)'),
});

const LOSS_OPTIONS = section('Losses:', {
  'seg-loss': choice(SEG_LOSSES, 'segmentation loss (eq. 2, its class-balanced variant, or focal)', {
    default: fromPresets((c) => c.loss.segLoss),
  }),
  'dice-weight': number(
    'W',
    'weight of a soft Dice term added to the segmentation loss (0 = none)',
    { min: 0 },
    { default: fromPresets((c) => c.loss.diceWeight ?? 0) },
  ),
  'adv-weight': number('W', 'weight of L_Adv', { min: 0 }, { default: fromPresets((c) => c.loss.adversarialWeight) }),
  'no-adversarial': flag('drop L_Adv (ablation; the same as --adv-weight 0)'),
  'fake-pair': choice(FAKE_PAIRS, "eq. 3's fake pair: (reconstruction, map) or (input, map)", {
    default: fromPresets((c) => c.loss.fakePair),
  }),
});

const SCORE_OPTIONS = section('Score:', {
  'recon-score-weight': number(
    'W',
    'weight of the blurred reconstruction error added to 1 - map in the pixel score (0 = the map alone)',
    { min: 0 },
    { default: fromPresets((c) => c.reconstructionScoreWeight) },
  ),
  'recon-score-scale': choice(
    RECONSTRUCTION_SCORE_SCALES,
    "'standardised': the weight applies to the error on the scale of 1 - map, each divided by its standard deviation " +
      "over the held-out good images' pixels when the model is saved; 'raw': to the error as it is",
    { default: fromPresets((c) => c.reconstructionScoreScale ?? 'raw') },
  ),
  'recon-score-blur': number(
    'S',
    'Gaussian sigma (pixels at --resolution) the reconstruction error is blurred with in the score (0 = none)',
    { min: 0 },
    { default: fromPresets((c) => c.reconstructionScoreBlur ?? DEFAULT_RECONSTRUCTION_BLUR) },
  ),
  'image-score': choice(
    IMAGE_SCORE_SOURCES,
    "the image score is the maximum of the smoothed 'map' (1 - map) or of the smoothed pixel score " +
      "('map+reconstruction')",
    { default: fromPresets((c) => c.imageScore ?? 'map+reconstruction') },
  ),
});

const adv = (get: (a: AdversarialConfig) => unknown): string => fromPresets((c) => get(adversarialSettings(c)));

/** The stabilisers of adversarial learning (config field `adversarial`; none is in the paper; defaults per preset). */
const ADVERSARIAL_OPTIONS = section('Adversarial learning (stabilisers, not in the paper):', {
  'adv-ramp': integer(
    'N',
    'steps over which the L_Adv weight ramps up from 0 (0 = none)',
    { min: 0 },
    { default: fromPresets((c) => c.adversarialRampSteps) },
  ),
  'adv-loss': choice(ADVERSARIAL_LOSSES, 'adversarial loss of both players: eq. 3, hinge or least squares', {
    default: adv((a) => a.loss),
  }),
  'spectral-norm': flag("spectral normalisation in the discriminator's convolutions", {
    default: adv((a) => a.spectralNorm),
  }),
  'real-label': number(
    'P',
    "target of real pairs in the discriminator's loss; < 1 = one-sided label smoothing (bce, least-squares)",
    { above: 0, max: 1 },
    { default: adv((a) => a.realLabel) },
  ),
  'instance-noise': number(
    'STD',
    'std of Gaussian noise added to every pair the discriminator sees, decaying linearly to 0 (0 = none)',
    { min: 0 },
    { default: adv((a) => a.instanceNoise) },
  ),
  'instance-noise-steps': integer(
    'N',
    'steps over which the instance noise decays to 0 (0 = the whole run)',
    { min: 0 },
    { default: adv((a) => a.instanceNoiseSteps) },
  ),
  'r1-weight': number(
    'G',
    'weight of the R1 gradient penalty G/2 E|grad D(real pair)|^2 (0 = none)',
    { min: 0 },
    { default: adv((a) => a.r1Weight) },
  ),
  'd-lr': number(
    'M',
    "the discriminator's learning rate as a multiple of --lr (two time-scale update rule)",
    { above: 0 },
    { default: adv((a) => a.dLr) },
  ),
  'd-loss-floor': number(
    'F',
    'update the discriminator only while its loss is above F (0 = always)',
    { min: 0 },
    { default: adv((a) => a.dLossFloor) },
  ),
  'real-pairs': choice(REAL_PAIRS, "eq. 3's real pairs: every image with its mask, or the normal images only", {
    default: adv((a) => a.realPairs),
  }),
  'real-mask-blur': number(
    'SIGMA',
    "Gaussian sigma (px) that softens the real pairs' masks, so D cannot tell them from maps by edge sharpness (0 = none)",
    { min: 0 },
    { default: adv((a) => a.realMaskBlur) },
  ),
});

/** Every option that sets a field of the training configuration. */
export const TRAIN_CONFIG_OPTIONS = {
  preset: PRESET_OPTION,
  ...RUN_OPTIONS,
  ...NETWORK_OPTIONS,
  ...ANOMALY_OPTIONS,
  ...LOSS_OPTIONS,
  ...ADVERSARIAL_OPTIONS,
  ...SCORE_OPTIONS,
};

export type TrainConfigValues = Values<typeof TRAIN_CONFIG_OPTIONS>;

const ENSEMBLES = ['padim', 'none'] as const;

export const TRAIN = {
  name: 'train',
  summary: 'train a model on good images (MVTec-layout category or a plain folder)',
  about:
    "Trains AnoSeg (paper 3.1-3.3 plus the recipe's levers) and writes OUT/model.safetensors for predict, eval and " +
    `serve. Defaults are the ${DEFAULT_PRESET} preset's; where another preset differs, its value follows.`,
  options: {
    data: text(
      'DIR',
      'a category in one of the layouts of README "Data layouts" (trains on its good images; a test split enables ' +
        'live test diagnostics, pixel ones where masks exist) or a plain folder of good images',
      { required: true },
    ),
    method: choice(
      ['anoseg', 'padim', 'patchcore'],
      "'padim' / 'patchcore' fit that detector instead: anoseg padim / anoseg patchcore, with its options",
      {
        default: 'anoseg',
        synopsis: true,
      },
    ),
    out: text('DIR', 'run folder; rerunning resumes from its checkpoint', { default: 'runs/anoseg/<data name>' }),
    ensemble: choice(
      ENSEMBLES,
      "'padim': also fit PaDiM and write OUT/ensemble.safetensors, AnoSeg + PaDiM on common scales (README " +
        '"Quality"; the fit comes out of --minutes); \'none\': AnoSeg alone',
      { default: `padim for the ${DEFAULT_PRESET} preset, none for the others` },
    ),
    'no-resume': flag('start over even if a checkpoint exists'),
    ...TRAIN_CONFIG_OPTIONS,
    ...GROUP_OPTIONS,
  },
} satisfies CommandSpec<Options>;

/** The training configuration the given options describe (the preset's, changed by the options). */
export function trainConfig(v: TrainConfigValues): AnoSegTrainConfig {
  if (v['no-adversarial'] && v['adv-weight'] !== undefined)
    throw new UsageError('--no-adversarial and --adv-weight contradict each other');
  if (v.skips && v['no-skips']) throw new UsageError('--skips and --no-skips contradict each other');
  const cfg = presetConfig(v.preset ?? DEFAULT_PRESET);
  cfg.steps = v.steps ?? cfg.steps;
  cfg.maxMinutes = v.minutes ?? cfg.maxMinutes;
  cfg.batchSize = v.batch ?? cfg.batchSize;
  cfg.lr = v.lr ?? cfg.lr;
  cfg.seed = v.seed ?? cfg.seed;
  cfg.evalEvery = v['eval-every'] ?? cfg.evalEvery;
  cfg.checkpointEvery = v['checkpoint-every'] ?? cfg.checkpointEvery;
  fitIntervalsToSteps(cfg);
  cfg.earlySnapshotStep = v['early-snapshot'] ?? cfg.earlySnapshotStep;
  cfg.bnRecalibrationAnomalies = v['bn-anomalies'] ?? cfg.bnRecalibrationAnomalies;
  cfg.arch.resolution = v.resolution ?? cfg.arch.resolution;
  cfg.arch.width = v.width ?? cfg.arch.width;
  cfg.trainCrop = v['train-crop'] ?? cfg.trainCrop;
  cfg.encoderInit = v['encoder-init'] ?? cfg.encoderInit;
  cfg.aspect = v.aspect ?? cfg.aspect;
  cfg.tiling = v.tiling ?? cfg.tiling;
  if (v.skips) cfg.arch.skips = true;
  if (v['no-skips']) cfg.arch.skips = false;
  cfg.arch.upsampling = v.upsampling ?? cfg.arch.upsampling;
  if (v['no-coords']) cfg.arch.coordChannels = false;
  applyAnomalyOptions(cfg, v);
  cfg.loss.segLoss = v['seg-loss'] ?? cfg.loss.segLoss;
  cfg.loss.diceWeight = v['dice-weight'] ?? cfg.loss.diceWeight;
  if (v['no-adversarial']) cfg.loss.adversarialWeight = 0;
  cfg.loss.adversarialWeight = v['adv-weight'] ?? cfg.loss.adversarialWeight;
  cfg.loss.fakePair = v['fake-pair'] ?? cfg.loss.fakePair;
  cfg.adversarialRampSteps = v['adv-ramp'] ?? cfg.adversarialRampSteps;
  applyAdversarialOptions(cfg, v);
  cfg.reconstructionScoreWeight = v['recon-score-weight'] ?? cfg.reconstructionScoreWeight;
  cfg.reconstructionScoreScale = v['recon-score-scale'] ?? cfg.reconstructionScoreScale;
  cfg.imageScore = v['image-score'] ?? cfg.imageScore;
  cfg.reconstructionScoreBlur = v['recon-score-blur'] ?? cfg.reconstructionScoreBlur;
  try {
    validateConfig(cfg);
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  return cfg;
}

function applyAnomalyOptions(cfg: AnoSegTrainConfig, v: Values<typeof ANOMALY_OPTIONS>): void {
  const a = cfg.anomaly;
  if (v['no-hard-aug']) a.hardAugmentation = false;
  a.maskShape = v['mask-shape'] ?? a.maskShape;
  a.mixedShapes = v['mixed-shapes'] ?? a.mixedShapes;
  a.blend = v.blend ?? a.blend;
  a.source = v.source ?? a.source;
  a.areaRange = v['area-range'] ?? a.areaRange;
  a.areaSampling = v['area-sampling'] ?? a.areaSampling;
  a.placement = v.placement ?? a.placement;
}

/** The adversarial stabilisers given on the command line; the config gets an `adversarial` object only then. */
function applyAdversarialOptions(cfg: AnoSegTrainConfig, v: Values<typeof ADVERSARIAL_OPTIONS>): void {
  const given: Partial<AdversarialConfig> = {
    loss: v['adv-loss'],
    spectralNorm: v['spectral-norm'] || undefined,
    realLabel: v['real-label'],
    instanceNoise: v['instance-noise'],
    instanceNoiseSteps: v['instance-noise-steps'],
    r1Weight: v['r1-weight'],
    dLr: v['d-lr'],
    dLossFloor: v['d-loss-floor'],
    realPairs: v['real-pairs'],
    realMaskBlur: v['real-mask-blur'],
  };
  // Label smoothing has no meaning for the hinge loss: a preset's smoothing gives way unless it was asked for.
  if (given.loss === 'hinge' && given.realLabel === undefined) given.realLabel = 1;
  const set = Object.fromEntries(Object.entries(given).filter(([, x]) => x !== undefined));
  if (Object.keys(set).length) cfg.adversarial = { ...cfg.adversarial, ...set };
}

/** trainConfig from option values as parseArgs gives them ({ steps: '40', 'no-skips': true }). */
export function trainConfigFromArgs(raw: Record<string, RawValue | undefined>): AnoSegTrainConfig {
  return trainConfig(convertValues(TRAIN_CONFIG_OPTIONS, raw));
}

export type TrainInvocation =
  | {
      method: 'anoseg';
      data: string;
      out: string;
      config: AnoSegTrainConfig;
      /** 'padim': the AnoSeg model fused with a PaDiM model fitted on the same images (OUT/ensemble.safetensors). */
      ensemble: (typeof ENSEMBLES)[number];
      resume: boolean;
      group: ProcessGroupOptions | null;
    }
  | { method: 'padim'; padim: PadimTrainOptions }
  | { method: 'patchcore'; patchcore: PatchcoreTrainOptions };

/** --method (given before parsing: it decides which command's options the rest are), and the other arguments. */
export function splitMethod(args: string[]): { method: 'anoseg' | 'padim' | 'patchcore'; rest: string[] } {
  const at = args.findIndex((a) => a === '--method' || a.startsWith('--method='));
  if (at < 0) return { method: 'anoseg', rest: args };
  const inline = args[at].startsWith('--method=');
  const value = inline ? args[at].slice('--method='.length) : args[at + 1];
  if (value === undefined) throw new UsageError('--method needs a value (one of anoseg, padim, patchcore)');
  const method = TRAIN.options.method.convert(value, 'method');
  return { method, rest: [...args.slice(0, at), ...args.slice(at + (inline ? 1 : 2))] };
}

/** `anoseg train ARGS` resolved without running anything. */
export function resolveTrain(args: string[], env: NodeJS.ProcessEnv = process.env): TrainInvocation {
  const { method, rest } = splitMethod(args);
  if (method === 'padim') return { method, padim: resolvePadim(rest) };
  if (method === 'patchcore') return { method, patchcore: resolvePatchcore(rest) };
  const { values: v } = parseCommand(TRAIN, rest);
  const data = v.data as string;
  return {
    method,
    data,
    out: v.out ?? path.join('runs', 'anoseg', path.basename(path.resolve(data))),
    config: trainConfig(v),
    ensemble: v.ensemble ?? ((v.preset ?? DEFAULT_PRESET) === DEFAULT_PRESET ? 'padim' : 'none'),
    resume: !v['no-resume'],
    group: groupFromValues(v, env),
  };
}

async function run(args: string[]): Promise<void> {
  const t = resolveTrain(args);
  if (t.method === 'padim') return runPadimWith(t.padim);
  if (t.method === 'patchcore') return runPatchcoreWith(t.patchcore);
  if (!existsSync(t.data)) throw new UsageError(`data folder not found: ${t.data}`);
  if (t.ensemble === 'padim' && t.config.maxMinutes !== null) {
    // the PaDiM fit and the calibration come out of the budget
    t.config.maxMinutes = await anosegMinutesBesidePadim(t.data, t.config.maxMinutes, t.config.tiling);
  }
  const what = `training ${t.config.preset} preset on ${t.data} -> ${t.out} (log: ${path.join(t.out, 'train.log')})`;
  const { r, dp } = await inGroup(t.group, what, async (dp) => ({
    r: await trainAnoSeg({ data: t.data, out: t.out, config: t.config, resume: t.resume, distributed: dp }),
    dp,
  }));
  if (otherRankDone(dp, r.steps)) return;
  const last = r.diagnostics.at(-1);
  process.stdout.write(
    `model: ${r.modelPath}\nsteps ${r.steps}, ${r.minutes.toFixed(1)} min` +
      (last ? `, synthetic val pixel AUROC ${last.syntheticPixelAuroc.toFixed(3)}` : '') +
      (last?.testPixelAuroc != null ? `, test pixel AUROC ${last.testPixelAuroc.toFixed(3)}` : '') +
      (last?.testImageAuroc != null ? `, test image AUROC ${last.testImageAuroc.toFixed(3)}` : '') +
      `\ncurves: ${path.join(path.dirname(r.modelPath), 'curves.html')}\n`,
  );
  if (t.ensemble === 'padim') {
    process.stderr.write(`fitting PaDiM beside it and fusing the two (${path.join(t.out, 'padim')})\n`);
    const e = await fuseWithPadim({
      data: t.data,
      out: t.out,
      anosegModel: r.modelPath,
      earlyModel: r.earlyModelPath,
      aspect: t.config.aspect,
      tiling: t.config.tiling,
      seed: t.config.seed,
      resume: t.resume,
      loadModel: loadPredictor,
    });
    process.stdout.write(
      `model: ${e.modelPath} (AnoSeg + ${r.earlyModelPath ? 'its early snapshot + ' : ''}PaDiM, the one to use; ` +
        `synthetic validation image AUROC ` +
        `${e.validationImageAuroc.toFixed(3)}, pixel AUROC ${e.validationPixelAuroc.toFixed(3)})\n`,
    );
  }
}

export const trainCommand: Command = { spec: TRAIN, run };
