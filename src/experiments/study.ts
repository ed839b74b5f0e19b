/**
 * Recipe study: train several configurations on several data sets with the same budget and evaluate each
 * with the full metrics, producing one table (README "Quality"). Every run keeps its folder, so a
 * study that is stopped resumes where it was (finished runs are not repeated).
 */
import { existsSync, promises as fs } from 'node:fs';
import path from 'node:path';
import { trainAnoSeg } from '../methods/anoseg/trainer.js';
import { presetConfig, type AnoSegTrainConfig } from '../methods/anoseg/config.js';
import { AnoSegPredictor } from '../methods/anoseg/model-file.js';
import { evaluateMaps } from '../eval/evaluate.js';
import { modelMapProvider } from '../eval/model-maps.js';
import { writeFileAtomic } from '../util/atomic.js';

export interface StudyVariant {
  name: string;
  config: AnoSegTrainConfig;
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

export function presetVariants(names: string[]): StudyVariant[] {
  return names.map((n) => ({ name: n, config: presetConfig(n) }));
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

export async function runStudy(o: StudyOptions): Promise<StudyRow[]> {
  const rows: StudyRow[] = [];
  const log = o.log ?? ((l: string) => process.stderr.write(`${l}\n`));
  for (const data of o.datasets) {
    if (!existsSync(data)) throw new Error(`data set not found: ${data}`);
    const dsName = path.basename(path.resolve(data));
    for (const v of o.variants) {
      const runDir = path.join(o.out, v.name, dsName);
      const resultFile = path.join(runDir, 'study-row.json');
      if (existsSync(resultFile)) {
        rows.push(JSON.parse(await fs.readFile(resultFile, 'utf8')) as StudyRow);
        log(`${v.name} on ${dsName}: already done`);
        continue;
      }
      const cfg = structuredClone(v.config);
      cfg.maxMinutes = o.minutes;
      log(`${v.name} on ${dsName}: training (${o.minutes} min budget)`);
      const r = await trainAnoSeg({ data, out: runDir, config: cfg, progress: false });
      const predictor = await AnoSegPredictor.load(r.modelPath);
      try {
        const m = await evaluateMaps({
          dataRoot: data,
          mapProvider: modelMapProvider(predictor),
          outDir: path.join(runDir, 'eval'),
        });
        const row: StudyRow = {
          variant: v.name,
          dataset: dsName,
          pixelAuroc: m.overall.pixelAuroc,
          imageAuroc: m.overall.imageAuroc,
          bestIou: m.overall.iou.iou,
          aupro: m.overall.aupro,
          trainMinutes: r.minutes,
          steps: r.steps,
        };
        await writeFileAtomic(resultFile, JSON.stringify(row, null, 2));
        rows.push(row);
        log(studyTable([row]).split('\n')[2]);
      } finally {
        predictor.dispose();
      }
    }
  }
  const table = studyTable(rows, o.heldOut);
  await writeFileAtomic(path.join(o.out, 'study.md'), `${table}\n`);
  return rows;
}
