/**
 * Image- and pixel-score variants of one trained AnoSeg model on a category's test split, from one pass of the
 * network (for choosing the score; the model's own score is the row 'map+rec max σ=<its sigma>'):
 *   npx tsx scripts/score-study.ts MODEL DATA
 * Pixel AUROC is computed at model resolution (a quick proxy of `anoseg eval`, which works at mask size).
 */
import { imagesToTensor } from '../src/models/image-tensor.js';
import { blurMaps } from '../src/models/scoring.js';
import { noGrad, tidy } from '../src/engine/index.js';
import { auroc } from '../src/eval/metrics.js';
import { blurredMaxima, fittedTestBatches, openModelStudy, pixelAuroc } from './model-study.js';

const { generator, meta, test, res } = await openModelStudy('score-study.ts');
const mapParts: Float32Array[] = [];
const recParts: Float32Array[] = [];
const gts: (Float32Array | null)[] = [];
const labels: boolean[] = [];
for await (const batch of fittedTestBatches(test, { ...meta.arch, aspect: meta.aspect })) {
  const imgs = batch.images;
  gts.push(...batch.gts);
  labels.push(...batch.labels);
  noGrad(() =>
    tidy(() => {
      const x = imagesToTensor(imgs);
      const out = generator.forward(x);
      const m = out.map.rsub(1).toFloat32Array();
      const r = out.reconstruction ? blurMaps(x.sub(out.reconstruction).abs().mean(1, true), 2).toFloat32Array() : null;
      for (let k = 0; k < imgs.length; k++) {
        mapParts.push(m.slice(k * res * res, (k + 1) * res * res));
        recParts.push(r ? r.slice(k * res * res, (k + 1) * res * res) : new Float32Array(res * res));
      }
    }),
  );
}
const combine = (w: number): Float32Array[] => mapParts.map((m, i) => m.map((v, j) => v + w * recParts[i][j]));
const topMean = (m: Float32Array, frac: number): number => {
  const s = Float32Array.from(m).sort();
  const k = Math.max(1, Math.round(s.length * frac));
  let t = 0;
  for (let i = s.length - k; i < s.length; i++) t += s[i];
  return t / k;
};
const row = (name: string, v: number): void => void process.stdout.write(`${name.padEnd(34)} ${v.toFixed(3)}\n`);
for (const w of [0, 0.5, 1, 2]) {
  const maps = w === 0 ? mapParts : combine(w);
  row(`pixel AUROC map+${w}*rec`, pixelAuroc(maps, gts, res));
  for (const sigma of [2, 4, 8])
    row(`image AUROC map+${w}*rec max σ=${sigma}`, auroc(blurredMaxima(maps, res, sigma), labels));
  for (const f of [0.001, 0.01, 0.05])
    row(`image AUROC map+${w}*rec top${f * 100}%`, auroc(Float64Array.from(maps.map((m) => topMean(m, f))), labels));
}
row('image AUROC rec only mean', auroc(Float64Array.from(recParts.map((m) => m.reduce((a, b) => a + b, 0))), labels));
generator.dispose();
