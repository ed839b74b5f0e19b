/**
 * Anomaly detector using AnoSeg's anomaly map (paper 3.4, Appendix A, Fig. 5 and 9).
 *
 * "The structure of the anomaly detector is the same as the AnoSeg structure except for the decoder that generates
 * the anomaly map": a generator (ResNet-18 encoder over concat(image, AnoSeg normal map, coordinate channels) and a
 * reconstruction decoder, Table 6) and a discriminator on concat(image, map) whose second-to-last layer is f(.).
 * The image score is eq. 5: alpha * MSE(f(x, A_Nor), f(x̂, Â)) + beta * MSE(x, x̂), A_Nor = all-ones map,
 * Â = AnoSeg's normal map of x (1 = normal), x̂ the detector's reconstruction.
 *
 * Table 5's variants are switches: the base model sees images only (no map input; its discriminator judges images),
 * "+ feature matching" adds L_fea, "+ input anomaly map" feeds the map to generator and discriminator, "+ anomaly
 * classification" adds L_cls.
 *
 * The model file 'anoseg.ts/anoseg+detector@1' holds the AnoSeg generator and the detector, so one file gives the
 * pixel map (from AnoSeg) and the image score (eq. 5); DetectorPredictor implements AnomalyPredictor.
 */
import { Tensor, noGrad, tidy } from '../../engine/index.js';
import {
  Module,
  ResNet18,
  joinStateDicts,
  loadSafetensors,
  saveSafetensors,
  sourceName,
  withoutPrefix,
  type SafetensorsSource,
} from '../../nn/index.js';
import type { Image } from '../../image/types.js';
import { tilingOf } from '../../image/tiles.js';
import {
  AnoSegGenerator,
  Decoder,
  Discriminator,
  validateArchitecture,
  withCoordinates,
  type AnoSegArchitecture,
} from '../anoseg/network.js';
import type { AnoSegModelMeta } from '../anoseg/model-file.js';
import { predictFitted } from '../../models/fitted-prediction.js';
import { anomalyScores } from '../../models/scoring.js';
import { detectorPair, detectorScore, normalMaskLike, type DetectorScoreWeights } from './losses.js';
import type { AnomalyPrediction, AnomalyPredictor, ModelInfo } from '../../models/predictor.js';
import { imagesToTensor, tensorToImages } from '../../models/image-tensor.js';

// ---------------------------------------------------------------------------------------------------------------
// Variants (Table 5)

export type DetectorVariant = 'base' | 'feature-matching' | 'map-input' | 'full';

export interface DetectorSwitches {
  /** Concatenate AnoSeg's map to the generator input and to the discriminator pairs ("+ input anomaly map"). */
  mapInput: boolean;
  /** Train the generator with L_fea ("+ feature matching loss"). */
  featureMatching: boolean;
  /** Train the discriminator with L_cls on synthetic anomalies ("+ anomaly classification loss"). */
  classification: boolean;
}

/** Table 5's columns, cumulative from left to right; 'full' is the paper's detector. */
export const DETECTOR_VARIANTS: Readonly<Record<DetectorVariant, Readonly<DetectorSwitches>>> = Object.freeze({
  base: Object.freeze({ mapInput: false, featureMatching: false, classification: false }),
  'feature-matching': Object.freeze({ mapInput: false, featureMatching: true, classification: false }),
  'map-input': Object.freeze({ mapInput: true, featureMatching: true, classification: false }),
  full: Object.freeze({ mapInput: true, featureMatching: true, classification: true }),
});

export const TABLE5_VARIANTS: readonly DetectorVariant[] = ['base', 'feature-matching', 'map-input', 'full'];

export const VARIANT_LABELS: Readonly<Record<DetectorVariant, string>> = Object.freeze({
  base: 'Base model',
  'feature-matching': '+ Feature matching loss',
  'map-input': '+ Input anomaly map',
  full: '+ Anomaly classification loss',
});

export function isDetectorVariant(v: string): v is DetectorVariant {
  return Object.prototype.hasOwnProperty.call(DETECTOR_VARIANTS, v);
}

