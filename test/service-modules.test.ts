/**
 * The service's pieces on their own: the page assembled from its files, the shared heatmap renderer, and the
 * multipart errors (busboy) as a client sees them.
 */
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { heatmapRange, mapAtImageSize, renderAnomalyMap } from '../src/image/anomaly-render.js';
import { createImage, type Image } from '../src/image/types.js';
import { colormapValue, heatmap, overlay } from '../src/image/visual.js';
import { buildPage, inspectionPage, pageDir } from '../src/service/page.js';
import { ReferencePredictor } from '../src/service/reference-predictor.js';
import { createInspectionServer, type InspectionServer } from '../src/service/server.js';

function hashOf(text: string): string {
  return `'sha256-${createHash('sha256').update(text, 'utf8').digest('base64')}'`;
}

describe('inspection page files', () => {
  it('inlines page.css and page.js into index.html, pinned by hash, with the heatmap table filled in', () => {
    expect(existsSync(path.join(pageDir(), 'index.html'))).toBe(true);
    const page = inspectionPage();
    const html = page.html.toString('utf8');
    expect(html).not.toMatch(/<script src=|<link rel="stylesheet"/);
    expect(html).not.toContain('@heatmap-table');
    const style = html.slice(html.indexOf('<style>') + 7, html.indexOf('</style>'));
    const script = html.slice(html.indexOf('<script>') + 8, html.lastIndexOf('</script>'));
    expect(page.csp).toContain(`script-src ${hashOf(script)} 'self' 'wasm-unsafe-eval'`);
    expect(page.csp).toContain(`style-src ${hashOf(style)}`);
    // The colour table is the server's own: its last entry is the top of the heatmap.
    const table = JSON.parse(/var TURBO = (\[[^\]]*\]);/.exec(script)![1]) as number[];
    expect(table).toHaveLength(3 * 1024);
    const top = colormapValue(1);
    for (let c = 0; c < 3; c++) expect(table[3 * 1023 + c]).toBeCloseTo(top[c], 4);
    expect(inspectionPage()).toBe(page); // read once
  });

  it('names a missing file or marker', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'anoseg-page-'));
    try {
      await cp(pageDir(), dir, { recursive: true });
      await writeFile(path.join(dir, 'page.js'), (await readFile(path.join(dir, 'page.js'), 'utf8')).replace('@', ''));
      expect(() => buildPage(dir)).toThrow(/page\.js must contain \/\* @heatmap-table \*\/ \[\] exactly once/);
      await rm(path.join(dir, 'page.css'));
      expect(() => buildPage(dir)).toThrow(/cannot read .*page\.css/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('shared heatmap rendering', () => {
  const ramp = (h: number, w: number, scale: number): Image => {
    const m = createImage(1, h, w);
    for (let i = 0; i < m.data.length; i++) m.data[i] = (scale * i) / (m.data.length - 1);
    return m;
  };

  it('shows [0, 1] maps as they are and unbounded maps on the model-wide scale [0, 2 * pixelThreshold]', () => {
    expect(heatmapRange(0.2)).toBe(1);
    expect(heatmapRange(7.5)).toBe(15);
    const img = createImage(3, 4, 8, 0.5);
    const unit = ramp(4, 8, 1);
    const r = renderAnomalyMap(img, unit, 0.3, 0.4);
    expect(r.range).toEqual([0, 1]);
    expect(r.heatmap.data).toEqual(heatmap(unit).data);
    expect(r.overlay.data).toEqual(overlay(img, unit, 0.4).data);
    // A distance map: the pixel threshold gets the middle colour, twice it the top one, nothing saturates below.
    const dist = ramp(4, 8, 15);
    const d = renderAnomalyMap(img, dist, 7.5);
    expect(d.range).toEqual([0, 15]);
    const scaled = { ...dist, data: dist.data.map((v) => v / 15) };
    expect(d.heatmap.data).toEqual(heatmap(scaled).data);
  });

  it('resizes a map of another size to the image (bilinear, half-pixel centres)', () => {
    const small = ramp(2, 2, 1);
    const big = mapAtImageSize(small, { height: 4, width: 4 });
    expect([big.height, big.width]).toEqual([4, 4]);
    expect(big.data[0]).toBeCloseTo(small.data[0], 6);
    expect(big.data[15]).toBeCloseTo(small.data[3], 6);
    expect(mapAtImageSize(small, { height: 2, width: 2 })).toBe(small);
  });
});

describe('multipart errors as the client sees them', () => {
  let svc: InspectionServer;
  let url: string;
  const boundary = 'b0undary';
  const type = `multipart/form-data; boundary=${boundary}`;
  let png: Buffer;

  beforeAll(async () => {
    svc = createInspectionServer({ predictor: new ReferencePredictor(), maxBatchFiles: 3 });
    url = await svc.listen(0);
    const sharp = (await import('sharp')).default;
    png = await sharp({ create: { width: 8, height: 8, channels: 3, background: '#808080' } })
      .png()
      .toBuffer();
  });
  afterAll(() => svc.close());

  const part = (headers: string, data: Buffer): Buffer =>
    Buffer.concat([Buffer.from(`--${boundary}\r\n${headers}\r\n\r\n`, 'latin1'), data, Buffer.from('\r\n')]);
  const file = (name: string): Buffer =>
    part(`Content-Disposition: form-data; name="f"; filename="${name}"\r\nContent-Type: image/png`, png);
  const end = Buffer.from(`--${boundary}--\r\n`);

  async function send(route: string, body: Buffer): Promise<{ status: number; error?: string }> {
    const res = await fetch(`${url}${route}`, {
      method: 'POST',
      body: new Uint8Array(body),
      headers: { 'Content-Type': type },
    });
    const json = (await res.json()) as { error?: string };
    return { status: res.status, error: json.error };
  }

  it('answers 4xx naming the problem', async () => {
    expect(await send('/api/inspect', Buffer.concat([file('a.png'), end]))).toMatchObject({ status: 200 });
    // A part without Content-Disposition is no file field.
    expect(await send('/api/inspect', Buffer.concat([part('Content-Type: image/png', png), end]))).toEqual({
      status: 400,
      error: 'expected exactly one file part, got 0 (no file field in the form)',
    });
    expect(await send('/api/inspect/batch', end)).toMatchObject({
      status: 400,
      error: expect.stringMatching(/no file/),
    });
    const four = Buffer.concat([file('1.png'), file('2.png'), file('3.png'), file('4.png'), end]);
    for (const route of ['/api/inspect', '/api/inspect/batch']) {
      expect(await send(route, four)).toEqual({ status: 413, error: 'too many files: at most 3 per request' });
    }
    const field = part('Content-Disposition: form-data; name="comment"', Buffer.from('hello'));
    expect(await send('/api/inspect', Buffer.concat([field, end]))).toEqual({
      status: 400,
      error: "multipart field 'comment' is not a file; only file parts are accepted",
    });
    const noName = part('Content-Disposition: form-data; filename="a.png"', png);
    expect(await send('/api/inspect', Buffer.concat([noName, end]))).toEqual({
      status: 400,
      error: 'bad multipart body: multipart part without a field name',
    });
    const badHeader = part('Content-Disposition form-data; name="f"; filename="a.png"', png);
    expect(await send('/api/inspect', Buffer.concat([badHeader, end]))).toMatchObject({
      status: 400,
      error: expect.stringMatching(/^bad multipart body: malformed multipart part header/),
    });
    expect(await send('/api/inspect', file('a.png'))).toMatchObject({
      status: 400,
      error: expect.stringMatching(/^bad multipart body: multipart body is truncated \(closing boundary missing\)/),
    });
    expect((await fetch(`${url}/api/health`)).status).toBe(200);
  });
});
