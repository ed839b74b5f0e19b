/**
 * Builds an ensemble file from trained model files and their training data, using only the held-out 10% of the
 * good training images (the split every trainer of the project keeps out, splitValidation): the members' normal
 * statistics come from those images, the thresholds from them and synthetic anomalies made from them.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { openTrainingData, loadImages } from '../../data/dataset.js';
import type { Image } from '../../image/types.js';
import type { AnomalyPredictor } from '../../models/predictor.js';
import { splitValidation } from '../../train/data.js';
import { syntheticValidationSet, thresholdsFromValidation } from '../../train/validation.js';
import { EnsemblePredictor, type EnsembleMember, type EnsembleMeta } from './model.js';

export interface EnsembleMemberSpec {
  file: string;
  mapWeight: number;
  scoreWeight: number;
}

export interface BuildEnsembleOptions {
  members: readonly EnsembleMemberSpec[];
  /** The training data the members were trained on (a category folder or a plain folder of good images). */
  data: string;
  out: string;
  /** Seed of the synthetic validation anomalies. */
  seed?: number;
  /** Share of the good images held out (must be the members' own; 0.1 for every trainer here). */
  validationFraction?: number;
  /** Opens a member's model file (src/methods/load.ts's loadPredictor; passed in, as methods do not import it). */
  loadModel: (file: string) => Promise<AnomalyPredictor>;
  /** Extra facts for the model-info endpoint. */
  facts?: Record<string, string | number | boolean>;
}

export interface BuiltEnsemble {
  modelPath: string;
  meta: EnsembleMeta;
  validationImages: number;
  /** false when too few good images were held out and all of them calibrated the ensemble. */
  heldOut: boolean;
  /** Image / pixel AUROC of the ensemble on the held-out images and synthetic anomalies made from them. */
  validationImageAuroc: number;
  validationPixelAuroc: number;
}

function meanStd(values: readonly number[]): { mean: number; std: number } {
  const mean = values.reduce((a, b) => a + b, 0) / values.length;
  const variance = values.reduce((a, b) => a + (b - mean) ** 2, 0) / Math.max(1, values.length - 1);
  // A constant member (no spread on normal images) would divide by zero: floor its scale instead.
  return { mean, std: Math.max(Math.sqrt(variance), 1e-6) };
}

/** A member's pixel (every 7th) and image score statistics on normal images. */
export async function normalStatistics(
  predictor: AnomalyPredictor,
  normals: readonly Image[],
): Promise<Pick<EnsembleMember, 'pixelMean' | 'pixelStd' | 'imageMean' | 'imageStd'>> {
  const pixels: number[] = [];
  const scores: number[] = [];
  for (const img of normals) {
    const [p] = await predictor.predict([img]);
    for (let i = 0; i < p.map.data.length; i += 7) pixels.push(p.map.data[i]);
    scores.push(p.score);
  }
  const px = meanStd(pixels);
  const im = meanStd(scores);
  return { pixelMean: px.mean, pixelStd: px.std, imageMean: im.mean, imageStd: im.std };
}

function checkSpecs(members: readonly EnsembleMemberSpec[]): void {
  if (members.length < 2) throw new Error(`an ensemble needs at least two models (got ${members.length})`);
  for (const m of members) {
    if (!(m.mapWeight >= 0 && m.scoreWeight >= 0) || !Number.isFinite(m.mapWeight + m.scoreWeight)) {
      throw new Error(`weights of ${m.file} must be finite and >= 0 (got map ${m.mapWeight}, score ${m.scoreWeight})`);
    }
  }
}

/**
 * Held-out good images at their own size: the trainers' split (splitValidation) of the good images, of which only
 * the held-out ones are decoded, so memory stays bounded on large data sets. (The trainers split the images that
 * decoded; where some training files are unreadable the two splits can differ by a few images.) With fewer than two
 * held out (under ~15 good images) the statistics need more: then every good image is used, and the model records
 * it (the members have seen them, so their normal scores read low and thresholds tight).
 */
async function calibrationImages(data: string, fraction: number): Promise<{ images: Image[]; heldOut: boolean }> {
  const paths = (await openTrainingData(data)).train;
  const { validation } = splitValidation(paths, fraction);
  const heldOut = validation.length >= 2;
  const loaded = await loadImages(heldOut ? validation : paths, { channels: 'keep' });
  const images = loaded.images.map((l) => l.image);
  if (images.length < 2) {
    throw new Error(`${data}: ${images.length} readable good image(s) to calibrate with; an ensemble needs at least 2`);
  }
  return { images, heldOut };
}

export async function buildEnsemble(o: BuildEnsembleOptions): Promise<BuiltEnsemble> {
  checkSpecs(o.members);
  const { images: normals, heldOut } = await calibrationImages(o.data, o.validationFraction ?? 0.1);
  const predictors: AnomalyPredictor[] = [];
  try {
    for (const m of o.members) predictors.push(await o.loadModel(m.file));
    const members: EnsembleMember[] = [];
    for (const [k, p] of predictors.entries()) {
      const { mapWeight, scoreWeight } = o.members[k];
      members.push({ method: p.info.method, mapWeight, scoreWeight, ...(await normalStatistics(p, normals)) });
    }
    const draft: EnsembleMeta = { members, imageThreshold: 0, pixelThreshold: 0, facts: {} };
    const ensemble = new EnsemblePredictor(predictors, draft);
    const set = syntheticValidationSet(normals, o.seed ?? 0);
    const preds = await ensemble.predict(set.images);
    const v = thresholdsFromValidation({ maps: preds.map((p) => p.map), scores: preds.map((p) => p.score) }, set.masks);
    const meta: EnsembleMeta = {
      members,
      imageThreshold: v.imageThreshold,
      pixelThreshold: v.pixelThreshold,
      facts: {
        dataset: path.basename(path.resolve(o.data)),
        members: o.members.map((m) => path.basename(m.file)).join(', '),
        created: new Date().toISOString(),
        validationImageAuroc: Number(v.imageAuroc.toFixed(4)),
        validationPixelAuroc: Number(v.pixelAuroc.toFixed(4)),
        calibration: heldOut ? 'held-out good images' : 'all good images (too few to hold out)',
        ...o.facts,
      },
    };
    const memberFiles = await Promise.all(o.members.map((m) => fs.readFile(m.file)));
    await EnsemblePredictor.save(o.out, memberFiles, meta);
    return {
      modelPath: o.out,
      meta,
      validationImages: normals.length,
      heldOut,
      validationImageAuroc: v.imageAuroc,
      validationPixelAuroc: v.pixelAuroc,
    };
  } finally {
    for (const p of predictors) p.dispose();
  }
}
