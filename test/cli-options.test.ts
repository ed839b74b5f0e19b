/**
 * The CLI's option definitions against what they set: every option of every command is accepted by the parser
 * and reaches the field of the resolved options / training configuration it is meant to set (through each
 * command's pure "args -> resolved options" function, nothing is run); the help lists every option with its
 * choices and names no option the command lacks; bad invocations of every command through main() end with exit
 * status 2 and a message naming the option.
 */
import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { COMMANDS } from '../src/cli/commands/index.js';
import { resolveAblation } from '../src/cli/commands/ablation.js';
import { resolveDemo } from '../src/cli/commands/demo.js';
import { resolveEval } from '../src/cli/commands/eval.js';
import { resolveExport } from '../src/cli/commands/export.js';
import { resolveFuse } from '../src/cli/commands/fuse.js';
import { resolvePadim } from '../src/cli/commands/padim.js';
import { resolvePatchcore } from '../src/cli/commands/patchcore.js';
import { resolvePredict } from '../src/cli/commands/predict.js';
import { resolvePretrain } from '../src/cli/commands/pretrain.js';
import { resolveServe } from '../src/cli/commands/serve.js';
import { resolveStudy } from '../src/cli/commands/study.js';
import { resolveFormulaSynth, resolveSynth } from '../src/cli/commands/synth.js';
import { resolveTrainDetector } from '../src/cli/commands/train-detector.js';
import { resolveTrain } from '../src/cli/commands/train.js';
import { resolveLaunch } from '../src/cli/distributed.js';
import { UsageError, synopsisOf, usage, type Option } from '../src/cli/options.js';
import { generateSyntheticDataset } from '../src/data/synthetic-dataset.js';
import { getNumThreads, setNumThreads } from '../src/engine/index.js';
import type { AnoSegTrainConfig } from '../src/methods/anoseg/config.js';
import { runCli } from './run-cli.js';

/** One option's case: its arguments, what they should set, and the value expected there. */
interface Case {
  args: string[];
  /** Arguments both runs get (e.g. another preset), so that the option is what makes the difference. */
  context?: string[];
  get: (r: never) => unknown;
  want: unknown;
}

interface CommandCases {
  /** The command's minimal valid arguments (required options, an input); `extra` goes where options may. */
  base: (extra: string[]) => string[];
  resolve: (args: string[]) => unknown;
  cases: Record<string, Case>;
}

const noEnv = {};
const c = <R>(args: string[], get: (r: R) => unknown, want: unknown, context?: string[]): Case => ({
  args,
  get: get as (r: never) => unknown,
  want,
  context,
});

type Train = Extract<ReturnType<typeof resolveTrain>, { method: 'anoseg' }>;
const cfg = (get: (c: AnoSegTrainConfig) => unknown) => (r: Train) => get(r.config);
const paper = ['--preset', 'paper'];

/** The group options, as every training command takes them. */
function groupCases<R extends { group: unknown }>(): Record<string, Case> {
  const group = (r: R) => r.group as { worldSize: number; rank: number; masterAddr: string; timeoutSeconds?: number };
  const two = ['--world-size', '2', '--rank', '1', '--master', 'node-a:29500'];
  return {
    'world-size': c(two, (r: R) => group(r)?.worldSize, 2),
    rank: c(two, (r: R) => group(r)?.rank, 1),
    master: c(two, (r: R) => group(r)?.masterAddr, 'node-a'),
    'dist-timeout': c([...two, '--dist-timeout', '7.5'], (r: R) => group(r)?.timeoutSeconds, 7.5),
  };
}

