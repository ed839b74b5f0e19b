/**
 * What an exported ONNX file says about itself (ModelProto.metadata_props), so a consumer needs nothing else: the
 * model facts and thresholds (ModelInfo), the preprocessing that turns an image into the graph input, how the map
 * goes back onto the image, and how the score and verdict are formed. readOnnxModelFile checks a file's bytes
 * (protobuf structure, format tag, graph input and outputs) before any runtime sees them.
 */
import onnxProto from 'onnx-proto';
import type { FitAspect } from '../image/io.js';
import { TILINGS, type Tiling } from '../image/tiles.js';
import type { ModelInfo } from '../models/predictor.js';

const { onnx } = onnxProto;

export const ONNX_MODEL_FORMAT = 'anoseg.ts/onnx@1';

/** Names of the graph's input and outputs. */
export const ONNX_INPUT = 'image';
export const ONNX_MAP_OUTPUT = 'anomaly_map';
export const ONNX_SCORE_OUTPUT = 'score';

const KEY = {
  format: 'anoseg.format',
  source: 'anoseg.source_format',
  info: 'anoseg.info',
  preprocessing: 'anoseg.preprocessing',
  score: 'anoseg.score',
} as const;

/** The recipe between a decoded image and the graph input, and back (mirrors predictFitted and src/image/io.ts). */
export function preprocessingRecipe(info: ModelInfo): Record<string, unknown> {
  return {
    input: 'float32 NCHW, samples scaled to [0, 1] (8-bit / 255, 16-bit / 65535)',
    channels: info.channels,
    channelConversion: 'alpha dropped; 3 -> 1 channel: 0.299 R + 0.587 G + 0.114 B; 1 -> 3 channels: gray replicated',
    resolution: info.resolution,
    aspect: info.aspect ?? 'stretch',
    tiling: info.tiling ?? 'none',
    tiles:
      'long-side: the image is cut across its longer side into n tiles at floor(k * long / n), n = 1 while ' +
      'long / short < sqrt(2), 2 while < sqrt(6), 3 while < sqrt(12), ...; each tile is fitted and scored as an ' +
      'image, the maps put back in place, the score is the largest tile score; none: the whole image',
    fit: {
      stretch: 'resize to R x R',
      pad: 'resize so the longer side is R (other side rounded), centred on R x R, border = nearest edge pixel',
      crop: 'centred square of side min(H, W) (offsets floored), resized to R x R',
      resize: 'bilinear, align_corners=False, no antialiasing: source = max(0, (dst + 0.5) * in / out - 0.5)',
    },
    mapBack:
      'the part of anomaly_map covering the image is resized (same bilinear rule) onto the image (the crop square ' +
      'for crop); pixels outside a crop take the nearest mapped value; then resized to the image size if needed',
  };
}

export function onnxMetadata(info: ModelInfo, sourceFormat: string, score: object): Record<string, string> {
  return {
    [KEY.format]: ONNX_MODEL_FORMAT,
    [KEY.source]: sourceFormat,
    [KEY.info]: JSON.stringify(info),
    [KEY.preprocessing]: JSON.stringify(preprocessingRecipe(info)),
    [KEY.score]: JSON.stringify({
      ...score,
      verdict: 'defective when score >= imageThreshold, else good',
      mask: 'anomaly_map >= pixelThreshold',
    }),
  };
}

/** The facts of an exported model read back from its bytes. */
export interface OnnxModelFile {
  info: ModelInfo & { aspect: FitAspect; tiling: Tiling };
  sourceFormat: string;
  opset: number;
  inputName: string;
  outputNames: string[];
  metadata: Record<string, string>;
}

/** First bytes of a file as hex, to say what it was when it is not a model. */
export function hexHead(bytes: Uint8Array, n = 8): string {
  return Array.from(bytes.subarray(0, n), (b) => b.toString(16).padStart(2, '0')).join(' ');
}

/**
 * Decodes and checks an exported model file. Errors name the file and the problem: truncated or corrupt
 * protobuf, no graph, not written by `anoseg export`, missing or malformed metadata.
 */
export function readOnnxModelFile(bytes: Uint8Array, file: string): OnnxModelFile {
  let model: onnxProto.onnx.ModelProto;
  try {
    model = onnx.ModelProto.decode(bytes);
  } catch (e) {
    throw new Error(
      `${file}: truncated or corrupt ONNX file (${bytes.length} bytes; protobuf decoding failed: ${(e as Error).message})`,
    );
  }
  const graph = model.graph;
  if (!graph?.node?.length) {
    throw new Error(`${file}: ONNX file without a graph (${bytes.length} bytes; truncated or not an ONNX model)`);
  }
  const metadata: Record<string, string> = {};
  for (const p of model.metadataProps) if (p.key) metadata[p.key] = p.value ?? '';
  if (metadata[KEY.format] !== ONNX_MODEL_FORMAT) {
    throw new Error(
      `${file}: ONNX model without the anoseg.ts metadata '${KEY.format}: ${ONNX_MODEL_FORMAT}' ` +
        `(found ${metadata[KEY.format] === undefined ? 'none' : `'${metadata[KEY.format]}'`}); ` +
        `only models written by 'anoseg export' carry the preprocessing and thresholds needed ` +
        `(a file cut short before its metadata reads like this too: ${bytes.length} bytes)`,
    );
  }
  let info: ModelInfo;
  try {
    info = JSON.parse(metadata[KEY.info] ?? '') as ModelInfo;
  } catch {
    throw new Error(`${file}: ONNX metadata '${KEY.info}' is missing or not valid JSON`);
  }
  const bad = (what: string): never => {
    throw new Error(`${file}: ONNX metadata '${KEY.info}' has ${what}`);
  };
  if (!info || typeof info !== 'object') bad('no model info');
  if (!(Number.isInteger(info.resolution) && info.resolution > 0)) bad(`resolution ${String(info.resolution)}`);
  if (info.channels !== 1 && info.channels !== 3) bad(`channels ${String(info.channels)}`);
  for (const k of ['imageThreshold', 'pixelThreshold'] as const) {
    if (typeof info[k] !== 'number' || !Number.isFinite(info[k])) bad(`no finite ${k}`);
  }
  const aspect = info.aspect ?? 'stretch';
  if (!['stretch', 'pad', 'crop'].includes(aspect)) bad(`aspect '${aspect}'`);
  if (info.tiling !== undefined && !(TILINGS as readonly string[]).includes(info.tiling))
    bad(`tiling '${info.tiling}'`);
  const opset = Number(model.opsetImport.find((o) => !o.domain)?.version ?? 0);
  return {
    info: { ...info, aspect: aspect as FitAspect, tiling: (info.tiling ?? 'none') as Tiling, meta: info.meta ?? {} },
    sourceFormat: metadata[KEY.source] ?? 'unknown',
    opset,
    inputName: graph.input?.[0]?.name ?? '',
    outputNames: (graph.output ?? []).map((o) => o.name ?? ''),
    metadata,
  };
}
