/**
 * The inspection page's in-browser mode (issue 19): the exported ONNX model run by onnxruntime-web in headless
 * Chromium must give the server's answer (libtorch predictor) for the same image: map within 1e-3, same verdict.
 */
import { existsSync } from 'node:fs';
import sharp from 'sharp';
import { chromium, type Browser, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Tensor, manualSeed, noGrad, tidy } from '../src/engine/index.js';
import { decodeImage } from '../src/image/io.js';
import { AnoSegGenerator } from '../src/methods/anoseg/network.js';
import { AnoSegPredictor, type AnoSegModelMeta } from '../src/methods/anoseg/model-file.js';
import { FeatureBackbone } from '../src/models/backbone.js';
import { PADIM_SIGMA, PadimModel, PadimPredictor, fitPadimStats } from '../src/methods/padim/model.js';
import type { AnomalyPredictor } from '../src/models/predictor.js';
import type { Tiling } from '../src/image/tiles.js';
import { exportAnoSeg, exportPadim } from '../src/onnx/export.js';
import { createInspectionServer, type InspectResult, type InspectionServer } from '../src/service/server.js';
import { Rng } from '../src/util/rng.js';

const CHROMIUM = '/usr/bin/chromium';
const haveChromium = existsSync(CHROMIUM);
if (!haveChromium) console.warn(`in-browser ONNX tests skipped: ${CHROMIUM} is missing (install Debian chromium)`);

/** A smooth RGB part with a bright patch, w x h (not the model's size, so fitting and mapping back are exercised). */
async function partPng(w: number, h: number, seed: number, patch: boolean): Promise<Buffer> {
  const rng = new Rng(seed);
  const px = Buffer.alloc(w * h * 3);
  for (let y = 0; y < h; y++)
    for (let x = 0; x < w; x++)
      for (let c = 0; c < 3; c++) {
        const inPatch = patch && x > w / 3 && x < w / 2 && y > h / 3 && y < (2 * h) / 3;
        const v = inPatch ? 240 : 90 + 60 * Math.sin(x / 7 + c) * Math.cos(y / 9) + rng.normal(0, 4);
        px[(y * w + x) * 3 + c] = Math.max(0, Math.min(255, Math.round(v)));
      }
  return sharp(px, { raw: { width: w, height: h, channels: 3 } })
    .png()
    .toBuffer();
}

const IMAGES: Record<string, Buffer> = {};

/** An image threshold between the two test images' scores, so their verdicts differ. */
async function thresholdBetween(predictor: AnomalyPredictor): Promise<number> {
  const decoded = await Promise.all(Object.entries(IMAGES).map(([name, png]) => decodeImage(png, { name })));
  const [a, b] = await predictor.predict(decoded);
  return (a.score + b.score) / 2;
}

/** AnoSeg, 32 px RGB, skips, reconstruction term in the score; pad fitting, or tiles stretched. */
async function anosegModel(tiling: Tiling = 'none'): Promise<{ predictor: AnomalyPredictor; onnx: Uint8Array }> {
  manualSeed(5);
  const arch = {
    resolution: 32,
    channels: 3,
    width: 0.125,
    coordChannels: true,
    reconstruction: true,
    upsampling: 'transposed' as const,
    skips: true,
  };
  const generator = new AnoSegGenerator(arch);
  noGrad(() => tidy(() => generator.forward(Tensor.rand([2, 3, 32, 32]).mul(2))));
  generator.eval();
  const meta: AnoSegModelMeta = {
    arch,
    aspect: tiling === 'none' ? 'pad' : 'stretch',
    tiling,
    score: { sigma: 2, reconstructionWeight: 0.5 },
    imageThreshold: 0,
    pixelThreshold: 0.6,
    facts: { test: 'in-browser' },
  };
  meta.imageThreshold = await thresholdBetween(new AnoSegPredictor(generator, meta));
  const predictor = new AnoSegPredictor(generator, meta);
  return { predictor, onnx: exportAnoSeg(generator, meta, predictor.info).bytes };
}

/** PaDiM, 32 px gray (RGB uploads go through luma), crop fitting. */
async function padimModel(): Promise<{ predictor: AnomalyPredictor; onnx: Uint8Array }> {
  const train = await Promise.all(
    [3, 4, 5, 6].map(async (seed) => decodeImage(await partPng(32, 32, seed, false), { channels: 1 })),
  );
  const backbone = FeatureBackbone.random(0.125, 2);
  const stats = fitPadimStats(backbone, train, { dims: 16, seed: 1 });
  const meta = {
    resolution: 32,
    aspect: 'crop' as const,
    channels: 1 as const,
    dims: stats.dims,
    seed: 1,
    eps: 0.01,
    sigma: PADIM_SIGMA,
    backbone: backbone.meta,
    imageThreshold: 0,
    pixelThreshold: 20,
    facts: { test: 'in-browser' },
  };
  const model = new PadimModel(backbone, stats, meta);
  meta.imageThreshold = await thresholdBetween(new PadimPredictor(model));
  const predictor = new PadimPredictor(new PadimModel(backbone, stats, meta));
  return { predictor, onnx: exportPadim(predictor.model, predictor.info).bytes };
}