const TRAIN_CASES: CommandCases = {
  base: (extra) => ['--data', 'some/bottle', ...extra],
  resolve: (args) => resolveTrain(args, noEnv),
  cases: {
    data: c(['--data', 'other/cable'], (r: Train) => r.data, 'other/cable'),
    method: c(['--method', 'padim'], (r: { method: string }) => r.method, 'padim'),
    out: c(['--out', 'runs/x'], (r: Train) => r.out, 'runs/x'),
    'no-resume': c(['--no-resume'], (r: Train) => r.resume, false),
    ensemble: c(['--ensemble', 'none'], (r: Train) => r.ensemble, 'none'),
    preset: c(
      paper,
      cfg((x) => x.preset),
      'paper',
    ),
    steps: c(
      ['--steps', '40'],
      cfg((x) => x.steps),
      40,
    ),
    minutes: c(
      ['--minutes', '2.5'],
      cfg((x) => x.maxMinutes),
      2.5,
    ),
    batch: c(
      ['--batch', '6'],
      cfg((x) => x.batchSize),
      6,
    ),
    lr: c(
      ['--lr', '0.0003'],
      cfg((x) => x.lr),
      0.0003,
    ),
    seed: c(
      ['--seed', '7'],
      cfg((x) => x.seed),
      7,
    ),
    'eval-every': c(
      ['--eval-every', '9'],
      cfg((x) => x.evalEvery),
      9,
    ),
    'checkpoint-every': c(
      ['--checkpoint-every', '11'],
      cfg((x) => x.checkpointEvery),
      11,
    ),
    'bn-anomalies': c(
      ['--bn-anomalies', '0.25'],
      cfg((x) => x.bnRecalibrationAnomalies),
      0.25,
    ),
    'early-snapshot': c(
      ['--early-snapshot', '700'],
      cfg((x) => x.earlySnapshotStep),
      700,
    ),
    resolution: c(
      ['--resolution', '64'],
      cfg((x) => x.arch.resolution),
      64,
    ),
    width: c(
      ['--width', '0.5'],
      cfg((x) => x.arch.width),
      0.5,
    ),
    'train-crop': c(
      ['--train-crop', '64'],
      cfg((x) => x.trainCrop),
      64,
    ),
    'encoder-init': c(
      ['--encoder-init', 'bb.safetensors'],
      cfg((x) => x.encoderInit),
      'bb.safetensors',
    ),
    tiling: c(
      ['--tiling', 'none'],
      cfg((x) => x.tiling),
      'none',
    ),
    aspect: c(
      ['--aspect', 'pad'],
      cfg((x) => x.aspect),
      'pad',
    ),
    skips: c(
      ['--skips'],
      cfg((x) => x.arch.skips),
      true,
      paper,
    ),
    'no-skips': c(
      ['--no-skips'],
      cfg((x) => x.arch.skips),
      false,
    ),
    upsampling: c(
      ['--upsampling', 'resize'],
      cfg((x) => x.arch.upsampling),
      'resize',
    ),
    'no-coords': c(
      ['--no-coords'],
      cfg((x) => x.arch.coordChannels),
      false,
    ),
    'no-hard-aug': c(
      ['--no-hard-aug'],
      cfg((x) => x.anomaly.hardAugmentation),
      false,
    ),
    'mask-shape': c(
      ['--mask-shape', 'mixed'],
      cfg((x) => x.anomaly.maskShape),
      'mixed',
      paper,
    ),
    'mixed-shapes': c(
      ['--mixed-shapes', 'stroke,gmm'],
      cfg((x) => x.anomaly.mixedShapes),
      ['stroke', 'gmm'],
    ),
    blend: c(
      ['--blend', 'mixed'],
      cfg((x) => x.anomaly.blend),
      'mixed',
      paper,
    ),
    source: c(
      ['--source', 'mixed'],
      cfg((x) => x.anomaly.source),
      'mixed',
      paper,
    ),
    'area-range': c(
      ['--area-range', '0.001,0.2'],
      cfg((x) => x.anomaly.areaRange),
      [0.001, 0.2],
    ),
    'area-sampling': c(
      ['--area-sampling', 'log-uniform'],
      cfg((x) => x.anomaly.areaSampling),
      'log-uniform',
    ),
    placement: c(
      ['--placement', 'anywhere'],
      cfg((x) => x.anomaly.placement),
      'anywhere',
    ),
    'seg-loss': c(
      ['--seg-loss', 'focal'],
      cfg((x) => x.loss.segLoss),
      'focal',
      paper,
    ),
    'dice-weight': c(
      ['--dice-weight', '0.5'],
      cfg((x) => x.loss.diceWeight),
      0.5,
    ),
    'recon-score-weight': c(
      ['--recon-score-weight', '2.5'],
      cfg((x) => x.reconstructionScoreWeight),
      2.5,
    ),
    'recon-score-scale': c(
      ['--recon-score-scale', 'raw'],
      cfg((x) => x.reconstructionScoreScale),
      'raw',
    ),
    'recon-score-blur': c(
      ['--recon-score-blur', '1.5'],
      cfg((x) => x.reconstructionScoreBlur),
      1.5,
    ),
    'image-score': c(
      ['--image-score', 'map+reconstruction'],
      cfg((x) => x.imageScore),
      'map+reconstruction',
    ),
    'adv-weight': c(
      ['--adv-weight', '0.25'],
      cfg((x) => x.loss.adversarialWeight),
      0.25,
    ),
    'no-adversarial': c(
      ['--no-adversarial'],
      cfg((x) => x.loss.adversarialWeight),
      0,
      paper,
    ),
    'fake-pair': c(
      ['--fake-pair', 'reconstruction'],
      cfg((x) => x.loss.fakePair),
      'reconstruction',
    ),
    'adv-ramp': c(
      ['--adv-ramp', '300'],
      cfg((x) => x.adversarialRampSteps),
      300,
    ),
    'adv-loss': c(
      ['--adv-loss', 'hinge'],
      cfg((x) => x.adversarial?.loss),
      'hinge',
    ),
    'spectral-norm': c(
      ['--spectral-norm'],
      cfg((x) => x.adversarial?.spectralNorm),
      true,
    ),
    'real-label': c(
      ['--real-label', '0.8'],
      cfg((x) => x.adversarial?.realLabel),
      0.8,
    ),
    'instance-noise': c(
      ['--instance-noise', '0.1'],
      cfg((x) => x.adversarial?.instanceNoise),
      0.1,
    ),
    'instance-noise-steps': c(
      ['--instance-noise-steps', '500'],
      cfg((x) => x.adversarial?.instanceNoiseSteps),
      500,
    ),
    'r1-weight': c(
      ['--r1-weight', '5'],
      cfg((x) => x.adversarial?.r1Weight),
      5,
    ),
    'd-lr': c(
      ['--d-lr', '4'],
      cfg((x) => x.adversarial?.dLr),
      4,
    ),
    'd-loss-floor': c(
      ['--d-loss-floor', '0.3'],
      cfg((x) => x.adversarial?.dLossFloor),
      0.3,
    ),
    'real-pairs': c(
      ['--real-pairs', 'normal'],
      cfg((x) => x.adversarial?.realPairs),
      'normal',
    ),
    'real-mask-blur': c(
      ['--real-mask-blur', '3.5'],
      cfg((x) => x.adversarial?.realMaskBlur),
      3.5,
    ),
    ...groupCases<Train>(),
  },
};

