/**
 * One AnoSeg optimisation step (paper 3.1-3.2): generator update with L_Seg + L_Re + L_Adv, then a
 * discriminator update on real pairs concat(x, A) against fake pairs concat(x̂, Â), with the optional
 * discriminator-side stabilisers (DiscriminatorStepOptions) and the balance diagnostics of StepLosses.
 */
import { Tensor, tidy } from '../../engine/index.js';
import type { Optimizer } from '../../nn/index.js';
import { blurMaps } from '../../models/scoring.js';
import type { GradientSync } from '../../train/data-parallel.js';
import type { AnoSegGenerator, Discriminator } from './network.js';
import {
  balancedSegmentationLoss,
  decisionThreshold,
  diceSegmentationLoss,
  discriminatorAccuracy,
  discriminatorLoss,
  focalSegmentationLoss,
  generatorAdversarialLoss,
  maskedReconstructionLoss,
  r1Penalty,
  segmentationLoss,
  type AdversarialLossKind,
} from './losses.js';

export const SEG_LOSSES = ['l1', 'balanced-l1', 'focal'] as const;
export type SegLossKind = (typeof SEG_LOSSES)[number];

/** L_Seg of the configured kind, plus the Dice term when it has a weight. */
export function configuredSegLoss(
  map: Tensor,
  masks: Tensor,
  cfg: Pick<AnoSegLossConfig, 'segLoss' | 'diceWeight'>,
): Tensor {
  const base =
    cfg.segLoss === 'balanced-l1'
      ? balancedSegmentationLoss(map, masks)
      : cfg.segLoss === 'focal'
        ? focalSegmentationLoss(map, masks)
        : segmentationLoss(map, masks);
  return cfg.diceWeight ? base.add(diceSegmentationLoss(map, masks), cfg.diceWeight) : base;
}

export interface AnoSegLossConfig {
  /**
   * 'l1' = eq. 2; 'balanced-l1' = the mean of the L1 errors over anomalous and over normal pixels; 'focal' =
   * focal loss with gamma 2 (DRAEM).
   */
  segLoss: SegLossKind;
  segWeight: number;
  /** Weight of a soft Dice term added to L_Seg (0 = none; absent in configs written before it existed). */
  diceWeight?: number;
  reconstructionWeight: number;
  /** 0 disables adversarial learning (ablation "without adversarial"). */
  adversarialWeight: number;
  /**
   * Eq. 3's fake pair: 'reconstruction' = (x̂, Â) as written in the paper; 'input' = (x, Â), the other reading
   * (the discriminator then judges only the map). Without a reconstruction decoder only 'input' is possible.
   */
  fakePair: 'reconstruction' | 'input';
}

export interface StepLosses {
  seg: number;
  reconstruction: number;
  adversarial: number;
  /** D's adversarial loss of the configured kind (the R1 penalty not included); 0 without L_Adv. */
  discriminator: number;
  total: number;
  /**
   * D's accuracy on this step's real and fake pairs (share of outputs on the right side of its decision threshold,
   * losses.decisionThreshold), measured before D's update; 0 without L_Adv.
   */
  dRealAccuracy: number;
  dFakeAccuracy: number;
  /** 1 when D was updated, 0 when its loss was at or below the floor (or without L_Adv). */
  dUpdated: number;
  /** The weighted R1 penalty added to D's loss (0 when off or when D was not updated). */
  r1: number;
  /**
   * L2 norms of the gradients of segWeight·L_Seg and of adversarialWeight·L_Adv (the weight this step uses, ramp
   * included) w.r.t. the generator's map: how hard each term pulls on the map.
   */
  segGradNorm: number;
  advGradNorm: number;
}

export const REAL_PAIRS = ['all', 'normal'] as const;
/**
 * Eq. 3's real pairs, a detail the paper leaves open: 'all' = every image of the batch with its mask, synthetic
 * anomalies included; 'normal' = the normal images only, with the all-ones mask.
 */
export type RealPairs = (typeof REAL_PAIRS)[number];

/** The discriminator-side settings of one step; every field is optional, absent = the paper's plain eq. 3. */
export interface DiscriminatorStepOptions {
  /** Adversarial loss kind of both players (default 'bce'). */
  loss?: AdversarialLossKind;
  /** Target of real pairs in D's loss (default 1; < 1 = one-sided label smoothing). */
  realLabel?: number;
  /** Standard deviation of the Gaussian instance noise added to every pair D sees this step (default 0). */
  noiseStd?: number;
  /** Weight γ of the R1 penalty γ/2·E‖∇D(real)‖² (default 0 = off). */
  r1Weight?: number;
  /** D is updated only while its loss is above this floor (default 0: always; a loss is never negative). */
  lossFloor?: number;
  /** Which pairs are real (default 'all'). */
  realPairs?: RealPairs;
  /** Gaussian sigma (pixels) applied to the real pairs' masks (default 0 = hard masks). */
  realMaskBlur?: number;
}

