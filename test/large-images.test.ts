/**
 * Multi-megapixel images (6000 x 4000, 16-bit grayscale PNG and RGB JPEG) through predict and eval within a
 * bounded memory. Fixtures are generated with sharp from small patterns (libvips streams them, so making them costs
 * little memory). Peak memory is read from the process's maximum RSS (getrusage): growth = maxRSS after - RSS
 * before can only over-estimate what one call needed, so a pass is a real bound. This file holds nothing else, so
 * no other test raises the peak first (vitest runs each test file in its own process here).
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EVAL_MAX_SIDE, MAP_MAX_SIDE, MODEL_DECODE_MAX_SIDE, loadImageForModel } from '../src/image/bounded.js';
import { readImageSize } from '../src/image/io.js';
import { predictImageFile } from '../src/models/predict-file.js';
import { ReferencePredictor } from '../src/service/reference-predictor.js';
import { evaluateMaps } from '../src/eval/evaluate.js';
import { modelMapProvider } from '../src/eval/model-maps.js';

const W = 6000;
const H = 4000;
/** The pattern is drawn at 1/10 and scaled up nearest, so every value of it survives exactly. */
const PW = W / 10;
const PH = H / 10;
/** The defect: a bright block at pattern pixels [150, 250) x [200, 300), i.e. image pixels x 10. */
const inDefect = (x: number, y: number): boolean => x >= 200 && x < 300 && y >= 150 && y < 250;

/** 16-bit gray around 0.5, with values on no 8-bit step (k * 257), and the defect at ~0.95. */
function pattern16(defect: boolean): Uint16Array {
  const p = new Uint16Array(PW * PH);
  for (let y = 0; y < PH; y++) {
    for (let x = 0; x < PW; x++) p[y * PW + x] = defect && inDefect(x, y) ? 62_001 : 32_000 + ((x * 7 + y * 13) % 97);
  }
  return p;
}

async function write16(file: string, defect: boolean): Promise<void> {
  await sharp(pattern16(defect), { raw: { width: PW, height: PH, channels: 1 } })
    .toColourspace('grey16')
    .resize(W, H, { kernel: 'nearest' })
    .png({ compressionLevel: 1 })
    .toFile(file);
}

async function writeMask(file: string): Promise<void> {
  const p = new Uint8Array(PW * PH);
  for (let y = 0; y < PH; y++) for (let x = 0; x < PW; x++) p[y * PW + x] = inDefect(x, y) ? 255 : 0;
  await sharp(p, { raw: { width: PW, height: PH, channels: 1 } })
    .resize(W, H, { kernel: 'nearest' })
    .png({ compressionLevel: 1 })
    .toFile(file);
}

async function writeRgbJpeg(file: string): Promise<void> {
  const p = new Uint8Array(PW * PH * 3);
  for (let i = 0; i < PW * PH; i++) {
    const x = i % PW;
    const y = Math.floor(i / PW);
    const red = inDefect(x, y);
    p[3 * i] = red ? 230 : 128;
    p[3 * i + 1] = red ? 20 : 128;
    p[3 * i + 2] = red ? 20 : 128;
  }
  await sharp(p, { raw: { width: PW, height: PH, channels: 3 } })
    .resize(W, H, { kernel: 'nearest' })
    .jpeg({ quality: 90 })
    .toFile(file);
}

const MB = 1024 * 1024;
const rss = (): number => process.memoryUsage().rss;
const maxRss = (): number => process.resourceUsage().maxRSS * 1024;

/** Peak RSS growth (bytes) while `fn` runs, over-estimated (see the file comment). */
async function peakGrowth<T>(fn: () => Promise<T>): Promise<{ value: T; growth: number }> {
  const before = rss();
  const value = await fn();
  return { value, growth: maxRss() - before };
}

let tmp = '';
let gray16 = '';
let rgbJpeg = '';

beforeAll(async () => {
  tmp = await mkdtemp(path.join(os.tmpdir(), 'anoseg-large-'));
  const data = path.join(tmp, 'part');
  const { mkdir } = await import('node:fs/promises');
  for (const d of ['test/good', 'test/spot', 'ground_truth/spot']) await mkdir(path.join(data, d), { recursive: true });
  gray16 = path.join(data, 'test', 'spot', '000.png');
  await write16(gray16, true);
  await write16(path.join(data, 'test', 'good', '000.png'), false);
  await writeMask(path.join(data, 'ground_truth', 'spot', '000_mask.png'));
  rgbJpeg = path.join(tmp, 'rgb.jpg');
  await writeRgbJpeg(rgbJpeg);
});

