/**
 * Predictors in worker threads (node:worker_threads). Each worker loads the addon and the model itself and runs
 * libtorch with its share of the machine's cores, so the thread that owns the pool (an HTTP service, predict,
 * eval) stays free while images are scored, several jobs run at once, and a job that must be abandoned is: its
 * worker is terminated (libtorch's current operator finishes, then the worker's JavaScript stops) and a fresh one
 * is started in its place.
 *
 * The pool is itself an AnomalyPredictor: `predict(images, { signal })`. Jobs wait in arrival order for a ready
 * worker; an aborted signal rejects a waiting job at once, and a running one by terminating its worker. A standby
 * worker (model loaded, idle) takes a terminated worker's place at once, so the next job does not wait for a
 * model to load; a new standby is started behind it.
 */
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';
import type { Image } from '../image/types.js';
import type { AnomalyPrediction, AnomalyPredictor, ModelInfo, PredictOptions } from './predictor.js';

/** What a worker is started with (workerData). */
export interface WorkerSetup {
  modelFile: string;
  /** Module URL exporting loadPredictor(file). */
  loaderModule: string;
  /** libtorch threads of this worker. */
  threads: number;
  /** Scheduling niceness of the worker's threads (0 = the process's own). */
  nice: number;
}

export interface WorkerRequest {
  id: number;
  images: Image[];
}

export type WorkerReply =
  | { type: 'ready'; info: ModelInfo }
  | { type: 'load-failed'; message: string }
  | { type: 'result'; id: number; predictions: AnomalyPrediction[] }
  | { type: 'failed'; id: number; message: string };

export interface PredictorPoolOptions {
  /** Worker threads (default: 1). */
  workers?: number;
  /**
   * libtorch threads per worker (default: the machine's cores divided among the workers, at least 1; ANOSEG_THREADS,
   * when set, is the total to divide).
   */
  threadsPerWorker?: number;
  /**
   * Module (URL or path) exporting loadPredictor(file); default src/methods/load.ts (found at run time, so this module
   * stays below the methods). Tests load stand-ins with it.
   */
  loaderModule?: string | URL;
  /**
   * Keep one idle worker with the model loaded to replace a terminated one at once (default true). It costs one more
   * copy of the model in memory and no CPU while idle.
   */
  standby?: boolean;
  /**
   * Niceness of the workers' threads (Linux; default 5): the thread that owns the pool (an HTTP service answering
   * health checks and uploads) runs first whenever it has work, however many jobs keep the cores busy.
   */
  nice?: number;
}

export interface PoolStats {
  workers: number;
  threadsPerWorker: number;
  /** Workers running a job. */
  busy: number;
  /** Jobs waiting for a ready worker. */
  waiting: number;
  /** Workers started to replace a terminated or crashed one. */
  restarts: number;
  /** Whether an idle worker with the model loaded is ready to replace a terminated one. */
  standby: boolean;
  completed: number;
}

/** Raised for a job abandoned through its signal (the signal's reason is the cause). */
export class PredictionAbortedError extends Error {
  constructor(readonly reason: unknown) {
    super(reason instanceof Error ? reason.message : 'prediction abandoned');
    this.name = 'PredictionAbortedError';
  }
}

interface Job {
  id: number;
  images: Image[];
  signal?: AbortSignal;
  resolve: (p: AnomalyPrediction[]) => void;
  reject: (err: unknown) => void;
  onAbort?: () => void;
}

interface Slot {
  worker: Worker;
  ready: boolean;
  job: Job | null;
  /** Removes the standby's own listeners when it becomes a working slot. */
  release?: () => void;
}

/** A started worker that fails to load the model this many times in a row stops the pool. */
const MAX_LOAD_FAILURES = 3;

function defaultThreads(workers: number): number {
  const total = Number(process.env.ANOSEG_THREADS) || os.availableParallelism();
  return Math.max(1, Math.floor(total / workers));
}

/** URL of tsx's ESM API module, from its package exports (vitest has no import.meta.resolve). */
function tsxEsmApi(): string {
  const require = createRequire(import.meta.url);
  const manifest = require.resolve('tsx/package.json');
  const { exports } = require(manifest) as { exports: Record<string, { import: { default: string } }> };
  return pathToFileURL(path.join(path.dirname(manifest), exports['./esm/api'].import.default)).href;
}

/**
 * Starts a worker on predictor-worker: the compiled JavaScript next to this file, or, when this file runs as
 * TypeScript (tests, tsx scripts), the TypeScript source with tsx's loader registered in the worker first (a
 * worker does not inherit the loader, and Node 20 ignores --import in a worker's execArgv).
 */
