/**
 * Procedural textures, values in [0, 1], argument order (channels, height, width, rng):
 *  - proceduralTexture: defect-free bases for formula-driven pre-training (families spectral, stripes, grid, wood,
 *    gradient; src/synth/formula.ts);
 *  - cutPasteTexture: the patch of CutPaste's 'texture' source (src/synth/anomalies.ts).
 */
import { createImage, type Image } from '../image/types.js';
import type { Rng } from '../util/rng.js';
import { perlinNoise, valueNoise } from './noise.js';

export type ProceduralFamily = 'spectral' | 'stripes' | 'grid' | 'wood' | 'gradient';
export const PROCEDURAL_FAMILIES: readonly ProceduralFamily[] = ['spectral', 'stripes', 'grid', 'wood', 'gradient'];

/**
 * A height x width procedural defect-free base (formula-driven pre-training) with `channels` channels (1 or 3),
 * values in [0, 1]; scales follow the longer side:
 *  - spectral: octaves of value noise with random base frequency and random falloff (random 1/f-like spectrum);
 *  - stripes:  a sinusoid along a random direction, randomly sharpened, slightly warped;
 *  - grid:     two perpendicular sets of thin lines, randomly rotated;
 *  - wood:     warped concentric rings around a (usually off-image) centre, plus grain;
 *  - gradient: a smooth linear ramp plus low-frequency shading.
 * The pattern maps between two random colours, plus faint sensor-like noise. `family` picks one; by default random.
 */
export function proceduralTexture(
  channels: number,
  height: number,
  width: number,
  rng: Rng,
  family?: ProceduralFamily,
): Image {
  if (!(Number.isInteger(height) && height >= 2 && Number.isInteger(width) && width >= 2))
    throw new Error(`proceduralTexture: height and width must be integers >= 2`);
  const size = Math.max(height, width);
  if (channels !== 1 && channels !== 3) throw new Error(`proceduralTexture: channels must be 1 or 3, got ${channels}`);
  const fam = family ?? rng.pick(PROCEDURAL_FAMILIES);
  const n = height * width;
  const p = new Float32Array(n);
  switch (fam) {
    case 'spectral': {
      let cell = rng.uniform(size / 6, size / 1.5);
      const falloff = rng.uniform(0.35, 0.8);
      let amp = 1;
      for (let o = 0; o < 5 && cell >= 1; o++) {
        const noise = valueNoise(height, width, cell, rng);
        for (let i = 0; i < n; i++) p[i] += amp * noise[i];
        amp *= falloff;
        cell /= 2;
      }
      normaliseInPlace(p);
      break;
    }
    case 'stripes': {
      const angle = rng.uniform(0, Math.PI);
      const freq = rng.uniform(3, 20) / size;
      const sharp = rng.uniform(1, 6);
      const warpAmp = rng.uniform(0, 1.5);
      const warp = valueNoise(height, width, size / rng.uniform(1.5, 4), rng);
      const phase = rng.uniform(0, 2 * Math.PI);
      const cs = Math.cos(angle);
      const sn = Math.sin(angle);
      for (let y = 0; y < height; y++) {
        for (let x = 0; x < width; x++) {
          const i = y * width + x;
          const s = Math.sin(2 * Math.PI * freq * (cs * x + sn * y) + phase + warpAmp * warp[i]);
          p[i] = 0.5 + (0.5 * Math.tanh(sharp * s)) / Math.tanh(sharp);
        }
      }
      break;
    }
    case 'grid': {
      const angle = rng.uniform(-0.3, 0.3);
      const period = rng.uniform(size / 12, size / 3);
      const power = rng.uniform(8, 60);
      const phaseU = rng.uniform(0, 1);
      const phaseV = rng.uniform(0, 1);
      const cs = Math.cos(angle);
      const sn = Math.sin(angle);
      for (let y = 0; y < height; y++) {
        for (let x = 0; x < width; x++) {
          const u = (cs * x + sn * y) / period + phaseU;
          const v = (-sn * x + cs * y) / period + phaseV;
          const lu = Math.abs(Math.cos(Math.PI * u)) ** power;
          const lv = Math.abs(Math.cos(Math.PI * v)) ** power;
          p[y * width + x] = Math.max(lu, lv);
        }
      }
      break;
    }
    case 'wood': {
      const cx = rng.uniform(-size, 2 * size);
      const cy = rng.uniform(-size, 2 * size);
      const stretch = rng.uniform(1, 4);
      const ringFreq = rng.uniform(4, 16) / size;
      const warp = valueNoise(height, width, size / rng.uniform(1, 3), rng);
      const grain = valueNoise(height, width, Math.max(1, size / 64), rng);
      const warpAmp = rng.uniform(0.5, 3);
      for (let y = 0; y < height; y++) {
        for (let x = 0; x < width; x++) {
          const i = y * width + x;
          const r = Math.hypot(x - cx, (y - cy) * stretch);
          const rings = 0.5 + 0.5 * Math.sin(2 * Math.PI * ringFreq * r + warpAmp * warp[i]);
          p[i] = 0.8 * rings ** 1.5 + 0.2 * (0.5 + 0.5 * grain[i]);
        }
      }
      break;
    }
    case 'gradient': {
      const angle = rng.uniform(0, 2 * Math.PI);
      const cs = Math.cos(angle);
      const sn = Math.sin(angle);
      const shade = valueNoise(height, width, size / rng.uniform(0.7, 2), rng);
      const shadeAmp = rng.uniform(0.05, 0.3);
      for (let y = 0; y < height; y++) {
        for (let x = 0; x < width; x++) {
          const i = y * width + x;
          p[i] = (cs * x + sn * y) / size + shadeAmp * shade[i];
        }
      }
      normaliseInPlace(p);
      break;
    }
    default:
      throw new Error(`proceduralTexture: unknown family '${String(fam)}'`);
  }
  const img = createImage(channels, height, width);
  const grayLo = rng.uniform(0.05, 0.6);
  const grayHi = Math.min(0.95, grayLo + rng.uniform(0.1, 0.6));
  const lo = Array.from({ length: channels }, () => Math.min(1, Math.max(0, grayLo + rng.uniform(-0.1, 0.1))));
  const hi = Array.from({ length: channels }, () => Math.min(1, Math.max(0, grayHi + rng.uniform(-0.1, 0.1))));
  const sensor = rng.uniform(0, 0.02);
  for (let c = 0; c < channels; c++) {
    const off = c * n;
    for (let i = 0; i < n; i++) {
      const v = lo[c] + (hi[c] - lo[c]) * p[i] + (sensor > 0 ? rng.normal(0, sensor) : 0);
      img.data[off + i] = v < 0 ? 0 : v > 1 ? 1 : v;
    }
  }
  return img;
}

