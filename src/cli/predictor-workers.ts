/** The model a command runs: in worker threads (a PredictorPool) or on the command's own thread. */
import { loadPredictor } from '../methods/load.js';
import type { AnomalyPredictor } from '../models/predictor.js';
import { integer, type Option } from './options.js';

/** `--workers N` of the commands that run a model (0 = on the command's own thread). */
export function workersOption(help: string, fallback: number): Option<number> {
  return integer('N', `${help} (0 = on this thread)`, { min: 0 }, { default: fallback });
}

/**
 * The model file as a predictor: a pool of `workers` worker threads, each with its share of the cores, or (0)
 * loaded on this thread. `standby` keeps one more loaded worker to replace a terminated one at once (the service,
 * whose jobs can be abandoned at their deadline).
 */
export async function openPredictor(model: string, workers: number, standby = false): Promise<AnomalyPredictor> {
  if (workers === 0) return loadPredictor(model);
  const { PredictorPool } = await import('../models/predictor-pool.js');
  return PredictorPool.create(model, { workers, standby });
}
