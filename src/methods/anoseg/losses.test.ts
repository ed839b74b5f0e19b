import { describe, expect, it } from 'vitest';
import { Tensor, tidy } from '../../engine/index.js';
import {
  adversarialLoss,
  balancedSegmentationLoss,
  decisionThreshold,
  diceSegmentationLoss,
  discriminatorAccuracy,
  discriminatorLoss,
  featureMatchingLoss,
  focalSegmentationLoss,
  generatorAdversarialLoss,
  maskedReconstructionLoss,
  r1Penalty,
  segmentationLoss,
} from './losses.js';

const t = (values: number[], shape: number[]): Tensor => Tensor.from(Float32Array.from(values), shape);

describe('L_Seg (eq. 2)', () => {
  it('is the mean absolute difference between map and mask', () => {
    tidy(() => {
      const map = t([0.9, 0.2, 1, 0.5], [1, 1, 2, 2]);
      const mask = t([1, 0, 1, 1], [1, 1, 2, 2]);
      // (0.1 + 0.2 + 0 + 0.5) / 4
      expect(segmentationLoss(map, mask).item()).toBeCloseTo(0.2, 6);
      expect(segmentationLoss(mask, mask).item()).toBe(0);
    });
  });
});

describe('class-balanced L_Seg (recipe variant)', () => {
  it('averages the mean error over normal pixels and the mean error over anomalous pixels', () => {
    tidy(() => {
      const map = t([0.9, 0.6, 1, 0.5], [1, 1, 2, 2]);
      const mask = t([1, 0, 1, 1], [1, 1, 2, 2]);
      // errors 0.1, 0.6 (anomalous), 0, 0.5: normal mean (0.1 + 0 + 0.5) / 3 = 0.2, anomalous mean 0.6 -> 0.4
      expect(balancedSegmentationLoss(map, mask).item()).toBeCloseTo(0.4, 6);
      // plain L1 would be 1.2 / 4 = 0.3
      expect(segmentationLoss(map, mask).item()).toBeCloseTo(0.3, 6);
    });
  });

  it('makes the "everything normal" answer expensive when anomalies are rare', () => {
    tidy(() => {
      const mask = t([1, 1, 1, 0], [1, 1, 2, 2]);
      const allNormal = Tensor.ones([1, 1, 2, 2]);
      expect(segmentationLoss(allNormal, mask).item()).toBeCloseTo(0.25, 6);
      expect(balancedSegmentationLoss(allNormal, mask).item()).toBeCloseTo(0.5, 6);
      expect(balancedSegmentationLoss(mask, mask).item()).toBe(0);
    });
  });
});

describe('focal L_Seg (recipe variant, gamma 2)', () => {
  it('matches -(1 - p_t)^2 log p_t per pixel, averaged (hand case)', () => {
    tidy(() => {
      const map = t([0.9, 0.2, 1, 0.5], [1, 1, 2, 2]);
      const mask = t([1, 0, 1, 1], [1, 1, 2, 2]);
      // p_t = 0.9 (normal), 0.8 (anomalous: 1 - 0.2), 1 (clamped: log 1 = 0), 0.5
      const term = (p: number) => -((1 - p) ** 2) * Math.log(p);
      const want = (term(0.9) + term(0.8) + 0 + term(0.5)) / 4;
      expect(focalSegmentationLoss(map, mask).item()).toBeCloseTo(want, 6);
      // gamma 0 is the binary cross-entropy
      const bce = -(Math.log(0.9) + Math.log(0.8) + Math.log(0.5)) / 4;
      expect(focalSegmentationLoss(map, mask, 0).item()).toBeCloseTo(bce, 5);
    });
  });

  it('has the analytic gradient (finite differences)', () => {
    tidy(() => {
      const values = [0.7, 0.3, 0.95, 0.4];
      const mask = t([1, 0, 1, 0], [1, 1, 2, 2]);
      const map = Tensor.from(Float32Array.from(values), [1, 1, 2, 2], { requiresGrad: true });
      focalSegmentationLoss(map, mask).backward();
      const grad = map.grad!.toFloat32Array();
      const eps = 1e-3;
      values.forEach((_, i) => {
        const shifted = (d: number) =>
          t(
            values.map((v, j) => (j === i ? v + d : v)),
            [1, 1, 2, 2],
          );
        const at = (d: number) => focalSegmentationLoss(shifted(d), mask).item();
        expect(grad[i]).toBeCloseTo((at(eps) - at(-eps)) / (2 * eps), 3);
      });
    });
  });
});