type Detector = ReturnType<typeof resolveTrainDetector>;
const TRAIN_DETECTOR_CASES: CommandCases = {
  base: (extra) => ['--anoseg', 'm.safetensors', '--data', 'some/bottle', ...extra],
  resolve: (args) => resolveTrainDetector(args, noEnv),
  cases: {
    anoseg: c(['--anoseg', 'other.safetensors'], (r: Detector) => r.anosegModel, 'other.safetensors'),
    data: c(['--data', 'other/cable'], (r: Detector) => r.data, 'other/cable'),
    out: c(['--out', 'runs/d'], (r: Detector) => r.out, 'runs/d'),
    'no-resume': c(['--no-resume'], (r: Detector) => r.resume, false),
    variant: c(['--variant', 'base'], (r: Detector) => r.config.variant, 'base'),
    steps: c(['--steps', '30'], (r: Detector) => r.config.steps, 30),
    minutes: c(['--minutes', '3'], (r: Detector) => r.config.maxMinutes, 3),
    batch: c(['--batch', '4'], (r: Detector) => r.config.batchSize, 4),
    'anomaly-batch': c(['--anomaly-batch', '2'], (r: Detector) => r.config.anomalyBatch, 2),
    lr: c(['--lr', '0.001'], (r: Detector) => r.config.lr, 0.001),
    seed: c(['--seed', '5'], (r: Detector) => r.config.seed, 5),
    alpha: c(['--alpha', '0.5'], (r: Detector) => r.config.score.alpha, 0.5),
    beta: c(['--beta', '0.2'], (r: Detector) => r.config.score.beta, 0.2),
    'cls-map': c(['--cls-map', 'ones'], (r: Detector) => r.config.clsMap, 'ones'),
    'no-coords': c(['--no-coords'], (r: Detector) => r.config.coordChannels, false),
    'eval-every': c(['--eval-every', '10'], (r: Detector) => r.config.evalEvery, 10),
    ...groupCases<Detector>(),
  },
};

type Ablation = ReturnType<typeof resolveAblation>;
const ABLATION_CASES: CommandCases = {
  base: (extra) => ['--data', 'some/bottle', '--table', '3', ...extra],
  resolve: resolveAblation,
  cases: {
    data: c(['--data', 'other/cable'], (r: Ablation) => r.data, 'other/cable'),
    table: c(['--table', '5'], (r: Ablation) => r.table, 5),
    out: c(['--out', 'runs/a'], (r: Ablation) => r.out, 'runs/a'),
    minutes: c(['--minutes', '2'], (r: Ablation) => r.minutesPerRun, 2),
    seeds: c(['--seeds', '3,1'], (r: Ablation) => r.seeds, [3, 1]),
    steps: c(['--steps', '50'], (r: Ablation) => r.steps, 50),
    runs: c(['--runs', 'base,coords'], (r: Ablation) => r.runs, ['base', 'coords']),
    anoseg: c(['--anoseg', 'm.safetensors'], (r: Ablation) => r.anosegModel, 'm.safetensors'),
    'adv-weight': c(['--adv-weight', '0.5'], (r: Ablation) => r.adversarialWeight, 0.5),
    'eval-size': c(['--eval-size', '0'], (r: Ablation) => r.evalSize, null),
    resolution: c(['--resolution', '64'], (r: Ablation) => r.resolution, 64),
    width: c(['--width', '0.5'], (r: Ablation) => r.width, 0.5),
    batch: c(['--batch', '4'], (r: Ablation) => r.batchSize, 4),
  },
};

type Predict = ReturnType<typeof resolvePredict>;
const PREDICT_CASES: CommandCases = {
  base: (extra) => ['--model', 'm.safetensors', ...extra, 'a.png'],
  resolve: resolvePredict,
  cases: {
    model: c(['--model', 'n.onnx'], (r: Predict) => r.model, 'n.onnx'),
    out: c(['--out', 'p'], (r: Predict) => r.out, 'p'),
    format: c(['--format', 'both'], (r: Predict) => r.format, 'both'),
    'decode-max-side': c(['--decode-max-side', '0'], (r: Predict) => r.decodeMaxSide, null),
    'map-max-side': c(['--map-max-side', '512'], (r: Predict) => r.mapMaxSide, 512),
    workers: c(['--workers', '2'], (r: Predict) => r.workers, 2),
  },
};

