/**
 * ONNX export of the project's models, written by walking their nn Modules (Conv2d, ConvTranspose2d, BatchNorm2d,
 * ReLU, LeakyReLU, MaxPool2d, Upsample, Sequential, ResNet BasicBlock) with the weights read from libtorch.
 *
 * The graph maps a fitted input batch `image` [N, C, R, R] (float32 in [0, 1], the model's channels and square
 * resolution) to the anomaly map `anomaly_map` [N, 1, R, R] (higher = more anomalous) and the image score `score`
 * [N], computed exactly as the libtorch predictors do:
 *  - AnoSeg: 1 - normal map (+ weight * blur_2(mean_c |x - reconstruction|) where the score uses the
 *    reconstruction); score = max of the map blurred with the model's sigma.
 *  - AnoSeg + detector: AnoSeg's map; score = eq. 5 from the detector's reconstruction and discriminator features.
 *  - PaDiM: backbone embedding (layer1 | layer2, layer3 upsampled), the modelled channels, per-position Mahalanobis
 *    distance as batched matrix products, bilinear upsampling to R, Gaussian blur (scipy borders); score = max.
 * Gaussian blurs are two 1-D convolutions; their borders are Gather ops with precomputed source indices, so each
 * border rule (torch reflect / replicate, scipy reflect) is reproduced exactly. Channel conversion, fitting to the
 * square input and mapping the map back onto the image stay outside the graph and are described in its metadata.
 */
import { createRequire } from 'node:module';
import { Tensor, noGrad, tidy } from '../engine/index.js';
import {
  BatchNorm2d,
  Conv2d,
  ConvTranspose2d,
  LeakyReLU,
  MaxPool2d,
  ReLU,
  ResNet18,
  Sequential,
  Sigmoid,
  Upsample,
  type Module,
} from '../nn/index.js';
import { BasicBlock } from '../nn/resnet.js';
import type { F } from '../engine/index.js';
import { AnoSegGenerator, Decoder, withCoordinates } from '../methods/anoseg/network.js';
import { ANOSEG_FORMAT, AnoSegPredictor, loadAnoSegModel, type AnoSegModelMeta } from '../methods/anoseg/model-file.js';
import {
  DETECTOR_FORMAT,
  DetectorPredictor,
  loadDetectorModel,
  type AnomalyDetector,
  type DetectorModelMeta,
} from '../methods/detector/model.js';
import { modelFileKind, modelFormat } from '../methods/load.js';
import { blurBorder, reconstructionBlurOf } from '../models/scoring.js';
import { gaussianKernel1d, reflectIndex } from '../models/gaussian.js';
import { PADIM_FORMAT, PadimPredictor, type PadimModel } from '../methods/padim/model.js';
import { PATCHCORE_FORMAT } from '../methods/patchcore/model.js';
import { ENSEMBLE_FORMAT } from '../methods/ensemble/model.js';
import type { AnomalyPredictor, ModelInfo } from '../models/predictor.js';
import type { FittedScorer } from './check.js';
import { GraphBuilder, OnnxExportError, float, int, ints, str, type Attr } from './graph.js';
import { ONNX_INPUT, ONNX_MAP_OUTPUT, ONNX_SCORE_OUTPUT, onnxMetadata } from './model-file.js';

// src/onnx and dist/onnx both sit two levels below the package root
const PACKAGE_VERSION = (createRequire(import.meta.url)('../../package.json') as { version: string }).version;

/** The layer classes emitLayer writes (anything else is refused by name). */
export const EXPORTABLE_LAYERS = [
  'Sequential',
  'Conv2d',
  'ConvTranspose2d',
  'BatchNorm2d',
  'ReLU',
  'LeakyReLU',
  'Sigmoid',
  'MaxPool2d',
  'Upsample',
  'BasicBlock',
] as const;

export interface OnnxExport {
  /** The encoded ModelProto. */
  bytes: Uint8Array;
  nodeCount: number;
  /** Nodes per operator type. */
  operators: ReadonlyMap<string, number>;
}

