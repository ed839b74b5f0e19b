import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Rng } from '../util/rng.js';
import {
  ImageReadError,
  MAX_INPUT_PIXELS,
  decodeImage,
  encodeFloatTiff,
  encodePng,
  fitImage,
  loadImage,
  resizeImage,
  saveImagePng,
  saveMap16,
  saveMapTiff,
  sniffFormat,
  unfitMap,
} from './io.js';
import { createImage, type Image } from './types.js';

let tmp: string;
beforeAll(async () => {
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'anoseg-io-'));
});
afterAll(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});

function fromArray(channels: number, height: number, width: number, values: number[]): Image {
  const img = createImage(channels, height, width);
  img.data.set(values);
  return img;
}

function randomImage(rng: Rng, channels: number, height: number, width: number, levels = 256): Image {
  const img = createImage(channels, height, width);
  for (let i = 0; i < img.data.length; i++) img.data[i] = rng.int(0, levels - 1) / (levels - 1);
  return img;
}

/** Minimal BMP writer for tests: 24-bit, 32-bit (BI_RGB, optional alpha via V4-style BI_BITFIELDS) or 8-bit palette. */
function makeBmp(
  width: number,
  height: number,
  bpp: 8 | 24 | 32,
  pixel: (x: number, y: number) => [number, number, number, number],
  opts: { topDown?: boolean; palette?: Array<[number, number, number]>; alphaBitfields?: boolean } = {},
): Buffer {
  const headerSize = opts.alphaBitfields ? 108 : 40;
  const palette = opts.palette ?? [];
  const rowBytes = Math.floor((bpp * width + 31) / 32) * 4;
  const dataOffset = 14 + headerSize + palette.length * 4;
  const buf = Buffer.alloc(dataOffset + rowBytes * height);
  buf.write('BM', 0, 'latin1');
  buf.writeUInt32LE(buf.length, 2);
  buf.writeUInt32LE(dataOffset, 10);
  buf.writeUInt32LE(headerSize, 14);
  buf.writeInt32LE(width, 18);
  buf.writeInt32LE(opts.topDown ? -height : height, 22);
  buf.writeUInt16LE(1, 26);
  buf.writeUInt16LE(bpp, 28);
  buf.writeUInt32LE(opts.alphaBitfields ? 3 : 0, 30);
  buf.writeUInt32LE(palette.length, 46);
  if (opts.alphaBitfields) {
    buf.writeUInt32LE(0x00ff0000, 54);
    buf.writeUInt32LE(0x0000ff00, 58);
    buf.writeUInt32LE(0x000000ff, 62);
    buf.writeUInt32LE(0xff000000, 66);
  }
  palette.forEach(([r, g, b], i) => {
    const o = 14 + headerSize + 4 * i;
    buf[o] = b;
    buf[o + 1] = g;
    buf[o + 2] = r;
  });
  for (let y = 0; y < height; y++) {
    const row = dataOffset + rowBytes * (opts.topDown ? y : height - 1 - y);
    for (let x = 0; x < width; x++) {
      const [r, g, b, a] = pixel(x, y);
      if (bpp === 8) buf[row + x] = r;
      else {
        const o = row + x * (bpp / 8);
        buf[o] = b;
        buf[o + 1] = g;
        buf[o + 2] = r;
        if (bpp === 32) buf[o + 3] = a;
      }
    }
  }
  return buf;
}

