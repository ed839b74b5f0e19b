import { describe, expect, it } from 'vitest';
import { Tensor, tidy } from '../../engine/index.js';
import {
  anomalyClassificationLoss,
  detectorAdversarialLoss,
  detectorFeatureMatchingLoss,
  detectorGeneratorAdversarialLoss,
  detectorPair,
  detectorReconstructionLoss,
  detectorScore,
  normalMaskLike,
  perImageMse,
  PAPER_SCORE_WEIGHTS,
} from './losses.js';

const LN3 = Math.log(3);
const t = (v: number[], shape?: number[]): Tensor => Tensor.from(v, shape);

// Binary cross-entropy of a logit z: label 1 -> log(1 + e^-z), label 0 -> log(1 + e^z).
// z = 0: ln 2 = 0.693147 for either label; z = ln 3: label 1 -> ln(4/3) = 0.287682, label 0 -> ln 4 = 1.386294;
// z = -ln 3: label 1 -> ln 4 = 1.386294, label 0 -> ln(4/3) = 0.287682.

describe('detector losses (Appendix A.1)', () => {
  it('L_Adv^AD: real pairs labelled 1, fake pairs labelled 0', () => {
    tidy(() => {
      // real logits [0, ln3] -> (0.693147 + 0.287682) / 2 = 0.490415
      // fake logits [ln3, -ln3] as fake -> (1.386294 + 0.287682) / 2 = 0.836988
      const l = detectorAdversarialLoss(t([0, LN3]), t([LN3, -LN3])).item();
      expect(l).toBeCloseTo(0.490415 + 0.836988, 5);
      // swapping the roles must change the value: real [ln3, -ln3] -> (0.287682 + 1.386294) / 2, fake [0, ln3] -> (0.693147 + 1.386294) / 2
      expect(detectorAdversarialLoss(t([LN3, -LN3]), t([0, LN3])).item()).toBeCloseTo(0.836988 + 1.039721, 5);
    });
  });

  it('generator adversarial term: the fake pair labelled real', () => {
    tidy(() => {
      // [ln3, -ln3] labelled 1 -> (0.287682 + 1.386294) / 2 = 0.836988
      expect(detectorGeneratorAdversarialLoss(t([LN3, -LN3])).item()).toBeCloseTo(0.836988, 5);
      // a confident "real" verdict costs little: z = 10 -> log(1 + e^-10) = 4.54e-5
      expect(detectorGeneratorAdversarialLoss(t([10])).item()).toBeCloseTo(4.54e-5, 6);
    });
  });

  it('L_cls: synthetic anomalies labelled fake, normal pairs real', () => {
    tidy(() => {
      // normal [ln3, ln3] as real -> 0.287682; anomalies [0, -ln3] as fake -> (0.693147 + 0.287682) / 2 = 0.490415
      expect(anomalyClassificationLoss(t([LN3, LN3]), t([0, -LN3])).item()).toBeCloseTo(0.287682 + 0.490415, 5);
    });
  });

  it('L_fea: mean squared feature difference', () => {
    tidy(() => {
      // real [[1,2],[3,4]], fake [[1,0],[3,7]]: differences 0, 2, 0, -3 -> (0 + 4 + 0 + 9) / 4 = 3.25
      expect(detectorFeatureMatchingLoss(t([1, 2, 3, 4], [2, 2]), t([1, 0, 3, 7], [2, 2])).item()).toBeCloseTo(3.25, 6);
    });
  });

  it('reconstruction loss: mean absolute error', () => {
    tidy(() => {
      // |0.5-0.25| + |0.25-0.25| + |1-0.5| + |0-0.5| = 1.25, over 4 pixels = 0.3125
      const x = t([0.5, 0.25, 1, 0], [1, 1, 2, 2]);
      const xhat = t([0.25, 0.25, 0.5, 0.5], [1, 1, 2, 2]);
      expect(detectorReconstructionLoss(x, xhat).item()).toBeCloseTo(0.3125, 6);
    });
  });
});

describe('anomaly score (eq. 5)', () => {
  // Two images. Features [2, 1, 1, 2]: image 0 real [1, 2] vs fake [2, 2] -> MSE (1 + 0) / 2 = 0.5;
  // image 1 real [0, 0] vs fake [1, -1] -> (1 + 1) / 2 = 1.
  // Images [2, 1, 1, 2]: image 0 x = x̂ -> 0; image 1 x [1, 0] vs x̂ [0, 0] -> (1 + 0) / 2 = 0.5.
  const inputs = (): Tensor[] => [
    t([1, 2, 0, 0], [2, 1, 1, 2]),
    t([2, 2, 1, -1], [2, 1, 1, 2]),
    t([0.5, 0.5, 1, 0], [2, 1, 1, 2]),
    t([0.5, 0.5, 0, 0], [2, 1, 1, 2]),
  ];

  it('per-image MSE', () => {
    tidy(() => {
      const [rf, ff, x, xh] = inputs();
      expect([...perImageMse(rf, ff).toFloat32Array()]).toEqual([0.5, 1]);
      expect([...perImageMse(x, xh).toFloat32Array()]).toEqual([0, 0.5]);
    });
  });

  it('alpha = 1, beta = 0.1 (paper): [0.5 + 0.1 * 0, 1 + 0.1 * 0.5] = [0.5, 1.05]', () => {
    tidy(() => {
      const [rf, ff, x, xh] = inputs();
      expect(PAPER_SCORE_WEIGHTS).toEqual({ alpha: 1, beta: 0.1 });
      const s = detectorScore(rf, ff, x, xh).toFloat32Array();
      expect(s.length).toBe(2);
      expect(s[0]).toBeCloseTo(0.5, 6);
      expect(s[1]).toBeCloseTo(1.05, 6);
    });
  });

  it('other weights: alpha = 2, beta = 1 -> [1, 2.5]; alpha = 0 leaves only the image term', () => {
    tidy(() => {
      const [rf, ff, x, xh] = inputs();
      const s = detectorScore(rf, ff, x, xh, { alpha: 2, beta: 1 }).toFloat32Array();
      expect(s[0]).toBeCloseTo(1, 6);
      expect(s[1]).toBeCloseTo(2.5, 6);
      const img = detectorScore(rf, ff, x, xh, { alpha: 0, beta: 1 }).toFloat32Array();
      expect([...img]).toEqual([0, 0.5]);
    });
  });

  it('pairs: concat(image, map) along channels, image alone without a map; A_Nor is all ones', () => {
    tidy(() => {
      const x = Tensor.zeros([2, 3, 4, 4]);
      const ones = normalMaskLike(x);
      expect(ones.shape).toEqual([2, 1, 4, 4]);
      expect(ones.sum().item()).toBe(32);
      const p = detectorPair(x, ones);
      expect(p.shape).toEqual([2, 4, 4, 4]);
      expect(p.slice(1, 3, 4).sum().item()).toBe(32);
      expect(p.slice(1, 0, 3).sum().item()).toBe(0);
      expect(detectorPair(x, null)).toBe(x);
    });
  });
});