export function variantSwitches(v: DetectorVariant): DetectorSwitches {
  if (!isDetectorVariant(v))
    throw new Error(`unknown detector variant '${String(v)}' (known: ${TABLE5_VARIANTS.join(', ')})`);
  return { ...DETECTOR_VARIANTS[v] };
}

// ---------------------------------------------------------------------------------------------------------------
// Networks

export interface DetectorArchitecture {
  /** Square input resolution (that of the AnoSeg model it sits on). */
  resolution: number;
  channels: number;
  /** Channel multiplier of Table 6. */
  width: number;
  /** Coordinate channels on the generator input (the AnoSeg structure, paper 3.3). */
  coordChannels: boolean;
  /** AnoSeg's map is part of the generator input and of the discriminator pairs. */
  mapInput: boolean;
  upsampling: AnoSegArchitecture['upsampling'];
}

/** The detector's architecture for an AnoSeg model: same resolution, channels, width and decoder upsampling. */
export function detectorArchitectureFor(
  anoseg: AnoSegArchitecture,
  mapInput: boolean,
  coordChannels = true,
): DetectorArchitecture {
  return {
    resolution: anoseg.resolution,
    channels: anoseg.channels,
    width: anoseg.width,
    coordChannels,
    mapInput,
    upsampling: anoseg.upsampling,
  };
}

function asAnoSegArchitecture(a: DetectorArchitecture): AnoSegArchitecture {
  return {
    resolution: a.resolution,
    channels: a.channels,
    width: a.width,
    coordChannels: a.coordChannels,
    reconstruction: true,
    upsampling: a.upsampling,
  };
}

export function validateDetectorArchitecture(a: DetectorArchitecture): void {
  validateArchitecture(asAnoSegArchitecture(a));
  if (typeof a.mapInput !== 'boolean' || typeof a.coordChannels !== 'boolean') {
    throw new Error('detector architecture: mapInput and coordChannels must be booleans');
  }
}

/** Generator of the detector: ResNet-18 encoder over concat(x, Â, coords) and AnoSeg's reconstruction decoder. */
export class DetectorGenerator extends Module {
  channelsLast = true;
  readonly encoder: ResNet18;
  readonly reconstructionDecoder: Decoder;

  constructor(readonly arch: DetectorArchitecture) {
    super();
    validateDetectorArchitecture(arch);
    const inChannels = arch.channels + (arch.mapInput ? 1 : 0) + (arch.coordChannels ? 2 : 0);
    this.encoder = this.registerModule('encoder', new ResNet18({ inChannels, width: arch.width }));
    this.reconstructionDecoder = this.registerModule(
      'reconstruction_decoder',
      new Decoder(this.encoder.outChannels, arch.channels, asAnoSegArchitecture(arch)),
    );
  }

  /** x [N, C, H, W] in [0, 1]; normalMap [N, 1, H, W] (1 = normal), required iff arch.mapInput. Returns x̂. */
  forward(x: Tensor, normalMap: Tensor | null): Tensor {
    if (this.arch.mapInput && !normalMap)
      throw new Error('DetectorGenerator: this detector needs the anomaly map as input');
    let input = this.arch.mapInput ? Tensor.cat([x, normalMap as Tensor], 1) : x;
    if (this.arch.coordChannels) input = withCoordinates(input);
    if (this.channelsLast) input = input.contiguous('channels_last');
    return this.reconstructionDecoder.forward(this.encoder.forward(input));
  }
}

/** Generator + discriminator of the detector; state names 'generator.*' and 'discriminator.*'. */
export class AnomalyDetector extends Module {
  readonly generator: DetectorGenerator;
  readonly discriminator: Discriminator;

  constructor(readonly arch: DetectorArchitecture) {
    super();
    this.generator = this.registerModule('generator', new DetectorGenerator(arch));
    this.discriminator = this.registerModule(
      'discriminator',
      new Discriminator(arch.channels + (arch.mapInput ? 1 : 0), arch.resolution, arch.width),
    );
  }

  /** The discriminator's view of a pair: concat(image, map), or the image alone without map input. */
  pair(image: Tensor, map: Tensor): Tensor {
    return detectorPair(image, this.arch.mapInput ? map : null);
  }