const pair = (p: F.Pair | undefined, fallback: number): [number, number] =>
  p === undefined ? [fallback, fallback] : typeof p === 'number' ? [p, p] : [p[0], p[1]];

/** A module tensor as an initializer, stored once however often the module is applied (the discriminator). */
function weight(g: GraphBuilder, t: Tensor, name: string): string {
  return g.shared(t, () => g.floats(name, t.toFloat32Array(), t.shape));
}

/** ONNX `pads` of a symmetric 2-D padding: begin and end of each spatial axis. */
const pads2d = ([ph, pw]: [number, number]): Attr => ints([ph, pw, ph, pw]);

const stridesAndPads = (o: { stride?: F.Pair; padding?: F.Pair }): Record<string, Attr> => ({
  strides: ints(pair(o.stride, 1)),
  pads: pads2d(pair(o.padding, 0)),
});

/** Conv / ConvTranspose of a layer's weight (kernel size from its shape) and optional bias. */
function emitConvolution(
  g: GraphBuilder,
  op: 'Conv' | 'ConvTranspose',
  layer: Conv2d | ConvTranspose2d,
  x: string,
  path: string,
  attrs: Record<string, Attr>,
): string {
  const [, , kh, kw] = layer.weight.shape;
  const inputs = [x, weight(g, layer.weight, `${path}.weight`)];
  if (layer.bias) inputs.push(weight(g, layer.bias, `${path}.bias`));
  return g.op(op, inputs, { kernel_shape: ints([kh, kw]), ...attrs }, path);
}

/**
 * Writes one layer (and, for containers, its children) applied to the value `x`; returns the output value.
 * `path` is the layer's state-dict prefix, used for initializer names and in errors.
 */
export function emitLayer(g: GraphBuilder, layer: Module, x: string, path: string): string {
  if (layer.training) {
    throw new OnnxExportError(`cannot export '${path}' in training mode (BatchNorm would use batch statistics)`);
  }
  if (layer instanceof Sequential) {
    return layer.layers.reduce((y, l, i) => emitLayer(g, l, y, path ? `${path}.${i}` : String(i)), x);
  }
  if (layer instanceof Conv2d) {
    const o = layer.options;
    return emitConvolution(g, 'Conv', layer, x, path, {
      ...stridesAndPads(o),
      dilations: ints(pair(o.dilation, 1)),
      group: int(o.groups ?? 1),
    });
  }
  if (layer instanceof ConvTranspose2d) {
    const o = layer.options;
    return emitConvolution(g, 'ConvTranspose', layer, x, path, {
      ...stridesAndPads(o),
      output_padding: ints(pair(o.outputPadding, 0)),
    });
  }
  if (layer instanceof BatchNorm2d) {
    return g.op(
      'BatchNormalization',
      [
        x,
        weight(g, layer.weight, `${path}.weight`),
        weight(g, layer.bias, `${path}.bias`),
        weight(g, layer.runningMean, `${path}.running_mean`),
        weight(g, layer.runningVar, `${path}.running_var`),
      ],
      { epsilon: float(layer.eps) },
      path,
    );
  }
  if (layer instanceof ReLU) return g.op('Relu', [x], {}, path);
  if (layer instanceof LeakyReLU) return g.op('LeakyRelu', [x], { alpha: float(layer.slope) }, path);
  if (layer instanceof Sigmoid) return g.op('Sigmoid', [x], {}, path);
  if (layer instanceof MaxPool2d) {
    const kernel = pair(layer.kernel, 1);
    return g.op(
      'MaxPool',
      [x],
      {
        kernel_shape: ints(kernel),
        strides: ints(layer.stride === undefined ? kernel : pair(layer.stride, 1)),
        pads: pads2d(pair(layer.padding, 0)),
      },
      path,
    );
  }
  if (layer instanceof Upsample) {
    if (!Number.isInteger(layer.scale) || layer.scale < 1) {
      throw new OnnxExportError(`cannot export '${path}' (Upsample): scale ${layer.scale} is not a positive integer`);
    }
    return emitResize(g, x, layer.scale, layer.mode, path);
  }
  if (layer instanceof BasicBlock) {
    let y = emitLayer(g, layer.conv1, x, `${path}.conv1`);
    y = g.op('Relu', [emitLayer(g, layer.bn1, y, `${path}.bn1`)]);
    y = emitLayer(g, layer.bn2, emitLayer(g, layer.conv2, y, `${path}.conv2`), `${path}.bn2`);
    const shortcut = layer.downsample ? emitLayer(g, layer.downsample, x, `${path}.downsample`) : x;
    return g.op('Relu', [g.op('Add', [y, shortcut])], {}, `${path}.out`);
  }
  throw new OnnxExportError(
    `cannot export '${path || 'the model'}' (${layer.constructor.name}): the ONNX exporter writes ` +
      `${EXPORTABLE_LAYERS.join(', ')} only`,
  );
}

