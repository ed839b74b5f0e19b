/**
 * Synthetic anomalies for self-supervised AnoSeg training (paper section 3.1, Fig. 3).
 *
 * A patch is cut from a source (the normal image itself, a donor image or a procedural texture), passed through
 * the hard augmentations rotation -> perm -> colour jitter, each applied independently with probability 0.5, and
 * pasted CutPaste-style (Li et al. 2021) at a random location of the normal image:
 *   - patch area: uniform fraction `areaRange` of the image (paper/CutPaste: [0.02, 0.15]),
 *   - aspect ratio (height / width): log-uniform in `aspectRange` ([0.3, 3.3]), so tall and wide are equally likely,
 *   - cut location and paste location drawn independently (re-drawn when they coincide for 'self').
 *
 * Masks follow the paper: 1 = normal, 0 = anomalous; a normal image's mask is all ones (see normalMask).
 * The mask marks exactly the pixels that were written: everything outside it is bit-identical to the input.
 *
 * Choices the paper leaves open:
 *   - rotation: by default a multiple of 90 degrees (90/180/270, Tack et al.'s rotation shift), exact and
 *     interpolation-free; a 90/270 turn swaps the patch's height and width. 'any' rotates the patch content by
 *     an angle in [20, 340] degrees inside its box (bilinear, patch edges replicated where the rotated box falls
 *     outside the patch).
 *   - perm: the patch is cropped to a multiple of k (default 2, as in Tack et al.'s jigsaw) and its k x k tiles are
 *     shuffled with a permutation that is never the identity.
 *   - colour jitter: brightness, contrast (towards the patch's mean gray), saturation and hue (RGB only, so
 *     grayscale-safe) applied in that order; each factor is 1 +/- a magnitude drawn in [0.5, 1] x strength
 *     (strengths 0.4, 0.4, 0.4 and hue 0.1 turn, times `intensity`) so a jitter that was applied is always visible.
 *   - soft blend: alpha rises from the shape's border inwards over a feather width of 15% of the patch's shorter
 *     side; pixels whose alpha is below SOFT_VISIBLE_THRESHOLD (0.25) are left untouched and are not in the mask,
 *     i.e. the mask is the region where at least a quarter of the patch shows through.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { encodePng, resizeImage, rgbToGray } from '../image/io.js';
import { NO_SEAMS, type TileSeams } from '../image/tiles.js';
import { cloneImage, createImage, type Image } from '../image/types.js';
import { hstack } from '../image/visual.js';
import { writeFileAtomic } from '../util/atomic.js';
import { Rng } from '../util/rng.js';
import { perlinNoise } from './noise.js';
import { cutPasteTexture } from './texture.js';

export const REGION_SHAPES = ['rect', 'perlin', 'gmm', 'stroke'] as const;
export type RegionShape = (typeof REGION_SHAPES)[number];
export const DEFAULT_MIXED_SHAPES: readonly RegionShape[] = ['rect', 'perlin', 'gmm'];
/** The values of the enumerated AnomalyOptions fields (validation here, choices of the CLI). */
export const MASK_SHAPES = [...REGION_SHAPES, 'mixed'] as const;
export const BLENDS = ['hard', 'soft', 'mixed'] as const;
export const PATCH_SOURCES = ['self', 'other-image', 'texture', 'mixed'] as const;
export const AREA_SAMPLINGS = ['uniform', 'log-uniform'] as const;
export const PLACEMENTS = ['inside', 'seams', 'anywhere'] as const;

