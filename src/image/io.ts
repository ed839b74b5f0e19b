/**
 * Image input/output and geometric resizing.
 *
 * Decoding goes through sharp (PNG, JPEG, TIFF) except BMP, which sharp cannot read, so a small decoder for
 * uncompressed 8/24/32-bit BMP lives here. All decoded images become float CHW `Image`s:
 * - 8-bit samples are divided by 255, 16-bit samples by 65535, float TIFF samples are kept as stored
 *   (so a saved anomaly map reads back unchanged, even outside [0, 1]).
 * - Alpha is dropped by compositing onto black (premultiplying), so transparent pixels read as 0.
 * - Pixels are returned as stored: EXIF orientation is NOT applied, so images stay aligned with their
 *   (orientation-less) PNG masks.
 * - Grayscale stays 1 channel unless `channels: 3` is asked for (replicated); colour becomes 1 channel
 *   only when `channels: 1` is asked for, using Rec. 601 luma (as PIL `convert('L')` and torchvision do).
 *
 * Writing: 8-bit PNG (1 or 3 channels), 16-bit grayscale PNG for [0, 1] maps, and uncompressed
 * 32-bit float TIFF for maps with exact values. sharp 0.35 cannot write float TIFF (raw float input is
 * converted to 8-bit), so a minimal TIFF encoder is included; sharp reads those files back exactly.
 */
import { promises as fs } from 'node:fs';
import sharp, { type Metadata, type OutputInfo } from 'sharp';
import { writeFileAtomic } from '../util/atomic.js';
import { createImage, type Image } from './types.js';

/** Decoding refuses images with more pixels than this (checked from the header, before decoding). */
export const MAX_INPUT_PIXELS = 50_000_000;

export type ChannelRequest = 1 | 3 | 'keep';

export interface LoadOptions {
  /** 1 = grayscale (luma), 3 = RGB (gray replicated), 'keep' (default) = as stored (1 for gray, 3 for colour). */
  channels?: ChannelRequest;
  /** Decode straight to a smaller size (never a larger one): see DecodeShrink. */
  shrink?: DecodeShrink;
}

/**
 * Decode to a smaller size without holding the full-size image as floats. `size` gets the stored size (from the
 * header, before decoding) and returns the size wanted; a size larger than the stored one in either dimension
 * means "as stored" (callers resize up themselves). `onSize` hears the stored size.
 * - 'area': antialiased downscaling. 8-bit images: sharp resizes while decoding (libvips: shrink on load for JPEG,
 *   box shrink, then a triangle filter; values within a level of the stored range), so the full image is never held.
 *   16-bit and float images: the stored samples (2 or 4 bytes each) are decoded whole and area-averaged here, exactly
 *   (libvips reduces 16-bit samples with 12-bit fixed-point weights: up to 0.2% off, measured), so 16-bit keeps its
 *   precision. Grayscale stays gray in both. BMP (decoded by this module) is decoded whole and area-averaged.
 * - 'nearest': the stored samples (1-2 bytes each) are decoded whole and sampled as resizeImage(..., 'nearest')
 *   does, without the float copy: the same result as decoding whole and resizing (for masks).
 */
export interface DecodeShrink {
  size: (height: number, width: number) => { height: number; width: number };
  kernel: 'area' | 'nearest';
  onSize?: (height: number, width: number) => void;
}

export interface DecodeOptions extends LoadOptions {
  /** Name used in error messages (e.g. the uploaded file name); defaults to '<buffer>'. */
  name?: string;
}

/** Thrown for any image that cannot be read: names the file (or buffer name) and the reason. */
export class ImageReadError extends Error {
  readonly path: string;
  readonly reason: string;
  constructor(path: string, reason: string) {
    super(`cannot read image ${path}: ${reason}`);
    this.name = 'ImageReadError';
    this.path = path;
    this.reason = reason;
  }
}

export type ImageFormat = 'png' | 'jpeg' | 'bmp' | 'tiff';

/** Identify the container from its first bytes; null for anything other than PNG, JPEG, BMP or TIFF. */
export function sniffFormat(buf: Uint8Array): ImageFormat | null {
  const b = buf;
  if (b.length >= 8 && b[0] === 0x89 && b[1] === 0x50 && b[2] === 0x4e && b[3] === 0x47) return 'png';
  if (b.length >= 3 && b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff) return 'jpeg';
  if (b.length >= 2 && b[0] === 0x42 && b[1] === 0x4d) return 'bmp';
  if (b.length >= 4 && b[0] === 0x49 && b[1] === 0x49 && b[2] === 0x2a && b[3] === 0x00) return 'tiff';
  if (b.length >= 4 && b[0] === 0x4d && b[1] === 0x4d && b[2] === 0x00 && b[3] === 0x2a) return 'tiff';
  return null;
}

