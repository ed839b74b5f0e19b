/**
 * A tiny procedural dataset in MVTec AD layout, for tests and for the demo when no real data is given.
 *
 * - 'texture': oriented stripes with a weak cross grating and pixel noise; every image gets a random phase and a
 *   small angle jitter, the stripe frequency, angle and tint are fixed per dataset (one "category").
 * - 'object': a bright ring (a bottle seen from above) with a darker centre on a dark background, the centre
 *   jittered by up to 1.5 px.
 *
 * Defects (folder = type): 'scratch' (thin line shifted in intensity), 'stain' (irregular blob shifted in
 * colour) and 'missing' (a hole filled with a flat dark value; on the object a ring sector replaced by background).
 * Every defect changes each pixel of its region by at least 0.1 (in practice >= 0.15), so the mask (1 = defect, stored 0/255) is
 * exactly the set of changed pixels. Same seed -> same bytes.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { encodePng } from '../image/io.js';
import { createImage, type Image } from '../image/types.js';
import { writeFileAtomic } from '../util/atomic.js';
import { Rng } from '../util/rng.js';
import { openMvtecDataset, type MvtecDataset } from './dataset.js';

export type SyntheticKind = 'texture' | 'object';
export const DEFECT_TYPES = ['scratch', 'stain', 'missing'] as const;
export type DefectType = (typeof DEFECT_TYPES)[number];

export interface SyntheticDatasetOptions {
  seed: number;
  /** Image side in pixels (default 64). */
  size?: number;
  trainCount: number;
  testGoodCount: number;
  /** Defective test images, spread round-robin over scratch, stain, missing. */
  testDefectCount: number;
  kind: SyntheticKind;
  /** Output channels; default 3 for 'texture', 1 for 'object' (so both loader paths get exercised). */
  channels?: 1 | 3;
  /** Replace train/, test/ and ground_truth/ if `dir` already holds a dataset (default false: refuse). */
  overwrite?: boolean;
}

/** Per-dataset appearance, drawn once from the seed. */
export interface SyntheticStyle {
  kind: SyntheticKind;
  size: number;
  channels: 1 | 3;
  angle: number;
  frequency: number;
  tint: [number, number, number];
  ringInner: number;
  ringOuter: number;
}

export function drawStyle(kind: SyntheticKind, size: number, channels: 1 | 3, rng: Rng): SyntheticStyle {
  return {
    kind,
    size,
    channels,
    angle: rng.uniform(0, Math.PI),
    frequency: rng.uniform(5, 9) / size,
    tint: channels === 1 ? [1, 1, 1] : [rng.uniform(0.85, 1), rng.uniform(0.8, 1), rng.uniform(0.7, 0.95)],
    ringInner: rng.uniform(0.22, 0.28) * size,
    ringOuter: rng.uniform(0.38, 0.44) * size,
  };
}

const BACKGROUND = 0.15;

function clamp01(v: number): number {
  return v < 0 ? 0 : v > 1 ? 1 : v;
}

/** One defect-free sample of the style. */
export function renderGood(style: SyntheticStyle, rng: Rng): Image {
  const { size, channels } = style;
  const img = createImage(channels, size, size);
  const n = size * size;
  if (style.kind === 'texture') {
    const angle = style.angle + rng.uniform(-0.05, 0.05);
    const phase = rng.uniform(0, 2 * Math.PI);
    const phase2 = rng.uniform(0, 2 * Math.PI);
    const ca = Math.cos(angle);
    const sa = Math.sin(angle);
    const w = 2 * Math.PI * style.frequency;
    for (let y = 0; y < size; y++) {
      for (let x = 0; x < size; x++) {
        const u = x * ca + y * sa;
        const v = -x * sa + y * ca;
        const s = 0.5 + 0.4 * Math.sin(w * u + phase) + 0.1 * Math.sin(3 * w * v + phase2);
        // stays within about [0.27, 0.83] so every defect shift below is visible
        const base = 0.3 + 0.5 * s + rng.normal(0, 0.015);
        for (let c = 0; c < channels; c++) img.data[c * n + y * size + x] = clamp01(base * style.tint[c]);
      }
    }
    return img;
  }
  const cx = size / 2 - 0.5 + rng.uniform(-1.5, 1.5);
  const cy = size / 2 - 0.5 + rng.uniform(-1.5, 1.5);
  for (let y = 0; y < size; y++) {
    for (let x = 0; x < size; x++) {
      const r = Math.hypot(x - cx, y - cy);
      let v: number;
      if (r > style.ringOuter) v = BACKGROUND;
      else if (r >= style.ringInner) {
        // brighter towards the middle of the ring, like a rounded rim
        const t = (r - style.ringInner) / (style.ringOuter - style.ringInner);
        v = 0.65 + 0.2 * Math.sin(Math.PI * t);
      } else v = 0.4;
      v += rng.normal(0, 0.01);
      for (let c = 0; c < channels; c++) img.data[c * n + y * size + x] = clamp01(v * style.tint[c]);
    }
  }
  return img;
}

