/**
 * A convolutional feature extractor for PaDiM: the project's ResNet18 (3 input channels, configurable width) with
 * its input handling (grayscale replicated to RGB, alpha dropped, per-channel mean / std normalisation) and a small
 * safetensors file format for its weights.
 *
 * Only the stem and layer1..layer3 are used (PaDiM's embedding is built from layer1..layer3, strides 4 / 8 / 16),
 * so only those are stored: layer4 holds ~75% of ResNet18's weights and is freed right after construction.
 *
 * File format 'anoseg.ts/backbone@1': safetensors with the ResNet18 state dict (torchvision names: stem.0.weight,
 * layer1.0.conv1.weight, ...; no layer4 entries) and metadata { format, meta: JSON(BackboneMeta) }. The same
 * tensors, prefixed, are embedded in PaDiM model files (see backboneTensors / FeatureBackbone.fromTensors).
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { F, Tensor, manualSeed, noGrad, tidy } from '../engine/index.js';
import {
  ResNet18,
  loadSafetensors,
  prefixed,
  saveSafetensors,
  sourceName,
  withoutPrefix,
  type SafetensorsSource,
} from '../nn/index.js';
import type { Image } from '../image/types.js';
import { toChannels } from './fitted-prediction.js';
import { imagesToTensor } from './image-tensor.js';

export const BACKBONE_FORMAT = 'anoseg.ts/backbone@1';

/** How the weights came about (shown in model info, checked by nothing). */
export type BackboneTraining =
  | { kind: 'random'; seed: number }
  | {
      kind: 'formula';
      loss: 'direct' | 'indirect';
      steps: number;
      batch: number;
      size: number;
      seed: number;
      bases: string;
      /** The backbone file training started from (per-category adaptation), when not random. */
      init?: string;
      minutes: number;
      /** Loss on the fixed evaluation batch at the end of training. */
      finalEvalLoss: number;
      trainedAt: string;
    };

export interface BackboneMeta {
  arch: 'resnet18';
  /** ResNet18 channel multiplier (1 = 64-128-256-512). */
  width: number;
  /** Per-channel (RGB) input normalisation: x' = (x - mean) / std, x in [0, 1]. */
  mean: [number, number, number];
  std: [number, number, number];
  training: BackboneTraining;
}

/** Default normalisation of a random-init backbone (roughly the mean / spread of natural and industrial images). */
export const DEFAULT_NORMALISATION = { mean: [0.45, 0.45, 0.45], std: [0.25, 0.25, 0.25] } as const;

function checkMeta(meta: BackboneMeta, where: string): void {
  const bad = (why: string): never => {
    throw new Error(`${where}: bad backbone metadata: ${why}`);
  };
  if (!meta || typeof meta !== 'object') bad('not an object');
  if (meta.arch !== 'resnet18') bad(`unknown arch '${String(meta.arch)}'`);
  if (!(typeof meta.width === 'number' && meta.width > 0 && meta.width <= 4)) bad(`width ${meta.width}`);
  for (const key of ['mean', 'std'] as const) {
    const v = meta[key];
    if (!Array.isArray(v) || v.length !== 3 || !v.every((x) => typeof x === 'number' && Number.isFinite(x))) {
      bad(`${key} must be 3 finite numbers`);
    }
  }
  if (!meta.std.every((s) => s > 0)) bad('std must be > 0');
  if (!meta.training || (meta.training.kind !== 'random' && meta.training.kind !== 'formula')) bad('training kind');
}

const isLayer4 = (name: string): boolean => name.startsWith('layer4.');

/**
 * ResNet18 feature extractor (stem + layer1..layer3) with its input normalisation. Owns native memory: dispose().
 */
export class FeatureBackbone {
  readonly net: ResNet18;
  readonly meta: BackboneMeta;

  constructor(meta: BackboneMeta) {
    checkMeta(meta, 'FeatureBackbone');
    this.meta = structuredClone(meta);
    this.net = new ResNet18({ inChannels: 3, width: meta.width });
    // layer4 is never run (features stop at layer3): free its weights now. Its tensors stay registered in the
    // ResNet18 but every method here skips them; disposing twice is harmless.
    this.net.layers[3].dispose();
    this.net.eval();
  }

  /** A random-init backbone (He init, BatchNorm at its identity running statistics), reproducible from seed. */
  static random(
    width: number,
    seed: number,
    norm: { mean: readonly number[]; std: readonly number[] } = DEFAULT_NORMALISATION,
  ): FeatureBackbone {
    if (!Number.isInteger(seed) || seed < 0) throw new Error(`backbone seed must be an integer >= 0, got ${seed}`);
    manualSeed(seed);
    return new FeatureBackbone({
      arch: 'resnet18',
      width,
      mean: [...norm.mean] as [number, number, number],
      std: [...norm.std] as [number, number, number],
      training: { kind: 'random', seed },
    });
  }