/**
 * F.interpolate by an integer factor: nearest = torch's floor(dst * in / out) (ONNX asymmetric + floor),
 * bilinear = align_corners=False with the source clamped at the border (ONNX half_pixel).
 */
function emitResize(g: GraphBuilder, x: string, scale: number, mode: 'nearest' | 'bilinear', base: string): string {
  const scales = g.floats(`${base}.scales`, Float32Array.from([1, 1, scale, scale]), [4]);
  const attrs: Record<string, Attr> =
    mode === 'nearest'
      ? { mode: str('nearest'), coordinate_transformation_mode: str('asymmetric'), nearest_mode: str('floor') }
      : { mode: str('linear'), coordinate_transformation_mode: str('half_pixel') };
  return g.op('Resize', [x, '', scales], attrs, base);
}

/** The ResNet18's stem activation (before max pooling) and the outputs of its first `stages` layers. */
function emitResNetStages(g: GraphBuilder, net: ResNet18, x: string, path: string, stages: number): string[] {
  const [conv, bn, relu, pool] = net.stem.layers;
  let y = emitLayer(g, conv, x, `${path}.stem.0`);
  y = emitLayer(g, relu, emitLayer(g, bn, y, `${path}.stem.1`), `${path}.stem.2`);
  const out = [y];
  y = emitLayer(g, pool, y, `${path}.stem.3`);
  for (let i = 0; i < stages; i++) {
    y = emitLayer(g, net.layers[i], y, `${path}.layer${i + 1}`);
    out.push(y);
  }
  return out;
}

/** Decoder.forward: `skips[i]` is concatenated after the i-th upsampling, then the sigmoid. */
function emitDecoder(g: GraphBuilder, decoder: Decoder, z: string, skips: readonly string[], path: string): string {
  const l = decoder.body.layers;
  let y = emitLayer(g, l[0], z, `${path}.body.0`);
  for (let i = 0; i < 5; i++) {
    y = emitLayer(g, l[1 + 2 * i], y, `${path}.body.${1 + 2 * i}`);
    if (i < skips.length) y = g.op('Concat', [y, skips[i]], { axis: int(1) });
    y = emitLayer(g, l[2 + 2 * i], y, `${path}.body.${2 + 2 * i}`);
  }
  return g.op('Sigmoid', [emitLayer(g, l[11], y, `${path}.body.11`)]);
}

type Border = 'reflect' | 'replicate' | 'scipy-reflect';

/** Source index of padded position i (-r..n-1+r) under each border rule. */
function borderIndex(i: number, n: number, border: Border): number {
  if (border === 'scipy-reflect') return reflectIndex(i, n);
  if (border === 'replicate') return Math.min(Math.max(i, 0), n - 1);
  return i < 0 ? -i : i >= n ? 2 * (n - 1) - i : i;
}

