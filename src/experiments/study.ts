/**
 * Recipe study: train several configurations on several data sets with the same budget and evaluate each
 * with the full metrics, producing one table (README "Quality"). Every run keeps its folder, so a
 * study that is stopped resumes where it was (finished runs are not repeated).
 */
import { existsSync, promises as fs } from 'node:fs';
import path from 'node:path';
import { trainAnoSeg } from '../methods/anoseg/trainer.js';
import { DEFAULT_PRESET, presetConfig, type AnoSegTrainConfig } from '../methods/anoseg/config.js';
import { anosegMinutesBesidePadim, fuseWithPadim } from '../methods/ensemble/with-padim.js';
import { loadPredictor } from '../methods/load.js';
import type { AnomalyPredictor } from '../models/predictor.js';
import { evaluateMaps } from '../eval/evaluate.js';
import { modelMapProvider } from '../eval/model-maps.js';
import { writeFileAtomic } from '../util/atomic.js';
import { jsonDifferences } from '../util/json-diff.js';
import { fitIntervalsToSteps } from '../train/loop.js';

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
  /**
   * A fixed step count per run instead of the preset's: the schedule runs over these steps and `minutes` only caps
   * the run, so the figures do not depend on the machine's load.
   */
  steps?: number;
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

/**
 * Evaluates a model file on a data set's test split into DIR/eval, as `anoseg eval --model` does (the model's input
 * facts and its own image threshold for the pass / reject counts), and returns its row.
 */
async function evaluateRow(
  modelFile: string,
  data: string,
  evalDir: string,
  row: Pick<StudyRow, 'variant' | 'dataset' | 'trainMinutes' | 'steps'>,
): Promise<StudyRow> {
  const predictor: AnomalyPredictor = await loadPredictor(modelFile);
  try {
    const m = await evaluateMaps({
      dataRoot: data,
      mapProvider: modelMapProvider(predictor),
      outDir: evalDir,
      model: predictor.info,
      imageThreshold: { value: predictor.info.imageThreshold, source: 'model' },
    });
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

/** What a run was trained with; a cached row is reused only under the same budget. */
interface StudyBudget {
  minutes: number;
  steps: number | null;
}

const budgetText = (b: StudyBudget): string => `--minutes ${b.minutes}${b.steps === null ? '' : ` --steps ${b.steps}`}`;

/**
 * A cached row, refused when it was made under another budget or from another configuration of its variant (a preset
 * changed since): its figures would not be this study's.
 */
async function readCachedRow(file: string, budget: StudyBudget, variant: StudyVariant): Promise<StudyRow> {
  const saved = JSON.parse(await fs.readFile(file, 'utf8')) as StudyRow & {
    budget?: StudyBudget;
    config?: AnoSegTrainConfig;
  };
  const { budget: was, config: madeFrom, ...row } = saved;
  const refuse = (what: string): never => {
    throw new Error(`${file} holds a run made ${what}: give this study another --out (nothing was changed)`);
  };
  if (!was || was.minutes !== budget.minutes || was.steps !== budget.steps)
    refuse(`with ${was ? budgetText(was) : 'an unrecorded budget'}, not ${budgetText(budget)}`);
  if (!madeFrom) refuse('from an unrecorded configuration');
  const differences = jsonDifferences(madeFrom, variant.config);
  if (differences.length) refuse(`from another configuration of '${variant.name}' (${differences.join(', ')} differ)`);
  return row;
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
  const budget: StudyBudget = { minutes: o.minutes, steps: o.steps ?? null };
  if (files.every((f) => existsSync(f))) {
    // one after the other: the first file that is refused is the one the error names, on every run
    const rows: StudyRow[] = [];
    for (const f of files) rows.push(await readCachedRow(f, budget, v));
    log(`${v.name} on ${dsName}: already done`);
    return rows;
  }
  const cfg = structuredClone(v.config);
  if (o.steps !== undefined) {
    cfg.steps = o.steps;
    fitIntervalsToSteps(cfg);
  }
  cfg.maxMinutes = v.ensemble ? await anosegMinutesBesidePadim(data, o.minutes, cfg.tiling) : o.minutes;
  log(
    `${v.name} on ${dsName}: training (${o.steps === undefined ? '' : `${o.steps} steps, `}${o.minutes} min ` +
      `budget${v.ensemble ? ', PaDiM fit included' : ''})`,
  );
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
      earlyModel: r.earlyModelPath,
      aspect: cfg.aspect,
      tiling: cfg.tiling,
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
    await writeFileAtomic(files[k], JSON.stringify({ ...row, budget, config: v.config }, null, 2));
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