type Eval = ReturnType<typeof resolveEval>;
const maps = ['--maps', 'maps'];
const EVAL_CASES: CommandCases = {
  base: (extra) => [...(extra.includes('--good') ? [] : ['--data', 'some/bottle']), ...extra],
  resolve: resolveEval,
  cases: {
    data: c(['--data', 'other/cable', ...maps], (r: Eval) => r.dataset, { data: 'other/cable', layout: 'auto' }),
    layout: c(['--layout', 'visa'], (r: Eval) => r.dataset, { data: 'some/bottle', layout: 'visa' }, maps),
    good: c(['--good', 'g', '--defective', 'd', ...maps], (r: Eval) => r.dataset, { good: 'g', defective: ['d'] }),
    defective: c(
      ['--good', 'g', '--defective', 'd1', '--defective', 'd2', ...maps],
      (r: Eval) => 'defective' in r.dataset && r.dataset.defective,
      ['d1', 'd2'],
    ),
    masks: c(
      ['--good', 'g', '--defective', 'd', '--masks', 'm', ...maps],
      (r: Eval) => 'masks' in r.dataset && r.dataset.masks,
      'm',
    ),
    model: c(['--model', 'm.safetensors'], (r: Eval) => r.model, 'm.safetensors'),
    maps: c(maps, (r: Eval) => r.maps, 'maps'),
    invert: c(['--invert'], (r: Eval) => r.invert, true, maps),
    sigma: c(['--sigma', '2'], (r: Eval) => r.sigma, 2, maps),
    'score-sigma': c(['--score-sigma', '1.5'], (r: Eval) => r.scoreSigma, 1.5, ['--model', 'm']),
    'recon-weight': c(['--recon-weight', '0.5'], (r: Eval) => r.reconWeight, 0.5, ['--model', 'm']),
    'image-threshold': c(['--image-threshold', '0.7'], (r: Eval) => r.imageThreshold, 0.7, maps),
    'eval-size': c(['--eval-size', '256'], (r: Eval) => r.evalSize, 256, maps),
    'eval-max-side': c(['--eval-max-side', '0'], (r: Eval) => r.evalMaxSide, null, maps),
    'decode-max-side': c(['--decode-max-side', '512'], (r: Eval) => r.decodeMaxSide, 512, ['--model', 'm']),
    workers: c(['--workers', '2'], (r: Eval) => r.workers, 2, ['--model', 'm']),
    out: c(['--out', 'e'], (r: Eval) => r.out, 'e', maps),
  },
};

type Synth = ReturnType<typeof resolveSynth>;
const synthCfg = (get: (c: AnoSegTrainConfig) => unknown) => (r: Synth) => get(r.config);
const SYNTH_CASES: CommandCases = {
  base: (extra) => ['--data', 'some/bottle', ...extra],
  resolve: resolveSynth,
  cases: {
    data: c(['--data', 'other'], (r: Synth) => r.data, 'other'),
    out: c(['--out', 's'], (r: Synth) => r.out, 's'),
    count: c(['--count', '3'], (r: Synth) => r.count, 3),
    preset: c(
      paper,
      synthCfg((x) => x.preset),
      'paper',
    ),
    seed: c(
      ['--seed', '2'],
      synthCfg((x) => x.seed),
      2,
    ),
    resolution: c(
      ['--resolution', '32'],
      synthCfg((x) => x.arch.resolution),
      32,
    ),
    tiling: c(
      ['--tiling', 'none'],
      synthCfg((x) => x.tiling),
      'none',
    ),
    aspect: c(
      ['--aspect', 'crop'],
      synthCfg((x) => x.aspect),
      'crop',
    ),
    'no-hard-aug': c(
      ['--no-hard-aug'],
      synthCfg((x) => x.anomaly.hardAugmentation),
      false,
    ),
    'mask-shape': c(
      ['--mask-shape', 'mixed'],
      synthCfg((x) => x.anomaly.maskShape),
      'mixed',
      paper,
    ),
    'mixed-shapes': c(
      ['--mixed-shapes', 'rect'],
      synthCfg((x) => x.anomaly.mixedShapes),
      ['rect'],
    ),
    blend: c(
      ['--blend', 'mixed'],
      synthCfg((x) => x.anomaly.blend),
      'mixed',
      paper,
    ),
    source: c(
      ['--source', 'mixed'],
      synthCfg((x) => x.anomaly.source),
      'mixed',
      paper,
    ),
    'area-range': c(
      ['--area-range', '0.1,0.1'],
      synthCfg((x) => x.anomaly.areaRange),
      [0.1, 0.1],
    ),
    'area-sampling': c(
      ['--area-sampling', 'log-uniform'],
      synthCfg((x) => x.anomaly.areaSampling),
      'log-uniform',
    ),
    placement: c(
      ['--placement', 'anywhere'],
      synthCfg((x) => x.anomaly.placement),
      'anywhere',
    ),
  },
};

type FormulaSynth = ReturnType<typeof resolveFormulaSynth>;
const FORMULA_SYNTH_CASES: CommandCases = {
  base: (extra) => extra,
  resolve: resolveFormulaSynth,
  cases: {
    out: c(['--out', 'f'], (r: FormulaSynth) => r.out, 'f'),
    count: c(['--count', '4'], (r: FormulaSynth) => r.count, 4),
    seed: c(['--seed', '9'], (r: FormulaSynth) => r.seed, 9),
    size: c(['--size', '64'], (r: FormulaSynth) => r.size, 64),
    data: c(['--data', 'd'], (r: FormulaSynth) => r.data, 'd'),
  },
};

type Serve = ReturnType<typeof resolveServe>;
const SERVE_CASES: CommandCases = {
  base: (extra) => ['--model', 'm.safetensors', ...extra],
  resolve: resolveServe,
  cases: {
    model: c(['--model', 'n.onnx'], (r: Serve) => r.model, 'n.onnx'),
    port: c(['--port', '0'], (r: Serve) => r.port, 0),
    host: c(['--host', '0.0.0.0'], (r: Serve) => r.host, '0.0.0.0'),
    'max-queue': c(['--max-queue', '4'], (r: Serve) => r.maxQueue, 4),
    workers: c(['--workers', '0'], (r: Serve) => r.workers, 0),
    timeout: c(['--timeout', '2.5'], (r: Serve) => r.timeoutSeconds, 2.5),
  },
};

