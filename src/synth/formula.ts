/**
 * Semi-formula-driven defect generator, after Kobayashi et al., "Anomaly Detection Based on Semi-Formula
 * Driven Pre-training Dataset to Represent Subtle Difference and Anomaly Score" (Chukyo University):
 * defect-free base images (real training images or procedural textures) plus defects whose shape is a
 * parametric 2-D Gaussian mixture. Each component has a position, an x / y standard deviation (= size along
 * its own axes), a rotation angle and a weight; the defect changes intensity, colour or texture, blended in
 * with an alpha derived from the mixture density. Every sample comes with a pixel mask and a scalar anomaly
 * strength, so a feature extractor can be pre-trained to regress the anomaly score (L_direct) or to separate
 * normal from anomalous (L_indirect) before its features are used in PaDiM.
 *
 * Rendering (renderFormulaDefect, deterministic given the parameters):
 *  - density       G(x, y) = sum_k w_k exp(-(u_k^2 / sx_k^2 + v_k^2 / sy_k^2) / 2), with
 *                  u_k =  cos(r_k) (x - cx_k) + sin(r_k) (y - cy_k),  v_k = -sin(r_k) (x - cx_k) + cos(r_k) (y - cy_k)
 *                  (x = column, y = row, so a component's sx axis points along (cos r, sin r) on screen: rotation 0
 *                  puts sx horizontal, rotation pi/2 vertical);
 *  - normalised    d = G / max_pixels G  (so the strongest point of every defect has d = 1);
 *  - blending      t = clamp((d - threshold) / (1 - threshold), 0, 1),  alpha = min(1, sharpness * t);
 *  - change        delta_c = alpha * amplitude * direction_c * m(x, y), where m = 1 for 'intensity' and 'color'
 *                  and m in [0, 1] is smooth value noise for 'texture';
 *  - image         out_c = clamp(base_c + delta_c, 0, 1).
 * Mask (1 channel): 1 where d > threshold (exactly where alpha > 0), else 0. Pixels outside the mask are
 * bit-identical to the base image (epsilon = 0). Inside, the change fades to 0 at the mask border over the
 * band threshold < d < threshold + (1 - threshold) / sharpness; `alpha` is returned for soft targets.
 *
 * Strength (the scalar anomaly score target) = min(1, MAC / strengthReference), where MAC is the mean absolute
 * change, averaged over channels and over the mask pixels, of the clamped output against the base. It is 0 exactly
 * when the image is unchanged, non-decreasing in amplitude, and accounts for clipping at 0 and 1 (a "brighter"
 * defect on a white area is no anomaly).
 *
 * MASK CONVENTION: the masks here are ANOMALY-POSITIVE (1 = defect, 0 = normal), like ground-truth defect
 * masks. AnoSeg's own normal-region masks are the opposite (1 = normal): use 1 - mask there.
 */
import path from 'node:path';
import { writeFileAtomic } from '../util/atomic.js';
import { Rng } from '../util/rng.js';
import { valueNoise } from './noise.js';
import { proceduralTexture } from './texture.js';

import { cropImage, resizeImage, saveImagePng } from '../image/io.js';
import { cloneImage, createImage, type Image } from '../image/types.js';
import { grid, hstack, toRgb, vstack } from '../image/visual.js';

export type FormulaDefectKind = 'intensity' | 'color' | 'texture';
export const FORMULA_DEFECT_KINDS: readonly FormulaDefectKind[] = ['intensity', 'color', 'texture'];

/** One Gaussian component of the defect shape (pixel units). */
export interface GaussianComponent {
  /** Centre column (x) and row (y), pixels; may lie outside the image for secondary components. */
  cx: number;
  cy: number;
  /** Standard deviation along the component's own x / y axis, pixels (at rotation 0: horizontal / vertical size). */
  sx: number;
  sy: number;
  /** Rotation of the component's x axis, radians (0: sx horizontal; pi/2: sx vertical). */
  rotation: number;
  /** Mixture weight, > 0. */
  weight: number;
}