function spawnWorker(setup: WorkerSetup): Worker {
  if (!import.meta.url.endsWith('.ts')) {
    return new Worker(new URL('./predictor-worker.js', import.meta.url), { workerData: setup });
  }
  const tsxApi = tsxEsmApi();
  const entry = new URL('./predictor-worker.ts', import.meta.url).href;
  const boot = `import(${JSON.stringify(tsxApi)}).then((tsx) => { tsx.register(); return import(${JSON.stringify(entry)}); });`;
  return new Worker(boot, { eval: true, workerData: setup });
}

export class PredictorPool implements AnomalyPredictor {
  readonly info: ModelInfo;
  private readonly slots: Slot[] = [];
  private readonly queue: Job[] = [];
  /** The idle replacement (see standby), once started; ready when its model has loaded. */
  private spare: Slot | null = null;
  private nextId = 1;
  private restarts = 0;
  private completed = 0;
  private loadFailures = 0;
  private closed = false;
  private brokenReason: string | null = null;

  private constructor(
    private readonly setup: WorkerSetup,
    info: ModelInfo,
    first: Worker[],
    private readonly standby: boolean,
  ) {
    this.info = info;
    for (const w of first) this.slots.push(this.attach({ worker: w, ready: true, job: null }));
    if (standby) this.startSpare();
  }

