/**
 * One AnoSeg optimisation step (paper 3.1-3.2): generator update with L_Seg + L_Re + L_Adv, then a
 * discriminator update on real pairs concat(x, A) against fake pairs concat(x̂, Â).
 */
import { Tensor, tidy } from '../../engine/index.js';
import type { Optimizer } from '../../nn/index.js';
import type { GradientSync } from '../../train/data-parallel.js';
import type { AnoSegGenerator, Discriminator } from './network.js';
import {
  adversarialLoss,
  balancedSegmentationLoss,
  diceSegmentationLoss,
  focalSegmentationLoss,
  maskedReconstructionLoss,
  segmentationLoss,
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
  discriminator: number;
  total: number;
}

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

/**
 * images [N,C,H,W] in [0,1]; masks [N,1,H,W] with 1 = normal; coords: the crops' coordinate channels when
 * training on crops (cropCoordinates). Returns the losses as numbers; every
 * intermediate tensor is released before returning.
 */
export function anosegTrainStep(
  m: AnoSegTrainables,
  images: Tensor,
  masks: Tensor,
  cfg: AnoSegLossConfig,
  coords?: Tensor,
): StepLosses {
  return tidy(() => {
    const out = m.generator.forward(images, coords);
    const lSeg = configuredSegLoss(out.map, masks, cfg);
    let total = lSeg.mul(cfg.segWeight);
    let lRe: Tensor | null = null;
    if (out.reconstruction && cfg.reconstructionWeight > 0) {
      lRe = maskedReconstructionLoss(images, out.reconstruction, masks);
      total = total.add(lRe, cfg.reconstructionWeight);
    }
    const useAdversarial = cfg.adversarialWeight > 0 && m.discriminator && m.discriminatorOptimizer;
    const fakeImage = cfg.fakePair === 'reconstruction' && out.reconstruction ? out.reconstruction : images;
    let lAdv: Tensor | null = null;
    if (useAdversarial) {
      const d = m.discriminator!;
      lAdv = adversarialLoss(d.frozen(() => d.forward(Tensor.cat([fakeImage, out.map], 1))).logits, true);
      total = total.add(lAdv, cfg.adversarialWeight);
    }
    m.generatorOptimizer.zeroGrad();
    total.backward();
    m.syncGradients?.(m.generator.parameters());
    m.generatorOptimizer.step();

    let dLoss = 0;
    if (useAdversarial) {
      const d = m.discriminator!;
      const real = d.forward(Tensor.cat([images, masks], 1)).logits;
      const fake = d.forward(Tensor.cat([fakeImage.detach(), out.map.detach()], 1)).logits;
      const lD = adversarialLoss(real, true).add(adversarialLoss(fake, false));
      m.discriminatorOptimizer!.zeroGrad();
      lD.backward();
      m.syncGradients?.(d.parameters());
      m.discriminatorOptimizer!.step();
      dLoss = lD.item();
    }
    return {
      seg: lSeg.item(),
      reconstruction: lRe ? lRe.item() : 0,
      adversarial: lAdv ? lAdv.item() : 0,
      discriminator: dLoss,
      total: total.item(),
    };
  });
}
