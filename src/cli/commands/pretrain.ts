/** `anoseg pretrain`: a PaDiM feature extractor pre-trained on formula-driven synthetic defects. */
import path from 'node:path';
import type { ProcessGroupOptions } from '../../engine/distributed.js';
import {
  DEFAULT_PRETRAIN_LOSS,
  DEFAULT_REAL_SIDE,
  PRETRAIN_LOSSES,
  pretrainBackbone,
  type PretrainOptions,
} from '../../methods/pretrain/trainer.js';
import { GROUP_OPTIONS, groupFromValues, inGroup, otherRankDone } from '../distributed.js';
import {
  choice,
  flag,
  integer,
  number,
  parseCommand,
  text,
  texts,
  type Command,
  type CommandSpec,
  type Options,
} from '../options.js';

/** What the command passes when an option is absent (stated in the help). */
const DEFAULTS = {
  out: path.join('runs', 'pretrain', 'backbone.safetensors'),
  steps: 4000,
  batch: 16,
  size: 64,
  width: 0.5,
  seed: 0,
  lr: 1e-3,
  realSide: DEFAULT_REAL_SIDE,
} as const;

export const PRETRAIN = {
  name: 'pretrain',
  summary: 'pre-train a PaDiM feature extractor on formula-driven synthetic defects',
  about: `Pre-trains a ResNet18 on formula-driven (GMM) synthetic defects and writes a backbone file for
'anoseg padim --backbone FILE'. Checkpoints in --run-dir; rerun to resume.`,
  options: {
    out: text('FILE', 'backbone file to write', { default: DEFAULTS.out }),
    steps: integer('N', 'optimisation steps', {}, { default: DEFAULTS.steps }),
    batch: integer('N', 'images per step', { min: 2 }, { default: DEFAULTS.batch }),
    size: integer('PX', 'sample side', { min: 32, multipleOf: 16 }, { default: DEFAULTS.size }),
    width: number('W', 'ResNet18 channel multiplier', { above: 0, max: 4 }, { default: DEFAULTS.width }),
    loss: choice(PRETRAIN_LOSSES, 'pre-training loss (regression of the defect map, or pairwise ranking)', {
      default: DEFAULT_PRETRAIN_LOSS,
    }),
    seed: integer('N', 'random seed', { min: 0 }, { default: DEFAULTS.seed }),
    bases: texts(
      'DIR',
      "defect-free bases, combined: folders of good images (an MVTec category -> train/good) and/or the word 'procedural' (procedural textures)",
      { default: 'procedural' },
    ),
    'procedural-share': number(
      'P',
      "share of procedural bases when folders are given too ('procedural' among --bases)",
      { min: 0, max: 1 },
      { default: '1 / number of --bases' },
    ),
    'real-side': integer(
      'PX',
      "real images are rescaled to about this shorter side (x0.75-1.33) before cropping: the detector's resolution",
      { min: 8 },
      { default: DEFAULTS.realSide },
    ),
    init: text(
      'FILE',
      'start from this backbone file (adaptation to a category: its good images as --bases, a lower --lr)',
      {
        default: 'random weights',
      },
    ),
    lr: number('LR', 'learning rate', { above: 0 }, { default: DEFAULTS.lr }),
    minutes: number(
      'M',
      'wall-clock budget; training stops there and still writes the backbone',
      { above: 0 },
      {
        default: 'none',
      },
    ),
    'run-dir': text('DIR', 'checkpoint and logs', { default: 'FILE without extension + .run' }),
    'no-resume': flag('start over even if a checkpoint exists'),
    ...GROUP_OPTIONS,
  },
} satisfies CommandSpec<Options>;

export type PretrainInvocation = Omit<PretrainOptions, 'distributed'> & { group: ProcessGroupOptions | null };

/** `anoseg pretrain ARGS` resolved without running anything. */
export function resolvePretrain(args: string[], env: NodeJS.ProcessEnv = process.env): PretrainInvocation {
  const { values: v } = parseCommand(PRETRAIN, args);
  return {
    out: v.out ?? DEFAULTS.out,
    steps: v.steps ?? DEFAULTS.steps,
    batch: v.batch ?? DEFAULTS.batch,
    size: v.size ?? DEFAULTS.size,
    width: v.width ?? DEFAULTS.width,
    loss: v.loss ?? DEFAULT_PRETRAIN_LOSS,
    seed: v.seed ?? DEFAULTS.seed,
    bases: v.bases,
    proceduralShare: v['procedural-share'],
    realSide: v['real-side'] ?? DEFAULTS.realSide,
    init: v.init,
    lr: v.lr ?? DEFAULTS.lr,
    maxMinutes: v.minutes ?? null,
    runDir: v['run-dir'],
    resume: !v['no-resume'],
    group: groupFromValues(v, env),
  };
}

async function run(args: string[]): Promise<void> {
  const { group, ...options } = resolvePretrain(args);
  const { r, dp } = await inGroup(group, `pre-training a backbone -> ${options.out}`, async (dp) => ({
    r: await pretrainBackbone({ ...options, distributed: dp }),
    dp,
  }));
  if (otherRankDone(dp, r.steps)) return;
  const last = r.history.at(-1);
  process.stdout.write(
    `backbone: ${r.out}\nsteps ${r.steps}, ${r.minutes.toFixed(1)} min, eval loss ${r.finalEvalLoss.toFixed(4)}` +
      (last ? `, eval patch AUROC ${last.evalPatchAuroc.toFixed(3)}` : '') +
      '\n',
  );
}

export const pretrainCommand: Command = { spec: PRETRAIN, run };
