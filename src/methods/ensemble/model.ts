/**
 * An ensemble of trained models in one file: each member's map and image score are standardised with the mean and
 * standard deviation they have on held-out normal training images, then added with the member's weights (one for
 * the map, one for the image score). AnoSeg draws outlines, PaDiM separates good from defective parts better on
 * textures it was never tuned for; on comparable scales their sum keeps most of each (README, "Quality").
 *
 * File: safetensors, format ENSEMBLE_FORMAT; member k is embedded whole, as the bytes of its own model file, in the
 * uint8 tensor `member.k`, so every member loads exactly as it would from its own file.
 */
import { Tensor } from '../../engine/index.js';
import { resizeImage } from '../../image/io.js';
import type { Image } from '../../image/types.js';
import type { AnomalyPrediction, AnomalyPredictor, ModelInfo, PredictOptions } from '../../models/predictor.js';
import { loadSafetensors, saveSafetensors, sourceName, type SafetensorsSource } from '../../nn/index.js';

export const ENSEMBLE_FORMAT = 'anoseg.ts/ensemble@1';

/** How one member enters the sum: its weights and the normal statistics that put it on a common scale. */
export interface EnsembleMember {
  /** The member's method as its predictor reports it ('anoseg', 'padim', ...). */
  method: string;
  /** Weight of the member's standardised map in the ensemble map (0 = not in the map). */
  mapWeight: number;
  /** Weight of the member's standardised image score in the ensemble score (0 = not in the score). */
  scoreWeight: number;
  pixelMean: number;
  pixelStd: number;
  imageMean: number;
  imageStd: number;
}

export interface EnsembleMeta {
  members: EnsembleMember[];
  imageThreshold: number;
  pixelThreshold: number;
  /** Training facts shown by the model-info endpoint. */
  facts: Record<string, string | number | boolean>;
}

/** Loads an embedded member; the caller supplies it (the loader registry of src/methods/load.ts). */
export type MemberLoader = (source: SafetensorsSource) => Promise<AnomalyPredictor>;

function finitePositive(v: unknown): boolean {
  return typeof v === 'number' && Number.isFinite(v) && v > 0;
}

/** Throws naming the file unless the metadata describes at least one member with usable weights and statistics. */
export function checkEnsembleMeta(meta: EnsembleMeta, file: string): void {
  if (!Array.isArray(meta.members) || meta.members.length === 0) {
    throw new Error(`${file}: ensemble metadata lists no members`);
  }
  meta.members.forEach((m, k) => {
    const numbers = [m.mapWeight, m.scoreWeight, m.pixelMean, m.imageMean];
    if (!numbers.every((v) => typeof v === 'number' && Number.isFinite(v)) || m.mapWeight < 0 || m.scoreWeight < 0) {
      throw new Error(`${file}: ensemble member ${k} has missing, negative or non-finite weights or means`);
    }
    if (!finitePositive(m.pixelStd) || !finitePositive(m.imageStd)) {
      throw new Error(`${file}: ensemble member ${k} has a non-positive standard deviation`);
    }
  });
  if (!meta.members.some((m) => m.mapWeight > 0) || !meta.members.some((m) => m.scoreWeight > 0)) {
    throw new Error(`${file}: an ensemble needs a member with a map weight and one with a score weight`);
  }
  if (!Number.isFinite(meta.imageThreshold) || !Number.isFinite(meta.pixelThreshold)) {
    throw new Error(`${file}: ensemble thresholds are missing`);
  }
}

/** The weighted sum of standardised member predictions for one image (maps brought to the image's size). */
export function combinePredictions(
  predictions: readonly AnomalyPrediction[],
  members: readonly EnsembleMember[],
  height: number,
  width: number,
): AnomalyPrediction {
  const data = new Float32Array(height * width);
  let score = 0;
  predictions.forEach((p, k) => {
    const m = members[k];
    score += (m.scoreWeight * (p.score - m.imageMean)) / m.imageStd;
    if (m.mapWeight === 0) return;
    const map = p.map.height === height && p.map.width === width ? p.map : resizeImage(p.map, height, width);
    const scale = m.mapWeight / m.pixelStd;
    const shift = scale * m.pixelMean;
    for (let i = 0; i < data.length; i++) data[i] += scale * map.data[i] - shift;
  });
  return { score, map: { channels: 1, height, width, data } };
}

