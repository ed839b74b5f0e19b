/**
 * How an anomaly map is drawn, in one place for `anoseg predict` (src/models/predict-file.ts) and the inspection
 * service (src/service/render.ts): both write byte-identical heatmap and overlay PNGs for the same prediction.
 *
 * A map is drawn on its model's declared scale, never normalised per image and never clamped to [0, 1] as it
 * comes: the colours span [0, heatmapRange(pixelThreshold)] = [0, max(1, 2 * pixelThreshold)].
 * - Maps in [0, 1] with a pixel threshold below 0.5 (AnoSeg) are shown as they are.
 * - Unbounded maps (PaDiM: Mahalanobis distances, pixel thresholds well above 1) get a fixed, model-wide scale with
 *   the pixel threshold at the middle colour. Clamping them to [0, 1] instead would paint almost every pixel of a
 *   PaDiM map in the top colour, good parts included.
 * So a colour means the same value on every image of a model, in the CLI, the service and the web page (whose
 * in-browser mode uses the same range).
 */
import { encodePng, resizeImage } from './io.js';
import type { Image } from './types.js';
import { heatmap, overlay } from './visual.js';

/** Heatmap opacity in overlay images (`anoseg predict`; the service's default, InspectionServerOptions.overlayAlpha). */
export const DEFAULT_OVERLAY_ALPHA = 0.5;

/**
 * The upper end of the map range the heatmap colours span, [0, max(1, 2 * pixelThreshold)]: maps in [0, 1] are
 * shown as they are; unbounded maps get a model-wide scale with the pixel threshold in the middle.
 */
export function heatmapRange(pixelThreshold: number): number {
  return Math.max(1, 2 * pixelThreshold);
}

/** The map divided by `range` (values then in [0, 1] on the model's scale; the colour map clamps the rest). */
export function scaleMap(map: Image, range: number): Image {
  if (range === 1) return map;
  const data = new Float32Array(map.data.length);
  for (let i = 0; i < data.length; i++) data[i] = map.data[i] / range;
  return { channels: 1, height: map.height, width: map.width, data };
}

/** The map at the image's size: the map itself when the sizes agree (the predictor contract), else resized bilinearly. */
export function mapAtImageSize(map: Image, img: { height: number; width: number }): Image {
  if (map.height === img.height && map.width === img.width) return map;
  return resizeImage(map, img.height, img.width, 'bilinear');
}

export interface RenderedMap {
  /** Turbo-coloured map, RGB, at the image's size. */
  heatmap: Image;
  /** The heatmap blended over the image with weight overlayAlpha, RGB. */
  overlay: Image;
  /** Map values shown from the first to the last colour. */
  range: [number, number];
}

/**
 * Heatmap and overlay of an anomaly map on its model's scale (see the module comment). `map` is resized to the
 * image when their sizes differ; an RGBA image is blended without its alpha channel.
 */
export function renderAnomalyMap(
  img: Image,
  map: Image,
  pixelThreshold: number,
  overlayAlpha = DEFAULT_OVERLAY_ALPHA,
): RenderedMap {
  if (map.channels !== 1) throw new Error(`renderAnomalyMap: expected a 1-channel map, got ${map.channels}`);
  const range = heatmapRange(pixelThreshold);
  const shown = scaleMap(mapAtImageSize(map, img), range);
  const base =
    img.channels === 4 ? { ...img, channels: 3, data: img.data.subarray(0, 3 * img.height * img.width) } : img;
  return { heatmap: heatmap(shown), overlay: overlay(base, shown, overlayAlpha), range: [0, range] };
}

/** renderAnomalyMap encoded as 8-bit PNGs (what `anoseg predict` writes and the service sends). */
export async function renderAnomalyPngs(
  img: Image,
  map: Image,
  pixelThreshold: number,
  overlayAlpha = DEFAULT_OVERLAY_ALPHA,
): Promise<{ heatmapPng: Buffer; overlayPng: Buffer; range: [number, number] }> {
  const r = renderAnomalyMap(img, map, pixelThreshold, overlayAlpha);
  const [heatmapPng, overlayPng] = await Promise.all([encodePng(r.heatmap), encodePng(r.overlay)]);
  return { heatmapPng, overlayPng, range: r.range };
}
