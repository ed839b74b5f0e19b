/**
 * A small, strict multipart/form-data parser (RFC 7578 / RFC 2046) for an already size-limited body.
 *
 * Strict on purpose: the boundary must be well formed, every part needs a
 * `Content-Disposition: form-data; name="..."` header, header blocks are size- and count-limited,
 * the closing delimiter must be present, and the part count is capped. Anything else is a
 * MultipartError (the server answers 400). Part bodies are zero-copy views into the input buffer.
 */

export class MultipartError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'MultipartError';
  }
}

export interface MultipartPart {
  /** The form field name. */
  name: string;
  /** The file name when the part is a file upload (filename parameter present), otherwise undefined. */
  filename?: string;
  /** The part's Content-Type, lower-cased without parameters; undefined when absent. */
  contentType?: string;
  data: Buffer;
}

export interface MultipartLimits {
  /** Most parts accepted (files and fields together). */
  maxParts: number;
  /** Most bytes of one part's header block. */
  maxHeaderBytes: number;
  /** Most header lines in one part. */
  maxHeaders: number;
}

export const DEFAULT_MULTIPART_LIMITS: MultipartLimits = { maxParts: 64, maxHeaderBytes: 4096, maxHeaders: 8 };

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

/** Parses a multipart/form-data body; see the module comment for what is rejected. */
export function parseMultipart(
  body: Buffer,
  boundary: string,
  limits: MultipartLimits = DEFAULT_MULTIPART_LIMITS,
): MultipartPart[] {
  if (!BOUNDARY_RE.test(boundary)) throw new MultipartError('malformed multipart boundary');
  const dashBoundary = Buffer.from(`--${boundary}`, 'latin1');
  const delimiter = Buffer.from(`\r\n--${boundary}`, 'latin1');
  const parts: MultipartPart[] = [];

  // The first delimiter may be preceded by a preamble (ignored) only if the preamble ends in CRLF.
  let pos: number;
  if (body.subarray(0, dashBoundary.length).equals(dashBoundary)) {
    pos = dashBoundary.length;
  } else {
    const first = body.indexOf(delimiter);
    if (first < 0) throw new MultipartError('multipart body contains no boundary');
    pos = first + delimiter.length;
  }

  for (;;) {
    // After a delimiter: "--" closes the body, CRLF starts a part (transport padding is tolerated).
    if (body[pos] === 0x2d && body[pos + 1] === 0x2d) return parts;
    pos = skipTransportPadding(body, pos);
    if (!(body[pos] === 0x0d && body[pos + 1] === 0x0a)) throw new MultipartError('malformed multipart delimiter');
    pos += 2;

    if (parts.length >= limits.maxParts)
      throw new MultipartError(`too many multipart parts (limit ${limits.maxParts})`);

    const headerEnd = body.indexOf('\r\n\r\n', pos, 'latin1');
    const headerLimitEnd = pos + limits.maxHeaderBytes;
    if (headerEnd < 0 || headerEnd > headerLimitEnd) {
      if (headerEnd < 0 && body.length <= headerLimitEnd) {
        throw new MultipartError('multipart part headers are not terminated');
      }
      throw new MultipartError(`multipart part headers exceed ${limits.maxHeaderBytes} bytes`);
    }
    const headers = parsePartHeaders(body.toString('latin1', pos, headerEnd), limits.maxHeaders);
    const dataStart = headerEnd + 4;
    const dataEnd = body.indexOf(delimiter, dataStart);
    if (dataEnd < 0) throw new MultipartError('multipart body is truncated (closing boundary missing)');
    parts.push({ ...headers, data: body.subarray(dataStart, dataEnd) });
    pos = dataEnd + delimiter.length;
  }
}

function skipTransportPadding(body: Buffer, pos: number): number {
  let p = pos;
  while (p < body.length && (body[p] === 0x20 || body[p] === 0x09) && p - pos < 64) p++;
  return p;
}

function parsePartHeaders(block: string, maxHeaders: number): Omit<MultipartPart, 'data'> {
  const lines = block.length === 0 ? [] : block.split('\r\n');
  if (lines.length > maxHeaders) throw new MultipartError(`too many headers in a multipart part (limit ${maxHeaders})`);
  let disposition: string | undefined;
  let contentType: string | undefined;
  for (const line of lines) {
    const colon = line.indexOf(':');
    if (colon <= 0) throw new MultipartError('malformed multipart part header');
    const key = line.slice(0, colon).trim().toLowerCase();
    const value = line.slice(colon + 1).trim();
    if (!/^[a-z0-9-]+$/.test(key)) throw new MultipartError('malformed multipart part header name');
    if (key === 'content-disposition') {
      if (disposition !== undefined) throw new MultipartError('duplicate Content-Disposition in a multipart part');
      disposition = value;
    } else if (key === 'content-type') {
      if (contentType !== undefined) throw new MultipartError('duplicate Content-Type in a multipart part');
      contentType = parseHeaderValue(value).type;
    }
  }
  if (disposition === undefined) throw new MultipartError('multipart part without Content-Disposition');
  const { type, params } = parseHeaderValue(disposition);
  if (type !== 'form-data') throw new MultipartError('multipart part disposition is not form-data');
  const name = params.get('name');
  if (name === undefined) throw new MultipartError('multipart part without a field name');
  const filename = params.get('filename');
  const out: Omit<MultipartPart, 'data'> = { name };
  if (filename !== undefined) out.filename = sanitizeFilename(decodeLatin1AsUtf8(filename));
  if (contentType !== undefined) out.contentType = contentType;
  return out;
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

/** Browsers send UTF-8 file names raw in the header; the header was read as latin1, so re-decode. */
function decodeLatin1AsUtf8(s: string): string {
  const bytes = Buffer.from(s, 'latin1');
  const utf8 = bytes.toString('utf8');
  return utf8.includes('\uFFFD') ? s : utf8;
}

/** Keeps only the base name and drops control characters: the name is only ever echoed back as a label. */
function sanitizeFilename(name: string): string {
  const base = name.split(/[/\\]/).pop() ?? '';
  return base.replace(/[\u0000-\u001f\u007f]/g, '').slice(0, 255);
}