describe('Dice term (recipe variant)', () => {
  it('is 1 - (2|P∩T| + 1) / (|P| + |T| + 1) with P = 1 - map, T = 1 - mask (hand case)', () => {
    tidy(() => {
      const map = t([0.9, 0.2, 1, 0.5], [1, 1, 2, 2]);
      const mask = t([1, 0, 1, 1], [1, 1, 2, 2]);
      // P = 0.1, 0.8, 0, 0.5; T = 0, 1, 0, 0 -> overlap 0.8, |P| 1.4, |T| 1
      expect(diceSegmentationLoss(map, mask).item()).toBeCloseTo(1 - 2.6 / 3.4, 6);
      // a perfect binary answer costs nothing; an empty answer on an anomaly-free batch too
      expect(diceSegmentationLoss(mask, mask).item()).toBeCloseTo(0, 6);
      const ones = Tensor.ones([1, 1, 2, 2]);
      expect(diceSegmentationLoss(ones, ones).item()).toBeCloseTo(0, 6);
    });
  });

  it('prefers a tight answer to a blob twice the defect at equal misses', () => {
    tidy(() => {
      // one anomalous pixel of eight; the blob also marks its neighbour
      const mask = t([1, 1, 1, 0, 1, 1, 1, 1], [1, 1, 2, 4]);
      const tight = t([1, 1, 1, 0, 1, 1, 1, 1], [1, 1, 2, 4]);
      const blob = t([1, 1, 0, 0, 1, 1, 1, 1], [1, 1, 2, 4]);
      expect(diceSegmentationLoss(tight, mask).item()).toBeLessThan(diceSegmentationLoss(blob, mask).item());
    });
  });
});

