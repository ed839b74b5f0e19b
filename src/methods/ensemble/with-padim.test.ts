import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { saveImagePng } from '../../image/io.js';
import { createImage } from '../../image/types.js';
import { anosegMinutesBesidePadim, padimFusionMinutes } from './with-padim.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'anoseg-with-padim-'));
  // two square images (one tile each), one 10 x 25 (ratio 2.5: 3 tiles), one unreadable file (counted as one)
  await saveImagePng(path.join(dir, 'a.png'), createImage(1, 12, 12, 0.5));
  await saveImagePng(path.join(dir, 'b.png'), createImage(1, 12, 12, 0.5));
  await saveImagePng(path.join(dir, 'c.png'), createImage(1, 10, 25, 0.5));
  await writeFile(path.join(dir, 'd.png'), 'not a png');
});
afterAll(() => rm(dir, { recursive: true, force: true }));

describe('padimFusionMinutes', () => {
  it('allows 0.35 s per model input: per image, or per tile with tiling', async () => {
    expect(await padimFusionMinutes(dir)).toBeCloseTo((0.35 * 4) / 60, 12);
    expect(await padimFusionMinutes(dir, 'long-side')).toBeCloseTo((0.35 * 6) / 60, 12);
    expect(await anosegMinutesBesidePadim(dir, 10, 'long-side')).toBeCloseTo(10 - (0.35 * 6) / 60, 12);
    expect(await anosegMinutesBesidePadim(dir, 0.01)).toBe(1);
  });
});
