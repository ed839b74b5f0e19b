import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { generateSyntheticDataset } from '../../data/synthetic-dataset.js';
import { loadImage } from '../../image/io.js';
import type { Image } from '../../image/types.js';
import type { AnomalyPrediction } from '../../models/predictor.js';
import { loadPredictor } from '../load.js';
import { trainPadim } from '../padim/trainer.js';
import { trainPatchcore } from '../patchcore/trainer.js';
import { buildEnsemble } from './build.js';
import { checkEnsembleMeta, combinePredictions, EnsemblePredictor, type EnsembleMember } from './model.js';

const member = (o: Partial<EnsembleMember>): EnsembleMember => ({
  method: 'm',
  mapWeight: 1,
  scoreWeight: 1,
  pixelMean: 0,
  pixelStd: 1,
  imageMean: 0,
  imageStd: 1,
  ...o,
});
const map = (height: number, width: number, data: number[]): Image => ({
  channels: 1,
  height,
  width,
  data: Float32Array.from(data),
});

describe('combinePredictions', () => {
  it('adds the standardised maps and scores with their weights (hand case)', () => {
    const preds: AnomalyPrediction[] = [
      { score: 3, map: map(1, 2, [1, 3]) },
      { score: 10, map: map(1, 2, [20, 40]) },
    ];
    const members = [
      member({ pixelMean: 1, pixelStd: 2, imageMean: 1, imageStd: 2 }),
      member({ mapWeight: 0.5, scoreWeight: 2, pixelMean: 30, pixelStd: 10, imageMean: 6, imageStd: 4 }),
    ];
    const r = combinePredictions(preds, members, 1, 2);
    // map: (1-1)/2 + 0.5 (20-30)/10 = -0.5 ; (3-1)/2 + 0.5 (40-30)/10 = 1.5
    expect([...r.map.data]).toEqual([-0.5, 1.5]);
    // score: (3-1)/2 + 2 (10-6)/4 = 3
    expect(r.score).toBeCloseTo(3, 12);
  });

  it('brings maps of another size to the image, and a map weight of 0 leaves the member out of the map', () => {
    const preds: AnomalyPrediction[] = [
      { score: 0, map: map(1, 1, [2]) },
      { score: 5, map: map(2, 2, [100, 100, 100, 100]) },
    ];
    const r = combinePredictions(preds, [member({}), member({ mapWeight: 0, scoreWeight: 1 })], 2, 2);
    expect([...r.map.data]).toEqual([2, 2, 2, 2]);
    expect(r.score).toBe(5);
  });
});

describe('checkEnsembleMeta', () => {
  const ok = { members: [member({}), member({})], imageThreshold: 0, pixelThreshold: 0, facts: {} };
  it('accepts a usable description', () => expect(() => checkEnsembleMeta(ok, 'f')).not.toThrow());
  it.each([
    [{ ...ok, members: [] }, /lists no members/],
    [{ ...ok, members: [member({ pixelStd: 0 }), member({})] }, /member 0 has a non-positive standard deviation/],
    [{ ...ok, members: [member({}), member({ mapWeight: -1 })] }, /member 1 has missing, negative/],
    [{ ...ok, members: [member({ mapWeight: 0 }), member({ mapWeight: 0 })] }, /needs a member with a map weight/],
    [{ ...ok, imageThreshold: Number.NaN }, /thresholds are missing/],
  ])('refuses %#, naming the file', (meta, message) => {
    expect(() => checkEnsembleMeta(meta, 'f.safetensors')).toThrow(message);
    expect(() => checkEnsembleMeta(meta, 'f.safetensors')).toThrow(/^f\.safetensors: /);
  });
});

