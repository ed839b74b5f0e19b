/** `anoseg demo`: train the default (recipe + PaDiM ensemble) and evaluate it (the README's main job). */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { openMvtecDataset } from '../../data/dataset.js';
import { generateSyntheticDataset } from '../../data/synthetic-dataset.js';
import { evaluateMaps, formatEvaluationSummary, formatMetricsTable } from '../../eval/evaluate.js';
import { modelMapProvider } from '../../eval/model-maps.js';
import { anosegMinutesBesidePadim, fuseWithPadim } from '../../methods/ensemble/with-padim.js';
import { loadPredictor } from '../../methods/load.js';
import { trainAnoSeg } from '../../methods/anoseg/trainer.js';
import { DEFAULT_PRESET, presetConfig } from '../../methods/anoseg/config.js';
import { number, parseCommand, text, type Command, type CommandSpec, type Options } from '../options.js';

const DEFAULTS = { out: path.join('runs', 'demo'), minutes: 20 } as const;

export const DEMO = {
  name: 'demo',
  summary: 'train and evaluate on ../shared/datasets/mvtec/bottle or a generated data set',
  about: `Trains what 'anoseg train' trains by default (the '${DEFAULT_PRESET}' preset, then PaDiM beside it, fused into OUT/ensemble.safetensors)
within the budget and evaluates the ensemble on the test split (report.html, metrics.json).`,
  options: {
    data: text('DIR', 'MVTec-layout category', {
      default: '../shared/datasets/mvtec/bottle when present, else a data set generated in OUT/synthetic-data',
      synopsis: true,
    }),
    out: text('DIR', 'run folder', { default: DEFAULTS.out, synopsis: true }),
    minutes: number('M', 'training budget', { above: 0 }, { default: DEFAULTS.minutes, synopsis: true }),
  },
} satisfies CommandSpec<Options>;

export interface DemoInvocation {
  /** undefined: the shared bottle category when present, else a generated data set. */
  data?: string;
  out: string;
  minutes: number;
}

/** `anoseg demo ARGS` resolved without reading anything. */
export function resolveDemo(args: string[]): DemoInvocation {
  const { values: v } = parseCommand(DEMO, args);
  return { data: v.data, out: v.out ?? DEFAULTS.out, minutes: v.minutes ?? DEFAULTS.minutes };
}

async function demoData(out: string): Promise<string> {
  const shared = path.resolve('..', 'shared', 'datasets', 'mvtec', 'bottle');
  if (existsSync(shared)) return shared;
  const data = path.join(out, 'synthetic-data');
  if (!existsSync(path.join(data, 'train', 'good'))) {
    process.stderr.write(`generating a synthetic data set in ${data}\n`);
    await generateSyntheticDataset(data, {
      seed: 0,
      size: 128,
      trainCount: 120,
      testGoodCount: 20,
      testDefectCount: 30,
      kind: 'texture',
    });
  }
  return data;
}

async function run(args: string[]): Promise<void> {
  const o = resolveDemo(args);
  const { out, minutes } = o;
  const data = o.data || (await demoData(out));
  await openMvtecDataset(data);
  const cfg = presetConfig(DEFAULT_PRESET);
  // as `anoseg train` does by default: AnoSeg, then PaDiM beside it and the two fused, all within the budget
  cfg.maxMinutes = await anosegMinutesBesidePadim(data, minutes, cfg.tiling);
  process.stderr.write(`demo: training '${cfg.preset}' + PaDiM on ${data} for up to ${minutes} min -> ${out}\n`);
  const r = await trainAnoSeg({ data, out, config: cfg });
  const fused = await fuseWithPadim({
    data,
    out,
    anosegModel: r.modelPath,
    aspect: cfg.aspect,
    tiling: cfg.tiling,
    seed: cfg.seed,
    resume: true,
    loadModel: loadPredictor,
  });
  const predictor = await loadPredictor(fused.modelPath);
  const metrics = await evaluateMaps({
    dataRoot: data,
    mapProvider: modelMapProvider(predictor),
    outDir: path.join(out, 'eval'),
    imageThreshold: { value: predictor.info.imageThreshold, source: 'model' },
    model: predictor.info,
    onProgress: (done, total) => process.stderr.write(`\revaluating ${done}/${total}`),
  });
  predictor.dispose();
  process.stdout.write(
    `\n${formatMetricsTable(metrics)}\n${formatEvaluationSummary(metrics)}\nmodel: ${fused.modelPath} (AnoSeg alone: ${r.modelPath})\nreport: ${path.join(out, 'eval', 'report.html')}\ncurves: ${path.join(out, 'curves.html')}\n`,
  );
}

export const demoCommand: Command = { spec: DEMO, run };
