/**
 * The AnoSeg model artefact: generator weights plus everything inference needs (architecture, input
 * handling, score settings, thresholds chosen on validation data) in one safetensors file.
 */
import { noGrad, tidy, type Tensor } from '../../engine/index.js';
import {
  loadSafetensors,
  prefixed,
  saveSafetensors,
  sourceName,
  withoutPrefix,
  type SafetensorsSource,
} from '../../nn/index.js';
import type { Image } from '../../image/types.js';
import type { FitAspect } from '../../image/io.js';
import { tilingOf, type Tiling } from '../../image/tiles.js';
import { predictFitted } from '../../models/fitted-prediction.js';
import { stretchedChunkPredictor } from '../../models/stretched-prediction.js';
import { AnoSegGenerator, validateArchitecture, type AnoSegArchitecture } from './network.js';
import { InferenceGenerator } from './inference.js';
import { reconstructionBlurOf, IMAGE_SCORE_SOURCES, anomalyScores, type ScoreOptions } from '../../models/scoring.js';
import type { AnomalyPrediction, AnomalyPredictor, ModelInfo } from '../../models/predictor.js';
import { imagesToTensor, tensorToImages } from '../../models/image-tensor.js';

export const ANOSEG_FORMAT = 'anoseg.ts/anoseg@1';

export interface AnoSegModelMeta {
  arch: AnoSegArchitecture;
  aspect: FitAspect;
  /** Absent in model files written before tiling existed: 'none'. */
  tiling?: Tiling;
  score: ScoreOptions;
  imageThreshold: number;
  pixelThreshold: number;
  /** Training facts shown by the model-info endpoint. */
  facts: Record<string, string | number | boolean>;
}

export async function saveAnoSegModel(file: string, generator: AnoSegGenerator, meta: AnoSegModelMeta): Promise<void> {
  const tensors = prefixed(generator.stateDict(), 'generator.');
  await saveSafetensors(file, tensors, { format: ANOSEG_FORMAT, meta: JSON.stringify(meta) });
}

function parseMeta(file: string, raw: string | undefined): AnoSegModelMeta {
  if (!raw) throw new Error(`${file}: model metadata is missing (not an AnoSeg model file?)`);
  let meta: AnoSegModelMeta;
  try {
    meta = JSON.parse(raw) as AnoSegModelMeta;
  } catch {
    throw new Error(`${file}: model metadata is not valid JSON`);
  }
  if (!meta.arch || !meta.score || typeof meta.imageThreshold !== 'number') {
    throw new Error(`${file}: model metadata lacks architecture, score settings or thresholds`);
  }
  validateArchitecture(meta.arch);
  const { sigma, reconstructionWeight, imageScore } = meta.score;
  const reconstructionBlur = reconstructionBlurOf(meta.score);
  if (
    ![sigma, reconstructionWeight, reconstructionBlur].every(
      (v) => typeof v === 'number' && Number.isFinite(v) && v >= 0,
    )
  )
    throw new Error(`${file}: score settings need a finite sigma, reconstruction weight and blur >= 0`);
  if (imageScore !== undefined && !(IMAGE_SCORE_SOURCES as readonly string[]).includes(imageScore))
    throw new Error(`${file}: unknown image score '${String(imageScore)}' (${IMAGE_SCORE_SOURCES.join(', ')})`);
  tilingOf(meta.tiling, file);
  return meta;
}

export async function loadAnoSegModel(
  source: SafetensorsSource,
): Promise<{ generator: AnoSegGenerator; meta: AnoSegModelMeta }> {
  const file = sourceName(source);
  const { tensors, metadata } = await loadSafetensors(source);
  try {
    if (metadata.format !== ANOSEG_FORMAT) {
      throw new Error(`${file}: format '${metadata.format ?? 'none'}' is not ${ANOSEG_FORMAT}`);
    }
    const meta = parseMeta(file, metadata.meta);
    const generator = new AnoSegGenerator(meta.arch);
    const state = withoutPrefix(tensors, 'generator.');
    try {
      generator.loadStateDict(state);
    } catch (e) {
      generator.dispose();
      throw new Error(`${file}: ${(e as Error).message}`);
    }
    generator.eval();
    return { generator, meta };
  } finally {
    for (const t of tensors.values()) t.dispose();
  }
}

/**
 * Runs the generator (or its folded inference form) on a fitted batch [N, C, res, res] and returns anomaly maps at
 * model resolution as a tensor + image scores. The folded form skips the reconstruction decoder when the score does
 * not use it. Call under noGrad; the maps belong to the caller's tidy scope.
 */
export function scoreTensor(
  generator: AnoSegGenerator | InferenceGenerator,
  x: Tensor,
  score: ScoreOptions,
): { maps: Tensor; scores: Float32Array } {
  const out =
    generator instanceof InferenceGenerator
      ? generator.forward(x, { mapOnly: !(score.reconstructionWeight > 0) })
      : generator.forward(x);
  const { maps, imageScores } = anomalyScores(x, out.map, out.reconstruction, score);
  return { maps, scores: imageScores };
}

/** scoreTensor on fitted images: maps at model resolution + image scores. */
export function scoreBatch(
  generator: AnoSegGenerator | InferenceGenerator,
  inputs: readonly Image[],
  score: ScoreOptions,
): { maps: Image[]; scores: Float32Array } {
  return noGrad(() =>
    tidy(() => {
      const { maps, scores } = scoreTensor(generator, imagesToTensor(inputs), score);
      return { maps: tensorToImages(maps), scores };
    }),
  );
}

export class AnoSegPredictor implements AnomalyPredictor {
  readonly info: ModelInfo;
  /** The generator with BatchNorm folded into its convolutions, built once here: what prediction runs. */
  readonly inference: InferenceGenerator;

  constructor(
    private readonly generator: AnoSegGenerator,
    readonly meta: AnoSegModelMeta,
    private readonly maxBatch = 8,
  ) {
    generator.eval();
    this.inference = InferenceGenerator.fromGenerator(generator);
    this.info = {
      method: 'anoseg',
      resolution: meta.arch.resolution,
      channels: meta.arch.channels,
      aspect: meta.aspect,
      tiling: meta.tiling ?? 'none',
      imageThreshold: meta.imageThreshold,
      pixelThreshold: meta.pixelThreshold,
      meta: meta.facts,
    };
  }

  static async load(source: SafetensorsSource): Promise<AnoSegPredictor> {
    const { generator, meta } = await loadAnoSegModel(source);
    return new AnoSegPredictor(generator, meta);
  }

  /** Anomaly maps at model resolution for already-fitted inputs (used by evaluation). */
  scoreFitted(inputs: readonly Image[]): { maps: Image[]; scores: Float32Array } {
    return scoreBatch(this.inference, inputs, this.meta.score);
  }

  async predict(images: Image[]): Promise<AnomalyPrediction[]> {
    const { arch, aspect, tiling } = this.meta;
    const input = { channels: arch.channels, resolution: arch.resolution, aspect, tiling };
    return predictFitted(
      images,
      input,
      this.maxBatch,
      (x) => this.scoreFitted(x),
      stretchedChunkPredictor(input, (x) => scoreTensor(this.inference, x, this.meta.score)),
    );
  }

  dispose(): void {
    this.inference.dispose();
    this.generator.dispose();
  }
}
