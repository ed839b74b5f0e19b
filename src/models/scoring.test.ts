import { describe, expect, it } from 'vitest';
import { Tensor, liveTensors, tidy } from '../engine/index.js';
import { anomalyScores, blurMaps } from './scoring.js';
import { gaussianKernel1d as gaussianKernel } from './gaussian.js';

describe('gaussianKernel', () => {
  it.each([0.5, 1, 2, 4])('sigma %f: sums to 1, radius ceil(4 sigma), values follow exp(-i^2 / 2 sigma^2)', (sigma) => {
    const k = gaussianKernel(sigma);
    const r = Math.max(1, Math.ceil(4 * sigma));
    expect(k.length).toBe(2 * r + 1);
    expect(k.reduce((s, v) => s + v, 0)).toBeCloseTo(1, 6);
    let z = 0;
    for (let i = -r; i <= r; i++) z += Math.exp(-(i * i) / (2 * sigma * sigma));
    for (let i = -r; i <= r; i++) expect(k[i + r]).toBeCloseTo(Math.exp(-(i * i) / (2 * sigma * sigma)) / z, 7);
    // symmetric, peaked at the centre
    for (let i = 1; i <= r; i++) {
      expect(k[r + i]).toBe(k[r - i]);
      expect(k[r + i]).toBeLessThan(k[r + i - 1]);
    }
  });
});

describe('blurMaps', () => {
  it('keeps a constant map constant (reflect padding adds no border effect)', () => {
    tidy(() => {
      const out = blurMaps(Tensor.full([2, 1, 12, 9], 0.37), 2).toFloat32Array();
      expect(out.length).toBe(2 * 12 * 9);
      for (const v of out) expect(v).toBeCloseTo(0.37, 5);
    });
  });

  it('turns an impulse into the outer product of the 1-D kernel', () => {
    tidy(() => {
      const S = 21;
      const c = 10;
      const data = new Float32Array(S * S);
      data[c * S + c] = 1;
      const sigma = 1.5;
      const k = gaussianKernel(sigma);
      const r = (k.length - 1) / 2;
      const out = blurMaps(Tensor.from(data, [1, 1, S, S]), sigma).toFloat32Array();
      for (let y = 0; y < S; y++) {
        for (let x = 0; x < S; x++) {
          const dy = y - c;
          const dx = x - c;
          const expected = Math.abs(dy) <= r && Math.abs(dx) <= r ? k[dy + r] * k[dx + r] : 0;
          expect(out[y * S + x]).toBeCloseTo(expected, 6);
        }
      }
    });
  });

  it('sigma 0 is an identity copy and never leaks tensors', () => {
    const before = liveTensors();
    const x = Tensor.rand([1, 1, 5, 5]);
    const y = blurMaps(x, 0);
    expect(Array.from(y.toFloat32Array())).toEqual(Array.from(x.toFloat32Array()));
    const z = blurMaps(x, 3); // radius 12 > size: falls back to replicate padding
    expect(z.shape).toEqual([1, 1, 5, 5]);
    for (const v of z.toFloat32Array()) expect(Number.isFinite(v)).toBe(true);
    x.dispose();
    y.dispose();
    z.dispose();
    expect(liveTensors()).toBe(before);
  });
});