/** Separable Gaussian blur of [N, 1, H, W] (the kernel of gaussianKernel1d), padding by gathering border rows. */
function emitGaussianBlur(g: GraphBuilder, x: string, sigma: number, size: number, border: Border, base: string) {
  const k = Float32Array.from(gaussianKernel1d(sigma));
  const r = (k.length - 1) / 2;
  const idx = g.int64s(
    `${base}.pad_index`,
    Array.from({ length: size + 2 * r }, (_, i) => borderIndex(i - r, size, border)),
  );
  const kh = g.floats(`${base}.kernel_h`, k, [1, 1, k.length, 1]);
  const kw = g.floats(`${base}.kernel_w`, k, [1, 1, 1, k.length]);
  const v = g.op('Conv', [g.op('Gather', [x, idx], { axis: int(2) }), kh], {}, `${base}.vertical`);
  return g.op('Conv', [g.op('Gather', [v, idx], { axis: int(3) }), kw], {}, `${base}.horizontal`);
}

/** Names the two graph outputs. */
function nameOutputs(g: GraphBuilder, map: string, score: string): void {
  g.rename(map, ONNX_MAP_OUTPUT);
  g.rename(score, ONNX_SCORE_OUTPUT);
}

/** Per-image maximum of a [N, 1, H, W] map. */
const imageMax = (g: GraphBuilder, map: string): string =>
  g.op('ReduceMax', [map], { axes: ints([1, 2, 3]), keepdims: int(0) });

/** A [1, ...dims] constant repeated along the batch dimension of `like`. */
function batchConstant(g: GraphBuilder, like: string, name: string, data: Float32Array, dims: number[]): string {
  const value = g.floats(name, data, [1, ...dims]);
  const batch = g.op('Slice', [g.op('Shape', [like]), g.int64s('zero', [0]), g.int64s('one', [1])], {}, 'batch');
  const shape = g.op('Concat', [batch, g.int64s(`${name}_dims`, dims)], { axis: int(0) });
  return g.op('Expand', [value, shape], {}, `${name}_batch`);
}

/** withCoordinates: the coordinate ramps (x then y) appended to `v` [N, C, R, R]. */
function emitWithCoordinates(g: GraphBuilder, v: string, r: number): string {
  const coords = noGrad(() =>
    tidy(() =>
      withCoordinates(Tensor.zeros([1, 1, r, r]))
        .toFloat32Array()
        .slice(r * r),
    ),
  );
  return g.op('Concat', [v, batchConstant(g, v, 'coordinates', coords, [2, r, r])], { axis: int(1) });
}

/** Per-image mean of (a - b)^2 over every non-batch axis of [N, C, H, W] (perImageMse). */
function emitPerImageMse(g: GraphBuilder, a: string, b: string, base: string): string {
  const d = g.op('Sub', [a, b]);
  return g.op('ReduceMean', [g.op('Mul', [d, d])], { axes: ints([1, 2, 3]), keepdims: int(0) }, base);
}

function encodeGraph(g: GraphBuilder, info: ModelInfo, source: string, score: object): OnnxExport {
  const r = info.resolution;
  const bytes = g.encode({
    inputs: [{ name: ONNX_INPUT, dims: ['N', info.channels, r, r] }],
    outputs: [
      { name: ONNX_MAP_OUTPUT, dims: ['N', 1, r, r] },
      { name: ONNX_SCORE_OUTPUT, dims: ['N'] },
    ],
    metadata: onnxMetadata(info, source, score),
    docString: `${info.method} anomaly model exported by anoseg.ts: ${ONNX_INPUT} [N, ${info.channels}, ${r}, ${r}] -> ${ONNX_MAP_OUTPUT}, ${ONNX_SCORE_OUTPUT}`,
    producerVersion: PACKAGE_VERSION,
  });
  return { bytes, nodeCount: g.nodeCount, operators: new Map(g.operatorCounts) };
}

