/**
 * A training run's folder, shared by every trainer: the log (text + jsonl records), atomic checkpoints of named
 * modules and optimisers with resume (format and identity checked before anything is loaded), the curves page, the
 * final config.json, and Ctrl-C / SIGTERM turned into "finish the step, save a checkpoint, stop". In a
 * data-parallel group every rank has one; rank 0 alone writes.
 */
import { existsSync, promises as fs } from 'node:fs';
import path from 'node:path';
import { loadSafetensors, saveSafetensors, withoutPrefix, type StateDict, type Stateful } from '../nn/index.js';
import type { Optimizer } from '../nn/index.js';
import { renderLineChart, type LineSeries } from '../eval/report.js';
import { writeFileAtomic } from '../util/atomic.js';
import type { RunLog } from '../util/progress.js';
import { runLogFor, type DataParallel } from './data-parallel.js';

/** The named parts of a checkpoint: 'generator' -> tensors 'generator.<name>'; null parts are left out. */
export type CheckpointParts = Record<string, Stateful | null>;

export interface RunFolderOptions {
  /** The log file's name in the folder ('train.log'; records go to the same name with .jsonl). */
  logName?: string;
  /** The checkpoint format this trainer writes and accepts (metadata 'format'). */
  checkpointFormat: string;
  /** What a checkpoint of this trainer is, for the error on another file ('an AnoSeg training checkpoint'). */
  checkpointKind: string;
  distributed?: DataParallel | null;
}

export interface ResumedCheckpoint {
  step: number;
  minutes: number;
  /** Every metadata field, for the trainer's own history and diagnostics. */
  metadata: Record<string, string>;
}

function isOptimizer(s: Stateful): s is Optimizer {
  return !('namedChildren' in s) && 'zeroGrad' in s;
}

export class RunFolder {
  readonly log: RunLog;
  readonly checkpointPath: string;
  readonly dp: DataParallel | null;
  private stop = false;
  private readonly onSignal = (): void => {
    this.stop = true;
  };

  private constructor(
    readonly dir: string,
    private readonly o: RunFolderOptions,
  ) {
    this.dp = o.distributed ?? null;
    this.log = runLogFor(this.dp, path.join(dir, o.logName ?? 'train.log'));
    this.checkpointPath = path.join(dir, 'checkpoint.safetensors');
  }

  /** Creates the folder (and its parents). */
  static async open(dir: string, o: RunFolderOptions): Promise<RunFolder> {
    await fs.mkdir(dir, { recursive: true });
    return new RunFolder(dir, o);
  }

  /** Whether this process writes the folder's files (rank 0, or a single process). */
  get isMain(): boolean {
    return this.dp?.isMain ?? true;
  }

  file(name: string): string {
    return path.join(this.dir, name);
  }

  /** Ctrl-C or SIGTERM arrived (or another rank stopped): the loop finishes its step, saves and stops. */
  get stopRequested(): boolean {
    return this.stop;
  }

  requestStop(): void {
    this.stop = true;
  }

  /** Ctrl-C / SIGTERM set stopRequested from now until releaseSignals (which also runs on errors: use finally). */
  catchSignals(): void {
    process.once('SIGINT', this.onSignal);
    process.once('SIGTERM', this.onSignal);
  }

  releaseSignals(): void {
    process.off('SIGINT', this.onSignal);
    process.off('SIGTERM', this.onSignal);
  }

  /**
   * Loads the checkpoint into `parts` when resuming and one exists; null otherwise. `checkIdentity` sees the
   * metadata before any tensor is loaded and throws when the checkpoint was written with other settings.
   */
  async resume(
    enabled: boolean,
    parts: CheckpointParts,
    checkIdentity: (metadata: Record<string, string>) => void,
  ): Promise<ResumedCheckpoint | null> {
    const file = this.checkpointPath;
    if (!enabled || !existsSync(file)) return null;
    const { tensors, metadata } = await loadSafetensors(file);
    try {
      if (metadata.format !== this.o.checkpointFormat) throw new Error(`${file}: not ${this.o.checkpointKind}`);
      checkIdentity(metadata);
      for (const [name, part] of Object.entries(parts)) part?.loadStateDict(withoutPrefix(tensors, `${name}.`));
      const step = Number(metadata.step);
      this.log.info(`resumed from ${file} at step ${step}`);
      return { step, minutes: Number(metadata.minutes ?? 0), metadata };
    } finally {
      for (const t of tensors.values()) t.dispose();
    }
  }

