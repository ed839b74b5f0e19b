/**
 * Study of fusing an AnoSeg model's map with a PaDiM model's map on scales set by training data only: each
 * method's pixel and image scores are standardised with their mean and standard deviation on the held-out normal
 * training images (the 10% validation split both trainers keep out), then added with PaDiM weighted by w.
 *   npx tsx scripts/fusion-study.ts ANOSEG_MODEL PADIM_MODEL DATA OUT_DIR [w,w,...]
 * Prints the evaluation figures per weight (w = 0: AnoSeg alone; 'padim': PaDiM alone; 'M:S': PaDiM's weight M in
 * the map and S in the image score, e.g. '0:1' keeps AnoSeg's map and fuses the score) and writes reports.
 */
import path from 'node:path';
import { loadPredictor } from '../src/methods/load.js';
import type { AnomalyPredictor } from '../src/models/predictor.js';
import { openTrainingData, openMvtecDataset } from '../src/data/dataset.js';
import { loadImage, resizeImage } from '../src/image/io.js';
import type { Image } from '../src/image/types.js';
import { splitValidation } from '../src/train/data.js';
import { evaluateMaps } from '../src/eval/evaluate.js';

const [anosegFile, padimFile, data, outDir, weightsArg] = process.argv.slice(2);
if (!anosegFile || !padimFile || !data || !outDir) {
  process.stderr.write('usage: npx tsx scripts/fusion-study.ts ANOSEG_MODEL PADIM_MODEL DATA OUT_DIR [w,...]\n');
  process.exit(2);
}
const weights = (weightsArg ?? '0,0.5,1,2,padim').split(',');
const models: AnomalyPredictor[] = [await loadPredictor(anosegFile), await loadPredictor(padimFile)];

interface Stats {
  pixelMean: number;
  pixelStd: number;
  imageMean: number;
  imageStd: number;
}
const meanStd = (v: number[]): [number, number] => {
  const m = v.reduce((a, b) => a + b, 0) / v.length;
  const s = Math.sqrt(v.reduce((a, b) => a + (b - m) ** 2, 0) / Math.max(1, v.length - 1));
  return [m, Math.max(s, 1e-6)];
};
const { train } = await openTrainingData(data);
const { validation } = splitValidation(train, 0.1);
const stats: Stats[] = [];
for (const m of models) {
  const pixels: number[] = [];
  const images: number[] = [];
  for (const p of validation) {
    const [pred] = await m.predict([await loadImage(p, { channels: 'keep' })]);
    for (let i = 0; i < pred.map.data.length; i += 7) pixels.push(pred.map.data[i]);
    images.push(pred.score);
  }
  const [pixelMean, pixelStd] = meanStd(pixels);
  const [imageMean, imageStd] = meanStd(images);
  stats.push({ pixelMean, pixelStd, imageMean, imageStd });
}
process.stdout.write(`normal statistics from ${validation.length} validation images: ${JSON.stringify(stats)}\n`);

const ds = await openMvtecDataset(data);
const cache = new Map<string, { maps: Image[]; scores: number[] }>();
for (const item of ds.test) {
  const img = await loadImage(item.path, { channels: 'keep' });
  const preds = await Promise.all(models.map(async (m) => (await m.predict([img]))[0]));
  const maps = preds.map((p, k) => {
    const s = stats[k];
    const map =
      p.map.height === img.height && p.map.width === img.width ? p.map : resizeImage(p.map, img.height, img.width);
    return { ...map, data: map.data.map((v) => (v - s.pixelMean) / s.pixelStd) };
  });
  cache.set(item.path, { maps, scores: preds.map((p, k) => (p.score - stats[k].imageMean) / stats[k].imageStd) });
}
for (const w of weights) {
  const [mapW, scoreW] = w.includes(':') ? w.split(':').map(Number) : [Number(w), Number(w)];
  const [wa, wp] = w === 'padim' ? [0, 1] : [1, mapW];
  const [sa, sp] = w === 'padim' ? [0, 1] : [1, scoreW];
  const metrics = await evaluateMaps({
    dataset: ds,
    outDir: path.join(outDir, `w-${w}`),
    mapProvider: async (item) => {
      const c = cache.get(item.path)!;
      const map = { ...c.maps[0], data: c.maps[0].data.map((v, i) => wa * v + wp * c.maps[1].data[i]) };
      return { map, score: sa * c.scores[0] + sp * c.scores[1] };
    },
  });
  const f = (v: number | null | undefined): string => (v === null || v === undefined ? '-' : v.toFixed(3));
  const o = metrics.overall;
  process.stdout.write(
    `w=${w}: pixel AUROC ${f(o.pixelAuroc)}  image AUROC ${f(o.imageAuroc)}  best IoU ${f(o.iou.iou)}  AUPRO ${f(o.aupro)}\n`,
  );
}
for (const m of models) m.dispose();
