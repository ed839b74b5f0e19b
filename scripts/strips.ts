/**
 * Writes image | anomaly map | ground truth strips for a few test images of a category (for notes and
 * reviews): npx tsx scripts/strips.ts MODEL DATA OUT_PNG [per-defect=1] [reconstruction-score-weight]
 */
import { loadPredictor } from '../src/methods/load.js';
import { AnoSegPredictor } from '../src/methods/anoseg/model-file.js';
import { openMvtecDataset, loadMask, emptyMask } from '../src/data/dataset.js';
import { loadImage, saveImagePng, resizeImage } from '../src/image/io.js';
import { heatmap, hstack, vstack, toRgb, maskOutline } from '../src/image/visual.js';
import type { Image } from '../src/image/types.js';

const [model, data, out, perDefectArg, reconArg] = process.argv.slice(2);
if (!model || !data || !out) {
  process.stderr.write('usage: npx tsx scripts/strips.ts MODEL DATA OUT_PNG [per-defect]\n');
  process.exit(2);
}
const perDefect = Number(perDefectArg ?? 1);
const DISPLAY_SIDE = 256;
const predictor = await loadPredictor(model);
if (reconArg !== undefined && predictor instanceof AnoSegPredictor) {
  predictor.meta.score = { ...predictor.meta.score, reconstructionWeight: Number(reconArg) };
}
const ds = await openMvtecDataset(data);
const rows: Image[] = [];
for (const defect of ['good', ...ds.defects]) {
  for (const item of ds.test.filter((t) => t.defect === defect).slice(0, perDefect)) {
    // Predict on the image as it is (as predict and eval do: its own size, tiled if the model tiles), then show
    // image, map and mask with the longer side at DISPLAY_SIDE and the aspect kept.
    const full = await loadImage(item.path, { channels: 'keep' });
    const [pred] = await predictor.predict([full]);
    const scale = DISPLAY_SIDE / Math.max(full.height, full.width);
    const h = Math.max(1, Math.round(full.height * scale));
    const w = Math.max(1, Math.round(full.width * scale));
    const img = resizeImage(full, h, w);
    const map = resizeImage(pred.map, h, w);
    const hi = Math.max(1e-6, predictor.info.pixelThreshold * 2);
    const scaled = { ...map, data: map.data.map((v) => Math.min(1, v / hi)) };
    const gt = item.maskPath ? await loadMask(item.maskPath, h, w) : emptyMask(h, w);
    rows.push(hstack([maskOutline(toRgb(img), gt), heatmap(scaled), toRgb(gt)]));
  }
}
await saveImagePng(out, vstack(rows));
predictor.dispose();
process.stdout.write(`wrote ${out}\n`);
