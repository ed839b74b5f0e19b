/**
 * Enumerations the CLI offers whose types live in modules without an exported list of their values: each list
 * is checked at compile time to name every member of its type (allOf), so a new member cannot be missing here.
 */
import type { FitAspect } from '../image/io.js';
import type { AnoSegArchitecture } from '../methods/anoseg/network.js';
import type { AnoSegLossConfig } from '../methods/anoseg/step.js';
import type { DetectorTrainConfig } from '../methods/detector/trainer.js';
import type { MvtecOptions } from '../data/dataset.js';
import type { PredictFileOptions } from '../models/predict-file.js';
import { TILINGS } from '../image/tiles.js';
import { allOf, choice } from './options.js';

export const ASPECTS = allOf<FitAspect>({ stretch: true, pad: true, crop: true });

/** --tiling of every training command; the default as the command states it. */
export function tilingChoice(defaultValue: string): ReturnType<typeof choice<(typeof TILINGS)[number]>> {
  return choice(
    TILINGS,
    'long-side: split an elongated image into near-square tiles along its longer side (2 from a ratio of 1.41, 3 ' +
      'from 2.45, ...), each fitted to the input, in training and prediction; none: the whole image',
    { default: defaultValue },
  );
}

export const UPSAMPLINGS = allOf<AnoSegArchitecture['upsampling']>({ transposed: true, resize: true });

export const FAKE_PAIRS = allOf<AnoSegLossConfig['fakePair']>({ reconstruction: true, input: true });

export const CLS_MAPS = allOf<DetectorTrainConfig['clsMap']>({ mask: true, anoseg: true, ones: true });

/** --layout of eval: the category layouts openMvtecDataset checks, and 'folder' (--good/--defective/--masks). */
export const EVAL_LAYOUTS = [
  ...allOf<NonNullable<MvtecOptions['layout']>>({ auto: true, mvtec: true, mvtec3d: true, visa: true }),
  'folder',
] as const;

export const MAP_FORMATS = allOf<NonNullable<PredictFileOptions['format']>>({ tiff: true, png: true, both: true });
