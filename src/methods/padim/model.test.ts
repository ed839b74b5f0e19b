import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadSafetensors, saveSafetensors } from '../../nn/index.js';
import { createImage, type Image } from '../../image/types.js';
import { Rng } from '../../util/rng.js';
import { FeatureBackbone } from '../../models/backbone.js';
import { PADIM_FORMAT, PADIM_SIGMA, PadimModel, PadimPredictor, fitPadimStats, type PadimModelMeta } from './model.js';
import { toChannels } from '../../models/fitted-prediction.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'anoseg-padim-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** Stripes with a slightly jittered phase and a little noise: a tiny aligned "category". */
function stripes(size: number, rng: Rng): Image {
  const img = createImage(3, size, size);
  const phase = rng.uniform(0, 0.3);
  const n = size * size;
  for (let y = 0; y < size; y++) {
    for (let x = 0; x < size; x++) {
      const v = 0.5 + 0.3 * Math.sin((2 * Math.PI * x) / 8 + phase) + rng.normal(0, 0.02);
      for (let c = 0; c < 3; c++) img.data[c * n + y * size + x] = v;
    }
  }
  return img;
}

function makeModel(train: Image[], resolution: number): PadimModel {
  const backbone = FeatureBackbone.random(0.125, 4);
  const stats = fitPadimStats(backbone, train, { dims: 24, seed: 2, batch: 5 });
  const meta: PadimModelMeta = {
    resolution,
    aspect: 'stretch',
    channels: 3,
    dims: stats.dims,
    seed: 2,
    eps: 0.01,
    sigma: PADIM_SIGMA,
    backbone: backbone.meta,
    imageThreshold: 1.5,
    pixelThreshold: 1.25,
    facts: { note: 'test' },
  };
  return new PadimModel(backbone, stats, meta);
}