export interface FormulaDefectParams {
  /** 1..K Gaussian components. */
  components: GaussianComponent[];
  kind: FormulaDefectKind;
  /** Change magnitude at alpha = 1, in image units ([0, 1] range). */
  amplitude: number;
  /**
   * Per-channel direction of the change, entries in [-1, 1] (length = image channels). 'intensity' and 'texture':
   * all -1 (darker) or all +1 (brighter); 'color': differing entries, largest magnitude 1.
   */
  direction: number[];
  /** 'texture' only: noise cell size in pixels, and the seed of the noise field. */
  textureScale: number;
  noiseSeed: number;
  /** Blending threshold on the peak-normalised density, in [0, 1). */
  threshold: number;
  /** Blending sharpness, >= 1: alpha rises from 0 to 1 over 1/sharpness of the normalised density range. */
  sharpness: number;
}

/** Parameter ranges for sampling ([lo, hi] pairs are inclusive uniform ranges). */
export interface FormulaDefectConfig {
  /** Number of Gaussian components (integers). */
  components: [number, number];
  /** Component standard deviations along each axis, as a fraction of min(height, width). */
  std: [number, number];
  /** Extra components are offset from the first by N(0, (spread * the first's larger std)^2) per axis. */
  spread: number;
  /** Mixture weights. */
  weight: [number, number];
  /** Fraction of the image on each side that the first component's centre keeps away from. */
  margin: number;
  /** Relative frequencies of the defect kinds (need not sum to 1; 0 disables a kind). */
  kindWeights: Record<FormulaDefectKind, number>;
  /** Change magnitude at full alpha. */
  amplitude: [number, number];
  /** Probability that an 'intensity' or 'texture' defect is darker (else brighter). */
  darkerProbability: number;
  /** Blending threshold on the normalised density. */
  threshold: [number, number];
  /** Blending sharpness. */
  sharpness: [number, number];
  /** 'texture' noise cell size, as a fraction of min(height, width). */
  textureScale: [number, number];
  /** Mean absolute change (inside the mask) that counts as strength 1. */
  strengthReference: number;
  /** formulaStream: probability of a defect-free sample (strength 0, empty mask). */
  defectFreeProbability: number;
}

export const DEFAULT_FORMULA_CONFIG: Readonly<FormulaDefectConfig> = Object.freeze({
  components: [1, 4],
  std: [0.015, 0.12],
  spread: 1.5,
  weight: [0.3, 1],
  margin: 0.1,
  kindWeights: { intensity: 0.4, color: 0.3, texture: 0.3 },
  amplitude: [0.08, 0.6],
  darkerProbability: 0.5,
  threshold: [0.05, 0.3],
  sharpness: [1.5, 8],
  textureScale: [0.01, 0.05],
  strengthReference: 0.3,
  defectFreeProbability: 0.1,
} satisfies FormulaDefectConfig);

/** Merges overrides into the defaults and validates every range. */
export function resolveFormulaConfig(overrides: Partial<FormulaDefectConfig> = {}): FormulaDefectConfig {
  const c: FormulaDefectConfig = {
    ...DEFAULT_FORMULA_CONFIG,
    ...overrides,
    kindWeights: { ...DEFAULT_FORMULA_CONFIG.kindWeights, ...(overrides.kindWeights ?? {}) },
  };
  // Own copies of the [lo, hi] pairs, so mutating a resolved config never touches the defaults or the caller's.
  for (const key of ['components', 'std', 'weight', 'amplitude', 'threshold', 'sharpness', 'textureScale'] as const) {
    if (Array.isArray(c[key])) c[key] = [...c[key]] as [number, number];
  }
  const range = (name: keyof FormulaDefectConfig, lo: number, hi: number): void => {
    const r = c[name] as [number, number];
    if (!Array.isArray(r) || r.length !== 2 || !(r[0] >= lo && r[0] <= r[1] && r[1] <= hi)) {
      throw new Error(
        `formula config: ${name} must be [lo, hi] with ${lo} <= lo <= hi <= ${hi}, got ${JSON.stringify(r)}`,
      );
    }
  };
  range('components', 1, 64);
  if (!Number.isInteger(c.components[0]) || !Number.isInteger(c.components[1])) {
    throw new Error(`formula config: components must be integers, got ${JSON.stringify(c.components)}`);
  }
  range('std', 1e-4, 10);
  range('weight', 1e-6, 1e6);
  range('amplitude', 0, 1);
  range('threshold', 0, 0.999);
  range('sharpness', 1, 1e6);
  range('textureScale', 1e-4, 10);
  const scalar = (name: keyof FormulaDefectConfig, lo: number, hi: number): void => {
    const v = c[name] as number;
    if (!(v >= lo && v <= hi)) throw new Error(`formula config: ${name} must be in [${lo}, ${hi}], got ${v}`);
  };
  scalar('spread', 0, 100);
  scalar('margin', 0, 0.5);
  scalar('darkerProbability', 0, 1);
  scalar('strengthReference', 1e-6, 1);
  scalar('defectFreeProbability', 0, 1);
  const kw = FORMULA_DEFECT_KINDS.map((k) => c.kindWeights[k]);
  if (!kw.every((v) => v >= 0) || !(kw.reduce((a, b) => a + b, 0) > 0)) {
    throw new Error(
      `formula config: kindWeights must be >= 0 with a positive sum, got ${JSON.stringify(c.kindWeights)}`,
    );
  }
  return c;
}

