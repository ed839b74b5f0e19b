/**
 * multipart/form-data uploads, parsed by busboy (a maintained, widely used streaming parser) from a body the
 * server has already received within its size limit.
 *
 * This module only adds the limits and errors the service needs around busboy: the Content-Type must carry a
 * well-formed RFC 2046 boundary, at most `maxParts` parts (files and fields together) and `maxFileBytes` per file
 * are accepted, every part needs a field name, and a body that ends before its closing delimiter is refused. Each
 * problem is a MultipartError whose `kind` says which (the server maps it to 400 or 413). busboy itself caps a
 * part's header block (16 KiB, 2000 lines) and skips parts without `Content-Disposition: form-data`.
 */
import busboy from 'busboy';

export type MultipartErrorKind = 'malformed' | 'too-many-parts' | 'file-too-large';

export class MultipartError extends Error {
  constructor(
    message: string,
    readonly kind: MultipartErrorKind = 'malformed',
  ) {
    super(message);
    this.name = 'MultipartError';
  }
}

export interface MultipartPart {
  /** The form field name. */
  name: string;
  /** The file name (base name, control characters dropped) when the part is a file upload, otherwise undefined. */
  filename?: string;
  /** The part's Content-Type, lower-cased without parameters; undefined when absent (or text/plain, the default). */
  contentType?: string;
  data: Buffer;
}

export interface MultipartLimits {
  /** Most parts accepted (files and fields together). */
  maxParts: number;
  /** Most bytes of one file part. */
  maxFileBytes: number;
  /** Most bytes of one non-file field (longer values are cut; fields are only ever named in errors). */
  maxFieldBytes: number;
}

export const DEFAULT_MULTIPART_LIMITS: MultipartLimits = {
  maxParts: 64,
  maxFileBytes: 64 * 1024 * 1024,
  maxFieldBytes: 64 * 1024,
};

/** RFC 2046 boundary: 1-70 characters from bchars, not ending in a space. */
const BOUNDARY_RE = /^[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]$/;

/**
 * Extracts the boundary from a `multipart/form-data; boundary=...` Content-Type.
 * Returns undefined when the type is not multipart/form-data; throws MultipartError when it is but
 * the boundary is missing or malformed.
 */
export function multipartBoundary(contentType: string | undefined): string | undefined {
  if (!contentType) return undefined;
  const { type, params } = parseHeaderValue(contentType);
  if (type !== 'multipart/form-data') return undefined;
  const boundary = params.get('boundary');
  if (boundary === undefined) throw new MultipartError('multipart/form-data without a boundary parameter');
  if (!BOUNDARY_RE.test(boundary)) throw new MultipartError('malformed multipart boundary');
  return boundary;
}

/**
 * Parses a multipart/form-data body (parts in body order); rejects with a MultipartError naming the problem (see
 * the module comment).
 */
