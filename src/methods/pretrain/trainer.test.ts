import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { manualSeed, tidy } from '../../engine/index.js';
import { Adam } from '../../nn/index.js';
import { FeatureBackbone } from '../../models/backbone.js';
import { BasePool, prepareBase } from '../../synth/formula.js';
import { Rng } from '../../util/rng.js';
import { saveImagePng } from '../../image/io.js';
import { mkdir } from 'node:fs/promises';
import {
  PretrainData,
  PretrainHeads,
  channelStats,
  pretrainBackbone,
  pretrainLoss,
  type PretrainLoss,
} from './trainer.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'anoseg-pretrain-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('PretrainData', () => {
  it('gives direct batches with targets alpha * strength and indirect clean / defective twins', () => {
    const direct = new PretrainData('direct', 32, 1).next(6);
    expect(direct.pairs).toBe(0);
    expect(direct.images).toHaveLength(6);
    for (const [i, t] of direct.targets.entries()) {
      expect(t.channels).toBe(1);
      const max = Math.max(...t.data);
      expect(max).toBeLessThanOrEqual(direct.strengths[i] + 1e-6);
      if (direct.strengths[i] === 0) expect(max).toBe(0);
    }
    const ind = new PretrainData('indirect', 32, 2).next(8);
    expect(ind.pairs).toBe(4);
    for (let i = 0; i < 4; i++) {
      const clean = ind.images[i];
      const defective = ind.images[i + 4];
      const target = ind.targets[i + 4];
      expect(ind.strengths[i]).toBe(0);
      expect(Math.max(...ind.targets[i].data)).toBe(0);
      // Identical wherever the target is 0 (outside the defect).
      const n = 32 * 32;
      for (let c = 0; c < clean.channels; c++) {
        for (let p = 0; p < n; p++)
          if (target.data[p] === 0) expect(defective.data[c * n + p]).toBe(clean.data[c * n + p]);
      }
    }
    // Reproducible from the seed.
    expect(new PretrainData('indirect', 32, 2).next(8).images[5].data).toEqual(ind.images[5].data);
  });

  it('mixes real and procedural bases in the pool proportion, real ones rescaled to about realSide', () => {
    // A real image of constant value 0.25 (1 channel) is told apart from procedural textures (3 channels, varied).
    const real = { channels: 1, height: 256, width: 256, data: new Float32Array(256 * 256).fill(0.25) };
    const pool = new BasePool({ real: [real], proceduralShare: 0.25, realSide: 64 });
    const data = new PretrainData('indirect', 32, 7, pool);
    let fromReal = 0;
    let total = 0;
    for (let k = 0; k < 25; k++) {
      const b = data.next(16);
      for (const img of b.images.slice(0, b.pairs)) {
        total++;
        if (img.channels === 1 && img.data.every((v) => v === 0.25)) fromReal++;
      }
    }
    expect(total).toBe(200);
    expect(fromReal / total).toBeGreaterThan(0.65);
    expect(fromReal / total).toBeLessThan(0.85);
    // Rescaling: a 256 px image with a 64 px stripe period, asked for at ~64 px, gives 32 px crops that hold about
    // one period (the stripe width shrinks by ~4), not a flat piece of one stripe.
    const stripes = { channels: 1, height: 256, width: 256, data: new Float32Array(256 * 256) };
    for (let y = 0; y < 256; y++) for (let x = 0; x < 256; x++) stripes.data[y * 256 + x] = Math.floor(x / 32) % 2;
    const rng = new Rng(3);
    for (let k = 0; k < 10; k++) {
      const crop = prepareBase(stripes, 32, rng, 64);
      const row = crop.data.subarray(0, 32);
      expect(Math.max(...row) - Math.min(...row)).toBeGreaterThan(0.5);
    }
    expect(() => new BasePool({ proceduralShare: 0.5 })).toThrow(/only procedural/);
    expect(() => new BasePool({ real: [real], proceduralShare: 1.5 })).toThrow(/proceduralShare/);
  });

  it('rejects sizes the heads cannot pool', () => {
    expect(() => new PretrainData('direct', 40, 0)).toThrow(/multiple of 16/);
  });

  it('channelStats gives per-channel mean and std', () => {
    const img = { channels: 3, height: 1, width: 2, data: Float32Array.from([0, 1, 0.5, 0.5, 0.2, 0.2]) };
    const s = channelStats([img]);
    expect(s.mean).toEqual([0.5, 0.5, 0.2]);
    expect(s.std[0]).toBeCloseTo(0.5, 4);
    expect(s.std[1]).toBeCloseTo(0.001, 4); // floored
  });
});

describe('pretrainLoss', () => {
  for (const loss of ['direct', 'indirect'] as PretrainLoss[]) {
    it(`${loss}: a few optimisation steps reduce the loss on a fixed batch`, () => {
      manualSeed(3);
      const backbone = FeatureBackbone.random(0.125, 3);
      const heads = new PretrainHeads(backbone.featureChannels);
      const opt = new Adam([...backbone.parameters(), ...heads.parameters()], { lr: 3e-3 });
      // Batch 8: an indirect batch of 4 pairs; the seed gives visible defects in the fixed batch.
      const batch = new PretrainData(loss, 32, 5).next(8);
      if (loss === 'indirect') expect(batch.strengths.slice(4).some((s) => s >= 0.05)).toBe(true);
      else expect(batch.strengths.some((s) => s > 0)).toBe(true);
      backbone.train();
      heads.train();
      const losses: number[] = [];
      try {
        for (let i = 0; i < 8; i++) {
          losses.push(
            tidy(() => {
              const { loss: l } = pretrainLoss(backbone, heads, backbone.prepare(batch.images), batch, loss);
              opt.zeroGrad();
              l.backward();
              opt.step();
              return l.item();
            }),
          );
        }
      } finally {
        backbone.dispose();
        heads.dispose();
        opt.dispose();
      }
      expect(losses.every(Number.isFinite)).toBe(true);
      expect(losses.at(-1)!).toBeLessThan(0.7 * losses[0]);
    });
  }
});

