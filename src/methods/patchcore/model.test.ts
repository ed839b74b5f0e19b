import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { F, Tensor, noGrad, tidy } from '../../engine/index.js';
import { loadSafetensors, saveSafetensors } from '../../nn/index.js';
import { createImage, type Image } from '../../image/types.js';
import { exportModelFile } from '../../onnx/export.js';
import { Rng } from '../../util/rng.js';
import { FeatureBackbone } from '../../models/backbone.js';
import { toChannels } from '../../models/fitted-prediction.js';
import { loadPredictor } from '../load.js';
import {
  PATCHCORE_FORMAT,
  PATCHCORE_SIGMA,
  PatchFeatures,
  PatchcoreModel,
  PatchcorePredictor,
  fitPatchcoreBank,
  type PatchcoreModelMeta,
} from './model.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'anoseg-patchcore-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** Stripes with a slightly jittered phase and a little noise: a tiny aligned "category" (as padim.test.ts). */
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

async function makeModel(train: Image[], resolution: number, coresetRatio = 0.25): Promise<PatchcoreModel> {
  const backbone = FeatureBackbone.random(0.125, 4);
  const bank = await fitPatchcoreBank(backbone, train, { coresetRatio, seed: 2, batch: 5 });
  const meta: PatchcoreModelMeta = {
    resolution,
    aspect: 'stretch',
    channels: 3,
    coresetRatio,
    maxBank: 16_384,
    projectionDims: 128,
    seed: 2,
    patches: bank.patches,
    sigma: PATCHCORE_SIGMA,
    backbone: backbone.meta,
    imageThreshold: 1.5,
    pixelThreshold: 1.25,
    facts: { note: 'test' },
  };
  return new PatchcoreModel(backbone, bank, meta);
}

