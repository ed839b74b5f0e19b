import { describe, expect, it } from 'vitest';
import { NO_SEAMS, cropTiles, imageTiles, stitchTiles, tileCount, tileRects, tileSeams, tilingOf } from './tiles.js';
import type { Image } from './types.js';

function ramp(channels: number, height: number, width: number): Image {
  return { channels, height, width, data: Float32Array.from({ length: channels * height * width }, (_, i) => i) };
}

describe('tileCount', () => {
  it('brings a tile nearest square on a log scale: thresholds sqrt(2), sqrt(6), sqrt(12)', () => {
    expect(tileCount(256, 256)).toBe(1);
    expect(tileCount(141, 100)).toBe(1); // 1.41 < sqrt(2)
    expect(tileCount(142, 100)).toBe(2);
    expect(tileCount(100, 244)).toBe(2); // 2.44 < sqrt(6)
    expect(tileCount(100, 245)).toBe(3);
    expect(tileCount(346, 100)).toBe(3); // 3.46 < sqrt(12)
    expect(tileCount(347, 100)).toBe(4);
    // KolektorSDD's 102-103 x 256 images all give 3 tiles (2.49-2.51), magnetic tile's 213 x 256 one
    expect([tileCount(256, 102), tileCount(256, 103), tileCount(256, 213)]).toEqual([3, 3, 1]);
  });
});

describe('tileRects', () => {
  it("partitions the image across its longer side at floor(k * long / n); 'none' is the whole image", () => {
    expect(tileRects(256, 102, 'long-side')).toEqual([
      { top: 0, left: 0, height: 85, width: 102 },
      { top: 85, left: 0, height: 85, width: 102 },
      { top: 170, left: 0, height: 86, width: 102 },
    ]);
    expect(tileRects(40, 90, 'long-side')).toEqual([
      { top: 0, left: 0, height: 40, width: 45 },
      { top: 0, left: 45, height: 40, width: 45 },
    ]);
    expect(tileRects(256, 102, 'none')).toEqual([{ top: 0, left: 0, height: 256, width: 102 }]);
    expect(tileRects(64, 64, 'long-side')).toEqual([{ top: 0, left: 0, height: 64, width: 64 }]);
  });

  it('covers every pixel exactly once for many sizes', () => {
    for (const [h, w] of [
      [7, 31],
      [31, 7],
      [100, 245],
      [13, 13],
      [1, 5],
      [9, 40],
    ]) {
      const seen = new Uint8Array(h * w);
      for (const r of tileRects(h, w, 'long-side')) {
        expect(r.height).toBeGreaterThan(0);
        expect(r.width).toBeGreaterThan(0);
        for (let y = r.top; y < r.top + r.height; y++)
          for (let x = r.left; x < r.left + r.width; x++) seen[y * w + x]++;
      }
      expect(seen.every((v) => v === 1)).toBe(true);
    }
  });

  it('refuses a size that is not a positive integer', () => {
    expect(() => tileRects(0, 5, 'long-side')).toThrow('invalid size 0x5');
    expect(() => tileRects(5, 2.5, 'none')).toThrow('invalid size');
    expect(() => tileRects(5, 20, 'grid' as never)).toThrow("unknown tiling 'grid' (none, long-side)");
  });
});

describe('cropTiles and stitchTiles', () => {
  it('crop each tile (every channel) and put single-channel maps back in place', () => {
    const img = ramp(2, 9, 40);
    const rects = tileRects(9, 40, 'long-side');
    const tiles = cropTiles(img, rects);
    expect(tiles).toHaveLength(rects.length);
    tiles.forEach((t, k) => {
      const r = rects[k];
      expect([t.channels, t.height, t.width]).toEqual([2, r.height, r.width]);
      // pixel (c, y, x) of the tile is pixel (c, top + y, left + x) of the image
      expect(t.data[1 * r.height * r.width + 2 * r.width + 3]).toBe(
        img.data[1 * 9 * 40 + (r.top + 2) * 40 + r.left + 3],
      );
    });
    const first = tiles.map((t) => ({
      channels: 1,
      height: t.height,
      width: t.width,
      data: t.data.slice(0, t.height * t.width),
    }));
    expect(Array.from(stitchTiles(first, rects, 9, 40).data)).toEqual(Array.from(img.data.slice(0, 9 * 40)));
  });

  it('imageTiles is cropTiles of tileRects', () => {
    const img = ramp(1, 9, 40);
    expect(imageTiles(img, 'long-side')).toEqual(cropTiles(img, tileRects(9, 40, 'long-side')));
    expect(imageTiles(img, 'none')[0]).toBe(img);
  });

  it('pass a single whole-image tile through untouched', () => {
    const img = ramp(1, 12, 12);
    const rects = tileRects(12, 12, 'long-side');
    expect(cropTiles(img, rects)[0]).toBe(img);
    expect(stitchTiles([img], rects, 12, 12)).toBe(img);
  });

  it('refuse maps that do not match their tiles', () => {
    const rects = tileRects(10, 30, 'long-side');
    expect(() => stitchTiles([ramp(1, 10, 10)], rects, 10, 30)).toThrow('1 maps for 3 tiles');
    expect(() => stitchTiles([ramp(1, 10, 10), ramp(1, 10, 10), ramp(1, 9, 10)], rects, 10, 30)).toThrow(
      'map 2 is 1x9x10, its tile 1x10x10',
    );
  });
});

describe('tileSeams', () => {
  it('marks the edges tiles share, not the image border', () => {
    const seams = (h: number, w: number) => tileRects(h, w, 'long-side').map((r) => tileSeams(r, h, w));
    // 102 x 256 (KolektorSDD): three tiles side by side
    expect(seams(102, 256)).toEqual([
      { top: false, bottom: false, left: false, right: true },
      { top: false, bottom: false, left: true, right: true },
      { top: false, bottom: false, left: true, right: false },
    ]);
    // 200 x 100: two tiles one above the other
    expect(seams(200, 100)).toEqual([
      { top: false, bottom: true, left: false, right: false },
      { top: true, bottom: false, left: false, right: false },
    ]);
    expect(seams(64, 64)).toEqual([NO_SEAMS]);
    expect(tileRects(102, 256, 'none').map((r) => tileSeams(r, 102, 256))).toEqual([NO_SEAMS]);
  });
});

describe('tilingOf', () => {
  it('reads absent as none and names the source of an unknown value', () => {
    expect(tilingOf(undefined, 'x')).toBe('none');
    expect(tilingOf('long-side', 'x')).toBe('long-side');
    expect(() => tilingOf('grid', 'model.safetensors')).toThrow(
      "model.safetensors: unknown tiling 'grid' (none, long-side)",
    );
  });
});