const DISCRIMINATOR_DEFAULTS: Required<DiscriminatorStepOptions> = {
  loss: 'bce',
  realLabel: 1,
  noiseStd: 0,
  r1Weight: 0,
  lossFloor: 0,
  realPairs: 'all',
  realMaskBlur: 0,
};

export interface AnoSegTrainables {
  generator: AnoSegGenerator;
  discriminator: Discriminator | null;
  generatorOptimizer: Optimizer;
  discriminatorOptimizer: Optimizer | null;
  /**
   * Called after each backward pass, before the optimiser step, with the parameters about to be updated:
   * data-parallel training averages their gradients over the ranks here (DataParallel.averageGradients).
   */
  syncGradients?: GradientSync;
}

/** x plus Gaussian noise of the given std (x itself for 0). */
function withNoise(x: Tensor, std: number): Tensor {
  return std > 0 ? x.add(Tensor.randn(x.shape).mul(std)) : x;
}

/**
 * Eq. 3's real pairs: concat(x, A) of every image (A blurred with sigma maskBlur when > 0), or of the normal images
 * (mask all ones) with an all-ones mask.
 */
export function realPairsOf(images: Tensor, masks: Tensor, which: RealPairs, maskBlur = 0): Tensor {
  if (which === 'all') return Tensor.cat([images, maskBlur > 0 ? blurMaps(masks, maskBlur) : masks], 1);
  const smallest = masks.amin([1, 2, 3]).toFloat32Array();
  const index = [...smallest].flatMap((v, i) => (v >= 1 ? [i] : []));
  if (index.length === 0)
    throw new Error("realPairs 'normal': the batch has no normal image (lower the anomaly fraction)");
  const [, , h, w] = masks.shape;
  const selected = images.indexSelect(0, Tensor.from(index, [index.length], { dtype: 'int64' }));
  return Tensor.cat([selected, Tensor.ones([index.length, 1, h, w])], 1);
}

/** The generator's loss terms, with the graph cut at the map so each term's gradient there can be read. */
interface GeneratorTerms {
  lSeg: Tensor;
  lRe: Tensor | null;
  lAdv: Tensor | null;
  /** What the generator's backward runs on: its gradients are exactly those of the weighted sum of the terms. */
  objective: Tensor;
  total: Tensor;
  segGradNorm: number;
  advGradNorm: number;
}

/**
 * The generator's terms. The map's graph is cut: the terms are computed on a detached copy of the map (a leaf),
 * each weighted term's gradient w.r.t. it is taken on its own (a backward through the loss, and for L_Adv through
 * the frozen D, so no extra forward), and the objective passed to backward is map·(g_seg + g_adv) summed, plus the
 * reconstruction's terms: its gradient w.r.t. every generator parameter equals that of the weighted sum of the
 * losses, and the generator's graph is traversed once, as before. (The engine has no autograd.grad; this costs
 * two small backward passes and no forward.)
 */
function generatorTerms(
  m: AnoSegTrainables,
  out: { map: Tensor; reconstruction: Tensor | null },
  images: Tensor,
  masks: Tensor,
  cfg: AnoSegLossConfig,
  o: Required<DiscriminatorStepOptions>,
): GeneratorTerms {
  const map = out.map.detach();
  map.requiresGrad = true;
  const lSeg = configuredSegLoss(map, masks, cfg);
  let total = lSeg.mul(cfg.segWeight);
  total.backward();
  const gSeg = map.grad!;
  map.grad = null;
  let mapGrad = gSeg;
  let objective: Tensor | null = null;
  let lRe: Tensor | null = null;
  if (out.reconstruction && cfg.reconstructionWeight > 0) {
    lRe = maskedReconstructionLoss(images, out.reconstruction, masks);
    total = total.add(lRe, cfg.reconstructionWeight);
    objective = lRe.mul(cfg.reconstructionWeight);
  }
  let lAdv: Tensor | null = null;
  let advGradNorm = 0;
  if (cfg.adversarialWeight > 0 && m.discriminator && m.discriminatorOptimizer) {
    const d = m.discriminator;
    const reconstructed = cfg.fakePair === 'reconstruction' && out.reconstruction ? out.reconstruction : null;
    const fakeImage = reconstructed ? reconstructed.detach() : images;
    if (reconstructed) fakeImage.requiresGrad = true;
    const pair = withNoise(Tensor.cat([fakeImage, map], 1), o.noiseStd);
    lAdv = generatorAdversarialLoss(d.frozen(() => d.forward(pair)).logits, o.loss);
    total = total.add(lAdv, cfg.adversarialWeight);
    lAdv.mul(cfg.adversarialWeight).backward();
    const gAdv = map.grad!;
    advGradNorm = gAdv.square().sum().sqrt().item();
    mapGrad = gSeg.add(gAdv);
    if (reconstructed) {
      const viaImage = reconstructed.mul(fakeImage.grad!).sum();
      objective = objective ? viaImage.add(objective) : viaImage;
    }
  }
  const viaMap = out.map.mul(mapGrad).sum();
  return {
    lSeg,
    lRe,
    lAdv,
    objective: objective ? viaMap.add(objective) : viaMap,
    total,
    segGradNorm: gSeg.square().sum().sqrt().item(),
    advGradNorm,
  };
}

