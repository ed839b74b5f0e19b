/**
 * Planar float image: channel-major (CHW) layout, values nominally in [0, 1].
 * Masks and anomaly maps are Images with channels = 1.
 */
export interface Image {
  channels: number;
  height: number;
  width: number;
  data: Float32Array;
}

export function createImage(channels: number, height: number, width: number, fill = 0): Image {
  if (!(channels > 0 && height > 0 && width > 0) || ![channels, height, width].every(Number.isInteger)) {
    throw new Error(`createImage: invalid size ${channels}x${height}x${width}`);
  }
  const data = new Float32Array(channels * height * width);
  if (fill !== 0) data.fill(fill);
  return { channels, height, width, data };
}

export function cloneImage(img: Image): Image {
  return { channels: img.channels, height: img.height, width: img.width, data: img.data.slice() };
}

/** Same-sized CHW images stacked into one NCHW float32 array with its shape (for tensors and ONNX inputs). */
export function stackImages(
  images: readonly Image[],
  caller = 'stackImages',
): { data: Float32Array; shape: [number, number, number, number] } {
  if (images.length === 0) throw new Error(`${caller}: empty batch`);
  const { channels: C, height: H, width: W } = images[0];
  const per = C * H * W;
  const data = new Float32Array(images.length * per);
  images.forEach((img, i) => {
    if (img.channels !== C || img.height !== H || img.width !== W) {
      throw new Error(`${caller}: image ${i} is ${img.channels}x${img.height}x${img.width}, expected ${C}x${H}x${W}`);
    }
    data.set(img.data, i * per);
  });
  return { data, shape: [images.length, C, H, W] };
}
