/**
 * The export check: run the libtorch predictor and the exported ONNX model on the same fitted inputs and
 * measure how far their maps and scores are apart and whether their verdicts agree.
 */
import type { Image } from '../image/types.js';
import type { ModelInfo } from '../models/predictor.js';
import { Rng } from '../util/rng.js';

/** Anything that scores inputs already fitted to the model (libtorch predictors, OnnxPredictor). */
export interface FittedScorer {
  readonly info: ModelInfo;
  scoreFitted(
    inputs: readonly Image[],
  ): { maps: Image[]; scores: ArrayLike<number> } | Promise<{ maps: Image[]; scores: ArrayLike<number> }>;
}

/** Largest map difference allowed between an exported model and its source (issue 19's acceptance bound). */
export const MAP_TOLERANCE = 1e-4;

export interface ExportCheck {
  images: number;
  /** max |map_onnx - map_libtorch| over every pixel of every image. */
  maxMapDiff: number;
  /** max |score_onnx - score_libtorch|. */
  maxScoreDiff: number;
  /** Largest |map value| seen (puts the difference in scale). */
  mapScale: number;
  /** Images whose verdicts (score >= imageThreshold) differ. */
  verdictMismatches: number;
}

export function exportCheckPassed(c: ExportCheck, tolerance = MAP_TOLERANCE): boolean {
  return c.maxMapDiff <= tolerance && c.verdictMismatches === 0;
}

export function formatExportCheck(c: ExportCheck): string {
  return (
    `${c.images} seeded inputs: max |map difference| ${c.maxMapDiff.toExponential(2)} (map values up to ` +
    `${c.mapScale.toPrecision(3)}), max |score difference| ${c.maxScoreDiff.toExponential(2)}, ` +
    `verdicts agree on ${c.images - c.verdictMismatches}/${c.images}`
  );
}

/**
 * Seeded inputs at model size: uniform noise, a smooth gradient, the gradient with a bright square and a dark
 * blob (defect-like), and flat mid-gray, repeated with other seeds up to `count`.
 */
export function checkInputs(info: ModelInfo, count = 4, seed = 0): Image[] {
  const rng = new Rng(seed);
  const { channels: c, resolution: r } = info;
  const n = r * r;
  return Array.from({ length: count }, (_, k) => {
    const data = new Float32Array(c * n);
    const kind = k % 4;
    const tilt = rng.next();
    for (let ch = 0; ch < c; ch++) {
      for (let y = 0; y < r; y++) {
        for (let x = 0; x < r; x++) {
          const gradient = 0.2 + (0.6 * (tilt * x + (1 - tilt) * y)) / r + 0.05 * ch;
          let v = kind === 0 ? rng.next() : kind === 3 ? 0.5 : gradient;
          if (kind === 2) {
            if (x > r / 4 && x < r / 2 && y > r / 4 && y < r / 2) v = 0.95;
            if ((x - 0.7 * r) ** 2 + (y - 0.7 * r) ** 2 < (r / 10) ** 2) v = 0.05;
          }
          data[ch * n + y * r + x] = v;
        }
      }
    }
    return { channels: c, height: r, width: r, data };
  });
}

/** Scores `inputs` with both and compares maps, scores and verdicts (the reference's threshold). */
export async function compareScorers(
  reference: FittedScorer,
  candidate: FittedScorer,
  inputs: readonly Image[],
): Promise<ExportCheck> {
  const a = await reference.scoreFitted(inputs);
  const b = await candidate.scoreFitted(inputs);
  const threshold = reference.info.imageThreshold;
  let maxMapDiff = 0;
  let maxScoreDiff = 0;
  let mapScale = 0;
  let verdictMismatches = 0;
  inputs.forEach((_, i) => {
    const ma = a.maps[i].data;
    const mb = b.maps[i].data;
    if (ma.length !== mb.length)
      throw new Error(`export check: map ${i} has ${mb.length} values, expected ${ma.length}`);
    for (let j = 0; j < ma.length; j++) {
      // NaN anywhere makes the difference infinite (a failed check), never silently small
      const d = Math.abs(ma[j] - mb[j]);
      maxMapDiff = Math.max(maxMapDiff, Number.isNaN(d) ? Infinity : d);
      mapScale = Math.max(mapScale, Math.abs(ma[j]));
    }
    const ds = Math.abs(a.scores[i] - b.scores[i]);
    maxScoreDiff = Math.max(maxScoreDiff, Number.isNaN(ds) ? Infinity : ds);
    if (a.scores[i] >= threshold !== b.scores[i] >= threshold) verdictMismatches++;
  });
  return { images: inputs.length, maxMapDiff, maxScoreDiff, mapScale, verdictMismatches };
}
