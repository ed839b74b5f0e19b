/**
 * The paper's ablation studies, reproduced at CPU size on one data set:
 * - Table 3 (segmentation): base model (CutPaste only: no hard augmentation, map decoder only, no adversarial
 *   learning, no coordinate channels), + hard augmentation, + adversarial learning (with the reconstruction decoder
 *   and the masked L_Re), + coordinate channels (= the 'cpu' preset, the paper's recipe at CPU size). Each run is
 *   trained with the same budget by trainAnoSeg and evaluated with evaluateMaps (pixel AUROC, image AUROC, best IoU,
 *   AUPRO).
 * - Table 5 (detection): the detector variants (base, + feature matching, + input anomaly map, + anomaly
 *   classification) trained with the same budget on top of one AnoSeg model, evaluated on image AUROC of eq. 5.
 * Writes out/ablation.md (a table with the paper's figures alongside) and out/ablation.json. A run whose folder
 * already holds a result for the same configuration is reused, so an interrupted study continues where it stopped.
 */
import { existsSync, promises as fs } from 'node:fs';
import path from 'node:path';
import {
  ADVERSARIAL_DEFAULTS,
  adversarialSettings,
  presetConfig,
  settingsDifferences,
  validateConfig,
  type AdversarialConfig,
  type AnoSegTrainConfig,
} from '../methods/anoseg/config.js';
import { trainAnoSeg } from '../methods/anoseg/trainer.js';
import { trainDetector, type DetectorTrainConfig } from '../methods/detector/trainer.js';
import { AnoSegPredictor } from '../methods/anoseg/model-file.js';
import { DetectorPredictor, TABLE5_VARIANTS, VARIANT_LABELS, type DetectorVariant } from '../methods/detector/model.js';
import type { AnomalyPredictor } from '../models/predictor.js';
import { openMvtecDataset } from '../data/dataset.js';
import { evaluateMaps, type EvaluationMetrics } from '../eval/evaluate.js';
import { modelMapProvider } from '../eval/model-maps.js';
import { writeFileAtomic } from '../util/atomic.js';
import { readSafetensorsMetadata } from '../nn/safetensors.js';
import { fitIntervalsToSteps } from '../train/loop.js';

export type AblationTable = 3 | 5;

/** The preset every ablation run starts from: the paper's networks, losses and anomalies at CPU size. */
export const ABLATION_PRESET = 'cpu';

export interface Table3Run {
  name: 'base' | 'hard-aug' | 'adversarial' | 'coords';
  label: string;
  /** Paper, Table 3: mean over the 15 MVTec AD categories. */
  paper: { pixelAuroc: number; iou: number };
  config: AnoSegTrainConfig;
}

export interface Table5Run {
  name: DetectorVariant;
  label: string;
  /** Paper, Table 5: mean image AUROC over the 15 MVTec AD categories. */
  paper: { imageAuroc: number };
}

export const TABLE3_PAPER: Readonly<Record<Table3Run['name'], { pixelAuroc: number; iou: number }>> = Object.freeze({
  base: { pixelAuroc: 0.923, iou: 0.492 },
  'hard-aug': { pixelAuroc: 0.942, iou: 0.503 },
  adversarial: { pixelAuroc: 0.951, iou: 0.527 },
  coords: { pixelAuroc: 0.97, iou: 0.542 },
});

export const TABLE5_PAPER: Readonly<Record<DetectorVariant, number>> = Object.freeze({
  base: 0.812,
  'feature-matching': 0.842,
  'map-input': 0.943,
  full: 0.961,
});

/**
 * Table 3's four configurations, cumulative, from `base` (default: the 'cpu' preset, which is the last column).
 * Fields not named here keep the preset's values (in the base model the preset's fakePair is unused: no adversary).
 */
