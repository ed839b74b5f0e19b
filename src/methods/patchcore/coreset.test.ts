import { describe, expect, it } from 'vitest';
import { Tensor, liveTensors, tidy } from '../../engine/index.js';
import { Rng } from '../../util/rng.js';
import { clusterMaxima, coresetPlan, coresetSize, greedyCoreset, jlProjection, nearestDistances } from './coreset.js';

/** n points in d dims around a few seeded cluster centres (so the greedy choice has clear winners). */
function clusteredPoints(n: number, d: number, seed: number): Float32Array {
  const rng = new Rng(seed);
  const centres = Array.from({ length: 6 }, () => Array.from({ length: d }, () => rng.normal(0, 3)));
  const out = new Float32Array(n * d);
  for (let i = 0; i < n; i++) {
    const c = centres[i % centres.length];
    for (let j = 0; j < d; j++) out[i * d + j] = c[j] + rng.normal(0, 1);
  }
  return out;
}

/** The paper's Algorithm 1 in plain JavaScript (float64): projection, seeded start, farthest point each step. */
function referenceCoreset(x: Float32Array, n: number, d: number, count: number, seed: number, dims: number): number[] {
  const plan = coresetPlan(n, d, { seed, projectionDims: dims });
  const k = plan.projectionDims;
  const p = new Float64Array(n * k);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < k; j++) {
      let s = 0;
      for (let t = 0; t < d; t++) s += x[i * d + t] * (plan.projection ? plan.projection[t * k + j] : t === j ? 1 : 0);
      p[i * k + j] = s;
    }
  }
  const dist = (a: number, b: number): number => {
    let s = 0;
    for (let j = 0; j < k; j++) s += (p[a * k + j] - p[b * k + j]) ** 2;
    return Math.sqrt(s);
  };
  const min = new Float64Array(n).fill(Infinity);
  const chosen = [plan.start];
  while (chosen.length < count) {
    const c = chosen[chosen.length - 1];
    let best = -1;
    for (let i = 0; i < n; i++) {
      min[i] = Math.min(min[i], dist(i, c));
      if (best < 0 || min[i] > min[best]) best = i;
    }
    chosen.push(best);
  }
  return chosen;
}

function bruteNearest(q: Float32Array, b: Float32Array, d: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < q.length / d; i++) {
    let best = Infinity;
    for (let j = 0; j < b.length / d; j++) {
      let s = 0;
      for (let t = 0; t < d; t++) s += (q[i * d + t] - b[j * d + t]) ** 2;
      best = Math.min(best, s);
    }
    out.push(Math.sqrt(best));
  }
  return out;
}

