import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Tensor, getNumThreads, liveTensors, manualSeed, noGrad, setNumThreads, tidy } from '../../engine/index.js';
import type { Image } from '../../image/types.js';
import { saveSafetensors } from '../../nn/index.js';
import { Rng } from '../../util/rng.js';
import { AnoSegGenerator, type AnoSegArchitecture } from './network.js';
import {
  ANOSEG_FORMAT,
  AnoSegPredictor,
  loadAnoSegModel,
  saveAnoSegModel,
  scoreBatch,
  type AnoSegModelMeta,
} from './model-file.js';
import { predictFitted, toChannels } from '../../models/fitted-prediction.js';
import { loadPredictor, modelFormat } from '../load.js';
import { tinyArchitecture } from '../../../test/fixtures/tiny-architecture.js';

const ARCH: AnoSegArchitecture = tinyArchitecture();

const META: AnoSegModelMeta = {
  arch: ARCH,
  aspect: 'stretch',
  score: { sigma: 2, reconstructionWeight: 0 },
  imageThreshold: 0.42,
  pixelThreshold: 0.37,
  facts: { preset: 'test', steps: 0 },
};

function randomImage(rng: Rng, channels: number, height: number, width: number): Image {
  return {
    channels,
    height,
    width,
    data: Float32Array.from({ length: channels * height * width }, () => rng.next()),
  };
}

let dir: string;
let modelFile: string;
/** The generator saved in modelFile (kept to compare against the loaded copy). */
let generator: AnoSegGenerator;
const threadsBefore = getNumThreads();

beforeAll(async () => {
  setNumThreads(1);
  dir = await mkdtemp(path.join(os.tmpdir(), 'anoseg-model-'));
  modelFile = path.join(dir, 'model.safetensors');
  manualSeed(4);
  generator = new AnoSegGenerator(ARCH);
  // move the BatchNorm running statistics away from their initial values, so the test sees whether they are saved
  noGrad(() => tidy(() => [0, 1, 2].forEach(() => generator.forward(Tensor.rand([2, 3, 32, 32]).mul(3)))));
  generator.eval();
  await saveAnoSegModel(modelFile, generator, META);
});

afterAll(async () => {
  generator.dispose();
  setNumThreads(threadsBefore);
  await rm(dir, { recursive: true, force: true });
});

describe('saveAnoSegModel / loadAnoSegModel', () => {
  it('round trips weights, BatchNorm statistics and metadata', async () => {
    expect(await modelFormat(modelFile)).toBe(ANOSEG_FORMAT);
    const { generator: loaded, meta } = await loadAnoSegModel(modelFile);
    expect(meta).toEqual(META);
    const own = generator.stateDict();
    const other = loaded.stateDict();
    expect([...other.keys()].sort()).toEqual([...own.keys()].sort());
    for (const [k, v] of own)
      expect(Array.from(other.get(k)!.toArray() as Float32Array), k).toEqual(Array.from(v.toArray() as Float32Array));
    noGrad(() =>
      tidy(() => {
        const x = Tensor.rand([2, 3, 32, 32]);
        const a = generator.forward(x);
        const b = loaded.forward(x);
        expect(Array.from(b.map.toFloat32Array())).toEqual(Array.from(a.map.toFloat32Array()));
        expect(Array.from(b.reconstruction!.toFloat32Array())).toEqual(Array.from(a.reconstruction!.toFloat32Array()));
      }),
    );
    loaded.dispose();
  });

  it('a loaded model is in eval mode: a sample is scored the same alone and in a batch', async () => {
    const p = await AnoSegPredictor.load(modelFile);
    const rng = new Rng(1);
    const imgs = Array.from({ length: 10 }, () => randomImage(rng, 3, 32, 32));
    const together = await p.predict(imgs); // two chunks of the default batch of 8
    for (const i of [0, 9]) {
      const [alone] = await p.predict([imgs[i]]);
      expect(alone.score).toBeCloseTo(together[i].score, 5);
      for (let j = 0; j < alone.map.data.length; j += 37)
        expect(alone.map.data[j]).toBeCloseTo(together[i].map.data[j], 5);
    }
    p.dispose();
  });

  it('refuses metadata it cannot use, naming the file', async () => {
    const state = generator.stateDict();
    const bad = async (name: string, meta: Record<string, string>): Promise<string> => {
      const file = path.join(dir, name);
      await saveSafetensors(file, new Map([...state].map(([k, v]) => [`generator.${k}`, v])), meta);
      return file;
    };
    const noMeta = await bad('no-meta.safetensors', { format: ANOSEG_FORMAT });
    await expect(loadAnoSegModel(noMeta)).rejects.toThrow(`${noMeta}: model metadata is missing`);
    const notJson = await bad('not-json.safetensors', { format: ANOSEG_FORMAT, meta: '{arch:' });
    await expect(loadAnoSegModel(notJson)).rejects.toThrow(`${notJson}: model metadata is not valid JSON`);
    const partial = await bad('partial.safetensors', { format: ANOSEG_FORMAT, meta: JSON.stringify({ arch: ARCH }) });
    await expect(loadAnoSegModel(partial)).rejects.toThrow(/lacks architecture, score settings or thresholds/);
    const badArch = await bad('bad-arch.safetensors', {
      format: ANOSEG_FORMAT,
      meta: JSON.stringify({ ...META, arch: { ...ARCH, resolution: 48 } }),
    });
    await expect(loadAnoSegModel(badArch)).rejects.toThrow(/resolution must be a power of two/);
    const badScore = await bad('bad-score.safetensors', {
      format: ANOSEG_FORMAT,
      meta: JSON.stringify({ ...META, score: { ...META.score, imageScore: 'median' } }),
    });
    await expect(loadAnoSegModel(badScore)).rejects.toThrow(`${badScore}: unknown image score 'median'`);
    const badTiling = await bad('bad-tiling.safetensors', {
      format: ANOSEG_FORMAT,
      meta: JSON.stringify({ ...META, tiling: 'grid' }),
    });
    await expect(loadAnoSegModel(badTiling)).rejects.toThrow(`${badTiling}: unknown tiling 'grid' (none, long-side)`);
    const badWeight = await bad('bad-weight.safetensors', {
      format: ANOSEG_FORMAT,
      meta: JSON.stringify({ ...META, score: { ...META.score, reconstructionWeight: -1 } }),
    });
    await expect(loadAnoSegModel(badWeight)).rejects.toThrow(
      /score settings need a finite sigma, reconstruction weight and blur/,
    );
    // weights of another architecture than the metadata says
    const wider = await bad('wider.safetensors', {
      format: ANOSEG_FORMAT,
      meta: JSON.stringify({ ...META, arch: { ...ARCH, width: 0.25 } }),
    });
    const before = liveTensors();
    await expect(loadAnoSegModel(wider)).rejects.toThrow(new RegExp(`${wider}: state does not fit the model`));
    expect(liveTensors()).toBe(before);
    const otherFormat = await bad('other.safetensors', { format: 'someone/else@1', meta: JSON.stringify(META) });
    await expect(loadAnoSegModel(otherFormat)).rejects.toThrow(/format 'someone\/else@1' is not anoseg\.ts\/anoseg@1/);
  });
});

