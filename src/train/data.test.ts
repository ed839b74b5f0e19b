import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cropImage, fitImage, loadImage, saveImagePng } from '../image/io.js';
import { createImage, type Image } from '../image/types.js';
import { NO_SEAMS } from '../image/tiles.js';
import { paperAnomalyOptions, type AnomalyOptions } from '../synth/anomalies.js';
import { Rng } from '../util/rng.js';
import {
  augmentNormal,
  loadTrainingImages,
  makeSegmentationBatch,
  splitTrainingImages,
  splitValidation,
  syntheticValidationSet,
  thresholdBase,
  type NormalAugment,
} from './data.js';

const NO_AUG: NormalAugment = { hflip: false, vflip: false, rotate90: false, brightness: 0 };

/** Every pixel distinct: value = (index + 1) / (n + 1). */
function ramp(channels: number, height: number, width: number): Image {
  const n = channels * height * width;
  return { channels, height, width, data: Float32Array.from({ length: n }, (_, i) => (i + 1) / (n + 1)) };
}

function randomImage(rng: Rng, channels: number, size: number): Image {
  return {
    channels,
    height: size,
    width: size,
    data: Float32Array.from({ length: channels * size * size }, () => rng.next()),
  };
}

const at = (img: Image, c: number, y: number, x: number): number => img.data[(c * img.height + y) * img.width + x];

describe('splitValidation', () => {
  it('is deterministic, disjoint and covers all items', () => {
    const items = Array.from({ length: 23 }, (_, i) => `img${i}`);
    const a = splitValidation(items, 0.2);
    const b = splitValidation(items, 0.2);
    expect(a).toEqual(b);
    expect(a.validation).toHaveLength(Math.round(23 * 0.2));
    expect(a.train.length + a.validation.length).toBe(23);
    const val = new Set(a.validation);
    expect(a.train.some((t) => val.has(t))).toBe(false);
    expect(new Set([...a.train, ...a.validation])).toEqual(new Set(items));
    // order kept inside each part
    expect(a.train).toEqual(items.filter((i) => !val.has(i)));
  });

  it('spreads the validation items over the list rather than taking a block', () => {
    const items = Array.from({ length: 20 }, (_, i) => i);
    const { validation } = splitValidation(items, 0.25);
    expect(validation).toHaveLength(5);
    expect(Math.min(...validation)).toBeLessThan(5);
    expect(Math.max(...validation)).toBeGreaterThanOrEqual(15);
  });

  it('keeps everything for training with fraction 0 or fewer than 4 items, and takes at least one otherwise', () => {
    expect(splitValidation([1, 2, 3, 4, 5], 0)).toEqual({ train: [1, 2, 3, 4, 5], validation: [] });
    expect(splitValidation([1, 2, 3], 0.4)).toEqual({ train: [1, 2, 3], validation: [] });
    const s = splitValidation([1, 2, 3, 4, 5, 6], 0.01);
    expect(s.validation).toHaveLength(1);
    expect(s.train).toHaveLength(5);
  });
});

describe('splitTrainingImages', () => {
  const img = (v: number): Image => ({ channels: 1, height: 1, width: 1, data: Float32Array.of(v) });

  it('splits the images as splitValidation does, each with all of its tiles', () => {
    // 12 images, image k gives (k % 3) + 1 tiles valued k
    const tilesPerImage = Array.from({ length: 12 }, (_, k) => (k % 3) + 1);
    const images = tilesPerImage.flatMap((n, k) => Array.from({ length: n }, () => img(k)));
    const { train, validation, validationTiles } = splitTrainingImages({ images, tilesPerImage }, 0.25);
    const expected = splitValidation(
      Array.from({ length: 12 }, (_, k) => k),
      0.25,
    );
    const values = (xs: Image[]): number[] => xs.map((x) => x.data[0]);
    expect(values(validation)).toEqual(expected.validation.flatMap((k) => Array<number>(tilesPerImage[k]).fill(k)));
    expect(values(train)).toEqual(expected.train.flatMap((k) => Array<number>(tilesPerImage[k]).fill(k)));
    expect(validationTiles).toEqual(expected.validation.map((k) => tilesPerImage[k]));
  });

  it('without tiling is splitValidation of the images', () => {
    const images = Array.from({ length: 10 }, (_, k) => img(k));
    const { validationTiles, trainSeams, validationSeams, ...split } = splitTrainingImages(
      { images, tilesPerImage: images.map(() => 1) },
      0.1,
    );
    expect(split).toEqual(splitValidation(images, 0.1));
    expect(validationTiles).toEqual([1]);
    expect(trainSeams).toEqual(split.train.map(() => NO_SEAMS));
    expect(validationSeams).toEqual([NO_SEAMS]);
  });
});

