/**
 * The training loop every trainer runs: a step function called until the step count or the time budget is
 * reached or a signal asks to stop, smoothed losses (logged every 25 steps, shown on the progress bar), evaluation
 * and checkpoint hooks at their intervals, data-parallel agreement on stopping and the clock, BatchNorm statistics
 * averaged across ranks before they are read, and the final checkpoint. A stop by signal throws after saving.
 */
import { releaseDeferred } from '../engine/index.js';
import type { Module } from '../nn/index.js';
import { ProgressBar } from '../util/progress.js';
import { startGroup, stepAgreement } from './data-parallel.js';
import type { RunFolder } from './run-folder.js';

/** Step losses by name (an interface of numbers). */
export type Losses<L> = { [K in keyof L]: number };

/** Minutes of training: those of earlier (resumed) runs plus this process's since the clock started. */
export class RunClock {
  private readonly t0 = performance.now();
  constructor(readonly minutesBefore = 0) {}
  minutes(): number {
    return this.minutesBefore + (performance.now() - this.t0) / 60000;
  }
}

export interface TrainingLoopOptions<L extends Losses<L>> {
  run: RunFolder;
  clock: RunClock;
  /** What is trained ('training', 'pre-training'): the interrupt message. */
  what: string;
  steps: number;
  startStep: number;
  /** Total budget in minutes (earlier runs included), or null. */
  maxMinutes: number | null;
  /** Every network whose weights and BatchNorm statistics the ranks of a group share. */
  modules: (Module | null)[];
  /** One optimisation step (number `step`, counted from 0); `minutes` is the group's clock. Returns its losses. */
  step(step: number, minutes: number): L;
  /** Smoothed losses to start from (a resumed run's last logged ones), default none. */
  initialAverage?: L | null;
  /** Progress bar on stderr (rank 0), its label and the figures it shows. */
  progress: { label: string; figures: (average: L) => Record<string, number>; budgetSeconds?: number } | null;
  /** Every 25 steps the smoothed losses go to this history and the log's 'loss' records (with `extra()`). */
  lossHistory?: { step: number; l: L }[];
  lossRecordExtra?: () => Record<string, number>;
  evalEvery: number;
  /** Rank 0, at every evalEvery steps and the last step, BatchNorm statistics averaged across ranks first. */
  evaluate(step: number, average: L): Promise<void> | void;
  checkpointEvery: number;
  /** Rank 0, once, after step `atStep.step` (BatchNorm statistics averaged across ranks first): e.g. a snapshot. */
  atStep?: { step: number; run(step: number): Promise<void> };
  /** Rank 0 writes a checkpoint (BatchNorm statistics averaged across ranks first). */
  checkpoint(step: number): Promise<void>;
  /** Called once after the last step, before the final checkpoint. */
  onLoopEnd?(step: number): void;
}

/**
 * Caps a training config's step intervals at its step count, so that a run shorter than an interval still evaluates
 * and checkpoints (every caller that sets the step count calls this after).
 */
export function fitIntervalsToSteps(cfg: { steps: number; evalEvery: number; checkpointEvery: number }): void {
  cfg.evalEvery = Math.min(cfg.evalEvery, cfg.steps);
  cfg.checkpointEvery = Math.min(cfg.checkpointEvery, cfg.steps);
}

/** Exponential moving average of step losses (0.95 old, 0.05 new), per key. */
function smooth<L extends Losses<L>>(average: L | null, l: L): L {
  if (!average) return l;
  const keys = Object.keys(average) as (keyof L)[];
  return Object.fromEntries(keys.map((k) => [k, 0.95 * average[k] + 0.05 * l[k]])) as L;
}

/** Runs the loop; returns the step reached. Throws after the final checkpoint when stopped by a signal. */
export async function runTrainingLoop<L extends Losses<L>>(o: TrainingLoopOptions<L>): Promise<number> {
  const { run, clock } = o;
  const dp = run.dp;
  startGroup(dp, o.startStep, ...o.modules);
  const saveCheckpoint = async (step: number): Promise<void> => {
    dp?.averageBatchNormStatistics(...o.modules);
    if (run.isMain) await o.checkpoint(step);
  };
  const bar =
    o.progress && run.isMain
      ? new ProgressBar(o.steps, o.progress.label, process.stderr, o.startStep, o.progress.budgetSeconds)
      : null;
  let step = o.startStep;
  let average = o.initialAverage ?? null;
  run.catchSignals();
  try {
    while (step < o.steps) {
      // A data-parallel group stops together and schedules by one clock (see DataParallel.agree).
      const { stop, minutes: now } = stepAgreement(dp, run.stopRequested, clock.minutes());
      if (stop) {
        run.requestStop();
        break;
      }
      if (o.maxMinutes !== null && now >= o.maxMinutes) {
        run.log.info(`time budget of ${o.maxMinutes} min reached at step ${step}`);
        break;
      }
      const l = o.step(step, now);
      step++;
      average = smooth(average, l);
      if (o.lossHistory && step % 25 === 0) {
        o.lossHistory.push({ step, l: average });
        run.log.record('loss', { step, ...average, ...o.lossRecordExtra?.() });
      }
      bar?.update(step, o.progress!.figures(average));
      if (step % o.evalEvery === 0 || step === o.steps) {
        dp?.averageBatchNormStatistics(...o.modules);
        if (run.isMain) await o.evaluate(step, average);
      }
      if (o.atStep && step === o.atStep.step) {
        dp?.averageBatchNormStatistics(...o.modules);
        if (run.isMain) await o.atStep.run(step);
      }
      if (step % o.checkpointEvery === 0) await saveCheckpoint(step);
      // Every step: lets signals and I/O through and frees released tensor wrappers (see releaseDeferred).
      await releaseDeferred();
    }
    o.onLoopEnd?.(step);
  } finally {
    bar?.finish();
    run.releaseSignals();
  }
  await saveCheckpoint(step);
  if (run.stopRequested) throw run.interrupted(o.what, step);
  return step;
}