afterAll(async () => {
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

// Full-size floats of one 6000 x 4000 image: 96 MB per channel. The bounds below sit well under what decoding or
// mapping at full size takes (predictImageFile with decodeMaxSide and mapMaxSide null, measured the same way:
// 840 MB for the 16-bit gray PNG, 1025 MB for the RGB JPEG; with the caps: 170-220 MB, the 4096-px map the most).
const PREDICT_BOUND = 300 * MB;
const EVAL_BOUND = 150 * MB;

describe('large images: predict', () => {
  it('16-bit grayscale 6000x4000 PNG: decoded at 2048 px as 16-bit gray, map capped at 4096 px, bounded memory', async () => {
    const predictor = new ReferencePredictor({ reference: [0.49, 0.49, 0.49], resolution: 64 });
    const base = path.join(tmp, 'pred', 'gray16');
    const { value: r, growth } = await peakGrowth(() => predictImageFile(predictor, gray16, base, { format: 'both' }));
    expect(r.source).toEqual({ height: H, width: W });
    expect(r.decoded).toEqual({ height: 1365, width: MODEL_DECODE_MAX_SIDE });
    expect(r.map).toEqual({ height: 2731, width: MAP_MAX_SIDE });
    expect(await readImageSize(`${base}_map.tiff`)).toEqual(r.map);
    expect(await readImageSize(`${base}_map.png`)).toEqual(r.map);
    expect(await readImageSize(`${base}_heatmap.png`)).toEqual(r.decoded);
    expect(await readImageSize(`${base}_overlay.png`)).toEqual(r.decoded);
    expect(r.verdict).toBe('defective'); // the bright block is ~0.46 away from the reference
    expect(growth).toBeLessThan(PREDICT_BOUND);
    // The map lights up in the defect's place (map pixels scale 4096 / 6000 from the image).
    const map = sharp(`${base}_map.tiff`);
    const at = async (x: number, y: number): Promise<number> => {
      const { data } = await map
        .clone()
        .extract({ left: Math.round(x * 0.6827), top: Math.round(y * 0.6827), width: 1, height: 1 })
        .raw({ depth: 'float' })
        .toBuffer({ resolveWithObject: true });
      return new Float32Array(data.buffer, data.byteOffset, 1)[0];
    };
    expect(await at(2500, 2000)).toBeGreaterThan(0.4);
    expect(await at(500, 500)).toBeLessThan(0.05);
    predictor.dispose();
  });

  it('keeps 16-bit precision and one channel up to the model fit (exact area average of the stored samples)', async () => {
    const { image, source } = await loadImageForModel(gray16, { resolution: 64 });
    expect(source).toEqual({ height: H, width: W });
    expect([image.channels, image.height, image.width]).toEqual([1, 1365, 2048]);
    const p = pattern16(true);
    const stored = (x: number, y: number): number => p[Math.floor(y / 10) * PW + Math.floor(x / 10)];
    // The exact area average of the stored 16-bit samples an output pixel covers, in [0, 1].
    const areaAverage = (ox: number, oy: number): number => {
      const [x0, x1] = [(ox * W) / 2048, ((ox + 1) * W) / 2048];
      const [y0, y1] = [(oy * H) / 1365, Math.min(H, ((oy + 1) * H) / 1365)];
      let acc = 0;
      for (let y = Math.floor(y0); y < Math.ceil(y1); y++) {
        const wy = Math.min(y1, y + 1) - Math.max(y0, y);
        for (let x = Math.floor(x0); x < Math.ceil(x1); x++)
          acc += stored(x, y) * wy * (Math.min(x1, x + 1) - Math.max(x0, x));
      }
      return acc / ((x1 - x0) * (y1 - y0)) / 65535;
    };
    let off8 = 0;
    for (const [ox, oy] of [
      [0, 0],
      [3, 7],
      [100, 50],
      [700, 600], // the defect's edge
      [800, 500],
      [2047, 1364],
      [1234, 321],
    ]) {
      const v = image.data[oy * 2048 + ox];
      // 8-bit decoding would be up to 1/510 off, libvips' 16-bit resize up to ~1e-3.
      expect(Math.abs(v - areaAverage(ox, oy)), `${ox},${oy}`).toBeLessThan(2e-6);
      if (Math.abs(v * 255 - Math.round(v * 255)) > 1e-3) off8++;
    }
    expect(off8).toBeGreaterThan(4);
  });

  it('RGB 6000x4000 JPEG: decoded at 2048 px (shrink on load), map at 4096 px, bounded memory', async () => {
    const predictor = new ReferencePredictor({ reference: [0.5, 0.5, 0.5], resolution: 64 });
    const base = path.join(tmp, 'pred', 'rgb');
    const { value: r, growth } = await peakGrowth(() => predictImageFile(predictor, rgbJpeg, base));
    expect(r.decoded).toEqual({ height: 1365, width: 2048 });
    expect(r.map).toEqual({ height: 2731, width: 4096 });
    expect(await readImageSize(`${base}_map.tiff`)).toEqual(r.map);
    const overlayMeta = await sharp(`${base}_overlay.png`).metadata();
    expect([overlayMeta.width, overlayMeta.height, overlayMeta.channels]).toEqual([2048, 1365, 3]);
    expect(r.verdict).toBe('defective');
    expect(growth).toBeLessThan(PREDICT_BOUND);
    predictor.dispose();
  });

  it('writes the map at the input size below the cap and refuses a cap below the model resolution', async () => {
    const predictor = new ReferencePredictor({ resolution: 64 });
    const r = await predictImageFile(predictor, rgbJpeg, path.join(tmp, 'pred', 'small'), {
      decodeMaxSide: 300,
      mapMaxSide: 600,
    });
    expect(r.decoded).toEqual({ height: 200, width: 300 });
    expect(r.map).toEqual({ height: 400, width: 600 });
    await expect(
      predictImageFile(predictor, rgbJpeg, path.join(tmp, 'pred', 'bad'), { decodeMaxSide: 32 }),
    ).rejects.toThrow('model decode max side 32 is below the model resolution 64');
    await expect(
      predictImageFile(predictor, rgbJpeg, path.join(tmp, 'pred', 'bad'), { mapMaxSide: 0 }),
    ).rejects.toThrow('map max side must be a positive integer (pixels) or none, got 0');
    predictor.dispose();
  });
});

describe('large images: eval', () => {
  it('evaluates 6000x4000 masks and images at 1024 px by default, records the caps, bounded memory', async () => {
    const predictor = new ReferencePredictor({ reference: [0.49, 0.49, 0.49], resolution: 64 });
    const out = path.join(tmp, 'eval');
    const { value: m, growth } = await peakGrowth(() =>
      evaluateMaps({
        dataRoot: path.join(tmp, 'part'),
        mapProvider: modelMapProvider(predictor),
        outDir: out,
        model: predictor.info,
      }),
    );
    expect(growth).toBeLessThan(EVAL_BOUND);
    expect(m.settings.evalMaxSide).toBe(EVAL_MAX_SIDE);
    expect(m.input.evalMaxSide).toBe(1024);
    expect(m.input.sourceSize).toEqual({ minHeight: H, maxHeight: H, minWidth: W, maxWidth: W });
    expect(m.input.evaluatedSize).toEqual({ minHeight: 683, maxHeight: 683, minWidth: 1024, maxWidth: 1024 });
    expect(m.input.downscaledImages).toBe(2);
    expect(m.input.decode).toEqual({ maxSide: 2048, downscaledImages: 2, maxHeight: 1365, maxWidth: 2048 });
    expect(m.overall.pixels).toBe(2 * 1024 * 683);
    // Mask sampled nearest at 1024 x 683: the block covers x in [2000, 3000) of 6000 and y in [1500, 2500) of 4000.
    expect(m.overall.defectPixels).toBeGreaterThan(0.9 * 171 * 171);
    expect(m.overall.defectPixels).toBeLessThan(1.1 * 171 * 171);
    expect(m.overall.pixelAuroc).toBeGreaterThan(0.95);
    expect(m.overall.imageAuroc).toBe(1);
    const json = JSON.parse(await readFile(path.join(out, 'metrics.json'), 'utf8')) as {
      settings: { evalMaxSide: number };
      input: { evaluatedSize: { maxWidth: number }; decode: { maxSide: number } };
    };
    expect(json.settings.evalMaxSide).toBe(1024);
    expect(json.input.evaluatedSize.maxWidth).toBe(1024);
    expect(json.input.decode.maxSide).toBe(2048);
    const html = await readFile(path.join(out, 'report.html'), 'utf8');
    expect(html).toContain('images larger than 2048 px on the longer side decoded straight to that size');
    expect(html).toContain('capped at 1024 px on the longer side (aspect kept): 1024 x 683 px for evaluation.');
    expect(html).toContain('2 image(s) evaluated below their stored size (stored 6000 x 4000 px).');
    predictor.dispose();
  });

  it('takes another cap or evalSize, and rejects an invalid cap', async () => {
    const predictor = new ReferencePredictor({ reference: [0.49, 0.49, 0.49], resolution: 64 });
    const common = { dataRoot: path.join(tmp, 'part'), mapProvider: modelMapProvider(predictor), report: false };
    const capped = await evaluateMaps({ ...common, outDir: path.join(tmp, 'eval-300'), evalMaxSide: 300 });
    expect(capped.input.evaluatedSize).toEqual({ minHeight: 200, maxHeight: 200, minWidth: 300, maxWidth: 300 });
    expect(capped.overall.pixels).toBe(2 * 300 * 200);
    const square = await evaluateMaps({ ...common, outDir: path.join(tmp, 'eval-sq'), evalSize: 128 });
    expect(square.settings).toMatchObject({ evalSize: 128, evalMaxSide: null });
    expect(square.input.evaluatedSize.maxWidth).toBe(128);
    await expect(evaluateMaps({ ...common, outDir: path.join(tmp, 'eval-bad'), evalMaxSide: 0 })).rejects.toThrow(
      'evaluateMaps: evalMaxSide must be a positive integer (pixels) or none, got 0',
    );
    predictor.dispose();
  });
});