describe('L_Re (eq. 4): E|x*A - x̂*A| / E|A|', () => {
  it('averages the error over normal pixels only (2x2 worked example)', () => {
    tidy(() => {
      // x = [[0.2, 0.8], [0.5, 1.0]], x̂ = [[0.4, 0.1], [0.5, 0.0]], A = [[1, 0], [1, 1]] (top right anomalous)
      // |x*A - x̂*A| = [[0.2, 0], [0, 1.0]] -> E = 1.2 / 4 = 0.3
      // E|A| = 3 / 4 = 0.75
      // L_Re = 0.3 / 0.75 = 0.4 (= mean error over the three normal pixels; the anomalous 0.7 error is ignored)
      const x = t([0.2, 0.8, 0.5, 1.0], [1, 1, 2, 2]);
      const xHat = t([0.4, 0.1, 0.5, 0.0], [1, 1, 2, 2]);
      const a = t([1, 0, 1, 1], [1, 1, 2, 2]);
      expect(maskedReconstructionLoss(x, xHat, a).item()).toBeCloseTo(0.4, 6);
    });
  });

  it('broadcasts a one-channel mask over colour channels (per-pixel-per-channel mean over normal pixels)', () => {
    tidy(() => {
      // 3 channels, 1x2 image; pixel 0 normal, pixel 1 anomalous. Channel errors at pixel 0: 0.1, 0.2, 0.6
      const x = t([0.5, 0.5, 0.5, 0.5, 0.5, 0.5], [1, 3, 1, 2]);
      const xHat = t([0.4, 0, 0.3, 1, 1.1, 0.9], [1, 3, 1, 2]);
      const a = t([1, 0], [1, 1, 1, 2]);
      // numerator: (0.1 + 0.2 + 0.6) / 6 = 0.15, denominator 1/2 -> 0.3 = mean of the three errors at pixel 0
      expect(maskedReconstructionLoss(x, xHat, a).item()).toBeCloseTo(0.3, 6);
    });
  });

  it('equals the plain L1 error on an all-normal mask, and is finite (0) on an all-anomalous one', () => {
    tidy(() => {
      const x = Tensor.rand([2, 3, 4, 4]);
      const xHat = Tensor.rand([2, 3, 4, 4]);
      const l1 = x.sub(xHat).abs().mean().item();
      expect(maskedReconstructionLoss(x, xHat, Tensor.ones([2, 1, 4, 4])).item()).toBeCloseTo(l1, 6);
      expect(maskedReconstructionLoss(x, xHat, Tensor.zeros([2, 1, 4, 4])).item()).toBe(0);
    });
  });

  it('does not pass gradient to the reconstruction at anomalous pixels', () => {
    tidy(() => {
      const x = t([0.2, 0.8], [1, 1, 1, 2]);
      const xHat = t([0.4, 0.1], [1, 1, 1, 2]);
      xHat.requiresGrad = true;
      maskedReconstructionLoss(x, xHat, t([1, 0], [1, 1, 1, 2])).backward();
      const g = xHat.grad!.toFloat32Array();
      // d/dx̂0 of |x0 - x̂0| / 2 / (1/2) = sign(x̂0 - x0) = 1
      expect(g[0]).toBeCloseTo(1, 6);
      expect(Math.abs(g[1])).toBe(0);
    });
  });
});

describe('adversarial loss (eq. 3 terms, BCE with logits)', () => {
  const sigmoid = (z: number): number => 1 / (1 + Math.exp(-z));

  it('real label: mean of -log(sigmoid(z)); fake label: mean of -log(1 - sigmoid(z))', () => {
    tidy(() => {
      const z = [-2, 0, 0.5, 3];
      const logits = t(z, [4]);
      const real = z.reduce((s, v) => s - Math.log(sigmoid(v)), 0) / 4;
      const fake = z.reduce((s, v) => s - Math.log(1 - sigmoid(v)), 0) / 4;
      expect(adversarialLoss(logits, true).item()).toBeCloseTo(real, 5);
      expect(adversarialLoss(logits, false).item()).toBeCloseTo(fake, 5);
      // at z = 0 both are log 2
      expect(adversarialLoss(t([0], [1]), true).item()).toBeCloseTo(Math.LN2, 6);
    });
  });

  it('does not saturate for confident wrong logits (finite, ~|z|)', () => {
    tidy(() => {
      expect(adversarialLoss(t([-100], [1]), true).item()).toBeCloseTo(100, 3);
      expect(adversarialLoss(t([100], [1]), false).item()).toBeCloseTo(100, 3);
    });
  });
});

