import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { Tensor, manualSeed, noGrad, tidy } from '../../engine/index.js';
import { AnoSegGenerator, type AnoSegArchitecture } from '../anoseg/network.js';
import { AnoSegPredictor, saveAnoSegModel, type AnoSegModelMeta } from '../anoseg/model-file.js';
import { detectorScore, normalMaskLike } from './losses.js';
import {
  AnomalyDetector,
  DETECTOR_FORMAT,
  DETECTOR_VARIANTS,
  DetectorPredictor,
  TABLE5_VARIANTS,
  detectorArchitectureFor,
  loadDetectorModel,
  saveDetectorModel,
  variantSwitches,
  type DetectorModelMeta,
} from './model.js';
import { modelFormat } from '../load.js';
import { Rng } from '../../util/rng.js';
import type { Image } from '../../image/types.js';
import { tinyArchitecture } from '../../../test/fixtures/tiny-architecture.js';

const ARCH: AnoSegArchitecture = tinyArchitecture();
const tmp = mkdtempSync(path.join(os.tmpdir(), 'detector-test-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

function randomImages(n: number, size: number, seed: number, channels = 3): Image[] {
  const rng = new Rng(seed);
  return Array.from({ length: n }, () => {
    const data = new Float32Array(channels * size * size);
    for (let i = 0; i < data.length; i++) data[i] = rng.next();
    return { channels, height: size, width: size, data };
  });
}

function anosegMeta(): AnoSegModelMeta {
  return {
    arch: ARCH,
    aspect: 'stretch',
    score: { sigma: 1, reconstructionWeight: 0 },
    imageThreshold: 0.5,
    pixelThreshold: 0.5,
    facts: { preset: 'test' },
  };
}

describe('Table 5 variants', () => {
  it('are cumulative switches, base to full', () => {
    expect(TABLE5_VARIANTS).toEqual(['base', 'feature-matching', 'map-input', 'full']);
    expect(DETECTOR_VARIANTS.base).toEqual({ mapInput: false, featureMatching: false, classification: false });
    expect(DETECTOR_VARIANTS['feature-matching']).toEqual({
      mapInput: false,
      featureMatching: true,
      classification: false,
    });
    expect(DETECTOR_VARIANTS['map-input']).toEqual({ mapInput: true, featureMatching: true, classification: false });
    expect(DETECTOR_VARIANTS.full).toEqual({ mapInput: true, featureMatching: true, classification: true });
    expect(() => variantSwitches('nope' as never)).toThrow(/unknown detector variant/);
  });
});

describe('AnomalyDetector', () => {
  it('generator input = image + map + coordinates; discriminator on concat(image, map); AnoSeg structure without the map decoder', () => {
    manualSeed(1);
    const withMap = new AnomalyDetector(detectorArchitectureFor(ARCH, true));
    const imageOnly = new AnomalyDetector(detectorArchitectureFor(ARCH, false));
    const noCoords = new AnomalyDetector(detectorArchitectureFor(ARCH, true, false));
    try {
      const firstConv = (d: AnomalyDetector): number[] => d.generator.stateDict().get('encoder.stem.0.weight')!.shape;
      const discIn = (d: AnomalyDetector): number[] => d.discriminator.stateDict().get('body.0.weight')!.shape;
      expect(firstConv(withMap)[1]).toBe(3 + 1 + 2);
      expect(firstConv(imageOnly)[1]).toBe(3 + 2);
      expect(firstConv(noCoords)[1]).toBe(3 + 1);
      expect(discIn(withMap)[1]).toBe(4);
      expect(discIn(imageOnly)[1]).toBe(3);
      // Only encoder + reconstruction decoder in the generator: the same tensors as AnoSeg's minus its map decoder.
      const anoseg = new AnoSegGenerator(ARCH);
      const anosegNames = [...anoseg.stateDict().keys()].filter((k) => !k.startsWith('map_decoder.')).sort();
      expect([...withMap.generator.stateDict().keys()].sort()).toEqual(anosegNames);
      anoseg.dispose();
      tidy(() => {
        const x = Tensor.rand([2, 3, 32, 32]);
        const map = Tensor.rand([2, 1, 32, 32]);
        const xhat = withMap.generator.forward(x, map);
        expect(xhat.shape).toEqual([2, 3, 32, 32]);
        expect(xhat.amin().item()).toBeGreaterThanOrEqual(0);
        expect(xhat.amax().item()).toBeLessThanOrEqual(1);
        expect(() => withMap.generator.forward(x, null)).toThrow(/needs the anomaly map/);
      });
    } finally {
      withMap.dispose();
      imageOnly.dispose();
      noCoords.dispose();
    }
  });

  it('scoreBatch is eq. 5 on the discriminator features of (x, A_Nor) and (x̂, Â); the base variant ignores the map', () => {
    manualSeed(2);
    const det = new AnomalyDetector(detectorArchitectureFor(ARCH, true)).eval();
    const base = new AnomalyDetector(detectorArchitectureFor(ARCH, false)).eval();
    try {
      noGrad(() =>
        tidy(() => {
          const x = Tensor.rand([3, 3, 32, 32]);
          const map = Tensor.rand([3, 1, 32, 32]);
          const w = { alpha: 1, beta: 0.1 };
          const { scores, reconstruction } = det.scoreBatch(x, map, w);
          const real = det.discriminator.forward(Tensor.cat([x, normalMaskLike(x)], 1)).features;
          const fake = det.discriminator.forward(Tensor.cat([reconstruction, map], 1)).features;
          const expected = detectorScore(real, fake, x, reconstruction, w).toFloat32Array();
          const got = scores.toFloat32Array();
          expect(got.length).toBe(3);
          for (let i = 0; i < 3; i++) expect(got[i]).toBeCloseTo(expected[i], 6);
          // With map input, a different map changes the score; without, it does not.
          const other = det.scoreBatch(x, map.rsub(1), w).scores.toFloat32Array();
          expect(Math.max(...got.map((v, i) => Math.abs(v - other[i])))).toBeGreaterThan(1e-6);
          const b1 = base.scoreBatch(x, map, w).scores.toFloat32Array();
          const b2 = base.scoreBatch(x, map.rsub(1), w).scores.toFloat32Array();
          expect([...b1]).toEqual([...b2]);
        }),
      );
    } finally {
      det.dispose();
      base.dispose();
    }
  });
});

describe('model file and DetectorPredictor', () => {
  it('saves AnoSeg + detector in one file, loads it, predicts maps from AnoSeg and eq. 5 scores', async () => {
    manualSeed(3);
    const anoseg = new AnoSegGenerator(ARCH).eval();
    const detector = new AnomalyDetector(detectorArchitectureFor(ARCH, true)).eval();
    const meta: DetectorModelMeta = {
      anoseg: anosegMeta(),
      detector: {
        arch: detector.arch,
        variant: 'full',
        switches: variantSwitches('full'),
        score: { alpha: 1, beta: 0.1 },
        imageThreshold: 0.123,
      },
      facts: { note: 'unit test' },
    };
    const file = path.join(tmp, 'model.safetensors');
    await saveDetectorModel(file, anoseg, detector, meta);
    const anosegFile = path.join(tmp, 'anoseg.safetensors');
    await saveAnoSegModel(anosegFile, anoseg, meta.anoseg);
    expect(await modelFormat(file)).toBe(DETECTOR_FORMAT);

    const images = randomImages(3, 32, 7);
    const direct = new DetectorPredictor(anoseg, detector, meta).scoreFitted(images);
    const loaded = await DetectorPredictor.load(file);
    const mapOnly = await DetectorPredictor.load(file, { score: 'map' });
    const plain = await AnoSegPredictor.load(anosegFile);
    try {
      expect(loaded.info.method).toBe('anoseg+detector');
      expect(loaded.info.imageThreshold).toBe(0.123);
      expect(mapOnly.info.imageThreshold).toBe(0.5);
      const preds = await loaded.predict(images);
      expect(preds).toHaveLength(3);
      preds.forEach((p, i) => {
        expect(p.score).toBeCloseTo(direct.detectorScores[i], 5);
        expect(p.map.height).toBe(32);
      });
      // Maps and the fallback score are exactly AnoSeg's.
      const ref = plain.scoreFitted(images);
      const viaDetector = loaded.scoreFitted(images);
      const fallback = mapOnly.scoreFitted(images);
      for (let i = 0; i < 3; i++) {
        expect(fallback.scores[i]).toBeCloseTo(ref.scores[i], 6);
        expect(Math.max(...viaDetector.maps[i].data.map((v, j) => Math.abs(v - ref.maps[i].data[j])))).toBeLessThan(
          1e-6,
        );
      }
      // A larger input comes back at its own size.
      const big = await loaded.predict(randomImages(1, 48, 9));
      expect([big[0].map.height, big[0].map.width]).toEqual([48, 48]);
    } finally {
      loaded.dispose();
      mapOnly.dispose();
      plain.dispose();
      anoseg.dispose();
      detector.dispose();
    }
  });

  it('rejects files of another format and mismatched metadata', async () => {
    manualSeed(4);
    const anoseg = new AnoSegGenerator(ARCH);
    const anosegFile = path.join(tmp, 'only-anoseg.safetensors');
    await saveAnoSegModel(anosegFile, anoseg, anosegMeta());
    await expect(loadDetectorModel(anosegFile)).rejects.toThrow(/is not anoseg\.ts\/anoseg\+detector@1/);
    const detector = new AnomalyDetector({ ...detectorArchitectureFor(ARCH, true), resolution: 64 });
    const bad = path.join(tmp, 'bad.safetensors');
    await saveDetectorModel(bad, anoseg, detector, {
      anoseg: anosegMeta(),
      detector: {
        arch: detector.arch,
        variant: 'full',
        switches: variantSwitches('full'),
        score: { alpha: 1, beta: 0.1 },
        imageThreshold: 0,
      },
      facts: {},
    });
    await expect(loadDetectorModel(bad)).rejects.toThrow(/does not match AnoSeg/);
    anoseg.dispose();
    detector.dispose();
  });
});