describe('thresholdBase', () => {
  const img = (v: number): Image => ({ channels: 1, height: 1, width: 1, data: Float32Array.of(v) });
  const train = Array.from({ length: 12 }, (_, k) => img(k));

  it('is the validation tiles grouped by image', () => {
    const validation = [img(20), img(21), img(22)];
    expect(thresholdBase(train, validation, [2, 1])).toEqual({
      images: validation,
      tilesPerImage: [2, 1],
      fromTraining: false,
    });
  });

  it('falls back on the first 8 training tiles, each its own image, without a validation split', () => {
    expect(thresholdBase(train, [], [])).toEqual({
      images: train.slice(0, 8),
      tilesPerImage: Array<number>(8).fill(1),
      fromTraining: true,
    });
  });
});

describe('syntheticValidationSet', () => {
  const base = Array.from({ length: 3 }, (_, k) => createImage(1, 16, 16, 0.3 + 0.2 * k));

  it("records each entry's base image and the grouping into images", () => {
    const set = syntheticValidationSet(base, new Rng(1), paperAnomalyOptions, [2, 1]);
    expect(set.anomalous).toEqual([true, true, false, true, true, false, true, true, false]);
    expect(set.tiles).toEqual({ baseOf: [0, 0, 0, 1, 1, 1, 2, 2, 2], tilesPerImage: [2, 1] });
    expect(set.images[5]).toBe(base[1]);
    expect(syntheticValidationSet(base, new Rng(1), paperAnomalyOptions).tiles.tilesPerImage).toEqual([1, 1, 1]);
  });

  it('refuses a grouping that does not cover the base images, and seams that do not match them', () => {
    expect(() => syntheticValidationSet(base, new Rng(1), paperAnomalyOptions, [2, 2])).toThrow(
      /tilesPerImage counts 4 tiles for 3 base images/,
    );
    expect(() => syntheticValidationSet(base, new Rng(1), paperAnomalyOptions, [2, 1], [NO_SEAMS])).toThrow(
      /1 seams for 3 base images/,
    );
  });
});