  /** Channels of layer1, layer2, layer3. */
  get featureChannels(): [number, number, number] {
    const [a, b, c] = this.net.channels;
    return [a, b, c];
  }

  /** PaDiM embedding size: layer1 + layer2 + layer3 channels. */
  get embeddingDims(): number {
    return this.featureChannels.reduce((s, c) => s + c, 0);
  }

  /** Trainable parameters (layer4 excluded). */
  parameters(): Tensor[] {
    return this.net
      .namedParameters()
      .filter(([n]) => !isLayer4(n))
      .map(([, p]) => p);
  }

  /** Parameters and buffers by name, layer4 excluded (the tensors are the module's own, not copies). */
  stateDict(): Map<string, Tensor> {
    return new Map([...this.net.stateDict()].filter(([n]) => !isLayer4(n)));
  }

  /** Copies a state (as from stateDict) into the network; every entry must be present with its shape. */
  loadStateDict(state: Map<string, Tensor>): void {
    const own = this.stateDict();
    const missing = [...own.keys()].filter((k) => !state.has(k));
    const unexpected = [...state.keys()].filter((k) => !own.has(k));
    if (missing.length || unexpected.length) {
      const parts = [
        missing.length
          ? `missing ${missing.slice(0, 4).join(', ')}${missing.length > 4 ? ` (+${missing.length - 4})` : ''}`
          : '',
        unexpected.length
          ? `unexpected ${unexpected.slice(0, 4).join(', ')}${unexpected.length > 4 ? ` (+${unexpected.length - 4})` : ''}`
          : '',
      ].filter(Boolean);
      throw new Error(`backbone weights do not fit a width-${this.meta.width} ResNet18: ${parts.join('; ')}`);
    }
    this.net.loadStateDict(state, false);
  }

  train(mode = true): this {
    this.net.train(mode);
    return this;
  }

  eval(): this {
    return this.train(false);
  }

  /** Stacks same-sized images (1, 3 or 4 channels, values in [0, 1]) into a normalised [N, 3, H, W] tensor. */
  prepare(images: readonly Image[]): Tensor {
    return tidy(() => this.normalize(imagesToTensor(images.map((img) => toChannels(img, 3)))));
  }

  /** (x - mean) / std per channel of a [N, 3, H, W] tensor with values in [0, 1]. */
  normalize(x: Tensor): Tensor {
    if (x.ndim !== 4 || x.shape[1] !== 3)
      throw new Error(`FeatureBackbone.normalize: expected [N, 3, H, W], got [${x.shape}]`);
    return tidy(() => {
      const mean = Tensor.from(Float32Array.from(this.meta.mean), [1, 3, 1, 1]);
      const std = Tensor.from(Float32Array.from(this.meta.std), [1, 3, 1, 1]);
      return x.sub(mean).div(std);
    });
  }

  /** Outputs of layer1, layer2, layer3 (strides 4, 8, 16) for a normalised [N, 3, H, W] input. */
  features(x: Tensor): [Tensor, Tensor, Tensor] {
    return tidy(() => {
      const y0 = this.net.stem.forward(x);
      const f1 = this.net.layers[0].forward(y0);
      const f2 = this.net.layers[1].forward(f1);
      const f3 = this.net.layers[2].forward(f2);
      return [f1, f2, f3] as [Tensor, Tensor, Tensor];
    });
  }

  /**
   * PaDiM embedding of a normalised batch: layer1 | layer2 | layer3 features, layer2 and layer3 upsampled (nearest,
   * as PaDiM's patch replication) to layer1's resolution and concatenated: [N, embeddingDims, H/4, W/4].
   */
  embed(x: Tensor): Tensor {
    return noGrad(() =>
      tidy(() => {
        const [f1, f2, f3] = this.features(x);
        const size: [number, number] = [f1.shape[2], f1.shape[3]];
        return Tensor.cat([f1, F.interpolate(f2, size, 'nearest'), F.interpolate(f3, size, 'nearest')], 1);
      }),
    );
  }

  /** The weights by name (with `prefix`): the module's own tensors, not copies; do not dispose them. */
  tensors(prefix = ''): Map<string, Tensor> {
    return prefixed(this.stateDict(), prefix);
  }