export function table3Configs(base: AnoSegTrainConfig = presetConfig(ABLATION_PRESET)): Table3Run[] {
  const make = (name: Table3Run['name'], label: string, edit: (c: AnoSegTrainConfig) => void): Table3Run => {
    const config = structuredClone(base);
    config.preset = `${base.preset}/table3-${name}`;
    edit(config);
    validateConfig(config);
    return { name, label, paper: { ...TABLE3_PAPER[name] }, config };
  };
  const cutPasteOnly = (c: AnoSegTrainConfig): void => {
    c.anomaly.hardAugmentation = false;
    c.arch.reconstruction = false;
    c.loss.reconstructionWeight = 0;
    c.loss.adversarialWeight = 0;
    c.arch.coordChannels = false;
  };
  const withHardAug = (c: AnoSegTrainConfig): void => {
    cutPasteOnly(c);
    c.anomaly.hardAugmentation = true;
  };
  const withAdversarial = (c: AnoSegTrainConfig): void => {
    withHardAug(c);
    c.arch.reconstruction = true;
    c.loss.reconstructionWeight = base.loss.reconstructionWeight || 1;
    c.loss.adversarialWeight = base.loss.adversarialWeight || 1;
  };
  const withCoords = (c: AnoSegTrainConfig): void => {
    withAdversarial(c);
    c.arch.coordChannels = true;
  };
  return [
    make('base', 'Base model (CutPaste only)', cutPasteOnly),
    make('hard-aug', '+ Hard augmentation', withHardAug),
    make('adversarial', '+ Adversarial learning', withAdversarial),
    make('coords', '+ Coordinate channel', withCoords),
  ];
}

export function table5Runs(): Table5Run[] {
  return TABLE5_VARIANTS.map((v) => ({ name: v, label: VARIANT_LABELS[v], paper: { imageAuroc: TABLE5_PAPER[v] } }));
}

export interface AblationOptions {
  /** MVTec-layout category with a labelled test split. */
  data: string;
  /** Study folder: one sub-folder per run, ablation.md, ablation.json. */
  out: string;
  /** Training budget of every run (minutes). */
  minutesPerRun: number;
  /** Seeds: every run is trained once per seed and its row is their mean (default [0]). */
  seeds?: number[];
  table: AblationTable;
  /** Step cap per run (default: the preset's). */
  steps?: number;
  /** Table 3: weight of L_Adv in the rows with adversarial learning (default: the preset's, 1 as in the paper). */
  adversarialWeight?: number;
  /** Overrides of the preset for quick studies and tests. */
  resolution?: number;
  width?: number;
  batchSize?: number;
  /** Only these runs (names of table3Configs / Table 5 variants), in table order. */
  runs?: string[];
  /** Table 5: the AnoSeg model to build on; default: train the Table 3 'coords' configuration in out/anoseg. */
  anosegModel?: string;
  /** Evaluation size (default 256 as in the paper; null = each mask's own size). */
  evalSize?: number | null;
  /** Write each run's report.html (default true). */
  report?: boolean;
  /** Progress on stderr (default true). */
  progress?: boolean;
}

/** One seed's figures of a row. */
export interface SeedFigures {
  seed: number;
  pixelAuroc: number;
  imageAuroc: number;
  iou: number;
  aupro: number;
}

export interface AblationRow {
  name: string;
  label: string;
  /** The paper's figures for this column. */
  paper: Record<string, number>;
  /** Each seed's figures; the row's own figures are their mean. */
  perSeed: SeedFigures[];
  pixelAuroc: number;
  imageAuroc: number;
  iou: number;
  aupro: number;
  /** Mean over the seeds. */
  steps: number;
  minutes: number;
  /** The first seed's files. */
  modelPath: string;
  metricsPath: string;
}

export interface AblationResult {
  table: AblationTable;
  data: string;
  preset: string;
  seeds: number[];
  minutesPerRun: number;
  resolution: number;
  /** Table 3: weight of L_Adv in the adversarial rows. */
  adversarialWeight: number;
  /** Table 3: the stabilisers of the adversarial rows that differ from plain eq. 3, and the L_Adv ramp (steps). */
  adversarial: {
    rampSteps: number;
    stabilisers: Partial<AdversarialConfig>;
    /** Eq. 3's fake pair (absent in results stored before it was recorded: 'reconstruction'). */
    fakePair?: AnoSegTrainConfig['loss']['fakePair'];
  };
  evalSize: number | null;
  rows: AblationRow[];
  /** Table 5: image AUROC of the AnoSeg model's own map score, for reference. */
  mapScoreImageAuroc: number | null;
  anosegModel: string | null;
  files: { markdown: string; json: string };
}