export class EnsemblePredictor implements AnomalyPredictor {
  readonly info: ModelInfo;

  constructor(
    readonly members: readonly AnomalyPredictor[],
    readonly meta: EnsembleMeta,
  ) {
    if (members.length !== meta.members.length) {
      throw new Error(`ensemble: ${members.length} member models for ${meta.members.length} member entries`);
    }
    const first = members[0].info;
    this.info = {
      method: `ensemble(${members.map((m) => m.info.method).join('+')})`,
      resolution: Math.max(...members.map((m) => m.info.resolution)),
      channels: first.channels,
      aspect: first.aspect,
      // each member tiles its own input; one value when they agree
      tiling: [...new Set(members.map((m) => m.info.tiling ?? 'none'))].join('+'),
      imageThreshold: meta.imageThreshold,
      pixelThreshold: meta.pixelThreshold,
      meta: {
        ...meta.facts,
        ...Object.fromEntries(
          meta.members.map((m, k) => [`member${k}`, `${m.method} (map x${m.mapWeight}, score x${m.scoreWeight})`]),
        ),
      },
    };
  }

  /** Every member predicts the batch (one after the other: each already uses all threads), then the sums. */
  async predict(images: Image[], options?: PredictOptions): Promise<AnomalyPrediction[]> {
    const perMember: AnomalyPrediction[][] = [];
    for (const member of this.members) {
      options?.signal?.throwIfAborted();
      perMember.push(await member.predict(images, options));
    }
    return images.map((img, i) =>
      combinePredictions(
        perMember.map((preds) => preds[i]),
        this.meta.members,
        img.height,
        img.width,
      ),
    );
  }

  dispose(): void {
    for (const m of this.members) m.dispose();
  }

  /** Writes an ensemble file from the member model files (embedded as they are) and the metadata. */
  static async save(file: string, memberFiles: readonly Uint8Array[], meta: EnsembleMeta): Promise<void> {
    checkEnsembleMeta(meta, file);
    if (memberFiles.length !== meta.members.length) {
      throw new Error(`${file}: ${memberFiles.length} member files for ${meta.members.length} member entries`);
    }
    const tensors = new Map<string, Tensor>();
    try {
      memberFiles.forEach((bytes, k) => tensors.set(`member.${k}`, Tensor.from(bytes, [bytes.length])));
      await saveSafetensors(file, tensors, { format: ENSEMBLE_FORMAT, meta: JSON.stringify(meta) });
    } finally {
      for (const t of tensors.values()) t.dispose();
    }
  }

  /** Reads an ensemble file; every member is loaded by `loadMember` from its embedded bytes. */
  static async load(source: SafetensorsSource, loadMember: MemberLoader): Promise<EnsemblePredictor> {
    const file = sourceName(source);
    const { tensors, metadata } = await loadSafetensors(source);
    const members: AnomalyPredictor[] = [];
    try {
      if (metadata.format !== ENSEMBLE_FORMAT) {
        throw new Error(`${file}: format '${metadata.format ?? 'none'}' is not ${ENSEMBLE_FORMAT}`);
      }
      let meta: EnsembleMeta;
      try {
        meta = JSON.parse(metadata.meta ?? '') as EnsembleMeta;
      } catch {
        throw new Error(`${file}: ensemble metadata is missing or not valid JSON`);
      }
      checkEnsembleMeta(meta, file);
      for (let k = 0; k < meta.members.length; k++) {
        const t = tensors.get(`member.${k}`);
        if (!t || t.dtype !== 'uint8' || t.ndim !== 1) {
          throw new Error(`${file}: embedded model 'member.${k}' is missing or not a uint8 vector`);
        }
        const member = await loadMember({ name: `${file} (member ${k})`, bytes: t.toArray() as Uint8Array });
        members.push(member);
        if (member.info.method !== meta.members[k].method) {
          throw new Error(
            `${file}: member ${k} is a ${member.info.method} model, the metadata says ${meta.members[k].method}`,
          );
        }
      }
      return new EnsemblePredictor(members, meta);
    } catch (e) {
      for (const m of members) m.dispose();
      throw e;
    } finally {
      for (const t of tensors.values()) t.dispose();
    }
  }
}