function normaliseInPlace(p: Float32Array): void {
  let lo = Infinity;
  let hi = -Infinity;
  for (const v of p) {
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  const span = hi - lo;
  for (let i = 0; i < p.length; i++) p[i] = span > 0 ? (p[i] - lo) / span : 0.5;
}

/**
 * The texture pasted by CutPaste's 'texture' source: stripes, a checkerboard or two octaves of Perlin noise between two
 * random colours, values in [0, 1].
 */
export function cutPasteTexture(channels: number, height: number, width: number, rng: Rng): Image {
  const img = createImage(channels, height, width);
  const n = height * width;
  const colourA = Array.from({ length: channels }, () => rng.next());
  const colourB = Array.from({ length: channels }, () => rng.next());
  const kind = rng.pick(['stripes', 'checker', 'noise'] as const);
  const t = new Float32Array(n);
  if (kind === 'stripes') {
    const a = rng.uniform(0, Math.PI);
    const period = rng.uniform(3, 12);
    const phase = rng.uniform(0, 2 * Math.PI);
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        t[y * width + x] = 0.5 + 0.5 * Math.sin(((x * Math.cos(a) + y * Math.sin(a)) * 2 * Math.PI) / period + phase);
      }
    }
  } else if (kind === 'checker') {
    const cell = rng.int(2, 8);
    const oy = rng.int(0, cell - 1);
    const ox = rng.int(0, cell - 1);
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++)
        t[y * width + x] = (Math.floor((y + oy) / cell) + Math.floor((x + ox) / cell)) % 2;
    }
  } else {
    const cells = rng.int(2, 6);
    const a = perlinNoise(height, width, cells, rng);
    const b = perlinNoise(height, width, cells * 3, rng);
    for (let i = 0; i < n; i++) t[i] = Math.min(1, Math.max(0, 0.5 + a[i] + 0.5 * b[i]));
  }
  for (let c = 0; c < channels; c++) {
    for (let i = 0; i < n; i++) img.data[c * n + i] = colourA[c] * (1 - t[i]) + colourB[c] * t[i];
  }
  return img;
}
