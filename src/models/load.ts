/**
 * Opens any model file the project writes and returns its predictor, dispatching on the file's format tag.
 */
import { promises as fs } from 'node:fs';

import type { AnomalyPredictor } from './predictor.js';
import { ANOSEG_FORMAT, AnoSegPredictor } from './anoseg-model.js';
import { PADIM_FORMAT, PadimPredictor } from './padim.js';
import { DETECTOR_FORMAT, DetectorPredictor } from './detector.js';

/** Reads only the safetensors header to learn the model kind. */
export async function modelFormat(file: string): Promise<string> {
  let handle: fs.FileHandle;
  try {
    handle = await fs.open(file, 'r');
  } catch (e) {
    throw new Error(`cannot open model ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  try {
    const head = Buffer.alloc(8);
    const { bytesRead } = await handle.read(head, 0, 8, 0);
    if (bytesRead < 8) throw new Error(`${file}: not a model file (too short)`);
    const n = Number(head.readBigUInt64LE(0));
    const size = (await handle.stat()).size;
    if (n > 100 * 1024 * 1024 || 8 + n > size)
      throw new Error(`${file}: not a model file (bad safetensors header length)`);
    const header = Buffer.alloc(n);
    await handle.read(header, 0, n, 8);
    let parsed: { __metadata__?: { format?: string } };
    try {
      parsed = JSON.parse(header.toString('utf8')) as { __metadata__?: { format?: string } };
    } catch {
      throw new Error(`${file}: not a model file (header is not JSON)`);
    }
    const format = parsed.__metadata__?.format;
    if (!format) throw new Error(`${file}: safetensors file without a model format tag (not written by anoseg.ts?)`);
    return format;
  } finally {
    await handle.close();
  }
}

type Loader = (file: string) => Promise<AnomalyPredictor>;
const loaders = new Map<string, Loader>([
  [ANOSEG_FORMAT, (f) => AnoSegPredictor.load(f)],
  [DETECTOR_FORMAT, (f) => DetectorPredictor.load(f)],
  [PADIM_FORMAT, (f) => PadimPredictor.load(f)],
]);

export async function loadPredictor(file: string): Promise<AnomalyPredictor> {
  const format = await modelFormat(file);
  const loader = loaders.get(format);
  if (!loader) throw new Error(`${file}: unknown model format '${format}' (known: ${[...loaders.keys()].join(', ')})`);
  return loader(file);
}