/** The first `bytes` bytes of a file (fewer if it is shorter); ImageReadError naming the path if it cannot be read. */
async function readFileHead(path: string, bytes: number): Promise<Buffer> {
  try {
    const fh = await fs.open(path, 'r');
    try {
      const { buffer, bytesRead } = await fh.read(Buffer.alloc(bytes), 0, bytes, 0);
      return buffer.subarray(0, bytesRead);
    } finally {
      await fh.close();
    }
  } catch (err) {
    throw new ImageReadError(path, `cannot read file (${(err as NodeJS.ErrnoException).code ?? String(err)})`);
  }
}

/** Read an image file. Throws ImageReadError naming the path for a missing, corrupt, unsupported or too large file. */
export async function loadImage(path: string, opts: LoadOptions = {}): Promise<Image> {
  const fail = (err: unknown): never => {
    throw new ImageReadError(path, `cannot read file (${(err as NodeJS.ErrnoException).code ?? String(err)})`);
  };
  if (opts.shrink !== undefined) {
    // Only the first bytes are read here: sharp reads the file itself, so a large file is never held whole.
    const head = await readFileHead(path, 16);
    const format = sniffFormat(head);
    if (format !== null && format !== 'bmp') {
      return convertChannels(await decodeWithSharp(path, path, format, opts.shrink), checkChannels(opts.channels));
    }
  }
  let buf: Buffer;
  try {
    buf = await fs.readFile(path);
  } catch (err) {
    return fail(err);
  }
  return decodeImage(buf, { ...opts, name: path });
}

function checkChannels(channels: ChannelRequest | undefined): ChannelRequest {
  const c = channels ?? 'keep';
  if (c !== 1 && c !== 3 && c !== 'keep') {
    throw new Error(`decodeImage: option channels must be 1, 3 or 'keep', got ${String(c)}`);
  }
  return c;
}

/**
 * The stored size of an image file from its header, without decoding the pixels. Throws ImageReadError naming the
 * path for a missing, unsupported or corrupt file.
 */
export async function readImageSize(path: string): Promise<{ height: number; width: number }> {
  const head = await readFileHead(path, 26);
  const format = sniffFormat(head);
  if (format === null) {
    throw new ImageReadError(path, 'unsupported or corrupt file: content is not PNG, JPEG, BMP or TIFF');
  }
  if (format === 'bmp') {
    if (head.length < 26) throw new ImageReadError(path, 'corrupt bmp: file shorter than its header');
    const view = new DataView(head.buffer, head.byteOffset, head.byteLength);
    const width = view.getInt32(18, true);
    const height = Math.abs(view.getInt32(22, true));
    if (width <= 0 || height <= 0) throw new ImageReadError(path, `corrupt bmp: size ${width}x${height}`);
    return { height, width };
  }
  let meta: Metadata;
  try {
    meta = await sharp(path, { limitInputPixels: false }).metadata();
  } catch (err) {
    throw new ImageReadError(path, `corrupt or unreadable ${format} (${errorText(err)})`);
  }
  if (!meta.width || !meta.height) throw new ImageReadError(path, `corrupt ${format}: no image size in header`);
  return { height: meta.height, width: meta.width };
}

/** Decode an image held in memory (PNG, JPEG, BMP or TIFF, found by magic bytes), with the same rules as loadImage. */
export async function decodeImage(buffer: Uint8Array, opts: DecodeOptions = {}): Promise<Image> {
  const name = opts.name ?? '<buffer>';
  const channels = checkChannels(opts.channels);
  if (buffer.length === 0) throw new ImageReadError(name, 'empty file');
  const format = sniffFormat(buffer);
  if (format === null) {
    throw new ImageReadError(name, 'unsupported or corrupt file: content is not PNG, JPEG, BMP or TIFF');
  }
  const img =
    format === 'bmp'
      ? shrinkBmp(decodeBmp(buffer, name), opts.shrink)
      : await decodeWithSharp(buffer, name, format, opts.shrink);
  return convertChannels(img, channels);
}

/** The size a DecodeShrink asks for, or null to decode as stored (same size, or larger in either dimension). */
function shrinkTarget(
  shrink: DecodeShrink | undefined,
  h: number,
  w: number,
): { height: number; width: number } | null {
  if (shrink === undefined) return null;
  shrink.onSize?.(h, w);
  const t = shrink.size(h, w);
  if (!(Number.isInteger(t.height) && Number.isInteger(t.width) && t.height > 0 && t.width > 0)) {
    throw new Error(`decodeImage: shrink size must be positive integers, got ${t.height}x${t.width}`);
  }
  if (t.height > h || t.width > w || (t.height === h && t.width === w)) return null;
  return t;
}