describe('PatchCore', () => {
  const size = 64;
  const rng = new Rng(1);
  const train = Array.from({ length: 12 }, () => stripes(size, rng));
  const test = stripes(size, rng);
  const bad = { ...test, data: test.data.slice() };
  const inPatch = (y: number, x: number): boolean => y >= 24 && y < 40 && x >= 24 && x < 40;
  for (let y = 0; y < size; y++)
    for (let x = 0; x < size; x++)
      if (inPatch(y, x)) for (let c = 0; c < 3; c++) bad.data[c * size * size + y * size + x] = 0.05;

  it('builds locally aware patch features: layer2 | layer3, each 3x3-averaged, layer3 bilinear to layer2', () => {
    const backbone = FeatureBackbone.random(0.125, 4);
    const features = new PatchFeatures(backbone);
    try {
      const { got, expected, shape } = noGrad(() =>
        tidy(() => {
          const e = features.embed(train.slice(0, 2));
          const [, f2, f3] = backbone.features(backbone.prepare(train.slice(0, 2)));
          const size2: [number, number] = [f2.shape[2], f2.shape[3]];
          const ref = Tensor.cat(
            [F.avgPool2d(f2, 3, 1, 1), F.interpolate(F.avgPool2d(f3, 3, 1, 1), size2, 'bilinear')],
            1,
          );
          return { got: e.toFloat32Array(), expected: ref.toFloat32Array(), shape: e.shape };
        }),
      );
      expect(shape).toEqual([2, 16 + 32, size / 8, size / 8]); // width 0.125: layer2 16, layer3 32 channels
      let maxDiff = 0;
      let scale = 0;
      got.forEach((v, i) => {
        maxDiff = Math.max(maxDiff, Math.abs(v - expected[i]));
        scale = Math.max(scale, Math.abs(expected[i]));
      });
      expect(maxDiff).toBeLessThan(1e-4 * Math.max(1, scale)); // folded BatchNorm vs the module
    } finally {
      features.dispose();
      backbone.dispose();
    }
  });

  it('fits a coreset bank and scores a pasted defect above normal pixels and a normal image', async () => {
    const model = await makeModel(train, size);
    try {
      expect(model.bank.patches).toBe(12 * 8 * 8);
      expect(model.bank.size).toBe(Math.ceil(0.25 * 12 * 64));
      expect(model.bank.dims).toBe(48);
      const { maps, scores } = model.scoreFitted([test, bad]);
      expect([maps[1].height, maps[1].width]).toEqual([size, size]);
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
      expect(inside / ni).toBeGreaterThan(2 * (outside / no));
      expect(scores[1]).toBeGreaterThan(1.5 * scores[0]);
      // the image score is the largest patch distance: upsampling and blurring never exceed it
      for (const [i, m] of maps.entries()) expect(Math.max(...m.data)).toBeLessThanOrEqual(scores[i] + 1e-4);
    } finally {
      model.dispose();
    }
  });

  it('scores its own training images near 0 when the bank keeps every patch', async () => {
    const model = await makeModel(train.slice(0, 3), size, 1);
    try {
      expect(model.bank.size).toBe(3 * 64);
      const { scores } = model.scoreFitted([train[0], bad]);
      expect(scores[0]).toBeLessThan(0.02 * scores[1]);
    } finally {
      model.dispose();
    }
  });

  it('round-trips through its model file with identical maps, and loadPredictor opens it', async () => {
    const file = path.join(dir, 'model.safetensors');
    const model = await makeModel(train, size);
    const before = model.scoreFitted([test, bad]);
    await model.save(file);
    model.dispose();
    const predictor = await PatchcorePredictor.load(file);
    try {
      expect(predictor.info).toMatchObject({
        method: 'patchcore',
        resolution: size,
        channels: 3,
        aspect: 'stretch',
        imageThreshold: 1.5,
        pixelThreshold: 1.25,
      });
      expect(predictor.info.meta).toMatchObject({ note: 'test', bankSize: 192, featureDims: 48 });
      const after = predictor.scoreFitted([test, bad]);
      expect(after.maps[0].data).toEqual(before.maps[0].data);
      expect(after.maps[1].data).toEqual(before.maps[1].data);
      expect(after.scores).toEqual(before.scores);
      // predict() on unfitted inputs (other size, grayscale, 4 channels) returns maps at the input's size
      const gray = toChannels(stripes(48, new Rng(8)), 1);
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
    const loaded = await loadPredictor(file);
    try {
      expect(loaded).toBeInstanceOf(PatchcorePredictor);
      const [r] = await loaded.predict([bad]);
      expect(r.map.data).toEqual(before.maps[1].data);
      expect(r.score).toBe(before.scores[1]);
    } finally {
      loaded.dispose();
    }
    await expect(exportModelFile(file)).rejects.toThrow(
      /model\.safetensors: export supports .*anoseg\.ts\/padim@1; PatchCore models are not exportable yet/,
    );
  });

  it('rejects a corrupt, truncated, wrong-format or inconsistent model file with a clear error', async () => {
    const file = path.join(dir, 'good.safetensors');
    const model = await makeModel(train.slice(0, 4), size);
    await model.save(file);
    await model.backbone.save(path.join(dir, 'backbone.safetensors'));
    model.dispose();
    const bytes = await readFile(file);

    const truncated = path.join(dir, 'truncated.safetensors');
    await writeFile(truncated, bytes.subarray(0, bytes.length - 1000));
    await expect(PatchcoreModel.load(truncated)).rejects.toThrow(
      /truncated\.safetensors: not a valid safetensors file/,
    );
    await expect(loadPredictor(truncated)).rejects.toThrow(/truncated\.safetensors: not a valid safetensors file/);

    const garbage = path.join(dir, 'garbage.safetensors');
    await writeFile(garbage, Buffer.from('this is not a model file at all'));
    await expect(PatchcoreModel.load(garbage)).rejects.toThrow(/garbage\.safetensors: not a valid safetensors file/);
    await expect(loadPredictor(garbage)).rejects.toThrow(/garbage\.safetensors: not a model file/);

    await expect(PatchcoreModel.load(path.join(dir, 'backbone.safetensors'))).rejects.toThrow(
      /backbone\.safetensors: format 'anoseg\.ts\/backbone@1' is not anoseg\.ts\/patchcore@1/,
    );

    const { tensors, metadata } = await loadSafetensors(file);
    const rewrite = async (name: string, t: typeof tensors, meta: Record<string, string>): Promise<string> => {
      const f = path.join(dir, name);
      await saveSafetensors(f, t, meta);
      return f;
    };
    try {
      expect(metadata.format).toBe(PATCHCORE_FORMAT);
      const noBank = new Map([...tensors].filter(([k]) => k !== 'patchcore.bank'));
      await expect(PatchcoreModel.load(await rewrite('nobank.safetensors', noBank, metadata))).rejects.toThrow(
        /nobank\.safetensors: PatchCore memory bank tensor 'patchcore\.bank' is missing/,
      );
      const narrow = new Map(tensors);
      const bank = tensors.get('patchcore.bank')!;
      const cut = tidy(() => bank.slice(1, 0, 40).contiguous());
      narrow.set('patchcore.bank', cut);
      await expect(PatchcoreModel.load(await rewrite('narrow.safetensors', narrow, metadata))).rejects.toThrow(
        /narrow\.safetensors: .*bank of \d+ rows x 40 dims does not fit a backbone with 48/,
      );
      cut.dispose();
      const nan = bank.clone();
      nan.slice(0, 3, 4).fill_(Number.NaN);
      const poisoned = new Map(tensors);
      poisoned.set('patchcore.bank', nan);
      await expect(PatchcoreModel.load(await rewrite('nan.safetensors', poisoned, metadata))).rejects.toThrow(
        /nan\.safetensors: 'patchcore\.bank' has a non-finite value/,
      );
      nan.dispose();
      await expect(
        PatchcoreModel.load(await rewrite('json.safetensors', tensors, { ...metadata, meta: '{oops' })),
      ).rejects.toThrow(/json\.safetensors: PatchCore model metadata is missing or not valid JSON/);
      const meta = JSON.parse(metadata.meta);
      await expect(
        PatchcoreModel.load(
          await rewrite('thr.safetensors', tensors, { ...metadata, meta: JSON.stringify({ ...meta, sigma: 'x' }) }),
        ),
      ).rejects.toThrow(/thr\.safetensors: bad PatchCore model metadata: sigma is not a finite number/);
      await expect(
        PatchcoreModel.load(
          await rewrite('tiling.safetensors', tensors, {
            ...metadata,
            meta: JSON.stringify({ ...meta, tiling: 'grid' }),
          }),
        ),
      ).rejects.toThrow(/tiling\.safetensors: bad PatchCore model metadata: tiling 'grid'/);
      await expect(
        PatchcoreModel.load(
          await rewrite('res.safetensors', tensors, { ...metadata, meta: JSON.stringify({ ...meta, resolution: 40 }) }),
        ),
      ).rejects.toThrow(/resolution 40 is not a multiple of 16/);
      await expect(
        PatchcoreModel.load(await rewrite('nofmt.safetensors', tensors, { meta: metadata.meta })),
      ).rejects.toThrow(/format 'none' is not anoseg\.ts\/patchcore@1/);
    } finally {
      for (const t of tensors.values()) t.dispose();
    }
  });
});