/** The AnoSeg generator (eval mode) with its score: normal map -> anomaly map and image score. */
interface AnoSegValues {
  /** The generator's normal map (1 = normal). */
  normal: string;
  /** The anomaly map and the image score of the model's score settings. */
  map: string;
  score: string;
}

/** AnoSeg's generator and score (anomalyScores) on the graph input `x`. */
function emitAnoSeg(g: GraphBuilder, x: string, generator: AnoSegGenerator, meta: AnoSegModelMeta): AnoSegValues {
  const { arch, score } = meta;
  const r = arch.resolution;
  const input = arch.coordChannels ? emitWithCoordinates(g, x, r) : x;
  const stages = emitResNetStages(g, generator.encoder, input, 'encoder', 4);
  const z = stages[4];
  const skips = arch.skips ? [stages[3], stages[2], stages[1], stages[0], input] : [];
  const normal = emitDecoder(g, generator.mapDecoder, z, skips, 'map_decoder');
  const anomaly = g.op('Sub', [g.floats('one_f', Float32Array.of(1), []), normal], {}, 'anomaly');
  let map = anomaly;
  if (usesReconstruction(generator, meta)) {
    const recon = emitDecoder(g, generator.reconstructionDecoder!, z, [], 'reconstruction_decoder');
    const err = g.op('ReduceMean', [g.op('Abs', [g.op('Sub', [x, recon])])], { axes: ints([1]), keepdims: int(1) });
    const blur = reconstructionBlurOf(score);
    const blurred =
      blur > 0 ? emitGaussianBlur(g, err, blur, r, blurBorder(radiusOf(blur), r, r), 'reconstruction_blur') : err;
    const weighted = g.op('Mul', [
      blurred,
      g.floats('reconstruction_weight', Float32Array.of(score.reconstructionWeight), []),
    ]);
    map = g.op('Add', [map, weighted]);
  }
  const scored = score.imageScore === 'map' ? anomaly : map;
  const smoothed =
    score.sigma > 0
      ? emitGaussianBlur(g, scored, score.sigma, r, blurBorder(radiusOf(score.sigma), r, r), 'score_blur')
      : scored;
  return { normal, map, score: imageMax(g, smoothed) };
}

const usesReconstruction = (generator: AnoSegGenerator, meta: AnoSegModelMeta): boolean =>
  meta.score.reconstructionWeight > 0 && generator.reconstructionDecoder !== null;

/** The map score's description for the metadata. */
function anosegScoreFacts(generator: AnoSegGenerator, meta: AnoSegModelMeta): Record<string, unknown> {
  const { sigma, reconstructionWeight } = meta.score;
  const blur = reconstructionBlurOf(meta.score);
  const error = 'mean_channels |image - reconstruction|';
  return {
    anomalyMap: usesReconstruction(generator, meta)
      ? `1 - normal_map + ${reconstructionWeight} * ${blur > 0 ? `gaussian_blur_${blur}(${error})` : error}`
      : '1 - normal_map',
    mapScore: `max of gaussian_blur_${sigma}(${meta.score.imageScore === 'map' ? '1 - normal_map' : 'anomaly_map'})`,
    sigma,
    reconstructionWeight,
  };
}

/** The AnoSeg generator (eval mode) with its score: normal map -> anomaly map and image score. */
export function exportAnoSeg(generator: AnoSegGenerator, meta: AnoSegModelMeta, info: ModelInfo): OnnxExport {
  const g = new GraphBuilder();
  const { map, score } = emitAnoSeg(g, g.input(ONNX_INPUT), generator, meta);
  nameOutputs(g, map, score);
  return encodeGraph(g, info, ANOSEG_FORMAT, { ...anosegScoreFacts(generator, meta), imageScore: 'mapScore' });
}

/**
 * AnoSeg's map with the anomaly detector's image score (eq. 5): alpha * MSE(f(x, 1), f(x̂, Â)) + beta * MSE(x, x̂),
 * f = the discriminator's second-to-last layer, x̂ = the detector generator's reconstruction of (x, Â, coordinates).
 */