/** A generated sample. */
export interface FormulaSample {
  /** The base image with the defect blended in (same size and channels as the base). */
  image: Image;
  /** 1 channel, ANOMALY-POSITIVE: 1 = defect pixel, 0 = normal (AnoSeg normal-region masks are 1 - mask). */
  mask: Image;
  /** 1 channel blending weight in [0, 1] (0 outside the mask). */
  alpha: Image;
  /** Scalar anomaly strength in [0, 1] (see the module comment); 0 for defect-free samples. */
  strength: number;
  /** The defect parameters; null for a defect-free sample. */
  params: FormulaDefectParams | null;
}

function uniform(rng: Rng, r: readonly [number, number]): number {
  return r[0] === r[1] ? r[0] : rng.uniform(r[0], r[1]);
}

/** Draws defect parameters for an image of the given size and channel count. */
export function sampleFormulaParams(
  rng: Rng,
  height: number,
  width: number,
  channels: number,
  config: Partial<FormulaDefectConfig> = {},
): FormulaDefectParams {
  const c = resolveFormulaConfig(config);
  const side = Math.min(height, width);
  const k = rng.int(c.components[0], c.components[1]);
  const components: GaussianComponent[] = [];
  for (let i = 0; i < k; i++) {
    const sx = uniform(rng, c.std) * side;
    const sy = uniform(rng, c.std) * side;
    const rotation = rng.uniform(0, Math.PI);
    const weight = uniform(rng, c.weight);
    let cx: number;
    let cy: number;
    if (i === 0) {
      cx = rng.uniform(c.margin * width, (1 - c.margin) * width);
      cy = rng.uniform(c.margin * height, (1 - c.margin) * height);
    } else {
      const first = components[0];
      const s = c.spread * Math.max(first.sx, first.sy);
      cx = first.cx + rng.normal(0, s);
      cy = first.cy + rng.normal(0, s);
    }
    components.push({ cx, cy, sx, sy, rotation, weight });
  }
  const kind = pickWeighted(rng, c.kindWeights);
  const amplitude = uniform(rng, c.amplitude);
  let direction: number[];
  if (kind === 'color' && channels > 1) {
    direction = Array.from({ length: channels }, () => rng.uniform(-1, 1));
    const m = Math.max(...direction.map(Math.abs));
    direction = direction.map((v) => (m > 0 ? v / m : 1));
  } else {
    const sign = rng.chance(c.darkerProbability) ? -1 : 1;
    direction = Array.from({ length: channels }, () => sign);
  }
  return {
    components,
    kind,
    amplitude,
    direction,
    textureScale: Math.max(1, uniform(rng, c.textureScale) * side),
    noiseSeed: rng.nextUint32(),
    threshold: uniform(rng, c.threshold),
    sharpness: uniform(rng, c.sharpness),
  };
}

function pickWeighted(rng: Rng, weights: Record<FormulaDefectKind, number>): FormulaDefectKind {
  const total = FORMULA_DEFECT_KINDS.reduce((s, k) => s + weights[k], 0);
  let r = rng.next() * total;
  for (const k of FORMULA_DEFECT_KINDS) {
    r -= weights[k];
    if (r < 0 && weights[k] > 0) return k;
  }
  return FORMULA_DEFECT_KINDS.filter((k) => weights[k] > 0).at(-1) as FormulaDefectKind;
}

