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
