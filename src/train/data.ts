/**
 * Training data for AnoSeg held in memory at model resolution: the normal images, a held-out validation
 * split, and batch assembly (normal images + synthetic anomalies with their masks, paper eq. 1).
 */
import type { Image } from '../image/types.js';
import { cloneImage } from '../image/types.js';
import { cropImage, fitImage, type FitAspect } from '../image/io.js';
import { cropTiles, NO_SEAMS, tileRects, tileSeams, type TileSeams, type Tiling } from '../image/tiles.js';
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
  /** Each of `images`' seams with its neighbouring tiles (none without tiling). */
  seams: TileSeams[];
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
  const rects = loaded.images.map(({ image }) => tileRects(image.height, image.width, tiling));
  const tiles = loaded.images.map(({ image }, i) => cropTiles(image, rects[i]));
  return {
    images: tiles.flat().map((t) => fitImage(t, resolution, aspect).image),
    tilesPerImage: tiles.map((t) => t.length),
    seams: loaded.images.flatMap(({ image }, i) => rects[i].map((r) => tileSeams(r, image.height, image.width))),
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
 * `validationTiles`: how many of `validation` each validation image gave, in order; `trainSeams` and
 * `validationSeams`: the seams of each of `train` and `validation` (none where `loaded` gives none).
 */
export function splitTrainingImages(
  loaded: Pick<LoadedTrainingImages, 'images' | 'tilesPerImage'> & { seams?: readonly TileSeams[] },
  fraction: number,
): {
  train: Image[];
  validation: Image[];
  validationTiles: number[];
  trainSeams: TileSeams[];
  validationSeams: TileSeams[];
} {
  let at = 0;
  const perImage = loaded.tilesPerImage.map((n) => {
    const k = at;
    at += n;
    return loaded.images.slice(k, at).map((image, j) => ({ image, seams: loaded.seams?.[k + j] ?? NO_SEAMS }));
  });
  const { train, validation } = splitValidation(perImage, fraction);
  return {
    train: train.flat().map((t) => t.image),
    validation: validation.flat().map((t) => t.image),
    validationTiles: validation.map((t) => t.length),
    trainSeams: train.flat().map((t) => t.seams),
    validationSeams: validation.flat().map((t) => t.seams),
  };
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

/** A tile's seams after flipH (mirror left-right). */
const seamsFlippedH = (s: TileSeams): TileSeams => ({ ...s, left: s.right, right: s.left });
/** A tile's seams after flipV (mirror top-bottom). */
const seamsFlippedV = (s: TileSeams): TileSeams => ({ ...s, top: s.bottom, bottom: s.top });
/** A tile's seams after transpose (top <-> left, bottom <-> right). */
const seamsTransposed = (s: TileSeams): TileSeams => ({ top: s.left, bottom: s.right, left: s.top, right: s.bottom });

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

/**
 * Random flips / right-angle rotations / brightness change of a normal image; `seams` (the image's tile seams)
 * moved with it.
 */
export function augmentNormal(
  img: Image,
  a: NormalAugment,
  rng: Rng,
  seams: Readonly<TileSeams> = NO_SEAMS,
): { image: Image; seams: TileSeams } {
  let out = img;
  let s: TileSeams = { ...seams };
  if (a.hflip && rng.chance(0.5)) [out, s] = [flipH(out), seamsFlippedH(s)];
  if (a.vflip && rng.chance(0.5)) [out, s] = [flipV(out), seamsFlippedV(s)];
  if (a.rotate90 && out.height === out.width && rng.chance(0.5))
    [out, s] = [flipH(transpose(out)), seamsFlippedH(seamsTransposed(s))];
  if (a.brightness > 0) {
    const f = 1 + rng.uniform(-a.brightness, a.brightness);
    out = out === img ? cloneImage(out) : out;
    for (let i = 0; i < out.data.length; i++) out.data[i] = Math.min(1, Math.max(0, out.data[i] * f));
  }
  return { image: out, seams: s };
}

export interface SegmentationBatch {
  images: Image[];
  /** 1 = normal, 0 = anomalous */
  masks: Image[];
  /** Top-left corner of each image in its full-resolution source (0, 0 without cropping). */
  offsets: { y: number; x: number }[];
}

/**
 * A random square window of `size` pixels (the whole image when it is exactly that size). It keeps the image's
 * seams on the edges it shares with the image.
 */
function randomCrop(
  img: Image,
  size: number,
  rng: Rng,
  seams: Readonly<TileSeams>,
): { image: Image; y: number; x: number; seams: TileSeams } {
  if (img.height < size || img.width < size)
    throw new Error(`training crop of ${size} px is larger than a ${img.height}x${img.width} image`);
  if (img.height === size && img.width === size) return { image: img, y: 0, x: 0, seams: { ...seams } };
  const y = rng.int(0, img.height - size);
  const x = rng.int(0, img.width - size);
  return {
    image: cropImage(img, y, x, size, size),
    y,
    x,
    seams: {
      top: seams.top && y === 0,
      bottom: seams.bottom && y + size === img.height,
      left: seams.left && x === 0,
      right: seams.right && x + size === img.width,
    },
  };
}

/**
 * Paper eq. 1: a batch of normal images (all-ones masks) and synthetic anomalies (their masks). With `crop`,
 * each image is a random `crop`-pixel window of a full-resolution image (the anomaly is made on the window), so
 * a fully convolutional network trains at the cost of the window and predicts on the whole image.
 * `seams`: the tile seams of each of `pool` (none by default), for the anomalies' placement 'seams'.
 */
export function makeSegmentationBatch(
  pool: readonly Image[],
  batchSize: number,
  anomalyFraction: number,
  anomaly: AnomalyOptions,
  augment: NormalAugment,
  rng: Rng,
  crop: number | null = null,
  seams?: readonly TileSeams[],
): SegmentationBatch {
  if (seams && seams.length !== pool.length)
    throw new Error(`makeSegmentationBatch: ${seams.length} seams for ${pool.length} images`);
  const nAnomalous = Math.round(batchSize * anomalyFraction);
  const images: Image[] = [];
  const masks: Image[] = [];
  const offsets: { y: number; x: number }[] = [];
  const window = (img: Image, s: Readonly<TileSeams>): { image: Image; y: number; x: number; seams: TileSeams } =>
    crop === null ? { image: img, y: 0, x: 0, seams: { ...s } } : randomCrop(img, crop, rng, s);
  for (let i = 0; i < batchSize; i++) {
    const k = rng.pickIndex(pool.length);
    const augmented = augmentNormal(pool[k], augment, rng, seams?.[k]);
    const { image: base, y, x, seams: baseSeams } = window(augmented.image, augmented.seams);
    offsets.push({ y, x });
    if (i < nAnomalous) {
      const donor =
        anomaly.source === 'other-image' || anomaly.source === 'mixed'
          ? window(rng.pick(pool), NO_SEAMS).image
          : undefined;
      const s = makeSyntheticAnomaly(base, rng, anomaly, donor, baseSeams);
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
  /** The tile seams of each of `pool` and of `validation` (none without tiling). */
  poolSeams: TileSeams[];
  validationSeams: TileSeams[];
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
  const split = splitTrainingImages(loaded, o.validationFraction);
  return {
    pool: split.train,
    validation: split.validation,
    validationTiles: split.validationTiles,
    poolSeams: split.trainSeams,
    validationSeams: split.validationSeams,
    channels: loaded.channels,
    failures: loaded.failures,
  };
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
 * of `base` are the tiles of one validation image (default 1 each: no tiling); `seams`: each of `base`'s tile
 * seams (none by default), for the anomalies' placement 'seams'.
 */
export function syntheticValidationSet(
  base: readonly Image[],
  rng: Rng,
  anomaly: AnomalyOptions,
  tilesPerImage: readonly number[] = base.map(() => 1),
  seams?: readonly TileSeams[],
): SyntheticValidationSet {
  const tiles = tilesPerImage.reduce((a, b) => a + b, 0);
  if (tiles !== base.length)
    throw new Error(`syntheticValidationSet: tilesPerImage counts ${tiles} tiles for ${base.length} base images`);
  if (seams && seams.length !== base.length)
    throw new Error(`syntheticValidationSet: ${seams.length} seams for ${base.length} base images`);
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
      const syn = makeSyntheticAnomaly(img, rng, anomaly, donor, seams?.[b]);
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