describe.skipIf(!haveChromium)('inspection page: in-browser ONNX mode in headless Chromium', () => {
  let browser: Browser;

  beforeAll(async () => {
    // 1 and 3 tiles under tiling 'long-side'
    IMAGES['defect.png'] = await partPng(52, 40, 1, true);
    IMAGES['good.png'] = await partPng(30, 80, 2, false);
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking'],
    });
  });

  afterAll(async () => {
    await browser?.close();
  });

  async function serverAnswer(url: string, name: string): Promise<{ result: InspectResult; map: Float32Array }> {
    const r = await fetch(`${url}/api/inspect?raw=1`, {
      method: 'POST',
      headers: { 'Content-Type': 'image/png' },
      body: new Uint8Array(IMAGES[name]),
    });
    expect(r.status).toBe(200);
    const result = (await r.json()) as InspectResult;
    const raw = Buffer.from(result.rawMap!.data, 'base64');
    return { result, map: new Float32Array(raw.buffer, raw.byteOffset, raw.length / 4) };
  }

  /** Drops the test images on the page in in-browser mode; each card must match the server's answer. */
  async function compareWithServer(url: string, page: Page): Promise<void> {
    await page.goto(`${url}/`);
    const toggle = page.locator('#in-browser');
    // generous waits: on a loaded machine fetching and compiling the model in the page takes seconds (default 1 s)
    await expect.poll(() => toggle.isEnabled(), { timeout: 30_000 }).toBe(true);
    await toggle.check();
    await expect.poll(() => page.locator('#browser-status').textContent(), { timeout: 30_000 }).toMatch(/model loaded/);
    await page
      .locator('#file')
      .setInputFiles(Object.entries(IMAGES).map(([name, buffer]) => ({ name, mimeType: 'image/png', buffer })));
    await page.locator('.card[data-state="done"]').nth(1).waitFor();
    const verdicts = new Set<string>();
    for (const name of Object.keys(IMAGES)) {
      const card = page.locator('.card', { has: page.locator('.name', { hasText: name }) });
      expect(await card.getAttribute('data-where')).toBe('browser');
      const inBrowser = (await page.evaluate(
        (n) => (window as unknown as { anosegInspection: { map(n: string): number[] | null } }).anosegInspection.map(n),
        name,
      ))!;
      const server = await serverAnswer(url, name);
      expect(inBrowser.length).toBe(server.result.width * server.result.height);
      let diff = 0;
      inBrowser.forEach((v, i) => (diff = Math.max(diff, Math.abs(v - server.map[i]))));
      expect(diff).toBeLessThanOrEqual(1e-3);
      expect(await card.getAttribute('data-verdict')).toBe(server.result.verdict);
      expect(Number(await card.getAttribute('data-score'))).toBeCloseTo(server.result.score, 3);
      expect(await card.locator('img.heatmap').evaluate((i: HTMLImageElement) => i.naturalWidth)).toBe(
        server.result.width,
      );
      verdicts.add(server.result.verdict);
    }
    expect([...verdicts].sort()).toEqual(['defective', 'good']);
  }

  for (const [kind, make] of [
    ['AnoSeg (RGB, pad fitting)', () => anosegModel()],
    ['AnoSeg (RGB, long-side tiles)', () => anosegModel('long-side')],
    ['PaDiM (gray, crop fitting)', padimModel],
  ] as const) {
    it(`${kind}: serves the model and onnxruntime-web; dropped images are inspected in the page like the server`, async () => {
      const { predictor, onnx } = await make();
      const svc: InspectionServer = createInspectionServer({ predictor, browserModel: { onnx, name: 'test.onnx' } });
      const url = await svc.listen(0);
      const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
      const pageErrors: string[] = [];
      page.on('pageerror', (err) => pageErrors.push(`pageerror: ${err.message}`));
      page.on('console', (msg) => {
        if (msg.type() === 'error') pageErrors.push(`console: ${msg.text()}`);
      });
      try {
        const wasm = await fetch(`${url}/ort/ort-wasm-simd-threaded.wasm`);
        expect(wasm.headers.get('content-type')).toBe('application/wasm');
        expect((await fetch(`${url}/ort/../package.json`)).status).toBe(404);
        await compareWithServer(url, page);
        expect(pageErrors).toEqual([]);
      } finally {
        await page.close();
        await svc.close();
        predictor.dispose();
      }
    });
  }
});
