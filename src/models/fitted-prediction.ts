/**
 * The part of prediction every model shares: convert channels, fit each image to the square model input,
 * score in batches, and map each anomaly map back onto its original image.
 */
import type { Image } from '../image/types.js';
import { fitImage, resizeImage, rgbToGray, unfitMap, type FitAspect } from '../image/io.js';
import { cropTiles, stitchTiles, tileRects, type Tiling } from '../image/tiles.js';
import type { AnomalyPrediction, AnomalyPredictor, ModelInfo } from './predictor.js';

/** Converts a 1/3/4-channel image to the model's channel count (1: luma; 3: gray replicated; alpha dropped). */
export function toChannels(img: Image, channels: number): Image {
  const n = img.height * img.width;
  const rgb = img.channels === 4 ? { ...img, channels: 3, data: img.data.subarray(0, 3 * n) } : img;
  if (rgb.channels === channels) return rgb;
  if (channels === 1) return rgbToGray(rgb);
  const data = new Float32Array(3 * n);
  for (let c = 0; c < 3; c++) data.set(rgb.data.subarray(0, n), c * n);
  return { channels: 3, height: img.height, width: img.width, data };
}

export interface ModelInput {
  channels: number;
  resolution: number;
  aspect: FitAspect;
  /** Near-square tiles of elongated images, each fitted on its own (src/image/tiles.ts); absent = 'none'. */
  tiling?: Tiling;
}

type FittedScores = { maps: Image[]; scores: ArrayLike<number> };

/** Fits each image of a chunk to the model input (channels, square size, aspect). */
function fitChunk(chunk: readonly Image[], input: ModelInput): ReturnType<typeof fitImage>[] {
  return chunk.map((img) => fitImage(toChannels(img, input.channels), input.resolution, input.aspect));
}

/** Maps each model-resolution map back onto its original image. */
function mapBack(
  chunk: readonly Image[],
  fitted: ReturnType<typeof fitImage>[],
  { maps, scores }: FittedScores,
): AnomalyPrediction[] {
  return fitted.map((f, i) => {
    const back = unfitMap(maps[i], f.transform);
    const { height, width } = chunk[i];
    return {
      score: scores[i],
      map: back.height === height && back.width === width ? back : resizeImage(back, height, width),
    };
  });
}

/**
 * Predicts a chunk of equally sized images under the 'stretch' aspect in one go (the libtorch path,
 * stretchedChunkPredictor in stretched-prediction.ts; this module stays free of libtorch for ONNX deployments).
 */
export type UniformChunkPredictor = (chunk: readonly Image[]) => AnomalyPrediction[];

/** Most values (32-bit floats, 64 MiB) of images stacked into one tensor by the libtorch path. */
export const STACKED_INPUT_BUDGET = 1 << 24;

/**
 * Predictions of images split into their tiles: `predictTiles` predicts every tile of the batch, each image's tile
 * maps are put together again and its score is its highest tile's.
 */
export async function predictTiled(
  images: readonly Image[],
  tiling: Tiling,
  predictTiles: (tiles: Image[]) => Promise<AnomalyPrediction[]>,
): Promise<AnomalyPrediction[]> {
  const rects = images.map((img) => tileRects(img.height, img.width, tiling));
  const preds = await predictTiles(images.flatMap((img, i) => cropTiles(img, rects[i])));
  let at = 0;
  return images.map((img, i) => {
    const mine = preds.slice(at, (at += rects[i].length));
    return {
      score: Math.max(...mine.map((p) => p.score)),
      map: stitchTiles(
        mine.map((p) => p.map),
        rects[i],
        img.height,
        img.width,
      ),
    };
  });
}

/**
 * Predictions for any images: with tiling, of their tiles (predictTiled); fitted to the model input in chunks of maxBatch, scored, maps put back onto the
 * images. With `predictUniform`, a chunk of equally sized images under the 'stretch' aspect goes to it whole (in
 * pieces of at most stackBudget input values); otherwise fitImage / unfitMap do it image by image.
 */
