import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadImage } from '../image/io.js';
import { createImage, type Image } from '../image/types.js';
import { Rng } from '../util/rng.js';
import {
  formulaStream,
  parameterSweep,
  renderFormulaDefect,
  resolveFormulaConfig,
  sampleFormulaDefect,
  writeFormulaSamples,
  type FormulaDefectParams,
  type GaussianComponent,
} from './formula.js';
import { PROCEDURAL_FAMILIES, proceduralTexture } from './texture.js';

/** Horizontal and vertical extent (in pixels, inclusive) of the 1-pixels of a mask. */
function extents(mask: Image): { dx: number; dy: number; count: number } {
  let x0 = Infinity;
  let x1 = -Infinity;
  let y0 = Infinity;
  let y1 = -Infinity;
  let count = 0;
  for (let y = 0; y < mask.height; y++) {
    for (let x = 0; x < mask.width; x++) {
      if (mask.data[y * mask.width + x] !== 1) continue;
      count++;
      x0 = Math.min(x0, x);
      x1 = Math.max(x1, x);
      y0 = Math.min(y0, y);
      y1 = Math.max(y1, y);
    }
  }
  return { dx: x1 - x0 + 1, dy: y1 - y0 + 1, count };
}

function params(components: GaussianComponent[], over: Partial<FormulaDefectParams> = {}): FormulaDefectParams {
  return {
    components,
    kind: 'intensity',
    amplitude: 0.4,
    direction: [-1, -1, -1],
    textureScale: 4,
    noiseSeed: 1,
    threshold: 0.1,
    sharpness: 3,
    ...over,
  };
}

const S = 64;
const centre = (S - 1) / 2;

