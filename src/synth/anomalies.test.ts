import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadImage } from '../image/io.js';
import { createImage, type Image } from '../image/types.js';
import { Rng } from '../util/rng.js';
import {
  SOFT_VISIBLE_THRESHOLD,
  colorJitter,
  cutPatch,
  drawJitter,
  featherAlpha,
  makeSyntheticAnomaly,
  normalMask,
  paperAnomalyOptions,
  permutePatch,
  regionShape,
  rotatePatch,
  rotatePatchAngle,
  writeSynthSamples,
  type AnomalyOptions,
} from './anomalies.js';

let tmp: string;
beforeAll(async () => {
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'anoseg-synth-'));
});
afterAll(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});

/** Every pixel distinct, so any moved pixel is visible. */
function gradientImage(channels: number, h: number, w: number, seed = 0): Image {
  const rng = new Rng(seed);
  const img = createImage(channels, h, w);
  for (let i = 0; i < img.data.length; i++) img.data[i] = (i % 251) / 251 + rng.uniform(0, 0.003);
  return img;
}

function fromRows(rows: number[][]): Image {
  const img = createImage(1, rows.length, rows[0].length);
  img.data.set(rows.flat());
  return img;
}

function rows(img: Image): number[][] {
  return Array.from({ length: img.height }, (_, y) =>
    Array.from(img.data.subarray(y * img.width, (y + 1) * img.width)),
  );
}

/**
 * Check: mask 0 exactly where alpha > 0 in the paste box; outside bit-identical; inside = blend of the patch and
 * different from the normal image wherever the patch differs. Returns the number of anomalous pixels.
 */
function checkMaskExact(normal: Image, res: ReturnType<typeof makeSyntheticAnomaly>): number {
  const { image, mask, info } = res;
  const { pasteBox: b, patch, alpha } = info;
  const n = normal.height * normal.width;
  const errors: string[] = [];
  let anomalous = 0;
  for (let y = 0; y < normal.height; y++) {
    for (let x = 0; x < normal.width; x++) {
      const p = y * normal.width + x;
      const inBox = y >= b.top && y < b.top + b.height && x >= b.left && x < b.left + b.width;
      const a = inBox ? alpha[(y - b.top) * b.width + (x - b.left)] : 0;
      if (mask.data[p] !== (a > 0 ? 0 : 1)) errors.push(`mask at ${y},${x}`);
      if (a > 0) anomalous++;
      for (let c = 0; c < normal.channels; c++) {
        const got = image.data[c * n + p];
        const orig = normal.data[c * n + p];
        if (a === 0) {
          if (got !== orig) errors.push(`changed outside mask at ${c},${y},${x}`);
          continue;
        }
        const v = patch.data[c * b.height * b.width + (y - b.top) * b.width + (x - b.left)];
        if (Math.abs(got - ((1 - a) * orig + a * v)) > 1e-6) errors.push(`wrong blend at ${c},${y},${x}`);
        if (Math.abs(v - orig) > 1e-3 && got === orig) errors.push(`unchanged inside mask at ${c},${y},${x}`);
      }
    }
  }
  expect(errors.slice(0, 5)).toEqual([]);
  return anomalous;
}