function selectRuns<T extends { name: string }>(all: T[], only: string[] | undefined): T[] {
  if (!only) return all;
  const unknown = only.filter((n) => !all.some((r) => r.name === n));
  if (unknown.length)
    throw new Error(`unknown ablation run(s) ${unknown.join(', ')} (known: ${all.map((r) => r.name).join(', ')})`);
  return all.filter((r) => only.includes(r.name));
}

async function evaluate(
  predictor: AnomalyPredictor,
  o: AblationOptions,
  outDir: string,
  title: string,
): Promise<EvaluationMetrics> {
  try {
    return await evaluateMaps({
      dataRoot: o.data,
      mapProvider: modelMapProvider(predictor),
      outDir,
      evalSize: evalSizeOf(o) ?? undefined,
      report: o.report ?? true,
      title,
    });
  } finally {
    predictor.dispose();
  }
}

interface StoredRun {
  fingerprint: string;
  row: AblationRow;
}

/**
 * A Table 3 run's training config without the settings it never uses: a run without L_Adv trains no discriminator,
 * so its adversarial stabilisers, L_Adv ramp and fake pair change nothing (a study whose adversarial rows change
 * reuses its rows without an adversary). Other configs are returned as they are.
 */
export function effectiveConfig(config: AnoSegTrainConfig): AnoSegTrainConfig {
  if (config.loss.adversarialWeight > 0) return config;
  const c = structuredClone(config);
  delete c.adversarial;
  delete (c as Partial<AnoSegTrainConfig>).adversarialRampSteps;
  delete (c.loss as Partial<AnoSegTrainConfig['loss']>).fakePair;
  return c;
}

/**
 * The trainer resumes whatever checkpoint a run folder holds (it checks the architecture only, so a budget can be
 * extended). A study row must not continue a run of another configuration (a finished one would be re-evaluated as
 * if it were this row): refuse, naming the differences; an interrupted run of the same configuration resumes.
 */
async function refuseOtherConfiguration(dir: string, config: AnoSegTrainConfig): Promise<void> {
  const file = path.join(dir, 'checkpoint.safetensors');
  if (!existsSync(file)) return;
  const saved = JSON.parse((await readSafetensorsMetadata(file)).config ?? 'null') as AnoSegTrainConfig | null;
  const diff = saved ? settingsDifferences(effectiveConfig(saved), effectiveConfig(config)) : ['config'];
  if (diff.length)
    throw new Error(
      `${dir} holds a run of another configuration (${diff.slice(0, 6).join(', ')}${diff.length > 6 ? ', ...' : ''}); ` +
        'move or remove that folder, or give another --out',
    );
}

/** A stored or new fingerprint in the form two runs are compared by (Table 3 configs as effectiveConfig). */
function comparableFingerprint(fingerprint: string): string {
  try {
    const f = JSON.parse(fingerprint) as { config?: AnoSegTrainConfig };
    return f.config?.loss ? JSON.stringify({ ...f, config: effectiveConfig(f.config) }) : fingerprint;
  } catch {
    return fingerprint;
  }
}

async function readStored(dir: string, fingerprint: string, seed: number): Promise<AblationRow | null> {
  const file = path.join(dir, 'ablation-run.json');
  if (!existsSync(file)) return null;
  try {
    const s = JSON.parse(await fs.readFile(file, 'utf8')) as StoredRun;
    if (comparableFingerprint(s.fingerprint) !== comparableFingerprint(fingerprint) || !existsSync(s.row.modelPath))
      return null;
    // Rows stored before studies had several seeds carry their one seed's figures only as the row's own.
    const { pixelAuroc, imageAuroc, iou, aupro } = s.row;
    return { ...s.row, perSeed: s.row.perSeed ?? [{ seed, pixelAuroc, imageAuroc, iou, aupro }] };
  } catch {
    return null;
  }
}

