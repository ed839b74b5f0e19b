/**
 * The safetensors format (https://github.com/huggingface/safetensors): 8-byte little-endian header length N,
 * N bytes of JSON header {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {string: string}},
 * then the raw little-endian tensor bytes. Readable by the Python `safetensors` package and other tools.
 */
import { promises as fs } from 'node:fs';
import { Tensor, type DType } from '../engine/index.js';
import { writeFileAtomic } from '../util/atomic.js';

const ST_DTYPE: Partial<Record<DType, { code: string; bytes: number }>> = {
  float32: { code: 'F32', bytes: 4 },
  float64: { code: 'F64', bytes: 8 },
  int32: { code: 'I32', bytes: 4 },
  int64: { code: 'I64', bytes: 8 },
  uint8: { code: 'U8', bytes: 1 },
  int8: { code: 'I8', bytes: 1 },
  bool: { code: 'BOOL', bytes: 1 },
};
const FROM_CODE = new Map(Object.entries(ST_DTYPE).map(([d, v]) => [v!.code, { dtype: d as DType, bytes: v!.bytes }]));

const MAX_HEADER = 100 * 1024 * 1024;

export class SafetensorsError extends Error {
  constructor(file: string, reason: string) {
    super(`${file}: not a valid safetensors file: ${reason}`);
    this.name = 'SafetensorsError';
  }
}

/** Serialises tensors (sorted by name, as the reference implementation does) with string metadata. */
export function encodeSafetensors(tensors: Map<string, Tensor>, metadata: Record<string, string> = {}): Buffer {
  const names = [...tensors.keys()].sort();
  const header: Record<string, unknown> = {};
  if (Object.keys(metadata).length) header.__metadata__ = metadata;
  const chunks: Buffer[] = [];
  let offset = 0;
  for (const name of names) {
    const t = tensors.get(name)!;
    const info = ST_DTYPE[t.dtype];
    if (!info) throw new Error(`safetensors: dtype ${t.dtype} of '${name}' is not supported`);
    const arr = t.device === 'cpu' ? t.toArray() : t.to('cpu').toArray();
    const bytes = Buffer.from(arr.buffer, arr.byteOffset, arr.byteLength);
    header[name] = { dtype: info.code, shape: t.shape, data_offsets: [offset, offset + bytes.length] };
    chunks.push(bytes);
    offset += bytes.length;
  }
  let json = JSON.stringify(header);
  // Pad the header with spaces so the data starts 8-byte aligned (allowed by the format).
  while ((8 + Buffer.byteLength(json)) % 8) json += ' ';
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
  return Buffer.concat([len, Buffer.from(json), ...chunks]);
}

export async function saveSafetensors(
  file: string,
  tensors: Map<string, Tensor>,
  metadata: Record<string, string> = {},
): Promise<void> {
  await writeFileAtomic(file, encodeSafetensors(tensors, metadata));
}

export interface SafetensorsContent {
  tensors: Map<string, Tensor>;
  metadata: Record<string, string>;
}

/** Parses and validates a safetensors buffer; every inconsistency raises SafetensorsError naming the file. */
/** The string metadata of a parsed header (none: {}), checked. */
function metadataOf(header: Record<string, unknown>, fail: (reason: string) => never): Record<string, string> {
  const metadata: Record<string, string> = {};
  if (!('__metadata__' in header)) return metadata;
  const raw = header.__metadata__;
  if (!raw || typeof raw !== 'object') fail('__metadata__ is not an object');
  for (const [k, v] of Object.entries(raw as Record<string, unknown>)) {
    if (typeof v !== 'string') fail(`metadata '${k}' is not a string`);
    metadata[k] = v as string;
  }
  return metadata;
}