describe('loadPredictor on files that are not models', () => {
  it.each<[string, () => Buffer | string, RegExp]>([
    [
      'random bytes',
      () => Buffer.from(Array.from({ length: 4096 }, (_, i) => (i * 7919 + 13) % 256)),
      /not a model file/,
    ],
    ['a JSON file', () => JSON.stringify({ model: 'anoseg', weights: [1, 2, 3] }), /not a model file/],
    ['an empty file', () => '', /not a model file \(too short\)/],
    [
      'safetensors without a format tag',
      () => {
        const header = Buffer.from(JSON.stringify({ __metadata__: { hello: 'world' } }));
        const len = Buffer.alloc(8);
        len.writeBigUInt64LE(BigInt(header.length));
        return Buffer.concat([len, header]);
      },
      /without a model format tag/,
    ],
    [
      'safetensors whose header is not JSON',
      () => {
        const len = Buffer.alloc(8);
        len.writeBigUInt64LE(5n);
        return Buffer.concat([len, Buffer.from('{{{{{')]);
      },
      /header is not JSON/,
    ],
  ])('%s gives a clear error naming the file', async (name, content, message) => {
    const file = path.join(dir, `${name.replace(/\W+/g, '-')}.safetensors`);
    await writeFile(file, content());
    const err = await loadPredictor(file).catch((e: Error) => e);
    expect(err).toBeInstanceOf(Error);
    expect((err as Error).message).toMatch(message);
    expect((err as Error).message).toContain(file);
  });

  it('a missing file and an unknown format are named', async () => {
    const missing = path.join(dir, 'missing.safetensors');
    await expect(loadPredictor(missing)).rejects.toThrow(`cannot open model ${missing}: ENOENT`);
    const ckpt = path.join(dir, 'checkpoint.safetensors');
    await saveSafetensors(ckpt, new Map(), { format: 'anoseg.ts/checkpoint@1' });
    await expect(loadPredictor(ckpt)).rejects.toThrow(
      /unknown model format 'anoseg\.ts\/checkpoint@1' \(known: .*anoseg@1/,
    );
  });

  it('a truncated model file is refused with the file name', async () => {
    const bytes = await readFile(modelFile);
    const file = path.join(dir, 'truncated.safetensors');
    await writeFile(file, bytes.subarray(0, Math.floor(bytes.length * 0.7)));
    await expect(loadPredictor(file)).rejects.toThrow(file);
  });
});

describe('AnoSegPredictor', () => {
  let predictor: AnoSegPredictor;
  beforeAll(async () => {
    predictor = (await loadPredictor(modelFile)) as AnoSegPredictor;
  });
  afterAll(() => predictor.dispose());

  it('describes itself from the metadata', () => {
    expect(predictor.info).toMatchObject({
      method: 'anoseg',
      resolution: 32,
      channels: 3,
      imageThreshold: 0.42,
      pixelThreshold: 0.37,
      meta: { preset: 'test', steps: 0 },
    });
  });

  it('maps at model size are 1 - the network map (higher = more anomalous), score = smoothed max', async () => {
    const img = randomImage(new Rng(2), 3, 32, 32);
    const [pred] = await predictor.predict([img]);
    const net = noGrad(() => tidy(() => generator.forward(Tensor.from(img.data, [1, 3, 32, 32])).map.toFloat32Array()));
    for (let i = 0; i < net.length; i++) expect(pred.map.data[i]).toBeCloseTo(1 - net[i], 5);
    const fitted = predictor.scoreFitted([img]);
    expect(pred.score).toBeCloseTo(fitted.scores[0], 6);
    expect(pred.score).toBeLessThanOrEqual(Math.max(...pred.map.data) + 1e-6);
  });

  it('returns maps at the input size for any size and 1 or 3 channels', async () => {
    const rng = new Rng(3);
    const inputs = [randomImage(rng, 3, 20, 50), randomImage(rng, 1, 64, 48), randomImage(rng, 3, 32, 32)];
    const preds = await predictor.predict(inputs);
    preds.forEach((p, i) => {
      expect([p.map.channels, p.map.height, p.map.width]).toEqual([1, inputs[i].height, inputs[i].width]);
      expect(Number.isFinite(p.score)).toBe(true);
    });
  });

  it("equally sized images under 'stretch' are resampled in libtorch, as fitImage / unfitMap do image by image", async () => {
    const rng = new Rng(5);
    // 1- and 3-channel images of one size (batched in libtorch), upsampled and downsampled sides
    for (const [h, w] of [
      [48, 40],
      [20, 50],
      [32, 32],
    ]) {
      const inputs = [randomImage(rng, 3, h, w), randomImage(rng, 1, h, w), randomImage(rng, 3, h, w)];
      const before = liveTensors();
      const batched = await predictor.predict(inputs);
      expect(liveTensors()).toBe(before);
      const input = { channels: 3, resolution: 32, aspect: 'stretch' as const };
      const oneByOne = await predictFitted(inputs, input, 8, (x) => predictor.scoreFitted(x)); // no tensor scorer: JS path
      batched.forEach((p, i) => {
        expect([p.map.height, p.map.width]).toEqual([h, w]);
        expect(p.score).toBeCloseTo(oneByOne[i].score, 5);
        let diff = 0;
        for (let j = 0; j < p.map.data.length; j++)
          diff = Math.max(diff, Math.abs(p.map.data[j] - oneByOne[i].map.data[j]));
        expect(diff).toBeLessThan(1e-5);
      });
    }
  });

  it('scoreBatch returns one map per input at model resolution and releases its tensors', () => {
    const rng = new Rng(4);
    const before = liveTensors();
    const r = scoreBatch(generator, [randomImage(rng, 3, 32, 32), randomImage(rng, 3, 32, 32)], META.score);
    expect(liveTensors()).toBe(before);
    expect(r.maps).toHaveLength(2);
    expect(r.scores).toHaveLength(2);
    for (const m of r.maps) expect([m.channels, m.height, m.width]).toEqual([1, 32, 32]);
  });
});

describe('toChannels', () => {
  const rgb: Image = { channels: 3, height: 1, width: 2, data: Float32Array.from([1, 0, 0, 1, 0, 0.5]) };

  it('returns the image itself when the count already matches', () => {
    expect(toChannels(rgb, 3)).toBe(rgb);
  });

  it('RGB -> gray uses Rec. 601 luma', () => {
    const g = toChannels(rgb, 1);
    expect(g.channels).toBe(1);
    expect(g.data[0]).toBeCloseTo(0.299, 6);
    expect(g.data[1]).toBeCloseTo(0.587 + 0.114 * 0.5, 6);
  });

  it('gray -> RGB replicates the channel', () => {
    const g: Image = { channels: 1, height: 1, width: 2, data: Float32Array.from([0.25, 0.75]) };
    expect(Array.from(toChannels(g, 3).data)).toEqual([0.25, 0.75, 0.25, 0.75, 0.25, 0.75]);
  });

  it('RGBA -> gray ignores alpha', () => {
    const rgba: Image = { channels: 4, height: 1, width: 2, data: Float32Array.from([1, 0, 0, 1, 0, 0.5, 0.3, 0.9]) };
    expect(Array.from(toChannels(rgba, 1).data)).toEqual(Array.from(toChannels(rgb, 1).data));
  });
});