describe('hard augmentations', () => {
  it('rotatePatch turns a known patch counter-clockwise like numpy rot90', () => {
    const p = fromRows([
      [1, 2, 3],
      [4, 5, 6],
    ]);
    expect(rows(rotatePatch(p, 1))).toEqual([
      [3, 6],
      [2, 5],
      [1, 4],
    ]);
    expect(rows(rotatePatch(p, 2))).toEqual([
      [6, 5, 4],
      [3, 2, 1],
    ]);
    expect(rows(rotatePatch(p, 3))).toEqual([
      [4, 1],
      [5, 2],
      [6, 3],
    ]);
    expect(rows(rotatePatch(p, 4))).toEqual(rows(p));
  });

  it('rotatePatchAngle by 90 degrees equals a quarter turn on a square patch', () => {
    const sq = gradientImage(2, 5, 5, 3);
    const a = rotatePatchAngle(sq, 90);
    const b = rotatePatch(sq, 1);
    a.data.forEach((v, i) => expect(v).toBeCloseTo(b.data[i], 5));
  });

  it('perm shuffles whole k x k tiles: same multiset of pixels, never the identity', () => {
    const rng = new Rng(4);
    const img = gradientImage(3, 9, 8, 1); // 9 rows crop to 8 for k = 2
    for (let trial = 0; trial < 20; trial++) {
      const res = permutePatch(img, 2, rng);
      expect(res).not.toBeNull();
      const { image, order } = res!;
      expect([image.height, image.width]).toEqual([8, 8]);
      expect([...order].sort()).toEqual([0, 1, 2, 3]);
      expect(order).not.toEqual([0, 1, 2, 3]);
      const cropped = cutPatch(img, { top: 0, left: 0, height: 8, width: 8 });
      expect(Array.from(image.data).sort()).toEqual(Array.from(cropped.data).sort());
      // each tile position holds exactly the source tile named by order
      for (let t = 0; t < 4; t++) {
        const dst = cutPatch(image, { top: Math.floor(t / 2) * 4, left: (t % 2) * 4, height: 4, width: 4 });
        const s = order[t];
        const src = cutPatch(cropped, { top: Math.floor(s / 2) * 4, left: (s % 2) * 4, height: 4, width: 4 });
        expect(Array.from(dst.data)).toEqual(Array.from(src.data));
      }
    }
    expect(permutePatch(createImage(1, 1, 5), 2, rng)).toBeNull();
    const p3 = permutePatch(img, 3, rng)!;
    expect([p3.image.height, p3.image.width]).toEqual([9, 6]);
  });

  it('colour jitter changes colours (RGB) and intensities (gray), and hue-only keeps brightness order', () => {
    const rng = new Rng(5);
    const rgb = createImage(3, 2, 2);
    rgb.data.set([0.6, 0.6, 0.6, 0.6, 0.3, 0.3, 0.3, 0.3, 0.2, 0.2, 0.2, 0.2]);
    for (let t = 0; t < 20; t++) {
      const out = colorJitter(rgb, drawJitter(rng));
      const maxDiff = Math.max(...Array.from(out.data, (v, i) => Math.abs(v - rgb.data[i])));
      expect(maxDiff).toBeGreaterThan(0.02);
    }
    const gray = createImage(1, 2, 2, 0.5);
    gray.data[0] = 0.2;
    const g = colorJitter(gray, drawJitter(rng));
    expect(g.channels).toBe(1);
    expect(Math.max(...Array.from(g.data, (v, i) => Math.abs(v - gray.data[i])))).toBeGreaterThan(0.02);
    // pure hue rotation by a third of a turn maps red to green
    const red = createImage(3, 1, 1);
    red.data.set([1, 0, 0]);
    const h = colorJitter(red, { brightness: 1, contrast: 1, saturation: 1, hue: 1 / 3 });
    expect(Array.from(h.data).map((v) => Math.round(v * 1000) / 1000)).toEqual([0, 1, 0]);
  });
});