export function exportDetector(
  anoseg: AnoSegGenerator,
  detector: AnomalyDetector,
  meta: DetectorModelMeta,
  info: ModelInfo,
): OnnxExport {
  const g = new GraphBuilder();
  const x = g.input(ONNX_INPUT);
  const { normal, map } = emitAnoSeg(g, x, anoseg, meta.anoseg);
  const { arch, score } = meta.detector;
  const r = arch.resolution;
  let input = arch.mapInput ? g.op('Concat', [x, normal], { axis: int(1) }) : x;
  if (arch.coordChannels) input = emitWithCoordinates(g, input, r);
  const z = emitResNetStages(g, detector.generator.encoder, input, 'detector.generator.encoder', 4)[4];
  const recon = emitDecoder(g, detector.generator.reconstructionDecoder, z, [], 'detector.generator.reconstruction');
  const pair = (image: string, pairMap: string): string =>
    arch.mapInput ? g.op('Concat', [image, pairMap], { axis: int(1) }) : image;
  const ones = batchConstant(g, x, 'normal_mask', new Float32Array(r * r).fill(1), [1, r, r]);
  const body = detector.discriminator.body;
  const real = emitLayer(g, body, pair(x, ones), 'detector.discriminator.body');
  const fake = emitLayer(g, body, pair(recon, normal), 'detector.discriminator.body');
  const features = g.op('Mul', [
    emitPerImageMse(g, real, fake, 'feature_mse'),
    g.floats('alpha', Float32Array.of(score.alpha), []),
  ]);
  const image = g.op('Mul', [
    emitPerImageMse(g, x, recon, 'image_mse'),
    g.floats('beta', Float32Array.of(score.beta), []),
  ]);
  nameOutputs(g, map, g.op('Add', [features, image], {}, 'detector_score'));
  return encodeGraph(g, info, DETECTOR_FORMAT, {
    ...anosegScoreFacts(anoseg, meta.anoseg),
    imageScore: `${score.alpha} * mse(f(image, 1), f(reconstruction, normal_map)) + ${score.beta} * mse(image, reconstruction)`,
    detector: { variant: meta.detector.variant, ...score },
  });
}

const radiusOf = (sigma: number): number => (gaussianKernel1d(sigma).length - 1) / 2;

