/** `anoseg synth` and `anoseg formula-synth`: samples of the synthetic anomalies to look at. */
import { loadImages, openTrainingData } from '../../data/dataset.js';
import { fitImage } from '../../image/io.js';
import { imageTiles } from '../../image/tiles.js';
import type { Image } from '../../image/types.js';
import { writeSynthSamples } from '../../synth/anomalies.js';
import { writeFormulaSamples } from '../../synth/formula.js';
import type { AnoSegTrainConfig } from '../../methods/anoseg/config.js';
import { integer, parseCommand, section, text, type Command, type CommandSpec, type Options } from '../options.js';
import { ANOMALY_OPTIONS, TRAIN_CONFIG_OPTIONS, trainConfig } from './train.js';

const SYNTH_DEFAULTS = { out: 'synth-samples', count: 16 } as const;

export const SYNTH = {
  name: 'synth',
  summary: 'write synthetic-anomaly samples (image | mask) to look at',
  about:
    'Writes synthetic-anomaly samples (image | mask, white = normal) made from the good images of DIR, as ' +
    "'anoseg train' makes them with the same options.",
  options: {
    data: text('DIR', 'MVTec-layout category (train/good) or a plain folder of good images', { required: true }),
    out: text('DIR', 'output folder', { default: SYNTH_DEFAULTS.out }),
    count: integer('N', 'samples', {}, { default: SYNTH_DEFAULTS.count }),
    ...section('Samples:', {
      preset: TRAIN_CONFIG_OPTIONS.preset,
      seed: TRAIN_CONFIG_OPTIONS.seed,
      resolution: TRAIN_CONFIG_OPTIONS.resolution,
      aspect: TRAIN_CONFIG_OPTIONS.aspect,
      tiling: TRAIN_CONFIG_OPTIONS.tiling,
    }),
    ...ANOMALY_OPTIONS,
  },
} satisfies CommandSpec<Options>;

export interface SynthInvocation {
  data: string;
  out: string;
  count: number;
  /** The training configuration the samples follow (resolution, aspect, tiling, seed, anomaly). */
  config: AnoSegTrainConfig;
}

/** `anoseg synth ARGS` resolved without reading anything. */
export function resolveSynth(args: string[]): SynthInvocation {
  const { values: v } = parseCommand(SYNTH, args);
  return {
    data: v.data as string,
    out: v.out ?? SYNTH_DEFAULTS.out,
    count: v.count ?? SYNTH_DEFAULTS.count,
    config: trainConfig(v),
  };
}

async function runSynth(args: string[]): Promise<void> {
  const { data, out, count, config: cfg } = resolveSynth(args);
  const paths = (await openTrainingData(data)).train.slice(0, Math.max(count, 8));
  const loaded = await loadImages(paths, { channels: 'keep' });
  if (!loaded.images.length) throw new Error(`no readable images in ${data}`);
  // what training sees: with tiling, each image's tiles
  const tiles = loaded.images.flatMap(({ image }) => imageTiles(image, cfg.tiling ?? 'none'));
  const images = tiles.map((t) => fitImage(t, cfg.arch.resolution, cfg.aspect).image);
  const written = await writeSynthSamples(out, images, count, cfg.seed, cfg.anomaly);
  process.stdout.write(`wrote ${written.length} samples to ${out}\n`);
}

export const synthCommand: Command = { spec: SYNTH, run: runSynth };

const FORMULA_DEFAULTS = { out: 'formula-samples', count: 36, seed: 0, size: 128 } as const;

export const FORMULA_SYNTH = {
  name: 'formula-synth',
  summary: 'write formula-driven (GMM) defect samples and a contact sheet',
  about: `Writes formula-driven defect samples (GMM-shaped defects on procedural textures, or on the good images of
--data), a contact sheet and a parameter sweep sheet.`,
  options: {
    out: text('DIR', 'output folder', { default: FORMULA_DEFAULTS.out }),
    count: integer('N', 'samples', {}, { default: FORMULA_DEFAULTS.count }),
    seed: integer('N', 'random seed', { min: 0 }, { default: FORMULA_DEFAULTS.seed }),
    size: integer('PX', 'sample size', { min: 16 }, { default: FORMULA_DEFAULTS.size }),
    data: text('DIR', 'put the defects on the good images of this folder instead (the first 64)', {
      default: 'procedural textures',
    }),
  },
} satisfies CommandSpec<Options>;

export interface FormulaSynthInvocation {
  out: string;
  count: number;
  seed: number;
  size: number;
  data?: string;
}

/** `anoseg formula-synth ARGS` resolved without reading anything. */
export function resolveFormulaSynth(args: string[]): FormulaSynthInvocation {
  const { values: v } = parseCommand(FORMULA_SYNTH, args);
  const d = FORMULA_DEFAULTS;
  return {
    out: v.out ?? d.out,
    count: v.count ?? d.count,
    seed: v.seed ?? d.seed,
    size: v.size ?? d.size,
    data: v.data,
  };
}

async function runFormulaSynth(args: string[]): Promise<void> {
  const o = resolveFormulaSynth(args);
  let bases: Image[] | 'procedural' = 'procedural';
  if (o.data !== undefined) {
    const loaded = await loadImages((await openTrainingData(o.data)).train.slice(0, 64), { channels: 3 });
    if (!loaded.images.length) throw new Error(`no readable images in ${o.data}`);
    bases = loaded.images.map((l) => l.image);
  }
  await writeFormulaSamples(o.out, o.count, o.seed, undefined, bases, { size: o.size });
  process.stdout.write(`wrote ${o.count} samples, contact_sheet.png and parameter_sweep.png to ${o.out}\n`);
}

export const formulaSynthCommand: Command = { spec: FORMULA_SYNTH, run: runFormulaSynth };
