/**
 * Data-parallel training over a ProcessGroup, as PyTorch's DistributedDataParallel does it: every rank holds the
 * whole model, computes gradients on its own part of the batch, and the gradients are averaged before each
 * optimiser step, so every rank takes the same step and the weights stay identical. Parameters and buffers start
 * from rank 0's; BatchNorm running statistics (updated locally from each rank's batches) are averaged whenever
 * they are read (checkpoints, evaluation); rank 0 alone writes files.
 */
import { BatchNorm2d, type Module } from '../nn/index.js';
import { ProcessGroup, Tensor, noGrad, tidy } from '../engine/index.js';
import { RunLog } from '../util/progress.js';

/** DistributedDataParallel's default bucket size: gradients travel in a few large buffers, not one per tensor. */
export const DEFAULT_BUCKET_BYTES = 25 * 1024 * 1024;

/** Called between backward and the optimiser step with the parameters about to be updated. */
export type GradientSync = (params: readonly Tensor[]) => void;

const elementBytes = (t: Tensor): number => (t.dtype === 'float64' || t.dtype === 'int64' ? 8 : 4);

function allModules(m: Module): Module[] {
  return [m, ...m.namedChildren().flatMap(([, c]) => allModules(c))];
}

export interface CommunicationStats {
  /** Collective calls made for gradients and how long they took in total (flattening and copying included). */
  gradientSyncs: number;
  gradientMs: number;
  gradientBytes: number;
}

export class DataParallel {
  readonly stats: CommunicationStats = { gradientSyncs: 0, gradientMs: 0, gradientBytes: 0 };
  private step = 0;

  constructor(
    readonly group: ProcessGroup,
    private readonly bucketBytes = DEFAULT_BUCKET_BYTES,
  ) {}

  get rank(): number {
    return this.group.rank;
  }

  get worldSize(): number {
    return this.group.worldSize;
  }

  /** Rank 0: the one that writes checkpoints, logs and the model. */
  get isMain(): boolean {
    return this.group.rank === 0;
  }

  /** Every rank's parameters and buffers take rank 0's values. */
  broadcastModules(...modules: (Module | null)[]): void {
    const tensors = modules.flatMap((m) => (m ? [...m.stateDict().values()] : []));
    this.collective('broadcasting the model', () => noGrad(() => this.group.broadcast(tensors, 0)));
  }

  /**
   * Averages the gradients of `params` over the ranks, in buckets of at most bucketBytes (per dtype, in parameter
   * order): each bucket is flattened into one buffer, reduced, and copied back. Parameters without a gradient are
   * left alone (the model must use the same parameters on every rank).
   */
  readonly averageGradients: GradientSync = (params) => {
    const t0 = performance.now();
    const grads = params.map((p) => p.grad).filter((g): g is Tensor => g !== null);
    try {
      for (const bucket of this.buckets(grads)) {
        tidy(() => {
          const flat = Tensor.cat(bucket.map((g) => g.reshape([-1])));
          this.collective('averaging gradients', () => this.group.allreduce([flat], 'avg'));
          this.stats.gradientBytes += flat.numel * elementBytes(flat);
          let offset = 0;
          for (const g of bucket) {
            g.copy_(flat.slice(0, offset, offset + g.numel).view(g.shape));
            offset += g.numel;
          }
        });
      }
    } finally {
      for (const g of grads) g.dispose();
    }
    this.stats.gradientSyncs++;
    this.stats.gradientMs += performance.now() - t0;
  };

  private buckets(grads: Tensor[]): Tensor[][] {
    const byDtype = new Map<string, Tensor[][]>();
    for (const g of grads) {
      const lists = byDtype.get(g.dtype) ?? [[]];
      byDtype.set(g.dtype, lists);
      let last = lists[lists.length - 1];
      const bytes = (list: Tensor[]): number => list.reduce((s, t) => s + t.numel * elementBytes(t), 0);
      if (last.length && bytes(last) + g.numel * elementBytes(g) > this.bucketBytes) lists.push((last = []));
      last.push(g);
    }
    return [...byDtype.values()].flat();
  }