describe('augmentNormal', () => {
  /** Runs the augmentation over many seeds and returns the distinct outputs. */
  function outcomes(img: Image, a: NormalAugment): Image[] {
    const seen = new Map<string, Image>();
    for (let s = 0; s < 40; s++) {
      const out = augmentNormal(img, a, new Rng(s)).image;
      seen.set(Array.from(out.data).join(','), out);
    }
    return [...seen.values()];
  }

  it('horizontal flip mirrors x exactly (or leaves the image as it is)', () => {
    const img = ramp(2, 3, 4);
    const outs = outcomes(img, { ...NO_AUG, hflip: true });
    expect(outs).toHaveLength(2);
    const flipped = outs.find((o) => o.data[0] !== img.data[0])!;
    expect(outs.find((o) => o !== flipped)!.data).toEqual(img.data);
    for (let c = 0; c < 2; c++)
      for (let y = 0; y < 3; y++) for (let x = 0; x < 4; x++) expect(at(flipped, c, y, x)).toBe(at(img, c, y, 3 - x));
  });

  it('vertical flip mirrors y exactly', () => {
    const img = ramp(2, 3, 4);
    const outs = outcomes(img, { ...NO_AUG, vflip: true });
    expect(outs).toHaveLength(2);
    const flipped = outs.find((o) => o.data[0] !== img.data[0])!;
    for (let c = 0; c < 2; c++)
      for (let y = 0; y < 3; y++) for (let x = 0; x < 4; x++) expect(at(flipped, c, y, x)).toBe(at(img, c, 2 - y, x));
  });

  it('rotate90 turns square images by a right angle (hand-checked 3x3) and leaves non-square ones alone', () => {
    const img: Image = { channels: 1, height: 3, width: 3, data: Float32Array.from([1, 2, 3, 4, 5, 6, 7, 8, 9]) };
    const outs = outcomes(img, { ...NO_AUG, rotate90: true });
    expect(outs).toHaveLength(2);
    const turned = outs.find((o) => o.data[0] !== 1)!;
    // 1 2 3      7 4 1
    // 4 5 6  ->  8 5 2   (clockwise)
    // 7 8 9      9 6 3
    expect(Array.from(turned.data)).toEqual([7, 4, 1, 8, 5, 2, 9, 6, 3]);
    expect(outcomes(ramp(1, 3, 4), { ...NO_AUG, rotate90: true })).toHaveLength(1);
  });

  it('all flips together stay within the 8 symmetries of the square and keep the pixel values', () => {
    const img = ramp(3, 5, 5);
    const outs = outcomes(img, { hflip: true, vflip: true, rotate90: true, brightness: 0 });
    expect(outs.length).toBeGreaterThan(4);
    expect(outs.length).toBeLessThanOrEqual(8);
    const sorted = Array.from(img.data).sort();
    for (const o of outs) {
      expect(o.height).toBe(5);
      expect(Array.from(o.data).sort()).toEqual(sorted);
    }
  });

  it('moves the seams with the image: each seam flag follows its marked edge through every flip and turn', () => {
    // a 4 x 4 image whose top row is 1 and right column 0.5 (the rest 0): after augmenting, the seams must sit
    // where those rows / columns went
    const img = createImage(1, 4, 4);
    for (let x = 0; x < 4; x++) img.data[x] = 1;
    for (let y = 1; y < 4; y++) img.data[y * 4 + 3] = 0.5;
    const edges = (o: Image, v: number) => {
      const row = (y: number) => [0, 1, 2].every((k) => o.data[y * 4 + 1 + (k === 2 ? 1 : k)] === v);
      const col = (x: number) => [1, 2].every((y) => o.data[y * 4 + x] === v);
      return { top: row(0), bottom: row(3), left: col(0), right: col(3) };
    };
    const seen = new Set<string>();
    for (let s = 0; s < 60; s++) {
      const top = augmentNormal(img, { hflip: true, vflip: true, rotate90: true, brightness: 0 }, new Rng(s), {
        ...NO_SEAMS,
        top: true,
      });
      expect(top.seams).toEqual(edges(top.image, 1));
      const right = augmentNormal(img, { hflip: true, vflip: true, rotate90: true, brightness: 0 }, new Rng(s), {
        ...NO_SEAMS,
        right: true,
      });
      expect(right.seams).toEqual(edges(right.image, 0.5));
      seen.add(JSON.stringify(top.seams));
    }
    expect(seen.size).toBe(4);
    expect(augmentNormal(img, NO_AUG, new Rng(1)).seams).toEqual(NO_SEAMS);
  });

  it('brightness scales every pixel by one factor within the range and clamps to [0, 1]; input untouched', () => {
    const img = ramp(3, 4, 4);
    const copy = Float32Array.from(img.data);
    for (let s = 0; s < 10; s++) {
      const out = augmentNormal(img, { ...NO_AUG, brightness: 0.2 }, new Rng(s)).image;
      const f = out.data[0] / img.data[0];
      expect(f).toBeGreaterThanOrEqual(0.8 - 1e-6);
      expect(f).toBeLessThanOrEqual(1.2 + 1e-6);
      for (let i = 0; i < img.data.length; i++) expect(out.data[i]).toBeCloseTo(Math.min(1, img.data[i] * f), 5);
    }
    expect(img.data).toEqual(copy);
    const bright: Image = { channels: 1, height: 1, width: 2, data: Float32Array.from([0.99, 1]) };
    for (let s = 0; s < 10; s++) {
      for (const v of augmentNormal(bright, { ...NO_AUG, brightness: 0.5 }, new Rng(s)).image.data)
        expect(v).toBeLessThanOrEqual(1);
    }
  });
});

