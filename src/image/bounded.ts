/**
 * Large images within a bounded memory: where multi-megapixel inputs are downscaled, and by how much.
 *
 * - Model input: a model only ever sees its square `resolution` input, so an image whose longer side exceeds
 *   MODEL_DECODE_MAX_SIDE (2048 px) is decoded straight to that size (area-averaged, aspect kept; 16-bit precision
 *   and grayscale kept until the model fits them), never as a full-size float image: 8-bit images are shrunk by
 *   sharp while decoding, 16-bit ones are held as their stored samples only (see DecodeShrink in io.ts). For aspect 'stretch'
 *   and 'crop' the shorter side is kept at >= the model resolution, so an extreme aspect ratio never makes the
 *   model input come from fewer pixels than it has.
 * - Evaluation: maps and masks are evaluated at their own size up to EVAL_MAX_SIDE (1024 px) on the longer side,
 *   larger ones at that size (aspect kept); `evalSize` / `--eval-size` replaces this with a square size.
 * - `predict` writes the map at the input's size up to MAP_MAX_SIDE (4096 px) on the longer side, larger inputs at
 *   that size (aspect kept); heatmap and overlay are drawn at the decoded size.
 */
import { loadImage, type ChannelRequest } from './io.js';
import type { Image } from './types.js';

/** Longer side an image is decoded at for a model (larger images are shrunk while decoding). */
export const MODEL_DECODE_MAX_SIDE = 2048;
/** Longer side maps and masks are evaluated at by default (larger ones are downscaled, aspect kept). */
export const EVAL_MAX_SIDE = 1024;
/** Longer side of the map files `predict` writes (larger inputs get a map of this size, aspect kept). */
export const MAP_MAX_SIDE = 4096;

export interface Size {
  height: number;
  width: number;
}

/** A cap on the longer side: a positive integer, or null for none. Throws naming `what` otherwise. */
export function checkMaxSide(maxSide: number | null, what: string): number | null {
  if (maxSide !== null && !(Number.isInteger(maxSide) && maxSide > 0)) {
    throw new RangeError(`${what} must be a positive integer (pixels) or none, got ${maxSide}`);
  }
  return maxSide;
}

/** height x width scaled (aspect kept, rounded, at least 1 px) so the longer side is at most maxSide; null = as is. */
export function capLongerSide(height: number, width: number, maxSide: number | null): Size {
  const longer = Math.max(height, width);
  if (maxSide === null || longer <= maxSide) return { height, width };
  const s = maxSide / longer;
  return { height: Math.max(1, Math.round(height * s)), width: Math.max(1, Math.round(width * s)) };
}

/** What the model-side decode needs of a model (ModelInfo satisfies it). */
export interface ModelGeometry {
  resolution: number;
  /** 'stretch' (default when absent), 'pad' or 'crop'. */
  aspect?: string;
}

/**
 * The size an image of height x width is decoded at for a model: as stored when the longer side is at most
 * maxSide, else scaled (aspect kept) to a longer side of maxSide, except that for 'stretch' and 'crop' the
 * shorter side stays at least the model resolution (or as stored when smaller).
 */
export function modelDecodeSize(
  height: number,
  width: number,
  model: ModelGeometry,
  maxSide: number | null = MODEL_DECODE_MAX_SIDE,
): Size {
  checkMaxSide(maxSide, 'model decode max side');
  if (maxSide !== null && maxSide < model.resolution) {
    throw new RangeError(`model decode max side ${maxSide} is below the model resolution ${model.resolution}`);
  }
  const longer = Math.max(height, width);
  if (maxSide === null || longer <= maxSide) return { height, width };
  let s = maxSide / longer;
  if (model.aspect !== 'pad') s = Math.max(s, model.resolution / Math.min(height, width));
  if (s >= 1) return { height, width };
  return { height: Math.max(1, Math.round(height * s)), width: Math.max(1, Math.round(width * s)) };
}

/** An image decoded for a model, with the size it is stored at. */
export interface ModelInputImage {
  image: Image;
  source: Size;
}

/**
 * Decode an image file for a model: channels as stored (grayscale stays 1 channel, 16-bit keeps its precision:
 * the model's own fitting converts them), shrunk while decoding to modelDecodeSize. Throws ImageReadError.
 */
export async function loadImageForModel(
  file: string,
  model: ModelGeometry,
  opts: { maxSide?: number | null; channels?: ChannelRequest } = {},
): Promise<ModelInputImage> {
  const maxSide = opts.maxSide === undefined ? MODEL_DECODE_MAX_SIDE : opts.maxSide;
  let source: Size | null = null;
  const image = await loadImage(file, {
    channels: opts.channels ?? 'keep',
    shrink: {
      kernel: 'area',
      size: (h, w) => modelDecodeSize(h, w, model, maxSide),
      onSize: (height, width) => {
        source = { height, width };
      },
    },
  });
  return { image, source: source ?? { height: image.height, width: image.width } };
}
