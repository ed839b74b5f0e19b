import { describe, expect, it } from 'vitest';
import { Rng } from '../../util/rng.js';
import {
  PadimAccumulator,
  PadimStats,
  padimMemoryBytes,
  selectChannels,
  selectRandomChannels,
  type PlainTensor,
} from './stats.js';

/** Gauss-Jordan inverse with partial pivoting: an independent reference for the Cholesky path. */
function gaussJordanInverse(a: number[][]): number[][] {
  const n = a.length;
  const m = a.map((row, i) => [...row, ...Array.from({ length: n }, (_, j) => (i === j ? 1 : 0))]);
  for (let c = 0; c < n; c++) {
    let piv = c;
    for (let r = c + 1; r < n; r++) if (Math.abs(m[r][c]) > Math.abs(m[piv][c])) piv = r;
    [m[c], m[piv]] = [m[piv], m[c]];
    const div = m[c][c];
    for (let j = 0; j < 2 * n; j++) m[c][j] /= div;
    for (let r = 0; r < n; r++) {
      if (r === c) continue;
      const f = m[r][c];
      for (let j = 0; j < 2 * n; j++) m[r][j] -= f * m[c][j];
    }
  }
  return m.map((row) => row.slice(n));
}

describe('PadimAccumulator', () => {
  it('recovers the generating mean and covariance of Gaussian data at each position', () => {
    const rng = new Rng(11);
    const d = 3;
    const h = 2;
    const w = 2;
    const p = h * w;
    // Per position: mu_q and Sigma_q = A_q A_q^T with a random lower-triangular A_q.
    const mus: number[][] = [];
    const as: number[][][] = [];
    for (let q = 0; q < p; q++) {
      mus.push(Array.from({ length: d }, () => rng.uniform(-2, 2)));
      as.push(
        Array.from({ length: d }, (_, i) =>
          Array.from({ length: d }, (_, j) => (j < i ? rng.uniform(-0.5, 0.5) : j === i ? rng.uniform(0.5, 1.5) : 0)),
        ),
      );
    }
    const acc = new PadimAccumulator({ inputDims: d, height: h, width: w });
    const n = 6000;
    const emb = new Float32Array(d * p);
    for (let s = 0; s < n; s++) {
      for (let q = 0; q < p; q++) {
        const z = Array.from({ length: d }, () => rng.normal());
        for (let i = 0; i < d; i++) {
          let v = mus[q][i];
          for (let j = 0; j < d; j++) v += as[q][i][j] * z[j];
          emb[i * p + q] = v;
        }
      }
      acc.add(emb);
    }
    expect(acc.count).toBe(n);
    const mean = acc.mean();
    for (let q = 0; q < p; q++) {
      const cov = acc.covarianceAt(q);
      for (let i = 0; i < d; i++) {
        expect(Math.abs(mean[i * p + q] - mus[q][i])).toBeLessThan(0.06);
        for (let j = 0; j < d; j++) {
          let sigma = 0;
          for (let k = 0; k < d; k++) sigma += as[q][i][k] * as[q][j][k];
          expect(Math.abs(cov[i * d + j] - sigma)).toBeLessThan(0.1);
        }
      }
    }
  });

  it('diagonal case: distance of the mean is 0 and of mean + k*sigma along an axis is k', () => {
    // Four samples around mu = (1, -2): mu +- a e1, mu +- b e2. Sample covariance (divisor 3):
    // var1 = 2a^2/3, var2 = 2b^2/3, cov12 = 0, exactly.
    const a = 0.6;
    const b = 1.5;
    const mu = [1, -2];
    const acc = new PadimAccumulator({ inputDims: 2, height: 1, width: 1 });
    for (const [x, y] of [
      [mu[0] + a, mu[1]],
      [mu[0] - a, mu[1]],
      [mu[0], mu[1] + b],
      [mu[0], mu[1] - b],
    ]) {
      acc.add(Float32Array.from([x, y]));
    }
    const s1 = a * Math.sqrt(2 / 3);
    const s2 = b * Math.sqrt(2 / 3);
    const stats = acc.finalize(0);
    expect(stats.mahalanobisMap(Float32Array.from(mu)).data[0]).toBeCloseTo(0, 6);
    for (const k of [0.5, 1, 2, 3.7]) {
      expect(stats.mahalanobisMap(Float32Array.from([mu[0] + k * s1, mu[1]])).data[0]).toBeCloseTo(k, 4);
      expect(stats.mahalanobisMap(Float32Array.from([mu[0], mu[1] - k * s2])).data[0]).toBeCloseTo(k, 4);
    }
    // With PaDiM's ridge the variance becomes s^2 + eps.
    const eps = 0.01;
    const ridged = acc.finalize(eps);
    expect(ridged.eps).toBe(eps);
    expect(ridged.mahalanobisMap(Float32Array.from([mu[0] + 2 * s1, mu[1]])).data[0]).toBeCloseTo(
      (2 * s1) / Math.sqrt(s1 * s1 + eps),
      4,
    );
  });

  it('matches a brute-force two-pass mean/covariance + matrix inverse on random data', () => {
    const rng = new Rng(5);
    const inputDims = 7;
    const h = 3;
    const w = 2;
    const p = h * w;
    const n = 12;
    const eps = 0.05;
    const indices = selectRandomChannels(inputDims, 5, rng.fork());
    const d = indices.length;
    const samples: Float32Array[] = [];
    for (let s = 0; s < n; s++) {
      const e = new Float32Array(inputDims * p);
      for (let i = 0; i < e.length; i++) e[i] = rng.normal(0.3 * (i % 3), 1 + (i % 4) * 0.5);
      samples.push(e);
    }
    const acc = new PadimAccumulator({ inputDims, height: h, width: w, channelIndices: indices });
    for (const s of samples) acc.add(s);
    const stats = acc.finalize(eps);
    const test = new Float32Array(inputDims * p);
    for (let i = 0; i < test.length; i++) test[i] = rng.normal(0, 2);
    const map = stats.mahalanobisMap(test);
    expect([map.channels, map.height, map.width]).toEqual([1, h, w]);
    for (let q = 0; q < p; q++) {
      const xs = samples.map((s) => Array.from(indices, (c) => s[c * p + q]));
      const mean = Array.from({ length: d }, (_, i) => xs.reduce((t, x) => t + x[i], 0) / n);
      const cov = Array.from({ length: d }, (_, i) =>
        Array.from(
          { length: d },
          (_, j) => xs.reduce((t, x) => t + (x[i] - mean[i]) * (x[j] - mean[j]), 0) / (n - 1) + (i === j ? eps : 0),
        ),
      );
      const inv = gaussJordanInverse(cov);
      const delta = Array.from(indices, (c, i) => test[c * p + q] - mean[i]);
      let d2 = 0;
      for (let i = 0; i < d; i++) for (let j = 0; j < d; j++) d2 += delta[i] * inv[i][j] * delta[j];
      const expected = Math.sqrt(d2);
      expect(Math.abs(map.data[q] - expected) / expected).toBeLessThan(1e-4);
      for (let i = 0; i < d; i++) expect(stats.mean[i * p + q]).toBeCloseTo(mean[i], 5);
    }
  });

  it('channel subsets: seeded, distinct, sorted, and equal to modelling the pre-selected embedding', () => {
    const a = selectRandomChannels(50, 10, new Rng(3));
    expect(Array.from(a)).toEqual(Array.from(selectRandomChannels(50, 10, new Rng(3))));
    expect(Array.from(a)).not.toEqual(Array.from(selectRandomChannels(50, 10, new Rng(4))));
    expect(new Set(a).size).toBe(10);
    for (let i = 1; i < a.length; i++) expect(a[i]).toBeGreaterThan(a[i - 1]);
    expect(() => selectRandomChannels(5, 6, new Rng(1))).toThrow(/dims/);

    const rng = new Rng(9);
    const p = 4;
    const idx = Int32Array.from([4, 1, 6]);
    const full = new PadimAccumulator({ inputDims: 8, height: 2, width: 2, channelIndices: idx });
    const sub = new PadimAccumulator({ inputDims: 3, height: 2, width: 2 });
    const embs = Array.from({ length: 5 }, () => Float32Array.from({ length: 8 * p }, () => rng.normal()));
    for (const e of embs) {
      full.add(e);
      sub.add(selectChannels(e, p, idx));
    }
    expect(Array.from(full.mean())).toEqual(Array.from(sub.mean()));
    const probe = embs[0].map((v) => v + 0.3);
    expect(Array.from(full.finalize().mahalanobisMap(probe).data)).toEqual(
      Array.from(sub.finalize().mahalanobisMap(selectChannels(probe, p, idx)).data),
    );
  });

  it('rejects wrong embedding sizes, too few samples, bad indices and a blown memory budget', () => {
    const acc = new PadimAccumulator({ inputDims: 2, height: 2, width: 2 });
    expect(() => acc.add(new Float32Array(7))).toThrow(/expected 2 x 2 x 2 = 8/);
    acc.add(new Float32Array(8));
    expect(() => acc.finalize()).toThrow(/at least 2/);
    expect(() => acc.add(Float32Array.from([0, 0, 0, NaN, 0, 0, 0, 0]))).toThrow(/non-finite/);
    expect(acc.count).toBe(1);
    expect(
      () => new PadimAccumulator({ inputDims: 4, height: 1, width: 1, channelIndices: Int32Array.from([1, 4]) }),
    ).toThrow(/outside/);
    expect(
      () => new PadimAccumulator({ inputDims: 4, height: 1, width: 1, channelIndices: Int32Array.from([1, 1]) }),
    ).toThrow(/twice/);
    // resnet18-style PaDiM without channel reduction: 448 dims at 56x56.
    expect(padimMemoryBytes(448, 56, 56)).toBeGreaterThan(2 * 1024 ** 3);
    expect(() => new PadimAccumulator({ inputDims: 448, height: 56, width: 56 })).toThrow(/memory budget/);
    expect(() => new PadimAccumulator({ inputDims: 100, height: 8, width: 8, memoryBudgetBytes: 1024 * 1024 })).toThrow(
      /over the memory budget of 0\.00 GiB/,
    );
    // eps = 0 with fewer samples than dims: singular covariance, reported clearly.
    const small = new PadimAccumulator({ inputDims: 3, height: 1, width: 1 });
    small.add(Float32Array.from([1, 2, 3]));
    small.add(Float32Array.from([2, 2, 5]));
    expect(() => small.finalize(0)).toThrow(/singular/);
    expect(small.finalize(0.01).mahalanobisMap(Float32Array.from([1.5, 2, 4])).data[0]).toBeCloseTo(0, 5);
  });
});

