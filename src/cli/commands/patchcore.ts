/** `anoseg patchcore` (also `anoseg train --method patchcore`): fit PatchCore on good images. */
import { PATCHCORE_TRAIN_DEFAULTS as DEFAULTS, type PatchcoreTrainOptions } from '../../methods/patchcore/trainer.js';
import { ASPECTS, tilingChoice } from '../choices.js';
import { backboneFitOptions, printBackboneFit } from './backbone-fit.js';
import {
  choice,
  integer,
  number,
  parseCommand,
  text,
  type Command,
  type CommandSpec,
  type Options,
} from '../options.js';

export const PATCHCORE = {
  name: 'patchcore',
  summary: 'fit a PatchCore model (nearest neighbours in a coreset of patch features) on good images',
  about: `Fits PatchCore (Roth et al. 2022: a coreset-subsampled memory bank of locally aware layer2+layer3 patch features;
the anomaly score of a patch is its distance to the nearest bank entry) on the good images of DIR; thresholds from a
held-out split with synthetic anomalies. Writes OUT/model.safetensors for predict / eval / serve.
('anoseg train --method patchcore' is the same command.)`,
  options: {
    data: text('DIR', 'MVTec-layout category (train/good) or a plain folder of good images', { required: true }),
    out: text('DIR', 'run folder', { default: 'runs/patchcore/<data name>' }),
    backbone: text(
      'random|formula|FILE',
      "feature extractor: random weights, the shipped formula-pretrained backbone, or a file of 'anoseg pretrain'",
      { default: DEFAULTS.backbone, synopsis: true },
    ),
    resolution: integer('PX', 'model input side', { min: 32, multipleOf: 16 }, { default: DEFAULTS.resolution }),
    'coreset-ratio': number(
      'R',
      'share of the training patches kept in the memory bank',
      { above: 0, max: 1 },
      { default: DEFAULTS.coresetRatio },
    ),
    'max-bank': integer(
      'N',
      'most memory-bank rows (bounds fitting time and memory)',
      {},
      { default: DEFAULTS.maxBank },
    ),
    width: number('W', "width of a 'random' backbone", { above: 0, max: 4 }, { default: DEFAULTS.width }),
    seed: integer(
      'N',
      'seed of the coreset, the random backbone and the validation anomalies',
      { min: 0 },
      { default: DEFAULTS.seed },
    ),
    aspect: choice(ASPECTS, 'how non-square images become the square input', { default: DEFAULTS.aspect }),
    tiling: tilingChoice(DEFAULTS.tiling),
  },
} satisfies CommandSpec<Options>;

/** `anoseg patchcore ARGS` resolved without running anything. */
export function resolvePatchcore(args: string[]): PatchcoreTrainOptions {
  const { values: v } = parseCommand(PATCHCORE, args);
  return {
    ...backboneFitOptions(v, 'patchcore', DEFAULTS),
    coresetRatio: v['coreset-ratio'] ?? DEFAULTS.coresetRatio,
    maxBank: v['max-bank'] ?? DEFAULTS.maxBank,
  };
}

export async function runPatchcoreWith(o: PatchcoreTrainOptions): Promise<void> {
  const { trainPatchcore } = await import('../../methods/patchcore/trainer.js');
  printBackboneFit(await trainPatchcore(o));
}

export const patchcoreCommand: Command = { spec: PATCHCORE, run: (args) => runPatchcoreWith(resolvePatchcore(args)) };
