/** `anoseg padim` (also `anoseg train --method padim`): fit PaDiM on good images. */
import { PADIM_DEFAULT_DIMS, PADIM_DEFAULT_RESOLUTION } from '../../methods/padim/model.js';
import type { PadimTrainOptions } from '../../methods/padim/trainer.js';
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

/** What the command passes when an option is absent (the trainer's own defaults, stated in the help). */
const DEFAULTS = {
  backbone: 'formula',
  resolution: PADIM_DEFAULT_RESOLUTION,
  width: 0.5,
  seed: 0,
  aspect: 'stretch',
  tiling: 'none',
} as const;

export const PADIM = {
  name: 'padim',
  summary: 'fit a PaDiM model (random or formula-pretrained backbone) on good images',
  about: `Fits PaDiM (a Gaussian per patch position over ResNet18 layer1-3 features) on the good images of DIR; thresholds
from a held-out split with synthetic anomalies. Writes OUT/model.safetensors for predict / eval / serve.
('anoseg train --method padim' is the same command.)`,
  options: {
    data: text('DIR', 'MVTec-layout category (train/good) or a plain folder of good images', { required: true }),
    out: text('DIR', 'run folder', { default: 'runs/padim/<data name>' }),
    backbone: text(
      'random|formula|FILE',
      "feature extractor: random weights, the shipped formula-pretrained backbone, or a file of 'anoseg pretrain'",
      { default: DEFAULTS.backbone, synopsis: true },
    ),
    resolution: integer('PX', 'model input side', { min: 32, multipleOf: 16 }, { default: DEFAULTS.resolution }),
    dims: integer('D', 'modelled embedding channels', {}, { default: PADIM_DEFAULT_DIMS }),
    width: number('W', "width of a 'random' backbone", { above: 0, max: 4 }, { default: DEFAULTS.width }),
    seed: integer(
      'N',
      'seed of the channel subset, the random backbone and the validation anomalies',
      { min: 0 },
      {
        default: DEFAULTS.seed,
      },
    ),
    aspect: choice(ASPECTS, 'how non-square images become the square input', { default: DEFAULTS.aspect }),
    tiling: tilingChoice(DEFAULTS.tiling),
  },
} satisfies CommandSpec<Options>;

/** `anoseg padim ARGS` resolved without running anything. */
export function resolvePadim(args: string[]): PadimTrainOptions {
  const { values: v } = parseCommand(PADIM, args);
  return { ...backboneFitOptions(v, 'padim', DEFAULTS), dims: v.dims ?? PADIM_DEFAULT_DIMS };
}

export async function runPadimWith(o: PadimTrainOptions): Promise<void> {
  const { trainPadim } = await import('../../methods/padim/trainer.js');
  printBackboneFit(await trainPadim(o));
}

export const padimCommand: Command = { spec: PADIM, run: (args) => runPadimWith(resolvePadim(args)) };