/** The un-normalised mixture density G at every pixel (row-major height x width, Float64). */
export function mixtureDensity(components: readonly GaussianComponent[], height: number, width: number): Float64Array {
  const g = new Float64Array(height * width);
  for (const comp of components) {
    if (!(comp.sx > 0 && comp.sy > 0 && comp.weight > 0)) {
      throw new Error(`mixtureDensity: component needs sx, sy, weight > 0, got ${JSON.stringify(comp)}`);
    }
    const cos = Math.cos(comp.rotation);
    const sin = Math.sin(comp.rotation);
    const ax = 0.5 / (comp.sx * comp.sx);
    const ay = 0.5 / (comp.sy * comp.sy);
    for (let y = 0; y < height; y++) {
      const dy = y - comp.cy;
      const row = y * width;
      for (let x = 0; x < width; x++) {
        const dx = x - comp.cx;
        const u = cos * dx + sin * dy;
        const v = -sin * dx + cos * dy;
        const e = ax * u * u + ay * v * v;
        if (e < 40) g[row + x] += comp.weight * Math.exp(-e);
      }
    }
  }
  return g;
}

/**
 * Renders a defect with the given parameters onto a copy of `base` (see the module comment for the formulas).
 * Deterministic; `strengthReference` as in FormulaDefectConfig.
 */
export function renderFormulaDefect(
  base: Image,
  params: FormulaDefectParams,
  strengthReference = DEFAULT_FORMULA_CONFIG.strengthReference,
): FormulaSample {
  const { channels: ch, height: h, width: w } = base;
  if (params.components.length < 1) throw new Error('renderFormulaDefect: need at least one component');
  if (params.direction.length !== ch) {
    throw new Error(`renderFormulaDefect: direction has ${params.direction.length} entries, image has ${ch} channels`);
  }
  if (!(params.threshold >= 0 && params.threshold < 1)) {
    throw new Error(`renderFormulaDefect: threshold must be in [0, 1), got ${params.threshold}`);
  }
  if (!(params.sharpness >= 1)) throw new Error(`renderFormulaDefect: sharpness must be >= 1, got ${params.sharpness}`);
  if (!(params.amplitude >= 0 && params.amplitude <= 1)) {
    throw new Error(`renderFormulaDefect: amplitude must be in [0, 1], got ${params.amplitude}`);
  }
  if (!(strengthReference > 0)) throw new Error(`renderFormulaDefect: strengthReference must be > 0`);
  const n = h * w;
  const g = mixtureDensity(params.components, h, w);
  let gMax = 0;
  for (let i = 0; i < n; i++) if (g[i] > gMax) gMax = g[i];
  const image = cloneImage(base);
  const mask = createImage(1, h, w);
  const alpha = createImage(1, h, w);
  if (!(gMax > 1e-300)) return { image, mask, alpha, strength: 0, params };
  const tau = params.threshold;
  const scale = params.sharpness / (1 - tau);
  for (let i = 0; i < n; i++) {
    const d = g[i] / gMax;
    if (d > tau) {
      mask.data[i] = 1;
      alpha.data[i] = Math.min(1, (d - tau) * scale);
    }
  }
  const modulation =
    params.kind === 'texture' ? valueNoise(h, w, Math.max(1, params.textureScale), new Rng(params.noiseSeed)) : null;
  let changeSum = 0;
  let maskCount = 0;
  for (let i = 0; i < n; i++) {
    if (mask.data[i] === 0) continue;
    maskCount++;
    const m = modulation ? 0.5 + 0.5 * modulation[i] : 1;
    const a = alpha.data[i] * params.amplitude * m;
    for (let c = 0; c < ch; c++) {
      const j = c * n + i;
      const before = base.data[j];
      const v = before + a * params.direction[c];
      const after = v < 0 ? 0 : v > 1 ? 1 : v;
      image.data[j] = after;
      changeSum += Math.abs(image.data[j] - before);
    }
  }
  const mac = maskCount > 0 ? changeSum / (maskCount * ch) : 0;
  return { image, mask, alpha, strength: Math.min(1, mac / strengthReference), params };
}

