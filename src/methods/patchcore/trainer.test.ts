import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { generateSyntheticDataset } from '../../data/synthetic-dataset.js';
import { loadMask, type MvtecDataset } from '../../data/dataset.js';
import { auroc } from '../../eval/metrics.js';
import { loadImage } from '../../image/io.js';
import { FeatureBackbone } from '../../models/backbone.js';
import { loadPredictor } from '../load.js';
import { PatchcorePredictor } from './model.js';
import { PATCHCORE_TRAIN_DEFAULTS, resolvePatchcoreOptions, trainPatchcore } from './trainer.js';

let dir: string;
let ds: MvtecDataset;
beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'anoseg-patchcore-train-'));
  ds = await generateSyntheticDataset(path.join(dir, 'data'), {
    seed: 3,
    size: 64,
    trainCount: 30,
    testGoodCount: 6,
    testDefectCount: 9,
    kind: 'texture',
  });
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('trainPatchcore', () => {
  it('fits a memory bank on good images, picks thresholds on held-out data and detects defects', async () => {
    const out = path.join(dir, 'run');
    const r = await trainPatchcore({
      data: ds.root,
      out,
      backbone: 'random',
      width: 0.125,
      resolution: 64,
      coresetRatio: 0.2,
      seed: 1,
      progress: false,
    });
    expect(r.trainImages + r.validationImages).toBe(30);
    expect(r.validationImages).toBe(3);
    expect(r.patches).toBe(27 * 8 * 8);
    expect(r.bankSize).toBe(Math.ceil(0.2 * 27 * 64));
    expect(Number.isFinite(r.imageThreshold) && r.imageThreshold > 0).toBe(true);
    expect(Number.isFinite(r.pixelThreshold) && r.pixelThreshold > 0).toBe(true);
    expect(existsSync(r.modelPath)).toBe(true);
    const logText = await readFile(path.join(out, 'train.log'), 'utf8');
    expect(logText).toMatch(/27 training, 3 validation images/);
    expect(logText).toMatch(/memory bank: 346 of 1728 training patches/);
    const config = JSON.parse(await readFile(path.join(out, 'config.json'), 'utf8'));
    expect(config).toMatchObject({ method: 'patchcore', coresetRatio: 0.2, maxBank: 16_384, resolution: 64 });

    const predictor = await loadPredictor(r.modelPath);
    try {
      expect(predictor).toBeInstanceOf(PatchcorePredictor);
      expect(predictor.info).toMatchObject({ method: 'patchcore', resolution: 64, channels: 3 });
      expect(predictor.info.imageThreshold).toBe(r.imageThreshold);
      expect(predictor.info.meta).toMatchObject({ trainImages: 27, bankSize: 346 });
      const scores: number[] = [];
      const labels: boolean[] = [];
      let insideHigher = 0;
      let defective = 0;
      for (const item of ds.test) {
        const img = await loadImage(item.path, { channels: 'keep' });
        const [pred] = await predictor.predict([img]);
        expect([pred.map.height, pred.map.width]).toEqual([img.height, img.width]);
        scores.push(pred.score);
        labels.push(item.defect !== 'good');
        if (!item.maskPath) continue;
        const mask = await loadMask(item.maskPath, img.height, img.width);
        let inside = 0;
        let outside = 0;
        let ni = 0;
        let no = 0;
        mask.data.forEach((m, i) => {
          if (m > 0.5) {
            inside += pred.map.data[i];
            ni++;
          } else {
            outside += pred.map.data[i];
            no++;
          }
        });
        defective++;
        if (inside / ni > outside / no) insideHigher++;
      }
      expect(defective).toBe(9);
      expect(insideHigher).toBeGreaterThanOrEqual(8);
      expect(auroc(scores, labels)).toBeGreaterThan(0.5);
    } finally {
      predictor.dispose();
    }
  });

  it('accepts a backbone file and a bank cap, and rejects a missing data folder', async () => {
    const bbFile = path.join(dir, 'bb.safetensors');
    const bb = FeatureBackbone.random(0.125, 9);
    await bb.save(bbFile);
    bb.dispose();
    const r = await trainPatchcore({
      data: path.join(ds.root, 'train', 'good'),
      out: path.join(dir, 'run2'),
      backbone: bbFile,
      resolution: 32,
      maxBank: 30,
      progress: false,
    });
    expect(r.bankSize).toBe(30); // ratio 0.1 of 27 x 16 patches would be 44
    const predictor = await PatchcorePredictor.load(r.modelPath);
    expect(predictor.model.meta.backbone.training).toEqual({ kind: 'random', seed: 9 });
    expect(predictor.model.meta.facts.backbone).toBe(path.resolve(bbFile));
    expect(predictor.model.meta).toMatchObject({ maxBank: 30, coresetRatio: 0.1, patches: 27 * 16 });
    predictor.dispose();
    await expect(
      trainPatchcore({ data: path.join(dir, 'nope'), out: path.join(dir, 'run3'), backbone: 'random' }),
    ).rejects.toThrow(/data folder not found/);
  });

  it('fills in defaults and rejects bad options naming them', () => {
    const r = resolvePatchcoreOptions({ data: 'd', out: 'o' });
    expect(r).toEqual({ data: 'd', out: 'o', ...PATCHCORE_TRAIN_DEFAULTS });
    expect(PATCHCORE_TRAIN_DEFAULTS).toMatchObject({
      backbone: 'formula',
      resolution: 256,
      coresetRatio: 0.1,
      maxBank: 16_384,
      projectionDims: 128,
    });
    expect(resolvePatchcoreOptions({ data: 'd', out: 'o', seed: undefined }).seed).toBe(0);
    const bad: [object, RegExp][] = [
      [{ resolution: 40 }, /resolution must be a multiple of 16 and >= 32, got 40/],
      [{ coresetRatio: 0 }, /coresetRatio must be in \(0, 1\], got 0/],
      [{ coresetRatio: 1.2 }, /coresetRatio/],
      [{ maxBank: 0.5 }, /maxBank must be an integer >= 1, got 0\.5/],
      [{ projectionDims: -1 }, /projectionDims/],
      [{ seed: -2 }, /seed must be an integer >= 0/],
      [{ width: 0 }, /width must be in/],
      [{ aspect: 'fill' }, /aspect must be stretch, pad or crop, got 'fill'/],
      [{ validationFraction: 0.9 }, /validationFraction/],
      [{ batch: 0 }, /batch must be an integer >= 1/],
      [{ backbone: '' }, /backbone must be/],
    ];
    for (const [o, re] of bad) expect(() => resolvePatchcoreOptions({ data: 'd', out: 'o', ...o })).toThrow(re);
  });
});
