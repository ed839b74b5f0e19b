import { describe, expect, it } from 'vitest';
import { Tensor, manualSeed, noGrad, tidy } from '../../engine/index.js';
import type { Image } from '../../image/types.js';
import { FeatureBackbone } from '../../models/backbone.js';
import { PADIM_SIGMA, PadimModel, fitPadimStats, forEachEmbedding } from './model.js';
import { postprocessDistanceMap } from '../../models/gaussian.js';

function randomImages(n: number, side: number, seed: number): Image[] {
  manualSeed(seed);
  return Array.from({ length: n }, () => ({
    channels: 3,
    height: side,
    width: side,
    data: tidy(() => Tensor.rand([3, side, side]).toFloat32Array()),
  }));
}

describe('PaDiM scoring (folded backbone, Mahalanobis distances in libtorch)', () => {
  it('gives the maps of the reference path: unfolded backbone, per-position distances in JavaScript', () => {
    const side = 64;
    const backbone = FeatureBackbone.random(0.125, 4);
    // trained-like BatchNorm statistics, so folding them is exercised
    noGrad(() => {
      for (const [name, t] of backbone.net.stateDict()) {
        if (name.startsWith('layer4.')) continue; // freed: PaDiM uses layer1..3
        if (name.endsWith('running_mean')) t.copy_(tidy(() => Tensor.randn(t.shape).mul(0.1)));
        if (name.endsWith('running_var')) t.copy_(tidy(() => Tensor.rand(t.shape).add(0.5)));
      }
    });
    const stats = fitPadimStats(backbone, randomImages(12, side, 1), { dims: 20, seed: 3 });
    const model = new PadimModel(backbone, stats, {
      resolution: side,
      aspect: 'stretch',
      channels: 3,
      dims: stats.dims,
      seed: 3,
      eps: 0.01,
      sigma: PADIM_SIGMA,
      backbone: backbone.meta,
      imageThreshold: 1,
      pixelThreshold: 1,
      facts: {},
    });
    try {
      const tests = randomImages(3, side, 2);
      const { maps, scores } = model.scoreFitted(tests);
      forEachEmbedding(backbone, tests, 3, (embedding, i) => {
        const want = postprocessDistanceMap(stats.mahalanobisMap(embedding), side, side, PADIM_SIGMA);
        const scale = Math.max(...want.data);
        let worst = 0;
        for (let k = 0; k < want.data.length; k++) worst = Math.max(worst, Math.abs(maps[i].data[k] - want.data[k]));
        expect(worst / scale).toBeLessThan(1e-4);
        expect(scores[i]).toBeCloseTo(Math.max(...maps[i].data), 5);
      });
    } finally {
      model.dispose();
    }
  });
});