type Export = ReturnType<typeof resolveExport>;
const EXPORT_CASES: CommandCases = {
  base: (extra) => ['--model', 'runs/m.safetensors', ...extra],
  resolve: resolveExport,
  cases: {
    model: c(['--model', 'n.safetensors'], (r: Export) => r.model, 'n.safetensors'),
    out: c(['--out', 'x.onnx'], (r: Export) => r.out, 'x.onnx'),
    check: c(['--check', '2'], (r: Export) => r.check, 2),
    seed: c(['--seed', '4'], (r: Export) => r.seed, 4),
  },
};

type Fuse = ReturnType<typeof resolveFuse>;
const FUSE_CASES: CommandCases = {
  base: (extra) => ['--model', 'a/x.safetensors', '--model', 'y.safetensors', '--data', 'd', ...extra],
  resolve: resolveFuse,
  cases: {
    model: c(
      ['--model', 'z.safetensors'],
      (r: Fuse) => r.members.map((m) => m.file).join(' '),
      'a/x.safetensors y.safetensors z.safetensors',
    ),
    data: c(['--data', 'e'], (r: Fuse) => r.data, 'e'),
    out: c(['--out', 'f.safetensors'], (r: Fuse) => r.out, 'f.safetensors'),
    'map-weights': c(['--map-weights', '1,0.5'], (r: Fuse) => r.members.map((m) => m.mapWeight), [1, 0.5]),
    'score-weights': c(['--score-weights', '0,2'], (r: Fuse) => r.members.map((m) => m.scoreWeight), [0, 2]),
    seed: c(['--seed', '5'], (r: Fuse) => r.seed, 5),
  },
};

type Pretrain = ReturnType<typeof resolvePretrain>;
const PRETRAIN_CASES: CommandCases = {
  base: (extra) => extra,
  resolve: (args) => resolvePretrain(args, noEnv),
  cases: {
    out: c(['--out', 'b.safetensors'], (r: Pretrain) => r.out, 'b.safetensors'),
    steps: c(['--steps', '10'], (r: Pretrain) => r.steps, 10),
    batch: c(['--batch', '4'], (r: Pretrain) => r.batch, 4),
    size: c(['--size', '32'], (r: Pretrain) => r.size, 32),
    width: c(['--width', '0.25'], (r: Pretrain) => r.width, 0.25),
    loss: c(['--loss', 'direct'], (r: Pretrain) => r.loss, 'direct'),
    seed: c(['--seed', '1'], (r: Pretrain) => r.seed, 1),
    bases: c(['--bases', 'good', '--bases', 'procedural'], (r: Pretrain) => r.bases, ['good', 'procedural']),
    'procedural-share': c(['--procedural-share', '0.25'], (r: Pretrain) => r.proceduralShare, 0.25),
    'real-side': c(['--real-side', '128'], (r: Pretrain) => r.realSide, 128),
    init: c(['--init', 'generic.safetensors'], (r: Pretrain) => r.init, 'generic.safetensors'),
    lr: c(['--lr', '0.01'], (r: Pretrain) => r.lr, 0.01),
    minutes: c(['--minutes', '5'], (r: Pretrain) => r.maxMinutes, 5),
    'run-dir': c(['--run-dir', 'r'], (r: Pretrain) => r.runDir, 'r'),
    'no-resume': c(['--no-resume'], (r: Pretrain) => r.resume, false),
    ...groupCases<Pretrain>(),
  },
};

type Patchcore = ReturnType<typeof resolvePatchcore>;
const PATCHCORE_CASES: CommandCases = {
  base: (extra) => ['--data', 'some/bottle', ...extra],
  resolve: resolvePatchcore,
  cases: {
    data: c(['--data', 'other'], (r: Patchcore) => r.data, 'other'),
    out: c(['--out', 'p'], (r: Patchcore) => r.out, 'p'),
    backbone: c(['--backbone', 'random'], (r: Patchcore) => r.backbone, 'random'),
    resolution: c(['--resolution', '64'], (r: Patchcore) => r.resolution, 64),
    'coreset-ratio': c(['--coreset-ratio', '0.25'], (r: Patchcore) => r.coresetRatio, 0.25),
    'max-bank': c(['--max-bank', '100'], (r: Patchcore) => r.maxBank, 100),
    width: c(['--width', '0.25'], (r: Patchcore) => r.width, 0.25),
    seed: c(['--seed', '3'], (r: Patchcore) => r.seed, 3),
    aspect: c(['--aspect', 'pad'], (r: Patchcore) => r.aspect, 'pad'),
    tiling: c(['--tiling', 'long-side'], (r: Patchcore) => r.tiling, 'long-side'),
  },
};

type Padim = ReturnType<typeof resolvePadim>;
const PADIM_CASES: CommandCases = {
  base: (extra) => ['--data', 'some/bottle', ...extra],
  resolve: resolvePadim,
  cases: {
    data: c(['--data', 'other'], (r: Padim) => r.data, 'other'),
    out: c(['--out', 'p'], (r: Padim) => r.out, 'p'),
    backbone: c(['--backbone', 'random'], (r: Padim) => r.backbone, 'random'),
    resolution: c(['--resolution', '64'], (r: Padim) => r.resolution, 64),
    dims: c(['--dims', '20'], (r: Padim) => r.dims, 20),
    width: c(['--width', '0.25'], (r: Padim) => r.width, 0.25),
    seed: c(['--seed', '3'], (r: Padim) => r.seed, 3),
    aspect: c(['--aspect', 'pad'], (r: Padim) => r.aspect, 'pad'),
    tiling: c(['--tiling', 'long-side'], (r: Padim) => r.tiling, 'long-side'),
  },
};

