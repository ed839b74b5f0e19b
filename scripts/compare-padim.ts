/**
 * PaDiM with a random-init backbone vs the formula-pretrained backbone (assets/formula-backbone.safetensors) on the
 * real evaluation sets. For every variant and data set: fit (trainPadim: train/good minus a 10% validation split that
 * only chooses thresholds), then evaluate the test split with evaluateMaps; metrics.json, report.html, the model and
 * its train.log land in OUT/<variant>/<dataset>/. Prints one markdown table and writes it to OUT/comparison.md
 * (+ comparison.json).
 *
 *   npx tsx scripts/compare-padim.ts [--root /work/shared/datasets] [--out /work/exp/padim] [--resolution 128]
 *                                    [--dims 100] [--seed 0] [--datasets mvtec/bottle,kolektorsdd,magnetic_tile]
 *                                    [--variants random,formula]
 *
 * Both variants use the same architecture (ResNet18 at the width of the formula backbone), resolution, channel
 * subset seed and thresholds procedure, so the difference is the backbone weights only.
 */
import path from 'node:path';
import { parseArgs } from 'node:util';
import { modelMapProvider } from '../src/eval/model-maps.js';
import { evaluateMaps } from '../src/eval/evaluate.js';
import { FeatureBackbone } from '../src/models/backbone.js';
import { PadimPredictor } from '../src/methods/padim/model.js';
import { formulaBackbonePath } from '../src/models/backbone.js';
import { trainPadim } from '../src/methods/padim/trainer.js';
import { writeFileAtomic } from '../src/util/atomic.js';

interface Row {
  variant: string;
  dataset: string;
  pixelAuroc: number;
  imageAuroc: number;
  iou: number;
  aupro: number;
  fitMinutes: number;
  evalMinutes: number;
  testImages: number;
}

const { values: v } = parseArgs({
  options: {
    root: { type: 'string', default: '/work/shared/datasets' },
    out: { type: 'string', default: '/work/exp/padim' },
    resolution: { type: 'string', default: '128' },
    dims: { type: 'string', default: '100' },
    seed: { type: 'string', default: '0' },
    datasets: { type: 'string', default: 'mvtec/bottle,kolektorsdd,magnetic_tile' },
    variants: { type: 'string', default: 'random,formula' },
  },
});
const resolution = Number(v.resolution);
const dims = Number(v.dims);
const seed = Number(v.seed);
const datasets = v.datasets!.split(',').filter(Boolean);
const variants = v.variants!.split(',').filter(Boolean);
for (const name of variants)
  if (name !== 'random' && name !== 'formula') throw new Error(`unknown variant '${name}' (random, formula)`);

// The random baseline gets the formula backbone's width, so only the weights differ.
const formulaMeta = await FeatureBackbone.load(formulaBackbonePath()).then((b) => {
  const meta = b.meta;
  b.dispose();
  return meta;
});
const width = formulaMeta.width;
process.stderr.write(
  `PaDiM comparison: ResNet18 width ${width}, ${resolution} px, d=${dims}, seed ${seed}; formula backbone: ` +
    `${JSON.stringify(formulaMeta.training)}\n`,
);

const fmt = (x: number, digits = 3): string => (Number.isFinite(x) ? x.toFixed(digits) : '-');
const rows: Row[] = [];
for (const rel of datasets) {
  const dataRoot = path.join(v.root!, rel);
  const dataset = path.basename(rel);
  for (const variant of variants) {
    const out = path.join(v.out!, variant, dataset);
    process.stderr.write(`\n[${variant} / ${dataset}] fitting -> ${out}\n`);
    const fit = await trainPadim({
      data: dataRoot,
      out,
      backbone: variant,
      width,
      resolution,
      dims,
      seed,
      progress: false,
    });
    const predictor = await PadimPredictor.load(fit.modelPath);
    const t0 = performance.now();
    const metrics = await evaluateMaps({
      dataRoot,
      mapProvider: modelMapProvider(predictor),
      outDir: out,
      title: `PaDiM (${variant} backbone): ${dataset}`,
      onProgress: (done, total) => {
        if (done % 50 === 0 || done === total) process.stderr.write(`  evaluated ${done}/${total}\n`);
      },
    });
    predictor.dispose();
    const row: Row = {
      variant,
      dataset,
      pixelAuroc: metrics.overall.pixelAuroc,
      imageAuroc: metrics.overall.imageAuroc,
      iou: metrics.overall.iou.iou,
      aupro: metrics.overall.aupro,
      fitMinutes: fit.minutes,
      evalMinutes: (performance.now() - t0) / 60000,
      testImages: metrics.images.length,
    };
    rows.push(row);
    process.stderr.write(
      `[${variant} / ${dataset}] pixel AUROC ${fmt(row.pixelAuroc)}, image AUROC ${fmt(row.imageAuroc)}, IoU ${fmt(row.iou)}, ` +
        `AUPRO ${fmt(row.aupro)}, fit ${fmt(row.fitMinutes, 1)} min, eval ${fmt(row.evalMinutes, 1)} min\n`,
    );
  }
}

const table = [
  `PaDiM, ResNet18 width ${width}, ${resolution} px input, d=${dims} random channels (seed ${seed}), stretch; metrics at mask resolution.`,
  '',
  '| dataset | backbone | test images | pixel AUROC | image AUROC | best IoU | AUPRO@0.3 | fit min | eval min |',
  '|---|---|---|---|---|---|---|---|---|',
  ...rows.map(
    (r) =>
      `| ${r.dataset} | ${r.variant} | ${r.testImages} | ${fmt(r.pixelAuroc)} | ${fmt(r.imageAuroc)} | ${fmt(r.iou)} | ${fmt(r.aupro)} | ` +
      `${fmt(r.fitMinutes, 1)} | ${fmt(r.evalMinutes, 1)} |`,
  ),
].join('\n');
process.stdout.write(`${table}\n`);
await writeFileAtomic(path.join(v.out!, 'comparison.md'), `${table}\n`);
await writeFileAtomic(
  path.join(v.out!, 'comparison.json'),
  `${JSON.stringify({ resolution, dims, seed, width, formulaBackbone: formulaMeta.training, rows }, null, 2)}\n`,
);
