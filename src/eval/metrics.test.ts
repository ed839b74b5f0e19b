import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import type { Image } from '../image/types.js';
import { Rng } from '../util/rng.js';
import {
  PixelMetricsAccumulator,
  auroc,
  averagePrecision,
  imageAuroc,
  imageConfusion,
  labelComponents,
  rocCurve,
  scoresFromNormalMap,
  youdenThreshold,
  type GroupMetrics,
} from './metrics.js';

function map(height: number, width: number, values: number[]): Image {
  if (values.length !== height * width) throw new Error('test map: wrong length');
  return { channels: 1, height, width, data: Float32Array.from(values) };
}

/** O(n^2) Mann-Whitney count: P(pos > neg) + 1/2 P(pos = neg). */
function pairwiseAuroc(scores: number[], labels: boolean[]): number {
  let wins = 0;
  let pairs = 0;
  for (let i = 0; i < scores.length; i++) {
    if (!labels[i]) continue;
    for (let j = 0; j < scores.length; j++) {
      if (labels[j]) continue;
      pairs++;
      if (scores[i] > scores[j]) wins += 1;
      else if (scores[i] === scores[j]) wins += 0.5;
    }
  }
  return wins / pairs;
}

describe('image-level AUROC / AP', () => {
  it('matches hand-worked values, with and without ties', () => {
    // sklearn's documented example: AUROC 0.75, AP 0.8333.
    expect(auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])).toBeCloseTo(0.75, 12);
    expect(averagePrecision([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])).toBeCloseTo(5 / 6, 12);
    // Ties: the two negatives tie with one positive (1/2 each), the other positive beats both: U = 3 of 4.
    expect(auroc([0.5, 0.5, 0.5, 0.9], [false, true, false, true])).toBeCloseTo(0.75, 12);
    const roc = rocCurve([0.5, 0.5, 0.5, 0.9], [false, true, false, true]);
    // The tied group is one step: (0, .5) -> (1, 1) directly.
    expect(roc.fpr).toEqual([0, 0, 1]);
    expect(roc.tpr).toEqual([0, 0.5, 1]);
    expect(roc.thresholds).toEqual([Infinity, 0.9, 0.5]);
    // AP with ties: thresholds 0.9 (R .5, P 1) then 0.5 (R 1, P 2/3): .5 + .5 * 2/3.
    expect(averagePrecision([0.5, 0.5, 0.9], [1, 0, 1])).toBeCloseTo(5 / 6, 12);
  });

  it('is 1 for a perfect predictor, 0 for an inverted one, 1/2 and the prevalence when all scores are equal', () => {
    const labels = [0, 0, 0, 1, 1];
    expect(imageAuroc([0.1, 0.2, 0.3, 0.8, 0.9], labels)).toBe(1);
    expect(averagePrecision([0.1, 0.2, 0.3, 0.8, 0.9], labels)).toBe(1);
    expect(imageAuroc([0.9, 0.8, 0.7, 0.2, 0.1], labels)).toBe(0);
    expect(imageAuroc([0.4, 0.4, 0.4, 0.4, 0.4], labels)).toBe(0.5);
    expect(averagePrecision([0.4, 0.4, 0.4, 0.4, 0.4], labels)).toBeCloseTo(2 / 5, 12);
  });

  it('is NaN without positives or without negatives, and rejects NaN scores', () => {
    expect(auroc([0.1, 0.2], [0, 0])).toBeNaN();
    expect(auroc([0.1, 0.2], [1, 1])).toBeNaN();
    expect(averagePrecision([0.1, 0.2], [0, 0])).toBeNaN();
    expect(() => auroc([NaN, 0.2], [0, 1])).toThrow(/NaN/);
    expect(() => auroc([0.2], [0, 1])).toThrow(/labels/);
  });

  it('equals the O(n^2) pairwise count on random data with many ties', () => {
    const rng = new Rng(7);
    for (let trial = 0; trial < 5; trial++) {
      const n = 300 + trial * 37;
      const labels: boolean[] = [];
      const scores: number[] = [];
      for (let i = 0; i < n; i++) {
        const pos = rng.chance(0.3);
        labels.push(pos);
        // Quantised so ties are frequent, and the classes overlap.
        scores.push(Math.round((rng.normal() + (pos ? 0.7 : 0)) * 4) / 4);
      }
      expect(auroc(scores, labels)).toBeCloseTo(pairwiseAuroc(scores, labels), 12);
    }
  });
});