export interface AnomalyOptions {
  /** Rotation/perm/colour-jitter on the patch (off = plain CutPaste). */
  hardAugmentation: boolean;
  /** Probability of each hard augmentation (paper: 0.5). */
  augmentProbability: number;
  /** 'right-angle' = 90/180/270 degrees (default), 'any' = random angle in [20, 340] degrees. */
  rotation: 'right-angle' | 'any';
  /** Tiles per side for perm (default 2). */
  permGrid: number;
  /**
   * Shape of the pasted region inside the patch box: rectangle, thresholded Perlin noise, Gaussian-mixture
   * blobs or a thin curved stroke (scratch, crack); 'mixed' draws one of `mixedShapes` per anomaly.
   */
  maskShape: (typeof MASK_SHAPES)[number];
  /** The shapes 'mixed' draws from (default rect, perlin, gmm). */
  mixedShapes?: readonly RegionShape[];
  /** 'hard' = opaque paste, 'soft' = feathered border (see SOFT_VISIBLE_THRESHOLD), 'mixed' = either. */
  blend: (typeof BLENDS)[number];
  /**
   * Where the patch comes from: the normal image itself, a donor image, a procedural texture, or 'mixed'
   * (one of the three per anomaly; 'other-image' falls back to 'self' without a donor).
   */
  source: (typeof PATCH_SOURCES)[number];
  /** Patch area as a fraction of the image area. */
  areaRange: [number, number];
  /**
   * How the area is drawn from areaRange: 'uniform' (paper/CutPaste) or 'log-uniform', where small patches are
   * as likely per octave as large ones (most real defects cover well under 1% of the image). Default uniform.
   */
  areaSampling?: (typeof AREA_SAMPLINGS)[number];
  /** Patch height / width ratio range (sampled log-uniformly). */
  aspectRange: [number, number];
  /** Scale of the change: blend weight of the paste (capped at 1) and colour-jitter strength. Paper: 1. */
  intensity: number;
  /**
   * Where the patch box may go: 'inside' the image (CutPaste; the default), which makes anomalies 3-4x rarer in
   * the corners than in the centre, a prior a network with coordinate channels learns; or 'anywhere', the box's
   * corner drawn so it may overhang the border (cut off there), which covers every pixel equally often; or
   * 'seams': inside, but overhanging the edges a tile shares with its neighbours (makeSyntheticAnomaly's `seams`),
   * where a real defect may cross into the next tile; without seams (an untiled image) the same as 'inside'.
   */
  placement?: (typeof PLACEMENTS)[number];
}

/** The paper's setting: hard augmentations with p = 0.5, rectangular opaque CutPaste patch from the same image. */
export const paperAnomalyOptions: Readonly<AnomalyOptions> = Object.freeze({
  hardAugmentation: true,
  augmentProbability: 0.5,
  rotation: 'right-angle',
  permGrid: 2,
  maskShape: 'rect',
  blend: 'hard',
  source: 'self',
  areaRange: [0.02, 0.15] as [number, number],
  aspectRange: [0.3, 3.3] as [number, number],
  intensity: 1,
});

/** Soft blending leaves pixels with a blend weight below this unchanged (and outside the mask). */
export const SOFT_VISIBLE_THRESHOLD = 0.25;

export interface Box {
  top: number;
  left: number;
  height: number;
  width: number;
}

export interface AnomalyInfo {
  /** Where the patch was cut in the source image (for 'texture', the generated texture's box). */
  cutBox: Box;
  /** Where it was pasted in the output (the augmented patch's box). */
  pasteBox: Box;
  /** Which hard augmentations were applied. */
  applied: { rotation: boolean; perm: boolean; jitter: boolean };
  /** Rotation in degrees counter-clockwise (0 when not applied). */
  rotationDegrees: number;
  /** The augmented patch as pasted (size pasteBox). */
  patch: Image;
  /** Blend weight per pixel of pasteBox (0 where the image was left unchanged). */
  alpha: Float32Array;
}

export interface SyntheticAnomaly {
  image: Image;
  /** 1 = normal, 0 = anomalous (paper convention). */
  mask: Image;
  info: AnomalyInfo;
}

/** All-ones mask for a normal image (A_Nor in the paper). */
export function normalMask(img: Image): Image {
  return createImage(1, img.height, img.width, 1);
}

/** Throws "AnomalyOptions.<field>: ..." for options makeSyntheticAnomaly would refuse (config validation). */
export function validateAnomalyOptions(options: Partial<AnomalyOptions>): void {
  resolveOptions(options);
}

