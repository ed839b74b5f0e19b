/**
 * Opens any model file the project writes and returns its predictor, dispatching on the file's format tag.
 */
import { promises as fs } from 'node:fs';

import type { AnomalyPredictor } from '../models/predictor.js';
import { ANOSEG_FORMAT, AnoSegPredictor } from './anoseg/model-file.js';
import { PADIM_FORMAT, PadimPredictor } from './padim/model.js';
import { DETECTOR_FORMAT, DetectorPredictor } from './detector/model.js';
import { PATCHCORE_FORMAT, PatchcorePredictor } from './patchcore/model.js';
import { ENSEMBLE_FORMAT, EnsemblePredictor } from './ensemble/model.js';
import { readSafetensorsHeaderText, sourceName, type SafetensorsSource } from '../nn/index.js';

/** The format tag of a safetensors header (the JSON text after the 8-byte length). */
function formatOfHeader(header: string, file: string): string {
  let parsed: { __metadata__?: { format?: string } };
  try {
    parsed = JSON.parse(header) as { __metadata__?: { format?: string } };
  } catch {
    throw new Error(`${file}: not a model file (header is not JSON)`);
  }
  const format = parsed.__metadata__?.format;
  if (!format) throw new Error(`${file}: safetensors file without a model format tag (not written by anoseg.ts?)`);
  return format;
}

/** Reads only the safetensors header to learn the model kind. */
export async function modelFormat(source: SafetensorsSource): Promise<string> {
  if (typeof source !== 'string') {
    const { name, bytes } = source;
    if (bytes.length < 8) throw new Error(`${name}: not a model file (too short)`);
    const n = Number(Buffer.from(bytes.buffer, bytes.byteOffset, 8).readBigUInt64LE(0));
    if (8 + n > bytes.length) throw new Error(`${name}: not a model file (bad safetensors header length)`);
    return formatOfHeader(Buffer.from(bytes.buffer, bytes.byteOffset + 8, n).toString('utf8'), name);
  }
  const file = source;
  let header: string;
  try {
    header = await readSafetensorsHeaderText(file, (problem) => {
      throw new Error(`${file}: not a model file (${problem})`);
    });
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    if (err.syscall === 'open') throw new Error(`cannot open model ${file}: ${err.code ?? err.message}`);
    throw e;
  }
  return formatOfHeader(header, file);
}

type Loader = (source: SafetensorsSource) => Promise<AnomalyPredictor>;
const loaders = new Map<string, Loader>([
  [ANOSEG_FORMAT, (f) => AnoSegPredictor.load(f)],
  [DETECTOR_FORMAT, (f) => DetectorPredictor.load(f)],
  [PADIM_FORMAT, (f) => PadimPredictor.load(f)],
  [PATCHCORE_FORMAT, (f) => PatchcorePredictor.load(f)],
  [ENSEMBLE_FORMAT, (f) => EnsemblePredictor.load(f, loadSafetensorsPredictor)],
]);

/** The predictor of a safetensors model file (or of one embedded in another), dispatched on its format tag. */
export async function loadSafetensorsPredictor(source: SafetensorsSource): Promise<AnomalyPredictor> {
  const format = await modelFormat(source);
  const loader = loaders.get(format);
  if (!loader) {
    throw new Error(
      `${sourceName(source)}: unknown model format '${format}' (known: ${[...loaders.keys()].join(', ')})`,
    );
  }
  return loader(source);
}

/**
 * What a model file is, from its first bytes: a safetensors model (8-byte header length, then a JSON header) or an
 * ONNX model (a protobuf ModelProto, whose first field, ir_version, starts with byte 0x08). Anything else is refused
 * naming what it looks like.
 */
export async function modelFileKind(file: string): Promise<'safetensors' | 'onnx'> {
  let head: Buffer;
  try {
    const handle = await fs.open(file, 'r');
    try {
      head = Buffer.alloc(16);
      const { bytesRead } = await handle.read(head, 0, 16, 0);
      head = head.subarray(0, bytesRead);
    } finally {
      await handle.close();
    }
  } catch (e) {
    throw new Error(`cannot open model ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  if (head.length >= 9 && head[8] === 0x7b /* '{' */) return 'safetensors';
  if (head.length > 0 && head[0] === 0x08) return 'onnx';
  if (head.length < 9) throw new Error(`${file}: not a model file (too short), ${head.length} bytes`);
  const looks =
    head[0] === 0x89 && head[1] === 0x50
      ? 'it is a PNG image'
      : head[0] === 0xff && head[1] === 0xd8
        ? 'it is a JPEG image'
        : head[0] === 0x50 && head[1] === 0x4b
          ? 'it is a zip archive (a PyTorch .pt/.pth checkpoint?)'
          : head[0] === 0x7b || head[0] === 0x5b
            ? 'it is JSON text'
            : `it starts with bytes ${[...head.subarray(0, 8)].map((b) => b.toString(16).padStart(2, '0')).join(' ')}`;
  throw new Error(
    `${file}: not a model file: neither an anoseg.ts safetensors model (anoseg train / padim) nor an ONNX model ` +
      `(anoseg export); ${looks}`,
  );
}

export async function loadPredictor(file: string): Promise<AnomalyPredictor> {
  if ((await modelFileKind(file)) === 'onnx') {
    // ONNX Runtime is loaded only for ONNX models.
    const { OnnxPredictor } = await import('../onnx/predictor.js');
    return OnnxPredictor.load(file);
  }
  return loadSafetensorsPredictor(file);
}
