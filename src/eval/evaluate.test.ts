import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { resizeImage, saveImagePng, saveMap16, saveMapTiff } from '../image/io.js';
import type { Image } from '../image/types.js';
import { Rng } from '../util/rng.js';
import {
  evaluateMaps,
  folderMapProvider,
  formatEvaluationSummary,
  formatMetricsTable,
  metricsToJson,
  type EvaluationMetrics,
} from './evaluate.js';
import { gaussianBlur } from '../models/gaussian.js';
import { PixelMetricsAccumulator, auroc, averagePrecision } from './metrics.js';
import { openFolderDataset } from '../data/dataset.js';

const S = 16;

interface Case {
  defect: string;
  name: string;
  mask: Image | null;
  /** The anomaly map as the evaluation should see it (after reading back and resizing). */
  map: Image;
}

/**
 * A tiny MVTec-style category written to a temp folder: 2 train images, 3 good and 2 + 2 defective test images,
 * 16x16 masks; maps stored as float TIFF (some at 8x8, resized by the evaluation) and as 16-bit PNG.
 */
async function makeDataset(root: string, mapsDir: string, invertedDir: string): Promise<Case[]> {
  const rng = new Rng(11);
  const gray = (): Image => ({
    channels: 1,
    height: S,
    width: S,
    data: Float32Array.from({ length: S * S }, () => rng.next()),
  });
  await saveImagePng(path.join(root, 'train', 'good', '000.png'), gray());
  await saveImagePng(path.join(root, 'train', 'good', '001.png'), gray());
  const cases: Case[] = [];
  const plan: Array<[string, string]> = [
    ['good', '000'],
    ['good', '001'],
    ['good', '002'],
    ['crack', '000'],
    ['crack', '001'],
    ['hole', '000'],
    ['hole', '001'],
  ];
  for (const [k, [defect, name]] of plan.entries()) {
    await saveImagePng(path.join(root, 'test', defect, `${name}.png`), gray());
    let mask: Image | null = null;
    if (defect !== 'good') {
      mask = { channels: 1, height: S, width: S, data: new Float32Array(S * S) };
      const y0 = rng.int(0, S - 5);
      const x0 = rng.int(0, S - 5);
      for (let y = y0; y < y0 + 4; y++) for (let x = x0; x < x0 + rng.int(2, 4); x++) mask.data[y * S + x] = 1;
      await saveImagePng(path.join(root, 'ground_truth', defect, `${name}_mask.png`), mask);
    }
    const file = path.join(mapsDir, defect, name);
    let map: Image;
    if (k % 3 === 0) {
      // 16-bit PNG: values k / 65535 read back exactly.
      map = { channels: 1, height: S, width: S, data: new Float32Array(S * S) };
      for (let i = 0; i < S * S; i++) {
        const v = 0.6 * rng.next() + (mask && mask.data[i] > 0 ? 0.35 : 0);
        map.data[i] = Math.round(v * 65535) / 65535;
      }
      await saveMap16(`${file}.png`, map);
    } else if (k % 3 === 1) {
      // Half-resolution float TIFF, outside [0, 1]: the evaluation resizes it bilinearly to the mask size.
      const small: Image = { channels: 1, height: S / 2, width: S / 2, data: new Float32Array((S * S) / 4) };
      for (let y = 0; y < S / 2; y++) {
        for (let x = 0; x < S / 2; x++) {
          const d = mask && mask.data[2 * y * S + 2 * x] > 0 ? 1.5 : 0;
          small.data[y * (S / 2) + x] = 2 * rng.next() - 0.5 + d;
        }
      }
      await saveMapTiff(`${file}.tiff`, small);
      map = resizeImage(small, S, S, 'bilinear');
    } else {
      map = { channels: 1, height: S, width: S, data: new Float32Array(S * S) };
      for (let i = 0; i < S * S; i++) map.data[i] = rng.next() + (mask && mask.data[i] > 0 ? 0.3 : 0);
      await saveMapTiff(`${file}.tiff`, map);
    }
    // The same maps as normal-region maps (1 - score), for the `invert` option.
    await saveMapTiff(path.join(invertedDir, 'test', defect, `${name}.tiff`), {
      ...map,
      data: map.data.map((v) => 1 - v),
    });
    cases.push({ defect, name, mask, map });
  }
  return cases;
}