type Study = ReturnType<typeof resolveStudy>;
const STUDY_CASES: CommandCases = {
  base: (extra) => extra,
  resolve: resolveStudy,
  cases: {
    data: c(['--data', 'a/x,b/y'], (r: Study) => r.datasets, ['a/x', 'b/y']),
    presets: c(['--presets', 'cpu'], (r: Study) => r.presets, ['cpu']),
    minutes: c(['--minutes', '1'], (r: Study) => r.minutes, 1),
    steps: c(['--steps', '12000'], (r: Study) => r.steps, 12000),
    out: c(['--out', 's'], (r: Study) => r.out, 's'),
    'held-out': c(['--held-out', 'y'], (r: Study) => r.heldOut, ['y'], ['--data', 'a/x,b/y']),
    ensemble: c(['--ensemble', 'none'], (r: Study) => r.ensemble, 'none'),
  },
};

type Demo = ReturnType<typeof resolveDemo>;
const DEMO_CASES: CommandCases = {
  base: (extra) => extra,
  resolve: resolveDemo,
  cases: {
    data: c(['--data', 'd'], (r: Demo) => r.data, 'd'),
    out: c(['--out', 'o'], (r: Demo) => r.out, 'o'),
    minutes: c(['--minutes', '0.5'], (r: Demo) => r.minutes, 0.5),
  },
};

type Launch = ReturnType<typeof resolveLaunch>;
const LAUNCH_CASES: CommandCases = {
  base: (extra) => [...extra, '--', 'train', '--data', 'd'],
  resolve: resolveLaunch,
  cases: {
    nproc: c(['--nproc', '3'], (r: Launch) => r.nproc, 3),
    'master-port': c(['--master-port', '29500'], (r: Launch) => r.masterPort, 29500),
    threads: c(['--threads', '1'], (r: Launch) => r.threads, 1),
  },
};

const CASES: Record<string, CommandCases> = {
  train: TRAIN_CASES,
  'train-detector': TRAIN_DETECTOR_CASES,
  ablation: ABLATION_CASES,
  predict: PREDICT_CASES,
  eval: EVAL_CASES,
  synth: SYNTH_CASES,
  'formula-synth': FORMULA_SYNTH_CASES,
  serve: SERVE_CASES,
  export: EXPORT_CASES,
  fuse: FUSE_CASES,
  pretrain: PRETRAIN_CASES,
  padim: PADIM_CASES,
  patchcore: PATCHCORE_CASES,
  study: STUDY_CASES,
  demo: DEMO_CASES,
  launch: LAUNCH_CASES,
};

const names = COMMANDS.map((cmd) => cmd.spec.name);
const optionsOf = (name: string): [string, Option<unknown>][] =>
  Object.entries(COMMANDS.find((cmd) => cmd.spec.name === name)!.spec.options);

describe('every documented option reaches what it sets', () => {
  it('every command has cases, for exactly its options', () => {
    expect(Object.keys(CASES).sort()).toEqual([...names].sort());
    for (const name of names) {
      expect(Object.keys(CASES[name].cases).sort(), name).toEqual(
        optionsOf(name)
          .map(([o]) => o)
          .sort(),
      );
    }
  });

  describe.each(names)('%s', (name) => {
    const { base, resolve, cases } = CASES[name];
    it.each(Object.keys(cases))('--%s', (option) => {
      const { args, context = [], get, want } = cases[option];
      const given = get(resolve(base([...context, ...args])) as never);
      expect(given).toEqual(want);
      // the option makes the difference: without it, the value is another
      const without = (() => {
        try {
          return get(resolve(base(context)) as never);
        } catch (e) {
          // e.g. eval without --model or --maps: the option was needed to resolve at all
          expect(e).toBeInstanceOf(UsageError);
          return Symbol('not resolved');
        }
      })();
      expect(without).not.toEqual(want);
    });
  });

  it('the recipe levers the issue named reach the configuration from the paper preset', () => {
    const t = resolveTrain(
      [
        '--data',
        'd',
        ...paper,
        '--seg-loss',
        'focal',
        '--mask-shape',
        'mixed',
        '--blend',
        'mixed',
        '--source',
        'mixed',
      ],
      noEnv,
    ) as Train;
    expect(t.config.loss.segLoss).toBe('focal');
    expect([t.config.anomaly.maskShape, t.config.anomaly.blend, t.config.anomaly.source]).toEqual([
      'mixed',
      'mixed',
      'mixed',
    ]);
    expect(resolveTrain(['--data', 'd', '--method=padim', '--dims', '7'], noEnv)).toMatchObject({
      method: 'padim',
      padim: { data: 'd', dims: 7 },
    });
    expect(resolveTrain(['--data', 'd', '--method', 'patchcore', '--max-bank', '9'], noEnv)).toMatchObject({
      method: 'patchcore',
      patchcore: { data: 'd', maxBank: 9, resolution: 256 },
    });
  });

  it('the defaults resolve to what the help states', () => {
    expect(resolvePredict(['--model', 'm', 'a.png'])).toMatchObject({ format: 'tiff', out: 'predictions' });
    expect(resolveServe(['--model', 'm'])).toMatchObject({ port: 8080, host: '127.0.0.1', maxQueue: 16, workers: 1 });
    expect(resolveExport(['--model', 'a/m.safetensors'])).toMatchObject({ out: 'a/m.onnx', check: 4, seed: 0 });
    expect(resolveLaunch(['--', 'train']).nproc).toBe(2);
    expect(resolveFuse(['--model', 'r/a.safetensors', '--model', 'b', '--data', 'd'])).toMatchObject({
      out: path.join('r', 'ensemble.safetensors'),
      members: [
        { file: 'r/a.safetensors', mapWeight: 1, scoreWeight: 1 },
        { file: 'b', mapWeight: 1, scoreWeight: 1 },
      ],
    });
    expect(() => resolveFuse(['--model', 'a', '--data', 'd'])).toThrow(/at least two models/);
    expect(() => resolveFuse(['--model', 'a', '--model', 'b', '--data', 'd', '--map-weights', '1'])).toThrow(
      /2 weights, one per --model/,
    );
    expect(resolveTrain(['--data', 'x/bottle'], noEnv)).toMatchObject({
      out: path.join('runs', 'anoseg', 'bottle'),
      ensemble: 'padim',
    });
    expect(resolveTrain(['--data', 'x/bottle', '--preset', 'paper'], noEnv)).toMatchObject({ ensemble: 'none' });
  });
});

