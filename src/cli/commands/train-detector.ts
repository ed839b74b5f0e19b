/** `anoseg train-detector`: the image-level detector of paper 3.4 on top of an AnoSeg model. */
import path from 'node:path';
import type { ProcessGroupOptions } from '../../engine/distributed.js';
import { TABLE5_VARIANTS } from '../../methods/detector/model.js';
import { detectorConfig, trainDetector, type DetectorTrainConfig } from '../../methods/detector/trainer.js';
import { CLS_MAPS } from '../choices.js';
import { GROUP_OPTIONS, groupFromValues, inGroup, otherRankDone } from '../distributed.js';
import {
  choice,
  convertValues,
  flag,
  integer,
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
import { fitIntervalsToSteps } from '../../train/loop.js';

/** The configuration the defaults come from (variant 'full'). */
const BASE = detectorConfig('full');

export const DETECTOR_CONFIG_OPTIONS = section('Training:', {
  variant: choice(TABLE5_VARIANTS, 'the detector of Table 5', { default: BASE.variant }),
  steps: integer('N', 'optimisation steps', {}, { default: BASE.steps }),
  minutes: number('M', 'wall-clock budget; training stops there and saves', { above: 0 }, { default: 'none' }),
  batch: integer('N', 'normal images per step', { min: 2 }, { default: BASE.batchSize }),
  'anomaly-batch': integer('N', 'synthetic anomalies per step (L_cls)', {}, { default: BASE.anomalyBatch }),
  lr: number('LR', 'learning rate', { above: 0, below: 1 }, { default: BASE.lr }),
  seed: integer('N', 'random seed', { min: 0 }, { default: BASE.seed }),
  alpha: number('A', 'eq. 5 feature weight', { min: 0 }, { default: BASE.score.alpha }),
  beta: number('B', 'eq. 5 image weight', { min: 0 }, { default: BASE.score.beta }),
  'cls-map': choice(CLS_MAPS, 'map paired with synthetic anomalies in L_cls (mask: as in the paper)', {
    default: BASE.clsMap,
  }),
  'no-coords': flag("no coordinate channels on the detector's generator input"),
  'eval-every': integer('N', 'steps between diagnostics', {}, { default: BASE.evalEvery }),
});

export const TRAIN_DETECTOR = {
  name: 'train-detector',
  summary: 'train the image-level detector (paper 3.4) on top of an AnoSeg model',
  about: `Trains the anomaly detector of paper 3.4 / Appendix A on top of a trained AnoSeg model and writes one model file
(pixel map from AnoSeg, image score from eq. 5) for predict, eval and serve.`,
  options: {
    anoseg: text('MODEL', 'trained AnoSeg model file (anoseg train)', { required: true }),
    data: text(
      'DIR',
      'MVTec-layout category (train/good; a labelled test split enables logged test AUROC) or a plain folder of good images',
      { required: true },
    ),
    out: text('DIR', 'run folder; rerunning resumes from its checkpoint', {
      default: 'runs/detector/<data name>-<variant>',
    }),
    'no-resume': flag('start over even if a checkpoint exists'),
    ...DETECTOR_CONFIG_OPTIONS,
    ...GROUP_OPTIONS,
  },
} satisfies CommandSpec<Options>;

/** The detector's training configuration the given options describe. */
export function detectorTrainConfig(v: Values<typeof DETECTOR_CONFIG_OPTIONS>): DetectorTrainConfig {
  const cfg = detectorConfig(v.variant ?? 'full');
  cfg.steps = v.steps ?? cfg.steps;
  cfg.maxMinutes = v.minutes ?? cfg.maxMinutes;
  cfg.batchSize = v.batch ?? cfg.batchSize;
  cfg.anomalyBatch = v['anomaly-batch'] ?? cfg.anomalyBatch;
  cfg.lr = v.lr ?? cfg.lr;
  cfg.seed = v.seed ?? cfg.seed;
  cfg.score.alpha = v.alpha ?? cfg.score.alpha;
  cfg.score.beta = v.beta ?? cfg.score.beta;
  cfg.clsMap = v['cls-map'] ?? cfg.clsMap;
  if (v['no-coords']) cfg.coordChannels = false;
  cfg.evalEvery = v['eval-every'] ?? cfg.evalEvery;
  fitIntervalsToSteps(cfg);
  return cfg;
}

/** detectorTrainConfig from option values as parseArgs gives them. */
export function detectorConfigFromArgs(raw: Record<string, RawValue | undefined>): DetectorTrainConfig {
  return detectorTrainConfig(convertValues(DETECTOR_CONFIG_OPTIONS, raw));
}

export interface TrainDetectorInvocation {
  anosegModel: string;
  data: string;
  out: string;
  config: DetectorTrainConfig;
  resume: boolean;
  group: ProcessGroupOptions | null;
}

/** `anoseg train-detector ARGS` resolved without running anything. */
export function resolveTrainDetector(args: string[], env: NodeJS.ProcessEnv = process.env): TrainDetectorInvocation {
  const { values: v } = parseCommand(TRAIN_DETECTOR, args);
  const data = v.data as string;
  const config = detectorTrainConfig(v);
  return {
    anosegModel: v.anoseg as string,
    data,
    out: v.out ?? path.join('runs', 'detector', `${path.basename(path.resolve(data))}-${config.variant}`),
    config,
    resume: !v['no-resume'],
    group: groupFromValues(v, env),
  };
}

async function run(args: string[]): Promise<void> {
  const t = resolveTrainDetector(args);
  const what = `training detector '${t.config.variant}' on ${t.data} over ${t.anosegModel} -> ${t.out} (log: ${path.join(t.out, 'train.log')})`;
  const { r, dp } = await inGroup(t.group, what, async (dp) => ({
    r: await trainDetector({
      anosegModel: t.anosegModel,
      data: t.data,
      out: t.out,
      variant: t.config.variant,
      config: t.config,
      resume: t.resume,
      distributed: dp,
    }),
    dp,
  }));
  if (otherRankDone(dp, r.steps)) return;
  const last = r.diagnostics.at(-1);
  process.stdout.write(
    `model: ${r.modelPath}\nsteps ${r.steps}, ${r.minutes.toFixed(1)} min, eq. 5 threshold ${r.imageThreshold.toPrecision(4)}` +
      (last ? `, validation image AUROC ${last.validationImageAuroc.toFixed(3)}` : '') +
      (last?.testImageAuroc != null
        ? `, test image AUROC ${last.testImageAuroc.toFixed(3)} (map score ${last.testMapImageAuroc?.toFixed(3)})`
        : '') +
      `\ncurves: ${path.join(t.out, 'curves.html')}\n`,
  );
}

export const trainDetectorCommand: Command = { spec: TRAIN_DETECTOR, run };