describe('PadimStats serialisation', () => {
  function makeStats(): PadimStats {
    const rng = new Rng(21);
    const acc = new PadimAccumulator({
      inputDims: 6,
      height: 2,
      width: 3,
      channelIndices: selectRandomChannels(6, 4, rng.fork()),
    });
    for (let s = 0; s < 8; s++) acc.add(Float32Array.from({ length: 36 }, () => rng.normal()));
    return acc.finalize(0.01);
  }

  it('round-trips through plain tensors', () => {
    const stats = makeStats();
    const t = stats.toTensors();
    expect(t.mean.shape).toEqual([4, 2, 3]);
    expect(t.inv_covariance.shape).toEqual([6, 4, 4]);
    expect(t.channel_indices.shape).toEqual([4]);
    expect(t.meta.shape).toEqual([3]);
    const back = PadimStats.fromTensors(t);
    expect([back.inputDims, back.dims, back.height, back.width, back.count]).toEqual([6, 4, 2, 3, 8]);
    expect(back.eps).toBeCloseTo(0.01, 7);
    expect(Array.from(back.channelIndices)).toEqual(Array.from(stats.channelIndices));
    const probe = Float32Array.from({ length: 36 }, (_, i) => Math.sin(i));
    expect(Array.from(back.mahalanobisMap(probe).data)).toEqual(Array.from(stats.mahalanobisMap(probe).data));
  });

  it('rejects missing tensors and wrong shapes with a clear error', () => {
    const good = makeStats().toTensors();
    const without = (name: string): Record<string, PlainTensor> => {
      const copy = { ...good };
      delete copy[name];
      return copy;
    };
    expect(() => PadimStats.fromTensors(without('inv_covariance'))).toThrow(/missing tensor 'inv_covariance'/);
    expect(() =>
      PadimStats.fromTensors({ ...good, inv_covariance: { shape: [6, 4, 3], data: new Float32Array(72) } }),
    ).toThrow(/inv_covariance has shape \[6,4,3\], expected \[6, 4, 4\]/);
    expect(() => PadimStats.fromTensors({ ...good, mean: { shape: [4, 6], data: good.mean.data } })).toThrow(
      /'mean' must have 3 positive dims/,
    );
    expect(() => PadimStats.fromTensors({ ...good, mean: { shape: [4, 2, 3], data: new Float32Array(23) } })).toThrow(
      /needs 24 float32 values/,
    );
    expect(() =>
      PadimStats.fromTensors({ ...good, channel_indices: { shape: [3], data: new Float32Array(3) } }),
    ).toThrow(/channel_indices has shape \[3\], expected \[4\]/);
    expect(() =>
      PadimStats.fromTensors({ ...good, channel_indices: { shape: [4], data: Float32Array.from([0, 1, 2, 9]) } }),
    ).toThrow(/outside \[0, 6\)/);
    expect(() =>
      PadimStats.fromTensors({ ...good, meta: { shape: [3], data: Float32Array.from([3, 8, 0.01]) } }),
    ).toThrow(/inputDims 3/);
    const nan = good.mean.data.slice();
    nan[5] = NaN;
    expect(() => PadimStats.fromTensors({ ...good, mean: { shape: [4, 2, 3], data: nan } })).toThrow(/non-finite/);
  });
});
