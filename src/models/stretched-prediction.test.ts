import { describe, expect, it } from 'vitest';
import { F, Tensor, liveTensors } from '../engine/index.js';
import type { Image } from '../image/types.js';
import { fitImage } from '../image/io.js';
import { cropTiles, stitchTiles, tileRects } from '../image/tiles.js';
import { predictFitted, predictFittedAsync } from './fitted-prediction.js';
import { stretchedChunkPredictor, type TensorScorer } from './stretched-prediction.js';

function ramp(channels: number, height: number, width: number, offset: number): Image {
  const data = Float32Array.from({ length: channels * height * width }, (_, i) => ((i * 7 + offset) % 97) / 97);
  return { channels, height, width, data };
}

/** A "model" whose map is its input's first channel and whose score is the map's mean; records its batch sizes. */
function echoModel(resolution: number) {
  const batches: number[] = [];
  const scoreTensor: TensorScorer = (x) => {
    batches.push(x.shape[0]);
    const maps = x.slice(1, 0, 1).mul(1);
    return { maps, scores: maps.mean([1, 2, 3]).toFloat32Array() };
  };
  const scoreFitted = (inputs: Image[]) => ({
    maps: inputs.map((img) => ({ ...img, channels: 1, data: img.data.slice(0, resolution * resolution) })),
    scores: Float32Array.from(inputs, (img) => {
      let t = 0;
      for (let i = 0; i < resolution * resolution; i++) t += img.data[i];
      return t / (resolution * resolution);
    }),
  });
  return { batches, scoreTensor, scoreFitted };
}

describe('predictFitted with stretchedChunkPredictor', () => {
  const input = { channels: 3, resolution: 16, aspect: 'stretch' as const };

  it('the libtorch path resamples like fitImage / unfitMap, in chunks of maxBatch, releasing its tensors', async () => {
    const images = [0, 1, 2, 3, 4].map((k) => ramp(3, 24, 40, k));
    const m = echoModel(16);
    const before = liveTensors();
    const fast = await predictFitted(images, input, 2, m.scoreFitted, stretchedChunkPredictor(input, m.scoreTensor));
    expect(liveTensors()).toBe(before);
    expect(m.batches).toEqual([2, 2, 1]);
    const slow = await predictFitted(images, input, 2, m.scoreFitted);
    fast.forEach((p, i) => {
      expect([p.map.height, p.map.width]).toEqual([24, 40]);
      expect(p.score).toBeCloseTo(slow[i].score, 5);
      p.map.data.forEach((v, j) => expect(Math.abs(v - slow[i].map.data[j])).toBeLessThan(1e-5));
    });
    // the model input itself is fitImage's
    const fitted = fitImage(images[0], 16, 'stretch').image;
    const stretched = F.interpolate(Tensor.from(images[0].data, [1, 3, 24, 40]), [16, 16]);
    const diff = stretched.toFloat32Array().reduce((d, v, i) => Math.max(d, Math.abs(v - fitted.data[i])), 0);
    stretched.dispose();
    expect(diff).toBeLessThan(1e-6);
  });

  it('splits a chunk of large images so that a stacked input stays within the budget', async () => {
    const images = [0, 1, 2, 3].map((k) => ramp(3, 20, 20, k));
    const m = echoModel(16);
    // 3 x 20 x 20 = 1,200 values per image: a budget of 2,500 stacks two at a time, one below 1,200 one at a time
    const uniform = stretchedChunkPredictor(input, m.scoreTensor);
    await predictFitted(images, input, 8, m.scoreFitted, uniform, 2500);
    expect(m.batches).toEqual([2, 2]);
    m.batches.length = 0;
    await predictFitted(images, input, 8, m.scoreFitted, uniform, 1000);
    expect(m.batches).toEqual([1, 1, 1, 1]);
  });

  it('turns the event loop between chunks, so finalisers and other work run during a long call', async () => {
    const m = echoModel(16);
    let turns = 0;
    const tick = (): void => {
      turns++;
      if (turns < 10) setImmediate(tick);
    };
    setImmediate(tick);
    const seen: number[] = [];
    await predictFitted(
      [0, 1, 2].map((k) => ramp(3, 20, 20, k)),
      input,
      1,
      (x) => {
        seen.push(turns);
        return m.scoreFitted(x);
      },
    );
    expect(seen).toEqual([0, 1, 2]);
  });

  it('mixed sizes and other aspects take the image-by-image path', async () => {
    const m = echoModel(16);
    const uniform = stretchedChunkPredictor(input, m.scoreTensor);
    const mixed = await predictFitted([ramp(3, 20, 20, 0), ramp(3, 24, 20, 1)], input, 8, m.scoreFitted, uniform);
    expect(m.batches).toEqual([]);
    expect(mixed.map((p) => [p.map.height, p.map.width])).toEqual([
      [20, 20],
      [24, 20],
    ]);
    await predictFitted([ramp(3, 20, 20, 0)], { ...input, aspect: 'pad' }, 8, m.scoreFitted, uniform);
    expect(m.batches).toEqual([]);
  });
});

describe('predictFitted with tiling', () => {
  const whole = { channels: 3, resolution: 16, aspect: 'stretch' as const };
  const tiled = { ...whole, tiling: 'long-side' as const };

  it("predicts each tile as an image: maps put back in place, the image's score its highest tile's", async () => {
    const images = [ramp(3, 20, 50, 1), ramp(3, 16, 16, 2), ramp(3, 45, 15, 3)];
    const m = echoModel(16);
    const preds = await predictFitted(images, tiled, 4, m.scoreFitted, stretchedChunkPredictor(tiled, m.scoreTensor));
    for (const [i, img] of images.entries()) {
      const rects = tileRects(img.height, img.width, 'long-side');
      const perTile = await predictFitted(cropTiles(img, rects), whole, 4, m.scoreFitted);
      expect([preds[i].map.height, preds[i].map.width]).toEqual([img.height, img.width]);
      expect(preds[i].score).toBeCloseTo(Math.max(...perTile.map((p) => p.score)), 6);
      const expected = stitchTiles(
        perTile.map((p) => p.map),
        rects,
        img.height,
        img.width,
      );
      preds[i].map.data.forEach((v, j) => expect(Math.abs(v - expected.data[j])).toBeLessThan(1e-5));
    }
    // 20 x 50 (ratio 2.5 >= sqrt(6)) and 45 x 15 give 3 tiles each: not the whole image's fit
    expect(tileRects(20, 50, 'long-side')).toHaveLength(3);
    const untiled = await predictFitted([images[0]], whole, 4, m.scoreFitted);
    expect(untiled[0].score).not.toBeCloseTo(preds[0].score, 5);
    // a square image is its own tile: the same prediction as without tiling
    const square = await predictFitted([images[1]], whole, 4, m.scoreFitted);
    expect(preds[1].score).toBeCloseTo(square[0].score, 6);
  });

  it('the asynchronous form (ONNX Runtime) tiles the same way', async () => {
    const images = [ramp(3, 20, 50, 4), ramp(3, 45, 15, 5)];
    const m = echoModel(16);
    const sync = await predictFitted(images, tiled, 2, m.scoreFitted);
    const async = await predictFittedAsync(images, tiled, 2, (x) => Promise.resolve(m.scoreFitted(x)));
    async.forEach((p, i) => {
      expect(p.score).toBe(sync[i].score);
      expect(Array.from(p.map.data)).toEqual(Array.from(sync[i].map.data));
    });
  });
});