describe('greedyCoreset', () => {
  it('chooses the same points as a brute-force farthest-point reference (projected and exact, pruned and plain)', async () => {
    const n = 240;
    const d = 24;
    const x = clusteredPoints(n, d, 5);
    const features = Tensor.from(x, [n, d]);
    try {
      for (const projectionDims of [8, 0]) {
        const expected = referenceCoreset(x, n, d, 40, 11, projectionDims);
        for (const prune of [true, false]) {
          const got = await greedyCoreset(features, 40, { seed: 11, projectionDims, prune });
          expect([...got], `projection ${projectionDims}, prune ${prune}`).toEqual(expected);
        }
      }
      // projection dims at or above the feature dims: exact distances
      expect(coresetPlan(n, d, { projectionDims: 24 }).projection).toBeNull();
      expect([...(await greedyCoreset(features, 12, { seed: 11, projectionDims: 128 }))]).toEqual(
        referenceCoreset(x, n, d, 12, 11, 0),
      );
      // another seed starts elsewhere
      expect((await greedyCoreset(features, 5, { seed: 12 }))[0]).not.toBe(
        (await greedyCoreset(features, 5, { seed: 11 }))[0],
      );
    } finally {
      features.dispose();
    }
  });

  it('covers the points ever more tightly as the ratio grows', async () => {
    const n = 600;
    const d = 16;
    const x = clusteredPoints(n, d, 7);
    const features = Tensor.from(x, [n, d]);
    try {
      const radii: number[] = [];
      for (const ratio of [0.01, 0.03, 0.1, 0.3]) {
        const count = coresetSize(n, ratio, 10_000);
        const idx = await greedyCoreset(features, count, { seed: 3, projectionDims: 0 });
        expect(new Set(idx).size).toBe(count);
        const radius = tidy(() => {
          const bank = features.indexSelect(0, Tensor.from(idx, [count], { dtype: 'int64' }));
          return nearestDistances(features, bank).amax().item();
        });
        radii.push(radius);
      }
      for (let i = 1; i < radii.length; i++) expect(radii[i]).toBeLessThan(radii[i - 1]);
      // a coreset of every point covers them exactly
      const all = await greedyCoreset(features, n, { seed: 3 });
      expect([...all]).toEqual(Array.from({ length: n }, (_, i) => i));
    } finally {
      features.dispose();
    }
  });

  it('stops early once every point coincides with a chosen one, and releases its tensors', async () => {
    const distinct = clusteredPoints(5, 4, 2);
    const x = new Float32Array(50 * 4);
    for (let i = 0; i < 50; i++) x.set(distinct.subarray((i % 5) * 4, (i % 5) * 4 + 4), i * 4);
    const features = Tensor.from(x, [50, 4]);
    const before = liveTensors();
    try {
      for (const prune of [true, false]) {
        const idx = await greedyCoreset(features, 20, { seed: 1, prune });
        expect(idx.length).toBe(5);
        expect(new Set([...idx].map((i) => i % 5)).size).toBe(5);
      }
      expect(liveTensors()).toBe(before);
    } finally {
      features.dispose();
    }
  });

  it('validates its arguments', async () => {
    const features = Tensor.zeros([4, 3]);
    try {
      await expect(greedyCoreset(features, 0)).rejects.toThrow(/count must be >= 1/);
      await expect(greedyCoreset(features.reshape([12]), 2)).rejects.toThrow(/must be \[N, D\]/);
      expect(() => coresetPlan(4, 3, { projectionDims: -1 })).toThrow(/projectionDims/);
    } finally {
      features.dispose();
    }
    expect(coresetSize(1000, 0.1, 16_384)).toBe(100);
    expect(coresetSize(1_000_000, 0.1, 16_384)).toBe(16_384);
    expect(coresetSize(5, 0.01, 10)).toBe(1);
    expect(() => coresetSize(10, 0, 10)).toThrow(/ratio must be in \(0, 1\]/);
    expect(() => coresetSize(10, 1.5, 10)).toThrow(/ratio/);
    expect(() => coresetSize(10, 0.5, 0)).toThrow(/maxBank/);
    const a = jlProjection(6, 3, new Rng(4));
    expect(a).toEqual(jlProjection(6, 3, new Rng(4)));
    expect(a.length).toBe(18);
  });
});

describe('nearestDistances', () => {
  it('matches brute force, in one piece and in chunks', () => {
    const d = 10;
    const q = clusteredPoints(53, d, 1);
    const b = clusteredPoints(71, d, 2);
    const expected = bruteNearest(q, b, d);
    for (const maxElements of [1 << 23, 200, 1]) {
      const got = tidy(() =>
        nearestDistances(Tensor.from(q, [53, d]), Tensor.from(b, [71, d]), undefined, maxElements).toFloat32Array(),
      );
      got.forEach((v, i) => expect(v).toBeCloseTo(expected[i], 3));
    }
    // a query that is a bank row is at distance 0 (not NaN from rounding below 0)
    const self = tidy(() => nearestDistances(Tensor.from(b, [71, d]), Tensor.from(b, [71, d])).toFloat32Array());
    // (float32 matrix form: ~sqrt(1e-7) of the row norm, ~10 here)
    for (const v of self) expect(v >= 0 && v < 1e-2).toBe(true);
    expect(() => tidy(() => nearestDistances(Tensor.zeros([2, 3]), Tensor.zeros([2, 4])))).toThrow(/must be/);
  });
});

describe('clusterMaxima', () => {
  it('gives the largest value of each cluster present', () => {
    const [clusters, maxima] = tidy(() => {
      const [c, m] = clusterMaxima(
        Tensor.from(BigInt64Array.from([3n, 1n, 3n, 0n, 1n, 3n]), [6], { dtype: 'int64' }),
        Tensor.from(Float32Array.from([0.5, 2, 4, 1, 1.5, 3]), [6]),
      );
      return [[...c.toArray()].map(Number), [...m.toFloat32Array()]];
    });
    expect(clusters).toEqual([0, 1, 3]);
    expect(maxima).toEqual([1, 2, 4]);
  });
});
