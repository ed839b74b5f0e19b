/**
 * The worker-thread side of PredictorPool: loads the addon, sets its libtorch thread count, opens the model with a
 * loader module (src/methods/load.ts by default: any model file the project reads) and answers predict requests.
 * Libtorch calls block this thread only; the pool's thread keeps serving.
 */
import { readlinkSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parentPort, workerData } from 'node:worker_threads';
import type { AnomalyPredictor } from './predictor.js';
import type { WorkerReply, WorkerRequest, WorkerSetup } from './predictor-pool.js';

const setup = workerData as WorkerSetup;
const port = parentPort;
if (!port) throw new Error('predictor-worker: must run in a worker thread');

function post(reply: WorkerReply, transfer: ArrayBuffer[] = []): void {
  port!.postMessage(reply, transfer);
}

/**
 * Lowers this thread's scheduling priority (Linux: a thread id passed to setpriority names that thread only), before
 * libtorch starts its own threads, which inherit it. The pool's thread, which answers requests, then gets a core
 * at once when it wakes up, however busy the workers keep the machine.
 */
function lowerPriority(nice: number): void {
  if (nice === 0 || process.platform !== 'linux') return;
  try {
    const tid = Number(path.basename(readlinkSync('/proc/thread-self')));
    if (Number.isInteger(tid)) os.setPriority(tid, Math.max(os.getPriority(tid), nice));
  } catch {
    // no /proc or not permitted: the worker keeps the process's priority
  }
}

async function start(): Promise<AnomalyPredictor> {
  lowerPriority(setup.nice);
  const { setNumThreads } = await import('../engine/index.js');
  setNumThreads(setup.threads);
  const loader = (await import(setup.loaderModule)) as { loadPredictor?: (file: string) => Promise<AnomalyPredictor> };
  if (typeof loader.loadPredictor !== 'function') {
    throw new Error(`${setup.loaderModule} does not export loadPredictor(file)`);
  }
  return loader.loadPredictor(setup.modelFile);
}

start().then(
  (predictor) => {
    port.on('message', (req: WorkerRequest) => {
      predictor.predict(req.images).then(
        (predictions) => {
          const transfer = predictions.map((p) => p.map.data.buffer as ArrayBuffer);
          // a map sharing one buffer with another cannot be transferred twice
          post({ type: 'result', id: req.id, predictions }, [...new Set(transfer)]);
        },
        (err: unknown) => post({ type: 'failed', id: req.id, message: errorText(err) }),
      );
    });
    post({ type: 'ready', info: predictor.info });
  },
  (err: unknown) => post({ type: 'load-failed', message: errorText(err) }),
);

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
