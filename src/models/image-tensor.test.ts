import { describe, expect, it } from 'vitest';
import { liveTensors } from '../engine/index.js';
import type { Image } from '../image/types.js';
import { imagesToTensor, tensorToImages } from './image-tensor.js';

function ramp(channels: number, height: number, width: number): Image {
  const n = channels * height * width;
  return { channels, height, width, data: Float32Array.from({ length: n }, (_, i) => (i + 1) / (n + 1)) };
}

describe('imagesToTensor / tensorToImages', () => {
  it('round trips exactly', () => {
    const before = liveTensors();
    const imgs = [ramp(3, 4, 5), { ...ramp(3, 4, 5), data: Float32Array.from({ length: 60 }, (_, i) => Math.sin(i)) }];
    const t = imagesToTensor(imgs);
    expect(t.shape).toEqual([2, 3, 4, 5]);
    const back = tensorToImages(t);
    t.dispose();
    expect(back).toHaveLength(2);
    back.forEach((b, i) => {
      expect([b.channels, b.height, b.width]).toEqual([3, 4, 5]);
      expect(b.data).toEqual(imgs[i].data);
    });
    expect(liveTensors()).toBe(before);
  });

  it('names the offending image on mismatched sizes and rejects an empty batch', () => {
    expect(() => imagesToTensor([ramp(3, 4, 4), ramp(3, 4, 4), ramp(3, 8, 4)])).toThrow(
      'imagesToTensor: image 2 is 3x8x4, expected 3x4x4',
    );
    expect(() => imagesToTensor([ramp(3, 4, 4), ramp(1, 4, 4)])).toThrow(/image 1 is 1x4x4/);
    expect(() => imagesToTensor([])).toThrow(/empty batch/);
  });
});
