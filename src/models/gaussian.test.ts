import { describe, expect, it } from 'vitest';
import { createImage } from '../image/types.js';
import { Rng } from '../util/rng.js';
import {
  cholesky,
  choleskyInverse,
  choleskyLogDet,
  choleskySolve,
  postprocessDistanceMap,
  gaussianBlur,
  gaussianKernel1d,
  invertSpd,
  matMul,
  reflectIndex,
} from './gaussian.js';

function expectClose(actual: ArrayLike<number>, expected: ArrayLike<number>, tol: number): void {
  expect(actual.length).toBe(expected.length);
  for (let i = 0; i < expected.length; i++) {
    if (Math.abs(actual[i] - expected[i]) > tol) {
      throw new Error(`index ${i}: ${actual[i]} vs expected ${expected[i]} (tol ${tol})`);
    }
  }
}

/** A random symmetric positive-definite matrix B B^T + n I. */
function randomSpd(n: number, rng: Rng): Float64Array {
  const b = new Float64Array(n * n);
  for (let i = 0; i < b.length; i++) b[i] = rng.normal();
  const a = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let k = 0; k < n; k++) s += b[i * n + k] * b[j * n + k];
      a[i * n + j] = s + (i === j ? n : 0);
    }
  }
  return a;
}

describe('cholesky', () => {
  it('factors a hand-computed 3x3 matrix', () => {
    // Classic example: [[4,12,-16],[12,37,-43],[-16,-43,98]] = L L^T with L = [[2,0,0],[6,1,0],[-8,5,3]].
    const a = Float64Array.from([4, 12, -16, 12, 37, -43, -16, -43, 98]);
    const l = cholesky(a, 3);
    expectClose(l, [2, 0, 0, 6, 1, 0, -8, 5, 3], 1e-12);
    // det = (2*1*3)^2 = 36.
    expect(choleskyLogDet(l, 3)).toBeCloseTo(Math.log(36), 12);
  });

  it('solves and inverts a hand-computed 2x2 system', () => {
    // A = [[4,2],[2,3]], det 8, A^-1 = [[3,-2],[-2,4]] / 8; A x = [2,1] => x = [0.5, 0].
    const a = Float64Array.from([4, 2, 2, 3]);
    const l = cholesky(a, 2);
    expectClose(choleskySolve(l, 2, Float64Array.from([2, 1])), [0.5, 0], 1e-12);
    expectClose(choleskyInverse(l, 2), [3 / 8, -2 / 8, -2 / 8, 4 / 8], 1e-12);
    expect(choleskyLogDet(l, 2)).toBeCloseTo(Math.log(8), 12);
    // Two right-hand sides at once (columns [2,1] and [4,2]... as an n x nrhs row-major matrix).
    expectClose(choleskySolve(l, 2, Float64Array.from([2, 6, 1, 3]), 2), [0.5, 1.5, 0, 0], 1e-12);
  });

  it('inverts random SPD matrices: A A^-1 = I and L L^T = A', () => {
    const rng = new Rng(7);
    for (const n of [1, 4, 17]) {
      const a = randomSpd(n, rng);
      const l = cholesky(a, n);
      const lt = new Float64Array(n * n);
      for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) lt[i * n + j] = l[j * n + i];
      expectClose(matMul(l, lt, n), a, 1e-9);
      const eye = new Float64Array(n * n);
      for (let i = 0; i < n; i++) eye[i * n + i] = 1;
      expectClose(matMul(a, invertSpd(a, n), n), eye, 1e-10);
    }
  });

  it('rejects matrices that are not positive definite or have the wrong size', () => {
    expect(() => cholesky(Float64Array.from([1, 2, 2, 1]), 2)).toThrow(/not positive definite/);
    expect(() => cholesky(Float64Array.from([0, 0, 0, 0]), 2)).toThrow(/not positive definite/);
    expect(() => cholesky(Float64Array.from([1, 2, 3]), 2)).toThrow(/2 x 2/);
    expect(() => choleskySolve(Float64Array.from([1]), 1, Float64Array.from([1, 2]))).toThrow(/right-hand side/);
  });
});