function resolveOptions(options: Partial<AnomalyOptions>): AnomalyOptions {
  const o: AnomalyOptions = { ...paperAnomalyOptions, ...options };
  const bad = (name: string, why: string): never => {
    throw new Error(`AnomalyOptions.${name}: ${why}`);
  };
  const oneOf = (name: keyof AnomalyOptions, allowed: readonly string[]) => {
    if (!allowed.includes(o[name] as string))
      bad(name, `must be one of ${allowed.join(', ')}, got '${String(o[name])}'`);
  };
  oneOf('rotation', ['right-angle', 'any']);
  oneOf('maskShape', MASK_SHAPES);
  const mixed = o.mixedShapes ?? DEFAULT_MIXED_SHAPES;
  if (mixed.length === 0 || mixed.some((m) => !(REGION_SHAPES as readonly string[]).includes(m)))
    bad('mixedShapes', `must be a non-empty list of ${REGION_SHAPES.join(', ')}, got [${mixed.join(', ')}]`);
  if (o.areaSampling !== undefined) oneOf('areaSampling', AREA_SAMPLINGS);
  if (o.placement !== undefined) oneOf('placement', PLACEMENTS);
  oneOf('blend', BLENDS);
  oneOf('source', PATCH_SOURCES);
  const [a0, a1] = o.areaRange;
  if (!(a0 > 0 && a1 >= a0 && a1 <= 1)) bad('areaRange', `need 0 < lo <= hi <= 1, got [${a0}, ${a1}]`);
  const [r0, r1] = o.aspectRange;
  if (!(r0 > 0 && r1 >= r0)) bad('aspectRange', `need 0 < lo <= hi, got [${r0}, ${r1}]`);
  if (!(o.intensity > 0)) bad('intensity', `must be > 0, got ${o.intensity}`);
  if (!(o.augmentProbability >= 0 && o.augmentProbability <= 1)) bad('augmentProbability', 'must be in [0, 1]');
  if (!(Number.isInteger(o.permGrid) && o.permGrid >= 2)) bad('permGrid', `must be an integer >= 2`);
  return o;
}

// ---------------------------------------------------------------------------------------------------------------
// Patch operations (exported for tests and reuse).

/** Copy a box out of an image. */
export function cutPatch(img: Image, box: Box): Image {
  const { top, left, height, width } = box;
  const out = createImage(img.channels, height, width);
  for (let c = 0; c < img.channels; c++) {
    for (let y = 0; y < height; y++) {
      const s = c * img.height * img.width + (top + y) * img.width + left;
      out.data.set(img.data.subarray(s, s + width), c * height * width + y * width);
    }
  }
  return out;
}

/** Rotate by quarterTurns x 90 degrees counter-clockwise (same as numpy/torch rot90); 90/270 swap height and width. */
export function rotatePatch(img: Image, quarterTurns: number): Image {
  const q = ((quarterTurns % 4) + 4) % 4;
  const { channels: c, height: h, width: w } = img;
  if (q === 0) return cloneImage(img);
  const oh = q === 2 ? h : w;
  const ow = q === 2 ? w : h;
  const out = createImage(c, oh, ow);
  for (let ch = 0; ch < c; ch++) {
    const so = ch * h * w;
    const dof = ch * oh * ow;
    for (let y = 0; y < oh; y++) {
      for (let x = 0; x < ow; x++) {
        // source pixel for output (y, x)
        let sy: number;
        let sx: number;
        if (q === 1) [sy, sx] = [x, w - 1 - y];
        else if (q === 2) [sy, sx] = [h - 1 - y, w - 1 - x];
        else [sy, sx] = [h - 1 - x, y];
        out.data[dof + y * ow + x] = img.data[so + sy * w + sx];
      }
    }
  }
  return out;
}

/** Rotate the content by `degrees` counter-clockwise about the patch centre, same box; bilinear, edges replicated. */
export function rotatePatchAngle(img: Image, degrees: number): Image {
  const { channels: c, height: h, width: w } = img;
  const out = createImage(c, h, w);
  const t = (degrees * Math.PI) / 180;
  const cos = Math.cos(t);
  const sin = Math.sin(t);
  const cy = (h - 1) / 2;
  const cx = (w - 1) / 2;
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      // inverse mapping (image y axis points down, so CCW on screen uses -t here)
      const dx = x - cx;
      const dy = y - cy;
      const sx = Math.min(Math.max(cx + cos * dx - sin * dy, 0), w - 1);
      const sy = Math.min(Math.max(cy + sin * dx + cos * dy, 0), h - 1);
      const x0 = Math.floor(sx);
      const y0 = Math.floor(sy);
      const x1 = Math.min(x0 + 1, w - 1);
      const y1 = Math.min(y0 + 1, h - 1);
      const fx = sx - x0;
      const fy = sy - y0;
      for (let ch = 0; ch < c; ch++) {
        const o = ch * h * w;
        const top = img.data[o + y0 * w + x0] * (1 - fx) + img.data[o + y0 * w + x1] * fx;
        const bot = img.data[o + y1 * w + x0] * (1 - fx) + img.data[o + y1 * w + x1] * fx;
        out.data[o + y * w + x] = top * (1 - fy) + bot * fy;
      }
    }
  }
  return out;
}

