/**
 * Visualisation helpers: colour-mapped anomaly maps, overlays, side-by-side strips and mask outlines.
 * All inputs are clamped to [0, 1] (NaN counts as 0) so a raw score map can be passed straight in.
 */
import { resizeImage } from './io.js';
import { createImage, type Image } from './types.js';

export type Colormap = 'turbo' | 'jet';
export type Rgb = [number, number, number];

function clamp01(v: number): number {
  return v > 0 ? (v < 1 ? v : 1) : 0; // NaN -> 0
}

/**
 * Turbo (Google, 2019) sampled at 33 evenly spaced points of the published 256-entry table; linear
 * interpolation between them stays within 2/255 of the full table.
 */
const TURBO_ANCHORS: readonly Rgb[] = [
  [0.19, 0.0718, 0.2322],
  [0.2249, 0.1632, 0.4502],
  [0.2509, 0.2517, 0.6324],
  [0.268, 0.3373, 0.779],
  [0.2762, 0.4199, 0.8897],
  [0.2755, 0.4996, 0.9648],
  [0.2594, 0.5777, 0.9986],
  [0.2153, 0.6567, 0.9806],
  [0.1602, 0.7332, 0.9252],
  [0.113, 0.8034, 0.8482],
  [0.0927, 0.8634, 0.7655],
  [0.1179, 0.9101, 0.69],
  [0.1922, 0.9474, 0.5993],
  [0.2992, 0.9758, 0.4953],
  [0.421, 0.9935, 0.3912],
  [0.54, 0.9991, 0.3005],
  [0.6384, 0.991, 0.2365],
  [0.7205, 0.9669, 0.2073],
  [0.7994, 0.9277, 0.2042],
  [0.8704, 0.8768, 0.2146],
  [0.929, 0.8173, 0.2261],
  [0.9707, 0.7523, 0.2262],
  [0.9921, 0.681, 0.2059],
  [0.9963, 0.5952, 0.1724],
  [0.9853, 0.5018, 0.1324],
  [0.961, 0.4084, 0.0921],
  [0.9253, 0.3229, 0.0577],
  [0.8797, 0.2521, 0.0349],
  [0.823, 0.1909, 0.0195],
  [0.7547, 0.1367, 0.0093],
  [0.6747, 0.0895, 0.0045],
  [0.583, 0.0492, 0.0049],
  [0.4796, 0.0158, 0.0106],
];

function turbo(x: number): Rgb {
  const k = TURBO_ANCHORS.length - 1;
  const t = x * k;
  const i = Math.min(Math.floor(t), k - 1);
  const f = t - i;
  const a = TURBO_ANCHORS[i];
  const b = TURBO_ANCHORS[i + 1];
  return [a[0] + (b[0] - a[0]) * f, a[1] + (b[1] - a[1]) * f, a[2] + (b[2] - a[2]) * f];
}

/** Classic MATLAB-style jet: piecewise linear blue -> cyan -> yellow -> red. */
function jet(x: number): Rgb {
  return [clamp01(1.5 - Math.abs(4 * x - 3)), clamp01(1.5 - Math.abs(4 * x - 2)), clamp01(1.5 - Math.abs(4 * x - 1))];
}

/** Colour of one value under a colormap (value clamped to [0, 1]). */
export function colormapValue(v: number, colormap: Colormap = 'turbo'): Rgb {
  if (colormap === 'turbo') return turbo(clamp01(v));
  if (colormap === 'jet') return jet(clamp01(v));
  throw new Error(`unknown colormap '${String(colormap)}' (turbo, jet)`);
}

/** Colour-map a 1-channel map into an RGB image. */
export function heatmap(map: Image, colormap: Colormap = 'turbo'): Image {
  if (map.channels !== 1) throw new Error(`heatmap: expected a 1-channel map, got ${map.channels} channels`);
  const n = map.height * map.width;
  const out = createImage(3, map.height, map.width);
  // 1024-entry table: much faster than evaluating the polynomial per pixel and visually identical.
  const lut = new Float32Array(3 * 1024);
  for (let i = 0; i < 1024; i++) lut.set(colormapValue(i / 1023, colormap), 3 * i);
  for (let i = 0; i < n; i++) {
    const k = Math.round(clamp01(map.data[i]) * 1023) * 3;
    out.data[i] = lut[k];
    out.data[n + i] = lut[k + 1];
    out.data[2 * n + i] = lut[k + 2];
  }
  return out;
}

/** A 3-channel copy of an image (gray replicated), values clamped to [0, 1]. */
export function toRgb(img: Image): Image {
  if (img.channels !== 1 && img.channels !== 3) throw new Error(`toRgb: expected 1 or 3 channels, got ${img.channels}`);
  const n = img.height * img.width;
  const out = createImage(3, img.height, img.width);
  for (let c = 0; c < 3; c++) {
    const src = img.channels === 1 ? 0 : c * n;
    for (let i = 0; i < n; i++) out.data[c * n + i] = clamp01(img.data[src + i]);
  }
  return out;
}

/**
 * Blend a colour-mapped map over an image: (1 - alpha) * image + alpha * heatmap(map). The map is resized
 * (bilinear) to the image size when they differ. Returns RGB.
 */
