/**
 * Thresholds chosen on validation data only: held-out normal images and synthetic anomalies made from them. The
 * image threshold maximises Youden's J between the normal and the anomalous image scores, the pixel threshold
 * likewise between map values outside and inside the synthetic masks (every 7th pixel); the same data give a
 * synthetic-validation image / pixel AUROC for the log.
 */
import { auroc, youdenThreshold } from '../eval/metrics.js';
import type { Image } from '../image/types.js';
import { makeSyntheticAnomaly } from '../synth/anomalies.js';
import { Rng } from '../util/rng.js';

export interface SyntheticValidation {
  imageThreshold: number;
  pixelThreshold: number;
  imageAuroc: number;
  pixelAuroc: number;
}

/**
 * Thresholds and AUROCs from scored validation images; `masks[i]` is the synthetic anomaly's mask (1 = normal,
 * the synthetic-anomaly convention) of an anomalous image, null for a normal one.
 */
export function thresholdsFromValidation(
  scored: { maps: Image[]; scores: ArrayLike<number> },
  masks: readonly (Image | null)[],
): SyntheticValidation {
  const normalScores: number[] = [];
  const anomalousScores: number[] = [];
  const pixNormal: number[] = [];
  const pixAnomalous: number[] = [];
  masks.forEach((m, i) => {
    (m ? anomalousScores : normalScores).push(scored.scores[i]);
    const map = scored.maps[i].data;
    for (let j = 0; j < map.length; j += 7) (m && m.data[j] < 0.5 ? pixAnomalous : pixNormal).push(map[j]);
  });
  return {
    imageThreshold: youdenThreshold(normalScores, anomalousScores),
    pixelThreshold: youdenThreshold(pixNormal, pixAnomalous),
    imageAuroc: auroc(
      [...normalScores, ...anomalousScores],
      [...normalScores.map(() => false), ...anomalousScores.map(() => true)],
    ),
    pixelAuroc: auroc(
      [...pixNormal, ...pixAnomalous],
      [...pixNormal.map(() => false), ...pixAnomalous.map(() => true)],
    ),
  };
}

/**
 * Scores every normal image as it is and with two synthetic anomalies (the paper's CutPaste settings, seeded by
 * seed + 1,000,003) and chooses the thresholds on them (PaDiM, PatchCore, ensembles).
 */
export function syntheticValidation(
  score: (images: Image[]) => { maps: Image[]; scores: ArrayLike<number> },
  normals: readonly Image[],
  seed: number,
): SyntheticValidation {
  const { images, masks } = syntheticValidationSet(normals, seed);
  return thresholdsFromValidation(score(images), masks);
}

/**
 * The images syntheticValidation scores: every normal image, then two synthetic anomalies made from it, with their
 * masks (null for the normal image).
 */
export function syntheticValidationSet(
  normals: readonly Image[],
  seed: number,
): { images: Image[]; masks: (Image | null)[] } {
  const rng = new Rng(seed + 1_000_003);
  const images: Image[] = [];
  const masks: (Image | null)[] = [];
  for (const img of normals) {
    images.push(img);
    masks.push(null);
    for (let k = 0; k < 2; k++) {
      const syn = makeSyntheticAnomaly(img, rng);
      images.push(syn.image);
      masks.push(syn.mask);
    }
  }
  return { images, masks };
}