  /**
   * Eq. 5 for a batch (the caller chooses train/eval mode; use eval mode and noGrad for scoring).
   * x [N, C, H, W]; normalMap = AnoSeg's normal map Â [N, 1, H, W]. Returns scores [N] and the reconstruction.
   */
  scoreBatch(x: Tensor, normalMap: Tensor, w: DetectorScoreWeights): { scores: Tensor; reconstruction: Tensor } {
    return tidy(() => {
      const reconstruction = this.generator.forward(x, this.arch.mapInput ? normalMap : null);
      const real = this.discriminator.forward(this.pair(x, normalMaskLike(x))).features;
      const fake = this.discriminator.forward(this.pair(reconstruction, normalMap)).features;
      return { scores: detectorScore(real, fake, x, reconstruction, w), reconstruction };
    });
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Model file

export const DETECTOR_FORMAT = 'anoseg.ts/anoseg+detector@1';

export interface DetectorMeta {
  arch: DetectorArchitecture;
  variant: DetectorVariant;
  switches: DetectorSwitches;
  score: DetectorScoreWeights;
  /** Threshold on the eq. 5 score, chosen on validation data (Youden's J). */
  imageThreshold: number;
}

export interface DetectorModelMeta {
  /** The AnoSeg model's own metadata (architecture, map score settings, thresholds). */
  anoseg: AnoSegModelMeta;
  detector: DetectorMeta;
  facts: Record<string, string | number | boolean>;
}

export async function saveDetectorModel(
  file: string,
  anoseg: AnoSegGenerator,
  detector: AnomalyDetector,
  meta: DetectorModelMeta,
): Promise<void> {
  const tensors = joinStateDicts({ 'anoseg.generator': anoseg.stateDict(), detector: detector.stateDict() });
  await saveSafetensors(file, tensors, { format: DETECTOR_FORMAT, meta: JSON.stringify(meta) });
}

function parseDetectorMeta(file: string, raw: string | undefined): DetectorModelMeta {
  if (!raw) throw new Error(`${file}: model metadata is missing`);
  let meta: DetectorModelMeta;
  try {
    meta = JSON.parse(raw) as DetectorModelMeta;
  } catch {
    throw new Error(`${file}: model metadata is not valid JSON`);
  }
  if (
    !meta.anoseg?.arch ||
    !meta.detector?.arch ||
    typeof meta.detector.imageThreshold !== 'number' ||
    !meta.detector.score
  ) {
    throw new Error(`${file}: model metadata lacks the AnoSeg or detector settings`);
  }
  validateArchitecture(meta.anoseg.arch);
  validateDetectorArchitecture(meta.detector.arch);
  tilingOf(meta.anoseg.tiling, file);
  const a = meta.anoseg.arch;
  const d = meta.detector.arch;
  if (a.resolution !== d.resolution || a.channels !== d.channels) {
    throw new Error(
      `${file}: detector (${d.resolution} px, ${d.channels} ch) does not match AnoSeg (${a.resolution} px, ${a.channels} ch)`,
    );
  }
  return meta;
}

export interface LoadedDetectorModel {
  anoseg: AnoSegGenerator;
  detector: AnomalyDetector;
  meta: DetectorModelMeta;
}

/** Loads both networks (in eval mode) from a DETECTOR_FORMAT file. */
export async function loadDetectorModel(source: SafetensorsSource): Promise<LoadedDetectorModel> {
  const file = sourceName(source);
  const { tensors, metadata } = await loadSafetensors(source);
  let anoseg: AnoSegGenerator | null = null;
  let detector: AnomalyDetector | null = null;
  try {
    if (metadata.format !== DETECTOR_FORMAT) {
      throw new Error(`${file}: format '${metadata.format ?? 'none'}' is not ${DETECTOR_FORMAT}`);
    }
    const meta = parseDetectorMeta(file, metadata.meta);
    anoseg = new AnoSegGenerator(meta.anoseg.arch);
    detector = new AnomalyDetector(meta.detector.arch);
    try {
      anoseg.loadStateDict(withoutPrefix(tensors, 'anoseg.generator.'));
      detector.loadStateDict(withoutPrefix(tensors, 'detector.'));
    } catch (e) {
      throw new Error(`${file}: ${(e as Error).message}`);
    }
    anoseg.eval();
    detector.eval();
    return { anoseg, detector, meta };
  } catch (e) {
    anoseg?.dispose();
    detector?.dispose();
    throw e;
  } finally {
    for (const t of tensors.values()) t.dispose();
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Scoring and the predictor

export interface DetectorBatchScores {
  /** Anomaly maps (1 - AnoSeg normal map, plus AnoSeg's optional reconstruction term) at model resolution. */
  maps: Image[];
  /** Eq. 5 scores. */
  detectorScores: Float32Array;
  /** AnoSeg's own image scores (max of the smoothed map). */
  mapScores: Float32Array;
}

/** AnoSeg maps and both image scores for already-fitted inputs (same size, model channels). */
export function scoreDetectorBatch(
  anoseg: AnoSegGenerator,
  detector: AnomalyDetector,
  meta: DetectorModelMeta,
  inputs: readonly Image[],
): DetectorBatchScores {
  return noGrad(() =>
    tidy(() => {
      const x = imagesToTensor(inputs);
      const out = anoseg.forward(x);
      const { maps, imageScores } = anomalyScores(x, out.map, out.reconstruction, meta.anoseg.score);
      const { scores } = detector.scoreBatch(x, out.map, meta.detector.score);
      return {
        maps: tensorToImages(maps),
        detectorScores: scores.toFloat32Array(),
        mapScores: imageScores,
      };
    }),
  );
}

export interface DetectorPredictorOptions {
  /** 'detector' = eq. 5 (default); 'map' = fall back to AnoSeg's map score (max of the smoothed map). */
  score?: 'detector' | 'map';
  maxBatch?: number;
}

/** Pixel maps from AnoSeg, image scores from the detector (eq. 5) or, optionally, from the map. */
export class DetectorPredictor implements AnomalyPredictor {
  readonly info: ModelInfo;
  readonly scoreSource: 'detector' | 'map';
  private readonly maxBatch: number;

  constructor(
    private readonly anoseg: AnoSegGenerator,
    private readonly detector: AnomalyDetector,
    readonly meta: DetectorModelMeta,
    o: DetectorPredictorOptions = {},
  ) {
    this.scoreSource = o.score ?? 'detector';
    this.maxBatch = o.maxBatch ?? 8;
    this.info = {
      method: 'anoseg+detector',
      resolution: meta.anoseg.arch.resolution,
      channels: meta.anoseg.arch.channels,
      aspect: meta.anoseg.aspect,
      tiling: meta.anoseg.tiling ?? 'none',
      imageThreshold: this.scoreSource === 'detector' ? meta.detector.imageThreshold : meta.anoseg.imageThreshold,
      pixelThreshold: meta.anoseg.pixelThreshold,
      meta: { ...meta.facts, scoreSource: this.scoreSource, variant: meta.detector.variant },
    };
  }

  static async load(source: SafetensorsSource, o: DetectorPredictorOptions = {}): Promise<DetectorPredictor> {
    const { anoseg, detector, meta } = await loadDetectorModel(source);
    return new DetectorPredictor(anoseg, detector, meta, o);
  }

  /** Maps at model resolution and both scores for already-fitted inputs (used by evaluation). */
  scoreFitted(inputs: readonly Image[]): DetectorBatchScores & { scores: Float32Array } {
    const r = scoreDetectorBatch(this.anoseg, this.detector, this.meta, inputs);
    return { ...r, scores: this.scoreSource === 'detector' ? r.detectorScores : r.mapScores };
  }

  async predict(images: Image[]): Promise<AnomalyPrediction[]> {
    const { arch, aspect, tiling } = this.meta.anoseg;
    const input = { channels: arch.channels, resolution: arch.resolution, aspect, tiling };
    return predictFitted(images, input, this.maxBatch, (x) => this.scoreFitted(x));
  }

  dispose(): void {
    this.anoseg.dispose();
    this.detector.dispose();
  }
}