describe('labelComponents', () => {
  it('uses 8-connectivity like scipy.ndimage.label with a 3x3 structure (4 on request)', () => {
    // A diagonal chain and a separate pixel.
    const mask = [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0];
    const eight = labelComponents(mask, 5, 4);
    expect(eight.sizes).toEqual([3, 1]);
    expect(Array.from(eight.labels)).toEqual([1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 2, 0, 0, 0]);
    expect(labelComponents(mask, 5, 4, 4).sizes).toEqual([1, 1, 1, 1]);
    // Any value > 0 is defective (MVTec masks are 0 / 255).
    expect(labelComponents([0, 255, 0.5, 0], 2, 2).sizes).toEqual([2]);
  });
});

describe('PixelMetricsAccumulator', () => {
  it('computes PRO / AUPRO exactly on a hand-worked case (one-pixel region, a good image)', () => {
    // Image 1 (4x4): region A = pixels 0,1 (scores .9, .2), region B = pixel 15 (score .6), normals at .1 and one .7.
    const s1 = new Array(16).fill(0.1);
    s1[0] = 0.9;
    s1[1] = 0.2;
    s1[15] = 0.6;
    s1[5] = 0.7;
    const m1 = new Array(16).fill(0);
    m1[0] = m1[1] = m1[15] = 1;
    // Good image: normals at .1 and one at .5. Normal pixels overall: 13 + 16 = 29.
    const s2 = new Array(16).fill(0.1);
    s2[3] = 0.5;
    const acc = new PixelMetricsAccumulator();
    acc.add(map(4, 4, s1), map(4, 4, m1), 'broken');
    acc.add(map(4, 4, s2), null, 'good');
    const m = acc.compute().overall;
    expect(m.regions).toBe(2);
    expect(m.defectPixels).toBe(3);
    expect(m.pixels).toBe(32);
    // Curve: (0,0) (0,.25) (1/29,.25) (1/29,.75) (2/29,.75) (2/29,1) (1,1).
    // Area to .3: .25/29 + .75/29 + (.3 - 2/29) * 1, divided by .3.
    const expected = (0.25 / 29 + 0.75 / 29 + (0.3 - 2 / 29)) / 0.3;
    expect(m.aupro).toBeCloseTo(expected, 12);
    expect(m.curves.pro.fpr[0]).toBe(0);
    expect(m.curves.pro.pro[0]).toBe(0);
    expect(m.curves.pro.fpr.at(-1)).toBeCloseTo(0.3, 12);
    expect(m.curves.pro.pro.at(-1)).toBeCloseTo(1, 12);
    // Pixel AUROC by hand: positives .9 .6 .2 against 29 normals (27 at .1, one .5, one .7).
    // .9 beats 29, .6 beats 28, .2 beats 27: (29 + 28 + 27) / 87.
    expect(m.pixelAuroc).toBeCloseTo(84 / 87, 12);
  });

  it('treats a tie between normal and defect pixels as one diagonal step of the PRO curve', () => {
    const acc = new PixelMetricsAccumulator();
    acc.add(map(1, 4, [0.5, 0.5, 0, 0]), map(1, 4, [1, 0, 0, 0]), 'x');
    const m = acc.compute().overall;
    // Curve (0,0) -> (1/3, 1): PRO at FPR .3 is .9, area .5 * .3 * .9 = .135, / .3 = .45.
    expect(m.aupro).toBeCloseTo(0.45, 12);
    expect(m.pixelAuroc).toBeCloseTo((1 * 2 + 0.5) / 3, 12);
  });

  it('gives 1 (never more) for a perfect predictor and 0 for an inverted one', () => {
    const gt = map(3, 3, [0, 1, 0, 0, 1, 0, 0, 0, 1]);
    const perfect = new PixelMetricsAccumulator();
    perfect.add(map(3, 3, [0.1, 0.9, 0.2, 0.3, 0.8, 0.1, 0.2, 0.2, 0.7]), gt, 'a');
    perfect.add(map(3, 3, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.1, 0.2, 0.3]), null, 'good');
    const p = perfect.compute().overall;
    expect(p.pixelAuroc).toBe(1);
    expect(p.pixelAp).toBe(1);
    expect(p.aupro).toBe(1);
    expect(p.f1.f1).toBe(1);
    expect(p.iou.iou).toBe(1);
    expect(p.imageAuroc).toBe(1);
    const inverted = new PixelMetricsAccumulator();
    inverted.add(map(3, 3, [0.9, 0.1, 0.8, 0.7, 0.2, 0.9, 0.8, 0.8, 0.3]), gt, 'a');
    const q = inverted.compute().overall;
    expect(q.pixelAuroc).toBe(0);
    expect(q.aupro).toBe(0);
  });

  it('handles an all-equal score map', () => {
    const acc = new PixelMetricsAccumulator();
    acc.add(map(2, 3, [0.4, 0.4, 0.4, 0.4, 0.4, 0.4]), map(2, 3, [1, 1, 0, 0, 0, 0]), 'a');
    const m = acc.compute().overall;
    expect(m.pixelAuroc).toBe(0.5);
    expect(m.pixelAp).toBeCloseTo(2 / 6, 12);
    // One step from (0,0) to (1,1): PRO(.3) = .3, area .045, / .3 = .15.
    expect(m.aupro).toBeCloseTo(0.15, 12);
    // Every grid threshold equals the score, so everything is predicted defective: IoU = 2 / 6.
    expect(m.iou.iou).toBeCloseTo(2 / 6, 12);
    expect(m.iou.threshold).toBeCloseTo(0.4, 6);
    expect(m.f1.f1).toBeCloseTo((2 * 2) / (2 + 4 + 2), 12);
  });

  it('treats an empty ground-truth mask as a normal image; metrics without defects are NaN', () => {
    const acc = new PixelMetricsAccumulator();
    const stats = acc.add(map(2, 2, [0.1, 0.2, 0.3, 0.4]), map(2, 2, [0, 0, 0, 0]), 'good');
    expect(stats.anomalous).toBe(false);
    expect(stats.pixelAuroc).toBeNaN();
    expect(stats.imageScore).toBeCloseTo(0.4, 6);
    acc.add(map(2, 2, [0.5, 0.5, 0.5, 0.5]), null, 'good');
    const m = acc.compute();
    expect(m.perDefect).toEqual({});
    expect(m.overall.defectPixels).toBe(0);
    expect(m.overall.pixelAuroc).toBeNaN();
    expect(m.overall.pixelAp).toBeNaN();
    expect(m.overall.aupro).toBeNaN();
    expect(m.overall.iou.iou).toBeNaN();
    expect(m.overall.imageAuroc).toBeNaN();
  });

  it('searches IoU over 10,000 steps of [min, max] and picks the right threshold', () => {
    // Defects: four at .8, one at .3. Normals: three at .5, one at .6, the rest at .2.
    // IoU: t in (.2,.3] -> 5/9; (.3,.5] -> 4/9; (.5,.6] -> 4/6; (.6,.8] -> 4/5 (best).
    const s = [0.8, 0.8, 0.8, 0.8, 0.3, 0.5, 0.5, 0.5, 0.6, 0.2, 0.2, 0.2];
    const g = [1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0];
    const acc = new PixelMetricsAccumulator();
    acc.add(map(3, 4, s), map(3, 4, g), 'a');
    const { iou } = acc.compute().overall;
    const lo = Math.fround(0.2);
    const hi = Math.fround(0.8);
    expect(iou.steps).toBe(10_000);
    expect(iou.min).toBe(lo);
    expect(iou.max).toBe(hi);
    expect(iou.iou).toBeCloseTo(0.8, 12);
    expect([iou.tp, iou.fp, iou.fn]).toEqual([4, 0, 1]);
    // Lowest grid threshold above float32(.6): k = 6667.
    expect(iou.threshold).toBe(lo + (hi - lo) * (6667 / 10_000));
    expect(iou.threshold).toBeGreaterThan(Math.fround(0.6));
    expect(lo + (hi - lo) * (6666 / 10_000)).toBeLessThanOrEqual(Math.fround(0.6));
  });

  it('plots IoU over thresholds in [0, 1] when scores are in [0, 1], else over [min, max]', () => {
    const inUnit = new PixelMetricsAccumulator({ iouCurvePoints: 11 });
    inUnit.add(map(1, 4, [0.2, 0.7, 0.3, 0.4]), map(1, 4, [0, 1, 0, 0]), 'a');
    const c = inUnit.compute().overall.curves.iou;
    expect(c.threshold).toHaveLength(11);
    expect(c.threshold[0]).toBe(0);
    expect(c.threshold[10]).toBe(1);
    // t = .5: only the .7 pixel -> IoU 1; t = 0: everything -> 1/4; t = 1: nothing -> 0.
    expect(c.iou[5]).toBe(1);
    expect(c.iou[0]).toBe(0.25);
    expect(c.iou[10]).toBe(0);
    const outside = new PixelMetricsAccumulator({ iouCurvePoints: 5 });
    outside.add(map(1, 4, [-2, 6, 0, 1]), map(1, 4, [0, 1, 0, 0]), 'a');
    const d = outside.compute().overall.curves.iou;
    expect(d.threshold).toEqual([-2, 0, 2, 4, 6]);
    expect(d.iou).toEqual([0.25, 1 / 3, 1, 1, 1]);
  });

  it('finds the best F1 and its threshold', () => {
    const acc = new PixelMetricsAccumulator();
    acc.add(map(1, 4, [0.1, 0.4, 0.35, 0.8]), map(1, 4, [0, 0, 1, 1]), 'a');
    const { f1 } = acc.compute().overall;
    expect(f1.f1).toBeCloseTo(0.8, 12);
    expect(f1.threshold).toBe(Math.fround(0.35));
    expect(f1.precision).toBeCloseTo(2 / 3, 12);
    expect(f1.recall).toBe(1);
  });

  it('evaluates each defect type on its images plus the good ones, and can be recomputed after more adds', () => {
    const rng = new Rng(3);
    const make = (defective: boolean): [Image, Image | null] => {
      const s: number[] = [];
      const g: number[] = [];
      for (let i = 0; i < 64; i++) {
        const d = defective && i % 8 < 3 && i < 24;
        g.push(d ? 1 : 0);
        s.push(Math.round((rng.next() + (d ? 0.4 : 0)) * 16) / 16);
      }
      return [map(8, 8, s), defective ? map(8, 8, g) : null];
    };
    const items: Array<[string, Image, Image | null]> = [];
    for (const t of ['good', 'a', 'good', 'b', 'a', 'good', 'b', 'a']) items.push([t, ...make(t !== 'good')]);
    const all = new PixelMetricsAccumulator();
    const partial = new PixelMetricsAccumulator();
    items.forEach(([t, s, g], i) => {
      all.add(s, g, t);
      partial.add(s, g, t);
      if (i === 3) partial.compute(); // forces a merge of already-sorted data with later images
    });
    const full = all.compute();
    expect(partial.compute()).toEqual(full);
    expect(Object.keys(full.perDefect)).toEqual(['a', 'b']);
    expect(full.imageCounts).toEqual({ a: 3, b: 2, good: 3 });
    for (const t of ['a', 'b']) {
      const only = new PixelMetricsAccumulator();
      for (const [u, s, g] of items) if (u === t || u === 'good') only.add(s, g, u);
      expect(full.perDefect[t]).toEqual(only.compute().overall);
    }
    expect(full.perDefect.a.images).toBe(6);
    // The pooled pixel AUROC equals the pairwise count over all pixels.
    const scores: number[] = [];
    const labels: boolean[] = [];
    for (const [, s, g] of items) {
      s.data.forEach((v, i) => {
        scores.push(v);
        labels.push(g !== null && g.data[i] > 0);
      });
    }
    expect(full.overall.pixelAuroc).toBeCloseTo(pairwiseAuroc(scores, labels), 12);
  });

  it('reports per-image statistics and validates its inputs', () => {
    const acc = new PixelMetricsAccumulator();
    const st = acc.add(map(1, 4, [0.1, 0.9, 0.5, 0.2]), map(1, 4, [0, 1, 1, 0]), 'a', 0.42);
    expect(st).toMatchObject({ index: 0, defectType: 'a', anomalous: true, imageScore: 0.42, defectPixels: 2 });
    expect(st.maxScore).toBeCloseTo(0.9, 6);
    expect(st.regions).toBe(1);
    expect(st.pixelAuroc).toBe(1);
    expect(() => acc.add(map(1, 4, [0, 0, 0, 0]), map(2, 2, [0, 0, 0, 0]), 'a')).toThrow(/does not match/);
    expect(() => acc.add(map(1, 2, [0, NaN]), null, 'a')).toThrow(/non-finite/);
    expect(() => new PixelMetricsAccumulator().compute()).toThrow(/no images/);
    expect(acc.imageCount).toBe(1);
  });

  it('converts a normal-region map to anomaly scores', () => {
    const s = scoresFromNormalMap(map(1, 3, [1, 0.25, 0]));
    expect(Array.from(s.data)).toEqual([0, 0.75, 1]);
  });
});

