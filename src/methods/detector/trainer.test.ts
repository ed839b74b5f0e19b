import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Tensor, manualSeed, tidy } from '../../engine/index.js';
import { Adam } from '../../nn/index.js';
import { AnoSegGenerator, type AnoSegArchitecture } from '../anoseg/network.js';
import { saveAnoSegModel } from '../anoseg/model-file.js';
import { AnomalyDetector, DetectorPredictor, detectorArchitectureFor, variantSwitches } from './model.js';
import { normalMaskLike } from './losses.js';
import { modelFormat } from '../load.js';
import { generateSyntheticDataset } from '../../data/synthetic-dataset.js';
import { loadImage } from '../../image/io.js';
import { openMvtecDataset, openTrainingData } from '../../data/dataset.js';
import { youdenThreshold } from '../../eval/metrics.js';
import { loadTrainingImages, splitTrainingImages, syntheticValidationSet } from '../../train/data.js';
import { imageLevelScores } from '../../train/validation.js';
import { Rng } from '../../util/rng.js';
import {
  detectorConfig,
  detectorTrainStep,
  resolveDetectorConfig,
  trainDetector,
  validateDetectorConfig,
} from './trainer.js';
import { tinyArchitecture } from '../../../test/fixtures/tiny-architecture.js';
import { writeNoisyGoodImages } from '../../../test/fixtures/noisy-good-images.js';
import type { Tiling } from '../../image/tiles.js';

const ARCH: AnoSegArchitecture = tinyArchitecture();
const tmp = mkdtempSync(path.join(os.tmpdir(), 'detector-trainer-test-'));
const data = path.join(tmp, 'data');
const anosegFile = path.join(tmp, 'anoseg', 'model.safetensors');

beforeAll(async () => {
  await generateSyntheticDataset(data, {
    seed: 5,
    size: 32,
    trainCount: 12,
    testGoodCount: 3,
    testDefectCount: 3,
    kind: 'texture',
  });
  await saveUntrainedAnoSeg(anosegFile);
});

/** An untrained AnoSeg model file (seed 0) for the detector to train on; `tiling` as its metadata says. */
async function saveUntrainedAnoSeg(file: string, tiling?: Tiling): Promise<void> {
  manualSeed(0);
  const g = new AnoSegGenerator(ARCH).eval();
  await saveAnoSegModel(file, g, {
    arch: ARCH,
    aspect: 'stretch',
    ...(tiling ? { tiling } : {}),
    score: { sigma: 1, reconstructionWeight: 0 },
    imageThreshold: 0.5,
    pixelThreshold: 0.5,
    facts: { preset: 'test' },
  });
  g.dispose();
}
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

describe('detector config', () => {
  it('takes its switches from the variant and validates', () => {
    expect(detectorConfig('base').switches).toEqual({ mapInput: false, featureMatching: false, classification: false });
    const c = resolveDetectorConfig({ variant: 'map-input', steps: 7, minutes: 2, seed: 3 });
    expect(c.switches).toEqual(variantSwitches('map-input'));
    expect([c.steps, c.maxMinutes, c.seed, c.evalEvery, c.checkpointEvery]).toEqual([7, 2, 3, 7, 7]);
    expect(c.score).toEqual({ alpha: 1, beta: 0.1 });
    expect(() => validateDetectorConfig({ ...detectorConfig(), batchSize: 1 })).toThrow(/at least 2/);
    expect(() =>
      validateDetectorConfig({ ...detectorConfig(), weights: { ...detectorConfig().weights, adversarial: -1 } }),
    ).toThrow(/adversarial/);
  });
});