function shrinkBmp(img: Image, shrink: DecodeShrink | undefined): Image {
  const t = shrinkTarget(shrink, img.height, img.width);
  if (t === null || shrink === undefined) return img;
  if (shrink.kernel === 'nearest') return resizeImage(img, t.height, t.width, 'nearest');
  const n = img.height * img.width;
  const hwc = new Float32Array(img.channels * n);
  for (let ch = 0; ch < img.channels; ch++)
    for (let i = 0; i < n; i++) hwc[i * img.channels + ch] = img.data[ch * n + i];
  return areaFromSamples(hwc, img.channels, img.height, img.width, t.height, t.width, 1);
}

async function decodeWithSharp(
  input: Uint8Array | string,
  name: string,
  format: ImageFormat,
  shrink?: DecodeShrink,
): Promise<Image> {
  // failOn 'warning' rejects truncated/corrupt data instead of returning a partially grey image.
  // Metadata reads only the header, so it runs unlimited to report the real size; decoding keeps sharp's limit too.
  const open = (limit: number | false) => sharp(input, { limitInputPixels: limit, failOn: 'warning' });
  let meta: Metadata;
  try {
    meta = await open(false).metadata();
  } catch (err) {
    throw new ImageReadError(name, `corrupt or unreadable ${format} (${errorText(err)})`);
  }
  const { width, height } = meta;
  if (!width || !height) throw new ImageReadError(name, `corrupt ${format}: no image size in header`);
  if (width * height > MAX_INPUT_PIXELS) {
    throw new ImageReadError(name, `too large: ${width}x${height} exceeds ${MAX_INPUT_PIXELS} pixels`);
  }
  const gray = meta.space === 'b-w' || meta.space === 'grey16' || meta.channels === 1 || meta.channels === 2;
  let pipeline = open(MAX_INPUT_PIXELS);
  if (meta.hasAlpha) pipeline = pipeline.flatten({ background: { r: 0, g: 0, b: 0 } });
  let scale: number;
  let rawDepth: 'uchar' | 'ushort' | 'float';
  switch (meta.depth) {
    case 'uchar':
    case 'char':
      pipeline = pipeline.toColourspace(gray ? 'b-w' : 'srgb');
      rawDepth = 'uchar';
      scale = 1 / 255;
      break;
    case 'ushort':
    case 'short':
      pipeline = pipeline.toColourspace(gray ? 'grey16' : 'rgb16');
      rawDepth = 'ushort';
      scale = 1 / 65535;
      break;
    case 'float':
    case 'double':
      pipeline = pipeline.toColourspace(gray ? 'b-w' : 'srgb');
      rawDepth = 'float';
      scale = 1;
      break;
    default:
      throw new ImageReadError(name, `unsupported sample type '${meta.depth}' in ${format}`);
  }
  const target = shrinkTarget(shrink, height, width);
  if (target !== null && shrink?.kernel === 'area' && rawDepth === 'uchar') {
    pipeline = pipeline.resize(target.width, target.height, { fit: 'fill', kernel: 'linear' });
  }
  let data: Buffer;
  let info: OutputInfo;
  try {
    ({ data, info } = await pipeline.raw({ depth: rawDepth }).toBuffer({ resolveWithObject: true }));
  } catch (err) {
    throw new ImageReadError(name, `corrupt ${format} (${errorText(err)})`);
  }
  const c = info.channels;
  if (c !== (gray ? 1 : 3)) throw new ImageReadError(name, `unexpected decoded channel count ${c} in ${format}`);
  const n = info.width * info.height;
  const samples =
    rawDepth === 'uchar'
      ? new Uint8Array(data.buffer, data.byteOffset, n * c)
      : rawDepth === 'ushort'
        ? data.byteOffset % 2 === 0
          ? new Uint16Array(data.buffer, data.byteOffset, n * c)
          : new Uint16Array(copyBytes(data), 0, n * c)
        : data.byteOffset % 4 === 0
          ? new Float32Array(data.buffer, data.byteOffset, n * c)
          : new Float32Array(copyBytes(data), 0, n * c);
  if (target !== null && (info.height !== target.height || info.width !== target.width)) {
    return shrink?.kernel === 'nearest'
      ? nearestFromSamples(samples, c, info.height, info.width, target.height, target.width, scale)
      : areaFromSamples(samples, c, info.height, info.width, target.height, target.width, scale);
  }
  const img = createImage(c, info.height, info.width);
  for (let ch = 0; ch < c; ch++) {
    const off = ch * n;
    for (let i = 0; i < n; i++) img.data[off + i] = samples[i * c + ch] * scale;
  }
  return img;
}