async function store(dir: string, fingerprint: string, row: AblationRow): Promise<void> {
  await writeFileAtomic(path.join(dir, 'ablation-run.json'), `${JSON.stringify({ fingerprint, row }, null, 2)}\n`);
}

/** The preset with the study's overrides applied (shared by every run). */
export function ablationBaseConfig(
  o: Pick<AblationOptions, 'steps' | 'resolution' | 'width' | 'batchSize' | 'minutesPerRun' | 'adversarialWeight'> & {
    seed?: number;
  },
): AnoSegTrainConfig {
  const c = presetConfig(ABLATION_PRESET);
  if (o.adversarialWeight !== undefined) {
    if (!(o.adversarialWeight > 0)) throw new Error(`adversarial weight must be > 0 (got ${o.adversarialWeight})`);
    c.loss.adversarialWeight = o.adversarialWeight;
  }
  if (o.resolution !== undefined) c.arch.resolution = o.resolution;
  if (o.width !== undefined) c.arch.width = o.width;
  if (o.batchSize !== undefined) c.batchSize = o.batchSize;
  if (o.steps !== undefined) c.steps = o.steps;
  c.seed = o.seed ?? 0;
  c.maxMinutes = o.minutesPerRun;
  fitIntervalsToSteps(c);
  return c;
}

/** The evaluation size of a study: 256 px unless given; null = each mask's own size. */
function evalSizeOf(o: Pick<AblationOptions, 'evalSize'>): number | null {
  return o.evalSize === undefined ? 256 : o.evalSize;
}

const fmt = (v: number | null | undefined, d = 3): string =>
  v === null || v === undefined || !Number.isFinite(v) ? '-' : v.toFixed(d);

/** How the adversarial rows of Table 3 were trained, in words. */
function adversarialSetting(r: Pick<AblationResult, 'adversarialWeight' | 'adversarial'>): string {
  const { rampSteps, stabilisers, fakePair = 'reconstruction' } = r.adversarial;
  const named = Object.entries(stabilisers).map(([k, v]) => `${k} ${String(v)}`);
  const pair = fakePair === 'reconstruction' ? '(x̂, Â) as in eq. 3' : '(x, Â): the input image beside the map';
  return (
    `L_Adv weight ${r.adversarialWeight} in the adversarial rows, fake pair ${pair}` +
    (rampSteps > 0 ? `, ramped up over ${rampSteps} steps` : '') +
    `; stabilisers: ${named.length ? named.join(', ') : 'none (plain eq. 3)'}`
  );
}

