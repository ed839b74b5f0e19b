import { existsSync } from 'node:fs';
import sharp from 'sharp';
import { chromium, type Browser, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ReferencePredictor } from '../src/service/reference-predictor.js';
import { createInspectionServer, type InspectionServer } from '../src/service/server.js';

const CHROMIUM = '/usr/bin/chromium';
const haveChromium = existsSync(CHROMIUM);
if (!haveChromium) console.warn(`service-browser tests skipped: ${CHROMIUM} is missing (install Debian chromium)`);

const W = 80;
const H = 60;

/**
 * Mid-grey part with a graded defect: an outer 20x20 square at anomaly 0.3 (colour distance to the grey reference)
 * around an inner 8x8 square at 0.5, so raising the pixel threshold past 0.3 visibly shrinks the mask.
 */
async function defectPng(): Promise<Buffer> {
  const px = Buffer.alloc(W * H * 3, 128);
  const paint = (x0: number, y0: number, n: number, rgb: number[]) => {
    for (let y = y0; y < y0 + n; y++) for (let x = x0; x < x0 + n; x++) px.set(rgb, (y * W + x) * 3);
  };
  paint(30, 20, 20, [128 + 115, 128 - 115, 128 - 0]); // (0.45 + 0.45 + 0) / 3 = 0.3
  paint(36, 26, 8, [255, 0, 0]); // 0.5
  return sharp(px, { raw: { width: W, height: H, channels: 3 } })
    .png()
    .toBuffer();
}

async function goodPng(): Promise<Buffer> {
  return sharp({ create: { width: W, height: H, channels: 3, background: { r: 128, g: 128, b: 128 } } })
    .png()
    .toBuffer();
}