/**
 * Cut the patch into a k x k grid (after cropping to a multiple of k) and shuffle the tiles with a
 * non-identity permutation. `order[i]` = index of the source tile placed at tile position i (row-major).
 * Returns null when the patch is smaller than k in either direction.
 */
export function permutePatch(img: Image, k: number, rng: Rng): { image: Image; order: number[] } | null {
  const th = Math.floor(img.height / k);
  const tw = Math.floor(img.width / k);
  if (th < 1 || tw < 1) return null;
  const h = th * k;
  const w = tw * k;
  const order = Array.from({ length: k * k }, (_, i) => i);
  do rng.shuffle(order);
  while (order.every((v, i) => v === i));
  const out = createImage(img.channels, h, w);
  for (let ch = 0; ch < img.channels; ch++) {
    const so = ch * img.height * img.width;
    const dof = ch * h * w;
    for (let t = 0; t < k * k; t++) {
      const src = order[t];
      const sy0 = Math.floor(src / k) * th;
      const sx0 = (src % k) * tw;
      const dy0 = Math.floor(t / k) * th;
      const dx0 = (t % k) * tw;
      for (let y = 0; y < th; y++) {
        const s = so + (sy0 + y) * img.width + sx0;
        out.data.set(img.data.subarray(s, s + tw), dof + (dy0 + y) * w + dx0);
      }
    }
  }
  return { image: out, order };
}

export interface JitterFactors {
  brightness: number;
  contrast: number;
  saturation: number;
  /** Hue shift in turns (fraction of the colour circle). */
  hue: number;
}

/** Draw jitter factors at least half of the full strength away from the identity, random sign. */
export function drawJitter(rng: Rng, strength = 1): JitterFactors {
  const away = (s: number) => (rng.chance(0.5) ? 1 : -1) * rng.uniform(0.5, 1) * s;
  return {
    brightness: Math.max(0, 1 + away(0.4 * strength)),
    contrast: Math.max(0, 1 + away(0.4 * strength)),
    saturation: Math.max(0, 1 + away(0.4 * strength)),
    hue: away(0.1 * strength),
  };
}

/**
 * Colour jitter in the order brightness, contrast, saturation, hue (torchvision formulas). Saturation and hue
 * need RGB and are skipped for single-channel images. Results are clamped to [0, 1].
 */
export function colorJitter(img: Image, f: JitterFactors): Image {
  const out = cloneImage(img);
  const d = out.data;
  const n = img.height * img.width;
  const rgb = img.channels === 3;
  const clamp = (v: number) => (v < 0 ? 0 : v > 1 ? 1 : v);
  for (let i = 0; i < d.length; i++) d[i] = clamp(d[i] * f.brightness);
  const gray = (i: number) => (rgb ? 0.299 * d[i] + 0.587 * d[n + i] + 0.114 * d[2 * n + i] : d[i]);
  let mean = 0;
  for (let i = 0; i < n; i++) mean += gray(i);
  mean /= n;
  for (let i = 0; i < d.length; i++) d[i] = clamp(f.contrast * d[i] + (1 - f.contrast) * mean);
  if (!rgb) return out;
  for (let i = 0; i < n; i++) {
    const g = gray(i);
    for (let c = 0; c < 3; c++) d[c * n + i] = clamp(f.saturation * d[c * n + i] + (1 - f.saturation) * g);
  }
  for (let i = 0; i < n; i++) {
    const [hh, s, v] = rgbToHsv(d[i], d[n + i], d[2 * n + i]);
    const [r, g, b] = hsvToRgb((((hh + f.hue) % 1) + 1) % 1, s, v);
    d[i] = r;
    d[n + i] = g;
    d[2 * n + i] = b;
  }
  return out;
}

function rgbToHsv(r: number, g: number, b: number): [number, number, number] {
  const max = Math.max(r, g, b);
  const min = Math.min(r, g, b);
  const delta = max - min;
  let h = 0;
  if (delta > 0) {
    if (max === r) h = (((g - b) / delta) % 6) / 6;
    else if (max === g) h = ((b - r) / delta + 2) / 6;
    else h = ((r - g) / delta + 4) / 6;
  }
  return [(h + 1) % 1, max === 0 ? 0 : delta / max, max];
}