  /**
   * Writes the checkpoint atomically (rank 0 only): every part's state under its name, and `metadata` after the
   * format. The step counts an optimiser's state dict makes for the call are freed afterwards.
   */
  async saveCheckpoint(parts: CheckpointParts, metadata: Record<string, string>): Promise<void> {
    if (!this.isMain) return;
    const tensors: StateDict = new Map();
    const made: StateDict[] = [];
    for (const [name, part] of Object.entries(parts)) {
      if (!part) continue;
      const state = part.stateDict();
      if (isOptimizer(part)) made.push(state);
      for (const [k, v] of state) tensors.set(`${name}.${k}`, v);
    }
    try {
      await saveSafetensors(this.checkpointPath, tensors, { format: this.o.checkpointFormat, ...metadata });
    } finally {
      for (const state of made) state.get('step')?.dispose();
    }
  }

  /** The stop after a signal: logged, then thrown (the checkpoint is saved by then). */
  interrupted(what: string, step: number): Error {
    this.log.info(`stopped by signal at step ${step}; checkpoint saved, rerun the same command to resume`);
    return new Error(`${what} interrupted at step ${step}; checkpoint saved in ${this.checkpointPath}`);
  }

  /** config.json: the resolved configuration of the finished run. */
  async writeConfig(config: unknown): Promise<void> {
    await writeFileAtomic(this.file('config.json'), JSON.stringify(config, null, 2));
  }

  /** curves.html: a page of charts (and optional HTML below them). */
  async writeCurves(page: CurvesPage): Promise<void> {
    await writeFileAtomic(this.file('curves.html'), renderCurvesPage(page));
  }
}

/** Names of settings that differ between a checkpoint's and the current ones, as 'name saved vs current'. */
export function identityDifferences<T extends object>(saved: Partial<T> | undefined, current: T): string[] {
  const show = (v: unknown): string => (typeof v === 'object' && v !== null ? JSON.stringify(v) : String(v));
  return (Object.keys(current) as (keyof T)[])
    .filter((k) => JSON.stringify(saved?.[k]) !== JSON.stringify(current[k]))
    .map((k) => `${String(k)} ${show(saved?.[k])} vs ${show(current[k])}`);
}

// ---- the curves page --------------------------------------------------------------------------------------------

export interface CurvesPage {
  /** The page's <title>. */
  title: string;
  heading: string;
  /** Smoothed losses as logged: one line per key. */
  losses: { step: number; l: object }[];
  lossKeys: readonly string[];
  lossTitle: string;
  /** Diagnostics over steps: one line per series, NaN (not drawn) where a value is missing. */
  diagnostics: { name: string; points: { step: number; value: number | null }[]; dashed?: boolean }[];
  /** Extra CSS and HTML after the charts (a table of the diagnostics). */
  style?: string;
  after?: string;
}

export function renderCurvesPage(p: CurvesPage): string {
  const lossChart = renderLineChart(
    p.lossKeys.map((k) => ({
      name: k,
      x: p.losses.map((q) => q.step),
      y: p.losses.map((q) => (q.l as Record<string, number>)[k]),
    })),
    { title: p.lossTitle, xLabel: 'step', yLabel: 'loss' },
  );
  const series: LineSeries[] = p.diagnostics.map((s) => ({
    name: s.name,
    x: s.points.map((q) => q.step),
    y: s.points.map((q) => q.value ?? Number.NaN),
    ...(s.dashed ? { dashed: true } : {}),
  }));
  const aurocChart = renderLineChart(series, {
    title: 'Diagnostics',
    xLabel: 'step',
    yLabel: 'AUROC',
    yDomain: [0, 1],
    legendPosition: 'bottom-right',
  });
  return (
    `<!doctype html><meta charset="utf-8"><title>${p.title}</title>` +
    `<style>body{font-family:sans-serif;margin:2em}${p.style ?? ''}</style>` +
    `<h1>${p.heading}</h1>${lossChart}${aurocChart}${p.after ?? ''}`
  );
}
