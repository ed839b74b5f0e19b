import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Tensor, manualSeed, noGrad, tidy } from '../engine/index.js';
import { loadSafetensors, saveSafetensors } from '../nn/index.js';
import { createImage, type Image } from '../image/types.js';
import { Rng } from '../util/rng.js';
import { BACKBONE_FORMAT, FeatureBackbone } from './backbone.js';
import { toChannels } from './fitted-prediction.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'anoseg-backbone-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

function randomImage(channels: number, size: number, rng: Rng): Image {
  const img = createImage(channels, size, size);
  for (let i = 0; i < img.data.length; i++) img.data[i] = rng.next();
  return img;
}

function embedArray(b: FeatureBackbone, images: Image[]): { data: Float32Array; shape: number[] } {
  return noGrad(() =>
    tidy(() => {
      const e = b.embed(b.prepare(images));
      return { data: e.toFloat32Array(), shape: e.shape };
    }),
  );
}

describe('FeatureBackbone', () => {
  it('builds the PaDiM embedding from layer1..layer3 at stride 4', () => {
    const b = FeatureBackbone.random(0.25, 1);
    try {
      expect(b.featureChannels).toEqual([16, 32, 64]);
      expect(b.embeddingDims).toBe(112);
      const { shape } = embedArray(b, [randomImage(3, 32, new Rng(1))]);
      expect(shape).toEqual([1, 112, 8, 8]);
      expect(b.stateDict().size).toBeGreaterThan(0);
      expect([...b.stateDict().keys()].some((k) => k.startsWith('layer4.'))).toBe(false);
      expect([...b.stateDict().keys()].some((k) => k.startsWith('layer3.'))).toBe(true);
    } finally {
      b.dispose();
    }
  });

  it('is reproducible from its seed', () => {
    const rng = new Rng(3);
    const img = randomImage(3, 32, rng);
    const a = FeatureBackbone.random(0.125, 7);
    const b = FeatureBackbone.random(0.125, 7);
    const c = FeatureBackbone.random(0.125, 8);
    try {
      expect(embedArray(a, [img]).data).toEqual(embedArray(b, [img]).data);
      expect(embedArray(a, [img]).data).not.toEqual(embedArray(c, [img]).data);
    } finally {
      a.dispose();
      b.dispose();
      c.dispose();
    }
  });

  it('replicates grayscale to RGB, drops alpha and normalises per channel', () => {
    const rng = new Rng(5);
    const gray = randomImage(1, 16, rng);
    const rgb = toChannels(gray, 3);
    expect(rgb.channels).toBe(3);
    expect(rgb.data.subarray(256 * 2)).toEqual(gray.data);
    const rgba = randomImage(4, 16, rng);
    expect(toChannels(rgba, 3).data).toEqual(rgba.data.subarray(0, 3 * 256));
    manualSeed(0);
    const b = new FeatureBackbone({
      arch: 'resnet18',
      width: 0.125,
      mean: [0.1, 0.2, 0.3],
      std: [0.5, 0.25, 2],
      training: { kind: 'random', seed: 0 },
    });
    try {
      const x = b.prepare([gray]);
      const v = x.toFloat32Array();
      x.dispose();
      for (const [c, m, s] of [
        [0, 0.1, 0.5],
        [1, 0.2, 0.25],
        [2, 0.3, 2],
      ] as const) {
        expect(v[c * 256 + 17]).toBeCloseTo((gray.data[17] - m) / s, 5);
      }
      // A gray image and its RGB replica give the same features.
      expect(embedArray(b, [gray]).data).toEqual(embedArray(b, [rgb]).data);
    } finally {
      b.dispose();
    }
  });

  it('round-trips through its file with identical features', async () => {
    const file = path.join(dir, 'bb.safetensors');
    const img = randomImage(3, 32, new Rng(9));
    const a = FeatureBackbone.random(0.25, 11);
    // Make BatchNorm statistics non-trivial so they must be stored too.
    a.train();
    noGrad(() => tidy(() => a.features(a.prepare([img, randomImage(3, 32, new Rng(10))]))));
    a.eval();
    await a.save(file);
    const b = await FeatureBackbone.load(file);
    try {
      expect(b.meta).toEqual(a.meta);
      expect(embedArray(b, [img]).data).toEqual(embedArray(a, [img]).data);
      const { tensors, metadata } = await loadSafetensors(file);
      expect(metadata.format).toBe(BACKBONE_FORMAT);
      expect([...tensors.keys()].some((k) => k.startsWith('layer4.'))).toBe(false);
      for (const t of tensors.values()) t.dispose();
    } finally {
      a.dispose();
      b.dispose();
    }
  });

  it('rejects other formats, bad metadata and weights of another width with a clear error', async () => {
    const wrong = path.join(dir, 'wrong.safetensors');
    const t = Tensor.zeros([2]);
    await saveSafetensors(wrong, new Map([['x', t]]), { format: 'anoseg.ts/anoseg@1', meta: '{}' });
    await expect(FeatureBackbone.load(wrong)).rejects.toThrow(/is not anoseg\.ts\/backbone@1/);
    const badMeta = path.join(dir, 'badmeta.safetensors');
    await saveSafetensors(badMeta, new Map([['x', t]]), { format: BACKBONE_FORMAT, meta: 'not json' });
    await expect(FeatureBackbone.load(badMeta)).rejects.toThrow(/metadata is missing or not valid JSON/);
    t.dispose();

    const narrow = FeatureBackbone.random(0.125, 0);
    const file = path.join(dir, 'narrow.safetensors');
    await narrow.save(file);
    narrow.dispose();
    const { tensors, metadata } = await loadSafetensors(file);
    const meta = JSON.parse(metadata.meta);
    meta.width = 0.25;
    const lying = path.join(dir, 'lying.safetensors');
    await saveSafetensors(lying, tensors, { format: BACKBONE_FORMAT, meta: JSON.stringify(meta) });
    for (const v of tensors.values()) v.dispose();
    await expect(FeatureBackbone.load(lying)).rejects.toThrow(/lying\.safetensors: .*shape/);

    const truncated = path.join(dir, 'truncated.safetensors');
    const { readFile } = await import('node:fs/promises');
    const bytes = await readFile(file);
    await writeFile(truncated, bytes.subarray(0, bytes.length - 100));
    await expect(FeatureBackbone.load(truncated)).rejects.toThrow(/not a valid safetensors file/);
  });
});