export function decodeSafetensors(buf: Uint8Array, file = '<buffer>'): SafetensorsContent {
  const fail = (reason: string): never => {
    throw new SafetensorsError(file, reason);
  };
  if (buf.length < 8) fail(`file is ${buf.length} bytes, shorter than the 8-byte header length`);
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const n = Number(view.getBigUint64(0, true));
  if (n > MAX_HEADER || 8 + n > buf.length) fail(`header length ${n} exceeds the file size ${buf.length}`);
  let header: Record<string, unknown>;
  try {
    header = JSON.parse(Buffer.from(buf.buffer, buf.byteOffset + 8, n).toString('utf8')) as Record<string, unknown>;
  } catch (e) {
    return fail(`header is not JSON (${(e as Error).message})`);
  }
  if (!header || typeof header !== 'object' || Array.isArray(header)) fail('header is not a JSON object');
  const dataStart = 8 + n;
  const dataLen = buf.length - dataStart;
  const metadata = metadataOf(header, fail);
  const entries: { name: string; dtype: DType; bytes: number; shape: number[]; begin: number; end: number }[] = [];
  for (const [name, raw] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    const e = raw as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    const dt = typeof e?.dtype === 'string' ? FROM_CODE.get(e.dtype) : undefined;
    if (!dt) fail(`tensor '${name}' has unsupported dtype ${JSON.stringify(e?.dtype)}`);
    if (!Array.isArray(e.shape) || !e.shape.every((d) => Number.isInteger(d) && d >= 0))
      fail(`tensor '${name}' has a bad shape`);
    const off = e.data_offsets;
    if (
      !Array.isArray(off) ||
      off.length !== 2 ||
      !off.every((d) => Number.isInteger(d) && d >= 0) ||
      off[0] > off[1]
    ) {
      fail(`tensor '${name}' has bad data_offsets`);
    }
    const [begin, end] = off as [number, number];
    const shape = e.shape as number[];
    const expected = shape.reduce((a, b) => a * b, 1) * dt!.bytes;
    if (end - begin !== expected) fail(`tensor '${name}' holds ${end - begin} bytes, its shape needs ${expected}`);
    if (end > dataLen) fail(`tensor '${name}' ends at byte ${end} beyond the data (${dataLen} bytes): truncated file?`);
    entries.push({ name, dtype: dt!.dtype, bytes: dt!.bytes, shape, begin, end });
  }
  // Tensors must tile the data area without overlap.
  const sorted = [...entries].sort((a, b) => a.begin - b.begin || a.end - b.end);
  let pos = 0;
  for (const e of sorted) {
    if (e.begin !== pos) fail(`tensor '${e.name}' starts at ${e.begin}, expected ${pos} (overlap or gap)`);
    pos = e.end;
  }
  if (pos !== dataLen) fail(`${dataLen - pos} trailing bytes after the last tensor`);
  const tensors = new Map<string, Tensor>();
  for (const e of entries) {
    const bytes = buf.slice(dataStart + e.begin, dataStart + e.end); // copy: aligned and owned
    const ab = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
    let arr: Float32Array | Float64Array | Int32Array | BigInt64Array | Uint8Array | Int8Array;
    switch (e.dtype) {
      case 'float32':
        arr = new Float32Array(ab);
        break;
      case 'float64':
        arr = new Float64Array(ab);
        break;
      case 'int32':
        arr = new Int32Array(ab);
        break;
      case 'int64':
        arr = new BigInt64Array(ab);
        break;
      case 'int8':
        arr = new Int8Array(ab);
        break;
      default:
        arr = new Uint8Array(ab);
    }
    tensors.set(e.name, Tensor.from(arr, e.shape, e.dtype === 'bool' ? { dtype: 'bool' } : undefined));
  }
  return { tensors, metadata };
}

/**
 * Where a safetensors file comes from: a path, or bytes already in memory with the name messages should use (a model
 * embedded in another model file, as an ensemble's members are).
 */
export type SafetensorsSource = string | { name: string; bytes: Uint8Array };

/** The name of a source in messages: the path, or the in-memory source's name. */
export function sourceName(source: SafetensorsSource): string {
  return typeof source === 'string' ? source : source.name;
}

/** Why a safetensors header cannot be read: the file is shorter than its 8-byte length, or that length is wrong. */
export type HeaderProblem = 'too short' | 'bad safetensors header length';

/**
 * The JSON header text of a safetensors file, read without its tensors. `fail` turns a problem into the caller's
 * error (a model file and a checkpoint word it differently); errors opening or reading the file propagate.
 */
export async function readSafetensorsHeaderText(
  file: string,
  fail: (problem: HeaderProblem, detail: string) => never,
): Promise<string> {
  const handle = await fs.open(file, 'r');
  try {
    const head = Buffer.alloc(8);
    const { bytesRead } = await handle.read(head, 0, 8, 0);
    if (bytesRead < 8) fail('too short', `file is ${bytesRead} bytes, shorter than the 8-byte header length`);
    const n = Number(head.readBigUInt64LE(0));
    const size = (await handle.stat()).size;
    if (n > MAX_HEADER || 8 + n > size)
      fail('bad safetensors header length', `header length ${n} exceeds the file size ${size}`);
    const header = Buffer.alloc(n);
    await handle.read(header, 0, n, 8);
    return header.toString('utf8');
  } finally {
    await handle.close();
  }
}

/** The `__metadata__` of a safetensors file, reading its header only (not the tensors), checked as loading does. */
export async function readSafetensorsMetadata(file: string): Promise<Record<string, string>> {
  const fail = (reason: string): never => {
    throw new SafetensorsError(file, reason);
  };
  const text = await readSafetensorsHeaderText(file, (_, detail) => fail(detail));
  let header: unknown;
  try {
    header = JSON.parse(text);
  } catch (e) {
    return fail(`header is not JSON (${(e as Error).message})`);
  }
  if (!header || typeof header !== 'object' || Array.isArray(header)) fail('header is not a JSON object');
  return metadataOf(header as Record<string, unknown>, fail);
}

export async function loadSafetensors(source: SafetensorsSource): Promise<SafetensorsContent> {
  if (typeof source !== 'string') return decodeSafetensors(source.bytes, source.name);
  let buf: Buffer;
  try {
    buf = await fs.readFile(source);
  } catch (e) {
    throw new Error(`cannot read checkpoint ${source}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  return decodeSafetensors(buf, source);
}
