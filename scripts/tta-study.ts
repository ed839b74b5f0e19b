/**
 * Test-time flips for a trained AnoSeg model on a category's test split: the pixel score (1 - map + weighted blurred
 * reconstruction error, as the model scores) averaged over the identity and horizontal / vertical / both flips of
 * the input, each flipped back. Pixel AUROC at model resolution (a proxy of `anoseg eval`), image AUROC of the max of
 * the map smoothed with the model's sigma.
 *   npx tsx scripts/tta-study.ts MODEL DATA
 */
import { imagesToTensor } from '../src/models/image-tensor.js';
import { blurMaps } from '../src/models/scoring.js';
import { Tensor, noGrad, tidy, op } from '../src/engine/index.js';
import { auroc } from '../src/eval/metrics.js';
import { blurredMaxima, fittedTestBatches, openModelStudy, pixelAuroc } from './model-study.js';

const { generator, meta, test, res } = await openModelStudy('tta-study.ts');
const V = ['none', 'h', 'v', 'hv'];
const parts: Record<string, Float32Array[]> = Object.fromEntries(V.map((v) => [v, []]));
const gts: (Float32Array | null)[] = [];
const labels: boolean[] = [];
const flip = (t: Tensor, dims: number[]) => (dims.length ? (op('aten::flip', t, dims) as Tensor) : t);
for await (const batch of fittedTestBatches(test, { ...meta.arch, aspect: meta.aspect })) {
  const imgs = batch.images;
  gts.push(...batch.gts);
  labels.push(...batch.labels);
  noGrad(() =>
    tidy(() => {
      const x = imagesToTensor(imgs);
      const one = (dims: number[]) => {
        const xf = flip(x, dims);
        const out = generator.forward(xf);
        let m = out.map.rsub(1);
        if (out.reconstruction)
          m = m.add(blurMaps(xf.sub(out.reconstruction).abs().mean(1, true), 2), meta.score.reconstructionWeight);
        return flip(m, dims);
      };
      const a = one([]),
        h = one([3]),
        v = one([2]),
        hv = one([2, 3]);
      const sets: Record<string, Tensor> = {
        none: a,
        h: a.add(h).mul(0.5),
        v: a.add(v).mul(0.5),
        hv: a.add(h).add(v).add(hv).mul(0.25),
      };
      for (const k of V) {
        const f = sets[k].toFloat32Array();
        for (let j = 0; j < imgs.length; j++) parts[k].push(f.slice(j * res * res, (j + 1) * res * res));
      }
    }),
  );
}
for (const k of V) {
  const pixel = pixelAuroc(parts[k], gts, res);
  const image = auroc(blurredMaxima(parts[k], res, meta.score.sigma), labels);
  console.log(`tta=${k.padEnd(5)} pixel ${pixel.toFixed(3)} image ${image.toFixed(3)}`);
}
