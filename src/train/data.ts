/**
 * Training data for AnoSeg held in memory at model resolution: the normal images, a held-out validation
 * split, and batch assembly (normal images + synthetic anomalies with their masks, paper eq. 1).
 */
import type { Image } from '../image/types.js';
import { cloneImage } from '../image/types.js';
import { cropImage, fitImage, type FitAspect } from '../image/io.js';
import { imageTiles, type Tiling } from '../image/tiles.js';
import { loadImages, type LoadFailure } from '../data/dataset.js';
import { makeSyntheticAnomaly, normalMask, type AnomalyOptions } from '../synth/anomalies.js';
import { Rng } from '../util/rng.js';
import type { ValidationTiles } from './validation.js';

export interface NormalAugment {
  hflip: boolean;
  vflip: boolean;
  rotate90: boolean;
  brightness: number;
}

export interface LoadedTrainingImages {
  /** The fitted model inputs: each readable image's tiles in order (the image itself without tiling). */
  images: Image[];
  /** How many of `images` each readable image gave, in the order of `paths`. */
  tilesPerImage: number[];
  paths: string[];
  failures: LoadFailure[];
  channels: 1 | 3;
}

/**
 * Loads and fits training images, with `tiling` each of its tiles (src/image/tiles.ts). The channel count follows
 * the first readable image unless given (grayscale data sets stay 1-channel). Unreadable files are collected, not
 * fatal, unless none is readable.
 */
export async function loadTrainingImages(
  paths: readonly string[],
  resolution: number,
  aspect: FitAspect,
  channels: 1 | 3 | 'auto',
  onError?: (f: LoadFailure) => void,
  tiling: Tiling = 'none',
): Promise<LoadedTrainingImages> {
  if (paths.length === 0) throw new Error('no training images');
  let ch: 1 | 3;
  if (channels === 'auto') {
    const probe = await loadImages(paths.slice(0, 8), { channels: 'keep' });
    const first = probe.images[0];
    if (!first)
      throw new Error(
        `none of the first training images could be read (${probe.failures[0]?.path}: ${probe.failures[0]?.reason})`,
      );
    ch = first.image.channels === 1 ? 1 : 3;
  } else ch = channels;
  const loaded = await loadImages(paths, { channels: ch }, onError);
  if (loaded.images.length === 0) throw new Error('none of the training images could be read');
  const tiles = loaded.images.map(({ image }) => imageTiles(image, tiling));
  return {
    images: tiles.flat().map((t) => fitImage(t, resolution, aspect).image),
    tilesPerImage: tiles.map((t) => t.length),
    paths: loaded.images.map((l) => l.path),
    failures: loaded.failures,
    channels: ch,
  };
}

/** Deterministic split: every k-th image (by sorted position) goes to validation. */
export function splitValidation<T>(items: readonly T[], fraction: number): { train: T[]; validation: T[] } {
  if (fraction <= 0 || items.length < 4) return { train: [...items], validation: [] };
  const nVal = Math.max(1, Math.round(items.length * fraction));
  const step = items.length / nVal;
  const valIdx = new Set(Array.from({ length: nVal }, (_, i) => Math.floor(i * step + step / 2)));
  return { train: items.filter((_, i) => !valIdx.has(i)), validation: items.filter((_, i) => valIdx.has(i)) };
}

/**
 * splitValidation of the loaded images, then their tiles: every tile of an image falls on the same side.
 * `validationTiles`: how many of `validation` each validation image gave, in order.
 */
export function splitTrainingImages(
  loaded: Pick<LoadedTrainingImages, 'images' | 'tilesPerImage'>,
  fraction: number,
): { train: Image[]; validation: Image[]; validationTiles: number[] } {
  let at = 0;
  const perImage = loaded.tilesPerImage.map((n) => loaded.images.slice(at, (at += n)));
  const { train, validation } = splitValidation(perImage, fraction);
  return { train: train.flat(), validation: validation.flat(), validationTiles: validation.map((t) => t.length) };
}

/**
 * The normal images a trainer's thresholds come from: the validation tiles grouped by image, or, with no validation
 * split (too few images), the first training tiles, each counted as an image of its own.
 */