describe('detectorTrainStep', () => {
  it('updates generator and discriminator with the switched-on losses only', () => {
    manualSeed(1);
    const det = new AnomalyDetector(detectorArchitectureFor(ARCH, true));
    const optG = new Adam(det.generator.parameters(), { lr: 1e-3 });
    const optD = new Adam(det.discriminator.parameters(), { lr: 1e-3 });
    try {
      tidy(() => {
        const snapshot = (): number[] => [
          det.generator.stateDict().get('encoder.stem.0.weight')!.sum().item(),
          det.discriminator.stateDict().get('body.0.weight')!.sum().item(),
        ];
        const before = snapshot();
        const normals = Tensor.rand([2, 3, 32, 32]);
        const batch = {
          normals,
          normalMaps: normalMaskLike(normals),
          anomalies: Tensor.rand([2, 3, 32, 32]),
          anomalyMaps: Tensor.zeros([2, 1, 32, 32]),
        };
        const w = { reconstruction: 1, adversarial: 1, featureMatching: 1, classification: 1 };
        const off = detectorTrainStep(
          { detector: det, generatorOptimizer: optG, discriminatorOptimizer: optD },
          batch,
          variantSwitches('base'),
          w,
        );
        expect(off.featureMatching).toBe(0);
        expect(off.classification).toBe(0);
        const on = detectorTrainStep(
          { detector: det, generatorOptimizer: optG, discriminatorOptimizer: optD },
          batch,
          variantSwitches('full'),
          w,
        );
        expect(on.featureMatching).toBeGreaterThan(0);
        expect(on.classification).toBeGreaterThan(0);
        for (const l of [off, on]) for (const v of Object.values(l)) expect(Number.isFinite(v)).toBe(true);
        // total = reconstruction + adversarial (+ feature matching) with unit weights
        expect(on.total).toBeCloseTo(on.reconstruction + on.adversarial + on.featureMatching, 4);
        const after = snapshot();
        expect(after[0]).not.toBe(before[0]);
        expect(after[1]).not.toBe(before[1]);
        expect(() =>
          detectorTrainStep(
            { detector: det, generatorOptimizer: optG, discriminatorOptimizer: optD },
            { ...batch, anomalies: null },
            variantSwitches('full'),
            w,
          ),
        ).toThrow(/L_cls needs synthetic anomalies/);
      });
    } finally {
      det.dispose();
      optG.dispose();
      optD.dispose();
    }
  });
});

