/**
 * Admission and deadlines around the BoundedQueue (queue.ts): which uploads may start, how long an inspection
 * may wait and run, and what a refused client is told (503 + Retry-After from the recent job durations).
 *
 * Uploads being received count against the queue too: at most concurrency + maxQueue request bodies are held in
 * memory at once (each within the upload limit), however many clients connect.
 */
import type http from 'node:http';
import { ClientGoneError, HttpError, raceAbort } from './http.js';
import { BoundedQueue, QueueAbortedError, QueueFullError } from './queue.js';

export class InspectionScheduler {
  readonly queue: BoundedQueue;
  /** Request bodies being received. */
  private receivingCount = 0;
  /** Moving average of job durations, for Retry-After. */
  private avgJobMs = 1000;

  constructor(
    concurrency: number,
    maxQueue: number,
    /** Time allowed from a received upload to its answer (queue wait + job), ms. */
    private readonly inspectTimeoutMs: number,
  ) {
    this.queue = new BoundedQueue({ concurrency, maxQueue });
  }

  get receiving(): number {
    return this.receivingCount;
  }

  /** 503 when no further upload may start (queue full, or its slots taken by uploads still arriving). */
  admit(): void {
    const q = this.queue;
    if (q.full || this.receivingCount + q.active + q.waiting >= q.concurrency + q.maxQueue) throw this.busyError();
  }

  /** Runs `receive` (reading a request body) counted as an upload in progress. */
  async whileReceiving<T>(receive: () => Promise<T>): Promise<T> {
    this.receivingCount++;
    try {
      return await receive();
    } finally {
      this.receivingCount--;
    }
  }

  busyError(): HttpError {
    return new HttpError(503, `server busy: ${this.queue.active} running, ${this.queue.waiting} waiting; retry later`, {
      'Retry-After': this.retryAfterSeconds(),
    });
  }

  private retryAfterSeconds(): string {
    const ahead = this.queue.active + this.queue.waiting;
    const seconds = Math.ceil((this.avgJobMs * Math.max(1, ahead)) / this.queue.concurrency / 1000);
    return String(Math.min(60, Math.max(1, seconds)));
  }

  /**
   * Runs `job` through the queue under the inspect deadline. Waiting is cancelled when the client goes away (`res`
   * closes) or the deadline passes; a started job gets the aborted signal (a pool abandons its prediction and
   * frees the slot; an in-process predictor runs to its end and its result is dropped). Deadline: 503 while
   * waiting, 504 once started.
   */
  async run<T>(res: http.ServerResponse, job: (signal: AbortSignal) => Promise<T>): Promise<T> {
    const ac = new AbortController();
    let started = false;
    const onClose = (): void => {
      if (!res.writableFinished) ac.abort(new ClientGoneError('client went away'));
    };
    res.on('close', onClose);
    const timer = setTimeout(() => {
      ac.abort(
        started
          ? new HttpError(504, `inspection timed out after ${this.inspectTimeoutMs} ms`)
          : new HttpError(503, `timed out after ${this.inspectTimeoutMs} ms waiting in the queue`, {
              'Retry-After': this.retryAfterSeconds(),
            }),
      );
    }, this.inspectTimeoutMs);
    timer.unref();
    try {
      const running = this.timed(() => {
        started = true;
        return job(ac.signal);
      }, ac.signal);
      running.catch(() => undefined); // settled later when abandoned: never an unhandled rejection
      return await raceAbort(running, ac.signal);
    } catch (err) {
      if (err instanceof QueueFullError) throw this.busyError();
      if (err instanceof QueueAbortedError && !ac.signal.aborted) throw new HttpError(503, err.message);
      throw err;
    } finally {
      clearTimeout(timer);
      res.off('close', onClose);
    }
  }

  /** The queue's run(), keeping the moving average of job durations. */
  private timed<T>(job: () => Promise<T>, signal: AbortSignal): Promise<T> {
    return this.queue.run(async () => {
      const t0 = Date.now();
      try {
        return await job();
      } finally {
        this.avgJobMs = 0.8 * this.avgJobMs + 0.2 * (Date.now() - t0);
      }
    }, signal);
  }
}
