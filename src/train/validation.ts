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
 * How a tile-level validation set groups into images (models with tiling, src/image/tiles.ts): the base tile each
 * scored entry was made from (an index into the tiles it was built on) and how many consecutive base tiles each
 * validation image has.
 */
export interface ValidationTiles {
  baseOf: readonly number[];
  tilesPerImage: readonly number[];
}

/**
 * Image-level scores of a tile-level validation set, as prediction scores an image (its highest tile's score): a
 * normal image scores the maximum over its tiles as they are, and a synthetic anomaly on one tile the maximum of that
 * tile and the image's other tiles as they are. Every base tile must have exactly one normal entry. Without it the
 * image threshold would be chosen per tile, and an image of n tiles would be rejected about n times as often.
 */
export function imageLevelScores(
  scores: ArrayLike<number>,
  anomalous: readonly boolean[],
  tiles: ValidationTiles,
): { normal: number[]; anomalous: number[] } {
  const { baseOf, tilesPerImage } = tiles;
  const nBase = tilesPerImage.reduce((a, b) => a + b, 0);
  if (baseOf.length !== anomalous.length || scores.length !== anomalous.length)
    throw new Error(
      `imageLevelScores: ${scores.length} scores, ${anomalous.length} labels and ${baseOf.length} base tiles`,
    );
  const imageOf: number[] = tilesPerImage.flatMap((n, k) => Array<number>(n).fill(k));
  const tileScore = new Array<number | undefined>(nBase).fill(undefined);
  baseOf.forEach((b, i) => {
    if (!(Number.isInteger(b) && b >= 0 && b < nBase))
      throw new Error(`imageLevelScores: base tile ${b} of entry ${i} is not one of the ${nBase} tiles`);
    if (anomalous[i]) return;
    if (tileScore[b] !== undefined) throw new Error(`imageLevelScores: base tile ${b} has two normal entries`);
    tileScore[b] = scores[i];
  });
  const missing = tileScore.findIndex((v) => v === undefined);
  if (missing >= 0) throw new Error(`imageLevelScores: base tile ${missing} has no normal entry`);
  const asIs = tileScore as number[];
  const first: number[] = [];
  tilesPerImage.reduce((at, n) => (first.push(at), at + n), 0);
  /** The highest score among image k's tiles as they are, leaving out tile `except`. */
  const othersMax = (k: number, except: number): number => {
    let m = -Infinity;
    for (let t = first[k]; t < first[k] + tilesPerImage[k]; t++) if (t !== except) m = Math.max(m, asIs[t]);
    return m;
  };
  return {
    normal: tilesPerImage.map((_, k) => othersMax(k, -1)),
    anomalous: baseOf.flatMap((b, i) => (anomalous[i] ? [Math.max(scores[i], othersMax(imageOf[b], b))] : [])),
  };
}

/**
 * Thresholds and AUROCs from scored validation images; `masks[i]` is the synthetic anomaly's mask (1 = normal,
 * the synthetic-anomaly convention) of an anomalous image, null for a normal one.
 */
export function thresholdsFromValidation(
  scored: { maps: Image[]; scores: ArrayLike<number> },
  masks: readonly (Image | null)[],
  tiles?: ValidationTiles,
): SyntheticValidation {
  const pixNormal: number[] = [];
  const pixAnomalous: number[] = [];
  masks.forEach((m, i) => {
    const map = scored.maps[i].data;
    for (let j = 0; j < map.length; j += 7) (m && m.data[j] < 0.5 ? pixAnomalous : pixNormal).push(map[j]);
  });
  const anomalous = masks.map((m) => m !== null);
  const { normal: normalScores, anomalous: anomalousScores } = tiles
    ? imageLevelScores(scored.scores, anomalous, tiles)
    : {
        normal: anomalous.flatMap((a, i) => (a ? [] : [scored.scores[i]])),
        anomalous: anomalous.flatMap((a, i) => (a ? [scored.scores[i]] : [])),
      };
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
 * seed + 1,000,003) and chooses the thresholds on them (PaDiM, PatchCore, ensembles). With `tilesPerImage` the
 * normals are tiles, that many per validation image in order, and the image threshold is chosen on image-level
 * scores (imageLevelScores).
 */
export function syntheticValidation(
  score: (images: Image[]) => { maps: Image[]; scores: ArrayLike<number> },
  normals: readonly Image[],
  seed: number,
  tilesPerImage?: readonly number[],
): SyntheticValidation {
  const { images, masks, baseOf } = syntheticValidationSet(normals, seed);
  return thresholdsFromValidation(score(images), masks, tilesPerImage && { baseOf, tilesPerImage });
}

/**
 * The images syntheticValidation scores: every normal image, then two synthetic anomalies made from it, with their
 * masks (null for the normal image) and the index of the normal image each was made from.
 */
export function syntheticValidationSet(
  normals: readonly Image[],
  seed: number,
): { images: Image[]; masks: (Image | null)[]; baseOf: number[] } {
  const rng = new Rng(seed + 1_000_003);
  const images: Image[] = [];
  const masks: (Image | null)[] = [];
  const baseOf: number[] = [];
  normals.forEach((img, b) => {
    images.push(img);
    masks.push(null);
    baseOf.push(b);
    for (let k = 0; k < 2; k++) {
      const syn = makeSyntheticAnomaly(img, rng);
      images.push(syn.image);
      masks.push(syn.mask);
      baseOf.push(b);
    }
  });
  return { images, masks, baseOf };
}