describe('help text generated from the definitions', () => {
  it.each(names)('%s --help lists every option with its placeholder and choices', (name) => {
    const spec = COMMANDS.find((cmd) => cmd.spec.name === name)!.spec;
    const text = usage(spec);
    expect(text.startsWith(synopsisOf(spec))).toBe(true);
    for (const [option, o] of optionsOf(name)) {
      expect(text).toContain(`--${option}${o.arg ? ` ${o.arg}` : ''}`);
      if (o.choices) expect(text).toContain(o.choices.join(o.arg === 'LIST' ? ', ' : '|'));
    }
  });

  it.each(names)('%s --help names no option the command lacks', (name) => {
    const spec = COMMANDS.find((cmd) => cmd.spec.name === name)!.spec;
    // quoted command lines ('anoseg padim --backbone FILE') are other commands' options
    const text = usage(spec).replace(/'anoseg [^']*'/g, '');
    const mentioned = new Set([...text.matchAll(/--([a-z][a-z0-9-]*)/g)].map((m) => m[1]));
    const known = new Set([...optionsOf(name).map(([o]) => o), 'help']);
    expect([...mentioned].filter((m) => !known.has(m))).toEqual([]);
  });

  it('anoseg --help lists every command; anoseg CMD --help prints its usage and exits 0', async () => {
    const top = await runCli('--help');
    expect(top.code).toBe(0);
    for (const name of names) {
      expect(top.stdout).toMatch(new RegExp(`^  ${name} +\\S`, 'm'));
      const r = await runCli(name, '--help');
      expect(r.code, name).toBe(0);
      expect(r.stdout).toContain(`anoseg ${name}`);
      expect(r.stdout).toContain('--');
    }
  });
});

/** A value the option's definition refuses, or undefined when it takes any string (a path, a name). */
function badValue(o: Option<unknown>): string | undefined {
  for (const v of ['bogus', '-1.5']) {
    try {
      o.convert(v, 'x');
    } catch {
      return v;
    }
  }
  return undefined;
}