function hsvToRgb(h: number, s: number, v: number): [number, number, number] {
  const i = Math.floor(h * 6);
  const f = h * 6 - i;
  const p = v * (1 - s);
  const q = v * (1 - f * s);
  const t = v * (1 - (1 - f) * s);
  switch (((i % 6) + 6) % 6) {
    case 0:
      return [v, t, p];
    case 1:
      return [q, v, p];
    case 2:
      return [p, v, t];
    case 3:
      return [p, q, v];
    case 4:
      return [t, p, v];
    default:
      return [v, p, q];
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Region shapes (noise and textures: src/synth/noise.ts, src/synth/texture.ts).

/** Threshold so that about `keep` of the values are above it. */
function quantileThreshold(values: Float32Array, keep: number): number {
  const sorted = Float32Array.from(values).sort();
  const idx = Math.min(sorted.length - 1, Math.max(0, Math.floor((1 - keep) * sorted.length)));
  return sorted[idx];
}

/** Binary region (1 = pasted) of a height x width box for the chosen shape; never empty. */
export function regionShape(shape: RegionShape, height: number, width: number, rng: Rng): Uint8Array {
  const n = height * width;
  const region = new Uint8Array(n);
  if (shape === 'rect' || n < 9) return region.fill(1);
  if (shape === 'stroke') return strokeRegion(height, width, rng);
  const field = new Float32Array(n);
  const cy = (height - 1) / 2;
  const cx = (width - 1) / 2;
  if (shape === 'perlin') {
    // noise plus a centred bump, so the region is an irregular blob rather than stripes cut by the box edges
    const noise = perlinNoise(height, width, rng.int(2, 4), rng);
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        const d = ((y - cy) / (height / 2)) ** 2 + ((x - cx) / (width / 2)) ** 2;
        field[y * width + x] = noise[y * width + x] + 0.5 * (1 - d);
      }
    }
  } else {
    const k = rng.int(1, 4);
    for (let j = 0; j < k; j++) {
      const my = cy + rng.uniform(-0.3, 0.3) * height;
      const mx = cx + rng.uniform(-0.3, 0.3) * width;
      const sy = rng.uniform(0.1, 0.25) * height;
      const sx = rng.uniform(0.1, 0.25) * width;
      const rot = rng.uniform(0, Math.PI);
      const weight = rng.uniform(0.5, 1);
      for (let y = 0; y < height; y++) {
        for (let x = 0; x < width; x++) {
          const dy = y - my;
          const dx = x - mx;
          const u = (dx * Math.cos(rot) + dy * Math.sin(rot)) / sx;
          const v = (-dx * Math.sin(rot) + dy * Math.cos(rot)) / sy;
          field[y * width + x] += weight * Math.exp(-0.5 * (u * u + v * v));
        }
      }
    }
  }
  const thr = quantileThreshold(field, rng.uniform(0.35, 0.65));
  let count = 0;
  for (let i = 0; i < n; i++) {
    if (field[i] >= thr) {
      region[i] = 1;
      count++;
    }
  }
  if (count === 0) region[Math.floor(cy) * width + Math.floor(cx)] = 1;
  return region;
}

/**
 * A thin curved stroke (scratch, crack): a cubic Bézier from near one end of the box's longer side to near the
 * other, 1-3 px thick (at most a fifth of the shorter side), with a branch from its middle half of the time.
 */