describe('sampleFormulaDefect', () => {
  it('is deterministic for a seed and differs between seeds', () => {
    const base = proceduralTexture(3, 48, 48, new Rng(1));
    const a = sampleFormulaDefect(base, new Rng(42));
    const b = sampleFormulaDefect(base, new Rng(42));
    const c = sampleFormulaDefect(base, new Rng(43));
    expect(a.params).toEqual(b.params);
    expect(Array.from(a.image.data)).toEqual(Array.from(b.image.data));
    expect(Array.from(a.mask.data)).toEqual(Array.from(b.mask.data));
    expect(a.strength).toBe(b.strength);
    expect(a.params).not.toEqual(c.params);
    // The base is not modified.
    expect(Array.from(base.data)).toEqual(Array.from(proceduralTexture(3, 48, 48, new Rng(1)).data));
  });

  it('changes pixels only inside the mask (epsilon 0 outside); the mask is exactly where alpha > 0', () => {
    const rng = new Rng(7);
    for (let t = 0; t < 40; t++) {
      const base = proceduralTexture(t % 2 === 0 ? 3 : 1, 40, 40, rng.fork());
      const s = sampleFormulaDefect(base, rng.fork());
      const n = 40 * 40;
      let maskCount = 0;
      let maskAlphaMismatch = 0;
      let changedOutside = 0;
      for (let i = 0; i < n; i++) {
        if ((s.mask.data[i] === 1) !== s.alpha.data[i] > 0) maskAlphaMismatch++;
        if (s.mask.data[i] === 1) {
          maskCount++;
          continue;
        }
        for (let c = 0; c < base.channels; c++) if (s.image.data[c * n + i] !== base.data[c * n + i]) changedOutside++;
      }
      expect(maskAlphaMismatch).toBe(0);
      expect(changedOutside).toBe(0);
      expect(maskCount).toBeGreaterThan(0);
      expect(s.strength).toBeGreaterThanOrEqual(0);
      expect(s.strength).toBeLessThanOrEqual(1);
    }
  });

  it('inside the mask the change is alpha * amplitude (intensity defect on a mid-grey base)', () => {
    const base = createImage(3, S, S, 0.5);
    const comp: GaussianComponent = { cx: 30, cy: 34, sx: 8, sy: 5, rotation: 0.4, weight: 1 };
    const s = renderFormulaDefect(base, params([comp], { amplitude: 0.45 }));
    const n = S * S;
    let strongPixels = 0;
    for (let i = 0; i < n; i++) {
      for (let c = 0; c < 3; c++) {
        expect(s.image.data[c * n + i]).toBeCloseTo(0.5 - 0.45 * s.alpha.data[i], 6);
      }
      if (s.alpha.data[i] >= 0.05) {
        strongPixels++;
        expect(0.5 - s.image.data[i]).toBeGreaterThan(0.05 * 0.45 - 1e-6);
      }
    }
    expect(strongPixels).toBeGreaterThan(50);
  });

  it('x-std larger than y-std gives a horizontally elongated mask; rotation 90 degrees swaps the extents', () => {
    const base = createImage(1, S, S, 0.6);
    const comp: GaussianComponent = { cx: centre, cy: centre, sx: 10, sy: 3, rotation: 0, weight: 1 };
    const one = (p: FormulaDefectParams) => renderFormulaDefect(base, { ...p, direction: [-1] });
    const flat = extents(one(params([comp])).mask);
    expect(flat.dx).toBeGreaterThan(2.5 * flat.dy);
    const turned = extents(one(params([{ ...comp, rotation: Math.PI / 2 }])).mask);
    expect(turned.dx).toBe(flat.dy);
    expect(turned.dy).toBe(flat.dx);
    // y-std larger than x-std: vertically elongated.
    const tall = extents(one(params([{ ...comp, sx: 3, sy: 10 }])).mask);
    expect(tall.dy).toBeGreaterThan(2.5 * tall.dx);
    // 45 degrees: a diagonal, so the extents are about equal.
    const diag = extents(one(params([{ ...comp, rotation: Math.PI / 4 }])).mask);
    expect(Math.abs(diag.dx - diag.dy)).toBeLessThanOrEqual(1);
    // Expected half-width at threshold 0.1: sx * sqrt(2 ln 10) = 21.5 pixels either side.
    expect(Math.abs(flat.dx - 2 * 10 * Math.sqrt(2 * Math.log(10)))).toBeLessThanOrEqual(2);
  });

  it('sampled parameters stay inside the configured ranges', () => {
    const base = createImage(3, S, S, 0.5);
    const rng = new Rng(3);
    const cfg = {
      components: [2, 3] as [number, number],
      std: [0.05, 0.1] as [number, number],
      threshold: [0.2, 0.25] as [number, number],
    };
    const counts = new Set<number>();
    for (let t = 0; t < 30; t++) {
      const p = sampleFormulaDefect(base, rng, cfg).params;
      counts.add(p.components.length);
      for (const c of p.components) {
        expect(c.sx).toBeGreaterThanOrEqual(0.05 * S);
        expect(c.sx).toBeLessThanOrEqual(0.1 * S);
        expect(c.sy).toBeGreaterThanOrEqual(0.05 * S);
        expect(c.sy).toBeLessThanOrEqual(0.1 * S);
        expect(c.rotation >= 0 && c.rotation < Math.PI).toBe(true);
      }
      const first = p.components[0];
      expect(first.cx >= 0.1 * S && first.cx <= 0.9 * S && first.cy >= 0.1 * S && first.cy <= 0.9 * S).toBe(true);
      expect(p.threshold >= 0.2 && p.threshold <= 0.25).toBe(true);
      expect(p.direction.length).toBe(3);
      if (p.kind !== 'color') expect(new Set(p.direction).size).toBe(1);
    }
    expect([...counts].sort()).toEqual([2, 3]);
  });

  it('strength 0 <=> image unchanged; strength is monotone in intensity', () => {
    const base = proceduralTexture(3, S, S, new Rng(5), 'spectral');
    const comps: GaussianComponent[] = [
      { cx: 20, cy: 30, sx: 6, sy: 9, rotation: 0.3, weight: 1 },
      { cx: 30, cy: 26, sx: 4, sy: 3, rotation: 1.1, weight: 0.6 },
    ];
    const zero = renderFormulaDefect(base, params(comps, { amplitude: 0 }));
    expect(zero.strength).toBe(0);
    expect(Array.from(zero.image.data)).toEqual(Array.from(base.data));
    for (const kind of ['intensity', 'color', 'texture'] as const) {
      for (const sign of [-1, 1]) {
        let prev = -1;
        const strengths: number[] = [];
        for (let a = 0; a <= 1.0001; a += 0.1) {
          const p = params(comps, { kind, amplitude: Math.min(1, a), direction: [sign, 0.5 * sign, -0.3 * sign] });
          const s = renderFormulaDefect(base, p);
          expect(s.strength).toBeGreaterThanOrEqual(prev);
          prev = s.strength;
          strengths.push(s.strength);
        }
        expect(strengths[1]).toBeGreaterThan(0);
        expect(strengths[5]).toBeGreaterThan(strengths[1]);
      }
    }
    // Across random samples: strength 0 only when nothing changed.
    const rng = new Rng(8);
    for (let t = 0; t < 20; t++) {
      const s = sampleFormulaDefect(base, rng, { amplitude: [0, 0.02] });
      const changed = s.image.data.some((v, i) => v !== base.data[i]);
      expect(s.strength > 0).toBe(changed);
    }
  });

  it('colour defects shift channels differently; texture defects are noise modulated', () => {
    const base = createImage(3, S, S, 0.5);
    const comp: GaussianComponent = { cx: centre, cy: centre, sx: 12, sy: 12, rotation: 0, weight: 1 };
    const colour = renderFormulaDefect(base, params([comp], { kind: 'color', direction: [1, -0.5, 0.2] }));
    const n = S * S;
    const i = Math.round(centre) * S + Math.round(centre);
    const a = colour.alpha.data[i] * 0.4;
    expect(colour.image.data[i]).toBeCloseTo(0.5 + a, 6);
    expect(colour.image.data[n + i]).toBeCloseTo(0.5 - 0.5 * a, 6);
    expect(colour.image.data[2 * n + i]).toBeCloseTo(0.5 + 0.2 * a, 6);

    const tex = renderFormulaDefect(base, params([comp], { kind: 'texture', textureScale: 3, amplitude: 0.5 }));
    // Where alpha = 1 an intensity defect is flat; a texture defect varies with the noise.
    const changes: number[] = [];
    for (let k = 0; k < n; k++) if (tex.alpha.data[k] === 1) changes.push(0.5 - tex.image.data[k]);
    expect(changes.length).toBeGreaterThan(100);
    const mean = changes.reduce((s, v) => s + v, 0) / changes.length;
    const sd = Math.sqrt(changes.reduce((s, v) => s + (v - mean) ** 2, 0) / changes.length);
    expect(sd).toBeGreaterThan(0.03);
    for (const v of changes) expect(v).toBeGreaterThanOrEqual(-1e-6); // darker only
  });

  it('validates the config and parameters', () => {
    expect(() => resolveFormulaConfig({ components: [3, 1] })).toThrow(/components/);
    expect(() => resolveFormulaConfig({ amplitude: [0, 2] })).toThrow(/amplitude/);
    expect(() => resolveFormulaConfig({ kindWeights: { intensity: 0, color: 0, texture: 0 } })).toThrow(/kindWeights/);
    expect(() => resolveFormulaConfig({ defectFreeProbability: 1.5 })).toThrow(/defectFreeProbability/);
    const base = createImage(3, 8, 8, 0.5);
    const comp: GaussianComponent = { cx: 4, cy: 4, sx: 2, sy: 2, rotation: 0, weight: 1 };
    expect(() => renderFormulaDefect(base, params([comp], { direction: [1] }))).toThrow(/direction/);
    expect(() => renderFormulaDefect(base, params([comp], { threshold: 1 }))).toThrow(/threshold/);
    expect(() => renderFormulaDefect(base, params([{ ...comp, sx: 0 }]))).toThrow(/sx, sy, weight > 0/);
    // Only colour defects when asked.
    const rng = new Rng(2);
    for (let t = 0; t < 5; t++) {
      expect(sampleFormulaDefect(base, rng, { kindWeights: { intensity: 0, color: 1, texture: 0 } }).params.kind).toBe(
        'color',
      );
    }
  });
});

