import type { ImageFormat } from '../image/io.js';

/**
 * Reads the pixel dimensions an image declares in its header, without decoding any pixel data, so the
 * service can refuse decompression bombs (a few KB of PNG declaring 100000 x 100000 pixels) before any
 * decoder allocates memory for them. Returns null when the header is truncated or malformed.
 */
export function readImageSize(buf: Uint8Array, format: ImageFormat): { width: number; height: number } | null {
  switch (format) {
    case 'png':
      return pngSize(buf);
    case 'bmp':
      return bmpSize(buf);
    case 'jpeg':
      return jpegSize(buf);
    case 'tiff':
      return tiffSize(buf);
    default:
      return null;
  }
}

function view(buf: Uint8Array): DataView {
  return new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
}

function valid(width: number, height: number): { width: number; height: number } | null {
  return width > 0 && height > 0 && Number.isSafeInteger(width) && Number.isSafeInteger(height)
    ? { width, height }
    : null;
}

/** PNG: the first chunk must be IHDR (big-endian width and height at offsets 16 and 20). */
function pngSize(buf: Uint8Array): { width: number; height: number } | null {
  if (buf.length < 24) return null;
  const v = view(buf);
  if (v.getUint32(8) !== 13 || String.fromCharCode(buf[12], buf[13], buf[14], buf[15]) !== 'IHDR') return null;
  return valid(v.getUint32(16), v.getUint32(20));
}

/** BMP with a BITMAPINFOHEADER or later (>= 40 bytes): signed little-endian width/height at 18 and 22. */
function bmpSize(buf: Uint8Array): { width: number; height: number } | null {
  if (buf.length < 26) return null;
  const v = view(buf);
  if (v.getUint32(14, true) < 40) return null;
  return valid(v.getInt32(18, true), Math.abs(v.getInt32(22, true)));
}

/** JPEG: walk the marker segments up to the first start-of-frame (SOF0..SOF15 except DHT, JPG, DAC). */
function jpegSize(buf: Uint8Array): { width: number; height: number } | null {
  const v = view(buf);
  let p = 2;
  while (p + 4 <= buf.length) {
    if (buf[p] !== 0xff) return null;
    while (p < buf.length && buf[p] === 0xff) p++; // fill bytes
    if (p >= buf.length) return null;
    const marker = buf[p++];
    if (marker === 0xd8 || marker === 0x01 || (marker >= 0xd0 && marker <= 0xd7)) continue; // no length
    if (marker === 0xd9 || marker === 0xda) return null; // end of image / start of scan before any frame
    if (p + 2 > buf.length) return null;
    const len = v.getUint16(p);
    if (len < 2) return null;
    const isSof = marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc;
    if (isSof) {
      if (p + 7 > buf.length) return null;
      return valid(v.getUint16(p + 5), v.getUint16(p + 3));
    }
    p += len;
  }
  return null;
}

/** TIFF (classic, either byte order): ImageWidth (256) and ImageLength (257) in the first IFD. */
function tiffSize(buf: Uint8Array): { width: number; height: number } | null {
  if (buf.length < 8) return null;
  const v = view(buf);
  const le = buf[0] === 0x49;
  const ifd = v.getUint32(4, le);
  if (ifd < 8 || ifd + 2 > buf.length) return null;
  const count = v.getUint16(ifd, le);
  if (ifd + 2 + count * 12 > buf.length) return null;
  let width = 0;
  let height = 0;
  for (let i = 0; i < count; i++) {
    const e = ifd + 2 + i * 12;
    const tag = v.getUint16(e, le);
    if (tag !== 256 && tag !== 257) continue;
    const type = v.getUint16(e + 2, le);
    const value = type === 3 ? v.getUint16(e + 8, le) : type === 4 ? v.getUint32(e + 8, le) : 0;
    if (tag === 256) width = value;
    else height = value;
  }
  return valid(width, height);
}