/**
 * Draws parameters with `rng` and renders a defect onto `base` (which is not modified).
 * The returned mask is ANOMALY-POSITIVE: 1 = defect.
 */
export function sampleFormulaDefect(
  base: Image,
  rng: Rng,
  config: Partial<FormulaDefectConfig> = {},
): FormulaSample & { params: FormulaDefectParams } {
  const c = resolveFormulaConfig(config);
  const params = sampleFormulaParams(rng, base.height, base.width, base.channels, c);
  const sample = renderFormulaDefect(base, params, c.strengthReference);
  return { ...sample, params };
}

// ---------------------------------------------------------------------------------------------------------------
// Streaming and writing samples.

/**
 * Prepares a size x size base from a training image: optionally rescaled first so that its shorter side is about
 * `side` px (times a random factor in [0.75, 1.33], so that crops see parts at the scale a detector working at `side`
 * px sees them), then a random crop when it is large enough, otherwise a bilinear resize; then random flips.
 */
export function prepareBase(img: Image, size: number, rng: Rng, side: number | null = null): Image {
  let src = img;
  if (side !== null) {
    const scale = (side * Math.exp(rng.uniform(Math.log(0.75), Math.log(4 / 3)))) / Math.min(img.height, img.width);
    const h = Math.max(size, Math.round(img.height * scale));
    const w = Math.max(size, Math.round(img.width * scale));
    if (h !== img.height || w !== img.width) src = resizeImage(img, h, w, 'bilinear');
  }
  let out: Image;
  if (src.height >= size && src.width >= size) {
    const top = rng.int(0, src.height - size);
    const left = rng.int(0, src.width - size);
    out = cropImage(src, top, left, size, size);
  } else {
    out = resizeImage(src, size, size, 'bilinear');
  }
  const flipX = rng.chance(0.5);
  const flipY = rng.chance(0.5);
  if (!flipX && !flipY) return out;
  const flipped = createImage(out.channels, size, size);
  for (let c = 0; c < out.channels; c++) {
    const off = c * size * size;
    for (let y = 0; y < size; y++) {
      const sy = flipY ? size - 1 - y : y;
      for (let x = 0; x < size; x++) {
        const sx = flipX ? size - 1 - x : x;
        flipped.data[off + y * size + x] = out.data[off + sy * size + sx];
      }
    }
  }
  return flipped;
}

/** Where the defect-free bases of the formula streams come from ("semi-formula": real good images + procedural). */
export interface BasePoolOptions {
  /** Real defect-free images (any sizes, 1 or 3 channels); may be empty. */
  real?: readonly Image[];
  /** Share of bases drawn as procedural textures (default 1 without real images, else 0). */
  proceduralShare?: number;
  /** Share of procedural bases drawn as grayscale (default 0). */
  grayFraction?: number;
  /** Rescale real images to about this shorter side before cropping (see prepareBase); null = as stored. */
  realSide?: number | null;
}

/** Draws bases: a real image (prepareBase) or a procedural texture, mixed in a fixed proportion. */
export class BasePool {
  readonly real: readonly Image[];
  readonly proceduralShare: number;
  readonly grayFraction: number;
  readonly realSide: number | null;

  constructor(o: BasePoolOptions = {}) {
    this.real = o.real ?? [];
    this.proceduralShare = o.proceduralShare ?? (this.real.length === 0 ? 1 : 0);
    this.grayFraction = o.grayFraction ?? 0;
    this.realSide = o.realSide ?? null;
    if (!(this.proceduralShare >= 0 && this.proceduralShare <= 1))
      throw new Error(`proceduralShare must be in [0, 1], got ${this.proceduralShare}`);
    if (!(this.grayFraction >= 0 && this.grayFraction <= 1))
      throw new Error(`grayFraction must be in [0, 1], got ${this.grayFraction}`);
    if (this.real.length === 0 && this.proceduralShare < 1)
      throw new Error('a base pool without real images must draw only procedural bases (proceduralShare 1)');
    if (this.realSide !== null && !(this.realSide >= 8)) throw new Error(`realSide must be >= 8, got ${this.realSide}`);
  }