describe('adversarial loss kinds, label smoothing, D accuracy (stabilisers)', () => {
  const sigmoid = (z: number): number => 1 / (1 + Math.exp(-z));
  const real = [-2, 0, 0.5, 3];
  const fake = [-1.5, 0.25, 2];
  const mean = (v: number[]): number => v.reduce((a, b) => a + b, 0) / v.length;

  it("'bce': D = BCE(real, 1) + BCE(fake, 0), G = BCE(fake, 1), the same values as eq. 3's terms", () => {
    tidy(() => {
      const d = mean(real.map((z) => -Math.log(sigmoid(z)))) + mean(fake.map((z) => -Math.log(1 - sigmoid(z))));
      expect(discriminatorLoss(t(real, [4]), t(fake, [3]), 'bce').item()).toBeCloseTo(d, 5);
      expect(discriminatorLoss(t(real, [4]), t(fake, [3])).item()).toBeCloseTo(d, 5); // the default
      const g = mean(fake.map((z) => -Math.log(sigmoid(z))));
      expect(generatorAdversarialLoss(t(fake, [3]), 'bce').item()).toBeCloseTo(g, 5);
      expect(generatorAdversarialLoss(t(fake, [3])).item()).toBeCloseTo(g, 5);
    });
  });

  it("one-sided label smoothing: the real target becomes 0.9, the fake one stays 0 ('bce')", () => {
    tidy(() => {
      // -(0.9 log s(z) + 0.1 log(1 - s(z))) per real logit
      const smoothReal = mean(real.map((z) => -(0.9 * Math.log(sigmoid(z)) + 0.1 * Math.log(1 - sigmoid(z)))));
      const fakeTerm = mean(fake.map((z) => -Math.log(1 - sigmoid(z))));
      expect(discriminatorLoss(t(real, [4]), t(fake, [3]), 'bce', 0.9).item()).toBeCloseTo(smoothReal + fakeTerm, 5);
      // hand value at z = 0: 0.9 ln 2 + 0.1 ln 2 = ln 2 either way; at z = 3 smoothing costs 0.1 * 3 more
      const at3 = (label: number): number => discriminatorLoss(t([3], [1]), t([-50], [1]), 'bce', label).item();
      expect(at3(0.9) - at3(1)).toBeCloseTo(0.3, 4);
    });
  });

  it("'hinge': D = mean max(0, 1 - real) + mean max(0, 1 + fake), G = -mean fake (hand values)", () => {
    tidy(() => {
      // real: 3, 1, 0.5, 0 -> 4.5 / 4; fake: 0, 1.25, 3 -> 4.25 / 3
      expect(discriminatorLoss(t(real, [4]), t(fake, [3]), 'hinge').item()).toBeCloseTo(4.5 / 4 + 4.25 / 3, 5);
      expect(generatorAdversarialLoss(t(fake, [3]), 'hinge').item()).toBeCloseTo(-0.75 / 3, 6);
      // a confident D pays nothing
      expect(discriminatorLoss(t([1, 4], [2]), t([-1, -7], [2]), 'hinge').item()).toBe(0);
    });
  });

  it("'least-squares': D = 1/2 mean (real - b)^2 + 1/2 mean fake^2, G = 1/2 mean (fake - 1)^2 (hand values)", () => {
    tidy(() => {
      // real - 1: -3, -1, -0.5, 2 -> 9 + 1 + 0.25 + 4 = 14.25; fake^2: 2.25 + 0.0625 + 4 = 6.3125
      const d = 0.5 * (14.25 / 4) + 0.5 * (6.3125 / 3);
      expect(discriminatorLoss(t(real, [4]), t(fake, [3]), 'least-squares').item()).toBeCloseTo(d, 5);
      // smoothed real target 0.9: real - 0.9: -2.9, -0.9, -0.4, 2.1 -> 8.41 + 0.81 + 0.16 + 4.41 = 13.79
      const smoothed = 0.5 * (13.79 / 4) + 0.5 * (6.3125 / 3);
      expect(discriminatorLoss(t(real, [4]), t(fake, [3]), 'least-squares', 0.9).item()).toBeCloseTo(smoothed, 5);
      // (fake - 1)^2: 6.25 + 0.5625 + 1 = 7.8125
      expect(generatorAdversarialLoss(t(fake, [3]), 'least-squares').item()).toBeCloseTo(0.5 * (7.8125 / 3), 5);
    });
  });

  it('D accuracy: share of real outputs above and of fake outputs below the decision threshold (hand case)', () => {
    tidy(() => {
      // real: -2, 0, 0.5, 3 -> above 0: 2 of 4 (0 itself is not "real"); fake: -1.5, 0.25, 2 -> below 0: 1 of 3
      expect(discriminatorAccuracy(t(real, [4]), true, decisionThreshold('bce'))).toBe(0.5);
      expect(discriminatorAccuracy(t(fake, [3]), false, decisionThreshold('hinge'))).toBeCloseTo(1 / 3, 6);
      // least squares separates at 0.5 (labels 0 and 1): real above 0.5: 3 only; fake below: -1.5, 0.25
      expect(decisionThreshold('least-squares')).toBe(0.5);
      expect(discriminatorAccuracy(t(real, [4]), true, 0.5)).toBe(0.25);
      expect(discriminatorAccuracy(t(fake, [3]), false, 0.5)).toBeCloseTo(2 / 3, 6);
      expect(discriminatorAccuracy(t([], [0]), true)).toBe(0);
    });
  });
});