/** Distance from point p to segment a-b. */
function segmentDistance(px: number, py: number, ax: number, ay: number, bx: number, by: number): number {
  const dx = bx - ax;
  const dy = by - ay;
  const t = Math.max(0, Math.min(1, ((px - ax) * dx + (py - ay) * dy) / (dx * dx + dy * dy)));
  return Math.hypot(px - ax - t * dx, py - ay - t * dy);
}

/**
 * Apply one defect in place and return its mask (1 = defect). Every pixel of the region changes by >= 0.1 in
 * every channel, so mask = changed pixels.
 */
export function applyDefect(img: Image, style: SyntheticStyle, type: DefectType, rng: Rng): Image {
  const { size, channels } = style;
  const n = size * size;
  const mask = createImage(1, size, size);
  const centre = size / 2 - 0.5;
  // Defects sit on the object (within the ring) or anywhere on the texture but away from the border.
  const spread = style.kind === 'object' ? style.ringOuter * 0.8 : size * 0.3;
  const px = centre + rng.uniform(-spread, spread);
  const py = centre + rng.uniform(-spread, spread);
  const region = new Uint8Array(n);
  if (type === 'scratch') {
    const angle = rng.uniform(0, Math.PI);
    const half = (rng.uniform(0.3, 0.6) * size) / 2;
    const width = rng.uniform(0.6, 1.2);
    const [ax, ay, bx, by] = [
      px - half * Math.cos(angle),
      py - half * Math.sin(angle),
      px + half * Math.cos(angle),
      py + half * Math.sin(angle),
    ];
    for (let y = 0; y < size; y++) {
      for (let x = 0; x < size; x++) if (segmentDistance(x, y, ax, ay, bx, by) <= width) region[y * size + x] = 1;
    }
  } else if (type === 'stain') {
    // union of a few discs: an irregular blob
    const blobs = rng.int(2, 4);
    const radius = rng.uniform(0.06, 0.11) * size;
    const discs = Array.from({ length: blobs }, () => ({
      x: px + rng.uniform(-radius, radius),
      y: py + rng.uniform(-radius, radius),
      r: radius * rng.uniform(0.6, 1.1),
    }));
    for (let y = 0; y < size; y++) {
      for (let x = 0; x < size; x++)
        if (discs.some((d) => Math.hypot(x - d.x, y - d.y) <= d.r)) region[y * size + x] = 1;
    }
  } else if (style.kind === 'object') {
    // a ring sector broken off: ring pixels inside an angular wedge
    const a0 = rng.uniform(-Math.PI, Math.PI);
    const span = rng.uniform(0.45, 0.9);
    // ring centre is not stored per image: find it as the centroid of ring-bright pixels
    let sx = 0;
    let sy = 0;
    let cnt = 0;
    for (let y = 0; y < size; y++) {
      for (let x = 0; x < size; x++) {
        if (img.data[y * size + x] > 0.55 * style.tint[0]) {
          sx += x;
          sy += y;
          cnt++;
        }
      }
    }
    const cx = cnt > 0 ? sx / cnt : centre;
    const cy = cnt > 0 ? sy / cnt : centre;
    for (let y = 0; y < size; y++) {
      for (let x = 0; x < size; x++) {
        let d = Math.atan2(y - cy, x - cx) - a0;
        d = Math.atan2(Math.sin(d), Math.cos(d));
        const bright = img.data[y * size + x] > 0.55 * style.tint[0];
        if (Math.abs(d) <= span / 2 && bright) region[y * size + x] = 1;
      }
    }
  } else {
    const hh = Math.round(rng.uniform(0.05, 0.1) * size);
    const hw = Math.round(rng.uniform(0.05, 0.1) * size);
    const y0 = Math.round(py);
    const x0 = Math.round(px);
    for (let y = Math.max(0, y0 - hh); y <= Math.min(size - 1, y0 + hh); y++) {
      for (let x = Math.max(0, x0 - hw); x <= Math.min(size - 1, x0 + hw); x++) region[y * size + x] = 1;
    }
  }

  const shift =
    channels === 1 ? [0.3, 0.3, 0.3] : [rng.uniform(0.2, 0.35), rng.uniform(0.2, 0.35), rng.uniform(0.2, 0.35)];
  for (let i = 0; i < n; i++) {
    if (!region[i]) continue;
    mask.data[i] = 1;
    let mean = 0;
    for (let c = 0; c < channels; c++) mean += img.data[c * n + i] / channels;
    for (let c = 0; c < channels; c++) {
      const k = c * n + i;
      if (type === 'missing') {
        img.data[k] = style.kind === 'object' ? BACKGROUND * style.tint[c] : 0.02;
      } else if (type === 'scratch') {
        // lighter on dark pixels, darker on light ones: always a 0.4 step, never clipped away
        img.data[k] = clamp01(img.data[k] + (mean < 0.5 ? 0.4 : -0.4));
      } else {
        // stain colour shift, signed by brightness (like the scratch) so clipping never hides it
        img.data[k] = clamp01(img.data[k] + (mean < 0.5 ? shift[c] : -shift[c]));
      }
    }
  }
  return mask;
}