describe('an ensemble of a PaDiM and a PatchCore model, built from training data, saved and loaded', () => {
  let dir: string;
  let data: string;
  let padimFile: string;
  let patchcoreFile: string;
  let ensembleFile: string;
  let testImages: string[];

  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'anoseg-ensemble-'));
    const ds = await generateSyntheticDataset(path.join(dir, 'data'), {
      seed: 5,
      size: 48,
      trainCount: 20,
      testGoodCount: 1,
      testDefectCount: 2,
      kind: 'texture',
    });
    data = ds.root;
    testImages = ds.test.map((t) => t.path);
    const common = { data, backbone: 'random', width: 0.125, resolution: 32, seed: 3, progress: false } as const;
    padimFile = (await trainPadim({ ...common, out: path.join(dir, 'padim'), dims: 16 })).modelPath;
    patchcoreFile = (await trainPatchcore({ ...common, out: path.join(dir, 'patchcore') })).modelPath;
    ensembleFile = path.join(dir, 'ensemble.safetensors');
  }, 120_000);
  afterAll(async () => rm(dir, { recursive: true, force: true }));

  it('records statistics and thresholds from held-out images; predicts the weighted sum of its members', async () => {
    const built = await buildEnsemble({
      members: [
        { file: padimFile, mapWeight: 1, scoreWeight: 1 },
        { file: patchcoreFile, mapWeight: 0.5, scoreWeight: 2 },
      ],
      data,
      out: ensembleFile,
      loadModel: loadPredictor,
    });
    expect(built.validationImages).toBe(2); // 10% of 20
    expect(built.heldOut).toBe(true);
    expect(built.meta.members.map((m) => m.method)).toEqual(['padim', 'patchcore']);
    expect(Number.isFinite(built.meta.imageThreshold) && Number.isFinite(built.meta.pixelThreshold)).toBe(true);

    const ensemble = await loadPredictor(ensembleFile);
    const padim = await loadPredictor(padimFile);
    const patchcore = await loadPredictor(patchcoreFile);
    try {
      expect(ensemble).toBeInstanceOf(EnsemblePredictor);
      expect(ensemble.info).toMatchObject({
        method: 'ensemble(padim+patchcore)',
        imageThreshold: built.meta.imageThreshold,
        pixelThreshold: built.meta.pixelThreshold,
      });
      const images = await Promise.all(testImages.map((p) => loadImage(p, { channels: 'keep' })));
      const got = await ensemble.predict(images);
      const [a, b] = [await padim.predict(images), await patchcore.predict(images)];
      images.forEach((img, i) => {
        const want = combinePredictions([a[i], b[i]], built.meta.members, img.height, img.width);
        expect(got[i].score).toBe(want.score);
        expect(got[i].map.data).toEqual(want.map.data);
        expect([got[i].map.height, got[i].map.width]).toEqual([img.height, img.width]);
      });
    } finally {
      ensemble.dispose();
      padim.dispose();
      patchcore.dispose();
    }
  }, 120_000);

  it('a truncated ensemble file or a corrupt embedded member is refused naming the file', async () => {
    const bytes = await readFile(ensembleFile);
    const truncated = path.join(dir, 'truncated.safetensors');
    await writeFile(truncated, bytes.subarray(0, bytes.length - 100));
    await expect(loadPredictor(truncated)).rejects.toThrow(/truncated\.safetensors/);

    // overwrite the start of member 0's embedded bytes (its safetensors header length) with garbage
    const headerLength = Number(bytes.readBigUInt64LE(0));
    const header = JSON.parse(bytes.subarray(8, 8 + headerLength).toString('utf8')) as Record<
      string,
      { data_offsets: [number, number] }
    >;
    const start = 8 + headerLength + header['member.0'].data_offsets[0];
    const corrupt = Buffer.from(bytes);
    corrupt.fill(0xff, start, start + 8);
    const corruptFile = path.join(dir, 'corrupt.safetensors');
    await writeFile(corruptFile, corrupt);
    await expect(loadPredictor(corruptFile)).rejects.toThrow(/corrupt\.safetensors \(member 0\)/);
  });

  it('ONNX export refuses an ensemble, saying what to export instead', async () => {
    const { exportModelFile } = await import('../../onnx/export.js');
    await expect(exportModelFile(ensembleFile)).rejects.toThrow(/an ensemble is not exportable as one graph/);
  });

  it('predicts in a worker pool as on the calling thread', async () => {
    const { PredictorPool } = await import('../../models/predictor-pool.js');
    const pool = await PredictorPool.create(ensembleFile, { workers: 1 });
    const local = await loadPredictor(ensembleFile);
    try {
      const img = await loadImage(testImages[1], { channels: 'keep' });
      const [a] = await pool.predict([img]);
      const [b] = await local.predict([img]);
      expect(a.score).toBe(b.score);
      expect(a.map.data).toEqual(b.map.data);
      expect(pool.info.method).toBe('ensemble(padim+patchcore)');
    } finally {
      await pool.close();
      local.dispose();
    }
  }, 60_000);

  it('refuses fewer than two members and negative weights before reading anything', async () => {
    const loadModel = (): never => {
      throw new Error('must not load');
    };
    await expect(
      buildEnsemble({ members: [{ file: padimFile, mapWeight: 1, scoreWeight: 1 }], data, out: 'x', loadModel }),
    ).rejects.toThrow(/at least two models/);
    await expect(
      buildEnsemble({
        members: [
          { file: padimFile, mapWeight: 1, scoreWeight: 1 },
          { file: patchcoreFile, mapWeight: -1, scoreWeight: 1 },
        ],
        data,
        out: 'x',
        loadModel,
      }),
    ).rejects.toThrow(/must be finite and >= 0/);
  });
});
