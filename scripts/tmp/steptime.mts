import { loadTrainingImages, makeSegmentationBatch, imagesToTensor } from '../../src/train/data.js';
import { openImageFolder } from '../../src/data/dataset.js';
import { presetConfig } from '../../src/train/config.js';
import { Rng } from '../../src/util/rng.js';
import { AnoSegGenerator, anoSegDiscriminator } from '../../src/models/anoseg.js';
import { Adam } from '../../src/nn/index.js';
import { anosegTrainStep } from '../../src/train/anoseg-step.js';
import { getNumThreads } from '../../src/engine/index.js';
const cfg = presetConfig(process.argv[2] ?? 'recipe');
const paths = await openImageFolder('/work/shared/datasets/mvtec/bottle/train/good');
const l = await loadTrainingImages(paths, 128, 'stretch', 'auto');
const rng = new Rng(0);
const g = new AnoSegGenerator(cfg.arch); const d = anoSegDiscriminator(cfg.arch);
const m = { generator: g, discriminator: d, generatorOptimizer: new Adam(g.parameters(), {lr: 1e-4}), discriminatorOptimizer: new Adam(d.parameters(), {lr:1e-4}) };
console.log('threads', getNumThreads());
for (let i = 0; i < 8; i++) {
  const t0 = performance.now();
  const b = makeSegmentationBatch(l.images, 8, 0.5, cfg.anomaly, cfg.normalAugment, rng);
  const x = imagesToTensor(b.images), a = imagesToTensor(b.masks);
  const t1 = performance.now();
  anosegTrainStep(m, x, a, cfg.loss);
  console.log('batch', (t1 - t0).toFixed(0), 'step', (performance.now() - t1).toFixed(0));
  x.dispose(); a.dispose();
}