describe('gaussian blur', () => {
  it('kernel: radius floor(4 sigma + 0.5) as scipy, normalised, symmetric', () => {
    expect(gaussianKernel1d(4).length).toBe(33);
    expect(gaussianKernel1d(1).length).toBe(9);
    expect(gaussianKernel1d(1.1).length).toBe(2 * 4 + 1); // scipy: int(4.4 + 0.5) = 4
    const k = gaussianKernel1d(2);
    expect(k.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 14);
    for (let i = 0; i < k.length; i++) expect(k[i]).toBeCloseTo(k[k.length - 1 - i], 15);
  });

  it("reflect index follows scipy's 'reflect' (d c b a | a b c d | d c b a)", () => {
    const n = 4;
    const got = [];
    for (let i = -6; i < 10; i++) got.push(reflectIndex(i, n));
    expect(got).toEqual([2, 3, 3, 2, 1, 0, 0, 1, 2, 3, 3, 2, 1, 0, 0, 1]);
    expect(reflectIndex(-5, 1)).toBe(0);
  });

  it('matches scipy.ndimage.gaussian_filter(a, 1.0) on a 5x7 image', () => {
    // a = (np.arange(35).reshape(5, 7) % 6) / 5
    const img = createImage(1, 5, 7);
    for (let i = 0; i < 35; i++) img.data[i] = (i % 6) / 5;
    const expected = [
      0.1707711125, 0.2982626346, 0.4787862494, 0.636047182, 0.6784182322, 0.5242027087, 0.2989200708, 0.2982833991,
      0.4203232103, 0.5719579048, 0.645810723, 0.5767134207, 0.4128601544, 0.2876155946, 0.4795534189, 0.573275556,
      0.6352481516, 0.5695777991, 0.4294649127, 0.3524863171, 0.3603938446, 0.6471118146, 0.6635655166, 0.5762016528,
      0.4223674392, 0.3532233395, 0.4154512782, 0.508514552, 0.7497741668, 0.6758268217, 0.4667317839, 0.320718026,
      0.3629861688, 0.5085907147, 0.6299641281,
    ];
    expectClose(gaussianBlur(img, 1).data, expected, 2e-7);
  });

  it('matches scipy for sigma 4 on a 6x5 image (kernel wider than the image: repeated reflection)', () => {
    const img = createImage(1, 6, 5);
    img.data[1 * 5 + 3] = 1;
    img.data[4 * 5 + 0] = 0.5;
    const expected = [
      0.051800414181, 0.05208407828, 0.05254073252, 0.052995728775, 0.05328034237, 0.051237491862, 0.051476377782,
      0.05186063759, 0.052243393023, 0.052483298639, 0.050260883233, 0.050422253385, 0.050681190852, 0.050938889891,
      0.0511014012, 0.049132826314, 0.049204588308, 0.049318653226, 0.049431787135, 0.049504830721, 0.048157825328,
      0.048152075325, 0.048140823936, 0.048128907448, 0.048124560537, 0.047593295366, 0.047542763413, 0.047459111559,
      0.047374948251, 0.047325889551,
    ];
    expectClose(gaussianBlur(img, 4).data, expected, 1e-8);
    // Reflection conserves mass: total stays 1.5.
    expect(gaussianBlur(img, 4).data.reduce((a, b) => a + b, 0)).toBeCloseTo(1.5, 5);
  });

  it('blurs a centred impulse into the 2-D Gaussian and keeps a constant image constant', () => {
    const img = createImage(1, 9, 9);
    img.data[4 * 9 + 4] = 1;
    const row = Array.from(gaussianBlur(img, 1).data.subarray(4 * 9, 5 * 9));
    // scipy.ndimage.gaussian_filter(impulse, 1.0)[4]
    expectClose(
      row,
      [
        5.3390854e-5, 0.00176806225, 0.021539407688, 0.096532928015, 0.159155891742, 0.096532928015, 0.021539407688,
        0.00176806225, 5.3390854e-5,
      ],
      1e-8, // output is Float32
    );
    const flat = createImage(2, 4, 6, 0.37);
    for (const v of gaussianBlur(flat, 2.5).data) expect(v).toBeCloseTo(0.37, 6);
  });
});

describe('postprocessDistanceMap', () => {
  it('upsamples to the image size and smooths with sigma 4', () => {
    const map = createImage(1, 4, 4);
    map.data[1 * 4 + 2] = 8;
    const out = postprocessDistanceMap(map, 32, 32);
    expect([out.channels, out.height, out.width]).toEqual([1, 32, 32]);
    // Bilinear x8 upsampling of a single peak has mass 8 * 64 (one source pixel covers 8x8 output pixels);
    // the reflect-bordered blur conserves it.
    const mass = out.data.reduce((a, b) => a + b, 0);
    expect(mass).toBeCloseTo(8 * 64, 1);
    // The maximum sits in the peak's 8x8 block (rows 8..15, columns 16..23) and is well below 8 after smoothing.
    let best = 0;
    for (let i = 1; i < out.data.length; i++) if (out.data[i] > out.data[best]) best = i;
    const y = Math.floor(best / 32);
    const x = best % 32;
    expect(y >= 8 && y < 16 && x >= 16 && x < 24).toBe(true);
    expect(out.data[best]).toBeLessThan(4);
    expect(() => postprocessDistanceMap(createImage(3, 2, 2), 4, 4)).toThrow(/1-channel/);
  });
});