describe('makeSegmentationBatch', () => {
  it('with a crop size cuts windows of the source at the offsets it reports, anomalies made on the window', () => {
    const source = ramp(1, 20, 20);
    const b = makeSegmentationBatch([source], 6, 0.5, paperAnomalyOptions, NO_AUG, new Rng(4), 8);
    expect(b.offsets).toHaveLength(6);
    b.images.forEach((img, i) => {
      expect([img.height, img.width, b.masks[i].height, b.masks[i].width]).toEqual([8, 8, 8, 8]);
      const { y, x } = b.offsets[i];
      expect(y >= 0 && x >= 0 && y + 8 <= 20 && x + 8 <= 20).toBe(true);
      // pixels marked normal are the source's pixels at the window's place
      for (let r = 0; r < 8; r++)
        for (let c = 0; c < 8; c++)
          if (b.masks[i].data[r * 8 + c] === 1) expect(at(img, 0, r, c)).toBe(at(source, 0, y + r, x + c));
    });
    expect(b.masks.slice(0, 3).every((m) => m.data.some((v) => v === 0))).toBe(true);
    expect(new Set(b.offsets.map((o) => `${o.y},${o.x}`)).size).toBeGreaterThan(1);
    // without a crop: whole images at offset 0
    const whole = makeSegmentationBatch([source], 2, 0.5, paperAnomalyOptions, NO_AUG, new Rng(4));
    expect(whole.offsets).toEqual([
      { y: 0, x: 0 },
      { y: 0, x: 0 },
    ]);
    expect(whole.images[0].height).toBe(20);
    expect(() => makeSegmentationBatch([source], 2, 0.5, paperAnomalyOptions, NO_AUG, new Rng(4), 32)).toThrow(
      /crop of 32 px is larger than a 20x20 image/,
    );
  });

  it.each([
    [4, 0.5, 2],
    [3, 0.5, 2],
    [5, 0.25, 1],
    [4, 0, 0],
    [3, 1, 3],
  ])('batch %i with fraction %f has %i synthetic anomalies, first', (batch, fraction, expected) => {
    const rng = new Rng(5);
    const pool = [randomImage(rng, 3, 16), randomImage(rng, 3, 16)];
    const b = makeSegmentationBatch(pool, batch, fraction, paperAnomalyOptions, NO_AUG, new Rng(9));
    expect(b.images).toHaveLength(batch);
    expect(b.masks).toHaveLength(batch);
    const anomalous = b.masks.map((m) => m.data.some((v) => v === 0));
    expect(anomalous).toEqual(Array.from({ length: batch }, (_, i) => i < expected));
  });

  it.each<[string, Partial<AnomalyOptions>]>([
    ['paper CutPaste', {}],
    ['plain CutPaste, gmm shape', { hardAugmentation: false, maskShape: 'gmm' }],
    ['texture source, perlin shape', { source: 'texture', maskShape: 'perlin' }],
  ])('%s: masks are 0 exactly where pixels changed, 1 elsewhere; normal images untouched', (_, opts) => {
    const anomaly = { ...paperAnomalyOptions, ...opts };
    const base = randomImage(new Rng(1), 3, 24);
    const baseCopy = Float32Array.from(base.data);
    const n = 24 * 24;
    for (let s = 0; s < 12; s++) {
      const b = makeSegmentationBatch([base], 4, 0.5, anomaly, NO_AUG, new Rng(100 + s));
      b.images.forEach((img, i) => {
        const mask = b.masks[i];
        expect(mask.channels).toBe(1);
        expect(mask.height).toBe(24);
        expect(mask.data.every((v) => v === 0 || v === 1)).toBe(true);
        let changedPixels = 0;
        for (let p = 0; p < n; p++) {
          let changed = false;
          for (let c = 0; c < 3; c++) changed ||= img.data[c * n + p] !== base.data[c * n + p];
          if (changed) changedPixels++;
          expect(`seed ${s} image ${i} pixel ${p}: changed ${changed} mask ${mask.data[p]}`).toBe(
            `seed ${s} image ${i} pixel ${p}: changed ${changed} mask ${changed ? 0 : 1}`,
          );
        }
        if (i < 2) expect(changedPixels).toBeGreaterThan(0);
        else expect(changedPixels).toBe(0);
      });
    }
    expect(base.data).toEqual(baseCopy);
  });

  it('is reproducible from the seed', () => {
    const pool = [randomImage(new Rng(2), 1, 16), randomImage(new Rng(3), 1, 16)];
    const aug: NormalAugment = { hflip: true, vflip: true, rotate90: true, brightness: 0.1 };
    const a = makeSegmentationBatch(pool, 4, 0.5, paperAnomalyOptions, aug, new Rng(7));
    const b = makeSegmentationBatch(pool, 4, 0.5, paperAnomalyOptions, aug, new Rng(7));
    expect(a.images.map((i) => Array.from(i.data))).toEqual(b.images.map((i) => Array.from(i.data)));
    expect(a.masks.map((i) => Array.from(i.data))).toEqual(b.masks.map((i) => Array.from(i.data)));
  });

  it("lets placement 'seams' cross a pool image's seams (a crop only where it lies on them); none = no seams", () => {
    const pool = [randomImage(new Rng(5), 1, 32)];
    const opts = { ...paperAnomalyOptions, placement: 'seams' as const, hardAugmentation: false };
    const seams = [{ ...NO_SEAMS, top: true }];
    const topRowHit = (m: Image) => m.data.subarray(0, m.width).some((v) => v === 0);
    const batch = makeSegmentationBatch(pool, 200, 1, opts, NO_AUG, new Rng(9), null, seams);
    const cut = batch.masks.filter(topRowHit).length;
    const plain = makeSegmentationBatch(pool, 200, 1, { ...opts, placement: 'inside' }, NO_AUG, new Rng(9));
    // inside, a box touches the top row only when flush with it
    expect(cut).toBeGreaterThan(plain.masks.filter(topRowHit).length + 20);
    const none = makeSegmentationBatch(pool, 20, 1, opts, NO_AUG, new Rng(9));
    const noneGiven = makeSegmentationBatch(pool, 20, 1, opts, NO_AUG, new Rng(9), null, [NO_SEAMS]);
    const inside = makeSegmentationBatch(pool, 20, 1, { ...opts, placement: 'inside' }, NO_AUG, new Rng(9));
    expect(none.masks.map((m) => Array.from(m.data))).toEqual(inside.masks.map((m) => Array.from(m.data)));
    expect(noneGiven.masks.map((m) => Array.from(m.data))).toEqual(inside.masks.map((m) => Array.from(m.data)));
    // 16 px crops of a 20 px image: only those at y = 0 keep the seam, so they touch their top row far more often
    const small = [randomImage(new Rng(6), 1, 20)];
    const crops = makeSegmentationBatch(small, 400, 1, opts, NO_AUG, new Rng(10), 16, seams);
    const share = (onSeam: boolean) => {
      const idx = crops.offsets.map((o, i) => ((o.y === 0) === onSeam ? i : -1)).filter((i) => i >= 0);
      return idx.filter((i) => topRowHit(crops.masks[i])).length / idx.length;
    };
    expect(share(true)).toBeGreaterThan(share(false) + 0.1);
    expect(() => makeSegmentationBatch(pool, 2, 1, opts, NO_AUG, new Rng(1), null, [])).toThrow(/0 seams for 1 images/);
  });

  it("uses a donor from the pool for source 'other-image'", () => {
    const rng = new Rng(4);
    const pool = [randomImage(rng, 3, 16), randomImage(rng, 3, 16), randomImage(rng, 3, 16)];
    const b = makeSegmentationBatch(
      pool,
      4,
      1,
      { ...paperAnomalyOptions, source: 'other-image', hardAugmentation: false },
      NO_AUG,
      new Rng(8),
    );
    for (const m of b.masks) expect(m.data.some((v) => v === 0)).toBe(true);
  });
});