describe('anomalyScores', () => {
  it('maps = 1 - normal map when the reconstruction weight is 0, even with a reconstruction given', () => {
    tidy(() => {
      const images = Tensor.rand([2, 3, 8, 8]);
      const normal = Tensor.rand([2, 1, 8, 8]);
      const rec = Tensor.rand([2, 3, 8, 8]);
      const { maps } = anomalyScores(images, normal, rec, { sigma: 1, reconstructionWeight: 0 });
      const n = normal.toFloat32Array();
      const m = maps.toFloat32Array();
      expect(maps.shape).toEqual([2, 1, 8, 8]);
      for (let i = 0; i < n.length; i++) expect(m[i]).toBeCloseTo(1 - n[i], 6);
    });
  });

  it('image score = max of the smoothed map, per image', () => {
    tidy(() => {
      const S = 16;
      const sigma = 1;
      const k = gaussianKernel(sigma);
      const r = (k.length - 1) / 2;
      // image 0: one anomalous pixel (normal map 0 there) -> smoothed peak k[r]^2
      // image 1: uniformly 0.7 normal -> score 0.3 everywhere
      const data = new Float32Array(2 * S * S).fill(1);
      data[8 * S + 8] = 0;
      data.fill(0.7, S * S);
      const normal = Tensor.from(data, [2, 1, S, S]);
      const images = Tensor.zeros([2, 1, S, S]);
      const { maps, imageScores } = anomalyScores(images, normal, null, { sigma, reconstructionWeight: 0 });
      expect(imageScores).toHaveLength(2);
      expect(imageScores[0]).toBeCloseTo(k[r] * k[r], 6);
      expect(imageScores[1]).toBeCloseTo(0.3, 6);
      // the returned map itself is not smoothed
      expect(maps.toFloat32Array()[8 * S + 8]).toBeCloseTo(1, 6);
    });
  });

  it('adds the weighted blurred reconstruction error', () => {
    tidy(() => {
      const images = Tensor.full([1, 3, 8, 8], 0.5);
      const rec = Tensor.full([1, 3, 8, 8], 0.3); // constant error 0.2 -> blurred 0.2
      const normal = Tensor.full([1, 1, 8, 8], 0.9);
      const { maps, imageScores } = anomalyScores(images, normal, rec, { sigma: 2, reconstructionWeight: 0.5 });
      for (const v of maps.toFloat32Array()) expect(v).toBeCloseTo(0.1 + 0.5 * 0.2, 5);
      expect(imageScores[0]).toBeCloseTo(0.2, 5);
      // without a reconstruction the weight is ignored
      const noRec = anomalyScores(images, normal, null, { sigma: 2, reconstructionWeight: 0.5 });
      expect(noRec.imageScores[0]).toBeCloseTo(0.1, 5);
    });
  });

  it('blurs the reconstruction error with reconstructionBlur (0 = not at all; absent = 2)', () => {
    tidy(() => {
      const S = 16;
      // one pixel reconstructed wrong by 0.5, the rest exactly
      const images = Tensor.full([1, 1, S, S], 0.5);
      const rec = Tensor.from(
        Float32Array.from({ length: S * S }, (_, i) => (i === 8 * S + 8 ? 0 : 0.5)),
        [1, 1, S, S],
      );
      const normal = Tensor.full([1, 1, S, S], 1);
      const map = (o: { reconstructionBlur?: number }): Float32Array =>
        anomalyScores(images, normal, rec, { sigma: 0, reconstructionWeight: 1, ...o }).maps.toFloat32Array();
      const sharp = map({ reconstructionBlur: 0 });
      expect(sharp[8 * S + 8]).toBeCloseTo(0.5, 6);
      expect(sharp[8 * S + 9]).toBe(0);
      for (const [blur, given] of [
        [1, { reconstructionBlur: 1 }],
        [2, {}],
      ] as const) {
        const k = gaussianKernel(blur);
        const r = (k.length - 1) / 2;
        const m = map(given);
        expect(m[8 * S + 8]).toBeCloseTo(0.5 * k[r] * k[r], 6);
        expect(m[8 * S + 9]).toBeCloseTo(0.5 * k[r] * k[r + 1], 6);
      }
    });
  });

  it("imageScore 'map': the image score is the smoothed maximum of 1 - map, the map keeps the error", () => {
    tidy(() => {
      const S = 16;
      const k = gaussianKernel(1);
      const r = (k.length - 1) / 2;
      // image 0: a normal map with one anomalous pixel and no error; image 1: a clean map and a large error
      const normal = Tensor.from(
        Float32Array.from({ length: 2 * S * S }, (_, i) => (i === 8 * S + 8 ? 0 : 1)),
        [2, 1, S, S],
      );
      const images = Tensor.cat([Tensor.full([1, 1, S, S], 0.5), Tensor.full([1, 1, S, S], 0.9)], 0);
      const rec = Tensor.full([2, 1, S, S], 0.5);
      const o = { sigma: 1, reconstructionWeight: 1 };
      const byMap = anomalyScores(images, normal, rec, { ...o, imageScore: 'map' });
      expect(byMap.imageScores[0]).toBeCloseTo(k[r] * k[r], 6);
      expect(byMap.imageScores[1]).toBeCloseTo(0, 6);
      expect(byMap.maps.toFloat32Array()[S * S]).toBeCloseTo(0.4, 5);
      // the pixel score's maximum, as before: image 1's error outranks image 0's spot
      const bySum = anomalyScores(images, normal, rec, { ...o, imageScore: 'map+reconstruction' });
      expect(bySum.imageScores[1]).toBeCloseTo(0.4, 5);
      expect(bySum.imageScores[0]).toBeLessThan(bySum.imageScores[1]);
    });
  });
});