export function ablationMarkdown(r: Omit<AblationResult, 'files'>): string {
  const lines: string[] = [];
  const setting =
    `Data: \`${r.data}\`; preset '${r.preset}' at ${r.resolution} px; ${r.minutesPerRun} min per run; ` +
    `${r.seeds.length > 1 ? `seeds ${r.seeds.join(', ')} (each figure is their mean)` : `seed ${r.seeds[0]}`}; ` +
    `evaluated at ${r.evalSize === null ? "each mask's own size" : `${r.evalSize} px`}` +
    (r.table === 3 ? `; ${adversarialSetting(r)}.` : '.');
  if (r.table === 3) {
    lines.push('# Ablation study, Table 3 (anomaly segmentation)', '', setting, '');
    const perSeed = r.seeds.length > 1;
    lines.push(
      `| Configuration | pixel AUROC | IoU | image AUROC | AUPRO@0.3 | steps | minutes | paper AUROC / IoU |${perSeed ? ' pixel AUROC / IoU per seed |' : ''}`,
    );
    lines.push(`|---|---:|---:|---:|---:|---:|---:|---:|${perSeed ? '---|' : ''}`);
    for (const row of r.rows) {
      const seeds = row.perSeed.map((f) => `${fmt(f.pixelAuroc)} / ${fmt(f.iou)}`).join(', ');
      lines.push(
        `| ${row.label} | ${fmt(row.pixelAuroc)} | ${fmt(row.iou)} | ${fmt(row.imageAuroc)} | ${fmt(row.aupro)} | ${Math.round(row.steps)} | ` +
          `${row.minutes.toFixed(1)} | ${fmt(row.paper.pixelAuroc)} / ${fmt(row.paper.iou)} |${perSeed ? ` ${seeds} |` : ''}`,
      );
    }
    lines.push(
      '',
      'Paper figures are means over the 15 MVTec AD categories at 256 px after full training; the figures here are one data set at CPU size under a fixed time budget.',
    );
  } else {
    lines.push('# Ablation study, Table 5 (anomaly detection)', '', setting, '');
    if (r.anosegModel) lines.push(`AnoSeg model: \`${r.anosegModel}\``, '');
    lines.push(
      '| Configuration | image AUROC (eq. 5) | pixel AUROC (AnoSeg map) | steps | minutes | paper image AUROC |',
    );
    lines.push('|---|---:|---:|---:|---:|---:|');
    for (const row of r.rows) {
      lines.push(
        `| ${row.label} | ${fmt(row.imageAuroc)} | ${fmt(row.pixelAuroc)} | ${Math.round(row.steps)} | ${row.minutes.toFixed(1)} | ${fmt(row.paper.imageAuroc)} |`,
      );
    }
    lines.push(`| AnoSeg map score (max of the smoothed map), reference | ${fmt(r.mapScoreImageAuroc)} | | | | |`);
    lines.push(
      '',
      'Paper figures are means over the 15 MVTec AD categories after full training; the figures here are one data set at CPU size under a fixed time budget.',
    );
  }
  return `${lines.join('\n')}\n`;
}

/** The settings every row of a study shares, as its result records them. */
function studySettings(
  o: AblationOptions,
  base: AnoSegTrainConfig,
): Pick<
  AblationResult,
  'data' | 'preset' | 'seeds' | 'minutesPerRun' | 'resolution' | 'adversarialWeight' | 'adversarial' | 'evalSize'
> {
  const settings = adversarialSettings(base);
  const stabilisers = Object.fromEntries(
    Object.entries(settings).filter(([k, v]) => ADVERSARIAL_DEFAULTS[k as keyof AdversarialConfig] !== v),
  );
  return {
    data: o.data,
    preset: ABLATION_PRESET,
    seeds: [base.seed],
    minutesPerRun: o.minutesPerRun,
    resolution: base.arch.resolution,
    adversarialWeight: base.loss.adversarialWeight,
    adversarial: { rampSteps: base.adversarialRampSteps, stabilisers, fakePair: base.loss.fakePair },
    evalSize: evalSizeOf(o),
  };
}

/** A run's folder: OUT/<run> for seed 0 (as studies of one seed always had), OUT/<run>-seed<N> for the others. */
export function ablationRunDir(out: string, run: string, seed: number): string {
  return path.join(out, seed === 0 ? run : `${run}-seed${seed}`);
}