function pad3(i: number): string {
  return String(i).padStart(3, '0');
}

/**
 * Write a synthetic dataset in MVTec layout under `dir` and return its discovered listing. Refuses a `dir` that
 * already holds train/, test/ or ground_truth/ unless `overwrite` is set.
 */
export async function generateSyntheticDataset(dir: string, opts: SyntheticDatasetOptions): Promise<MvtecDataset> {
  const size = opts.size ?? 64;
  const kind = opts.kind;
  if (kind !== 'texture' && kind !== 'object')
    throw new Error(`generateSyntheticDataset: unknown kind '${String(kind)}'`);
  if (!(Number.isInteger(size) && size >= 16))
    throw new Error(`generateSyntheticDataset: size must be an integer >= 16`);
  for (const key of ['trainCount', 'testGoodCount', 'testDefectCount'] as const) {
    const v = opts[key];
    if (!(Number.isInteger(v) && v >= 0)) throw new Error(`generateSyntheticDataset: ${key} must be an integer >= 0`);
  }
  if (opts.trainCount < 1) throw new Error('generateSyntheticDataset: trainCount must be at least 1');
  const channels = opts.channels ?? (kind === 'texture' ? 3 : 1);
  if (channels !== 1 && channels !== 3) throw new Error('generateSyntheticDataset: channels must be 1 or 3');

  const sub = ['train', 'test', 'ground_truth'].map((s) => path.join(dir, s));
  for (const s of sub) {
    const exists = await fs.stat(s).then(
      () => true,
      () => false,
    );
    if (!exists) continue;
    if (!opts.overwrite) throw new Error(`generateSyntheticDataset: ${s} already exists (pass overwrite to replace)`);
    await fs.rm(s, { recursive: true, force: true });
  }

  const rng = new Rng(opts.seed);
  const style = drawStyle(kind, size, channels, rng);
  const writes: Array<Promise<void>> = [];
  const save = (file: string, img: Image) => writes.push(encodePng(img).then((png) => writeFileAtomic(file, png)));

  for (let i = 0; i < opts.trainCount; i++)
    save(path.join(dir, 'train', 'good', `${pad3(i)}.png`), renderGood(style, rng.fork()));
  for (let i = 0; i < opts.testGoodCount; i++)
    save(path.join(dir, 'test', 'good', `${pad3(i)}.png`), renderGood(style, rng.fork()));
  const perType: Record<DefectType, number> = { scratch: 0, stain: 0, missing: 0 };
  for (let i = 0; i < opts.testDefectCount; i++) {
    const type = DEFECT_TYPES[i % DEFECT_TYPES.length];
    const r = rng.fork();
    const img = renderGood(style, r);
    const mask = applyDefect(img, style, type, r);
    const name = pad3(perType[type]++);
    save(path.join(dir, 'test', type, `${name}.png`), img);
    save(path.join(dir, 'ground_truth', type, `${name}_mask.png`), mask);
  }
  await Promise.all(writes);
  return openMvtecDataset(dir, { requireTest: opts.testGoodCount + opts.testDefectCount > 0 });
}