export function thresholdBase(
  train: readonly Image[],
  validation: readonly Image[],
  validationTiles: readonly number[],
): { images: Image[]; tilesPerImage: number[]; fromTraining: boolean } {
  if (validation.length) return { images: [...validation], tilesPerImage: [...validationTiles], fromTraining: false };
  const images = train.slice(0, Math.min(8, train.length));
  return { images, tilesPerImage: images.map(() => 1), fromTraining: true };
}

function flipH(img: Image): Image {
  const out = cloneImage(img);
  const { channels: C, height: H, width: W } = img;
  for (let c = 0; c < C; c++)
    for (let y = 0; y < H; y++)
      for (let x = 0; x < W; x++) out.data[(c * H + y) * W + x] = img.data[(c * H + y) * W + (W - 1 - x)];
  return out;
}

function flipV(img: Image): Image {
  const out = cloneImage(img);
  const { channels: C, height: H, width: W } = img;
  for (let c = 0; c < C; c++)
    for (let y = 0; y < H; y++)
      out.data.set(img.data.subarray((c * H + H - 1 - y) * W, (c * H + H - y) * W), (c * H + y) * W);
  return out;
}

function transpose(img: Image): Image {
  const { channels: C, height: H, width: W } = img;
  const out = { channels: C, height: W, width: H, data: new Float32Array(img.data.length) };
  for (let c = 0; c < C; c++)
    for (let y = 0; y < H; y++)
      for (let x = 0; x < W; x++) out.data[(c * W + x) * H + y] = img.data[(c * H + y) * W + x];
  return out;
}

/** Random flips / right-angle rotations / brightness change of a normal image. */
export function augmentNormal(img: Image, a: NormalAugment, rng: Rng): Image {
  let out = img;
  if (a.hflip && rng.chance(0.5)) out = flipH(out);
  if (a.vflip && rng.chance(0.5)) out = flipV(out);
  if (a.rotate90 && out.height === out.width && rng.chance(0.5)) out = flipH(transpose(out));
  if (a.brightness > 0) {
    const f = 1 + rng.uniform(-a.brightness, a.brightness);
    out = out === img ? cloneImage(out) : out;
    for (let i = 0; i < out.data.length; i++) out.data[i] = Math.min(1, Math.max(0, out.data[i] * f));
  }
  return out;
}

export interface SegmentationBatch {
  images: Image[];
  /** 1 = normal, 0 = anomalous */
  masks: Image[];
  /** Top-left corner of each image in its full-resolution source (0, 0 without cropping). */
  offsets: { y: number; x: number }[];
}

/** A random square window of `size` pixels (the whole image when it is exactly that size). */
function randomCrop(img: Image, size: number, rng: Rng): { image: Image; y: number; x: number } {
  if (img.height < size || img.width < size)
    throw new Error(`training crop of ${size} px is larger than a ${img.height}x${img.width} image`);
  if (img.height === size && img.width === size) return { image: img, y: 0, x: 0 };
  const y = rng.int(0, img.height - size);
  const x = rng.int(0, img.width - size);
  return { image: cropImage(img, y, x, size, size), y, x };
}

/**
 * Paper eq. 1: a batch of normal images (all-ones masks) and synthetic anomalies (their masks). With `crop`,
 * each image is a random `crop`-pixel window of a full-resolution image (the anomaly is made on the window), so
 * a fully convolutional network trains at the cost of the window and predicts on the whole image.
 */