describe('region shapes and feathering', () => {
  it('perlin and gmm give irregular, non-empty regions; rect fills the box', () => {
    const rng = new Rng(6);
    for (const shape of ['perlin', 'gmm'] as const) {
      for (let t = 0; t < 10; t++) {
        const r = regionShape(shape, 20, 30, rng);
        const frac = r.reduce((s, v) => s + v, 0) / r.length;
        expect(frac).toBeGreaterThan(0.2);
        expect(frac).toBeLessThan(0.8);
      }
    }
    expect(regionShape('rect', 4, 5, rng).every((v) => v === 1)).toBe(true);
  });

  it('stroke: a thin curve (at most 3 px across) running most of the longer side of its box', () => {
    const rng = new Rng(11);
    for (let t = 0; t < 20; t++) {
      const [h, w] = t % 2 ? [12, 40] : [40, 12];
      const r = regionShape('stroke', h, w, rng);
      const at = (along: number, across: number) => (h >= w ? r[along * w + across] : r[across * w + along]);
      const long = Math.max(h, w);
      const short = Math.min(h, w);
      let covered = 0;
      for (let i = 0; i < long; i++) if (Array.from({ length: short }, (_, j) => at(i, j)).some(Boolean)) covered++;
      expect(covered / long).toBeGreaterThan(0.7);
      // thin: no 5 x 5 block is filled anywhere (a 3 px line never holds one, a blob does)
      for (let y = 0; y + 5 <= h; y++) {
        for (let x = 0; x + 5 <= w; x++) {
          let full = true;
          for (let k = 0; k < 25 && full; k++) full = r[(y + Math.floor(k / 5)) * w + x + (k % 5)] === 1;
          expect(full).toBe(false);
        }
      }
      const frac = r.reduce((a, v) => a + v, 0) / r.length;
      expect(frac).toBeGreaterThan(0);
      expect(frac).toBeLessThan(0.35);
    }
  });

  it('log-uniform areas: as many patches per octave, so small ones are common', () => {
    const normal = gradientImage(1, 64, 64);
    const areas = (areaSampling: 'uniform' | 'log-uniform') =>
      Array.from({ length: 300 }, (_, seed) => {
        const { pasteBox } = makeSyntheticAnomaly(normal, new Rng(seed), {
          hardAugmentation: false,
          areaRange: [0.001, 0.1],
          areaSampling,
        }).info;
        return (pasteBox.height * pasteBox.width) / (64 * 64);
      });
    const below = (a: number[], x: number) => a.filter((v) => v < x).length / a.length;
    // P(area < 0.01): 0.5 log-uniformly (one of two decades), ~0.09 uniformly
    expect(below(areas('log-uniform'), 0.01)).toBeGreaterThan(0.4);
    expect(below(areas('uniform'), 0.01)).toBeLessThan(0.15);
  });

  it("'mixed' draws from mixedShapes only", () => {
    const normal = gradientImage(1, 48, 48);
    for (let seed = 0; seed < 30; seed++) {
      const r = makeSyntheticAnomaly(normal, new Rng(seed), { maskShape: 'mixed', mixedShapes: ['rect'] });
      expect(r.info.alpha.every((a) => a === 1)).toBe(true);
    }
    expect(() => makeSyntheticAnomaly(normal, new Rng(1), { maskShape: 'mixed', mixedShapes: [] })).toThrow(
      /mixedShapes/,
    );
  });

  it('feather alpha is 1 deep inside and small at the border', () => {
    const region = new Uint8Array(11 * 11).fill(1);
    const a = featherAlpha(region, 11, 11, 4);
    expect(a[5 * 11 + 5]).toBe(1);
    expect(a[0]).toBeCloseTo(0.25, 6);
    expect(a[5 * 11 + 1]).toBeCloseTo(0.5, 6);
  });
});

