/**
 * A bounded job queue: at most `concurrency` jobs run at once and at most `maxQueue` wait for a slot.
 * When both are taken, `run` rejects at once with QueueFullError (the server answers 503 + Retry-After)
 * instead of letting work and memory pile up. A waiting job can be cancelled with an AbortSignal
 * (client went away, request timed out) and then never starts.
 */

export class QueueFullError extends Error {
  constructor(
    readonly active: number,
    readonly waiting: number,
  ) {
    super(`server busy: ${active} running and ${waiting} waiting (queue full)`);
    this.name = 'QueueFullError';
  }
}

export class QueueAbortedError extends Error {
  constructor(reason = 'cancelled while waiting in the queue') {
    super(reason);
    this.name = 'QueueAbortedError';
  }
}

export interface QueueOptions {
  /** Jobs allowed to run at the same time (>= 1). */
  concurrency: number;
  /** Jobs allowed to wait for a free slot (>= 0). */
  maxQueue: number;
}

export interface QueueStats {
  active: number;
  waiting: number;
  concurrency: number;
  maxQueue: number;
  /** Jobs finished (resolved or rejected) since creation. */
  completed: number;
  /** Jobs refused because the queue was full. */
  rejected: number;
}

interface Waiter {
  start: () => void;
  cancel: (err: Error) => void;
}

export class BoundedQueue {
  readonly concurrency: number;
  readonly maxQueue: number;
  private activeCount = 0;
  private readonly waiters: Waiter[] = [];
  private completedCount = 0;
  private rejectedCount = 0;

  constructor(opts: QueueOptions) {
    if (!Number.isInteger(opts.concurrency) || opts.concurrency < 1) {
      throw new RangeError(`BoundedQueue: concurrency must be an integer >= 1, got ${opts.concurrency}`);
    }
    if (!Number.isInteger(opts.maxQueue) || opts.maxQueue < 0) {
      throw new RangeError(`BoundedQueue: maxQueue must be an integer >= 0, got ${opts.maxQueue}`);
    }
    this.concurrency = opts.concurrency;
    this.maxQueue = opts.maxQueue;
  }

  get active(): number {
    return this.activeCount;
  }

  get waiting(): number {
    return this.waiters.length;
  }

  /** True when a new job would be refused right now. */
  get full(): boolean {
    return this.activeCount >= this.concurrency && this.waiters.length >= this.maxQueue;
  }

  stats(): QueueStats {
    return {
      active: this.activeCount,
      waiting: this.waiters.length,
      concurrency: this.concurrency,
      maxQueue: this.maxQueue,
      completed: this.completedCount,
      rejected: this.rejectedCount,
    };
  }

  /**
   * Runs `job` when a slot is free. Rejects with QueueFullError when no slot and no waiting place is
   * left, with QueueAbortedError when `signal` aborts before the job started (a started job is not
   * interrupted: its slot stays taken until it settles, so the concurrency bound always holds).
   */
  run<T>(job: () => Promise<T>, signal?: AbortSignal): Promise<T> {
    if (signal?.aborted) return Promise.reject(new QueueAbortedError());
    if (this.activeCount < this.concurrency) return this.execute(job);
    if (this.waiters.length >= this.maxQueue) {
      this.rejectedCount++;
      return Promise.reject(new QueueFullError(this.activeCount, this.waiters.length));
    }
    return new Promise<T>((resolve, reject) => {
      const onAbort = (): void => {
        const i = this.waiters.indexOf(waiter);
        if (i >= 0) {
          this.waiters.splice(i, 1);
          reject(new QueueAbortedError());
        }
      };
      const waiter: Waiter = {
        start: () => {
          signal?.removeEventListener('abort', onAbort);
          this.execute(job).then(resolve, reject);
        },
        cancel: (err) => {
          signal?.removeEventListener('abort', onAbort);
          reject(err);
        },
      };
      this.waiters.push(waiter);
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  /** Rejects every waiting job (used when the server shuts down); running jobs finish normally. */
  drainWaiting(reason = 'server is shutting down'): void {
    const pending = this.waiters.splice(0, this.waiters.length);
    for (const w of pending) w.cancel(new QueueAbortedError(reason));
  }

  private async execute<T>(job: () => Promise<T>): Promise<T> {
    this.activeCount++;
    try {
      return await job();
    } finally {
      this.activeCount--;
      this.completedCount++;
      const next = this.waiters.shift();
      if (next) next.start();
    }
  }
}
