/**
 * Uploaded images, from request to decoded Image: what a request may declare (Content-Type, Content-Encoding,
 * Content-Length), splitting a multipart body into files, the cheap checks that run before an upload is queued
 * (magic bytes, declared type, the pixel count from the image header) and decoding with errors mapped to statuses.
 *
 * Status codes: 400 malformed request or multipart body, 413 too large (body, file, pixel count) or too many files,
 * 415 unsupported or mismatching type, 422 corrupt or undecodable data.
 */
import type http from 'node:http';
import { decodeImage, ImageReadError, sniffFormat, type ImageFormat } from '../image/io.js';
import type { Image } from '../image/types.js';
import { errorMessage, HttpError } from './http.js';
import { readImageSize } from './image-header.js';
import { MultipartError, multipartBoundary, parseHeaderValue, parseMultipart } from './multipart.js';

/** Image types accepted as a raw body's Content-Type (or a file part's), and the format each stands for. */
export const ALLOWED_TYPES: Readonly<Record<string, ImageFormat>> = {
  'image/png': 'png',
  'image/jpeg': 'jpeg',
  'image/jpg': 'jpeg',
  'image/pjpeg': 'jpeg',
  'image/bmp': 'bmp',
  'image/x-bmp': 'bmp',
  'image/x-ms-bmp': 'bmp',
  'image/tiff': 'tiff',
  'image/tif': 'tiff',
};
const FORMAT_NAMES: Record<ImageFormat, string> = { png: 'PNG', jpeg: 'JPEG', bmp: 'BMP', tiff: 'TIFF' };
export const ACCEPTED_TYPES_TEXT = 'image/png, image/jpeg, image/bmp, image/tiff or multipart/form-data';

export interface Upload {
  name: string;
  /** Declared type, lower-cased without parameters (header or part Content-Type). */
  declared?: string;
  data: Buffer;
}

export interface CheckedUpload extends Upload {
  format: ImageFormat;
  width: number;
  height: number;
}

/** The media type of a Content-Type header, lower-cased without parameters; undefined when unreadable. */
export function mediaType(contentType: string | undefined): string | undefined {
  if (!contentType) return undefined;
  try {
    return parseHeaderValue(contentType).type || undefined;
  } catch {
    return undefined;
  }
}

/** The boundary when the request is multipart/form-data, undefined when it is not; 400 for a broken one. */
export function requestBoundary(contentType: string | undefined): string | undefined {
  try {
    return multipartBoundary(contentType);
  } catch (err) {
    throw new HttpError(400, `bad multipart Content-Type: ${errorMessage(err)}`);
  }
}

/** Rejections that need no body: encoded bodies (415) and a declared length over the limit (413). */
export function checkBodyHeaders(req: http.IncomingMessage, maxUploadBytes: number): void {
  const encoding = req.headers['content-encoding'];
  if (encoding && encoding.trim().toLowerCase() !== 'identity') {
    throw new HttpError(415, `Content-Encoding ${encoding} is not supported; send the image bytes unencoded`);
  }
  const length = req.headers['content-length'];
  if (length !== undefined && Number(length) > maxUploadBytes) {
    throw new HttpError(413, `request body of ${length} bytes exceeds the upload limit of ${maxUploadBytes} bytes`);
  }
}

/**
 * The file parts of a multipart body, in upload order. 413 for more than `maxFiles` parts or a file over
 * `maxFileBytes`, 400 for a malformed body or a part that is not a file.
 */
export async function filesFromMultipart(
  body: Buffer,
  boundary: string,
  maxFiles: number,
  maxFileBytes: number,
): Promise<Upload[]> {
  let parts;
  try {
    parts = await parseMultipart(body, boundary, { maxParts: maxFiles, maxFileBytes });
  } catch (err) {
    if (!(err instanceof MultipartError)) throw err;
    if (err.kind === 'too-many-parts') throw new HttpError(413, `too many files: at most ${maxFiles} per request`);
    if (err.kind === 'file-too-large') throw new HttpError(413, err.message);
    throw new HttpError(400, `bad multipart body: ${err.message}`);
  }
  return parts.map((p, i) => {
    if (p.filename === undefined) {
      throw new HttpError(400, `multipart field '${p.name}' is not a file; only file parts are accepted`);
    }
    return { name: p.filename || `file ${i + 1}`, declared: p.contentType, data: p.data };
  });
}

/**
 * Magic bytes, declared type and header-declared size; throws HttpError 400/415/413/422. Cheap: runs before an
 * upload is queued, and no decoder sees data that fails it.
 */
export function checkUpload(u: Upload, requireDeclaredMatch: boolean, maxPixels: number): CheckedUpload {
  if (u.data.length === 0) throw new HttpError(400, `${u.name}: empty upload`);
  const format = sniffFormat(u.data);
  if (format === null) {
    throw new HttpError(
      415,
      `${u.name}: not a PNG, JPEG, BMP or TIFF image (unrecognised magic bytes ${hexPrefix(u.data)})`,
    );
  }
  const declaredFormat = u.declared ? ALLOWED_TYPES[u.declared] : undefined;
  if (u.declared && declaredFormat === undefined && u.declared !== 'application/octet-stream') {
    throw new HttpError(415, `${u.name}: unsupported content type ${u.declared} (expected ${ACCEPTED_TYPES_TEXT})`);
  }
  if (requireDeclaredMatch && declaredFormat !== undefined && declaredFormat !== format) {
    throw new HttpError(
      415,
      `${u.name}: Content-Type ${u.declared} does not match the data, which is ${FORMAT_NAMES[format]}`,
    );
  }
  const size = readImageSize(u.data, format);
  if (size === null) throw new HttpError(422, `${u.name}: corrupt ${FORMAT_NAMES[format]} header (no image size)`);
  const pixels = size.width * size.height;
  if (pixels > maxPixels) {
    throw new HttpError(
      413,
      `${u.name}: image of ${size.width}x${size.height} = ${pixels} pixels exceeds the limit of ${maxPixels} pixels`,
    );
  }
  return { ...u, format, width: size.width, height: size.height };
}

/** Decodes a checked upload; 413/415/422 with the decoder's reason, 422 when it disagrees with its header. */
export async function decodeUpload(u: CheckedUpload): Promise<Image> {
  try {
    const img = await decodeImage(u.data, { name: u.name });
    if (img.width !== u.width || img.height !== u.height) {
      throw new HttpError(422, `${u.name}: decoded size ${img.width}x${img.height} differs from its header`);
    }
    return img;
  } catch (err) {
    if (err instanceof HttpError) throw err;
    if (err instanceof ImageReadError) {
      const status = err.reason.startsWith('too large') ? 413 : err.reason.startsWith('unsupported format') ? 415 : 422;
      throw new HttpError(status, `${u.name}: ${err.reason}`);
    }
    throw new HttpError(422, `${u.name}: cannot decode image (${errorMessage(err)})`);
  }
}

function hexPrefix(buf: Buffer): string {
  return buf.subarray(0, 8).toString('hex').replace(/(..)/g, '$1 ').trim();
}