  /** Builds a backbone from metadata and tensors named `prefix` + state-dict name (other names are ignored). */
  static fromTensors(
    meta: BackboneMeta,
    tensors: Map<string, Tensor>,
    prefix = '',
    where = 'backbone',
  ): FeatureBackbone {
    checkMeta(meta, where);
    const backbone = new FeatureBackbone(meta);
    const state = withoutPrefix(tensors, prefix);
    try {
      backbone.loadStateDict(state);
    } catch (e) {
      backbone.dispose();
      throw new Error(`${where}: ${(e as Error).message}`);
    }
    backbone.eval();
    return backbone;
  }

  /** Writes the backbone file (atomically); `training` replaces the recorded training facts. */
  async save(file: string, training: BackboneTraining = this.meta.training): Promise<void> {
    const meta: BackboneMeta = { ...this.meta, training };
    checkMeta(meta, file);
    await saveSafetensors(file, this.tensors(), { format: BACKBONE_FORMAT, meta: JSON.stringify(meta) });
  }

  /** Reads a backbone file; rejects other formats, bad metadata and weights of the wrong shape, naming the file. */
  static async load(file: string): Promise<FeatureBackbone> {
    const { tensors, metadata } = await loadSafetensors(file);
    try {
      if (metadata.format !== BACKBONE_FORMAT) {
        throw new Error(
          `${file}: format '${metadata.format ?? 'none'}' is not ${BACKBONE_FORMAT} (not a backbone file)`,
        );
      }
      let meta: BackboneMeta;
      try {
        meta = JSON.parse(metadata.meta ?? '') as BackboneMeta;
      } catch {
        throw new Error(`${file}: backbone metadata is missing or not valid JSON`);
      }
      return FeatureBackbone.fromTensors(meta, tensors, '', file);
    } finally {
      for (const t of tensors.values()) t.dispose();
    }
  }

  dispose(): void {
    this.net.dispose();
  }
}

/** The formula-pretrained backbone shipped with the project. */
export const FORMULA_BACKBONE_FILE = 'assets/formula-backbone.safetensors';

/** Finds the shipped backbone by walking up from this module (works from src/ and from dist/). */
export function formulaBackbonePath(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 5; i++) {
    const candidate = path.join(dir, FORMULA_BACKBONE_FILE);
    if (existsSync(candidate)) return candidate;
    dir = path.dirname(dir);
  }
  throw new Error(
    `the formula-pretrained backbone ${FORMULA_BACKBONE_FILE} is not installed (run 'anoseg pretrain', see assets/README.md)`,
  );
}

/**
 * The backbone a feature method is fitted on: 'random' (random-init ResNet18, width `width`, seeded), 'formula'
 * (the shipped formula-pretrained checkpoint) or the path of a backbone file; with a label for logs and facts.
 */
export async function openBackbone(
  spec: string,
  width: number,
  seed: number,
): Promise<{ backbone: FeatureBackbone; label: string }> {
  if (spec === 'random')
    return { backbone: FeatureBackbone.random(width, seed), label: `random (width ${width}, seed ${seed})` };
  const file = spec === 'formula' ? formulaBackbonePath() : spec;
  return { backbone: await FeatureBackbone.load(file), label: path.resolve(file) };
}

/**
 * Reads a model file built on a FeatureBackbone (PaDiM, PatchCore): checks the format, parses the metadata, reads the
 * method's own tensors (`read`, before any network is built), then builds the backbone from the 'backbone.*' tensors
 * and the model (`create`). Every error names the file; the file's tensors are freed afterwards.
 */
export async function loadBackboneModelFile<Meta extends { backbone: BackboneMeta }, Parts, M>(
  source: SafetensorsSource,
  o: {
    format: string;
    /** The method's name in messages ('PaDiM'). */
    method: string;
    checkMeta: (meta: Meta, file: string) => void;
    read: (tensors: Map<string, Tensor>, meta: Meta) => Parts;
    create: (backbone: FeatureBackbone, parts: Parts, meta: Meta) => M;
  },
): Promise<M> {
  const file = sourceName(source);
  const { tensors, metadata } = await loadSafetensors(source);
  try {
    if (metadata.format !== o.format) {
      throw new Error(
        `${file}: format '${metadata.format ?? 'none'}' is not ${o.format} (not a ${o.method} model file)`,
      );
    }
    let meta: Meta;
    try {
      meta = JSON.parse(metadata.meta ?? '') as Meta;
    } catch {
      throw new Error(`${file}: ${o.method} model metadata is missing or not valid JSON`);
    }
    o.checkMeta(meta, file);
    const parts = o.read(tensors, meta);
    const backbone = FeatureBackbone.fromTensors(meta.backbone, tensors, 'backbone.', file);
    try {
      return o.create(backbone, parts, meta);
    } catch (e) {
      backbone.dispose();
      throw new Error(`${file}: ${(e as Error).message}`);
    }
  } finally {
    for (const t of tensors.values()) t.dispose();
  }
}
