/**
 * `anoseg predict` for one image file: decode within a bounded size (src/image/bounded.ts), predict, and write the
 * anomaly map (at the input's size up to MAP_MAX_SIDE on the longer side), heatmap and overlay (at the decoded size).
 * Heatmap and overlay are drawn as the inspection service draws them (src/image/anomaly-render.ts): on the model's
 * scale, [0, max(1, 2 * pixelThreshold)], so PaDiM's unbounded maps are not clamped to [0, 1].
 */
import {
  MAP_MAX_SIDE,
  MODEL_DECODE_MAX_SIDE,
  capLongerSide,
  checkMaxSide,
  loadImageForModel,
  type Size,
} from '../image/bounded.js';
import { renderAnomalyPngs } from '../image/anomaly-render.js';
import { resizeImage, saveMap16, saveMapTiff } from '../image/io.js';
import { writeFileAtomic } from '../util/atomic.js';
import type { AnomalyPredictor } from './predictor.js';

export interface PredictFileOptions {
  /** Map files written: float TIFF (default), 16-bit PNG or both. */
  format?: 'png' | 'tiff' | 'both';
  /** Longer side images are decoded at for the model (MODEL_DECODE_MAX_SIDE); null = as stored. */
  decodeMaxSide?: number | null;
  /** Longer side of the written map (MAP_MAX_SIDE); null = always the input's size. */
  mapMaxSide?: number | null;
}

export interface PredictFileResult {
  score: number;
  verdict: 'good' | 'defective';
  /** Size of the stored image. */
  source: Size;
  /** Size it was decoded at for the model (and of heatmap and overlay). */
  decoded: Size;
  /** Size of the written map files. */
  map: Size;
  files: string[];
}

/**
 * Predict one image file and write `<base>_map.tiff` / `<base>_map.png`, `<base>_heatmap.png` and
 * `<base>_overlay.png`. Throws ImageReadError for an unreadable image.
 */
export async function predictImageFile(
  predictor: AnomalyPredictor,
  file: string,
  base: string,
  opts: PredictFileOptions = {},
): Promise<PredictFileResult> {
  const format = opts.format ?? 'tiff';
  if (format !== 'png' && format !== 'tiff' && format !== 'both') {
    throw new Error(`predictImageFile: format must be png, tiff or both, got '${String(format)}'`);
  }
  const mapMaxSide = checkMaxSide(opts.mapMaxSide === undefined ? MAP_MAX_SIDE : opts.mapMaxSide, 'map max side');
  const decodeMaxSide = opts.decodeMaxSide === undefined ? MODEL_DECODE_MAX_SIDE : opts.decodeMaxSide;
  const { image: img, source } = await loadImageForModel(file, predictor.info, { maxSide: decodeMaxSide });
  const [pred] = await predictor.predict([img]);
  const mapSize = capLongerSide(source.height, source.width, mapMaxSide);
  const files: string[] = [];
  {
    // The full-size map lives only while it is written.
    const map =
      pred.map.height === mapSize.height && pred.map.width === mapSize.width
        ? pred.map
        : resizeImage(pred.map, mapSize.height, mapSize.width, 'bilinear');
    if (format !== 'png') {
      await saveMapTiff(`${base}_map.tiff`, map);
      files.push(`${base}_map.tiff`);
    }
    if (format !== 'tiff') {
      await saveMap16(`${base}_map.png`, map);
      files.push(`${base}_map.png`);
    }
  }
  const { heatmapPng, overlayPng } = await renderAnomalyPngs(img, pred.map, predictor.info.pixelThreshold);
  await writeFileAtomic(`${base}_heatmap.png`, heatmapPng);
  await writeFileAtomic(`${base}_overlay.png`, overlayPng);
  files.push(`${base}_heatmap.png`, `${base}_overlay.png`);
  return {
    score: pred.score,
    verdict: pred.score >= predictor.info.imageThreshold ? 'defective' : 'good',
    source,
    decoded: { height: img.height, width: img.width },
    map: mapSize,
    files,
  };
}
