/**
 * Near-square tiles of an elongated image. A model with a square input stretches a 102 x 256 image (KolektorSDD)
 * to 128 x 128: its height is halved and its width enlarged, so a 2-3 px crack running across it becomes 1 px.
 * Split along its longer side into near-square tiles, each tile is stretched by about the same factor both ways:
 * the image is seen at the scale its shorter side sets, at the cost of one model pass per tile. A square image is
 * one tile (the image itself), so square data is unchanged.
 */
import { cropImage, type Rect } from './io.js';
import { createImage, type Image } from './types.js';

/** 'none': the whole image is the input; 'long-side': near-square tiles along the longer side (tileRects). */
export type Tiling = 'none' | 'long-side';

export const TILINGS: readonly Tiling[] = ['none', 'long-side'];

/** Throws naming `what` unless `value` is a tiling; absent = 'none' (model files written before tiling existed). */
export function tilingOf(value: unknown, what: string): Tiling {
  if (value === undefined) return 'none';
  if (!TILINGS.includes(value as Tiling))
    throw new Error(`${what}: unknown tiling '${String(value)}' (${TILINGS.join(', ')})`);
  return value as Tiling;
}

/**
 * How many tiles an image of this aspect ratio gets: the n that brings a tile's ratio nearest 1 on a log scale
 * (n tiles while long / short < sqrt(n (n + 1))): 1 below 1.41, 2 below 2.45, 3 below 3.46, ...
 */
export function tileCount(height: number, width: number): number {
  const ratio = Math.max(height, width) / Math.min(height, width);
  let n = 1;
  while (ratio >= Math.sqrt(n * (n + 1))) n++;
  return n;
}

/**
 * The tiles of a height x width image under `tiling`: rectangles that partition it, cut across its longer side at
 * floor(k * long / n). 'none' (or a near-square image) gives the whole image.
 */
export function tileRects(height: number, width: number, tiling: Tiling): Rect[] {
  if (!(Number.isInteger(height) && Number.isInteger(width) && height > 0 && width > 0)) {
    throw new Error(`tileRects: invalid size ${height}x${width}`);
  }
  if (!TILINGS.includes(tiling))
    throw new Error(`tileRects: unknown tiling '${String(tiling)}' (${TILINGS.join(', ')})`);
  const n = tiling === 'none' ? 1 : tileCount(height, width);
  const long = Math.max(height, width);
  const rects: Rect[] = [];
  for (let k = 0; k < n; k++) {
    const a = Math.floor((k * long) / n);
    const b = Math.floor(((k + 1) * long) / n);
    rects.push(height >= width ? { top: a, left: 0, height: b - a, width } : { top: 0, left: a, height, width: b - a });
  }
  return rects;
}

/**
 * Which edges of a tile are seams: edges it shares with a neighbouring tile of the same image, where the part goes
 * on, as opposed to the image's own border. An untiled image has none.
 */
export interface TileSeams {
  top: boolean;
  bottom: boolean;
  left: boolean;
  right: boolean;
}

export const NO_SEAMS: Readonly<TileSeams> = Object.freeze({ top: false, bottom: false, left: false, right: false });

/** The seams of tile `rect` of a height x width image. */
export function tileSeams(rect: Rect, height: number, width: number): TileSeams {
  return {
    top: rect.top > 0,
    bottom: rect.top + rect.height < height,
    left: rect.left > 0,
    right: rect.left + rect.width < width,
  };
}

/** The image's tiles (the image itself when it is one tile). */
export function cropTiles(img: Image, rects: readonly Rect[]): Image[] {
  if (rects.length === 1 && rects[0].height === img.height && rects[0].width === img.width) return [img];
  return rects.map((r) => cropImage(img, r.top, r.left, r.height, r.width));
}

/** The image's tiles under `tiling` (cropTiles of tileRects). */
export function imageTiles(img: Image, tiling: Tiling): Image[] {
  return cropTiles(img, tileRects(img.height, img.width, tiling));
}

/** A height x width single-channel map put together from one map per tile, each at its tile's size. */
export function stitchTiles(maps: readonly Image[], rects: readonly Rect[], height: number, width: number): Image {
  if (maps.length !== rects.length) throw new Error(`stitchTiles: ${maps.length} maps for ${rects.length} tiles`);
  if (maps.length === 1 && maps[0].height === height && maps[0].width === width) return maps[0];
  const out = createImage(1, height, width);
  maps.forEach((m, k) => {
    const r = rects[k];
    if (m.channels !== 1 || m.height !== r.height || m.width !== r.width) {
      throw new Error(
        `stitchTiles: map ${k} is ${m.channels}x${m.height}x${m.width}, its tile 1x${r.height}x${r.width}`,
      );
    }
    for (let y = 0; y < r.height; y++) {
      out.data.set(m.data.subarray(y * r.width, (y + 1) * r.width), (r.top + y) * width + r.left);
    }
  });
  return out;
}
