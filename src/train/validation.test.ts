import { describe, expect, it } from 'vitest';
import { youdenThreshold } from '../eval/metrics.js';
import { createImage, type Image } from '../image/types.js';
import {
  imageLevelScores,
  syntheticValidation,
  syntheticValidationSet,
  thresholdsFromValidation,
} from './validation.js';

/** A 1 x 1 map of value v. */
const px = (v: number): Image => ({ channels: 1, height: 1, width: 1, data: Float32Array.of(v) });

/**
 * Two validation images of three tiles each; every tile scored as it is and with two synthetic anomalies (0.35 and
 * 0.5). Entries in the order [normal, anomaly, anomaly] per tile, as syntheticValidationSet makes them.
 */
const normalTiles = [0.1, 0.2, 0.45, 0.15, 0.25, 0.44];
const entries = normalTiles.flatMap((s, b) => [
  { score: s, anomalous: false, base: b },
  { score: 0.35, anomalous: true, base: b },
  { score: 0.5, anomalous: true, base: b },
]);
const scores = entries.map((e) => e.score);
const anomalous = entries.map((e) => e.anomalous);
const tiles = { baseOf: entries.map((e) => e.base), tilesPerImage: [3, 3] };

describe('imageLevelScores', () => {
  it('scores a normal image by its highest tile and an anomaly by the max of its tile and the other tiles (hand case)', () => {
    const r = imageLevelScores(scores, anomalous, tiles);
    expect(r.normal).toEqual([0.45, 0.44]);
    // image 0: tiles 0 and 1 are outscored by tile 2 as it is (0.45) at 0.35; tile 2's own 0.35 stands over 0.1 and 0.2
    expect(r.anomalous).toEqual([0.45, 0.5, 0.45, 0.5, 0.35, 0.5, 0.44, 0.5, 0.44, 0.5, 0.35, 0.5]);
  });

  it('is the scores themselves when every image is one tile', () => {
    const single = { baseOf: tiles.baseOf, tilesPerImage: [1, 1, 1, 1, 1, 1] };
    const r = imageLevelScores(scores, anomalous, single);
    expect(r.normal).toEqual(normalTiles);
    expect(r.anomalous).toEqual(normalTiles.flatMap(() => [0.35, 0.5]));
  });

  it('refuses inconsistent groupings', () => {
    expect(() => imageLevelScores(scores, anomalous, { ...tiles, baseOf: tiles.baseOf.slice(1) })).toThrow(
      /18 scores, 18 labels and 17 base tiles/,
    );
    expect(() => imageLevelScores(scores, anomalous, { ...tiles, tilesPerImage: [3, 2] })).toThrow(
      /base tile 5 of entry 15 is not one of the 5 tiles/,
    );
    expect(() => imageLevelScores(scores, anomalous, { ...tiles, tilesPerImage: [3, 4] })).toThrow(
      /base tile 6 has no normal entry/,
    );
    const twice = anomalous.map((a, i) => (i === 1 ? false : a));
    expect(() => imageLevelScores(scores, twice, tiles)).toThrow(/base tile 0 has two normal entries/);
  });
});

describe('thresholdsFromValidation', () => {
  const maps = scores.map(px);
  const masks = anomalous.map((a) => (a ? px(0) : null));

  it('chooses the image threshold on image-level scores when given the tiles', () => {
    const perTile = thresholdsFromValidation({ maps, scores }, masks);
    const perImage = thresholdsFromValidation({ maps, scores }, masks, tiles);
    // Youden's J by hand: per tile the best cut is between 0.35 and 0.25 (all anomalies over, 2 of 6 normals too);
    // per image both normal images score over 0.35, and the best cut is between 0.5 and 0.45.
    expect(perTile.imageThreshold).toBeCloseTo(0.3, 12);
    expect(perImage.imageThreshold).toBeCloseTo(0.475, 12);
    expect(perImage.imageThreshold).toBe(
      youdenThreshold([0.45, 0.44], [0.45, 0.5, 0.45, 0.5, 0.35, 0.5, 0.44, 0.5, 0.44, 0.5, 0.35, 0.5]),
    );
    // pixels are unaffected by the grouping
    expect(perImage.pixelThreshold).toBe(perTile.pixelThreshold);
    expect(perImage.pixelAuroc).toBe(perTile.pixelAuroc);
  });

  it('gives the same figures with one tile per image as without tiles', () => {
    const single = { baseOf: tiles.baseOf, tilesPerImage: normalTiles.map(() => 1) };
    expect(thresholdsFromValidation({ maps, scores }, masks, single)).toEqual(
      thresholdsFromValidation({ maps, scores }, masks),
    );
  });
});

describe('syntheticValidation', () => {
  const normals = Array.from({ length: 4 }, (_, k) => createImage(1, 8, 8, 0.2 + 0.1 * k));

  it('records the normal image each entry was made from', () => {
    const set = syntheticValidationSet(normals, 3);
    expect(set.baseOf).toEqual([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]);
    expect(set.masks.map((m) => m !== null)).toEqual(normals.flatMap(() => [false, true, true]));
    expect(set.images[3]).toBe(normals[1]);
  });

  it('passes tilesPerImage on as the grouping of its entries', () => {
    // normal images score as listed, every synthetic anomaly 0.4
    const asIs = [0.1, 0.45, 0.2, 0.44];
    const score = (images: Image[]): { maps: Image[]; scores: number[] } => {
      const s = images.map((img) => (normals.includes(img) ? asIs[normals.indexOf(img)] : 0.4));
      return { maps: s.map(px), scores: s };
    };
    // per tile: the cut under every anomaly (0.3) passes half the normals; per image (two of two tiles) both normal
    // images score over 0.4, and so does half of the anomalies: the cut at 0.4 (J = 0) is the best left.
    expect(syntheticValidation(score, normals, 3).imageThreshold).toBeCloseTo(0.3, 12);
    expect(syntheticValidation(score, normals, 3, [2, 2]).imageThreshold).toBe(0.4);
    expect(syntheticValidation(score, normals, 3, [1, 1, 1, 1])).toEqual(syntheticValidation(score, normals, 3));
  });
});