  /** Starts the workers and waits until every one has loaded the model. */
  static async create(modelFile: string, o: PredictorPoolOptions = {}): Promise<PredictorPool> {
    const workers = o.workers ?? 1;
    if (!(Number.isInteger(workers) && workers >= 1))
      throw new RangeError(`workers must be an integer >= 1, got ${workers}`);
    const threads = o.threadsPerWorker ?? defaultThreads(workers);
    if (!(Number.isInteger(threads) && threads >= 1)) {
      throw new RangeError(`threadsPerWorker must be an integer >= 1, got ${threads}`);
    }
    const loader =
      o.loaderModule ?? new URL(`../methods/load.${import.meta.url.endsWith('.ts') ? 'ts' : 'js'}`, import.meta.url);
    const setup: WorkerSetup = {
      modelFile,
      loaderModule:
        loader instanceof URL
          ? loader.href
          : loader.startsWith('file:')
            ? loader
            : pathToFileURL(path.resolve(loader)).href,
      threads,
      nice: o.nice ?? 5,
    };
    const started = Array.from({ length: workers }, () => startWorker(setup));
    const results = await Promise.allSettled(started.map((s) => s.ready));
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) {
      await Promise.all(started.map((s) => s.worker.terminate()));
      throw failed.reason;
    }
    const info = (results[0] as PromiseFulfilledResult<ModelInfo>).value;
    return new PredictorPool(
      setup,
      info,
      started.map((s) => s.worker),
      o.standby ?? true,
    );
  }

  get size(): number {
    return this.slots.length;
  }

  stats(): PoolStats {
    return {
      workers: this.slots.length,
      threadsPerWorker: this.setup.threads,
      busy: this.slots.filter((s) => s.job).length,
      waiting: this.queue.length,
      restarts: this.restarts,
      standby: this.spare?.ready ?? false,
      completed: this.completed,
    };
  }

  predict(images: Image[], options: PredictOptions = {}): Promise<AnomalyPrediction[]> {
    const { signal } = options;
    if (this.closed) return Promise.reject(new Error('predictor pool is closed'));
    if (this.brokenReason) return Promise.reject(new Error(this.brokenReason));
    if (signal?.aborted) return Promise.reject(new PredictionAbortedError(signal.reason));
    if (images.length === 0) return Promise.resolve([]);
    return new Promise((resolve, reject) => {
      const job: Job = { id: this.nextId++, images, signal, resolve, reject };
      if (signal) {
        job.onAbort = () => this.abandon(job);
        signal.addEventListener('abort', job.onAbort, { once: true });
      }
      this.queue.push(job);
      this.dispatch();
    });
  }

  /** Terminates every worker; waiting and running jobs are rejected. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const err = new Error('predictor pool is closed');
    for (const job of this.queue.splice(0)) this.settle(job, () => job.reject(err));
    const workers = this.slots.map((s) => {
      if (s.job) {
        const job = s.job;
        s.job = null;
        this.settle(job, () => job.reject(err));
      }
      return s.worker.terminate();
    });
    if (this.spare) workers.push(this.spare.worker.terminate());
    this.spare = null;
    await Promise.all(workers);
  }

  dispose(): void {
    void this.close();
  }

  // ------------------------------------------------------------------------------------------------ internals

  private startSpare(): void {
    const fresh = startWorker(this.setup);
    const slot: Slot = { worker: fresh.worker, ready: false, job: null };
    this.spare = slot;
    // a standby that fails is dropped: terminated workers are then replaced by fresh ones (slower, still correct)
    const drop = (): void => {
      if (this.spare !== slot) return;
      this.spare = null;
      void fresh.worker.terminate();
    };
    fresh.ready.then(() => {
      slot.ready = true;
      this.loadFailures = 0;
    }, drop);
    fresh.worker.on('exit', drop);
    slot.release = () => fresh.worker.off('exit', drop);
  }

  private attach(slot: Slot): Slot {
    const { worker } = slot;
    worker.on('message', (reply: WorkerReply) => {
      if (reply.type === 'ready') {
        slot.ready = true;
        this.loadFailures = 0;
        this.dispatch();
        return;
      }
      if (reply.type === 'load-failed') {
        this.replace(slot, new Error(`worker could not load the model: ${reply.message}`), true);
        return;
      }
      const job = slot.job;
      if (!job || job.id !== reply.id) return; // an abandoned job's late answer
      slot.job = null;
      this.completed++;
      if (reply.type === 'result') this.settle(job, () => job.resolve(reply.predictions));
      else this.settle(job, () => job.reject(new Error(reply.message)));
      this.dispatch();
    });
    worker.on('error', (err) => this.replace(slot, err, !slot.ready));
    worker.on('exit', (code) => {
      if (this.slots.includes(slot)) this.replace(slot, new Error(`prediction worker exited (code ${code})`), false);
    });
    return slot;
  }

  private dispatch(): void {
    for (const slot of this.slots) {
      if (this.queue.length === 0) return;
      if (!slot.ready || slot.job) continue;
      const job = this.queue.shift()!;
      slot.job = job;
      slot.worker.postMessage({ id: job.id, images: job.images } satisfies WorkerRequest);
    }
  }

  /** A job's signal aborted: drop it from the queue, or stop the worker running it. */
  private abandon(job: Job): void {
    const err = new PredictionAbortedError(job.signal?.reason);
    const waiting = this.queue.indexOf(job);
    if (waiting >= 0) {
      this.queue.splice(waiting, 1);
      this.settle(job, () => job.reject(err));
      return;
    }
    const slot = this.slots.find((s) => s.job === job);
    if (!slot) return;
    slot.job = null;
    this.settle(job, () => job.reject(err));
    this.replace(slot, null, false);
  }

  /**
   * Terminates a slot's worker and starts a fresh one in its place. `failure` (a crash, a failed load) rejects the
   * job the worker was running; loadFailure counts towards giving up on a model that cannot load.
   */
  private replace(slot: Slot, failure: Error | null, loadFailure: boolean): void {
    const i = this.slots.indexOf(slot);
    if (i < 0) return;
    this.slots.splice(i, 1);
    void slot.worker.terminate();
    if (slot.job) {
      const job = slot.job;
      slot.job = null;
      this.settle(job, () => job.reject(failure ?? new Error('prediction worker stopped')));
    }
    if (this.closed) return;
    if (loadFailure && ++this.loadFailures >= MAX_LOAD_FAILURES) {
      this.brokenReason = `predictor pool stopped: ${failure?.message ?? 'workers cannot load the model'}`;
      for (const job of this.queue.splice(0)) this.settle(job, () => job.reject(new Error(this.brokenReason!)));
      return;
    }
    this.restarts++;
    const spare = this.spare;
    if (spare?.ready) {
      spare.release?.();
      this.slots.splice(i, 0, this.attach(spare));
      this.startSpare();
    } else {
      const fresh = startWorker(this.setup);
      fresh.ready.catch(() => undefined); // reported through the slot's handlers
      this.slots.splice(i, 0, this.attach({ worker: fresh.worker, ready: false, job: null }));
    }
    this.dispatch();
  }

  private settle(job: Job, fn: () => void): void {
    if (job.onAbort) job.signal?.removeEventListener('abort', job.onAbort);
    fn();
  }
}

function startWorker(setup: WorkerSetup): { worker: Worker; ready: Promise<ModelInfo> } {
  const worker = spawnWorker(setup);
  const ready = new Promise<ModelInfo>((resolve, reject) => {
    const onMessage = (reply: WorkerReply): void => {
      if (reply.type === 'ready') resolve(reply.info);
      else if (reply.type === 'load-failed') reject(new Error(`${setup.modelFile}: ${reply.message}`));
      else return;
      worker.off('message', onMessage);
      worker.off('error', reject);
    };
    worker.on('message', onMessage);
    worker.once('error', reject);
  });
  return { worker, ready };
}
