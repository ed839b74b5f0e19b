/**
 * AnoSeg's losses (paper eqs. 2-4). Masks and maps use the paper's convention: 1 = normal, 0 = anomalous.
 */
import { Tensor, F } from '../../engine/index.js';

/** L_Seg (eq. 2): mean absolute difference between the predicted map and the target mask. */
export function segmentationLoss(map: Tensor, target: Tensor): Tensor {
  return F.l1Loss(map, target);
}

/**
 * Class-balanced variant of L_Seg (recipe lever, not in the paper): the mean absolute error over anomalous
 * pixels and over normal pixels, averaged. With plain L1 and anomalies covering ~2% of the pixels, predicting
 * "all normal" already scores a low loss; balancing removes that trivial minimum.
 */
export function balancedSegmentationLoss(map: Tensor, target: Tensor): Tensor {
  const err = map.sub(target).abs();
  const anomalous = target.rsub(1);
  const normalTerm = err.mul(target).sum().div(target.sum().clamp(1));
  const anomalousTerm = err.mul(anomalous).sum().div(anomalous.sum().clamp(1));
  return normalTerm.add(anomalousTerm).mul(0.5);
}

/**
 * Focal loss (Lin et al. 2017; DRAEM's segmentation loss, gamma 2) on the map read as P(normal): the
 * cross-entropy of each pixel scaled by (1 - p_t)^gamma, so easy pixels (most of the normal background) fade
 * out without the blanket up-weighting of a class that makes balanced losses paint blobs.
 */
export function focalSegmentationLoss(map: Tensor, target: Tensor, gamma = 2): Tensor {
  // p_t: the probability given to the true class (map where normal, 1 - map where anomalous)
  const pt = map
    .mul(target)
    .add(map.rsub(1).mul(target.rsub(1)))
    .clamp(1e-6, 1);
  return pt.rsub(1).pow(gamma).mul(pt.log()).mean().neg();
}

/**
 * Soft Dice loss (Milletari et al. 2016) of the anomalous class over the whole batch: 1 - 2|P∩T| / (|P| + |T|)
 * with P = 1 - map, T = 1 - target (+1 smoothing, so a batch without anomalies asks for an empty map). It
 * scores overlap, i.e. the outline, where per-pixel losses score pixels one by one.
 */
export function diceSegmentationLoss(map: Tensor, target: Tensor): Tensor {
  const p = map.rsub(1);
  const t = target.rsub(1);
  const overlap = p.mul(t).sum().mul(2).add(1);
  return overlap.div(p.sum().add(t.sum()).add(1)).rsub(1);
}

/**
 * L_Re (eq. 4): reconstruction error on normal pixels only, E|x*A - x̂*A| / E|A|, so the decoder never learns
 * to reproduce the synthetic anomalies. The mask [N,1,H,W] broadcasts over the image channels.
 */
export function maskedReconstructionLoss(image: Tensor, reconstruction: Tensor, mask: Tensor): Tensor {
  const err = image.sub(reconstruction).mul(mask).abs().mean();
  return err.div(mask.mean().clamp(1e-6));
}

/**
 * Binary cross-entropy of discriminator logits against a constant label (eq. 3's log D / log(1 - D) terms);
 * with logits it equals BCE(sigmoid(logits)) without the saturation.
 */
export function adversarialLoss(logits: Tensor, real: boolean): Tensor {
  const target = real ? Tensor.ones(logits.shape) : Tensor.zeros(logits.shape);
  return F.bceWithLogits(logits, target);
}

/** Feature matching (Salimans et al. 2016; Appendix A L_fea): mean squared difference of features. */
export function featureMatchingLoss(a: Tensor, b: Tensor): Tensor {
  return F.mseLoss(a, b);
}