describe('bad invocations of every command through main()', () => {
  describe.each(names)('%s', (name) => {
    const { base } = CASES[name];
    const synopsisStart = `anoseg ${name}`;

    it('an unknown option -> exit 2 naming it, with the usage', async () => {
      const r = await runCli(name, ...base(['--frobnicate', '1']));
      expect(r.code).toBe(2);
      expect(r.stderr).toContain(`anoseg ${name}: `);
      expect(r.stderr).toContain('--frobnicate');
      expect(r.stderr).toContain(synopsisStart);
    });

    it.each(optionsOf(name).filter(([, o]) => o.type === 'string' && badValue(o) !== undefined))(
      'an invalid value for --%s -> exit 2 naming it',
      async (option, o) => {
        const value = badValue(o) as string;
        const r = await runCli(name, ...base([`--${option}=${value}`]));
        expect(r.code).toBe(2);
        expect(r.stderr).toContain(`anoseg ${name}: invalid value for --${option}: ${value}`);
      },
    );

    it.each(optionsOf(name).filter(([, o]) => o.type === 'boolean'))(
      'a value for the switch --%s -> exit 2 naming it',
      async (option) => {
        const r = await runCli(name, ...base([`--${option}=yes`]));
        expect(r.code).toBe(2);
        expect(r.stderr).toContain(`--${option}`);
      },
    );

    it.each(optionsOf(name).filter(([, o]) => o.type === 'string'))(
      'a missing value for --%s -> exit 2 naming it',
      async (option) => {
        const args = base([]);
        // the option last on the line (launch: before its '--'), with nothing after it
        const r = await runCli(
          name,
          ...(name === 'launch' ? [`--${option}`] : [...args.filter((a) => a !== 'a.png'), `--${option}`]),
        );
        expect(r.code).toBe(2);
        expect(r.stderr).toContain(`--${option}`);
      },
    );

    it.each(optionsOf(name).filter(([, o]) => o.required))(
      'without --%s -> exit 2 saying it is required',
      async (option) => {
        // every occurrence goes (a repeatable option such as fuse's --model may be given several times)
        const args = base([]).filter((a, i, all) => a !== `--${option}` && all[i - 1] !== `--${option}`);
        const r = await runCli(name, ...args);
        expect(r.code).toBe(2);
        expect(r.stderr).toContain(`--${option} is required`);
        expect(r.stderr).toContain(synopsisStart);
      },
    );

    if (name !== 'predict')
      it('a stray argument -> exit 2 naming it', async () => {
        const args = name === 'launch' ? ['stray', ...base([])] : [...base([]), 'stray'];
        const r = await runCli(name, ...args);
        expect(r.code).toBe(2);
        expect(r.stderr).toContain("unexpected argument 'stray'");
      });
  });

  it('contradictions and misplaced options -> exit 2 naming them', async () => {
    const bad: [string[], string][] = [
      [['train', '--data', 'd', '--skips', '--no-skips'], '--skips and --no-skips contradict each other'],
      [['train', '--data', 'd', '--no-adversarial', '--adv-weight', '1'], '--no-adversarial and --adv-weight'],
      [['train', '--data', 'd', '--resolution', '64', '--train-crop', '128'], 'train crop must be'],
      [
        ['train', '--data', 'd', '--method', 'gan'],
        'invalid value for --method: gan (one of anoseg, padim, patchcore)',
      ],
      [['eval', '--data', 'd', '--maps', 'm', '--decode-max-side', '64'], '--decode-max-side applies to --model only'],
      [['eval', '--data', 'd', '--maps', 'm', '--recon-weight', '1'], 'apply to AnoSeg models only'],
      [['eval', '--data', 'd', '--model', 'm', '--invert'], '--invert / --sigma apply to --maps only'],
      [['eval', '--data', 'd', '--maps', 'm', '--eval-size', '8', '--eval-max-side', '8'], 'not both'],
      [['eval', '--good', 'g', '--defective', 'x', '--layout', 'mvtec', '--maps', 'm'], 'does not go with'],
      [['eval', '--data', 'd', '--layout', 'folder', '--maps', 'm'], '--layout folder takes --good'],
      [['ablation', '--data', 'd', '--table', '5', '--runs', 'coords'], 'invalid value for --runs: coords'],
      [['ablation', '--data', 'd', '--table', '3', '--seeds', '0,0'], 'invalid value for --seeds: 0,0'],
      [['ablation', '--data', 'd', '--table', '3', '--seeds', '1,x'], 'invalid value for --seeds: 1,x'],
      [['study', '--data', 'a/x', '--held-out', 'y'], '--held-out names no data set of this study: y'],
      [['train', '--data', 'd', '--world-size', '2'], 'needs the rank'],
      [['launch', '--nproc', '2'], 'no command given after --'],
    ];
    for (const [args, message] of bad) {
      const r = await runCli(...args);
      expect(r.code, args.join(' ')).toBe(2);
      expect(r.stderr, args.join(' ')).toContain(message);
    }
  });
});

describe('the options the issue named, end to end through main()', () => {
  let root: string;
  let data: string;
  const threadsBefore = getNumThreads();

  beforeAll(async () => {
    setNumThreads(1);
    root = await mkdtemp(path.join(os.tmpdir(), 'anoseg-cli-options-'));
    data = path.join(root, 'data');
    await generateSyntheticDataset(data, {
      seed: 1,
      size: 32,
      trainCount: 10,
      testGoodCount: 1,
      testDefectCount: 1,
      kind: 'texture',
    });
  });

  afterAll(async () => {
    setNumThreads(threadsBefore);
    await rm(root, { recursive: true, force: true });
  });

  it("train --preset paper --seg-loss focal with 'mixed' anomalies: the run's config.json has them", async () => {
    const out = path.join(root, 'run');
    const r = await runCli(
      'train',
      ...['--data', data, '--out', out, '--preset', 'paper', '--resolution', '32', '--width', '0.125'],
      ...['--batch', '2', '--steps', '1', '--eval-every', '1'],
      ...['--seg-loss', 'focal', '--mask-shape', 'mixed', '--mixed-shapes', 'stroke,gmm', '--blend', 'mixed'],
      ...['--source', 'mixed', '--dice-weight', '0.5'],
    );
    expect(r.stderr).not.toMatch(/error/);
    expect(r.code).toBe(0);
    const saved = JSON.parse(await readFile(path.join(out, 'config.json'), 'utf8')) as AnoSegTrainConfig;
    expect(saved.preset).toBe('paper');
    expect(saved.loss).toMatchObject({ segLoss: 'focal', diceWeight: 0.5 });
    expect(saved.anomaly).toMatchObject({
      maskShape: 'mixed',
      mixedShapes: ['stroke', 'gmm'],
      blend: 'mixed',
      source: 'mixed',
    });
  });

  it("synth accepts 'mixed' for --mask-shape, --blend and --source", async () => {
    const out = path.join(root, 'synth');
    const r = await runCli(
      'synth',
      ...['--data', data, '--out', out, '--count', '2', '--resolution', '32', '--preset', 'paper'],
      ...['--mask-shape', 'mixed', '--blend', 'mixed', '--source', 'mixed'],
    );
    expect(r.code).toBe(0);
    expect((await readdir(out)).sort()).toEqual(['sample_000.png', 'sample_001.png']);
  });
});