/** Interleaved samples (HWC) to a planar float image of height x width, sampled as resizeImage's 'nearest'. */
function nearestFromSamples(
  samples: ArrayLike<number>,
  c: number,
  h: number,
  w: number,
  height: number,
  width: number,
  scale: number,
): Image {
  const out = createImage(c, height, width);
  // The same index arithmetic as resizeImage's 'nearest', so both give the same pixels.
  const sy = h / height;
  const sx = w / width;
  const xs = new Int32Array(width);
  for (let x = 0; x < width; x++) xs[x] = Math.min(Math.floor(x * sx), w - 1) * c;
  for (let y = 0; y < height; y++) {
    const row = Math.min(Math.floor(y * sy), h - 1) * w * c;
    for (let ch = 0; ch < c; ch++) {
      const o = ch * height * width + y * width;
      for (let x = 0; x < width; x++) out.data[o + x] = samples[row + xs[x] + ch] * scale;
    }
  }
  return out;
}

/**
 * Area-coverage weights along one axis: output o covers source [o * in/out, (o + 1) * in/out); its sources are
 * first[o] .. first[o] + count[o] - 1 with weights (summing to 1) packed consecutively in `weight`.
 */
function areaAxis(
  src: number,
  dst: number,
): { first: Int32Array; count: Int32Array; start: Int32Array; weight: Float64Array } {
  const scale = src / dst;
  const first = new Int32Array(dst);
  const count = new Int32Array(dst);
  const start = new Int32Array(dst);
  const weights: number[] = [];
  for (let o = 0; o < dst; o++) {
    const lo = o * scale;
    const hi = Math.min(src, (o + 1) * scale);
    const s = Math.min(src - 1, Math.floor(lo));
    const e = Math.max(s + 1, Math.min(src, Math.ceil(hi)));
    first[o] = s;
    count[o] = e - s;
    start[o] = weights.length;
    for (let i = s; i < e; i++) weights.push((Math.min(hi, i + 1) - Math.max(lo, i)) / (hi - lo));
  }
  return { first, count, start, weight: Float64Array.from(weights) };
}

/**
 * Interleaved samples (HWC) to a planar float image of height x width (each at most the source's), each output
 * pixel the exact area average of the source pixels it covers, times `scale`. One output row is accumulated at a
 * time, so beyond the samples only the output is held.
 */
function areaFromSamples(
  samples: ArrayLike<number>,
  c: number,
  h: number,
  w: number,
  height: number,
  width: number,
  scale: number,
): Image {
  const ax = areaAxis(w, width);
  const ay = areaAxis(h, height);
  const out = createImage(c, height, width);
  const plane = height * width;
  const row = new Float64Array(c * width);
  for (let y = 0; y < height; y++) {
    row.fill(0);
    for (let j = 0; j < ay.count[y]; j++) {
      const wy = ay.weight[ay.start[y] + j];
      const base = (ay.first[y] + j) * w * c;
      for (let x = 0; x < width; x++) {
        const k = ax.start[x];
        const s = base + ax.first[x] * c;
        for (let i = 0; i < ax.count[x]; i++) {
          const wxy = ax.weight[k + i] * wy;
          const p = s + i * c;
          for (let ch = 0; ch < c; ch++) row[ch * width + x] += samples[p + ch] * wxy;
        }
      }
    }
    for (let ch = 0; ch < c; ch++) {
      const o = ch * plane + y * width;
      for (let x = 0; x < width; x++) out.data[o + x] = row[ch * width + x] * scale;
    }
  }
  return out;
}

/** 16/32-bit typed-array views need an aligned offset; sharp's buffer may sit at any offset: then copy. */
function copyBytes(data: Buffer): ArrayBuffer {
  const out = new Uint8Array(data.length);
  out.set(data);
  return out.buffer;
}

function errorText(err: unknown): string {
  const msg = err instanceof Error ? err.message : String(err);
  return msg.split('\n')[0];
}

function convertChannels(img: Image, req: ChannelRequest): Image {
  if (req === 'keep' || req === img.channels) return img;
  const n = img.height * img.width;
  if (req === 3 && img.channels === 1) {
    const out = createImage(3, img.height, img.width);
    for (let ch = 0; ch < 3; ch++) out.data.set(img.data, ch * n);
    return out;
  }
  if (req === 1 && img.channels === 3) return rgbToGray(img);
  throw new Error(`convertChannels: cannot convert ${img.channels} channels to ${req}`);
}