function strokeRegion(height: number, width: number, rng: Rng): Uint8Array {
  const region = new Uint8Array(height * width);
  const alongY = height >= width;
  const long = alongY ? height : width;
  const short = alongY ? width : height;
  // point at (position along the long side, across it), both as fractions of the box
  const point = (along: number, across: number): [number, number] =>
    alongY ? [along * (height - 1), across * (width - 1)] : [across * (height - 1), along * (width - 1)];
  const radius = Math.min(rng.uniform(0.5, 1.5), Math.max(0.5, short / 10));
  const stamp = (cy: number, cx: number): void => {
    const r = Math.ceil(radius);
    for (let y = Math.max(0, Math.round(cy) - r); y <= Math.min(height - 1, Math.round(cy) + r); y++) {
      for (let x = Math.max(0, Math.round(cx) - r); x <= Math.min(width - 1, Math.round(cx) + r); x++) {
        if ((y - cy) ** 2 + (x - cx) ** 2 <= radius * radius + 0.25) region[y * width + x] = 1;
      }
    }
  };
  const curve = (p: [number, number][]): void => {
    const samples = Math.ceil(3 * long);
    for (let i = 0; i <= samples; i++) {
      const t = i / samples;
      const b = [(1 - t) ** 3, 3 * t * (1 - t) ** 2, 3 * t * t * (1 - t), t ** 3];
      stamp(
        b.reduce((s, w, k) => s + w * p[k][0], 0),
        b.reduce((s, w, k) => s + w * p[k][1], 0),
      );
    }
  };
  const a = point(rng.uniform(0, 0.15), rng.uniform(0.1, 0.9));
  const d = point(rng.uniform(0.85, 1), rng.uniform(0.1, 0.9));
  const b = point(rng.uniform(0.2, 0.5), rng.uniform(0, 1));
  const c = point(rng.uniform(0.5, 0.8), rng.uniform(0, 1));
  curve([a, b, c, d]);
  if (rng.chance(0.5)) {
    const mid: [number, number] = [(a[0] + 3 * b[0] + 3 * c[0] + d[0]) / 8, (a[1] + 3 * b[1] + 3 * c[1] + d[1]) / 8];
    // the branch heads for the side of the box the main curve does not end on, so the two diverge
    const mainEndAcross = alongY ? d[1] / Math.max(1, width - 1) : d[0] / Math.max(1, height - 1);
    const end = point(rng.uniform(0.3, 1), mainEndAcross < 0.5 ? 1 : 0);
    curve([mid, mid, end, end]);
  }
  return region;
}

/**
 * Feathered blend weights: 1 deep inside the region, falling to 0 at its border over `feather` pixels
 * (chamfer distance to the nearest outside pixel; the box edge counts as outside).
 */
export function featherAlpha(region: Uint8Array, height: number, width: number, feather: number): Float32Array {
  const INF = 1e9;
  const d = new Float32Array(height * width);
  for (let i = 0; i < d.length; i++) d[i] = region[i] ? INF : 0;
  const at = (y: number, x: number) => (y < 0 || y >= height || x < 0 || x >= width ? 0 : d[y * width + x]);
  const D = Math.SQRT2;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const i = y * width + x;
      if (d[i] === 0) continue;
      d[i] = Math.min(d[i], at(y - 1, x) + 1, at(y, x - 1) + 1, at(y - 1, x - 1) + D, at(y - 1, x + 1) + D);
    }
  }
  for (let y = height - 1; y >= 0; y--) {
    for (let x = width - 1; x >= 0; x--) {
      const i = y * width + x;
      if (d[i] === 0) continue;
      d[i] = Math.min(d[i], at(y + 1, x) + 1, at(y, x + 1) + 1, at(y + 1, x + 1) + D, at(y + 1, x - 1) + D);
    }
  }
  const alpha = new Float32Array(height * width);
  for (let i = 0; i < d.length; i++) alpha[i] = Math.min(1, d[i] / Math.max(1, feather));
  return alpha;
}

// ---------------------------------------------------------------------------------------------------------------
// The generator.

function randomBox(rng: Rng, img: Image, height: number, width: number): Box {
  return placedBox(rng, img, height, width, NO_SEAMS);
}

const ALL_OPEN: Readonly<TileSeams> = Object.freeze({ top: true, bottom: true, left: true, right: true });

/**
 * A box inside the image except across the `open` edges, which it may overhang (overlapping the image by at least
 * one pixel there), each place equally likely. The same two draws as a box inside (none open).
 */
function placedBox(rng: Rng, img: Image, height: number, width: number, open: Readonly<TileSeams>): Box {
  return {
    top: rng.int(open.top ? 1 - height : 0, open.bottom ? img.height - 1 : img.height - height),
    left: rng.int(open.left ? 1 - width : 0, open.right ? img.width - 1 : img.width - width),
    height,
    width,
  };
}

/** Whether a box at its place changes at least one pixel of an H x W image. */
function visibleInside(box: Box, alpha: Float32Array, H: number, W: number): boolean {
  for (let y = Math.max(0, -box.top); y < Math.min(box.height, H - box.top); y++)
    for (let x = Math.max(0, -box.left); x < Math.min(box.width, W - box.left); x++)
      if (alpha[y * box.width + x] > 0) return true;
  return false;
}

