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
import { allOf } from './options.js';

export const ASPECTS = allOf<FitAspect>({ stretch: true, pad: true, crop: true });

export const UPSAMPLINGS = allOf<AnoSegArchitecture['upsampling']>({ transposed: true, resize: true });

export const FAKE_PAIRS = allOf<AnoSegLossConfig['fakePair']>({ reconstruction: true, input: true });

export const CLS_MAPS = allOf<DetectorTrainConfig['clsMap']>({ mask: true, anoseg: true, ones: true });

/** --layout of eval: the category layouts openMvtecDataset checks, and 'folder' (--good/--defective/--masks). */
export const EVAL_LAYOUTS = [
  ...allOf<NonNullable<MvtecOptions['layout']>>({ auto: true, mvtec: true, mvtec3d: true, visa: true }),
  'folder',
] as const;

export const MAP_FORMATS = allOf<NonNullable<PredictFileOptions['format']>>({ tiff: true, png: true, both: true });