describe('makeSyntheticAnomaly', () => {
  const base: AnomalyOptions = { ...paperAnomalyOptions };

  it('plain CutPaste: mask is exactly the paste box and the box holds the cut patch', () => {
    const normal = gradientImage(3, 40, 48);
    for (let seed = 0; seed < 20; seed++) {
      const res = makeSyntheticAnomaly(normal, new Rng(seed), { ...base, hardAugmentation: false });
      const { cutBox, pasteBox } = res.info;
      expect([pasteBox.height, pasteBox.width]).toEqual([cutBox.height, cutBox.width]);
      const area = (pasteBox.height * pasteBox.width) / (40 * 48);
      expect(area).toBeGreaterThan(0.01);
      expect(area).toBeLessThan(0.17);
      const ratio = pasteBox.height / pasteBox.width;
      expect(ratio).toBeGreaterThan(0.2);
      expect(ratio).toBeLessThan(4.5);
      expect(Array.from(res.info.patch.data)).toEqual(Array.from(cutPatch(normal, cutBox).data));
      expect(checkMaskExact(normal, res)).toBe(pasteBox.height * pasteBox.width);
      expect(res.mask.channels).toBe(1);
    }
  });

  it('mask marks exactly the changed pixels for every shape, blend, source and channel count', () => {
    const donor = gradientImage(3, 20, 20, 9); // different size: resized
    for (const channels of [1, 3]) {
      const normal = gradientImage(channels, 32, 32, channels);
      for (const maskShape of ['rect', 'perlin', 'gmm', 'stroke'] as const) {
        for (const blend of ['hard', 'soft'] as const) {
          for (const source of ['self', 'other-image', 'texture'] as const) {
            for (const intensity of [1, 0.6]) {
              const rng = new Rng(
                channels * 1000 + maskShape.length * 10 + blend.length + source.length + intensity * 7,
              );
              const res = makeSyntheticAnomaly(normal, rng, { maskShape, blend, source, intensity }, donor);
              expect(res.image.channels).toBe(channels);
              expect(checkMaskExact(normal, res)).toBeGreaterThan(0);
              if (blend === 'soft') {
                const a = res.info.alpha.filter((v) => v > 0);
                expect(Math.min(...a)).toBeGreaterThanOrEqual(SOFT_VISIBLE_THRESHOLD * Math.min(1, intensity) - 1e-6);
              }
            }
          }
        }
      }
    }
  });

  it('applies each hard augmentation with probability ~0.5', () => {
    const normal = gradientImage(3, 32, 32);
    const counts = { rotation: 0, perm: 0, jitter: 0 };
    let none = 0;
    const draws = 400;
    for (let s = 0; s < draws; s++) {
      const { info } = makeSyntheticAnomaly(normal, new Rng(10_000 + s));
      for (const k of ['rotation', 'perm', 'jitter'] as const) if (info.applied[k]) counts[k]++;
      if (!info.applied.rotation && !info.applied.perm && !info.applied.jitter) none++;
      if (info.applied.rotation) expect([90, 180, 270]).toContain(info.rotationDegrees);
    }
    for (const k of ['rotation', 'perm', 'jitter'] as const) {
      expect(counts[k] / draws, k).toBeGreaterThan(0.42);
      expect(counts[k] / draws, k).toBeLessThan(0.58);
    }
    expect(none / draws).toBeGreaterThan(0.06); // ~1/8
    expect(none / draws).toBeLessThan(0.2);
    const off = makeSyntheticAnomaly(normal, new Rng(1), { hardAugmentation: false }).info.applied;
    expect(off).toEqual({ rotation: false, perm: false, jitter: false });
  });

  it('rotation by any angle stays in the patch box', () => {
    const normal = gradientImage(1, 32, 32);
    let rotated = 0;
    for (let s = 0; s < 20; s++) {
      const res = makeSyntheticAnomaly(normal, new Rng(s), { rotation: 'any' });
      if (res.info.applied.rotation) {
        rotated++;
        expect(res.info.rotationDegrees).toBeGreaterThanOrEqual(20);
        expect(res.info.rotationDegrees).toBeLessThanOrEqual(340);
      }
      checkMaskExact(normal, res);
    }
    expect(rotated).toBeGreaterThan(0);
  });

  it('is deterministic for a seed and differs across seeds', () => {
    const normal = gradientImage(3, 24, 24);
    const opts = { maskShape: 'perlin' as const, blend: 'soft' as const };
    const a = makeSyntheticAnomaly(normal, new Rng(42), opts);
    const b = makeSyntheticAnomaly(normal, new Rng(42), opts);
    const c = makeSyntheticAnomaly(normal, new Rng(43), opts);
    expect(Array.from(a.image.data)).toEqual(Array.from(b.image.data));
    expect(Array.from(a.mask.data)).toEqual(Array.from(b.mask.data));
    expect(Array.from(a.mask.data)).not.toEqual(Array.from(c.mask.data));
  });

  it("placement 'anywhere' covers corners as often as the centre, cut off at the border; 'inside' does not", () => {
    const normal = gradientImage(1, 32, 32);
    // share of draws that touch the 8x8 corner blocks, relative to the central 8x8 block
    const cornerToCentre = (placement: 'inside' | 'anywhere'): number => {
      let corners = 0;
      let centre = 0;
      for (let seed = 0; seed < 600; seed++) {
        const res = makeSyntheticAnomaly(normal, new Rng(seed), { ...base, placement, hardAugmentation: false });
        const changed = checkMaskExact(normal, res);
        expect(changed).toBeGreaterThan(0);
        const hit = (y0: number, x0: number): number => {
          for (let y = y0; y < y0 + 8; y++)
            for (let x = x0; x < x0 + 8; x++) if (res.mask.data[y * 32 + x] === 0) return 1;
          return 0;
        };
        corners += (hit(0, 0) + hit(0, 24) + hit(24, 0) + hit(24, 24)) / 4;
        centre += hit(12, 12);
      }
      return corners / centre;
    };
    expect(cornerToCentre('inside')).toBeLessThan(0.6);
    expect(cornerToCentre('anywhere')).toBeGreaterThan(0.8);
  });

  it("placement 'seams' crosses only the tile's seams; without seams it is 'inside', draw for draw", () => {
    const normal = gradientImage(1, 32, 32);
    const opts = { ...base, hardAugmentation: false };
    const seams = { top: true, bottom: false, left: false, right: true };
    let cutAtTop = 0;
    let cutAtRight = 0;
    for (let seed = 0; seed < 300; seed++) {
      const res = makeSyntheticAnomaly(normal, new Rng(seed), { ...opts, placement: 'seams' }, undefined, seams);
      expect(checkMaskExact(normal, res)).toBeGreaterThan(0);
      const box = res.info.pasteBox;
      // closed edges: never overhung
      expect(box.left).toBeGreaterThanOrEqual(0);
      expect(box.top + box.height).toBeLessThanOrEqual(32);
      if (box.top < 0) cutAtTop++;
      if (box.left + box.width > 32) cutAtRight++;
      const inside = makeSyntheticAnomaly(normal, new Rng(seed), { ...opts, placement: 'inside' });
      const noSeams = makeSyntheticAnomaly(normal, new Rng(seed), { ...opts, placement: 'seams' });
      expect(noSeams.info.pasteBox).toEqual(inside.info.pasteBox);
      expect(Array.from(noSeams.image.data)).toEqual(Array.from(inside.image.data));
      expect(Array.from(noSeams.mask.data)).toEqual(Array.from(inside.mask.data));
    }
    expect(cutAtTop).toBeGreaterThan(30);
    expect(cutAtRight).toBeGreaterThan(30);
  });

  it('rejects bad options and a missing donor with clear errors', () => {
    const normal = gradientImage(1, 16, 16);
    expect(() => makeSyntheticAnomaly(normal, new Rng(1), { source: 'other-image' })).toThrow(/needs a donor/);
    expect(() => makeSyntheticAnomaly(normal, new Rng(1), { areaRange: [0.5, 0.1] })).toThrow(/areaRange/);
    expect(() => makeSyntheticAnomaly(normal, new Rng(1), { maskShape: 'star' as 'rect' })).toThrow(/maskShape.*star/);
    expect(() => makeSyntheticAnomaly(normal, new Rng(1), { intensity: 0 })).toThrow(/intensity/);
    expect(() => makeSyntheticAnomaly(normal, new Rng(1), { placement: 'edge' as 'inside' })).toThrow(/placement/);
    expect(Array.from(new Set(normalMask(normal).data))).toEqual([1]);
  });
});

describe('writeSynthSamples', () => {
  it('writes image | mask strips', async () => {
    const images = [gradientImage(3, 16, 16, 1), gradientImage(3, 16, 16, 2)];
    const files = await writeSynthSamples(path.join(tmp, 'samples'), images, 3, 7, { source: 'other-image' });
    expect(files.map((f) => path.basename(f))).toEqual(['sample_000.png', 'sample_001.png', 'sample_002.png']);
    const strip = await loadImage(files[0]);
    expect([strip.channels, strip.height, strip.width]).toEqual([3, 16, 34]);
    // the mask half is white except for the anomalous region
    const n = 16 * 34;
    let black = 0;
    for (let y = 0; y < 16; y++)
      for (let x = 18; x < 34; x++) if (strip.data[y * 34 + x] === 0 && strip.data[n + y * 34 + x] === 0) black++;
    expect(black).toBeGreaterThan(0);
  });
});