interface Reference {
  proFprLimit: number;
  iouSteps: number;
  imageLevel: { scores: number[]; labels: boolean[]; auroc: number; ap: number };
  pixelLevel: {
    height: number;
    width: number;
    images: Array<{ defectType: string; scores: number[]; mask: number[] | null }>;
    expected: { overall: RefGroup; perDefect: Record<string, RefGroup> };
  };
}
interface RefGroup {
  images: number;
  pixels: number;
  defectPixels: number;
  regions: number;
  pixelAuroc: number;
  pixelAp: number;
  aupro: number;
  imageAuroc: number;
  f1: { f1: number; threshold: number };
  iou: { iou: number; threshold: number; min: number; max: number };
}

/**
 * Fixture `fixtures/reference.json` was made by `fixtures/make_reference.py` (numpy 1.24, scipy 1.10,
 * scikit-learn 1.2): seeded random maps with ties and masks with diagonal chains; AUROC / AP from sklearn.metrics,
 * PRO from a re-implementation of MVTec AD's official compute_pro (scipy.ndimage.label, 3x3 structure, float32
 * FPR) and trapezoid, IoU from a numpy search over 10,000 steps. See the script's docstring to regenerate it.
 */
describe('against the independent Python reference (sklearn, scipy, MVTec-style PRO)', () => {
  const ref = JSON.parse(readFileSync(new URL('./fixtures/reference.json', import.meta.url), 'utf8')) as Reference;

  it('image level', () => {
    expect(auroc(ref.imageLevel.scores, ref.imageLevel.labels)).toBeCloseTo(ref.imageLevel.auroc, 12);
    expect(averagePrecision(ref.imageLevel.scores, ref.imageLevel.labels)).toBeCloseTo(ref.imageLevel.ap, 12);
  });

  it('pixel level, overall and per defect type', () => {
    const { height, width, images, expected } = ref.pixelLevel;
    const acc = new PixelMetricsAccumulator({ proFprLimit: ref.proFprLimit, iouSteps: ref.iouSteps });
    for (const im of images)
      acc.add(map(height, width, im.scores), im.mask && map(height, width, im.mask), im.defectType);
    const got = acc.compute();
    const check = (g: GroupMetrics, e: RefGroup): void => {
      expect(g.images).toBe(e.images);
      expect(g.pixels).toBe(e.pixels);
      expect(g.defectPixels).toBe(e.defectPixels);
      expect(g.regions).toBe(e.regions);
      expect(g.pixelAuroc).toBeCloseTo(e.pixelAuroc, 12);
      expect(g.pixelAp).toBeCloseTo(e.pixelAp, 12);
      // The official code accumulates the FPR in float32.
      expect(Math.abs(g.aupro - e.aupro)).toBeLessThan(1e-6);
      expect(g.imageAuroc).toBeCloseTo(e.imageAuroc, 12);
      expect(g.f1.f1).toBeCloseTo(e.f1.f1, 12);
      expect(g.f1.threshold).toBe(e.f1.threshold);
      expect(g.iou.min).toBe(e.iou.min);
      expect(g.iou.max).toBe(e.iou.max);
      expect(g.iou.iou).toBeCloseTo(e.iou.iou, 12);
      expect(g.iou.threshold).toBe(e.iou.threshold);
    };
    check(got.overall, expected.overall);
    expect(Object.keys(got.perDefect).sort()).toEqual(Object.keys(expected.perDefect).sort());
    for (const [t, e] of Object.entries(expected.perDefect)) check(got.perDefect[t], e);
    // The fixture does exercise 8-connectivity: 4-connectivity would split some regions.
    let regions4 = 0;
    for (const im of images) if (im.mask) regions4 += labelComponents(im.mask, height, width, 4).sizes.length;
    expect(regions4).toBeGreaterThan(expected.overall.regions);
  });
});