  /** Every BatchNorm layer's running mean and variance become their average over the ranks. */
  averageBatchNormStatistics(...modules: (Module | null)[]): void {
    const stats = modules
      .flatMap((m) => (m ? allModules(m) : []))
      .filter((m): m is BatchNorm2d => m instanceof BatchNorm2d)
      .flatMap((bn) => [bn.runningMean, bn.runningVar]);
    if (stats.length) this.collective('averaging BatchNorm statistics', () => this.group.allreduce(stats, 'avg'));
  }

  /**
   * Decisions every rank must take together, once per step: stop when any rank wants to (a signal, its time
   * budget), and one clock (the ranks' mean elapsed minutes) for time budgets and learning-rate schedules.
   */
  agree(local: { stop: boolean; minutes: number }): { stop: boolean; minutes: number } {
    const t = Tensor.from(new Float64Array([local.stop ? 1 : 0, local.minutes]), [2]);
    try {
      this.collective('agreeing on the step', () => this.group.allreduce([t], 'sum'));
      const [stops, minutes] = t.toArray() as Float64Array;
      this.step++;
      return { stop: stops > 0, minutes: minutes / this.worldSize };
    } finally {
      t.dispose();
    }
  }

  /** The same integer on every rank, or an error naming what differs (e.g. the step a checkpoint resumed at). */
  checkSame(what: string, value: number): void {
    const t = Tensor.from(new Float64Array([value, value * value]), [2]);
    try {
      this.collective(`checking ${what}`, () => this.group.allreduce([t], 'sum'));
      const [sum, sumSq] = t.toArray() as Float64Array;
      const n = this.worldSize;
      if (sum !== value * n || sumSq !== value * value * n)
        throw new Error(
          `ranks disagree on ${what}: rank ${this.rank} has ${value}, the mean over ${n} ranks is ${sum / n}`,
        );
    } finally {
      t.dispose();
    }
  }

  /** This rank's part of `items`: every worldSize-th item from position rank (disjoint, together complete). */
  shard<T>(items: readonly T[]): T[] {
    return items.filter((_, i) => i % this.worldSize === this.rank);
  }

  /** The per-rank batch size for a global batch, which must split evenly. */
  localBatch(globalBatch: number): number {
    if (globalBatch % this.worldSize !== 0 || globalBatch < this.worldSize)
      throw new Error(`batch size ${globalBatch} does not split evenly over ${this.worldSize} processes`);
    return globalBatch / this.worldSize;
  }

  /** Turns a failed collective into an error that says what happened and what to do. */
  private collective(what: string, fn: () => void): void {
    try {
      fn();
    } catch (e) {
      throw new Error(
        `distributed training stopped (rank ${this.rank} of ${this.worldSize}, ${what} after ${this.step} steps): ` +
          `${(e as Error).message}. Another rank died or cannot be reached (timeout ${this.group.timeoutSeconds} s); ` +
          'the last checkpoint is intact: start the same command on every rank again to resume.',
        { cause: e },
      );
    }
  }
}

/** The run log of a rank other than 0: rank 0 alone writes logs. */
export class DiscardingLog extends RunLog {
  override info(): void {}
  override record(): void {}
}

// ---- what every trainer does with a group (null: a single process) --------------------------------------------

/** The run log: rank 0's, a discarding one on the other ranks. */
export function runLogFor(dp: DataParallel | null, file: string): RunLog {
  return !dp || dp.isMain ? new RunLog(file) : new DiscardingLog(file);
}

/** Offset for a rank's random stream: each rank draws its own batches; rank 0 the single-process stream. */
export function rankSeedOffset(dp: DataParallel | null): number {
  return dp ? dp.rank * 1_000_033 : 0;
}

/** Before the first step: every rank resumed from the same step, and the modules start from rank 0's values. */
export function startGroup(dp: DataParallel | null, startStep: number, ...modules: (Module | null)[]): void {
  if (!dp) return;
  dp.checkSame('the step to resume from (every rank needs the same checkpoint: a shared --out folder)', startStep);
  dp.broadcastModules(...modules);
}

/** Once per step: whether to stop (any rank asked) and the clock for budgets and schedules (see agree). */
export function stepAgreement(
  dp: DataParallel | null,
  stop: boolean,
  minutes: number,
): { stop: boolean; minutes: number } {
  return dp ? dp.agree({ stop, minutes }) : { stop, minutes };
}