export async function predictFitted(
  images: readonly Image[],
  input: ModelInput,
  maxBatch: number,
  scoreFitted: (inputs: Image[]) => FittedScores,
  predictUniform?: UniformChunkPredictor,
  stackBudget = STACKED_INPUT_BUDGET,
): Promise<AnomalyPrediction[]> {
  if (input.tiling && input.tiling !== 'none') {
    const whole = { ...input, tiling: 'none' as const };
    return predictTiled(images, input.tiling, (tiles) =>
      predictFitted(tiles, whole, maxBatch, scoreFitted, predictUniform, stackBudget),
    );
  }
  const out: AnomalyPrediction[] = [];
  for (let start = 0; start < images.length; start += maxBatch) {
    // A turn of the event loop between chunks: libtorch handles are freed by finalisers that only run then, and
    // without the turns one call over many images fragmented the heap (the AnoSeg trainer's diagnostics ran out of
    // memory that way); the thread also answers other work (a service's health checks) between chunks. This is the
    // engine's releaseDeferred(), written out because this module stays free of libtorch (ONNX deployments).
    if (start > 0) await new Promise((resolve) => setImmediate(resolve));
    const chunk = images.slice(start, start + maxBatch);
    const uniform = chunk.every((img) => img.height === chunk[0].height && img.width === chunk[0].width);
    if (predictUniform && input.aspect === 'stretch' && uniform) {
      // large photographs go in smaller pieces: a piece's stacked input stays within the budget
      const perImage = input.channels * chunk[0].height * chunk[0].width;
      const piece = Math.max(1, Math.floor(stackBudget / perImage));
      for (let at = 0; at < chunk.length; at += piece) out.push(...predictUniform(chunk.slice(at, at + piece)));
      continue;
    }
    const fitted = fitChunk(chunk, input);
    out.push(...mapBack(chunk, fitted, scoreFitted(fitted.map((f) => f.image))));
  }
  return out;
}

/** predictFitted for a model that scores asynchronously (an ONNX Runtime session). */
export async function predictFittedAsync(
  images: readonly Image[],
  input: ModelInput,
  maxBatch: number,
  scoreFitted: (inputs: Image[]) => Promise<FittedScores>,
): Promise<AnomalyPrediction[]> {
  if (input.tiling && input.tiling !== 'none') {
    const whole = { ...input, tiling: 'none' as const };
    return predictTiled(images, input.tiling, (tiles) => predictFittedAsync(tiles, whole, maxBatch, scoreFitted));
  }
  const out: AnomalyPrediction[] = [];
  for (let start = 0; start < images.length; start += maxBatch) {
    const chunk = images.slice(start, start + maxBatch);
    const fitted = fitChunk(chunk, input);
    out.push(...mapBack(chunk, fitted, await scoreFitted(fitted.map((f) => f.image))));
  }
  return out;
}

/** A model that scores inputs already fitted to its square resolution (PaDiM, PatchCore). */
export interface FittedModel {
  readonly meta: ModelInput & { imageThreshold: number; pixelThreshold: number };
  scoreFitted(inputs: readonly Image[]): { maps: Image[]; scores: Float32Array };
  dispose(): void;
}

/**
 * The AnomalyPredictor of a FittedModel: any image is converted and fitted, scored in batches of `maxBatch`, and
 * its map put back onto it (maps and scores: higher = more anomalous).
 */
export class FittedModelPredictor<M extends FittedModel> implements AnomalyPredictor {
  readonly info: ModelInfo;

  constructor(
    readonly model: M,
    method: string,
    facts: ModelInfo['meta'],
    private readonly maxBatch = 8,
  ) {
    const m = model.meta;
    this.info = {
      method,
      resolution: m.resolution,
      channels: m.channels,
      aspect: m.aspect,
      tiling: m.tiling ?? 'none',
      imageThreshold: m.imageThreshold,
      pixelThreshold: m.pixelThreshold,
      meta: facts,
    };
  }

  /** Maps at model resolution for inputs already fitted to it (used by training and evaluation). */
  scoreFitted(inputs: readonly Image[]): { maps: Image[]; scores: Float32Array } {
    return this.model.scoreFitted(inputs);
  }

  async predict(images: Image[]): Promise<AnomalyPrediction[]> {
    const { resolution, aspect, channels, tiling } = this.model.meta;
    return predictFitted(images, { channels, resolution, aspect, tiling }, this.maxBatch, (x) =>
      this.model.scoreFitted(x),
    );
  }

  dispose(): void {
    this.model.dispose();
  }
}