/** Rec. 601 luma of an RGB image (1-channel images are returned unchanged). */
export function rgbToGray(img: Image): Image {
  if (img.channels === 1) return img;
  if (img.channels !== 3) throw new Error(`rgbToGray: expected 1 or 3 channels, got ${img.channels}`);
  const n = img.height * img.width;
  const out = createImage(1, img.height, img.width);
  const d = img.data;
  for (let i = 0; i < n; i++) out.data[i] = 0.299 * d[i] + 0.587 * d[n + i] + 0.114 * d[2 * n + i];
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// BMP: uncompressed 8-bit (palette), 24-bit and 32-bit (BI_RGB or BI_BITFIELDS), bottom-up or top-down.

function decodeBmp(buf: Uint8Array, name: string): Image {
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const fail = (reason: string): never => {
    throw new ImageReadError(name, reason);
  };
  if (buf.length < 26) fail('corrupt bmp: file shorter than its header');
  const dataOffset = view.getUint32(10, true);
  const headerSize = view.getUint32(14, true);
  if (headerSize < 40) fail(`unsupported bmp: header size ${headerSize} (OS/2 BMP)`);
  if (buf.length < 14 + headerSize) fail('corrupt bmp: truncated info header');
  const width = view.getInt32(18, true);
  const rawHeight = view.getInt32(22, true);
  const planes = view.getUint16(26, true);
  const bpp = view.getUint16(28, true);
  const compression = view.getUint32(30, true);
  const height = Math.abs(rawHeight);
  const topDown = rawHeight < 0;
  if (width <= 0 || height <= 0 || planes !== 1) fail(`corrupt bmp: size ${width}x${rawHeight}, planes ${planes}`);
  if (width * height > MAX_INPUT_PIXELS) {
    fail(`too large: ${width}x${height} exceeds ${MAX_INPUT_PIXELS} pixels`);
  }
  if (bpp !== 8 && bpp !== 24 && bpp !== 32) fail(`unsupported bmp: ${bpp} bits per pixel (8, 24, 32 supported)`);
  const bitfields = compression === 3 || compression === 6;
  if (!(compression === 0 || (bitfields && bpp === 32))) {
    fail(`unsupported bmp: compression type ${compression} (only uncompressed)`);
  }
  const rowBytes = Math.floor((bpp * width + 31) / 32) * 4;
  if (dataOffset + rowBytes * height > buf.length) fail('corrupt bmp: pixel data truncated');

  const n = width * height;
  const rowStart = (y: number): number => dataOffset + rowBytes * (topDown ? y : height - 1 - y);

  if (bpp === 8) {
    let colours = view.getUint32(46, true);
    if (colours === 0) colours = 256;
    const palOff = 14 + headerSize;
    if (colours > 256 || palOff + colours * 4 > dataOffset) fail('corrupt bmp: bad palette');
    const pal = new Float32Array(colours * 3);
    let grayPal = true;
    for (let i = 0; i < colours; i++) {
      const b = buf[palOff + 4 * i];
      const g = buf[palOff + 4 * i + 1];
      const r = buf[palOff + 4 * i + 2];
      pal[3 * i] = r / 255;
      pal[3 * i + 1] = g / 255;
      pal[3 * i + 2] = b / 255;
      if (r !== g || g !== b) grayPal = false;
    }
    const c = grayPal ? 1 : 3;
    const img = createImage(c, height, width);
    for (let y = 0; y < height; y++) {
      const rs = rowStart(y);
      for (let x = 0; x < width; x++) {
        const idx = buf[rs + x];
        if (idx >= colours) fail(`corrupt bmp: palette index ${idx} out of range`);
        for (let ch = 0; ch < c; ch++) img.data[ch * n + y * width + x] = pal[3 * idx + ch];
      }
    }
    return img;
  }

  // 24/32-bit: default BGR(A) byte order; BI_BITFIELDS gives explicit channel masks.
  let masks = [0x00ff0000, 0x0000ff00, 0x000000ff, 0];
  // Channel masks sit right after the 40-byte info fields (inside V2-V5 headers, or just after a V1 header);
  // the alpha mask follows them in V3+ headers and with BI_ALPHABITFIELDS (6).
  const hasAlphaMask = bpp === 32 && (headerSize >= 56 || compression === 6);
  if (bpp === 32 && bitfields) {
    if (buf.length < 66) fail('corrupt bmp: truncated bitfield masks');
    masks = [view.getUint32(54, true), view.getUint32(58, true), view.getUint32(62, true), 0];
  }
  if (hasAlphaMask) {
    if (buf.length < 70) fail('corrupt bmp: truncated alpha mask');
    masks[3] = view.getUint32(66, true);
  }
  const field = masks.map((m) => maskInfo(m));
  const img = createImage(3, height, width);
  const alpha = new Float32Array(n);
  let anyAlpha = false;
  for (let y = 0; y < height; y++) {
    const rs = rowStart(y);
    for (let x = 0; x < width; x++) {
      const p = y * width + x;
      if (bpp === 24) {
        const o = rs + 3 * x;
        img.data[p] = buf[o + 2] / 255;
        img.data[n + p] = buf[o + 1] / 255;
        img.data[2 * n + p] = buf[o] / 255;
        continue;
      }
      const v = view.getUint32(rs + 4 * x, true);
      for (let ch = 0; ch < 3; ch++) img.data[ch * n + p] = readField(v, field[ch]);
      if (field[3].max > 0) {
        alpha[p] = readField(v, field[3]);
        if (alpha[p] > 0) anyAlpha = true;
      }
    }
  }
  // Many writers leave the 4th byte zero: an all-zero alpha channel means "no alpha", not "fully transparent".
  if (anyAlpha) {
    for (let ch = 0; ch < 3; ch++) for (let p = 0; p < n; p++) img.data[ch * n + p] *= alpha[p];
  }
  return img;
}

interface FieldInfo {
  shift: number;
  max: number;
}

function maskInfo(mask: number): FieldInfo {
  if (mask === 0) return { shift: 0, max: 0 };
  let shift = 0;
  while (((mask >>> shift) & 1) === 0) shift++;
  return { shift, max: mask >>> shift };
}

function readField(v: number, f: FieldInfo): number {
  return f.max === 0 ? 0 : ((v >>> f.shift) & f.max) / f.max;
}

// ---------------------------------------------------------------------------------------------------------------
// Resizing (pure TypeScript, same sampling as PyTorch's F.interpolate with align_corners=False).

export type ResizeMode = 'bilinear' | 'nearest';

/**
 * Resize to height x width. 'bilinear' matches F.interpolate(mode='bilinear', align_corners=False, antialias=False):
 * source coordinate (dst + 0.5) * in/out - 0.5, clamped at 0. 'nearest' matches mode='nearest':
 * source index floor(dst * in/out). Use 'nearest' for masks so they stay binary.
 */
export function resizeImage(img: Image, height: number, width: number, mode: ResizeMode = 'bilinear'): Image {
  if (!(Number.isInteger(height) && Number.isInteger(width) && height > 0 && width > 0)) {
    throw new Error(`resizeImage: invalid target size ${height}x${width}`);
  }
  if (mode !== 'bilinear' && mode !== 'nearest') throw new Error(`resizeImage: unknown mode '${String(mode)}'`);
  const { channels: c, height: h, width: w } = img;
  const out = createImage(c, height, width);
  if (h === height && w === width) {
    out.data.set(img.data);
    return out;
  }
  const sy = h / height;
  const sx = w / width;
  if (mode === 'nearest') {
    const xs = new Int32Array(width);
    for (let x = 0; x < width; x++) xs[x] = Math.min(Math.floor(x * sx), w - 1);
    for (let ch = 0; ch < c; ch++) {
      const so = ch * h * w;
      const doff = ch * height * width;
      for (let y = 0; y < height; y++) {
        const row = so + Math.min(Math.floor(y * sy), h - 1) * w;
        for (let x = 0; x < width; x++) out.data[doff + y * width + x] = img.data[row + xs[x]];
      }
    }
    return out;
  }
  const axis = (outLen: number, inLen: number, scale: number) => {
    const i0 = new Int32Array(outLen);
    const i1 = new Int32Array(outLen);
    const t = new Float32Array(outLen);
    for (let o = 0; o < outLen; o++) {
      const src = Math.max((o + 0.5) * scale - 0.5, 0);
      const lo = Math.min(Math.floor(src), inLen - 1);
      i0[o] = lo;
      i1[o] = Math.min(lo + 1, inLen - 1);
      t[o] = src - lo;
    }
    return { i0, i1, t };
  };
  const ay = axis(height, h, sy);
  const ax = axis(width, w, sx);
  for (let ch = 0; ch < c; ch++) {
    const so = ch * h * w;
    const doff = ch * height * width;
    for (let y = 0; y < height; y++) {
      const r0 = so + ay.i0[y] * w;
      const r1 = so + ay.i1[y] * w;
      const ty = ay.t[y];
      for (let x = 0; x < width; x++) {
        const x0 = ax.i0[x];
        const x1 = ax.i1[x];
        const tx = ax.t[x];
        const top = img.data[r0 + x0] * (1 - tx) + img.data[r0 + x1] * tx;
        const bot = img.data[r1 + x0] * (1 - tx) + img.data[r1 + x1] * tx;
        out.data[doff + y * width + x] = top * (1 - ty) + bot * ty;
      }
    }
  }
  return out;
}

/** Copy the rectangle [top, top+height) x [left, left+width) out of an image. */
export function cropImage(img: Image, top: number, left: number, height: number, width: number): Image {
  if (top < 0 || left < 0 || height <= 0 || width <= 0 || top + height > img.height || left + width > img.width) {
    throw new Error(`cropImage: rectangle ${top},${left} ${height}x${width} outside ${img.height}x${img.width}`);
  }
  const out = createImage(img.channels, height, width);
  for (let ch = 0; ch < img.channels; ch++) {
    for (let y = 0; y < height; y++) {
      const s = ch * img.height * img.width + (top + y) * img.width + left;
      out.data.set(img.data.subarray(s, s + width), ch * height * width + y * width);
    }
  }
  return out;
}

export type FitAspect = 'stretch' | 'pad' | 'crop';

export interface Rect {
  top: number;
  left: number;
  height: number;
  width: number;
}

/**
 * How fitImage mapped an image to the model's square input: the `src` rectangle of the original image
 * (all of it for stretch/pad, the centre square for crop) was resized onto the `dst` rectangle of the
 * size x size input (all of it for stretch/crop, the letterboxed content for pad).
 */
export interface FitTransform {
  aspect: FitAspect;
  size: number;
  srcHeight: number;
  srcWidth: number;
  src: Rect;
  dst: Rect;
}

export interface FitOptions {
  /** Fill of the letterbox border for 'pad': 'edge' (default) replicates the outermost pixels, so the border does
   * not look like a dark defect to a model; 'black' fills with 0. */
  padFill?: 'edge' | 'black';
}

/**
 * Make a size x size model input. 'stretch' resizes ignoring aspect ratio; 'pad' resizes the longest side to
 * `size` and letterboxes (centred); 'crop' takes the centred square of side min(h, w) and resizes it.
 * Returns the transform that unfitMap needs to bring a map back to the original size.
 */
export function fitImage(
  img: Image,
  size: number,
  aspect: FitAspect,
  opts: FitOptions = {},
): { image: Image; transform: FitTransform } {
  if (!(Number.isInteger(size) && size > 0)) throw new Error(`fitImage: invalid size ${size}`);
  const { height: h, width: w } = img;
  const full: Rect = { top: 0, left: 0, height: h, width: w };
  const square: Rect = { top: 0, left: 0, height: size, width: size };
  const base = { aspect, size, srcHeight: h, srcWidth: w };
  if (aspect === 'stretch') {
    return { image: resizeImage(img, size, size), transform: { ...base, src: full, dst: square } };
  }
  if (aspect === 'crop') {
    const side = Math.min(h, w);
    const src: Rect = { top: Math.floor((h - side) / 2), left: Math.floor((w - side) / 2), height: side, width: side };
    const cropped = cropImage(img, src.top, src.left, side, side);
    return { image: resizeImage(cropped, size, size), transform: { ...base, src, dst: square } };
  }
  if (aspect !== 'pad') throw new Error(`fitImage: unknown aspect '${String(aspect)}' (stretch, pad, crop)`);
  const fill = opts.padFill ?? 'edge';
  if (fill !== 'edge' && fill !== 'black') throw new Error(`fitImage: unknown padFill '${String(fill)}'`);
  const scale = size / Math.max(h, w);
  const nh = Math.max(1, Math.min(size, Math.round(h * scale)));
  const nw = Math.max(1, Math.min(size, Math.round(w * scale)));
  const dst: Rect = { top: Math.floor((size - nh) / 2), left: Math.floor((size - nw) / 2), height: nh, width: nw };
  const content = resizeImage(img, nh, nw);
  const image = placeInto(content, size, size, dst, fill === 'edge' ? 'edge' : 0);
  return { image, transform: { ...base, src: full, dst } };
}

/** Put `content` at rect `at` of a new height x width image; pixels outside are `fill` or the nearest edge pixel. */
function placeInto(content: Image, height: number, width: number, at: Rect, fill: number | 'edge'): Image {
  const out = createImage(content.channels, height, width);
  const ch = content.height;
  const cw = content.width;
  for (let c = 0; c < content.channels; c++) {
    const so = c * ch * cw;
    const doff = c * height * width;
    for (let y = 0; y < height; y++) {
      const yy = y - at.top;
      const insideY = yy >= 0 && yy < ch;
      for (let x = 0; x < width; x++) {
        const xx = x - at.left;
        if (insideY && xx >= 0 && xx < cw) {
          out.data[doff + y * width + x] = content.data[so + yy * cw + xx];
        } else if (fill === 'edge') {
          const cy = Math.min(Math.max(yy, 0), ch - 1);
          const cx = Math.min(Math.max(xx, 0), cw - 1);
          out.data[doff + y * width + x] = content.data[so + cy * cw + cx];
        } else {
          out.data[doff + y * width + x] = fill;
        }
      }
    }
  }
  return out;
}

/**
 * Map a model-sized map (size x size) back onto the original image: the `dst` part is resized (bilinear) onto
 * the `src` part of the original. Original pixels the model never saw (outside a centre crop) get `fill`:
 * 'edge' (default) extends the nearest mapped value, or a number.
 */
export function unfitMap(map: Image, transform: FitTransform, opts: { fill?: number | 'edge' } = {}): Image {
  const { size, dst, src, srcHeight, srcWidth } = transform;
  if (map.height !== size || map.width !== size) {
    throw new Error(`unfitMap: map is ${map.height}x${map.width}, transform expects ${size}x${size}`);
  }
  const part = cropImage(map, dst.top, dst.left, dst.height, dst.width);
  const resized = resizeImage(part, src.height, src.width);
  if (src.height === srcHeight && src.width === srcWidth) return resized;
  return placeInto(resized, srcHeight, srcWidth, src, opts.fill ?? 'edge');
}

// ---------------------------------------------------------------------------------------------------------------
// Writing.

function toUint8(v: number): number {
  // NaN becomes 0 rather than poisoning the file.
  return v > 0 ? (v < 1 ? Math.round(v * 255) : 255) : 0;
}

/** Encode an 8-bit PNG (grayscale for 1 channel, RGB for 3). Values are clamped to [0, 1]. */
export async function encodePng(img: Image): Promise<Buffer> {
  const { channels: c, height: h, width: w } = img;
  if (c !== 1 && c !== 3) throw new Error(`encodePng: expected 1 or 3 channels, got ${c}`);
  const n = h * w;
  const px = Buffer.alloc(n * c);
  for (let ch = 0; ch < c; ch++) for (let i = 0; i < n; i++) px[i * c + ch] = toUint8(img.data[ch * n + i]);
  let s = sharp(px, { raw: { width: w, height: h, channels: c }, limitInputPixels: false });
  if (c === 1) s = s.toColourspace('b-w');
  return s.png().toBuffer();
}

/** Write an 8-bit PNG (1 or 3 channels), atomically. */
export async function saveImagePng(path: string, img: Image): Promise<void> {
  await writeFileAtomic(path, await encodePng(img));
}

/** Encode a 1-channel [0, 1] map as a 16-bit grayscale PNG (values clamped; round(v * 65535)). */
export async function encodeMap16(map: Image): Promise<Buffer> {
  if (map.channels !== 1) throw new Error(`encodeMap16: expected a 1-channel map, got ${map.channels} channels`);
  const n = map.height * map.width;
  const px = new Uint16Array(n);
  for (let i = 0; i < n; i++) {
    const v = map.data[i];
    px[i] = v > 0 ? (v < 1 ? Math.round(v * 65535) : 65535) : 0;
  }
  return sharp(px, { raw: { width: map.width, height: map.height, channels: 1 }, limitInputPixels: false })
    .toColourspace('grey16')
    .png()
    .toBuffer();
}

/** Write a [0, 1] map as a 16-bit grayscale PNG, atomically. */
export async function saveMap16(path: string, map: Image): Promise<void> {
  await writeFileAtomic(path, await encodeMap16(map));
}

/**
 * Encode a 1-channel map as an uncompressed little-endian 32-bit float TIFF (single strip), keeping values exactly.
 */
export function encodeFloatTiff(map: Image): Uint8Array {
  if (map.channels !== 1) throw new Error(`encodeFloatTiff: expected a 1-channel map, got ${map.channels} channels`);
  const { width: w, height: h } = map;
  const pixelBytes = w * h * 4;
  // Tags must be in ascending order (libtiff rejects the file otherwise).
  const tags: Array<[tag: number, type: 3 | 4, value: number]> = [
    [256, 4, w], // ImageWidth
    [257, 4, h], // ImageLength
    [258, 3, 32], // BitsPerSample
    [259, 3, 1], // Compression: none
    [262, 3, 1], // PhotometricInterpretation: BlackIsZero
    [273, 4, 8], // StripOffsets: pixels follow the 8-byte header
    [277, 3, 1], // SamplesPerPixel
    [278, 4, h], // RowsPerStrip
    [279, 4, pixelBytes], // StripByteCounts
    [284, 3, 1], // PlanarConfiguration: contiguous
    [339, 3, 3], // SampleFormat: IEEE float
  ];
  const ifdOffset = 8 + pixelBytes + (pixelBytes % 2); // IFD must start on a word boundary
  const out = new Uint8Array(ifdOffset + 2 + tags.length * 12 + 4);
  const view = new DataView(out.buffer);
  out[0] = 0x49;
  out[1] = 0x49;
  view.setUint16(2, 42, true);
  view.setUint32(4, ifdOffset, true);
  for (let i = 0; i < w * h; i++) view.setFloat32(8 + 4 * i, map.data[i], true);
  let p = ifdOffset;
  view.setUint16(p, tags.length, true);
  p += 2;
  for (const [tag, type, value] of tags) {
    view.setUint16(p, tag, true);
    view.setUint16(p + 2, type, true);
    view.setUint32(p + 4, 1, true);
    if (type === 3) view.setUint16(p + 8, value, true);
    else view.setUint32(p + 8, value, true);
    p += 12;
  }
  view.setUint32(p, 0, true); // no next IFD
  return out;
}

/** Write a 1-channel map as a 32-bit float TIFF (exact values, any range), atomically. loadImage reads it back. */
export async function saveMapTiff(path: string, map: Image): Promise<void> {
  await writeFileAtomic(path, encodeFloatTiff(map));
}