describe('defective images without masks (image level only)', () => {
  const ref = JSON.parse(readFileSync(new URL('./fixtures/reference.json', import.meta.url), 'utf8')) as Reference;

  it('count in image AUROC / AP (sklearn reference) and in no pixel figure', () => {
    const acc = new PixelMetricsAccumulator();
    const { scores, labels } = ref.imageLevel;
    scores.forEach((score, i) => {
      // Good images have pixel ground truth (all normal); the defective ones have no mask.
      if (labels[i]) acc.addImageOnly(map(1, 2, [score, score - 1]), 'defect', true);
      else acc.add(map(1, 2, [score, score - 1]), null, 'good');
    });
    const g = acc.compute().overall;
    const nGood = labels.filter((l) => !l).length;
    expect(g.images).toBe(scores.length);
    expect(g.anomalousImages).toBe(scores.length - nGood);
    expect(g.pixelImages).toBe(nGood);
    expect(g.pixelAnomalousImages).toBe(0);
    expect(g.pixels).toBe(2 * nGood);
    expect(g.defectPixels).toBe(0);
    expect(g.imageAuroc).toBeCloseTo(ref.imageLevel.auroc, 12);
    expect(g.imageAp).toBeCloseTo(ref.imageLevel.ap, 12);
    expect(g.pixelAuroc).toBeNaN();
    expect(g.aupro).toBeNaN();
    expect(g.iou.iou).toBeNaN();
  });

  it('leave the pixel figures of the masked images exactly as without them', () => {
    const { height, width, images, expected } = ref.pixelLevel;
    const acc = new PixelMetricsAccumulator({ proFprLimit: ref.proFprLimit, iouSteps: ref.iouSteps });
    const imageScores: number[] = [];
    const imageLabels: boolean[] = [];
    const rng = new Rng(5);
    images.forEach((im, k) => {
      const m = map(height, width, im.scores);
      const stats = acc.add(m, im.mask && map(height, width, im.mask), im.defectType);
      imageScores.push(stats.imageScore);
      imageLabels.push(stats.anomalous);
      expect(stats.pixelLevel).toBe(true);
      // Interleave a mask-less defective image with extreme scores: it must not reach any pixel figure.
      if (k % 2 === 0) {
        const extreme = map(
          height,
          width,
          im.scores.map(() => 50 + rng.next()),
        );
        const only = acc.addImageOnly(extreme, im.defectType === 'good' ? 'unmasked' : im.defectType, true);
        expect(only.pixelLevel).toBe(false);
        expect(only.imageScore).toBe(Math.max(...extreme.data));
        imageScores.push(only.imageScore);
        imageLabels.push(true);
      }
    });
    const got = acc.compute();
    const e = expected.overall;
    const g = got.overall;
    expect(g.images).toBe(imageScores.length);
    expect(g.pixelImages).toBe(images.length);
    expect(g.pixels).toBe(e.pixels);
    expect(g.defectPixels).toBe(e.defectPixels);
    expect(g.regions).toBe(e.regions);
    expect(g.pixelAuroc).toBeCloseTo(e.pixelAuroc, 12);
    expect(g.pixelAp).toBeCloseTo(e.pixelAp, 12);
    expect(Math.abs(g.aupro - e.aupro)).toBeLessThan(1e-6);
    expect(g.f1.f1).toBeCloseTo(e.f1.f1, 12);
    expect(g.iou.max).toBe(e.iou.max);
    expect(g.iou.iou).toBeCloseTo(e.iou.iou, 12);
    // Image level: every image, masked or not.
    expect(g.imageAuroc).toBeCloseTo(pairwiseAuroc(imageScores, imageLabels), 12);
    expect(g.imageAp).toBe(averagePrecision(imageScores, imageLabels));
    expect(g.imageAuroc).not.toBeCloseTo(e.imageAuroc, 3);
    expect(got.imageCounts.unmasked).toBeGreaterThan(0);
  });

  it('image AP and best F1 by hand; pass / reject counts at a threshold', () => {
    // good: 0.1 0.35 0.4; defective: 0.2 0.3 0.5 0.8.
    const acc = new PixelMetricsAccumulator();
    for (const s of [0.1, 0.35, 0.4]) acc.add(map(1, 1, [s]), null, 'good');
    for (const s of [0.2, 0.3, 0.5, 0.8]) acc.addImageOnly(map(1, 1, [s]), 'dent', true);
    const g = acc.compute().overall;
    // Positives ranked: 0.2 beats 1 good, 0.3 beats 1, 0.5 beats 3, 0.8 beats 3: 8 of 12 pairs.
    expect(g.imageAuroc).toBeCloseTo(8 / 12, 12);
    // Precision at each recall step (descending): 1, 1, 3/5, 4/6.
    expect(g.imageAp).toBeCloseTo(0.25 * (1 + 1 + 3 / 5 + 4 / 6), 12);
    // F1 = 2 TP / (TP + FP + P): best at t = 0.2 with TP 4, FP 2.
    expect(g.imageF1.f1).toBeCloseTo(0.8, 12);
    expect(g.imageF1.threshold).toBe(Math.fround(0.2)); // the map max, a float32
    expect(imageConfusion([0.1, 0.35, 0.4, 0.2, 0.3, 0.5, 0.8], [0, 0, 0, 1, 1, 1, 1], 0.4)).toEqual({
      threshold: 0.4,
      goodPassed: 2,
      goodRejected: 1,
      defectivePassed: 2,
      defectiveRejected: 2,
    });
    expect(() => imageConfusion([1], [1, 0], 0.5)).toThrow(/1 scores but 2 labels/);
    expect(() => acc.addImageOnly(map(1, 1, [NaN]), 'dent', true)).toThrow(/non-finite/);
  });
});

