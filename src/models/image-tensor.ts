/** Batches of CHW float images to and from [N, C, H, W] float32 tensors (training, scoring and prediction). */
import { Tensor } from '../engine/index.js';
import { stackImages, type Image } from '../image/types.js';

/** Stacks same-sized CHW images into one [N, C, H, W] float32 tensor. */
export function imagesToTensor(images: readonly Image[]): Tensor {
  const { data, shape } = stackImages(images, 'imagesToTensor');
  return Tensor.from(data, shape);
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
