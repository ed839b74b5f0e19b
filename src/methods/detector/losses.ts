/**
 * Losses and score of the anomaly detector built on AnoSeg's anomaly map (paper 3.4 and Appendix A).
 *
 * Pairs follow the paper's convention: maps and masks are 1 = normal. A "pair" is the discriminator input
 * concat(image, map) (or the image alone for the Table 5 base variants that have no map input):
 * - real pair  (x_Nor, A_Nor): a normal image with the all-ones normal mask;
 * - fake pair  (x̂_Nor, Â_Nor): the detector's reconstruction with AnoSeg's normal map of the input;
 * - anomaly pair (x_Ano, A_Ano): a synthetic anomaly with its mask (L_cls only).
 *
 * Every loss is a mean over the batch (and over elements for the squared/absolute errors), so values do not
 * depend on batch size or resolution.
 */
import { Tensor, F } from '../../engine/index.js';
import { adversarialLoss } from '../anoseg/losses.js';

/**
 * L_Adv^AD (eq. 6), discriminator side: -E[log D(real)] - E[log(1 - D(fake))] as binary cross-entropy on logits
 * (the maximisation over D written as the minimisation of the BCE). Synthetic anomalies are never real here.
 */
export function detectorAdversarialLoss(realLogits: Tensor, fakeLogits: Tensor): Tensor {
  return adversarialLoss(realLogits, true).add(adversarialLoss(fakeLogits, false));
}

/**
 * L_Adv^AD, generator side (non-saturating form): -E[log D(fake)], i.e. the fake pair labelled real.
 */
export function detectorGeneratorAdversarialLoss(fakeLogits: Tensor): Tensor {
  return adversarialLoss(fakeLogits, true);
}

/**
 * L_cls (Appendix A.1): synthetic anomaly pairs (x_Ano, A_Ano) labelled fake, normal pairs (x_Nor, A_Nor) real:
 * -E[log(1 - D(anomaly))] - E[log D(normal)].
 */
export function anomalyClassificationLoss(normalLogits: Tensor, anomalyLogits: Tensor): Tensor {
  return adversarialLoss(normalLogits, true).add(adversarialLoss(anomalyLogits, false));
}

/**
 * L_fea (Appendix A.1): E||f(x_Nor, A_Nor) - f(x̂_Nor, Â_Nor)||², the mean squared difference of the
 * discriminator's second-to-last-layer features. Pass the real features detached when only the generator
 * should learn from it (Salimans et al. 2016).
 */
export function detectorFeatureMatchingLoss(realFeatures: Tensor, fakeFeatures: Tensor): Tensor {
  return F.mseLoss(fakeFeatures, realFeatures);
}

/** Reconstruction loss of the detector's generator on normal images: E|x - x̂| (L1, as AnoSeg's L_Re). */
export function detectorReconstructionLoss(image: Tensor, reconstruction: Tensor): Tensor {
  return F.l1Loss(reconstruction, image);
}

/** Per-image mean of the squared difference of two [N, ...] tensors -> [N]. */
export function perImageMse(a: Tensor, b: Tensor): Tensor {
  const d = a.sub(b).square();
  return d.ndim > 1 ? d.flatten(1).mean(1) : d;
}

export interface DetectorScoreWeights {
  /** Weight of the feature term (paper: 1). */
  alpha: number;
  /** Weight of the image term (paper: 0.1). */
  beta: number;
}

export const PAPER_SCORE_WEIGHTS: Readonly<DetectorScoreWeights> = Object.freeze({ alpha: 1, beta: 0.1 });

/**
 * Anomaly score of eq. 5, one value per image:
 * alpha * MSE(f(concat(x, A_Nor)), f(concat(x̂, Â))) + beta * MSE(x, x̂).
 * realFeatures / fakeFeatures are f of the real and fake pairs ([N, ...]); image / reconstruction [N, C, H, W].
 */
export function detectorScore(
  realFeatures: Tensor,
  fakeFeatures: Tensor,
  image: Tensor,
  reconstruction: Tensor,
  w: DetectorScoreWeights = PAPER_SCORE_WEIGHTS,
): Tensor {
  return perImageMse(realFeatures, fakeFeatures).mul(w.alpha).add(perImageMse(image, reconstruction), w.beta);
}

/**
 * The discriminator input of a pair: concat(image, map) along channels, or the image alone when map is null
 * (Table 5 base variants). image [N, C, H, W]; map [N, 1, H, W].
 */
export function detectorPair(image: Tensor, map: Tensor | null): Tensor {
  return map ? Tensor.cat([image, map], 1) : image;
}

/** A_Nor: the all-ones normal mask [N, 1, H, W] for images [N, C, H, W]. */
export function normalMaskLike(image: Tensor): Tensor {
  const [n, , h, w] = image.shape;
  return Tensor.ones([n, 1, h, w]);
}
