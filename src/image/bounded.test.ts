import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { capLongerSide, modelDecodeSize } from './bounded.js';
import { ImageReadError, loadImage, readImageSize, resizeImage } from './io.js';
import { loadGroundTruthAt } from '../data/dataset.js';

let tmp = '';
beforeAll(async () => {
  tmp = await mkdtemp(path.join(os.tmpdir(), 'anoseg-bounded-'));
});
afterAll(async () => {
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

describe('size policy', () => {
  it('caps the longer side, aspect kept', () => {
    expect(capLongerSide(4000, 6000, 1024)).toEqual({ height: 683, width: 1024 });
    expect(capLongerSide(900, 1024, 1024)).toEqual({ height: 900, width: 1024 });
    expect(capLongerSide(4000, 6000, null)).toEqual({ height: 4000, width: 6000 });
  });

  it('keeps the model-visible short side at the model resolution for stretch / crop, not for pad', () => {
    expect(modelDecodeSize(4000, 6000, { resolution: 256 })).toEqual({ height: 1365, width: 2048 });
    // 20:1 strip: 2048 x 102 would feed a 256-px stretch or crop from 102 rows; the short side stays 256.
    expect(modelDecodeSize(500, 10000, { resolution: 256, aspect: 'crop' })).toEqual({ height: 256, width: 5120 });
    expect(modelDecodeSize(500, 10000, { resolution: 256, aspect: 'pad' })).toEqual({ height: 102, width: 2048 });
    expect(modelDecodeSize(1000, 1500, { resolution: 256 })).toEqual({ height: 1000, width: 1500 });
    expect(() => modelDecodeSize(10, 10, { resolution: 256 }, 128)).toThrow(
      'model decode max side 128 is below the model resolution 256',
    );
  });
});

describe('decoding with shrink', () => {
  it("'nearest' gives exactly decode-then-resizeImage nearest, for a colour mask reduced to luma", async () => {
    const w = 97;
    const h = 61;
    const px = new Uint8Array(w * h * 3);
    for (let i = 0; i < px.length; i++) px[i] = (i * 37) % 256 < 200 ? 0 : (i * 11) % 256;
    const file = path.join(tmp, 'colour.png');
    await sharp(px, { raw: { width: w, height: h, channels: 3 } })
      .png()
      .toFile(file);
    const whole = resizeImage(await loadImage(file, { channels: 1 }), 20, 33, 'nearest');
    const sizes: number[][] = [];
    const shrunk = await loadImage(file, {
      channels: 1,
      shrink: { kernel: 'nearest', size: () => ({ height: 20, width: 33 }), onSize: (a, b) => sizes.push([a, b]) },
    });
    expect(sizes).toEqual([[h, w]]);
    expect([shrunk.channels, shrunk.height, shrunk.width]).toEqual([1, 20, 33]);
    expect(Array.from(shrunk.data)).toEqual(Array.from(whole.data));
    // A mask folder (MVTec LOCO) decoded for a cap: union at the capped size, stored size reported.
    const gt = await loadGroundTruthAt(file, () => ({ height: 20, width: 33 }));
    expect(gt.source).toEqual({ height: h, width: w });
    expect(Array.from(gt.mask.data)).toEqual(Array.from(whole.data).map((v) => (v > 0 ? 1 : 0)));
  });

  it("'area' averages 16-bit gray exactly and keeps one channel; larger targets decode as stored", async () => {
    const px = new Uint16Array([1, 3, 1001, 2001, 5, 7, 3001, 4001]); // 2 x 4
    const file = path.join(tmp, 'g16.png');
    await sharp(px, { raw: { width: 4, height: 2, channels: 1 } })
      .toColourspace('grey16')
      .png()
      .toFile(file);
    const img = await loadImage(file, { shrink: { kernel: 'area', size: () => ({ height: 1, width: 2 }) } });
    expect([img.channels, img.height, img.width]).toEqual([1, 1, 2]);
    expect(img.data[0]).toBeCloseTo(4 / 65535, 7);
    expect(img.data[1]).toBeCloseTo(2501 / 65535, 7);
    const same = await loadImage(file, { shrink: { kernel: 'area', size: () => ({ height: 4, width: 8 }) } });
    expect([same.height, same.width]).toEqual([2, 4]);
  });

  it('reads sizes from headers and names an unreadable file', async () => {
    const file = path.join(tmp, 'g16.png');
    expect(await readImageSize(file)).toEqual({ height: 2, width: 4 });
    const junk = path.join(tmp, 'junk.png');
    await writeFile(junk, 'not an image at all');
    await expect(readImageSize(junk)).rejects.toThrow(
      `cannot read image ${junk}: unsupported or corrupt file: content is not PNG, JPEG, BMP or TIFF`,
    );
    await expect(readImageSize(path.join(tmp, 'missing.png'))).rejects.toBeInstanceOf(ImageReadError);
    await expect(
      loadImage(junk, { shrink: { kernel: 'area', size: () => ({ height: 1, width: 1 }) } }),
    ).rejects.toThrow('unsupported or corrupt file');
  });
});