/** PaDiM: backbone embedding, modelled channels, per-position Mahalanobis distance, upsampling and blur. */
export function exportPadim(model: PadimModel, info: ModelInfo): OnnxExport {
  const { backbone, stats, meta } = model;
  const r = meta.resolution;
  const g = new GraphBuilder();
  const x = g.input(ONNX_INPUT);
  const rgb = meta.channels === 1 ? g.op('Concat', [x, x, x], { axis: int(1) }, 'gray_to_rgb') : x;
  const mean = g.floats('normalize.mean', Float32Array.from(backbone.meta.mean), [1, 3, 1, 1]);
  const std = g.floats('normalize.std', Float32Array.from(backbone.meta.std), [1, 3, 1, 1]);
  const normalized = g.op('Div', [g.op('Sub', [rgb, mean]), std], {}, 'normalized');
  const [, f1, f2, f3] = emitResNetStages(g, backbone.net, normalized, 'backbone', 3);
  const embedding = g.op(
    'Concat',
    [f1, emitResize(g, f2, 2, 'nearest', 'layer2_up'), emitResize(g, f3, 4, 'nearest', 'layer3_up')],
    { axis: int(1) },
    'embedding',
  );
  const { dims: d, height: h, width: w } = stats;
  const p = h * w;
  const selected = g.op('Gather', [embedding, g.int64s('channel_indices', [...stats.channelIndices])], {
    axis: int(1),
  });
  // [N, d, h, w] -> [P, N, d]: one batched matrix product per position
  const flat = g.op('Reshape', [selected, g.int64s('flat_shape', [0, d, p])]);
  const byPosition = g.op('Transpose', [flat], { perm: ints([2, 0, 1]) });
  const meanByPosition = new Float32Array(p * d);
  for (let i = 0; i < d; i++) for (let q = 0; q < p; q++) meanByPosition[q * d + i] = stats.mean[i * p + q];
  const delta = g.op('Sub', [byPosition, g.floats('padim.mean', meanByPosition, [p, 1, d])], {}, 'delta');
  const inv = g.floats('padim.inv_covariance', stats.invCovariance, [p, d, d]);
  const quad = g.op(
    'ReduceSum',
    [g.op('Mul', [g.op('MatMul', [delta, inv]), delta]), g.int64s('last_axis', [2])],
    { keepdims: int(0) },
    'distance_squared',
  );
  const dist = g.op('Sqrt', [g.op('Max', [quad, g.floats('zero_f', Float32Array.of(0), [])])], {}, 'distance');
  const distMap = g.op('Reshape', [
    g.op('Transpose', [dist], { perm: ints([1, 0]) }),
    g.int64s('map_shape', [0, 1, h, w]),
  ]);
  if (r % h !== 0 || r / h !== r / w) throw new OnnxExportError(`PaDiM: ${h}x${w} positions do not scale to ${r} px`);
  const up = emitResize(g, distMap, r / h, 'bilinear', 'distance_up');
  const map = meta.sigma > 0 ? emitGaussianBlur(g, up, meta.sigma, r, 'scipy-reflect', 'blur') : up;
  nameOutputs(g, map, imageMax(g, map));
  return encodeGraph(g, info, PADIM_FORMAT, {
    anomalyMap: `gaussian_blur_${meta.sigma}(bilinear_up(mahalanobis distance per position))`,
    imageScore: 'max of anomaly_map',
    sigma: meta.sigma,
  });
}

/** An export together with the libtorch predictor it came from (for the check; the caller disposes it). */
export interface ModelExport {
  onnx: OnnxExport;
  reference: AnomalyPredictor & FittedScorer;
}

/** Loads a model file and exports it; AnoSeg and PaDiM models are exportable. */
export async function exportModelFile(file: string): Promise<ModelExport> {
  if ((await modelFileKind(file)) === 'onnx') throw new OnnxExportError(`${file} is an ONNX model already`);
  const format = await modelFormat(file);
  if (format === ANOSEG_FORMAT) {
    const { generator, meta } = await loadAnoSegModel(file);
    const reference = new AnoSegPredictor(generator, meta);
    return withReference(reference, () => exportAnoSeg(generator, meta, reference.info));
  }
  if (format === PADIM_FORMAT) {
    const reference = await PadimPredictor.load(file);
    return withReference(reference, () => exportPadim(reference.model, reference.info));
  }
  if (format === DETECTOR_FORMAT) {
    const { anoseg, detector, meta } = await loadDetectorModel(file);
    const reference = new DetectorPredictor(anoseg, detector, meta);
    return withReference(reference, () => exportDetector(anoseg, detector, meta, reference.info));
  }
  const exportable = `export supports ${ANOSEG_FORMAT}, ${DETECTOR_FORMAT} and ${PADIM_FORMAT}`;
  if (format === ENSEMBLE_FORMAT) {
    throw new OnnxExportError(
      `${file}: ${exportable}; an ensemble is not exportable as one graph (export its members: the model files it was fused from)`,
    );
  }
  if (format === PATCHCORE_FORMAT) {
    throw new OnnxExportError(`${file}: ${exportable}; PatchCore models are not exportable yet (use the model file)`);
  }
  throw new OnnxExportError(`${file}: cannot export '${format}' models (${exportable})`);
}

function withReference(reference: AnomalyPredictor & FittedScorer, run: () => OnnxExport): ModelExport {
  try {
    return { onnx: run(), reference };
  } catch (e) {
    reference.dispose();
    throw e;
  }
}