/** Bring a donor image to the normal image's size and channel count. */
function matchDonor(donor: Image, normal: Image): Image {
  let d = donor;
  if (d.channels !== normal.channels) {
    if (d.channels === 3 && normal.channels === 1) d = rgbToGray(d);
    else if (d.channels === 1 && normal.channels === 3) {
      const n = d.height * d.width;
      const rgb = createImage(3, d.height, d.width);
      for (let c = 0; c < 3; c++) rgb.data.set(d.data, c * n);
      d = rgb;
    } else throw new Error(`makeSyntheticAnomaly: donor has ${d.channels} channels, image has ${normal.channels}`);
  }
  if (d.height !== normal.height || d.width !== normal.width) d = resizeImage(d, normal.height, normal.width);
  return d;
}

/**
 * The hard augmentations (rotation, perm, colour jitter), each with probability o.augmentProbability; a rotation that
 * would not fit the H x W image is skipped. Each decision is drawn even when the operation cannot apply, so the
 * random stream does not depend on the patch size.
 */
function hardAugment(
  input: Image,
  o: AnomalyOptions,
  rng: Rng,
  H: number,
  W: number,
): { patch: Image; applied: AnomalyInfo['applied']; rotationDegrees: number } {
  let patch = input;
  const applied = { rotation: false, perm: false, jitter: false };
  let rotationDegrees = 0;
  if (o.hardAugmentation) {
    const doRotate = rng.chance(o.augmentProbability);
    const doPerm = rng.chance(o.augmentProbability);
    const doJitter = rng.chance(o.augmentProbability);
    if (doRotate) {
      if (o.rotation === 'right-angle') {
        const q = rng.int(1, 3);
        const rotated = rotatePatch(patch, q);
        // a 90/270 turn swaps the sides; keep the patch inside the image
        if (rotated.height <= H && rotated.width <= W) {
          patch = rotated;
          rotationDegrees = 90 * q;
          applied.rotation = true;
        }
      } else {
        rotationDegrees = rng.uniform(20, 340);
        patch = rotatePatchAngle(patch, rotationDegrees);
        applied.rotation = true;
      }
    }
    if (doPerm) {
      const permuted = permutePatch(patch, o.permGrid, rng);
      if (permuted) {
        patch = permuted.image;
        applied.perm = true;
      }
    }
    if (doJitter) {
      patch = colorJitter(patch, drawJitter(rng, o.intensity));
      applied.jitter = true;
    }
  }

  return { patch, applied, rotationDegrees };
}

/**
 * Make one synthetic anomaly x_Ano from a normal image: returns the image, its mask (1 = normal, 0 = anomalous,
 * exactly the changed pixels) and details of what was done. `donor` is required for source 'other-image'.
 * `seams`: which edges of `normal` are tile seams (placement 'seams' lets the box cross them).
 * Options not given take the paper's values (paperAnomalyOptions).
 */
