/** Batches of CHW float images to and from [N, C, H, W] float32 tensors (training, scoring and prediction). */
import { Tensor } from '../engine/index.js';
import type { Image } from '../image/types.js';

/** Stacks same-sized CHW images into one [N, C, H, W] float32 tensor. */
export function imagesToTensor(images: readonly Image[]): Tensor {
  if (images.length === 0) throw new Error('imagesToTensor: empty batch');
  const { channels: C, height: H, width: W } = images[0];
  const per = C * H * W;
  const data = new Float32Array(images.length * per);
  images.forEach((img, i) => {
    if (img.channels !== C || img.height !== H || img.width !== W) {
      throw new Error(
        `imagesToTensor: image ${i} is ${img.channels}x${img.height}x${img.width}, expected ${C}x${H}x${W}`,
      );
    }
    data.set(img.data, i * per);
  });
  return Tensor.from(data, [images.length, C, H, W]);
}

/** Splits an [N, C, H, W] tensor back into CHW images. */
export function tensorToImages(t: Tensor): Image[] {
  const [n, c, h, w] = t.shape;
  const data = t.toFloat32Array();
  const per = c * h * w;
  return Array.from({ length: n }, (_, i) => ({
    channels: c,
    height: h,
    width: w,
    data: data.slice(i * per, (i + 1) * per),
  }));
}
