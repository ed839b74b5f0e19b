/**
 * A category's test split fitted to a model's square input, for the scripts that study scores at model resolution
 * (score-study.ts, tta-study.ts): images, binary ground-truth masks (all zero for good images without one, null for
 * a defective image without one) and image labels, in batches of `batch`.
 */
import { loadMask, type TestItem } from '../src/data/dataset.js';
import { fitImage, loadImage, type FitAspect } from '../src/image/io.js';
import type { Image } from '../src/image/types.js';

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
