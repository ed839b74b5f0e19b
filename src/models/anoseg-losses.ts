/**
 * AnoSeg's losses (paper eqs. 2-4). Masks and maps use the paper's convention: 1 = normal, 0 = anomalous.
 */
import { Tensor, F } from '../engine/index.js';

/** L_Seg (eq. 2): mean absolute difference between the predicted map and the target mask. */
export function segmentationLoss(map: Tensor, target: Tensor): Tensor {
  return F.l1Loss(map, target);
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