describe('loadTrainingImages', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'anoseg-data-'));
    const rng = new Rng(3);
    for (let i = 0; i < 3; i++) {
      await saveImagePng(path.join(dir, `rgb${i}.png`), { ...randomImage(rng, 3, 20), width: 20, height: 20 });
      await saveImagePng(path.join(dir, `gray${i}.png`), randomImage(rng, 1, 24));
    }
    await writeFile(path.join(dir, 'broken.png'), Buffer.from('this is not a png at all'));
  });
  afterAll(() => rm(dir, { recursive: true, force: true }));

  it('fits images to the resolution, follows the first image for channels, skips unreadable files', async () => {
    const failures: string[] = [];
    const paths = ['rgb0.png', 'broken.png', 'rgb1.png', 'gray0.png'].map((f) => path.join(dir, f));
    const r = await loadTrainingImages(paths, 32, 'stretch', 'auto', (f) => failures.push(f.path));
    expect(r.channels).toBe(3);
    expect(r.images).toHaveLength(3);
    for (const img of r.images) expect([img.channels, img.height, img.width]).toEqual([3, 32, 32]);
    expect(r.paths.map((p) => path.basename(p))).toEqual(['rgb0.png', 'rgb1.png', 'gray0.png']);
    expect(r.failures.map((f) => path.basename(f.path))).toEqual(['broken.png']);
    expect(failures).toEqual([path.join(dir, 'broken.png')]);

    const gray = await loadTrainingImages([path.join(dir, 'gray1.png'), path.join(dir, 'rgb2.png')], 32, 'pad', 'auto');
    expect(gray.channels).toBe(1);
    for (const img of gray.images) expect(img.channels).toBe(1);

    const forced = await loadTrainingImages([path.join(dir, 'gray2.png')], 32, 'crop', 3);
    expect(forced.images[0].channels).toBe(3);
  });

  it('with tiling fits each tile of an elongated image (a square one stays whole) and counts them per image', async () => {
    const rng = new Rng(4);
    const long = path.join(dir, 'long.png');
    await saveImagePng(long, { channels: 1, height: 10, width: 20, data: randomImage(rng, 1, 20).data.slice(0, 200) });
    const paths = [long, path.join(dir, 'gray0.png')];
    const r = await loadTrainingImages(paths, 16, 'stretch', 'auto', undefined, 'long-side');
    expect(r.tilesPerImage).toEqual([2, 1]);
    expect(r.images).toHaveLength(3);
    for (const img of r.images) expect([img.channels, img.height, img.width]).toEqual([1, 16, 16]);
    // the first tile is the left 10 x 10 square, fitted
    const stored = await loadImage(long, { channels: 1 });
    expect(r.images[0]).toEqual(fitImage(cropImage(stored, 0, 0, 10, 10), 16, 'stretch').image);
    expect(r.images[1]).toEqual(fitImage(cropImage(stored, 0, 10, 10, 10), 16, 'stretch').image);
    const open = { top: false, bottom: false };
    expect(r.seams).toEqual([{ ...open, left: false, right: true }, { ...open, left: true, right: false }, NO_SEAMS]);
    const plain = await loadTrainingImages(paths, 16, 'stretch', 'auto');
    expect(plain.tilesPerImage).toEqual([1, 1]);
    expect(plain.seams).toEqual([NO_SEAMS, NO_SEAMS]);
  });

  it('fails clearly with no paths or nothing readable', async () => {
    await expect(loadTrainingImages([], 32, 'stretch', 'auto')).rejects.toThrow('no training images');
    await expect(loadTrainingImages([path.join(dir, 'broken.png')], 32, 'stretch', 'auto')).rejects.toThrow(
      /could be read.*broken\.png/,
    );
    await expect(loadTrainingImages([path.join(dir, 'broken.png')], 32, 'stretch', 3)).rejects.toThrow(
      'none of the training images could be read',
    );
  });
});
