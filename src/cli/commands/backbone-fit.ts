/** What `anoseg padim` and `anoseg patchcore` share: the options of a fit on a feature backbone, and its report. */
import path from 'node:path';
import type { FitAspect } from '../../image/io.js';
import type { Tiling } from '../../image/tiles.js';

/** The defaults both commands state in their help (each method's own values). */
export interface BackboneFitDefaults {
  backbone: string;
  resolution: number;
  width: number;
  seed: number;
  aspect: FitAspect;
  tiling: Tiling;
}

/** Parsed values of the shared options (`data` is required by both commands). */
export interface BackboneFitValues {
  data?: string;
  out?: string;
  backbone?: string;
  resolution?: number;
  width?: number;
  seed?: number;
  aspect?: FitAspect;
  tiling?: Tiling;
}

/** data, out (default runs/<method>/<data name>), backbone, resolution, width, seed, aspect and tiling, defaults filled in. */
export function backboneFitOptions(
  v: BackboneFitValues,
  method: string,
  d: BackboneFitDefaults,
): BackboneFitDefaults & { data: string; out: string } {
  const data = v.data as string;
  return {
    data,
    out: v.out ?? path.join('runs', method, path.basename(path.resolve(data))),
    backbone: v.backbone ?? d.backbone,
    resolution: v.resolution ?? d.resolution,
    width: v.width ?? d.width,
    seed: v.seed ?? d.seed,
    aspect: v.aspect ?? d.aspect,
    tiling: v.tiling ?? d.tiling,
  };
}

/** The lines both commands print after a fit. */
export function printBackboneFit(r: {
  modelPath: string;
  trainImages: number;
  validationImages: number;
  minutes: number;
  validationImageAuroc: number;
  validationPixelAuroc: number;
}): void {
  process.stdout.write(
    `model: ${r.modelPath}\n${r.trainImages} training / ${r.validationImages} validation images, ` +
      `${r.minutes.toFixed(1)} min; synthetic validation image AUROC ${r.validationImageAuroc.toFixed(3)}, ` +
      `pixel AUROC ${r.validationPixelAuroc.toFixed(3)}\n`,
  );
}
