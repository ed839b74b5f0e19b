import type { AnomalyPredictor } from '../models/predictor.js';
import { loadImage } from '../image/io.js';
import type { MapProvider } from './evaluate.js';

/** Evaluation maps from a model: each test image is loaded, predicted and released one at a time. */
export function modelMapProvider(predictor: AnomalyPredictor): MapProvider {
  return async (item) => {
    const img = await loadImage(item.path, { channels: 'keep' });
    const [pred] = await predictor.predict([img]);
    return { map: pred.map, score: pred.score };
  };
}