  /** One size x size base; `channels` is the procedural colour count (real images keep theirs). */
  draw(size: number, rng: Rng, channels = 3): Image {
    if (this.real.length > 0 && !(this.proceduralShare > 0 && rng.chance(this.proceduralShare)))
      return prepareBase(rng.pick(this.real as Image[]), size, rng, this.realSide);
    return proceduralTexture(this.grayFraction > 0 && rng.chance(this.grayFraction) ? 1 : channels, size, size, rng);
  }
}

/**
 * An endless stream of samples (nothing is stored: each sample is generated on demand from its own forked Rng,
 * so the stream for a seed is reproducible). Bases come from `bases` (random crop / resize to size x size, random
 * flips; channel count kept) or from proceduralTexture ('procedural', with `channels` channels). With probability
 * config.defectFreeProbability a sample is defect-free: the base itself, empty mask, strength 0, params null.
 */
export function* formulaStream(
  bases: Image[] | 'procedural' | BasePool,
  seed: number,
  config: Partial<FormulaDefectConfig> = {},
  size = 256,
  channels = 3,
): Generator<FormulaSample, never, undefined> {
  const c = resolveFormulaConfig(config);
  if (!(Number.isInteger(size) && size >= 2))
    throw new Error(`formulaStream: size must be an integer >= 2, got ${size}`);
  if (Array.isArray(bases) && bases.length === 0) throw new Error('formulaStream: no base images');
  const pool = bases instanceof BasePool ? bases : new BasePool({ real: bases === 'procedural' ? [] : bases });
  const master = new Rng(seed);
  for (;;) {
    const rng = master.fork();
    const base = pool.draw(size, rng, channels);
    if (rng.chance(c.defectFreeProbability)) {
      yield {
        image: base,
        mask: createImage(1, size, size),
        alpha: createImage(1, size, size),
        strength: 0,
        params: null,
      };
    } else {
      yield sampleFormulaDefect(base, rng, c);
    }
  }
}

/** One row of a parameter sweep: a parameter name, its values, and one sample per value. */
export interface SweepRow {
  name: string;
  values: number[];
  samples: FormulaSample[];
}

/**
 * "Results of changing each parameter": starting from a reference defect (one centred component, darker intensity
 * shift), each row varies one parameter: x-std, y-std, rotation (of an elongated component), number of components,
 * intensity (signed amplitude: darker to brighter), threshold. `columns` values per row.
 */
export function parameterSweep(base: Image, seed: number, columns = 6): SweepRow[] {
  const { height: h, width: w, channels: ch } = base;
  const side = Math.min(h, w);
  const lin = (a: number, b: number): number[] =>
    Array.from({ length: columns }, (_, i) => (columns === 1 ? a : a + ((b - a) * i) / (columns - 1)));
  const centre: GaussianComponent = {
    cx: (w - 1) / 2,
    cy: (h - 1) / 2,
    sx: 0.08 * side,
    sy: 0.08 * side,
    rotation: 0,
    weight: 1,
  };
  const ref: FormulaDefectParams = {
    components: [centre],
    kind: 'intensity',
    amplitude: 0.3,
    direction: Array.from({ length: ch }, () => -1),
    textureScale: 4,
    noiseSeed: seed >>> 0,
    threshold: 0.1,
    sharpness: 4,
  };
  const rng = new Rng(seed);
  const extra: GaussianComponent[] = [];
  for (let i = 1; i < Math.max(columns, 2); i++) {
    extra.push({
      cx: centre.cx + rng.normal(0, 0.15 * side),
      cy: centre.cy + rng.normal(0, 0.15 * side),
      sx: rng.uniform(0.03, 0.08) * side,
      sy: rng.uniform(0.03, 0.08) * side,
      rotation: rng.uniform(0, Math.PI),
      weight: rng.uniform(0.5, 1),
    });
  }
  const row = (name: string, values: number[], make: (v: number) => FormulaDefectParams): SweepRow => ({
    name,
    values,
    samples: values.map((v) => renderFormulaDefect(base, make(v))),
  });
  const elongated = { ...centre, sx: 0.16 * side, sy: 0.04 * side };
  const counts = Array.from({ length: columns }, (_, i) => i + 1);
  return [
    row('x-std', lin(0.02, 0.2), (v) => ({ ...ref, components: [{ ...centre, sx: v * side }] })),
    row('y-std', lin(0.02, 0.2), (v) => ({ ...ref, components: [{ ...centre, sy: v * side }] })),
    row('rotation', lin(0, (Math.PI * (columns - 1)) / columns), (v) => ({
      ...ref,
      components: [{ ...elongated, rotation: v }],
    })),
    row('components', counts, (v) => ({ ...ref, components: [centre, ...extra.slice(0, v - 1)] })),
    row('intensity', lin(-0.8, 0.8), (v) => ({
      ...ref,
      amplitude: Math.abs(v),
      direction: Array.from({ length: ch }, () => (v < 0 ? -1 : 1)),
    })),
    row('threshold', lin(0.02, 0.7), (v) => ({ ...ref, threshold: v })),
  ];
}

