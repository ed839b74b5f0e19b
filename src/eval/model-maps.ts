import type { AnomalyPredictor } from '../models/predictor.js';
import { MODEL_DECODE_MAX_SIDE, loadImageForModel } from '../image/bounded.js';
import type { MapProvider } from './evaluate.js';

/**
 * Evaluation maps from a model: each test image is loaded, predicted and released one at a time, decoded straight
 * to at most `decodeMaxSide` px on the longer side (default MODEL_DECODE_MAX_SIDE; null = as stored; see
 * src/image/bounded.ts), channels and 16-bit precision as stored.
 */
export function modelMapProvider(
  predictor: AnomalyPredictor,
  opts: { decodeMaxSide?: number | null } = {},
): MapProvider {
  const maxSide = opts.decodeMaxSide === undefined ? MODEL_DECODE_MAX_SIDE : opts.decodeMaxSide;
  return async (item) => {
    const { image, source } = await loadImageForModel(item.path, predictor.info, { maxSide });
    const [pred] = await predictor.predict([image]);
    return {
      map: pred.map,
      score: pred.score,
      decoded: { source, decoded: { height: image.height, width: image.width }, maxSide },
    };
  };
}