async function runTable3(
  o: AblationOptions,
  seed: number,
  log: (s: string) => void,
): Promise<Omit<AblationResult, 'files'>> {
  const base = ablationBaseConfig({ ...o, seed });
  const runs = selectRuns(table3Configs(base), o.runs);
  const rows: AblationRow[] = [];
  for (const run of runs) {
    const dir = ablationRunDir(o.out, run.name, seed);
    const fingerprint = JSON.stringify({ config: run.config, evalSize: evalSizeOf(o) });
    const stored = await readStored(dir, fingerprint, seed);
    if (stored) {
      log(`table 3 '${run.name}': reusing ${dir}`);
      rows.push(stored);
      continue;
    }
    await refuseOtherConfiguration(dir, run.config);
    log(`table 3 '${run.name}' (${run.label}): training ${o.minutesPerRun} min -> ${dir}`);
    const t = await trainAnoSeg({ data: o.data, out: dir, config: run.config, progress: o.progress ?? true });
    const m = await evaluate(
      await AnoSegPredictor.load(t.modelPath),
      o,
      path.join(dir, 'eval'),
      `Table 3: ${run.label}`,
    );
    const row = ablationRow(run, seed, t, m);
    await store(dir, fingerprint, row);
    log(
      `table 3 '${run.name}': pixel AUROC ${fmt(row.pixelAuroc)}, IoU ${fmt(row.iou)}, image AUROC ${fmt(row.imageAuroc)}`,
    );
    rows.push(row);
  }
  return {
    table: 3,
    ...studySettings(o, base),
    rows,
    mapScoreImageAuroc: null,
    anosegModel: null,
  };
}

async function runTable5(
  o: AblationOptions,
  seed: number,
  log: (s: string) => void,
): Promise<Omit<AblationResult, 'files'>> {
  const base = ablationBaseConfig({ ...o, seed });
  const runs = selectRuns(table5Runs(), o.runs);
  let anosegModel = o.anosegModel ?? null;
  if (!anosegModel) {
    const full = table3Configs(base).find((r) => r.name === 'coords')!.config;
    const dir = ablationRunDir(o.out, 'anoseg', seed);
    anosegModel = path.join(dir, 'model.safetensors');
    if (existsSync(anosegModel) && existsSync(path.join(dir, 'config.json'))) {
      log(`table 5: reusing the AnoSeg model ${anosegModel}`);
    } else {
      log(`table 5: training the AnoSeg model (Table 3 full configuration) for ${o.minutesPerRun} min -> ${dir}`);
      anosegModel = (await trainAnoSeg({ data: o.data, out: dir, config: full, progress: o.progress ?? true }))
        .modelPath;
    }
  }
  const reference = await evaluate(
    await AnoSegPredictor.load(anosegModel),
    { ...o, report: false },
    ablationRunDir(o.out, 'anoseg-eval', seed),
    'AnoSeg map score',
  );
  const rows: AblationRow[] = [];
  for (const run of runs) {
    const dir = ablationRunDir(o.out, `detector-${run.name}`, seed);
    const detectorOverrides: Partial<DetectorTrainConfig> = {};
    if (o.batchSize !== undefined) {
      detectorOverrides.batchSize = o.batchSize;
      detectorOverrides.anomalyBatch = Math.max(1, Math.floor(o.batchSize / 2));
    }
    const steps = o.steps ?? 100_000;
    const fingerprint = JSON.stringify({
      anosegModel: path.resolve(anosegModel),
      variant: run.name,
      steps,
      minutes: o.minutesPerRun,
      seed: base.seed,
      detectorOverrides,
      evalSize: evalSizeOf(o),
    });
    const stored = await readStored(dir, fingerprint, seed);
    if (stored) {
      log(`table 5 '${run.name}': reusing ${dir}`);
      rows.push(stored);
      continue;
    }
    log(`table 5 '${run.name}' (${run.label}): training ${o.minutesPerRun} min -> ${dir}`);
    const t = await trainDetector({
      anosegModel,
      data: o.data,
      out: dir,
      variant: run.name,
      steps,
      minutes: o.minutesPerRun,
      seed: base.seed,
      config: detectorOverrides,
      progress: o.progress ?? true,
    });
    const m = await evaluate(
      await DetectorPredictor.load(t.modelPath),
      { ...o, report: false },
      path.join(dir, 'eval'),
      `Table 5: ${run.label}`,
    );
    const row = ablationRow(run, seed, t, m);
    await store(dir, fingerprint, row);
    log(`table 5 '${run.name}': image AUROC ${fmt(row.imageAuroc)} (map score ${fmt(reference.overall.imageAuroc)})`);
    rows.push(row);
  }
  return {
    table: 5,
    ...studySettings(o, base),
    rows,
    mapScoreImageAuroc: reference.overall.imageAuroc,
    anosegModel: path.resolve(anosegModel),
  };
}