describe('youdenThreshold', () => {
  it('separates perfectly separated scores halfway between the classes', () => {
    expect(youdenThreshold([0.1, 0.2, 0.3], [0.4, 0.5])).toBeCloseTo(0.35, 12);
  });

  it('maximises TPR - FPR on overlapping scores (hand-worked)', () => {
    // descending: 0.9 a, 0.6 n, 0.5 a, 0.1 n
    // cut after 0.9: TPR 1/2, FPR 0   -> J 0.5  (threshold 0.75)
    // cut after 0.6: TPR 1/2, FPR 1/2 -> J 0
    // cut after 0.5: TPR 1,   FPR 1/2 -> J 0.5 (not better: the first maximum is kept)
    expect(youdenThreshold([0.1, 0.6], [0.5, 0.9])).toBeCloseTo(0.75, 12);
    // three normals, two anomalies: 0.8 a, 0.7 n, 0.6 a, 0.3 n, 0.2 n -> best cut after 0.6 (J = 1 - 1/3)
    expect(youdenThreshold([0.2, 0.3, 0.7], [0.6, 0.8])).toBeCloseTo(0.45, 12);
  });

  it('never splits tied scores', () => {
    // 0.8 a | 0.5 a, 0.5 n | 0.1 n: cutting inside the tie is impossible; best is after 0.8 (J 0.5) or
    // after the tie (TPR 1, FPR 1/2, J 0.5): the first is kept
    expect(youdenThreshold([0.5, 0.1], [0.5, 0.8])).toBeCloseTo(0.65, 12);
  });

  it('predicts "defective" for scores >= threshold consistently with the J it reports', () => {
    const normal = [0.05, 0.1, 0.2, 0.22, 0.4];
    const anomalous = [0.21, 0.3, 0.5, 0.6];
    const t = youdenThreshold(normal, anomalous);
    const j = anomalous.filter((s) => s >= t).length / 4 - normal.filter((s) => s >= t).length / 5;
    // brute force over every possible cut
    const cuts = [...normal, ...anomalous, Infinity].map(
      (c) => anomalous.filter((s) => s >= c).length / 4 - normal.filter((s) => s >= c).length / 5,
    );
    expect(j).toBeCloseTo(Math.max(...cuts), 12);
  });
});