export function makeSyntheticAnomaly(
  normal: Image,
  rng: Rng,
  options: Partial<AnomalyOptions> = paperAnomalyOptions,
  donor?: Image,
  seams: Readonly<TileSeams> = NO_SEAMS,
): SyntheticAnomaly {
  const o = resolveOptions(options);
  // 'mixed' settings are drawn per anomaly (only then: the paper's stream of draws stays unchanged).
  if (o.maskShape === 'mixed') o.maskShape = rng.pick(o.mixedShapes ?? DEFAULT_MIXED_SHAPES);
  if (o.blend === 'mixed') o.blend = rng.pick(['hard', 'soft'] as const);
  if (o.source === 'mixed')
    o.source = rng.pick(donor ? (['self', 'other-image', 'texture'] as const) : (['self', 'texture'] as const));
  const { channels: C, height: H, width: W } = normal;
  if (H < 2 || W < 2) throw new Error(`makeSyntheticAnomaly: image too small (${H}x${W})`);

  // CutPaste box: area fraction uniform, aspect ratio log-uniform.
  const [areaLo, areaHi] = o.areaRange;
  const areaFraction =
    o.areaSampling === 'log-uniform'
      ? Math.exp(rng.uniform(Math.log(areaLo), Math.log(areaHi)))
      : rng.uniform(areaLo, areaHi);
  const area = areaFraction * H * W;
  const aspect = Math.exp(rng.uniform(Math.log(o.aspectRange[0]), Math.log(o.aspectRange[1])));
  const ph = Math.min(H, Math.max(1, Math.round(Math.sqrt(area * aspect))));
  const pw = Math.min(W, Math.max(1, Math.round(Math.sqrt(area / aspect))));

  let source: Image;
  let cutBox: Box;
  if (o.source === 'texture') {
    source = cutPasteTexture(C, ph, pw, rng);
    cutBox = { top: 0, left: 0, height: ph, width: pw };
  } else {
    if (o.source === 'other-image') {
      if (!donor) throw new Error("makeSyntheticAnomaly: source 'other-image' needs a donor image");
      source = matchDonor(donor, normal);
    } else source = normal;
    cutBox = randomBox(rng, source, ph, pw);
  }
  const aug = hardAugment(cutPatch(source, cutBox), o, rng, H, W);
  const { applied, rotationDegrees } = aug;
  const patch = aug.patch;

  const open = o.placement === 'anywhere' ? ALL_OPEN : o.placement === 'seams' ? seams : NO_SEAMS;
  const overhangs = open.top || open.bottom || open.left || open.right;
  const drawPasteBox = (): Box => placedBox(rng, normal, patch.height, patch.width, open);
  let pasteBox = drawPasteBox();
  // pasting a self patch back where it came from would change nothing: re-draw (bounded)
  for (let tries = 0; o.source === 'self' && tries < 10; tries++) {
    if (pasteBox.top !== cutBox.top || pasteBox.left !== cutBox.left) break;
    pasteBox = drawPasteBox();
  }

  const bh = pasteBox.height;
  const bw = pasteBox.width;
  const region = regionShape(o.maskShape as RegionShape, bh, bw, rng);
  let alpha: Float32Array;
  if (o.blend === 'soft') {
    const feather = Math.max(1, 0.15 * Math.min(bh, bw));
    alpha = featherAlpha(region, bh, bw, feather);
    for (let i = 0; i < alpha.length; i++) if (alpha[i] < SOFT_VISIBLE_THRESHOLD) alpha[i] = 0;
    if (alpha.every((a) => a === 0)) alpha = Float32Array.from(region); // tiny region: paste it opaquely
  } else alpha = Float32Array.from(region);
  const weight = Math.min(1, o.intensity);
  if (weight < 1) for (let i = 0; i < alpha.length; i++) alpha[i] *= weight;
  if (overhangs) {
    // an overhanging box may leave no visible pixel inside: re-draw its place (bounded), then fall back inside
    for (let tries = 0; !visibleInside(pasteBox, alpha, H, W); tries++)
      pasteBox = tries < 10 ? drawPasteBox() : randomBox(rng, normal, bh, bw);
  }

  const image = cloneImage(normal);
  const mask = normalMask(normal);
  const n = H * W;
  const pn = bh * bw;
  for (let y = 0; y < bh; y++) {
    for (let x = 0; x < bw; x++) {
      const a = alpha[y * bw + x];
      const iy = pasteBox.top + y;
      const ix = pasteBox.left + x;
      if (a === 0 || iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
      const p = iy * W + ix;
      mask.data[p] = 0;
      for (let c = 0; c < C; c++) {
        const v = patch.data[c * pn + y * bw + x];
        image.data[c * n + p] = a === 1 ? v : (1 - a) * image.data[c * n + p] + a * v;
      }
    }
  }
  return { image, mask, info: { cutBox, pasteBox, applied, rotationDegrees, patch, alpha } };
}

/**
 * Write `count` examples sample_000.png, ... to outDir, each "anomaly image | mask" side by side (mask white =
 * normal, black = anomalous), for people to inspect the generator. Normal images are used in turn; for source
 * 'other-image' the donor is the next image in the list (or the same one if only one is given).
 * Returns the written paths.
 */
export async function writeSynthSamples(
  outDir: string,
  images: Image[],
  count: number,
  seed: number,
  options: Partial<AnomalyOptions> = paperAnomalyOptions,
): Promise<string[]> {
  if (images.length === 0) throw new Error('writeSynthSamples: no input images');
  if (!(Number.isInteger(count) && count >= 0)) throw new Error(`writeSynthSamples: count must be an integer >= 0`);
  await fs.mkdir(outDir, { recursive: true });
  const rng = new Rng(seed);
  const written: string[] = [];
  const digits = Math.max(3, String(count - 1).length);
  for (let i = 0; i < count; i++) {
    const normal = images[i % images.length];
    const donor = images[(i + 1) % images.length];
    const { image, mask } = makeSyntheticAnomaly(normal, rng.fork(), options, donor);
    const file = path.join(outDir, `sample_${String(i).padStart(digits, '0')}.png`);
    await writeFileAtomic(file, await encodePng(hstack([image, mask], 2, 0.5)));
    written.push(file);
  }
  return written;
}
