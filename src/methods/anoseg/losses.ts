/**
 * AnoSeg's losses (paper eqs. 2-4). Masks and maps use the paper's convention: 1 = normal, 0 = anomalous.
 */
import { Tensor, F, op } from '../../engine/index.js';

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

/**
 * The adversarial loss kinds (a stabiliser switch, not in the paper): 'bce' = eq. 3 (the generator's term in
 * its non-saturating form -log D); 'hinge' (Lim & Ye 2017, Miyato et al. 2018): D minimises
 * E[max(0, 1 - D(real))] + E[max(0, 1 + D(fake))], G minimises -E[D(fake)]; 'least-squares' (LSGAN, Mao et al.
 * 2017, labels 0 / 1): D minimises 1/2 E[(D(real) - 1)^2] + 1/2 E[D(fake)^2], G minimises 1/2 E[(D(fake) - 1)^2].
 */
export const ADVERSARIAL_LOSSES = ['bce', 'hinge', 'least-squares'] as const;
export type AdversarialLossKind = (typeof ADVERSARIAL_LOSSES)[number];

/** The generator's adversarial term on D's outputs for its fake pairs. */
export function generatorAdversarialLoss(fakeLogits: Tensor, kind: AdversarialLossKind = 'bce'): Tensor {
  if (kind === 'hinge') return fakeLogits.mean().neg();
  if (kind === 'least-squares') return fakeLogits.sub(1).square().mean().mul(0.5);
  return adversarialLoss(fakeLogits, true);
}

/**
 * The discriminator's loss on its outputs for real and fake pairs. `realLabel` < 1 is one-sided label smoothing
 * (Salimans et al. 2016: the real target becomes e.g. 0.9, the fake one stays 0); it applies to 'bce' and
 * 'least-squares' (the hinge loss has no target to smooth: validateAdversarial refuses the combination).
 */
export function discriminatorLoss(
  realLogits: Tensor,
  fakeLogits: Tensor,
  kind: AdversarialLossKind = 'bce',
  realLabel = 1,
): Tensor {
  if (kind === 'hinge') return realLogits.rsub(1).relu().mean().add(fakeLogits.add(1).relu().mean());
  if (kind === 'least-squares')
    return realLogits.sub(realLabel).square().mean().mul(0.5).add(fakeLogits.square().mean().mul(0.5));
  const real =
    realLabel === 1
      ? adversarialLoss(realLogits, true)
      : F.bceWithLogits(realLogits, Tensor.full(realLogits.shape, realLabel));
  return real.add(adversarialLoss(fakeLogits, false));
}

/**
 * Where D's output separates "real" from "fake": 0 for the logit losses ('bce', 'hinge'), the midpoint 0.5 of the
 * labels 0 and 1 for 'least-squares'.
 */
export function decisionThreshold(kind: AdversarialLossKind): number {
  return kind === 'least-squares' ? 0.5 : 0;
}

/**
 * D's accuracy on a set of pairs: the share of outputs above the threshold for real pairs, below it for fake
 * ones (an output exactly at the threshold counts as wrong). 0 for an empty set.
 */
export function discriminatorAccuracy(logits: Tensor, real: boolean, threshold = 0): number {
  const n = logits.numel;
  if (n === 0) return 0;
  const right = real ? logits.gt(threshold) : logits.lt(threshold);
  return right.to('float32').sum().item() / n;
}

/**
 * R1 gradient penalty (Mescheder et al. 2018) on real pairs: weight/2 · E_x ‖∇_x D(x)‖², the gradient taken of D's
 * logits w.r.t. its input. `realInput` is a leaf that requires grad and `realLogits` D's outputs for it. The
 * gradient is computed with create_graph (aten::_backward, the op behind PyTorch's Tensor.backward, through the
 * dispatcher: the engine's backward() has no create_graph), so the penalty is differentiable w.r.t. D's
 * parameters (double backward). D's graph is retained for the loss it is added to; the input's .grad is reset
 * to break the reference cycle create_graph leaves.
 */
export function r1Penalty(realLogits: Tensor, realInput: Tensor, weight: number): Tensor {
  if (!realInput.requiresGrad) throw new Error('r1Penalty: the real input must require grad');
  op('aten::_backward', realLogits.sum(), [realInput], null, true, true);
  const g = realInput.grad;
  realInput.grad = null;
  if (!g) throw new Error('r1Penalty: no gradient reached the real input');
  const dims = g.shape.slice(1).map((_, i) => i + 1);
  return g
    .square()
    .sum(dims)
    .mean()
    .mul(weight / 2);
}

/** Feature matching (Salimans et al. 2016; Appendix A L_fea): mean squared difference of features. */
export function featureMatchingLoss(a: Tensor, b: Tensor): Tensor {
  return F.mseLoss(a, b);
}