describe('evaluateMaps', () => {
  let tmp = '';
  let root = '';
  let mapsDir = '';
  let invertedDir = '';
  let cases: Case[] = [];
  let result: EvaluationMetrics;

  beforeAll(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), 'anoseg-eval-'));
    root = path.join(tmp, 'cat');
    mapsDir = path.join(tmp, 'maps');
    invertedDir = path.join(tmp, 'inverted');
    cases = await makeDataset(root, mapsDir, invertedDir);
    result = await evaluateMaps({
      dataRoot: root,
      mapProvider: folderMapProvider(mapsDir),
      outDir: path.join(tmp, 'out'),
      reportCases: 1,
    });
  });

  afterAll(async () => {
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  it('equals the accumulator fed directly with the same maps and masks', () => {
    const acc = new PixelMetricsAccumulator();
    // openMvtecDataset order: defect folder, then file name.
    const order = [...cases].sort((a, b) => (a.defect + a.name < b.defect + b.name ? -1 : 1));
    for (const c of order) acc.add(c.map, c.mask, c.defect);
    const direct = acc.compute();
    expect(result.overall).toEqual(direct.overall);
    expect(result.perDefect).toEqual(direct.perDefect);
    expect(result.imageCounts).toEqual({ crack: 2, good: 3, hole: 2 });
    expect(result.images.map((r) => `${r.defect}/${path.basename(r.path)}`)).toEqual(
      order.map((c) => `${c.defect}/${c.name}.png`),
    );
    expect(result.settings).toEqual({
      evalSize: null,
      evalMaxSide: 1024,
      imageScore: 'max',
      imageScoreSigma: 0,
      proFprLimit: 0.3,
      iouSteps: 10_000,
    });
    // Sanity of the synthetic data: defects score higher, so the metrics are informative.
    expect(result.overall.pixelAuroc).toBeGreaterThan(0.7);
    expect(result.overall.pixelAuroc).toBeLessThan(1);
  });

  it('writes metrics.json (NaN as null) and a self-contained report.html', async () => {
    const out = path.join(tmp, 'out');
    expect((await readdir(out)).sort()).toEqual(['metrics.json', 'report.html']);
    const json = JSON.parse(await readFile(path.join(out, 'metrics.json'), 'utf8')) as EvaluationMetrics;
    expect(json).toEqual(JSON.parse(metricsToJson(result)));
    expect(json.overall.curves.pro.fpr.length).toBeGreaterThan(2);
    expect(json.images.find((r) => r.defect === 'good')?.pixelAuroc).toBeNull();
    const html = await readFile(path.join(out, 'report.html'), 'utf8');
    // Pixel ROC, PRO, IoU, image ROC, image-score histogram.
    expect(html.match(/<svg /g)).toHaveLength(5);
    // reportCases = 1: one best, one worst, one false alarm, one likeliest miss strip, all embedded.
    expect(html.match(/src="data:image\/png;base64,/g)).toHaveLength(4);
    expect(html).not.toMatch(/(src|href)="(?!data:)/);
    expect(html).toContain('crack (+good)');
  });

  it('uses given image scores, model scores, or the smoothed map max', async () => {
    const scores: Record<string, number> = {};
    result.images.forEach((r, i) => (scores[r.path] = r.anomalous ? 10 + i : i)); // perfect separation
    const given = await evaluateMaps({
      dataRoot: root,
      mapProvider: folderMapProvider(mapsDir),
      outDir: path.join(tmp, 'given'),
      imageScores: scores,
      report: false,
    });
    expect(given.overall.imageAuroc).toBe(1);
    expect(given.settings.imageScore).toBe('provided');
    expect(given.overall.pixelAuroc).toBe(result.overall.pixelAuroc);
    expect(await readdir(path.join(tmp, 'given'))).toEqual(['metrics.json']);

    const provider = folderMapProvider(mapsDir);
    const model = await evaluateMaps({
      dataRoot: root,
      mapProvider: async (item) => ({ map: await provider(item), score: item.defect === 'good' ? 1 : 0 }),
      outDir: path.join(tmp, 'model'),
      report: false,
    });
    expect(model.overall.imageAuroc).toBe(0);
    expect(model.settings.imageScore).toBe('model');

    const smoothed = await evaluateMaps({
      dataRoot: root,
      mapProvider: provider,
      outDir: path.join(tmp, 'smoothed'),
      imageScoreSigma: 2,
      report: false,
    });
    const c = [...cases].sort((a, b) => (a.defect + a.name < b.defect + b.name ? -1 : 1))[0];
    const blurred = gaussianBlur(c.map, 2);
    expect(smoothed.images[0].imageScore).toBe(Math.max(...blurred.data));
    expect(smoothed.settings.imageScore).toBe('max-smoothed');

    delete scores[result.images[2].path];
    await expect(
      evaluateMaps({
        dataRoot: root,
        mapProvider: provider,
        outDir: path.join(tmp, 'x'),
        imageScores: scores,
        report: false,
      }),
    ).rejects.toThrow(/no image score given/);
  });

  it('reads normal-region maps with invert, in MVTec layout DIR/test/<defect>/<name>.tiff', async () => {
    const inv = await evaluateMaps({
      dataRoot: root,
      mapProvider: folderMapProvider(invertedDir, { invert: true }),
      outDir: path.join(tmp, 'inv'),
      report: false,
    });
    expect(inv.overall.pixelAuroc).toBeCloseTo(result.overall.pixelAuroc, 6);
    expect(inv.overall.aupro).toBeCloseTo(result.overall.aupro, 6);
  });

  it('evaluates at evalSize when asked', async () => {
    const small = await evaluateMaps({
      dataRoot: root,
      mapProvider: folderMapProvider(mapsDir),
      outDir: path.join(tmp, 'small'),
      evalSize: 8,
      report: false,
    });
    expect(small.overall.pixels).toBe(7 * 64);
    expect(small.settings.evalSize).toBe(8);
    expect(small.settings.evalMaxSide).toBeNull();
    expect(small.input).toEqual({
      model: null,
      decode: null,
      sourceSize: { minHeight: 16, maxHeight: 16, minWidth: 16, maxWidth: 16 },
      evaluatedSize: { minHeight: 8, maxHeight: 8, minWidth: 8, maxWidth: 8 },
      evalMaxSide: null,
      downscaledImages: 7,
    });
  });

  it('names the files it looked for when a map is missing', async () => {
    const empty = path.join(tmp, 'nomaps');
    await expect(
      evaluateMaps({ dataRoot: root, mapProvider: folderMapProvider(empty), outDir: path.join(tmp, 'y') }),
    ).rejects.toThrow(/no anomaly map for .*crack.*000\.png[\s\S]*nomaps\/crack\/000\.tiff/);
  });

  it('formats a readable table with one row per defect type and overall, and logs it on request', async () => {
    const logged: string[] = [];
    await evaluateMaps({
      dataRoot: root,
      mapProvider: folderMapProvider(mapsDir),
      outDir: path.join(tmp, 'logged'),
      report: false,
      log: (t) => logged.push(t),
    });
    const table = formatMetricsTable(result);
    expect(logged).toEqual([`${table}\n${formatEvaluationSummary(result)}`]);
    expect(formatEvaluationSummary(result).split('\n')).toEqual([
      'test images: 7 (3 good, 4 defective, 4 of them with masks)',
      'pixel figures over 7 images with pixel ground truth (3 good + 4 defective with masks)',
      expect.stringMatching(/^at the best-F1 threshold on this test set \(optimistic\) [\d.]+: good parts \d passed/),
    ]);
    const lines = table.split('\n');
    expect(lines[0]).toMatch(
      /^group\s+images\s+img AUROC\s+img AP\s+img F1\s+px imgs\s+px AUROC\s+AUPRO@0.3\s+px AP\s+F1 max/,
    );
    expect(lines).toHaveLength(6);
    expect(lines[2]).toMatch(/^crack \(\+good\)\s+5\s/);
    expect(lines[3]).toMatch(/^hole \(\+good\)\s+5\s/);
    expect(lines[5]).toContain(result.overall.pixelAuroc.toFixed(4));
    expect(new Set(lines.map((l) => l.length)).size).toBe(1);
  });
});

/**
 * A category whose test set has masks for some defective images only: good 3, crack 2 (with masks), dent 2 (no
 * masks). Maps are kept in memory; the provider also returns the image scores below, so the image-level figures
 * can be worked out by hand. Dent maps carry extreme pixel scores that would change every pixel figure if they
 * were counted.
 */
describe('evaluateMaps on partial and absent masks', () => {
  let tmp = '';
  let root = '';
  const maps = new Map<string, Image>();
  const masks = new Map<string, Image>();
  const scores: Record<string, number> = {};
  const plan: Array<[string, string, number]> = [
    ['good', '000', 0.1],
    ['good', '001', 0.35],
    ['good', '002', 0.4],
    ['crack', '000', 0.8],
    ['crack', '001', 0.3],
    ['dent', '000', 0.5],
    ['dent', '001', 0.2],
  ];
  const provider = async (item: { path: string }): Promise<{ map: Image; score: number }> => ({
    map: maps.get(item.path) as Image,
    score: scores[item.path],
  });

  beforeAll(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), 'anoseg-eval-partial-'));
    root = path.join(tmp, 'cat');
    const rng = new Rng(3);
    const blank: Image = { channels: 3, height: S, width: S, data: new Float32Array(3 * S * S).fill(0.5) };
    await saveImagePng(path.join(root, 'train', 'good', '000.png'), blank);
    for (const [defect, name, score] of plan) {
      const file = path.join(root, 'test', defect, `${name}.png`);
      await saveImagePng(file, blank);
      const map: Image = { channels: 1, height: S, width: S, data: new Float32Array(S * S) };
      let mask: Image | null = null;
      if (defect === 'crack') {
        mask = { channels: 1, height: S, width: S, data: new Float32Array(S * S) };
        for (let i = 0; i < 20; i++) mask.data[rng.int(0, S * S - 1)] = 1;
        await saveImagePng(path.join(root, 'ground_truth', defect, `${name}_mask.png`), mask);
        masks.set(file, mask);
      }
      for (let i = 0; i < S * S; i++) {
        map.data[i] = defect === 'dent' ? 100 + rng.next() : rng.next() + (mask && mask.data[i] > 0 ? 0.4 : 0);
      }
      maps.set(file, map);
      scores[file] = score;
    }
  });

  afterAll(async () => {
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  it('image figures over every image, pixel figures over the images with masks only', async () => {
    const r = await evaluateMaps({
      dataRoot: root,
      mapProvider: provider,
      outDir: path.join(tmp, 'partial'),
      imageThreshold: { value: 0.45, source: 'model' },
      model: { method: 'padim', resolution: 32, channels: 3, aspect: 'crop' },
    });
    expect(r.input).toEqual({
      model: { method: 'padim', resolution: 32, channels: 3, aspect: 'crop' },
      decode: null,
      sourceSize: { minHeight: S, maxHeight: S, minWidth: S, maxWidth: S },
      evaluatedSize: { minHeight: S, maxHeight: S, minWidth: S, maxWidth: S },
      evalMaxSide: 1024,
      downscaledImages: 0,
    });
    expect(r.groundTruth).toEqual({
      images: 7,
      good: 3,
      defective: 4,
      defectiveWithMask: 2,
      defectiveWithoutMask: 2,
      defectiveWithEmptyMask: 0,
    });
    expect(r.layout).toBe('mvtec');
    const o = r.overall;
    expect(o.images).toBe(7);
    expect(o.anomalousImages).toBe(4);
    expect(o.pixelImages).toBe(5);
    expect(o.pixelAnomalousImages).toBe(2);
    // Hand-computed: positives 0.2, 0.3, 0.5, 0.8 beat 1, 1, 3, 3 of the 3 good images.
    expect(o.imageAuroc).toBeCloseTo(8 / 12, 12);
    expect(o.imageAp).toBeCloseTo(0.25 * (1 + 1 + 3 / 5 + 4 / 6), 12);
    expect(o.imageF1.f1).toBeCloseTo(0.8, 12);
    expect(o.imageF1.threshold).toBe(0.2);
    // Pixels: exactly the good and crack maps.
    const pixScores: number[] = [];
    const pixLabels: boolean[] = [];
    for (const [defect, name] of plan) {
      if (defect === 'dent') continue;
      const file = path.join(root, 'test', defect, `${name}.png`);
      const mask = masks.get(file);
      (maps.get(file) as Image).data.forEach((v, i) => {
        pixScores.push(v);
        pixLabels.push(mask !== undefined && mask.data[i] > 0);
      });
    }
    expect(o.pixels).toBe(5 * S * S);
    expect(o.pixelAuroc).toBeCloseTo(auroc(pixScores, pixLabels), 12);
    expect(o.pixelAp).toBeCloseTo(averagePrecision(pixScores, pixLabels), 12);
    expect(o.iou.max).toBeLessThan(2); // the dent maps (>= 100) are not in the IoU search range
    expect(r.perDefect.dent.pixelImages).toBe(3);
    expect(r.perDefect.dent.pixelAuroc).toBeNaN();
    expect(r.perDefect.dent.imageAuroc).toBeCloseTo(4 / 6, 12); // 0.5 beats 3, 0.2 beats 1
    expect(r.perDefect.crack.imageAuroc).toBeCloseTo(4 / 6, 12); // 0.8 beats 3, 0.3 beats 1
    // Verdicts at the model's threshold 0.45.
    expect(r.verdicts).toEqual({
      source: 'model',
      overall: { threshold: 0.45, goodPassed: 3, goodRejected: 0, defectivePassed: 2, defectiveRejected: 2 },
      perDefect: { crack: { passed: 1, rejected: 1 }, dent: { passed: 1, rejected: 1 } },
    });
    const dent = r.images.find((i) => i.defect === 'dent') as EvaluationMetrics['images'][number];
    expect(dent.pixelLevel).toBe(false);
    expect(dent.anomalous).toBe(true);
    const summary = formatEvaluationSummary(r);
    expect(summary).toContain(
      'pixel figures over 5 images with pixel ground truth (3 good + 2 defective with masks); 2 defective images without masks count at image level only',
    );
    expect(summary).toContain(
      "at the model's threshold 0.4500: good parts 3 passed / 0 rejected, defective parts 2 rejected / 2 passed",
    );
    const html = await readFile(path.join(tmp, 'partial', 'report.html'), 'utf8');
    expect(html).toContain('Image scores: good vs defective');
    expect(html).toContain(
      'Model padim: 32 x 32 px input, 3 channel(s), other aspect ratios fitted by crop; its maps are resized ' +
        "bilinearly to each mask's own size",
    );
    expect(html).toContain('2 defective images without masks count in the image-level figures only');
    expect(html).toContain('images with masks (pixel figures)');
    expect(html.match(/<svg /g)).toHaveLength(5);
    // Histogram bars: 3 good and 4 defective images in all.
    const bars = [...html.matchAll(/<title>(good|defective): (\d+)<\/title>/g)];
    const total = (name: string): number => bars.filter((b) => b[1] === name).reduce((n, b) => n + Number(b[2]), 0);
    expect([total('good'), total('defective')]).toEqual([3, 4]);
  });

  it('without any mask: image-level figures, pixel figures undefined, best-F1 verdicts marked as such', async () => {
    await rm(path.join(root, 'ground_truth'), { recursive: true });
    const r = await evaluateMaps({ dataRoot: root, mapProvider: provider, outDir: path.join(tmp, 'none') });
    expect(r.groundTruth.defectiveWithMask).toBe(0);
    expect(r.overall.imageAuroc).toBeCloseTo(8 / 12, 12);
    expect(r.overall.pixelImages).toBe(3);
    expect(r.overall.defectPixels).toBe(0);
    expect(r.overall.pixelAuroc).toBeNaN();
    expect(r.verdicts?.source).toBe('best-f1');
    expect(r.verdicts?.overall).toEqual({
      threshold: 0.2,
      goodPassed: 1,
      goodRejected: 2,
      defectivePassed: 0,
      defectiveRejected: 4,
    });
    const json = JSON.parse(await readFile(path.join(tmp, 'none', 'metrics.json'), 'utf8')) as EvaluationMetrics;
    expect(json.overall.pixelAuroc).toBeNull();
    expect(json.overall.imageAuroc).toBeCloseTo(8 / 12, 12);
    expect(formatEvaluationSummary(r)).toContain('pixel figures: not computed (no defective test image has a mask)');
    expect(formatMetricsTable(r).split('\n').at(-1)).toMatch(/^overall\s+7\s+0\.6667\s+[\d.]+\s+0\.8000\s+3\s+-/);
    const html = await readFile(path.join(tmp, 'none', 'report.html'), 'utf8');
    expect(html.match(/<svg /g)).toHaveLength(2); // image ROC + histogram; no pixel curves without defect pixels
    expect(html).toContain('optimistic');
  });

  it('takes a folder-layout data set and rejects a non-finite threshold', async () => {
    const ds = await openFolderDataset({
      good: path.join(root, 'test', 'good'),
      defective: [path.join(root, 'test', 'crack'), path.join(root, 'test', 'dent')],
    });
    const r = await evaluateMaps({
      dataset: ds,
      mapProvider: provider,
      outDir: path.join(tmp, 'folder'),
      report: false,
    });
    expect(r.layout).toBe('folder');
    expect(r.overall.imageAuroc).toBeCloseTo(8 / 12, 12);
    await expect(
      evaluateMaps({
        dataset: ds,
        mapProvider: provider,
        outDir: path.join(tmp, 'x'),
        imageThreshold: { value: NaN, source: 'given' },
      }),
    ).rejects.toThrow(/imageThreshold must be a finite number/);
    await expect(evaluateMaps({ mapProvider: provider, outDir: path.join(tmp, 'x') })).rejects.toThrow(
      /exactly one of dataRoot and dataset/,
    );
  });
});

describe('evaluateMaps on MVTec LOCO (several masks per image)', () => {
  it("scores pixels against the union of an image's masks", async () => {
    const tmp = await mkdtemp(path.join(os.tmpdir(), 'anoseg-eval-loco-'));
    try {
      const root = path.join(tmp, 'loco');
      const blank: Image = { channels: 1, height: 4, width: 4, data: new Float32Array(16).fill(0.5) };
      await saveImagePng(path.join(root, 'train', 'good', '000.png'), blank);
      await saveImagePng(path.join(root, 'test', 'good', '000.png'), blank);
      await saveImagePng(path.join(root, 'test', 'logical', '000.png'), blank);
      const m1: Image = { channels: 1, height: 4, width: 4, data: new Float32Array(16) };
      const m2: Image = { channels: 1, height: 4, width: 4, data: new Float32Array(16) };
      m1.data.set([1, 1], 0); // pixels 0, 1
      m2.data.set([1, 1], 1); // pixels 1, 2: union 0..2, 3 defect pixels in one region
      await saveImagePng(path.join(root, 'ground_truth', 'logical', '000', '000.png'), m1);
      await saveImagePng(path.join(root, 'ground_truth', 'logical', '000', '001.png'), m2);
      const map: Image = { channels: 1, height: 4, width: 4, data: Float32Array.from({ length: 16 }, (_, i) => i) };
      const r = await evaluateMaps({
        dataRoot: root,
        mapProvider: async () => map,
        outDir: path.join(tmp, 'out'),
        report: false,
      });
      expect(r.layout).toBe('mvtec-loco');
      expect(r.overall.defectPixels).toBe(3);
      expect(r.overall.regions).toBe(1);
      const labels = Array.from({ length: 32 }, (_, i) => i >= 16 && i < 19);
      const scores = [...map.data, ...map.data];
      expect(r.overall.pixelAuroc).toBeCloseTo(auroc(scores, labels), 12);
    } finally {
      await rm(tmp, { recursive: true, force: true });
    }
  });
});

describe('gaussianBlur', () => {
  const ref = JSON.parse(readFileSync(new URL('./fixtures/reference.json', import.meta.url), 'utf8')) as {
    gaussian: { height: number; width: number; input: number[]; sigmas: number[]; outputs: number[][] };
  };

  it('matches scipy.ndimage.gaussian_filter (reflect borders, truncate 4)', () => {
    const { height, width, input, sigmas, outputs } = ref.gaussian;
    const img: Image = { channels: 1, height, width, data: Float32Array.from(input) };
    sigmas.forEach((sigma, k) => {
      const out = gaussianBlur(img, sigma);
      for (let i = 0; i < out.data.length; i++) expect(Math.abs(out.data[i] - outputs[k][i])).toBeLessThan(1e-6);
    });
  });

  it('keeps a constant image constant and rejects a non-positive sigma', () => {
    const img: Image = { channels: 2, height: 3, width: 5, data: new Float32Array(30).fill(0.25) };
    for (const v of gaussianBlur(img, 1.3).data) expect(v).toBeCloseTo(0.25, 6);
    expect(() => gaussianBlur(img, 0)).toThrow(/sigma/);
  });
});

describe('defective images with an empty mask', () => {
  it('count as good at image level, and the summary and report say how many', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'anoseg-empty-mask-'));
    try {
      const root = path.join(dir, 'cat');
      const maps = path.join(dir, 'maps');
      const flat = (v: number): Image => ({ channels: 1, height: S, width: S, data: new Float32Array(S * S).fill(v) });
      const marked = flat(0);
      marked.data.fill(1, 0, 3 * S);
      // image scores (map maxima): good 0.1 and 0.4; crack/0 (marked) 0.9; crack/1 (empty mask) 0.3
      const plan: Array<[string, string, number, Image | null]> = [
        ['good', '0', 0.1, null],
        ['good', '1', 0.4, null],
        ['crack', '0', 0.9, marked],
        ['crack', '1', 0.3, flat(0)],
      ];
      for (const [defect, name, score, mask] of plan) {
        await saveImagePng(path.join(root, 'test', defect, `${name}.png`), flat(0.5));
        await saveMapTiff(path.join(maps, defect, `${name}.tiff`), flat(score));
        if (mask) await saveImagePng(path.join(root, 'ground_truth', defect, `${name}_mask.png`), mask);
      }
      const m = await evaluateMaps({
        dataRoot: root,
        mapProvider: folderMapProvider(maps),
        outDir: path.join(dir, 'e'),
      });
      expect(m.groundTruth).toMatchObject({ good: 2, defective: 2, defectiveWithMask: 2, defectiveWithEmptyMask: 1 });
      expect(m.overall.anomalousImages).toBe(1);
      // 0.9 over the three images labelled good (0.1, 0.4, 0.3): AUROC 1; with crack/1 labelled defective it would be 0.75
      expect(m.overall.imageAuroc).toBe(1);
      expect(formatEvaluationSummary(m)).toMatch(/1 image\(s\) of a defect type have an empty mask and count as good/);
      expect(await readFile(path.join(dir, 'e', 'report.html'), 'utf8')).toMatch(
        /1 image\(s\) of a defect type have an empty mask and count as good/,
      );
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
