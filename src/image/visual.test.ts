import { describe, expect, it } from 'vitest';
import { createImage, type Image } from './types.js';
import { colormapValue, grid, heatmap, hstack, maskOutline, overlay, vstack } from './visual.js';

function pixel(img: Image, y: number, x: number): number[] {
  const n = img.height * img.width;
  return Array.from({ length: img.channels }, (_, c) => img.data[c * n + y * img.width + x]);
}

describe('colormaps', () => {
  it('turbo runs dark blue -> green -> dark red and jet has its textbook anchors', () => {
    const lo = colormapValue(0, 'turbo');
    const mid = colormapValue(0.5, 'turbo');
    const hi = colormapValue(1, 'turbo');
    expect(lo[2]).toBeGreaterThan(lo[0]); // blue-ish
    expect(mid[1]).toBeGreaterThan(mid[2]); // green dominates the middle
    expect(hi[0]).toBeGreaterThan(hi[2]); // red-ish at the top
    // turbo table entries 0, 128 and 255 in 8-bit
    const lut = [
      [lo, [48, 18, 59]],
      [colormapValue(128 / 255, 'turbo'), [164, 252, 60]],
      [hi, [122, 4, 3]],
    ] as const;
    for (const [got, want] of lut) got.forEach((v, i) => expect(Math.abs(v * 255 - want[i])).toBeLessThan(2));
    expect(colormapValue(0, 'jet')).toEqual([0, 0, 0.5]);
    expect(colormapValue(0.5, 'jet')).toEqual([0.5, 1, 0.5]);
    expect(colormapValue(1, 'jet')).toEqual([0.5, 0, 0]);
  });

  it('heatmap clamps out-of-range and NaN values', () => {
    const map = createImage(1, 1, 4);
    map.data.set([-3, 0, 1, 7]);
    const h = heatmap(map, 'jet');
    expect(pixel(h, 0, 0)).toEqual(pixel(h, 0, 1));
    expect(pixel(h, 0, 2)).toEqual(pixel(h, 0, 3));
    map.data[0] = NaN;
    expect(pixel(heatmap(map, 'jet'), 0, 0)).toEqual([0, 0, 0.5]);
    expect(() => heatmap(createImage(3, 1, 1))).toThrow(/1-channel/);
  });
});

describe('overlay / stacking / outline', () => {
  it('overlay blends the heatmap with weight alpha and resizes the map', () => {
    const img = createImage(1, 4, 4, 0.2);
    const map = createImage(1, 2, 2, 1);
    const o = overlay(img, map, 0.25, 'jet');
    expect(o.channels).toBe(3);
    const p = pixel(o, 3, 3);
    expect(p[0]).toBeCloseTo(0.75 * 0.2 + 0.25 * 0.5, 6);
    expect(p[1]).toBeCloseTo(0.75 * 0.2, 6);
    expect(pixel(overlay(img, map, 0), 1, 1)).toEqual([0.2, 0.2, 0.2].map(Math.fround));
  });

  it('hstack places images side by side with a gap, promoting gray to RGB', () => {
    const a = createImage(1, 2, 2, 0.5);
    const b = createImage(3, 3, 1, 0);
    b.data[2 * 3 + 2] = 1; // blue channel, bottom pixel
    const s = hstack([a, b], 1, 1);
    expect([s.channels, s.height, s.width]).toEqual([3, 3, 4]);
    expect(pixel(s, 0, 0)).toEqual([0.5, 0.5, 0.5]);
    expect(pixel(s, 0, 2)).toEqual([1, 1, 1]); // gap
    expect(pixel(s, 2, 0)).toEqual([1, 1, 1]); // padding under the shorter image
    expect(pixel(s, 2, 3)).toEqual([0, 0, 1]);
    const v = vstack([a, a], 0);
    expect([v.channels, v.height, v.width]).toEqual([1, 4, 2]);
    const g = grid([a, a, a], 2, 1);
    expect([g.height, g.width]).toEqual([5, 5]);
    expect(pixel(g, 3, 3)).toEqual([1]); // empty cell of the second row is background
  });

  it('maskOutline colours exactly the boundary of the mask', () => {
    const img = createImage(1, 6, 6, 0);
    const mask = createImage(1, 6, 6, 0);
    for (let y = 1; y <= 4; y++) for (let x = 1; x <= 4; x++) mask.data[y * 6 + x] = 1;
    const o = maskOutline(img, mask, [0, 1, 0]);
    for (let y = 0; y < 6; y++) {
      for (let x = 0; x < 6; x++) {
        const inMask = y >= 1 && y <= 4 && x >= 1 && x <= 4;
        const border = inMask && (y === 1 || y === 4 || x === 1 || x === 4);
        expect(pixel(o, y, x)).toEqual(border ? [0, 1, 0] : [0, 0, 0]);
      }
    }
    const thick = maskOutline(img, mask, [1, 0, 0], 2);
    expect(pixel(thick, 0, 2)).toEqual([1, 0, 0]);
    expect(pixel(thick, 2, 2)).toEqual([1, 0, 0]);
  });
});