describe('R1 gradient penalty', () => {
  it('is γ/2 · mean ‖∇_x D(x)‖² and differentiable w.r.t. D (double backward): a linear D by hand', () => {
    tidy(() => {
      // D(x) = sum(w * x) per sample: ∇_x D = w for every sample, so R1 = γ/2 ‖w‖² and ∂R1/∂w = γ w
      const w = t([0.5, -1, 2, 0.25], [1, 4, 1, 1]);
      w.requiresGrad = true;
      const x = Tensor.rand([3, 4, 1, 1]);
      x.requiresGrad = true;
      const logits = x.mul(w).sum([1, 2, 3]);
      const gamma = 10;
      const norm2 = 0.25 + 1 + 4 + 0.0625;
      const penalty = r1Penalty(logits, x, gamma);
      expect(penalty.item()).toBeCloseTo((gamma / 2) * norm2, 4);
      expect(x.grad).toBeNull(); // reset: no reference cycle left behind
      penalty.backward();
      expect(Array.from(w.grad!.toFloat32Array())).toEqual([0.5, -1, 2, 0.25].map((v) => gamma * v));
    });
  });

  it('a nonlinear D: matches the analytic penalty and gradient of D(x) = sum(a · x²)', () => {
    tidy(() => {
      // ∇_x D = 2 a x, so R1 = γ/2 · mean_n Σ 4 a² x²; ∂R1/∂a = γ/2 · mean_n Σ 8 a x² (per channel)
      const a = t([1.5, -0.5], [1, 2, 1, 1]);
      a.requiresGrad = true;
      const xs = [0.2, -1, 0.7, 0.4];
      const x = t(xs, [2, 2, 1, 1]);
      x.requiresGrad = true;
      const penalty = r1Penalty(x.square().mul(a).sum([1, 2, 3]), x, 2);
      const av = [1.5, -0.5];
      const byHand = (xs.reduce((s, v, i) => s + 4 * av[i % 2] ** 2 * v * v, 0) / 2) * (2 / 2);
      expect(penalty.item()).toBeCloseTo(byHand, 5);
      penalty.backward();
      const grad = [0, 1].map((c) => (xs.reduce((s, v, i) => s + (i % 2 === c ? 8 * av[c] * v * v : 0), 0) / 2) * 1);
      const got = Array.from(a.grad!.toFloat32Array());
      got.forEach((g, i) => expect(g).toBeCloseTo(grad[i], 5));
    });
  });

  it('refuses an input that does not require grad', () => {
    tidy(() => {
      const x = Tensor.rand([2, 3]);
      expect(() => r1Penalty(x.sum([1]), x, 1)).toThrow(/require grad/);
    });
  });
});

describe('feature matching', () => {
  it('is the mean squared difference of the features', () => {
    tidy(() => {
      const a = t([1, 2, 3, 4], [1, 4, 1, 1]);
      const b = t([1, 0, 3, 7], [1, 4, 1, 1]);
      // (0 + 4 + 0 + 9) / 4
      expect(featureMatchingLoss(a, b).item()).toBeCloseTo(3.25, 6);
      expect(featureMatchingLoss(b, a).item()).toBeCloseTo(3.25, 6);
    });
  });
});
