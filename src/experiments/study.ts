/**
 * Recipe study: train several configurations on several data sets with the same budget and evaluate each
 * with the full metrics, producing one table (README "Quality"). Every run keeps its folder, so a
 * study that is stopped resumes where it was (finished runs are not repeated).
 */
import { existsSync, promises as fs } from 'node:fs';
import path from 'node:path';
import { trainAnoSeg } from '../methods/anoseg/trainer.js';
import { DEFAULT_PRESET, presetConfig, type AnoSegTrainConfig } from '../methods/anoseg/config.js';
import { fuseWithPadim, padimFusionMinutes } from '../methods/ensemble/with-padim.js';
import { loadPredictor } from '../methods/load.js';
import type { AnomalyPredictor } from '../models/predictor.js';
import { evaluateMaps } from '../eval/evaluate.js';
import { modelMapProvider } from '../eval/model-maps.js';
import { writeFileAtomic } from '../util/atomic.js';

export interface StudyVariant {
  name: string;
  config: AnoSegTrainConfig;
  /**
   * Also fit PaDiM beside the AnoSeg model and evaluate the two fused (a second row, '<name> + PaDiM'), with the
   * PaDiM fit taken out of the budget as `anoseg train` does.
   */
  ensemble: boolean;
}

export interface StudyRow {
  variant: string;
  dataset: string;
  pixelAuroc: number;
  imageAuroc: number;
  bestIou: number;
  aupro: number;
  trainMinutes: number;
  steps: number;
}

export interface StudyOptions {
  datasets: string[];
  variants: StudyVariant[];
  /** Training budget per run in minutes (steps stay the preset's upper bound). */
  minutes: number;
  out: string;
  /** Data set names (folder basenames) that no recipe choice looked at: marked "held out" in the table. */
  heldOut?: string[];
  log?: (line: string) => void;
}

/** The presets as `anoseg train` trains them: the default preset with its PaDiM ensemble unless `ensemble` says. */
export function presetVariants(names: string[], ensemble?: 'padim' | 'none'): StudyVariant[] {
  return names.map((n) => ({
    name: n,
    config: presetConfig(n),
    ensemble: ensemble === undefined ? n === DEFAULT_PRESET : ensemble === 'padim',
  }));
}

const fmt = (v: number): string => (Number.isFinite(v) ? v.toFixed(3) : '-');

/** Figures the AnoSeg paper reports (Tables 1 and 4, after full GPU training), shown beside our rows. */
const PAPER_REPORTED: Record<string, { pixelAuroc: number; imageAuroc: number }> = {
  bottle: { pixelAuroc: 0.99, imageAuroc: 0.98 },
};

export function studyTable(rows: StudyRow[], heldOut: readonly string[] = []): string {
  const head =
    '| variant | dataset | pixel AUROC | image AUROC | best IoU | AUPRO | train min | steps |\n|---|---|---|---|---|---|---|---|';
  const body: string[] = [];
  rows.forEach((r, i) => {
    const name = heldOut.includes(r.dataset) ? `${r.dataset} (held out)` : r.dataset;
    body.push(
      `| ${r.variant} | ${name} | ${fmt(r.pixelAuroc)} | ${fmt(r.imageAuroc)} | ${fmt(r.bestIou)} | ${fmt(r.aupro)} | ${r.trainMinutes.toFixed(1)} | ${r.steps} |`,
    );
    const paper = PAPER_REPORTED[r.dataset];
    if (paper && rows[i + 1]?.dataset !== r.dataset)
      body.push(
        `| paper (reported, GPU) | ${r.dataset} | ${fmt(paper.pixelAuroc)} | ${fmt(paper.imageAuroc)} | - | - | - | - |`,
      );
  });
  return [head, ...body].join('\n');
}

/** Evaluates a model file on a data set's test split into DIR/eval and returns its row. */
async function evaluateRow(
  modelFile: string,
  data: string,
  evalDir: string,
  row: Pick<StudyRow, 'variant' | 'dataset' | 'trainMinutes' | 'steps'>,
): Promise<StudyRow> {
  const predictor: AnomalyPredictor = await loadPredictor(modelFile);
  try {
    const m = await evaluateMaps({ dataRoot: data, mapProvider: modelMapProvider(predictor), outDir: evalDir });
    return {
      ...row,
      pixelAuroc: m.overall.pixelAuroc,
      imageAuroc: m.overall.imageAuroc,
      bestIou: m.overall.iou.iou,
      aupro: m.overall.aupro,
    };
  } finally {
    predictor.dispose();
  }
}

/** One variant on one data set: its AnoSeg row and, for an ensemble variant, the fused row (each cached on disk). */
async function runVariant(
  v: StudyVariant,
  data: string,
  o: StudyOptions,
  log: (l: string) => void,
): Promise<StudyRow[]> {
  const dsName = path.basename(path.resolve(data));
  const runDir = path.join(o.out, v.name, dsName);
  const files = [
    path.join(runDir, 'study-row.json'),
    ...(v.ensemble ? [path.join(runDir, 'study-row-ensemble.json')] : []),
  ];
  if (files.every((f) => existsSync(f))) {
    log(`${v.name} on ${dsName}: already done`);
    return Promise.all(files.map(async (f) => JSON.parse(await fs.readFile(f, 'utf8')) as StudyRow));
  }
  const cfg = structuredClone(v.config);
  cfg.maxMinutes = v.ensemble ? Math.max(1, o.minutes - (await padimFusionMinutes(data))) : o.minutes;
  log(`${v.name} on ${dsName}: training (${o.minutes} min budget${v.ensemble ? ', PaDiM fit included' : ''})`);
  const r = await trainAnoSeg({ data, out: runDir, config: cfg, progress: false });
  const rows = [
    await evaluateRow(r.modelPath, data, path.join(runDir, 'eval'), {
      variant: v.name,
      dataset: dsName,
      trainMinutes: r.minutes,
      steps: r.steps,
    }),
  ];
  if (v.ensemble) {
    const t0 = performance.now();
    const e = await fuseWithPadim({
      data,
      out: runDir,
      anosegModel: r.modelPath,
      aspect: cfg.aspect,
      seed: cfg.seed,
      resume: true,
      loadModel: loadPredictor,
      progress: false,
    });
    const minutes = r.minutes + (performance.now() - t0) / 60000;
    rows.push(
      await evaluateRow(e.modelPath, data, path.join(runDir, 'eval-ensemble'), {
        variant: `${v.name} + PaDiM`,
        dataset: dsName,
        trainMinutes: minutes,
        steps: r.steps,
      }),
    );
  }
  for (const [k, row] of rows.entries()) {
    await writeFileAtomic(files[k], JSON.stringify(row, null, 2));
    log(studyTable([row]).split('\n')[2]);
  }
  return rows;
}

export async function runStudy(o: StudyOptions): Promise<StudyRow[]> {
  const rows: StudyRow[] = [];
  const log = o.log ?? ((l: string) => process.stderr.write(`${l}\n`));
  for (const data of o.datasets) {
    if (!existsSync(data)) throw new Error(`data set not found: ${data}`);
    for (const v of o.variants) rows.push(...(await runVariant(v, data, o, log)));
  }
  const table = studyTable(rows, o.heldOut);
  await writeFileAtomic(path.join(o.out, 'study.md'), `${table}\n`);
  return rows;
}