export function makeSegmentationBatch(
  pool: readonly Image[],
  batchSize: number,
  anomalyFraction: number,
  anomaly: AnomalyOptions,
  augment: NormalAugment,
  rng: Rng,
  crop: number | null = null,
): SegmentationBatch {
  const nAnomalous = Math.round(batchSize * anomalyFraction);
  const images: Image[] = [];
  const masks: Image[] = [];
  const offsets: { y: number; x: number }[] = [];
  const window = (img: Image): { image: Image; y: number; x: number } =>
    crop === null ? { image: img, y: 0, x: 0 } : randomCrop(img, crop, rng);
  for (let i = 0; i < batchSize; i++) {
    const { image: base, y, x } = window(augmentNormal(rng.pick(pool), augment, rng));
    offsets.push({ y, x });
    if (i < nAnomalous) {
      const donor =
        anomaly.source === 'other-image' || anomaly.source === 'mixed' ? window(rng.pick(pool)).image : undefined;
      const s = makeSyntheticAnomaly(base, rng, anomaly, donor);
      images.push(s.image);
      masks.push(s.mask);
    } else {
      images.push(base);
      masks.push(normalMask(base));
    }
  }
  return { images, masks, offsets };
}

export interface TrainingSet {
  /** Images to train on and the held-out validation images, fitted to the model. */
  pool: Image[];
  validation: Image[];
  /** How many of `validation` each validation image gave (its tiles; 1 each without tiling). */
  validationTiles: number[];
  channels: 1 | 3;
  failures: LoadFailure[];
}

/**
 * The training images of a run (opened with openTrainingData): loaded and fitted, unreadable ones logged and
 * skipped (and, with `warn`, counted on stderr), split into training and validation images.
 */
export async function loadTrainingSet(
  paths: readonly string[],
  o: {
    resolution: number;
    aspect: FitAspect;
    /** Absent = 'none'. */
    tiling?: Tiling;
    channels: 1 | 3 | 'auto';
    validationFraction: number;
    log: { info(line: string): void };
    warn?: boolean;
  },
): Promise<TrainingSet> {
  const loaded = await loadTrainingImages(
    paths,
    o.resolution,
    o.aspect,
    o.channels,
    (f) => o.log.info(`skipped unreadable training image ${f.path}: ${f.reason}`),
    o.tiling,
  );
  if (loaded.failures.length && o.warn) {
    process.stderr.write(
      `warning: ${loaded.failures.length} unreadable training image(s), e.g. ${loaded.failures[0].path}: ${loaded.failures[0].reason}\n`,
    );
  }
  const { train: pool, validation, validationTiles } = splitTrainingImages(loaded, o.validationFraction);
  return { pool, validation, validationTiles, channels: loaded.channels, failures: loaded.failures };
}

/**
 * Validation images and their truth: masks (1 = normal) and whether each image is anomalous; `tiles` says which
 * base image (a tile, with tiling) each entry was made from and how the base tiles group into images.
 */
export interface SyntheticValidationSet {
  images: Image[];
  masks: Image[];
  anomalous: boolean[];
  tiles: ValidationTiles;
}

/**
 * The fixed synthetic validation set: every image of `base` twice with a synthetic anomaly (drawn from `rng`, a
 * donor from `base` where the options ask for one) and once as it is. `tilesPerImage`: how many consecutive images
 * of `base` are the tiles of one validation image (default 1 each: no tiling).
 */
export function syntheticValidationSet(
  base: readonly Image[],
  rng: Rng,
  anomaly: AnomalyOptions,
  tilesPerImage: readonly number[] = base.map(() => 1),
): SyntheticValidationSet {
  const tiles = tilesPerImage.reduce((a, b) => a + b, 0);
  if (tiles !== base.length)
    throw new Error(`syntheticValidationSet: tilesPerImage counts ${tiles} tiles for ${base.length} base images`);
  const baseOf: number[] = [];
  const set: SyntheticValidationSet = {
    images: [],
    masks: [],
    anomalous: [],
    tiles: { baseOf, tilesPerImage: [...tilesPerImage] },
  };
  base.forEach((img, b) => {
    for (let k = 0; k < 2; k++) {
      const donor = anomaly.source === 'other-image' || anomaly.source === 'mixed' ? rng.pick(base) : undefined;
      const syn = makeSyntheticAnomaly(img, rng, anomaly, donor);
      set.images.push(syn.image);
      set.masks.push(syn.mask);
      set.anomalous.push(true);
      baseOf.push(b);
    }
    set.images.push(img);
    set.masks.push(normalMask(img));
    set.anomalous.push(false);
    baseOf.push(b);
  });
  return set;
}
