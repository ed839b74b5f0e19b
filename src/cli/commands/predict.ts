/** `anoseg predict`: anomaly maps, heatmaps, overlays and scores for images or folders. */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { isImageFile, openImageFolder } from '../../data/dataset.js';
import { MAP_MAX_SIDE, MODEL_DECODE_MAX_SIDE } from '../../image/bounded.js';
import { ImageReadError } from '../../image/io.js';
import type { AnomalyPredictor } from '../../models/predictor.js';
import { predictImageFile, type PredictFileOptions } from '../../models/predict-file.js';
import { writeFileAtomic } from '../../util/atomic.js';
import { mapAhead } from '../../util/map-ahead.js';
import { MAP_FORMATS } from '../choices.js';
import {
  UsageError,
  choice,
  maxSide,
  parseCommand,
  text,
  usage,
  type Command,
  type CommandSpec,
  type Options,
} from '../options.js';
import { openPredictor, workersOption } from '../predictor-workers.js';

export const PREDICT = {
  name: 'predict',
  summary: 'anomaly maps, heatmaps, overlays and scores for images or folders',
  positionals: 'IMAGE_OR_FOLDER...',
  about: `Writes per image <name>_map.tiff (float anomaly map, higher = more anomalous) and/or <name>_map.png (16-bit),
<name>_heatmap.png, <name>_overlay.png, and scores.csv (path, score, verdict at the model's threshold). Folders are
read recursively; outputs keep their sub-folders. Large images are decoded straight to at most --decode-max-side px
on the longer side for the model; the map is written at the input's size up to --map-max-side px on the longer side;
heatmap and overlay at the decoded size.`,
  options: {
    model: text('MODEL', 'model file (.safetensors or .onnx)', { required: true }),
    out: text('DIR', 'output folder', { default: 'predictions' }),
    format: choice(MAP_FORMATS, 'map files: float TIFF, 16-bit PNG or both', { default: 'tiff', synopsis: true }),
    'decode-max-side': maxSide('longer side images are decoded at, at most, for the model', MODEL_DECODE_MAX_SIDE),
    'map-max-side': maxSide('longer side the map is written at, at most', MAP_MAX_SIDE),
    workers: workersOption('worker threads predicting the next images while this thread decodes and writes', 0),
  },
} satisfies CommandSpec<Options>;

export interface PredictInvocation {
  model: string;
  out: string;
  inputs: string[];
  format: NonNullable<PredictFileOptions['format']>;
  decodeMaxSide: number | null;
  mapMaxSide: number | null;
  workers: number;
}

/** `anoseg predict ARGS` resolved without running anything. */
export function resolvePredict(args: string[]): PredictInvocation {
  const { values: v, positionals } = parseCommand(PREDICT, args);
  if (positionals.length === 0) throw new UsageError(`no input images given\n\n${usage(PREDICT)}`);
  return {
    model: v.model as string,
    out: v.out ?? 'predictions',
    inputs: positionals,
    format: v.format ?? 'tiff',
    decodeMaxSide: v['decode-max-side'] === undefined ? MODEL_DECODE_MAX_SIDE : v['decode-max-side'],
    mapMaxSide: v['map-max-side'] === undefined ? MAP_MAX_SIDE : v['map-max-side'],
    workers: v.workers ?? 0,
  };
}

/** Input files with their output name: the path relative to the given folder, so sub-folders never collide. */
async function expandInputs(inputs: string[]): Promise<{ file: string; rel: string }[]> {
  const files: { file: string; rel: string }[] = [];
  for (const p of inputs) {
    let st;
    try {
      st = await fs.stat(p);
    } catch {
      throw new UsageError(`input not found: ${p}`);
    }
    if (st.isDirectory()) {
      for (const f of await openImageFolder(p, { recursive: true })) files.push({ file: f, rel: path.relative(p, f) });
    } else if (isImageFile(p)) files.push({ file: p, rel: path.basename(p) });
    else throw new UsageError(`not an image file (png, jpg, bmp, tif): ${p}`);
  }
  return files;
}

const sizes = (s: { height: number; width: number }): string => `${s.width}x${s.height}`;

async function run(args: string[]): Promise<void> {
  const o = resolvePredict(args);
  const files = await expandInputs(o.inputs);
  const predictor = await openPredictor(o.model, o.workers);
  if (o.decodeMaxSide !== null && o.decodeMaxSide < predictor.info.resolution) {
    predictor.dispose();
    throw new UsageError(
      `invalid value for --decode-max-side: ${o.decodeMaxSide} is below the model resolution ${predictor.info.resolution}`,
    );
  }
  try {
    const failures = await predictAll(o, files, predictor);
    process.stderr.write(
      `wrote ${files.length - failures} prediction(s) to ${o.out}${failures ? `, ${failures} unreadable file(s) skipped` : ''}\n`,
    );
    // A batch that skips some files succeeds; one that could read none of them is a failure a script must see.
    if (failures === files.length) throw new Error(`none of the ${files.length} input image(s) could be read`);
  } finally {
    // a pool's worker threads would keep the process alive after an error
    predictor.dispose();
  }
}

/** Predicts every file in order and writes scores.csv; returns how many unreadable files were skipped. */
async function predictAll(
  o: PredictInvocation,
  files: { file: string; rel: string }[],
  predictor: AnomalyPredictor,
): Promise<number> {
  const lines = ['path,score,verdict'];
  let failures = 0;
  // Streaming: each image decoded within a bounded size and released once written, so folders of any size fit in
  // memory; with --workers N, N + 1 images are in flight (every worker busy, one decoded ahead).
  const predictOne = async ({ file, rel }: { file: string; rel: string }) => {
    try {
      const options = { format: o.format, decodeMaxSide: o.decodeMaxSide, mapMaxSide: o.mapMaxSide };
      return await predictImageFile(predictor, file, path.join(o.out, rel.replace(/\.[^.]+$/, '')), options);
    } catch (err) {
      if (err instanceof ImageReadError) return err;
      throw err;
    }
  };
  let index = 0;
  for await (const r of mapAhead(files, o.workers + 1, predictOne)) {
    const { file } = files[index++];
    if (r instanceof ImageReadError) {
      failures++;
      process.stderr.write(`skipped ${file}: ${r.reason}\n`);
      continue;
    }
    if (r.decoded.height !== r.source.height || r.decoded.width !== r.source.width) {
      process.stderr.write(
        `${file}: ${sizes(r.source)} decoded at ${sizes(r.decoded)} for the model (longer side <= ${String(o.decodeMaxSide)}); ` +
          `map written at ${sizes(r.map)}, heatmap and overlay at ${sizes(r.decoded)}\n`,
      );
    } else if (r.map.height !== r.source.height || r.map.width !== r.source.width) {
      process.stderr.write(
        `${file}: ${sizes(r.source)}, map written at ${sizes(r.map)} (longer side <= ${String(o.mapMaxSide)})\n`,
      );
    }
    lines.push(`${JSON.stringify(file)},${r.score.toFixed(6)},${r.verdict}`);
    process.stdout.write(`${file}\t${r.score.toFixed(4)}\t${r.verdict}\n`);
  }
  await writeFileAtomic(path.join(o.out, 'scores.csv'), `${lines.join('\n')}\n`);
  return failures;
}

export const predictCommand: Command = { spec: PREDICT, run };