describe('trainDetector', () => {
  it('with a tiled AnoSeg model chooses the image threshold on whole validation images (highest tile)', async () => {
    // 20 noisy 32 x 80 images, 3 tiles each; an untrained AnoSeg model marked tiling 'long-side'
    const tiled = path.join(tmp, 'tiled');
    await writeNoisyGoodImages(tiled, { count: 20, channels: 3, height: 32, width: 80, seed: 6 });
    const tiledModel = path.join(tmp, 'anoseg-tiled', 'model.safetensors');
    await saveUntrainedAnoSeg(tiledModel, 'long-side');
    const r = await trainDetector({
      anosegModel: tiledModel,
      data: tiled,
      out: path.join(tmp, 'tiled-run'),
      steps: 2,
      seed: 1,
      variant: 'full',
      config: { batchSize: 2, anomalyBatch: 2, evalEvery: 2 },
      progress: false,
    });
    // the validation set again: the held-out images' tiles and their synthetic anomalies, scored by the saved model
    const cfg = resolveDetectorConfig({ seed: 1, variant: 'full' });
    const paths = (await openTrainingData(tiled)).train;
    const loaded = await loadTrainingImages(paths, 32, 'stretch', 3, undefined, 'long-side');
    const { validation, validationTiles } = splitTrainingImages(loaded, cfg.validationFraction);
    expect(validationTiles).toEqual([3, 3]);
    const val = syntheticValidationSet(validation, new Rng(cfg.seed + 1_000_003), cfg.anomaly, validationTiles);
    const predictor = await DetectorPredictor.load(r.modelPath);
    try {
      const scores = (await predictor.predict(val.images)).map((p) => p.score);
      const perImage = imageLevelScores(scores, val.anomalous, val.tiles);
      const perTile = {
        normal: scores.filter((_, i) => !val.anomalous[i]),
        anomalous: scores.filter((_, i) => val.anomalous[i]),
      };
      const expected = youdenThreshold(perImage.normal, perImage.anomalous);
      // the untrained detector's scores are ~1e-3: the two choices differ by a few per cent
      const tileThreshold = youdenThreshold(perTile.normal, perTile.anomalous);
      expect(Math.abs(expected - tileThreshold) / expected).toBeGreaterThan(0.01);
      expect(Math.abs(r.imageThreshold - expected) / expected).toBeLessThan(1e-4);
    } finally {
      predictor.dispose();
    }
  });

  it('trains a few steps, writes a loadable AnoSeg + detector model, and resumes from its checkpoint', async () => {
    const out = path.join(tmp, 'run');
    const r = await trainDetector({
      anosegModel: anosegFile,
      data,
      out,
      steps: 4,
      seed: 1,
      variant: 'full',
      config: { batchSize: 2, anomalyBatch: 2, evalEvery: 2 },
      progress: false,
    });
    expect(r.steps).toBe(4);
    expect(Number.isFinite(r.imageThreshold)).toBe(true);
    expect(r.diagnostics.map((d) => d.step)).toEqual([2, 4]);
    for (const d of r.diagnostics) {
      expect(d.validationImageAuroc).toBeGreaterThanOrEqual(0);
      expect(d.validationImageAuroc).toBeLessThanOrEqual(1);
      expect(d.testImageAuroc).not.toBeNull();
    }
    expect(await modelFormat(r.modelPath)).toBe('anoseg.ts/anoseg+detector@1');
    expect(existsSync(path.join(out, 'checkpoint.safetensors'))).toBe(true);
    expect(existsSync(path.join(out, 'curves.html'))).toBe(true);
    expect(JSON.parse(readFileSync(path.join(out, 'config.json'), 'utf8')).switches).toEqual(variantSwitches('full'));

    const predictor = await DetectorPredictor.load(r.modelPath);
    try {
      expect(predictor.info.imageThreshold).toBeCloseTo(r.imageThreshold, 6);
      expect(predictor.meta.facts.steps).toBe(4);
      const ds = await openMvtecDataset(data);
      const img = await loadImage(ds.test[0].path);
      const [p] = await predictor.predict([img]);
      expect(Number.isFinite(p.score)).toBe(true);
      expect(p.score).toBeGreaterThanOrEqual(0);
      expect([p.map.height, p.map.width]).toEqual([32, 32]);
    } finally {
      predictor.dispose();
    }

    const again = await trainDetector({
      anosegModel: anosegFile,
      data,
      out,
      steps: 6,
      seed: 1,
      variant: 'full',
      config: { batchSize: 2, anomalyBatch: 2, evalEvery: 2 },
      progress: false,
    });
    expect(again.steps).toBe(6);
    expect(again.diagnostics.map((d) => d.step)).toEqual([2, 4, 6]);
    expect(readFileSync(path.join(out, 'train.log'), 'utf8')).toMatch(/resumed from .* at step 4/);
    // Resuming a finished run re-scores without training and without duplicating the last diagnostics.
    const done = await trainDetector({
      anosegModel: anosegFile,
      data,
      out,
      steps: 6,
      seed: 1,
      variant: 'full',
      config: { batchSize: 2, anomalyBatch: 2, evalEvery: 2 },
      progress: false,
    });
    expect(done.steps).toBe(6);
    expect(done.diagnostics.map((d) => d.step)).toEqual([2, 4, 6]);
    expect(done.imageThreshold).toBeCloseTo(again.imageThreshold, 6);
    await expect(
      trainDetector({
        anosegModel: anosegFile,
        data,
        out,
        steps: 8,
        variant: 'base',
        config: { batchSize: 2 },
        progress: false,
      }),
    ).rejects.toThrow(/another architecture or variant/);
    await expect(
      trainDetector({
        anosegModel: anosegFile,
        data,
        out,
        steps: 8,
        variant: 'map-input',
        config: { batchSize: 2 },
        progress: false,
      }),
    ).rejects.toThrow(/another architecture or variant/);
  });
});