describe('pretrainBackbone', () => {
  it('writes a loadable backbone, resumes from its checkpoint and refuses other settings', async () => {
    const out = path.join(dir, 'bb.safetensors');
    const runDir = path.join(dir, 'run');
    const common = {
      out,
      runDir,
      batch: 4,
      size: 32,
      width: 0.125,
      loss: 'indirect' as const,
      seed: 1,
      progress: false,
      evalEvery: 2,
    };
    const first = await pretrainBackbone({ ...common, steps: 2 });
    expect(first.steps).toBe(2);
    expect(first.history.map((h) => h.step)).toEqual([2]);
    expect(existsSync(path.join(runDir, 'checkpoint.safetensors'))).toBe(true);
    const b1 = await FeatureBackbone.load(out);
    expect(b1.meta.training).toMatchObject({
      kind: 'formula',
      loss: 'indirect',
      steps: 2,
      size: 32,
      batch: 4,
      bases: 'procedural',
    });
    expect(b1.meta.width).toBe(0.125);
    b1.dispose();

    const second = await pretrainBackbone({ ...common, steps: 4 });
    expect(second.steps).toBe(4);
    expect(second.history.map((h) => h.step)).toEqual([2, 4]);
    const logText = await readFile(path.join(runDir, 'pretrain.log'), 'utf8');
    expect(logText).toMatch(/resumed from .*checkpoint\.safetensors at step 2/);
    const b2 = await FeatureBackbone.load(out);
    expect(b2.meta.training).toMatchObject({ steps: 4 });
    b2.dispose();

    await expect(pretrainBackbone({ ...common, steps: 4, loss: 'direct' })).rejects.toThrow(/other settings/);

    // Adaptation: starts from the written backbone's weights and normalisation (a tiny lr keeps them).
    const adapted = path.join(dir, 'adapted.safetensors');
    const adapt = { ...common, out: adapted, runDir: path.join(dir, 'adapt'), init: out, lr: 1e-9, steps: 1 };
    await pretrainBackbone(adapt);
    const [from, to] = [await FeatureBackbone.load(out), await FeatureBackbone.load(adapted)];
    expect(to.meta.mean).toEqual(from.meta.mean);
    expect(to.meta.training).toMatchObject({ init: path.resolve(out) });
    const weight = (b: FeatureBackbone): Float32Array => b.stateDict().get('layer2.0.conv1.weight')!.toFloat32Array();
    const [w0, w1] = [weight(from), weight(to)];
    expect(w1.length).toBe(w0.length);
    expect(Math.max(...w1.map((v, i) => Math.abs(v - w0[i])))).toBeLessThan(1e-5);
    from.dispose();
    to.dispose();
    await expect(pretrainBackbone({ ...adapt, runDir: path.join(dir, 'adapt2'), width: 0.25 })).rejects.toThrow(
      /has width 0.125, not the requested 0.25/,
    );
    await expect(pretrainBackbone({ ...common, steps: 0 })).rejects.toThrow(/steps must be/);
  });

  it('combines folders of good images with procedural bases and names a missing folder', async () => {
    const good = path.join(dir, 'category', 'train', 'good');
    const plain = path.join(dir, 'plain');
    for (const [folder, value] of [
      [good, 0.2],
      [plain, 0.7],
    ] as const) {
      for (let i = 0; i < 2; i++) {
        const img = { channels: 3, height: 48, width: 64, data: new Float32Array(3 * 48 * 64).fill(value + 0.05 * i) };
        await mkdir(folder, { recursive: true });
        await saveImagePng(path.join(folder, `${i}.png`), img);
      }
    }
    const out = path.join(dir, 'semi.safetensors');
    const common = { out, batch: 4, size: 32, width: 0.125, seed: 2, progress: false, evalEvery: 1, steps: 1 };
    const r = await pretrainBackbone({ ...common, bases: [path.join(dir, 'category'), plain, 'procedural'] });
    expect(r.steps).toBe(1);
    const b = await FeatureBackbone.load(out);
    const label = String((b.meta.training as { bases: string }).bases);
    b.dispose();
    expect(label).toContain(`${path.resolve(good)} (2)`);
    expect(label).toContain(`${path.resolve(plain)} (2)`);
    expect(label).toMatch(/procedural.*33% procedural, real images at ~256 px/);
    await expect(
      pretrainBackbone({ ...common, runDir: path.join(dir, 'r2'), bases: [path.join(dir, 'nowhere')] }),
    ).rejects.toThrow(/base folder .*nowhere does not exist/);
    await expect(
      pretrainBackbone({ ...common, runDir: path.join(dir, 'r3'), bases: [plain], proceduralShare: 0.5 }),
    ).rejects.toThrow(/needs 'procedural'/);
  });
});
