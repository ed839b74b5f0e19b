/**
 * The inspection service with a real model: a tiny PaDiM trained (seeded, in about a second) on a generated data
 * set, saved, loaded as `anoseg serve` loads it, and asked through POST /api/inspect. Also: `anoseg predict`'s
 * path (predictImageFile) and the service draw byte-identical heatmaps and overlays for the same prediction, on
 * the model's scale (PaDiM maps are unbounded distances, not clamped to [0, 1]).
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { generateSyntheticDataset, type SyntheticKind } from '../src/data/synthetic-dataset.js';
import { heatmapRange } from '../src/image/anomaly-render.js';
import { loadImage } from '../src/image/io.js';
import { colormapValue } from '../src/image/visual.js';
import type { Image } from '../src/image/types.js';
import { loadPredictor } from '../src/methods/load.js';
import { predictImageFile } from '../src/models/predict-file.js';
import type { AnomalyPrediction, AnomalyPredictor, PredictOptions } from '../src/models/predictor.js';
import { createInspectionServer, type InspectionServer, type InspectResult } from '../src/service/server.js';
import { trainPadim } from '../src/methods/padim/trainer.js';

const SIZE = 48;

/** Predicts each distinct image once: both paths then render literally the same prediction. */
class SamePrediction implements AnomalyPredictor {
  private readonly seen = new Map<string, AnomalyPrediction>();
  constructor(private readonly inner: AnomalyPredictor) {}
  get info() {
    return this.inner.info;
  }
  async predict(images: Image[], opts?: PredictOptions): Promise<AnomalyPrediction[]> {
    const out: AnomalyPrediction[] = [];
    for (const img of images) {
      const key = `${img.channels}x${img.height}x${img.width}:${Buffer.from(img.data.buffer, img.data.byteOffset, img.data.byteLength).toString('base64')}`;
      let p = this.seen.get(key);
      if (!p) {
        [p] = await this.inner.predict([img], opts);
        this.seen.set(key, p);
      }
      out.push(p);
    }
    return out;
  }
  dispose(): void {}
}

async function inspect(url: string, png: Buffer): Promise<{ status: number; json: InspectResult }> {
  const res = await fetch(`${url}/api/inspect?raw=1`, {
    method: 'POST',
    headers: { 'Content-Type': 'image/png' },
    body: new Uint8Array(png),
  });
  return { status: res.status, json: (await res.json()) as InspectResult };
}

function rawMap(r: InspectResult): Float32Array {
  const raw = Buffer.from(r.rawMap!.data, 'base64');
  return new Float32Array(raw.buffer, raw.byteOffset, raw.length / 4);
}

let dir: string;
let predictor: AnomalyPredictor;
let good: string;
let defect: string;
let svc: InspectionServer;
let url: string;

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'anoseg-service-model-'));
  const kind: SyntheticKind = 'texture';
  const ds = await generateSyntheticDataset(path.join(dir, 'data'), {
    seed: 11,
    size: SIZE,
    trainCount: 12,
    testGoodCount: 1,
    testDefectCount: 1,
    kind,
  });
  const r = await trainPadim({
    data: ds.root,
    out: path.join(dir, 'run'),
    backbone: 'random',
    width: 0.125,
    resolution: 32,
    dims: 16,
    seed: 3,
    progress: false,
  });
  predictor = await loadPredictor(r.modelPath);
  good = ds.test.find((t) => t.defect === 'good')!.path;
  defect = ds.test.find((t) => t.defect !== 'good')!.path;
  svc = createInspectionServer({ predictor });
  url = await svc.listen(0);
}, 60_000);

afterAll(async () => {
  await svc?.close();
  predictor?.dispose();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('inspection service with a trained PaDiM model', () => {
  it('answers /api/inspect with the model verdict, map and PNGs at the input size', async () => {
    const info = predictor.info;
    expect(info.method).toBe('padim');
    // A PaDiM map is a distance: its pixel threshold is well above 1, so the heatmap scale is not [0, 1].
    expect(info.pixelThreshold).toBeGreaterThan(0.5);
    const model = (await (await fetch(`${url}/api/model`)).json()) as Record<string, unknown>;
    expect(model).toMatchObject({ method: 'padim', imageThreshold: info.imageThreshold });

    for (const file of [good, defect]) {
      const png = await readFile(file);
      const r = await inspect(url, png);
      expect(r.status, file).toBe(200);
      const [direct] = await predictor.predict([await loadImage(file, { channels: 'keep' })]);
      expect(r.json.score).toBeCloseTo(direct.score, 4);
      expect(r.json).toMatchObject({
        verdict: direct.score >= info.imageThreshold ? 'defective' : 'good',
        threshold: info.imageThreshold,
        pixelThreshold: info.pixelThreshold,
        width: SIZE,
        height: SIZE,
        heatmapRange: [0, heatmapRange(info.pixelThreshold)],
      });
      const map = rawMap(r.json);
      expect(map.length).toBe(SIZE * SIZE);
      const above = map.reduce((s, v) => s + (v >= info.pixelThreshold ? 1 : 0), 0);
      expect(r.json.maskFraction).toBeCloseTo(above / map.length, 10);
      for (const [key, channels] of [
        ['heatmapPng', 3],
        ['overlayPng', 3],
        ['maskPng', 1],
      ] as const) {
        const meta = await sharp(Buffer.from(r.json[key], 'base64')).metadata();
        expect([meta.format, meta.width, meta.height, meta.channels], `${file} ${key}`).toEqual([
          'png',
          SIZE,
          SIZE,
          channels,
        ]);
      }
    }
    const a = await inspect(url, await readFile(good));
    const b = await inspect(url, await readFile(defect));
    expect(b.json.score).toBeGreaterThan(a.json.score);
  });

  it('draws the same heatmap and overlay bytes as `anoseg predict` for the same prediction', async () => {
    const same = new SamePrediction(predictor);
    const s = createInspectionServer({ predictor: same });
    const u = await s.listen(0);
    try {
      for (const file of [good, defect]) {
        const base = path.join(dir, `cli-${path.basename(file, '.png')}`);
        await predictImageFile(same, file, base);
        const r = await inspect(u, await readFile(file));
        expect(r.status).toBe(200);
        const cliHeat = await readFile(`${base}_heatmap.png`);
        const cliOver = await readFile(`${base}_overlay.png`);
        expect(Buffer.from(r.json.heatmapPng, 'base64').equals(cliHeat), `${file} heatmap`).toBe(true);
        expect(Buffer.from(r.json.overlayPng, 'base64').equals(cliOver), `${file} overlay`).toBe(true);
        // On the model's scale the good part is not painted in the top colour, as clamping to [0, 1] did.
        if (file === good) {
          const map = rawMap(r.json);
          expect(map.filter((v) => v >= 1).length / map.length).toBeGreaterThan(0.5);
          const { data } = await sharp(cliHeat).raw().toBuffer({ resolveWithObject: true });
          const top = colormapValue(1).map((v) => Math.round(v * 255));
          let atTop = 0;
          for (let i = 0; i < data.length; i += 3) {
            if (Math.abs(data[i] - top[0]) + Math.abs(data[i + 1] - top[1]) + Math.abs(data[i + 2] - top[2]) <= 3) {
              atTop++;
            }
          }
          expect(atTop / (SIZE * SIZE)).toBeLessThan(0.05);
        }
      }
    } finally {
      await s.close();
    }
  });
});
