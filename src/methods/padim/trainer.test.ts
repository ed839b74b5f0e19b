import { existsSync } from 'node:fs';
import { cp, mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { generateSyntheticDataset } from '../../data/synthetic-dataset.js';
import { loadMask, openTrainingData, type MvtecDataset } from '../../data/dataset.js';
import { auroc } from '../../eval/metrics.js';
import { loadImage } from '../../image/io.js';
import type { Image } from '../../image/types.js';
import { loadTrainingImages, splitTrainingImages } from '../../train/data.js';
import { syntheticValidation } from '../../train/validation.js';
import { FeatureBackbone } from '../../models/backbone.js';
import { PadimPredictor } from './model.js';
import { trainPadim } from './trainer.js';
import { writeNoisyGoodImages } from '../../../test/fixtures/noisy-good-images.js';

let dir: string;
let ds: MvtecDataset;
beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'anoseg-padim-train-'));
  ds = await generateSyntheticDataset(path.join(dir, 'data'), {
    seed: 3,
    size: 48,
    trainCount: 30,
    testGoodCount: 6,
    testDefectCount: 9,
    kind: 'texture',
  });
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('trainPadim', () => {
  it('fits PaDiM on good images, picks thresholds on held-out data and detects defects', async () => {
    const out = path.join(dir, 'run');
    const r = await trainPadim({
      data: ds.root,
      out,
      backbone: 'random',
      width: 0.125,
      resolution: 48,
      dims: 32,
      seed: 1,
      progress: false,
    });
    expect(r.trainImages + r.validationImages).toBe(30);
    expect(r.validationImages).toBe(3);
    expect(Number.isFinite(r.imageThreshold) && r.imageThreshold > 0).toBe(true);
    expect(Number.isFinite(r.pixelThreshold) && r.pixelThreshold > 0).toBe(true);
    expect(existsSync(r.modelPath)).toBe(true);
    expect(await readFile(path.join(out, 'train.log'), 'utf8')).toMatch(/27 training, 3 validation images/);

    const predictor = await PadimPredictor.load(r.modelPath);
    try {
      expect(predictor.info).toMatchObject({
        method: 'padim',
        resolution: 48,
        channels: 3,
        imageThreshold: r.imageThreshold,
      });
      expect(predictor.info.meta.trainImages).toBe(27);
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

  it('accepts a backbone file and rejects a missing data folder or a bad resolution', async () => {
    const bbFile = path.join(dir, 'bb.safetensors');
    const bb = FeatureBackbone.random(0.125, 9);
    await bb.save(bbFile);
    bb.dispose();
    const r = await trainPadim({
      data: path.join(ds.root, 'train', 'good'),
      out: path.join(dir, 'run2'),
      backbone: bbFile,
      resolution: 32,
      dims: 16,
      progress: false,
    });
    const predictor = await PadimPredictor.load(r.modelPath);
    expect(predictor.model.meta.backbone.training).toEqual({ kind: 'random', seed: 9 });
    expect(predictor.model.meta.facts.backbone).toBe(path.resolve(bbFile));
    predictor.dispose();
    await expect(
      trainPadim({ data: path.join(dir, 'nope'), out: path.join(dir, 'run3'), backbone: 'random' }),
    ).rejects.toThrow(/data folder not found/);
    await expect(
      trainPadim({ data: ds.root, out: path.join(dir, 'run3'), backbone: 'random', resolution: 40 }),
    ).rejects.toThrow(/multiple of 16/);
  });

  it('fits on a category without masks and on the MVTec 3D-AD layout (train/good/rgb)', async () => {
    const bare = path.join(dir, 'bare');
    await cp(ds.root, bare, { recursive: true });
    await rm(path.join(bare, 'ground_truth'), { recursive: true });
    const opts = { backbone: 'random', width: 0.125, resolution: 32, dims: 16, progress: false } as const;
    const a = await trainPadim({ data: bare, out: path.join(dir, 'bare-run'), ...opts });
    expect(a.trainImages + a.validationImages).toBe(30);
    const d3 = path.join(dir, 'mvtec3d');
    await mkdir(path.join(d3, 'train', 'good'), { recursive: true });
    await cp(path.join(ds.root, 'train', 'good'), path.join(d3, 'train', 'good', 'rgb'), { recursive: true });
    const b = await trainPadim({ data: d3, out: path.join(dir, 'mvtec3d-run'), ...opts });
    expect(b.trainImages + b.validationImages).toBe(30);
  });

  it('with tiling chooses the image threshold on whole validation images (each scored by its highest tile)', async () => {
    // 20 noisy 32 x 80 images (3 tiles each): 2 held out, 6 validation tiles
    const tiled = path.join(dir, 'tiled');
    await writeNoisyGoodImages(tiled, { count: 20, channels: 1, height: 32, width: 80, seed: 4 });
    const opts = { backbone: 'random', width: 0.125, resolution: 32, dims: 16, seed: 2, progress: false } as const;
    const r = await trainPadim({ data: tiled, out: path.join(dir, 'tiled-run'), tiling: 'long-side', ...opts });
    expect([r.trainImages, r.validationImages]).toEqual([54, 6]);
    // the threshold, recomputed from the same validation tiles: grouped by image, not per tile
    const paths = (await openTrainingData(tiled)).train;
    const split = splitTrainingImages(
      await loadTrainingImages(paths, 32, 'stretch', 'auto', undefined, 'long-side'),
      0.1,
    );
    expect(split.validationTiles).toEqual([3, 3]);
    const predictor = await PadimPredictor.load(r.modelPath);
    try {
      const score = (x: Image[]) => predictor.model.scoreFitted(x);
      const perImage = syntheticValidation(score, split.validation, 2, split.validationTiles);
      const perTile = syntheticValidation(score, split.validation, 2);
      expect(perImage.imageThreshold).not.toBe(perTile.imageThreshold);
      expect(r.imageThreshold).toBe(perImage.imageThreshold);
      expect(r.pixelThreshold).toBe(perImage.pixelThreshold);
    } finally {
      predictor.dispose();
    }
  });
});