describe('proceduralTexture', () => {
  it('every family gives a non-flat image in [0, 1], deterministically', () => {
    for (const family of PROCEDURAL_FAMILIES) {
      for (const channels of [1, 3]) {
        const img = proceduralTexture(channels, 48, 48, new Rng(11), family);
        expect([img.channels, img.height, img.width]).toEqual([channels, 48, 48]);
        let lo = 1;
        let hi = 0;
        for (const v of img.data) {
          lo = Math.min(lo, v);
          hi = Math.max(hi, v);
        }
        expect(lo).toBeGreaterThanOrEqual(0);
        expect(hi).toBeLessThanOrEqual(1);
        expect(hi - lo).toBeGreaterThan(0.05);
        expect(Array.from(proceduralTexture(channels, 48, 48, new Rng(11), family).data)).toEqual(Array.from(img.data));
      }
    }
  });
});

describe('formulaStream', () => {
  it('is reproducible, mixes in defect-free samples, and uses the given bases', () => {
    const take = (n: number, seed: number) => {
      const it = formulaStream('procedural', seed, { defectFreeProbability: 0.3 }, 24, 3);
      return Array.from({ length: n }, () => it.next().value);
    };
    const a = take(120, 9);
    const b = take(5, 9);
    for (let i = 0; i < 5; i++) {
      expect(Array.from(a[i].image.data)).toEqual(Array.from(b[i].image.data));
      expect(a[i].params).toEqual(b[i].params);
    }
    const free = a.filter((s) => s.params === null);
    expect(free.length).toBeGreaterThan(20);
    expect(free.length).toBeLessThan(55);
    for (const s of free) {
      expect(s.strength).toBe(0);
      expect(s.mask.data.every((v) => v === 0)).toBe(true);
    }
    for (const s of a.filter((x) => x.params !== null)) expect(s.mask.data.some((v) => v === 1)).toBe(true);

    // Bases: larger images are cropped, smaller ones resized, channels kept.
    const big = createImage(1, 50, 40, 0.25);
    const small = createImage(1, 10, 12, 0.75);
    const it = formulaStream([big, small], 4, { defectFreeProbability: 1 }, 32);
    const seen = new Set<number>();
    for (let i = 0; i < 20; i++) {
      const s = it.next().value;
      expect([s.image.channels, s.image.height, s.image.width]).toEqual([1, 32, 32]);
      seen.add(Math.round(s.image.data[0] * 100));
    }
    expect([...seen].sort()).toEqual([25, 75]);
    expect(() => formulaStream([], 1).next()).toThrow(/no base images/);
  });
});