describe.skipIf(!haveChromium)('inspection page in headless Chromium', () => {
  let svc: InspectionServer;
  let url: string;
  let browser: Browser;
  let page: Page;
  const pageErrors: string[] = [];

  beforeAll(async () => {
    svc = createInspectionServer({ predictor: new ReferencePredictor() });
    url = await svc.listen(0);
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
    });
    page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    page.on('pageerror', (err) => pageErrors.push(`pageerror: ${err.message}`));
    page.on('console', (msg) => {
      // Failed uploads log "Failed to load resource" (expected for the bad file); anything else is a bug,
      // in particular Content-Security-Policy violations.
      if (msg.type() === 'error' && !msg.text().startsWith('Failed to load resource')) {
        pageErrors.push(`console: ${msg.text()}`);
      }
    });
  });

  afterAll(async () => {
    await browser?.close();
    await svc?.close();
  });

  const card = (name: string) => page.locator('.card', { has: page.locator('.name', { hasText: name }) });
  const canvasPixels = (name: string) =>
    card(name)
      .locator('canvas.overlay')
      .evaluate((c: HTMLCanvasElement) => {
        const d = c.getContext('2d')!.getImageData(0, 0, c.width, c.height).data;
        let cyan = 0;
        for (let i = 0; i < d.length; i += 4) if (d[i] === 0 && d[i + 1] === 229 && d[i + 2] === 255) cyan++;
        return { width: c.width, height: c.height, cyan };
      });

  it('shows model info, inspects uploaded files and redraws the mask live from the slider', async () => {
    await page.goto(`${url}/`);
    await expect.poll(() => page.locator('#model').textContent()).toContain('reference-colour-distance');
    const slider = page.locator('#threshold');
    await expect.poll(() => slider.isEnabled()).toBe(true);
    expect(await slider.inputValue()).toBe('0.2');
    expect(await page.locator('#threshold-value').textContent()).toBe('0.2');

    await page.locator('#file').setInputFiles([
      { name: 'defect.png', mimeType: 'image/png', buffer: await defectPng() },
      { name: 'good.png', mimeType: 'image/png', buffer: await goodPng() },
      { name: 'notes.txt', mimeType: 'text/plain', buffer: Buffer.from('definitely not an image') },
    ]);
    await page.locator('.card[data-state="done"]').nth(1).waitFor();
    await page.locator('.card[data-state="error"]').waitFor();
    expect(await page.locator('.card').count()).toBe(3);

    const defect = card('defect.png');
    expect(await defect.getAttribute('data-verdict')).toBe('defective');
    expect(Number(await defect.getAttribute('data-score'))).toBeCloseTo(0.5, 2);
    expect(await defect.locator('.badge').textContent()).toBe('defective');
    expect(await defect.locator('.score').textContent()).toMatch(/^score 0\.\d+ \/ threshold 0\.2$/);
    expect(await defect.locator('img.heatmap').evaluate((i: HTMLImageElement) => i.naturalWidth)).toBe(W);
    expect(await defect.locator('img.original').evaluate((i: HTMLImageElement) => i.naturalWidth)).toBe(W);

    const good = card('good.png');
    expect(await good.getAttribute('data-verdict')).toBe('good');
    expect(await good.locator('.badge').textContent()).toBe('good');
    expect(await good.getAttribute('data-mask-pixels')).toBe('0');

    const bad = card('notes.txt');
    expect(await bad.locator('.badge').textContent()).toBe('error');
    expect(await bad.locator('.error-text').textContent()).toMatch(/not a PNG, JPEG, BMP or TIFF image/);
    expect(await page.locator('#summary').textContent()).toBe('3 images · 1 defective · 1 good · 1 failed');

    // At the model's threshold (0.2) the mask is the whole 20x20 outer square (bilinear edges give or take a ring).
    const maskAt02 = Number(await defect.getAttribute('data-mask-pixels'));
    expect(maskAt02).toBeGreaterThan(18 * 18);
    expect(maskAt02).toBeLessThan(22 * 22);
    const before = await canvasPixels('defect.png');
    expect(before.width).toBeGreaterThan(W); // small images are enlarged for display
    expect(before.cyan).toBeGreaterThan(0);
    expect(await defect.locator('.area').textContent()).toBe(`mask ${((100 * maskAt02) / (W * H)).toFixed(2)}%`);

    // Moving the slider past 0.3 leaves only the inner 8x8 square: the mask and its outline shrink.
    await slider.fill('0.4');
    expect(await page.locator('#threshold-value').textContent()).toBe('0.4');
    await expect.poll(async () => Number(await defect.getAttribute('data-mask-pixels'))).toBeLessThan(12 * 12);
    const maskAt04 = Number(await defect.getAttribute('data-mask-pixels'));
    expect(maskAt04).toBeGreaterThan(6 * 6);
    const after = await canvasPixels('defect.png');
    expect(after.cyan).toBeGreaterThan(0);
    expect(after.cyan).toBeLessThan(before.cyan);

    // Above the map's maximum there is no mask and no outline at all.
    await slider.fill('0.6');
    await expect.poll(async () => defect.getAttribute('data-mask-pixels')).toBe('0');
    expect((await canvasPixels('defect.png')).cyan).toBe(0);

    // Reset returns to the model's pixel threshold and the original mask.
    await page.locator('#reset').click();
    expect(await slider.inputValue()).toBe('0.2');
    await expect.poll(async () => Number(await defect.getAttribute('data-mask-pixels'))).toBe(maskAt02);
    expect((await canvasPixels('defect.png')).cyan).toBe(before.cyan);

    expect(pageErrors).toEqual([]);
  });

  it('accepts dropped files the same way as picked ones', async () => {
    await page.locator('#clear').click();
    expect(await page.locator('.card').count()).toBe(0);
    const bytes = Array.from(await defectPng());
    const dataTransfer = await page.evaluateHandle((data: number[]) => {
      const dt = new DataTransfer();
      dt.items.add(new File([new Uint8Array(data)], 'dropped.png', { type: 'image/png' }));
      return dt;
    }, bytes);
    await page.dispatchEvent('.drop', 'drop', { dataTransfer });
    await card('dropped.png').and(page.locator('[data-state="done"]')).waitFor();
    expect(await card('dropped.png').getAttribute('data-verdict')).toBe('defective');
    expect(pageErrors).toEqual([]);
  });
});