/** A PNG with a valid IHDR claiming the given size but almost no pixel data (a decompression-bomb stand-in). */
function pngHeaderOnly(width: number, height: number): Buffer {
  const crcTable = Array.from({ length: 256 }, (_, n) => {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    return c >>> 0;
  });
  const crc = (b: Buffer) => {
    let c = 0xffffffff;
    for (const v of b) c = crcTable[(c ^ v) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  };
  const chunk = (type: string, data: Buffer) => {
    const body = Buffer.concat([Buffer.from(type, 'latin1'), data]);
    const out = Buffer.alloc(8 + data.length + 4);
    out.writeUInt32BE(data.length, 0);
    body.copy(out, 4);
    out.writeUInt32BE(crc(body), 8 + data.length);
    return out;
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 0; // grayscale
  const sig = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  const idat = chunk('IDAT', zlib.deflateSync(Buffer.alloc(16)));
  return Buffer.concat([sig, chunk('IHDR', ihdr), idat, chunk('IEND', Buffer.alloc(0))]);
}

describe('image decoding and encoding', () => {
  it('round-trips an 8-bit RGB PNG exactly and keeps gray PNGs single-channel', async () => {
    const rng = new Rng(1);
    const rgb = randomImage(rng, 3, 5, 7);
    const file = path.join(tmp, 'rgb.png');
    await saveImagePng(file, rgb);
    const back = await loadImage(file);
    expect([back.channels, back.height, back.width]).toEqual([3, 5, 7]);
    expect(Array.from(back.data)).toEqual(Array.from(rgb.data));

    const gray = randomImage(rng, 1, 4, 6);
    const g = await decodeImage(await encodePng(gray));
    expect(g.channels).toBe(1);
    expect(Array.from(g.data)).toEqual(Array.from(gray.data));

    const g3 = await decodeImage(await encodePng(gray), { channels: 3 });
    expect(g3.channels).toBe(3);
    for (let c = 0; c < 3; c++)
      expect(Array.from(g3.data.subarray(c * 24, c * 24 + 24))).toEqual(Array.from(gray.data));
  });

  it('converts RGB to luma when one channel is requested', async () => {
    const rgb = fromArray(3, 1, 2, [1, 0, 0, 1, 0, 0]); // red, green
    const g = await decodeImage(await encodePng(rgb), { channels: 1 });
    expect(g.channels).toBe(1);
    expect(g.data[0]).toBeCloseTo(0.299, 5);
    expect(g.data[1]).toBeCloseTo(0.587, 5);
  });

  it('clamps out-of-range values when writing 8-bit PNG', async () => {
    const img = fromArray(1, 1, 3, [-0.5, 0.5, 2]);
    const back = await decodeImage(await encodePng(img));
    expect(Array.from(back.data)).toEqual([0, 128 / 255, 1].map((v) => Math.fround(v)));
  });

  it('drops alpha by compositing onto black (RGBA and gray+alpha)', async () => {
    const rgba = Buffer.from([200, 100, 50, 255, 200, 100, 50, 0]);
    const png = await sharp(rgba, { raw: { width: 2, height: 1, channels: 4 } })
      .png()
      .toBuffer();
    const img = await decodeImage(png);
    expect(img.channels).toBe(3);
    expect(img.data[0]).toBeCloseTo(200 / 255, 5);
    expect(img.data[1]).toBe(0);
    expect(img.data[3]).toBe(0);

    const ga = Buffer.from([180, 255, 180, 0]);
    const png2 = await sharp(ga, { raw: { width: 2, height: 1, channels: 2 } })
      .toColourspace('b-w')
      .png()
      .toBuffer();
    const g = await decodeImage(png2);
    expect(g.channels).toBe(1);
    expect(g.data[0]).toBeCloseTo(180 / 255, 5);
    expect(g.data[1]).toBe(0);
  });

  it('reads 16-bit PNG scaled to [0,1] (saveMap16 round trip)', async () => {
    const rng = new Rng(2);
    const map = createImage(1, 6, 5);
    for (let i = 0; i < map.data.length; i++) map.data[i] = rng.next();
    map.data[0] = 0;
    map.data[1] = 1;
    const file = path.join(tmp, 'map16.png');
    await saveMap16(file, map);
    const meta = await sharp(file).metadata();
    expect(meta.depth).toBe('ushort');
    const back = await loadImage(file);
    expect(back.channels).toBe(1);
    for (let i = 0; i < map.data.length; i++)
      expect(Math.abs(back.data[i] - map.data[i])).toBeLessThanOrEqual(0.5 / 65535 + 1e-7);
    expect(back.data[1]).toBe(1);
  });

  it('reads 16-bit RGB PNG scaled by 65535', async () => {
    const px = new Uint16Array([0, 65535, 1000, 30000, 65535, 0]);
    const png = await sharp(px, { raw: { width: 2, height: 1, channels: 3 } })
      .toColourspace('rgb16')
      .png()
      .toBuffer();
    expect((await sharp(png).metadata()).depth).toBe('ushort');
    const img = await decodeImage(png);
    expect(img.channels).toBe(3);
    const expected = [0, 30000, 65535, 65535, 1000, 0].map((v) => Math.fround(v / 65535));
    expect(Array.from(img.data)).toEqual(expected);
  });

  it('round-trips a float32 TIFF exactly, including values outside [0,1]', async () => {
    const map = fromArray(1, 2, 3, [0, 0.1234567, 0.5, 1, -2.5, 1e6]);
    const file = path.join(tmp, 'map.tif');
    await saveMapTiff(file, map);
    const meta = await sharp(file).metadata();
    expect([meta.format, meta.depth, meta.channels]).toEqual(['tiff', 'float', 1]);
    const back = await loadImage(file);
    expect([back.channels, back.height, back.width]).toEqual([1, 2, 3]);
    expect(Array.from(back.data)).toEqual(Array.from(map.data));
    // odd pixel-byte count is impossible for float32, but odd sizes must still work
    const odd = fromArray(1, 1, 1, [0.75]);
    expect(Array.from((await decodeImage(encodeFloatTiff(odd))).data)).toEqual([0.75]);
  });

  it('reads an 8-bit TIFF and a JPEG written by sharp', async () => {
    const px = Buffer.from([10, 20, 30, 40, 50, 60]);
    const tif = await sharp(px, { raw: { width: 2, height: 1, channels: 3 } })
      .tiff({ compression: 'lzw' })
      .toBuffer();
    const t = await decodeImage(tif);
    expect(Array.from(t.data).map((v) => Math.round(v * 255))).toEqual([10, 40, 20, 50, 30, 60]);

    const flat = Buffer.alloc(16 * 16 * 3);
    for (let i = 0; i < flat.length; i += 3) [flat[i], flat[i + 1], flat[i + 2]] = [200, 60, 20];
    const jpg = await sharp(flat, { raw: { width: 16, height: 16, channels: 3 } })
      .jpeg({ quality: 95 })
      .toBuffer();
    const j = await decodeImage(jpg);
    expect([j.channels, j.height, j.width]).toEqual([3, 16, 16]);
    expect(Math.abs(j.data[0] * 255 - 200)).toBeLessThan(4);
    expect(Math.abs(j.data[256] * 255 - 60)).toBeLessThan(4);
    expect(Math.abs(j.data[512] * 255 - 20)).toBeLessThan(4);
  });

  it('decodes 24-bit, 32-bit and 8-bit palette BMP, bottom-up and top-down', async () => {
    const pix = (x: number, y: number): [number, number, number, number] => [x * 40, y * 80, 255 - x * 10, 255];
    for (const topDown of [false, true]) {
      for (const bpp of [24, 32] as const) {
        const file = path.join(tmp, `img${bpp}${topDown ? 'td' : ''}.bmp`);
        await fs.writeFile(file, makeBmp(3, 2, bpp, pix, { topDown }));
        const img = await loadImage(file);
        expect([img.channels, img.height, img.width]).toEqual([3, 2, 3]);
        for (let y = 0; y < 2; y++) {
          for (let x = 0; x < 3; x++) {
            const [r, g, b] = pix(x, y);
            const p = y * 3 + x;
            expect([img.data[p], img.data[6 + p], img.data[12 + p]].map((v) => Math.round(v * 255))).toEqual([r, g, b]);
          }
        }
      }
    }
    const grayPal = Array.from({ length: 256 }, (_, i) => [i, i, i] as [number, number, number]);
    const g = await decodeImage(makeBmp(5, 3, 8, (x, y) => [x * 50 + y, 0, 0, 0], { palette: grayPal }));
    expect(g.channels).toBe(1);
    expect(Math.round(g.data[1 * 5 + 4] * 255)).toBe(201);
    const colourPal: Array<[number, number, number]> = [
      [255, 0, 0],
      [0, 0, 255],
    ];
    const c = await decodeImage(makeBmp(2, 1, 8, (x) => [x, 0, 0, 0], { palette: colourPal }));
    expect(Array.from(c.data)).toEqual([1, 0, 0, 0, 0, 1]);
  });

  it('applies a declared BMP alpha channel, ignores an all-zero one', async () => {
    const half = makeBmp(2, 1, 32, (x) => [200, 200, 200, x === 0 ? 255 : 0], { alphaBitfields: true });
    const img = await decodeImage(half);
    expect(Math.round(img.data[0] * 255)).toBe(200);
    expect(img.data[1]).toBe(0);
    const zeroAlpha = makeBmp(2, 1, 32, () => [200, 100, 0, 0], { alphaBitfields: true });
    const z = await decodeImage(zeroAlpha);
    expect(Math.round(z.data[1] * 255)).toBe(200);
  });

  it('throws ImageReadError naming the file for corrupt, truncated, unsupported, missing and huge inputs', async () => {
    const rng = new Rng(3);
    const junk = Buffer.alloc(500);
    for (let i = 0; i < junk.length; i++) junk[i] = rng.int(0, 255);
    const bad = path.join(tmp, 'corrupt.png');
    await fs.writeFile(bad, junk);
    await expect(loadImage(bad)).rejects.toThrow(ImageReadError);
    await expect(loadImage(bad)).rejects.toThrow(bad);

    const good = await encodePng(randomImage(rng, 3, 32, 32));
    const truncated = path.join(tmp, 'truncated.png');
    await fs.writeFile(truncated, good.subarray(0, Math.floor(good.length / 2)));
    const err = await loadImage(truncated).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ImageReadError);
    expect((err as ImageReadError).path).toBe(truncated);

    // PNG magic with garbage after it
    const fakePng = Buffer.concat([good.subarray(0, 8), junk]);
    await expect(decodeImage(fakePng, { name: 'upload.png' })).rejects.toThrow(/upload\.png.*corrupt/);

    const gif = Buffer.from('GIF89a\x01\x00\x01\x00', 'latin1');
    await expect(decodeImage(gif)).rejects.toThrow(
      /unsupported or corrupt file: content is not PNG, JPEG, BMP or TIFF/,
    );
    expect(sniffFormat(gif)).toBeNull();
    await expect(decodeImage(new Uint8Array(0))).rejects.toThrow(/empty/);

    const missing = path.join(tmp, 'nope.png');
    await expect(loadImage(missing)).rejects.toThrow(/nope\.png.*ENOENT/);

    await expect(decodeImage(pngHeaderOnly(10000, 10000), { name: 'big.png' })).rejects.toThrow(/big\.png.*too large/);
    const bigBmp = makeBmp(1, 1, 24, () => [0, 0, 0, 0]);
    bigBmp.writeInt32LE(20000, 18);
    bigBmp.writeInt32LE(20000, 22);
    expect(20000 * 20000).toBeGreaterThan(MAX_INPUT_PIXELS);
    await expect(decodeImage(bigBmp)).rejects.toThrow(/too large/);
    const truncBmp = makeBmp(4, 4, 24, () => [0, 0, 0, 0]).subarray(0, 70);
    await expect(decodeImage(truncBmp)).rejects.toThrow(/truncated/);
  });
});

describe('resizeImage', () => {
  it('bilinear matches PyTorch align_corners=False hand values', () => {
    const up = resizeImage(fromArray(1, 1, 2, [0, 1]), 1, 4);
    expect(Array.from(up.data)).toEqual([0, 0.25, 0.75, 1]);
    const down = resizeImage(fromArray(1, 1, 4, [0, 1, 2, 3]), 1, 2);
    expect(Array.from(down.data)).toEqual([0.5, 2.5]);
    const sq = resizeImage(fromArray(1, 2, 2, [0, 1, 2, 3]), 3, 3);
    const expected = [0, 0.5, 1, 1, 1.5, 2, 2, 2.5, 3];
    sq.data.forEach((v, i) => expect(v).toBeCloseTo(expected[i], 6));
  });

  it('nearest matches PyTorch mode=nearest and keeps masks binary', () => {
    const up = resizeImage(fromArray(1, 1, 2, [0, 1]), 1, 5, 'nearest');
    expect(Array.from(up.data)).toEqual([0, 0, 0, 1, 1]);
    const down = resizeImage(fromArray(1, 1, 6, [0, 1, 2, 3, 4, 5]), 1, 4, 'nearest');
    expect(Array.from(down.data)).toEqual([0, 1, 3, 4]);
  });

  it('resizes every channel independently', () => {
    const img = fromArray(2, 1, 2, [0, 1, 10, 20]);
    const out = resizeImage(img, 1, 4);
    expect(Array.from(out.data)).toEqual([0, 0.25, 0.75, 1, 10, 12.5, 17.5, 20]);
    expect(() => resizeImage(img, 0, 4)).toThrow(/invalid target size/);
  });
});

describe('fitImage / unfitMap', () => {
  const ramp = (h: number, w: number) => {
    const img = createImage(1, h, w);
    for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) img.data[y * w + x] = y * 100 + x;
    return img;
  };

  it('pad letterboxes centred with edge or black fill and unfits exactly at scale 1', () => {
    const img = ramp(8, 4);
    const { image, transform } = fitImage(img, 8, 'pad');
    expect(transform.dst).toEqual({ top: 0, left: 2, height: 8, width: 4 });
    expect(image.data[3 * 8 + 0]).toBe(300); // left border replicates column 0
    expect(image.data[3 * 8 + 7]).toBe(303);
    expect(image.data[3 * 8 + 2]).toBe(300);
    const black = fitImage(img, 8, 'pad', { padFill: 'black' }).image;
    expect(black.data[3 * 8 + 0]).toBe(0);
    expect(Array.from(unfitMap(image, transform).data)).toEqual(Array.from(img.data));
  });

  it('crop takes the centre square and unfit replicates edges outside it', () => {
    const img = ramp(4, 8);
    const { image, transform } = fitImage(img, 4, 'crop');
    expect(transform.src).toEqual({ top: 0, left: 2, height: 4, width: 4 });
    expect(image.data[0]).toBe(2);
    const back = unfitMap(image, transform);
    expect([back.height, back.width]).toEqual([4, 8]);
    for (let y = 0; y < 4; y++) {
      for (let x = 2; x < 6; x++) expect(back.data[y * 8 + x]).toBe(img.data[y * 8 + x]);
      expect(back.data[y * 8]).toBe(img.data[y * 8 + 2]);
    }
    expect(unfitMap(image, transform, { fill: -1 }).data[0]).toBe(-1);
  });

  it('stretch/pad round trip through a different size stays close for a smooth map', () => {
    const h = 30;
    const w = 20;
    const img = createImage(1, h, w);
    for (let y = 0; y < h; y++)
      for (let x = 0; x < w; x++) img.data[y * w + x] = 0.5 + 0.4 * Math.sin(y / 6) * Math.cos(x / 5);
    for (const aspect of ['stretch', 'pad'] as const) {
      const { image, transform } = fitImage(img, 64, aspect);
      expect([image.height, image.width]).toEqual([64, 64]);
      const back = unfitMap(image, transform);
      expect([back.height, back.width]).toEqual([h, w]);
      let maxErr = 0;
      for (let i = 0; i < img.data.length; i++) maxErr = Math.max(maxErr, Math.abs(back.data[i] - img.data[i]));
      expect(maxErr).toBeLessThan(0.02);
    }
    expect(() => unfitMap(createImage(1, 32, 32), fitImage(img, 64, 'pad').transform)).toThrow(/expects 64x64/);
  });
});