export function parseMultipart(
  body: Buffer,
  boundary: string,
  limits: Partial<MultipartLimits> = {},
): Promise<MultipartPart[]> {
  const lim = { ...DEFAULT_MULTIPART_LIMITS, ...limits };
  if (!BOUNDARY_RE.test(boundary)) return Promise.reject(new MultipartError('malformed multipart boundary'));
  return new Promise((resolve, reject) => {
    // bchars hold no '"' or '\', so the quoted form is always valid and busboy sees exactly this boundary.
    const bb = busboy({
      headers: { 'content-type': `multipart/form-data; boundary="${boundary}"` },
      // busboy flags a count or size when it reaches its limit: one more than allowed for parts and file bytes,
      // so exactly maxParts parts and maxFileBytes bytes pass (files and fields are flagged past their limit).
      limits: {
        parts: lim.maxParts + 1,
        files: lim.maxParts,
        fields: lim.maxParts,
        fileSize: lim.maxFileBytes + 1,
        fieldSize: lim.maxFieldBytes,
      },
      defParamCharset: 'utf8',
    });
    // Slots in body order, filled when a part's data is complete (a file part's stream ends after later events).
    const parts: Array<MultipartPart | undefined> = [];
    let settled = false;
    const fail = (err: MultipartError): void => {
      if (settled) return;
      settled = true;
      reject(err);
      bb.destroy();
    };
    const tooMany = (): void =>
      fail(new MultipartError(`too many multipart parts (limit ${lim.maxParts})`, 'too-many-parts'));
    const slot = (name: string | undefined): number => {
      if (name === undefined || name === '') {
        fail(new MultipartError('multipart part without a field name'));
        return -1;
      }
      if (parts.length >= lim.maxParts) {
        tooMany();
        return -1;
      }
      parts.push(undefined);
      return parts.length - 1;
    };
    bb.on('file', (name, stream, info) => {
      const i = slot(name);
      const chunks: Buffer[] = [];
      stream.on('data', (c: Buffer) => {
        if (!settled) chunks.push(c);
      });
      stream.on('limit', () => fail(fileTooLarge(info.filename ?? name, lim.maxFileBytes)));
      stream.on('error', () => undefined); // busboy's own error reaches bb's 'error' listener
      stream.on('end', () => {
        if (settled || i < 0) return;
        // Usually one chunk, a view into the body (no copy), as the hand-written parser gave.
        const data = chunks.length === 1 ? chunks[0] : Buffer.concat(chunks);
        const part: MultipartPart = { name, data };
        // busboy reports an application/octet-stream part without a file name as a file too: keep it a field.
        if (info.filename !== undefined) part.filename = sanitizeFilename(info.filename);
        // busboy gives a part without Content-Type RFC 7578's default, text/plain: for a file that means undeclared.
        const type = info.mimeType.toLowerCase();
        if (type !== 'text/plain') part.contentType = type;
        parts[i] = part;
      });
    });
    bb.on('field', (name, value, info) => {
      const i = slot(name);
      if (i >= 0) parts[i] = { name, contentType: info.mimeType.toLowerCase(), data: Buffer.from(value, 'utf8') };
    });
    bb.on('partsLimit', tooMany);
    bb.on('filesLimit', tooMany);
    bb.on('fieldsLimit', tooMany);
    bb.on('error', (err: unknown) => fail(new MultipartError(describeBusboyError(err))));
    bb.on('close', () => {
      if (settled) return;
      settled = true;
      resolve(parts.filter((p): p is MultipartPart => p !== undefined));
    });
    bb.end(body);
  });
}

function fileTooLarge(name: string, limit: number): MultipartError {
  return new MultipartError(`file '${sanitizeFilename(name)}' exceeds the limit of ${limit} bytes`, 'file-too-large');
}

/** busboy's terse messages, said in the service's words. */
function describeBusboyError(err: unknown): string {
  const msg = err instanceof Error ? err.message : String(err);
  if (msg === 'Unexpected end of form') {
    return 'multipart body is truncated (closing boundary missing) or does not contain the boundary';
  }
  if (msg === 'Malformed part header') return 'malformed multipart part header (or a header block over 16 KiB)';
  if (msg === 'Unexpected end of file') return 'multipart file part is truncated';
  return `malformed multipart body (${msg})`;
}

/**
 * Splits `type/subtype; a=b; c="d e"` into the lower-cased type and its parameters
 * (parameter names lower-cased, quoted values unquoted with backslash escapes resolved).
 */
export function parseHeaderValue(value: string): { type: string; params: Map<string, string> } {
  const params = new Map<string, string>();
  const semi = value.indexOf(';');
  const type = (semi < 0 ? value : value.slice(0, semi)).trim().toLowerCase();
  let i = semi < 0 ? value.length : semi + 1;
  while (i < value.length) {
    while (i < value.length && (value[i] === ' ' || value[i] === '\t' || value[i] === ';')) i++;
    if (i >= value.length) break;
    const eq = value.indexOf('=', i);
    if (eq < 0) throw new MultipartError('malformed header parameter');
    const key = value.slice(i, eq).trim().toLowerCase();
    i = eq + 1;
    let v = '';
    if (value[i] === '"') {
      i++;
      let closed = false;
      while (i < value.length) {
        const ch = value[i];
        if (ch === '\\' && i + 1 < value.length) {
          v += value[i + 1];
          i += 2;
        } else if (ch === '"') {
          i++;
          closed = true;
          break;
        } else {
          v += ch;
          i++;
        }
      }
      if (!closed) throw new MultipartError('unterminated quoted header parameter');
    } else {
      const end = value.indexOf(';', i);
      v = value.slice(i, end < 0 ? value.length : end).trim();
      i = end < 0 ? value.length : end;
    }
    if (!key) throw new MultipartError('malformed header parameter');
    if (params.has(key)) throw new MultipartError(`duplicate header parameter '${key}'`);
    params.set(key, v);
  }
  return { type, params };
}

/** Keeps only the base name and drops control characters: the name is only ever echoed back as a label. */
function sanitizeFilename(name: string): string {
  const base = name.split(/[/\\]/).pop() ?? '';
  return base.replace(/[\u0000-\u001f\u007f]/g, '').slice(0, 255);
}
