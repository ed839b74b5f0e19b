/**
 * What the scripts that study an AnoSeg model's scores at model resolution share (score-study.ts, tta-study.ts):
 * the command line (MODEL DATA), the test split fitted to the model's square input, pixel AUROC over the images with
 * ground truth, and image scores as maxima of blurred maps.
 */
import { loadMask, openMvtecDataset, type TestItem } from '../src/data/dataset.js';
import { Tensor, noGrad, tidy } from '../src/engine/index.js';
import { auroc } from '../src/eval/metrics.js';
import { fitImage, loadImage, type FitAspect } from '../src/image/io.js';
import type { Image } from '../src/image/types.js';
import { loadAnoSegModel } from '../src/methods/anoseg/model-file.js';
import { blurMaps } from '../src/models/scoring.js';

/** `npx tsx scripts/<script> MODEL DATA`: the model in eval mode and the category's test split. */
export async function openModelStudy(script: string) {
  const [modelFile, data] = process.argv.slice(2);
  if (!modelFile || !data) {
    process.stderr.write(`usage: npx tsx scripts/${script} MODEL DATA\n`);
    process.exit(2);
  }
  const { generator, meta } = await loadAnoSegModel(modelFile);
  generator.eval();
  return { generator, meta, test: (await openMvtecDataset(data)).test, res: meta.arch.resolution };
}

/** Pixel AUROC of side x side maps over the images that have ground truth (gts[i] null: left out). */
export function pixelAuroc(maps: readonly Float32Array[], gts: readonly (Float32Array | null)[], side: number): number {
  const idx = gts.flatMap((g, i) => (g ? [i] : []));
  const plane = side * side;
  const scores = new Float32Array(idx.length * plane);
  const labels = new Uint8Array(idx.length * plane);
  idx.forEach((i, k) => {
    scores.set(maps[i], k * plane);
    labels.set(gts[i] as Float32Array, k * plane);
  });
  return auroc(scores, labels);
}

/** side x side maps blurred with sigma (blurMaps, one batch). */
function blurredMaps(maps: readonly Float32Array[], side: number, sigma: number): Float32Array[] {
  const plane = side * side;
  return noGrad(() =>
    tidy(() => {
      const all = new Float32Array(maps.length * plane);
      maps.forEach((m, i) => all.set(m, i * plane));
      const flat = blurMaps(Tensor.from(all, [maps.length, 1, side, side]), sigma).toFloat32Array();
      return maps.map((_, i) => flat.slice(i * plane, (i + 1) * plane));
    }),
  );
}

/** Image scores: the maximum of each map blurred with sigma. */
export function blurredMaxima(maps: readonly Float32Array[], side: number, sigma: number): Float64Array {
  return Float64Array.from(blurredMaps(maps, side, sigma), (m) => m.reduce((a, v) => Math.max(a, v), -Infinity));
}

export interface FittedTestBatch {
  images: Image[];
  gts: (Float32Array | null)[];
  labels: boolean[];
}

export async function* fittedTestBatches(
  test: readonly TestItem[],
  model: { resolution: number; aspect: FitAspect; channels: number },
  batch = 8,
): AsyncGenerator<FittedTestBatch> {
  const { resolution: res, aspect } = model;
  for (let i = 0; i < test.length; i += batch) {
    const out: FittedTestBatch = { images: [], gts: [], labels: [] };
    for (const it of test.slice(i, i + batch)) {
      out.images.push(fitImage(await loadImage(it.path, { channels: model.channels as 1 | 3 }), res, aspect).image);
      out.labels.push(it.defect !== 'good');
      if (it.maskPath) {
        const probe = await loadImage(it.path, { channels: 'keep' });
        const m = fitImage(await loadMask(it.maskPath, probe.height, probe.width), res, aspect, { padFill: 'black' });
        out.gts.push(m.image.data.map((v) => (v >= 0.5 ? 1 : 0)));
      } else out.gts.push(it.defect === 'good' ? new Float32Array(res * res) : null);
    }
    yield out;
  }
}