export interface WriteFormulaOptions {
  /** Sample side in pixels (default 128). */
  size?: number;
  /** Channels of procedural bases (default 3). */
  channels?: number;
  /** Contact sheet: columns x rows of image | mask pairs (default 6 x 6). */
  sheetColumns?: number;
  sheetRows?: number;
}

export interface WriteFormulaResult {
  samples: string[];
  contactSheet: string;
  parameterSweep: string;
  index: string;
}

/**
 * Writes `count` samples to outDir as sample_00000.png ... (image | mask side by side; mask white = defect),
 * samples.jsonl (one line per sample: file, strength, params), contact_sheet.png (a grid of the first
 * sheetColumns x sheetRows image | mask pairs) and parameter_sweep.png (one row per parameter, see
 * parameterSweep, image over mask for each value) for a person to look at.
 */
export async function writeFormulaSamples(
  outDir: string,
  count: number,
  seed: number,
  config: Partial<FormulaDefectConfig> = {},
  bases: Image[] | 'procedural' = 'procedural',
  options: WriteFormulaOptions = {},
): Promise<WriteFormulaResult> {
  if (!(Number.isInteger(count) && count >= 1))
    throw new Error(`writeFormulaSamples: count must be >= 1, got ${count}`);
  const size = options.size ?? 128;
  const channels = options.channels ?? 3;
  const cols = options.sheetColumns ?? 6;
  const rows = options.sheetRows ?? 6;
  const stream = formulaStream(bases, seed, config, size, channels);
  const files: string[] = [];
  const lines: string[] = [];
  const sheet: Image[] = [];
  for (let i = 0; i < count; i++) {
    const s = stream.next().value;
    const pair = hstack([s.image, s.mask], 2);
    const name = `sample_${String(i).padStart(5, '0')}.png`;
    const file = path.join(outDir, name);
    await saveImagePng(file, pair);
    files.push(file);
    lines.push(JSON.stringify({ file: name, strength: s.strength, params: s.params }));
    if (sheet.length < cols * rows) sheet.push(pair);
  }
  const index = path.join(outDir, 'samples.jsonl');
  await writeFileAtomic(index, lines.join('\n') + '\n');
  const contactSheet = path.join(outDir, 'contact_sheet.png');
  await saveImagePng(contactSheet, grid(sheet, cols, 4, 1));

  const sweepBase =
    bases === 'procedural'
      ? proceduralTexture(channels, size, size, new Rng(seed ^ 0x5eed), 'spectral')
      : prepareBase(bases[0], size, new Rng(seed));
  const sweep = parameterSweep(sweepBase, seed);
  const sweepRows = sweep.map((r) =>
    hstack(
      r.samples.map((s) => vstack([toRgb(s.image), s.mask], 1)),
      3,
    ),
  );
  const parameterSweepFile = path.join(outDir, 'parameter_sweep.png');
  await saveImagePng(parameterSweepFile, vstack(sweepRows, 6, 1));
  await writeFileAtomic(
    path.join(outDir, 'parameter_sweep.json'),
    JSON.stringify(
      sweep.map((r) => ({ row: r.name, values: r.values })),
      null,
      2,
    ) + '\n',
  );
  return { samples: files, contactSheet, parameterSweep: parameterSweepFile, index };
}
