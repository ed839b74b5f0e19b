/**
 * The default product of `anoseg train`: the trained AnoSeg model fused with a PaDiM model fitted on the same good
 * images (formula backbone, 256 px). Weights chosen on bottle + KolektorSDD with magnetic tile held out
 * (docs/quality-rounds.md, third round): AnoSeg map and score x1, PaDiM map x0.5 (PaDiM's blurrier map sharpens less
 * than it adds), PaDiM score x1 (it separates good from defective parts better on textures).
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { openTrainingData } from '../../data/dataset.js';
import { readImageSize, type FitAspect } from '../../image/io.js';
import { tileRects, type Tiling } from '../../image/tiles.js';
import type { AnomalyPredictor } from '../../models/predictor.js';
import { trainPadim } from '../padim/trainer.js';
import { buildEnsemble, type BuiltEnsemble } from './build.js';

export const PADIM_FUSION_WEIGHTS = {
  anoseg: { mapWeight: 1, scoreWeight: 1 },
  padim: { mapWeight: 0.5, scoreWeight: 1 },
  // the run's early snapshot (`anoseg train --early-snapshot N`, off by default): its map only, the image score stays
  // the final model's and PaDiM's (docs/quality-rounds.md, seventh round)
  earlyAnoseg: { mapWeight: 1, scoreWeight: 0 },
} as const;

/**
 * Minutes the PaDiM fit and the ensemble's calibration take on the 2-core reference machine, so a time budget can
 * leave room for them: the fit took 0.15-0.17 s per training image at 256 px with one thread; the calibration
 * predicts the held-out tenth four times (as it is, two synthetic anomalies, statistics) with both members at
 * ~0.15 s each, ~0.12 s per training image. Rounded up to 0.35 s per model input: per tile with tiling (a
 * KolektorSDD image is 3), counted from the image headers (an unreadable one counts as one tile).
 */
export async function padimFusionMinutes(data: string, tiling: Tiling = 'none'): Promise<number> {
  const paths = (await openTrainingData(data)).train;
  let inputs = 0;
  for (const p of paths) {
    if (tiling === 'none') inputs++;
    else
      inputs += await readImageSize(p).then(
        (s) => tileRects(s.height, s.width, tiling).length,
        () => 1,
      );
  }
  return (0.35 * inputs) / 60;
}

/** The part of a budget of `minutes` left to AnoSeg when PaDiM is fitted and fused beside it (at least 1 minute). */
export async function anosegMinutesBesidePadim(
  data: string,
  minutes: number,
  tiling: Tiling = 'none',
): Promise<number> {
  return Math.max(1, minutes - (await padimFusionMinutes(data, tiling)));
}

export interface FuseWithPadimOptions {
  data: string;
  /** The run folder of the AnoSeg training: PaDiM is fitted into OUT/padim, the ensemble is OUT/ensemble.safetensors. */
  out: string;
  anosegModel: string;
  /** The same run's early-snapshot model (trainer config.earlySnapshotStep), a third member; null = none. */
  earlyModel?: string | null;
  aspect: FitAspect;
  /** The AnoSeg run's tiling, which PaDiM follows (absent = 'none'). */
  tiling?: Tiling;
  seed: number;
  /** Reuse OUT/padim/model.safetensors when it exists (a resumed run). */
  resume: boolean;
  loadModel: (file: string) => Promise<AnomalyPredictor>;
  progress?: boolean;
}

export async function fuseWithPadim(o: FuseWithPadimOptions): Promise<BuiltEnsemble & { padimModel: string }> {
  const padimOut = path.join(o.out, 'padim');
  let padimModel = path.join(padimOut, 'model.safetensors');
  if (!(o.resume && existsSync(padimModel))) {
    padimModel = (
      await trainPadim({
        data: o.data,
        out: padimOut,
        backbone: 'formula',
        aspect: o.aspect,
        tiling: o.tiling,
        seed: o.seed,
        progress: o.progress,
      })
    ).modelPath;
  }
  const built = await buildEnsemble({
    members: [
      { file: o.anosegModel, ...PADIM_FUSION_WEIGHTS.anoseg },
      ...(o.earlyModel ? [{ file: o.earlyModel, ...PADIM_FUSION_WEIGHTS.earlyAnoseg }] : []),
      { file: padimModel, ...PADIM_FUSION_WEIGHTS.padim },
    ],
    data: o.data,
    out: path.join(o.out, 'ensemble.safetensors'),
    seed: o.seed,
    loadModel: o.loadModel,
  });
  return { ...built, padimModel };
}