/** One table row from a run's training result and its evaluation. */
function ablationRow(
  run: { name: string; label: string; paper: AblationRow['paper'] },
  seed: number,
  t: { steps: number; minutes: number; modelPath: string },
  m: {
    overall: { pixelAuroc: number; imageAuroc: number; iou: { iou: number }; aupro: number };
    files: { metrics: string };
  },
): AblationRow {
  const figures = {
    pixelAuroc: m.overall.pixelAuroc,
    imageAuroc: m.overall.imageAuroc,
    iou: m.overall.iou.iou,
    aupro: m.overall.aupro,
  };
  return {
    name: run.name,
    label: run.label,
    paper: { ...run.paper },
    perSeed: [{ seed, ...figures }],
    ...figures,
    steps: t.steps,
    minutes: t.minutes,
    modelPath: t.modelPath,
    metricsPath: m.files.metrics,
  };
}

const mean = (xs: number[]): number => xs.reduce((a, b) => a + b, 0) / xs.length;

/** One table from the same table run once per seed: each row's figures are the mean over the seeds. */
export function meanOverSeeds(tables: Omit<AblationResult, 'files'>[]): Omit<AblationResult, 'files'> {
  const [first] = tables;
  const rows = first.rows.map((row, i): AblationRow => {
    const same = tables.map((t) => t.rows[i]);
    const perSeed = same.flatMap((r) => r.perSeed);
    return {
      ...row,
      perSeed,
      pixelAuroc: mean(perSeed.map((f) => f.pixelAuroc)),
      imageAuroc: mean(perSeed.map((f) => f.imageAuroc)),
      iou: mean(perSeed.map((f) => f.iou)),
      aupro: mean(perSeed.map((f) => f.aupro)),
      steps: mean(same.map((r) => r.steps)),
      minutes: mean(same.map((r) => r.minutes)),
    };
  });
  const references = tables.map((t) => t.mapScoreImageAuroc).filter((v): v is number => v !== null);
  return {
    ...first,
    seeds: tables.flatMap((t) => t.seeds),
    rows,
    mapScoreImageAuroc: references.length ? mean(references) : null,
  };
}

/** Runs one ablation table (once per seed) and writes out/ablation.md and out/ablation.json. */
export async function runAblation(o: AblationOptions): Promise<AblationResult> {
  if (!(o.minutesPerRun > 0)) throw new Error(`minutesPerRun must be positive (got ${o.minutesPerRun})`);
  if (o.table !== 3 && o.table !== 5) throw new Error(`table must be 3 or 5 (got ${String(o.table)})`);
  const ds = await openMvtecDataset(o.data);
  if (!ds.test.some((t) => t.defect !== 'good'))
    throw new Error(`${o.data}: the ablation needs a test split with defective images`);
  await fs.mkdir(o.out, { recursive: true });
  const log = (s: string): void => {
    if (o.progress ?? true) process.stderr.write(`${s}\n`);
  };
  const seeds = o.seeds?.length ? o.seeds : [0];
  if (new Set(seeds).size !== seeds.length || seeds.some((s) => !Number.isInteger(s) || s < 0))
    throw new Error(`seeds must be distinct non-negative integers (got ${seeds.join(', ')})`);
  const perSeed: Omit<AblationResult, 'files'>[] = [];
  for (const seed of seeds) perSeed.push(o.table === 3 ? await runTable3(o, seed, log) : await runTable5(o, seed, log));
  const partial = meanOverSeeds(perSeed);
  const files = { markdown: path.join(o.out, 'ablation.md'), json: path.join(o.out, 'ablation.json') };
  const result: AblationResult = { ...partial, files };
  await writeFileAtomic(files.markdown, ablationMarkdown(partial));
  await writeFileAtomic(
    files.json,
    `${JSON.stringify(result, (_k, v: unknown) => (typeof v === 'number' && !Number.isFinite(v) ? null : v), 2)}\n`,
  );
  return result;
}
