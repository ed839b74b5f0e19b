/**
 * The part of prediction every model shares: convert channels, fit each image to the square model input,
 * score in batches, and map each anomaly map back onto its original image.
 */
import type { Image } from '../image/types.js';
import { fitImage, resizeImage, rgbToGray, unfitMap, type FitAspect } from '../image/io.js';
import type { AnomalyPrediction } from './predictor.js';

/** Converts a 1/3/4-channel image to the model's channel count (1: luma; 3: gray replicated; alpha dropped). */
export function toChannels(img: Image, channels: number): Image {
  const n = img.height * img.width;
  const rgb = img.channels === 4 ? { ...img, channels: 3, data: img.data.subarray(0, 3 * n) } : img;
  if (rgb.channels === channels) return rgb;
  if (channels === 1) return rgbToGray(rgb);
  const data = new Float32Array(3 * n);
  for (let c = 0; c < 3; c++) data.set(rgb.data.subarray(0, n), c * n);
  return { channels: 3, height: img.height, width: img.width, data };
}

export interface ModelInput {
  channels: number;
  resolution: number;
  aspect: FitAspect;
}

export function predictFitted(
  images: readonly Image[],
  input: ModelInput,
  maxBatch: number,
  scoreFitted: (inputs: Image[]) => { maps: Image[]; scores: ArrayLike<number> },
): AnomalyPrediction[] {
  const out: AnomalyPrediction[] = [];
  for (let start = 0; start < images.length; start += maxBatch) {
    const chunk = images.slice(start, start + maxBatch);
    const fitted = chunk.map((img) => fitImage(toChannels(img, input.channels), input.resolution, input.aspect));
    const { maps, scores } = scoreFitted(fitted.map((f) => f.image));
    fitted.forEach((f, i) => {
      const back = unfitMap(maps[i], f.transform);
      const { height, width } = chunk[i];
      out.push({
        score: scores[i],
        map: back.height === height && back.width === width ? back : resizeImage(back, height, width),
      });
    });
  }
  return out;
}