/**
 * D's loss as the ranks of a data-parallel group agree on it (their mean, through the gradient averaging hook on
 * a one-number probe), so that all of them take the same update-or-skip decision; the loss itself in one process.
 */
function agreedLoss(value: number, sync: GradientSync | undefined): number {
  if (!sync) return value;
  const probe = Tensor.zeros([1], { requiresGrad: true });
  probe.grad = Tensor.from([value], [1]);
  sync([probe]);
  return probe.grad!.item();
}

interface DiscriminatorResult {
  loss: number;
  realAccuracy: number;
  fakeAccuracy: number;
  updated: boolean;
  r1: number;
}

/** D's update on real pairs against the detached fake pair (fakeImage, map), with the configured stabilisers. */
function discriminatorStep(
  m: AnoSegTrainables,
  images: Tensor,
  masks: Tensor,
  fakePair: Tensor,
  o: Required<DiscriminatorStepOptions>,
): DiscriminatorResult {
  const d = m.discriminator!;
  const real = withNoise(realPairsOf(images, masks, o.realPairs, o.realMaskBlur), o.noiseStd);
  if (o.r1Weight > 0) real.requiresGrad = true;
  const realLogits = d.forward(real).logits;
  const fakeLogits = d.forward(withNoise(fakePair, o.noiseStd)).logits;
  let lD = discriminatorLoss(realLogits, fakeLogits, o.loss, o.realLabel);
  const threshold = decisionThreshold(o.loss);
  const result: DiscriminatorResult = {
    loss: lD.item(),
    realAccuracy: discriminatorAccuracy(realLogits, true, threshold),
    fakeAccuracy: discriminatorAccuracy(fakeLogits, false, threshold),
    updated: true,
    r1: 0,
  };
  if (o.lossFloor > 0 && !(agreedLoss(result.loss, m.syncGradients) > o.lossFloor)) {
    result.updated = false;
    return result;
  }
  if (o.r1Weight > 0) {
    const penalty = r1Penalty(realLogits, real, o.r1Weight);
    result.r1 = penalty.item();
    lD = lD.add(penalty);
  }
  m.discriminatorOptimizer!.zeroGrad();
  lD.backward();
  m.syncGradients?.(d.parameters());
  m.discriminatorOptimizer!.step();
  return result;
}

/**
 * images [N,C,H,W] in [0,1]; masks [N,1,H,W] with 1 = normal; coords: the crops' coordinate channels when
 * training on crops (cropCoordinates); adversarial: the discriminator-side settings of this step (defaults: the
 * plain eq. 3). Returns the losses and diagnostics as numbers; every intermediate tensor is released before
 * returning.
 */
export function anosegTrainStep(
  m: AnoSegTrainables,
  images: Tensor,
  masks: Tensor,
  cfg: AnoSegLossConfig,
  coords?: Tensor,
  adversarial: DiscriminatorStepOptions = {},
): StepLosses {
  const o = { ...DISCRIMINATOR_DEFAULTS, ...adversarial };
  return tidy(() => {
    const out = m.generator.forward(images, coords);
    const t = generatorTerms(m, out, images, masks, cfg, o);
    m.generatorOptimizer.zeroGrad();
    t.objective.backward();
    m.syncGradients?.(m.generator.parameters());
    m.generatorOptimizer.step();

    let dr: DiscriminatorResult | null = null;
    if (t.lAdv) {
      const fakeImage = cfg.fakePair === 'reconstruction' && out.reconstruction ? out.reconstruction : images;
      dr = discriminatorStep(m, images, masks, Tensor.cat([fakeImage.detach(), out.map.detach()], 1), o);
    }
    return {
      seg: t.lSeg.item(),
      reconstruction: t.lRe ? t.lRe.item() : 0,
      adversarial: t.lAdv ? t.lAdv.item() : 0,
      discriminator: dr?.loss ?? 0,
      total: t.total.item(),
      dRealAccuracy: dr?.realAccuracy ?? 0,
      dFakeAccuracy: dr?.fakeAccuracy ?? 0,
      dUpdated: dr?.updated ? 1 : 0,
      r1: dr?.r1 ?? 0,
      segGradNorm: t.segGradNorm,
      advGradNorm: t.advGradNorm,
    };
  });
}
