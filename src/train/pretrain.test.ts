import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { manualSeed, tidy } from '../engine/index.js';
import { Adam } from '../nn/index.js';
import { FeatureBackbone } from '../models/backbone.js';
import {
  PretrainData,
  PretrainHeads,
  channelStats,
  pretrainBackbone,
  pretrainLoss,
  type PretrainLoss,
} from './pretrain.js';

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
    await expect(pretrainBackbone({ ...common, steps: 0 })).rejects.toThrow(/steps must be/);
  });
});