describe('PadimModel', () => {
  const size = 64;
  const rng = new Rng(1);
  const train = Array.from({ length: 16 }, () => stripes(size, rng));
  const test = stripes(size, rng);

  it('fits per-position Gaussians on the layer1..3 embedding with a seeded channel subset', () => {
    const model = makeModel(train, size);
    try {
      expect(model.stats.inputDims).toBe(56); // 8 + 16 + 32 channels at width 0.125
      expect(model.stats.dims).toBe(24);
      expect([model.stats.height, model.stats.width]).toEqual([16, 16]);
      expect(model.stats.count).toBe(16);
      const again = fitPadimStats(model.backbone, train, { dims: 24, seed: 2 });
      expect(again.channelIndices).toEqual(model.stats.channelIndices);
      // Another feature-extraction batch size gives the same statistics (up to float rounding in the convolutions).
      let maxDiff = 0;
      again.mean.forEach((v, i) => (maxDiff = Math.max(maxDiff, Math.abs(v - model.stats.mean[i]))));
      expect(maxDiff).toBeLessThan(1e-4);
      const other = fitPadimStats(model.backbone, train.slice(0, 2), { dims: 24, seed: 3 });
      expect(other.channelIndices).not.toEqual(model.stats.channelIndices);
      expect(fitPadimStats(model.backbone, train.slice(0, 2), { dims: 500 }).dims).toBe(56); // capped at the embedding size
    } finally {
      model.dispose();
    }
  });

  it('scores a patched image higher inside the patch than outside, and higher than a normal image', () => {
    const model = makeModel(train, size);
    try {
      const bad = { ...test, data: test.data.slice() };
      const n = size * size;
      const inPatch = (y: number, x: number): boolean => y >= 24 && y < 40 && x >= 24 && x < 40;
      for (let y = 0; y < size; y++)
        for (let x = 0; x < size; x++)
          if (inPatch(y, x)) for (let c = 0; c < 3; c++) bad.data[c * n + y * size + x] = 0.05;
      const { maps, scores } = model.scoreFitted([test, bad]);
      expect(maps[1].height).toBe(size);
      let inside = 0;
      let outside = 0;
      let ni = 0;
      let no = 0;
      for (let y = 0; y < size; y++) {
        for (let x = 0; x < size; x++) {
          const v = maps[1].data[y * size + x];
          if (inPatch(y, x)) {
            inside += v;
            ni++;
          } else if (y < 12 || y >= 52 || x < 12 || x >= 52) {
            outside += v;
            no++;
          }
        }
      }
      expect(inside / ni).toBeGreaterThan(1.5 * (outside / no));
      expect(scores[1]).toBeGreaterThan(scores[0]);
      expect(scores[1]).toBeCloseTo(Math.max(...maps[1].data), 5);
    } finally {
      model.dispose();
    }
  });

  it('round-trips through its model file with identical maps', async () => {
    const file = path.join(dir, 'model.safetensors');
    const model = makeModel(train, size);
    const before = model.scoreFitted([test]);
    await model.save(file);
    model.dispose();
    const predictor = await PadimPredictor.load(file);
    try {
      expect(predictor.info).toMatchObject({
        method: 'padim',
        resolution: size,
        channels: 3,
        imageThreshold: 1.5,
        pixelThreshold: 1.25,
      });
      expect(predictor.info.meta.note).toBe('test');
      const after = predictor.scoreFitted([test]);
      expect(after.maps[0].data).toEqual(before.maps[0].data);
      expect(after.scores).toEqual(before.scores);
      // predict() on an unfitted input (other size, grayscale, 4 channels) returns maps at the input's size.
      const gray = toChannels(stripes(48, new Rng(8)), 1);
      expect(gray.channels).toBe(1);
      const [p] = await predictor.predict([{ ...gray, height: 24, width: 96 }]);
      expect([p.map.channels, p.map.height, p.map.width]).toEqual([1, 24, 96]);
      const rgba = { channels: 4, height: 20, width: 30, data: new Float32Array(4 * 600).fill(0.5) };
      const [q] = await predictor.predict([rgba]);
      expect([q.map.height, q.map.width]).toEqual([20, 30]);
      const same = await predictor.predict([test]);
      expect(same[0].map.data).toEqual(before.maps[0].data);
      expect(same[0].score).toBe(before.scores[0]);
    } finally {
      predictor.dispose();
    }
  });

  it('rejects a corrupt, truncated, wrong-format or inconsistent model file with a clear error', async () => {
    const file = path.join(dir, 'good.safetensors');
    const model = makeModel(train, size);
    await model.save(file);
    await model.backbone.save(path.join(dir, 'backbone.safetensors'));
    model.dispose();
    const bytes = await readFile(file);

    const truncated = path.join(dir, 'truncated.safetensors');
    await writeFile(truncated, bytes.subarray(0, bytes.length - 1000));
    await expect(PadimModel.load(truncated)).rejects.toThrow(/truncated\.safetensors: not a valid safetensors file/);

    const garbage = path.join(dir, 'garbage.safetensors');
    await writeFile(garbage, Buffer.from('this is not a model file at all'));
    await expect(PadimModel.load(garbage)).rejects.toThrow(/not a valid safetensors file/);

    await expect(PadimModel.load(path.join(dir, 'backbone.safetensors'))).rejects.toThrow(
      /format 'anoseg\.ts\/backbone@1' is not anoseg\.ts\/padim@1/,
    );

    const { tensors, metadata } = await loadSafetensors(file);
    const rewrite = async (name: string, t: typeof tensors, meta: Record<string, string>): Promise<string> => {
      const f = path.join(dir, name);
      await saveSafetensors(f, t, meta);
      return f;
    };
    const noStats = new Map([...tensors].filter(([k]) => k !== 'padim.inv_covariance'));
    await expect(PadimModel.load(await rewrite('nostats.safetensors', noStats, metadata))).rejects.toThrow(
      /'padim\.inv_covariance' is missing/,
    );
    const meta = JSON.parse(metadata.meta);
    await expect(
      PadimModel.load(
        await rewrite('res.safetensors', tensors, { ...metadata, meta: JSON.stringify({ ...meta, resolution: 32 }) }),
      ),
    ).rejects.toThrow(/do not fit a backbone/);
    await expect(
      PadimModel.load(
        await rewrite('thr.safetensors', tensors, {
          ...metadata,
          meta: JSON.stringify({ ...meta, imageThreshold: 'x' }),
        }),
      ),
    ).rejects.toThrow(/imageThreshold is not a finite number/);
    await expect(
      PadimModel.load(
        await rewrite('tiling.safetensors', tensors, {
          ...metadata,
          meta: JSON.stringify({ ...meta, tiling: 'grid' }),
        }),
      ),
    ).rejects.toThrow(/tiling\.safetensors: bad PaDiM model metadata: tiling 'grid'/);
    await expect(PadimModel.load(await rewrite('nofmt.safetensors', tensors, { meta: metadata.meta }))).rejects.toThrow(
      /format 'none' is not anoseg\.ts\/padim@1/,
    );
    expect(metadata.format).toBe(PADIM_FORMAT);
    for (const t of tensors.values()) t.dispose();
  });
});
