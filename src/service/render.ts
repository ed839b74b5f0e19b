/**
 * The JSON answer for one inspected image: score and verdict at the model's thresholds, the mask, and heatmap,
 * overlay and mask PNGs. Heatmap and overlay come from src/image/anomaly-render.ts, the renderer `anoseg predict`
 * uses too, so both draw a prediction identically (on the model's scale; see there).
 */
import os from 'node:os';
import { mapAtImageSize, renderAnomalyMap } from '../image/anomaly-render.js';
import { encodePng } from '../image/io.js';
import type { Image } from '../image/types.js';
import type { AnomalyPrediction, ModelInfo } from '../models/predictor.js';
import { errorMessage, HttpError } from './http.js';

/** Result of inspecting one image (the JSON body of POST /api/inspect). */
export interface InspectResult {
  score: number;
  verdict: 'defective' | 'good';
  /** The image-score threshold the verdict used (ModelInfo.imageThreshold). */
  threshold: number;
  /** The pixel threshold the mask used (ModelInfo.pixelThreshold). */
  pixelThreshold: number;
  width: number;
  height: number;
  /** Fraction of pixels in the mask (map >= pixelThreshold). */
  maskFraction: number;
  /** Map values shown from the first to the last heatmap colour (see heatmapRange()). */
  heatmapRange: [number, number];
  /** Base64 PNGs at the input size: turbo-coloured map, the map blended over the image, the binary mask. */
  heatmapPng: string;
  overlayPng: string;
  maskPng: string;
  /** Only with ?raw=1: the anomaly map as little-endian float32, row-major, shape [height, width]. */
  rawMap?: RawMap;
}

export interface RawMap {
  shape: [number, number];
  dtype: 'float32';
  byteOrder: 'little';
  min: number;
  max: number;
  /** Base64 of height * width little-endian float32 values. */
  data: string;
}

/** The inspection result for `img` and its prediction; rendering failures are 500. */
export async function renderInspection(
  img: Image,
  p: AnomalyPrediction,
  info: ModelInfo,
  overlayAlpha: number,
  raw: boolean,
): Promise<InspectResult> {
  const map = mapAtImageSize(p.map, img);
  const { mask, inMask, min, max } = thresholdMap(map, info.pixelThreshold);
  let heatPng: Buffer, overPng: Buffer, maskPng: Buffer, range: [number, number];
  try {
    const shown = renderAnomalyMap(img, map, info.pixelThreshold, overlayAlpha);
    range = shown.range;
    [heatPng, overPng, maskPng] = await Promise.all([
      encodePng(shown.heatmap),
      encodePng(shown.overlay),
      encodePng(mask),
    ]);
  } catch (err) {
    throw new HttpError(500, `rendering failed: ${errorMessage(err)}`);
  }
  const result: InspectResult = {
    score: p.score,
    verdict: p.score >= info.imageThreshold ? 'defective' : 'good',
    threshold: info.imageThreshold,
    pixelThreshold: info.pixelThreshold,
    width: img.width,
    height: img.height,
    maskFraction: inMask / (map.width * map.height),
    heatmapRange: range,
    heatmapPng: heatPng.toString('base64'),
    overlayPng: overPng.toString('base64'),
    maskPng: maskPng.toString('base64'),
  };
  if (raw) {
    result.rawMap = {
      shape: [map.height, map.width],
      dtype: 'float32',
      byteOrder: 'little',
      min: Number.isFinite(min) ? min : 0,
      max: Number.isFinite(max) ? max : 0,
      data: float32LeBase64(map.data),
    };
  }
  return result;
}

/** The binary mask (map >= threshold), its pixel count, and the map's range. */
function thresholdMap(map: Image, threshold: number): { mask: Image; inMask: number; min: number; max: number } {
  const n = map.width * map.height;
  const mask: Image = { channels: 1, height: map.height, width: map.width, data: new Float32Array(n) };
  let inMask = 0;
  let min = Infinity;
  let max = -Infinity;
  for (let i = 0; i < n; i++) {
    const v = map.data[i];
    if (v >= threshold) {
      mask.data[i] = 1;
      inMask++;
    }
    if (v < min) min = v;
    if (v > max) max = v;
  }
  return { mask, inMask, min, max };
}

function float32LeBase64(data: Float32Array): string {
  if (os.endianness() === 'LE') return Buffer.from(data.buffer, data.byteOffset, data.byteLength).toString('base64');
  const buf = Buffer.alloc(data.length * 4);
  for (let i = 0; i < data.length; i++) buf.writeFloatLE(data[i], i * 4);
  return buf.toString('base64');
}