export function overlay(img: Image, map: Image, alpha = 0.5, colormap: Colormap = 'turbo'): Image {
  if (!(alpha >= 0 && alpha <= 1)) throw new Error(`overlay: alpha must be in [0, 1], got ${alpha}`);
  const sized = map.height === img.height && map.width === img.width ? map : resizeImage(map, img.height, img.width);
  const base = toRgb(img);
  const heat = heatmap(sized, colormap);
  for (let i = 0; i < base.data.length; i++) base.data[i] = (1 - alpha) * base.data[i] + alpha * heat.data[i];
  return base;
}

/**
 * Place images left to right, top-aligned, separated by `gap` columns of `background` (default white).
 * Gray images are promoted to RGB when any image is RGB; shorter images are padded with the background.
 */
export function hstack(images: Image[], gap = 2, background = 1): Image {
  return stack(images, gap, background, 'h');
}

/** Place images top to bottom, left-aligned (see hstack). */
export function vstack(images: Image[], gap = 2, background = 1): Image {
  return stack(images, gap, background, 'v');
}

/** Lay images out row by row, `columns` per row, e.g. image | map | ground truth for several samples. */
export function grid(images: Image[], columns: number, gap = 2, background = 1): Image {
  if (!(Number.isInteger(columns) && columns > 0)) throw new Error(`grid: columns must be a positive integer`);
  const rows: Image[] = [];
  for (let i = 0; i < images.length; i += columns) rows.push(hstack(images.slice(i, i + columns), gap, background));
  return vstack(rows, gap, background);
}

function stack(images: Image[], gap: number, background: number, dir: 'h' | 'v'): Image {
  if (images.length === 0) throw new Error(`${dir}stack: no images`);
  if (!(Number.isInteger(gap) && gap >= 0)) throw new Error(`${dir}stack: gap must be a non-negative integer`);
  for (const im of images) {
    if (im.channels !== 1 && im.channels !== 3) throw new Error(`${dir}stack: images must have 1 or 3 channels`);
  }
  const rgb = images.some((im) => im.channels === 3);
  const parts = rgb ? images.map((im) => toRgb(im)) : images;
  const c = rgb ? 3 : 1;
  const along = (im: Image) => (dir === 'h' ? im.width : im.height);
  const across = (im: Image) => (dir === 'h' ? im.height : im.width);
  const total = parts.reduce((s, im) => s + along(im), 0) + gap * (parts.length - 1);
  const cross = Math.max(...parts.map(across));
  const H = dir === 'h' ? cross : total;
  const W = dir === 'h' ? total : cross;
  const out = createImage(c, H, W, clamp01(background));
  let offset = 0;
  for (const im of parts) {
    const top = dir === 'h' ? 0 : offset;
    const left = dir === 'h' ? offset : 0;
    for (let ch = 0; ch < c; ch++) {
      for (let y = 0; y < im.height; y++) {
        for (let x = 0; x < im.width; x++) {
          out.data[ch * H * W + (top + y) * W + left + x] = clamp01(
            im.data[ch * im.height * im.width + y * im.width + x],
          );
        }
      }
    }
    offset += along(im) + gap;
  }
  return out;
}

/**
 * Draw the boundary of a mask (> 0.5 counts as inside) on an RGB copy of the image. Boundary pixels are mask
 * pixels with a 4-neighbour outside the mask or on the image border; `thickness` grows the line inwards/outwards.
 * The mask is resized nearest to the image size when they differ.
 */
export function maskOutline(img: Image, mask: Image, color: Rgb = [1, 0, 0], thickness = 1): Image {
  if (mask.channels !== 1) throw new Error(`maskOutline: expected a 1-channel mask, got ${mask.channels} channels`);
  if (!(Number.isInteger(thickness) && thickness >= 1)) throw new Error('maskOutline: thickness must be >= 1');
  const { height: h, width: w } = img;
  const m = mask.height === h && mask.width === w ? mask : resizeImage(mask, h, w, 'nearest');
  const inside = (y: number, x: number) => y >= 0 && y < h && x >= 0 && x < w && m.data[y * w + x] > 0.5;
  let edge = new Uint8Array(h * w);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      if (inside(y, x) && !(inside(y - 1, x) && inside(y + 1, x) && inside(y, x - 1) && inside(y, x + 1))) {
        edge[y * w + x] = 1;
      }
    }
  }
  for (let t = 1; t < thickness; t++) {
    const grown = edge.slice();
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        if (edge[y * w + x]) continue;
        const near =
          (y > 0 && edge[(y - 1) * w + x]) ||
          (y < h - 1 && edge[(y + 1) * w + x]) ||
          (x > 0 && edge[y * w + x - 1]) ||
          (x < w - 1 && edge[y * w + x + 1]);
        if (near) grown[y * w + x] = 1;
      }
    }
    edge = grown;
  }
  const out = toRgb(img);
  const n = h * w;
  for (let i = 0; i < n; i++) {
    if (!edge[i]) continue;
    for (let c = 0; c < 3; c++) out.data[c * n + i] = clamp01(color[c]);
  }
  return out;
}