describe('parameterSweep and writeFormulaSamples', () => {
  it('sweep rows vary one parameter each, with the expected effect', () => {
    const base = createImage(3, S, S, 0.5);
    const rows = parameterSweep(base, 3);
    expect(rows.map((r) => r.name)).toEqual(['x-std', 'y-std', 'rotation', 'components', 'intensity', 'threshold']);
    const ext = (name: string) => rows.find((r) => r.name === name)!.samples.map((s) => extents(s.mask));
    const xs = ext('x-std');
    const ys = ext('y-std');
    for (let i = 1; i < xs.length; i++) {
      expect(xs[i].dx).toBeGreaterThan(xs[i - 1].dx);
      expect(ys[i].dy).toBeGreaterThan(ys[i - 1].dy);
    }
    const intensity = rows.find((r) => r.name === 'intensity')!;
    const byMagnitude = intensity.samples
      .map((s, i) => ({ a: Math.abs(intensity.values[i]), s: s.strength }))
      .sort((p, q) => p.a - q.a);
    for (let i = 1; i < byMagnitude.length; i++) expect(byMagnitude[i].s).toBeGreaterThanOrEqual(byMagnitude[i - 1].s);
    const thr = ext('threshold');
    for (let i = 1; i < thr.length; i++) expect(thr[i].count).toBeLessThan(thr[i - 1].count);
    const comps = rows.find((r) => r.name === 'components')!;
    comps.samples.forEach((s, i) => expect(s.params!.components.length).toBe(i + 1));
  });

  it('writes image|mask samples, an index, a contact sheet and a sweep sheet', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'formula-'));
    try {
      const res = await writeFormulaSamples(dir, 5, 1, {}, 'procedural', { size: 24, sheetColumns: 2, sheetRows: 2 });
      expect(res.samples.length).toBe(5);
      const first = await loadImage(res.samples[0]);
      expect([first.channels, first.height, first.width]).toEqual([3, 24, 24 * 2 + 2]);
      const lines = (await readFile(res.index, 'utf8')).trim().split('\n');
      expect(lines.length).toBe(5);
      const rec = JSON.parse(lines[0]) as { file: string; strength: number };
      expect(rec.file).toBe('sample_00000.png');
      expect(rec.strength).toBeGreaterThanOrEqual(0);
      const sheet = await loadImage(res.contactSheet);
      // 2 x 2 pairs of width 50, gap 4.
      expect([sheet.height, sheet.width]).toEqual([24 * 2 + 4, 50 * 2 + 4]);
      const sweep = await loadImage(res.parameterSweep);
      // 6 rows of (image over mask: 24 + 1 + 24) with gap 6; 6 columns of 24 with gap 3.
      expect([sweep.height, sweep.width]).toEqual([6 * 49 + 5 * 6, 6 * 24 + 5 * 3]);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
