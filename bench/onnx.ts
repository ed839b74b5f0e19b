/**
 * ONNX Runtime vs libtorch: the same model predicted through its libtorch predictor and through its ONNX export
 * (onnxruntime-node, OnnxPredictor), image in, map and score out (fit to the model, network, score, map back).
 *
 *   npm run bench:onnx                              # seeded recipe-size AnoSeg and PaDiM models
 *   npm run bench:onnx -- --model runs/x/model.safetensors [--threads 2] [--iterations 30] [--size 256]
 *
 * Both runtimes get the same thread count (--threads, default: all cores). One line per runtime and batch:
 *   case=<name> runtime=<libtorch|onnxruntime-node> batch=<n> p50_ms=<ms per call> min_ms=<fastest call>
 *     ms_per_image=<p50 / n> img_per_s=<x>
 * and the largest map / score difference between the two on the benchmark images. On a machine shared with other
 * jobs the minimum is the steadier figure.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { Tensor, manualSeed, noGrad, setNumThreads, tidy } from '../src/engine/index.js';
import type { Image } from '../src/image/types.js';
import { AnoSegGenerator } from '../src/methods/anoseg/network.js';
import { saveAnoSegModel } from '../src/methods/anoseg/model-file.js';
import { FeatureBackbone } from '../src/models/backbone.js';
import { PADIM_SIGMA, PadimModel, fitPadimStats } from '../src/methods/padim/model.js';
import type { AnomalyPredictor } from '../src/models/predictor.js';
import { exportModelFile } from '../src/onnx/export.js';
import { OnnxPredictor } from '../src/onnx/predictor.js';
import { presetConfig } from '../src/methods/anoseg/config.js';
import { Rng } from '../src/util/rng.js';

const { values: args } = parseArgs({
  options: {
    model: { type: 'string' },
    threads: { type: 'string', default: String(os.availableParallelism()) },
    iterations: { type: 'string', default: '30' },
    size: { type: 'string', default: '256' },
    help: { type: 'boolean', short: 'h', default: false },
  },
});
if (args.help) {
  console.log('npm run bench:onnx -- [--model MODEL.safetensors] [--threads N] [--iterations N] [--size PX]');
  process.exit(0);
}
const threads = Number(args.threads);
const iterations = Number(args.iterations);
const size = Number(args.size);
setNumThreads(threads);
process.env.ANOSEG_THREADS = String(threads); // OnnxPredictor's intra-op threads

/** Seeded recipe-size models in `dir` (speed does not depend on trained weights). */
async function seededModels(dir: string): Promise<Record<string, string>> {
  const { arch, aspect, scoreSigma, reconstructionScoreWeight } = presetConfig('recipe');
  manualSeed(1);
  const generator = new AnoSegGenerator(arch);
  noGrad(() => tidy(() => generator.forward(Tensor.rand([2, arch.channels, arch.resolution, arch.resolution]))));
  generator.eval();
  const anoseg = path.join(dir, 'anoseg.safetensors');
  await saveAnoSegModel(anoseg, generator, {
    arch,
    aspect,
    score: { sigma: scoreSigma, reconstructionWeight: reconstructionScoreWeight },
    imageThreshold: 0.5,
    pixelThreshold: 0.5,
    facts: { bench: 'seeded' },
  });
  generator.dispose();
  const backbone = FeatureBackbone.random(0.5, 1);
  const stats = fitPadimStats(backbone, benchImages(4, 128, 3), { dims: 100, seed: 0 });
  const padim = path.join(dir, 'padim.safetensors');
  const meta = {
    resolution: 128,
    aspect: 'stretch' as const,
    channels: 3 as const,
    dims: stats.dims,
    seed: 0,
    eps: 0.01,
    sigma: PADIM_SIGMA,
    backbone: backbone.meta,
    imageThreshold: 10,
    pixelThreshold: 10,
    facts: { bench: 'seeded' },
  };
  const model = new PadimModel(backbone, stats, meta);
  await model.save(padim);
  model.dispose();
  return { 'anoseg-recipe': anoseg, 'padim-w0.5-d100': padim };
}

function benchImages(count: number, side: number, channels: number): Image[] {
  const rng = new Rng(7);
  return Array.from({ length: count }, () => ({
    channels,
    height: side,
    width: side,
    data: Float32Array.from({ length: channels * side * side }, () => rng.next()),
  }));
}

async function time(predictor: AnomalyPredictor, batch: Image[]): Promise<number[]> {
  for (let i = 0; i < 3; i++) await predictor.predict(batch);
  const ms: number[] = [];
  for (let i = 0; i < iterations; i++) {
    const t0 = performance.now();
    await predictor.predict(batch);
    ms.push(performance.now() - t0);
  }
  return ms.sort((a, b) => a - b);
}

async function benchModel(name: string, file: string): Promise<void> {
  const { onnx, reference } = await exportModelFile(file);
  const exported = await OnnxPredictor.fromBytes(onnx.bytes, `${file} (exported)`);
  try {
    const images = benchImages(8, size, 3);
    for (const batch of [1, 8]) {
      for (const [runtime, predictor] of [
        ['libtorch', reference],
        ['onnxruntime-node', exported],
      ] as const) {
        const ms = await time(predictor, images.slice(0, batch));
        const p50 = ms[Math.floor(ms.length / 2)];
        console.log(
          `case=${name} runtime=${runtime} batch=${batch} p50_ms=${p50.toFixed(1)} min_ms=${ms[0].toFixed(1)} ` +
            `ms_per_image=${(p50 / batch).toFixed(1)} img_per_s=${((1000 * batch) / p50).toFixed(1)}`,
        );
      }
    }
    const [a, b] = [await reference.predict(images), await exported.predict(images)];
    let mapDiff = 0;
    let scoreDiff = 0;
    a.forEach((p, i) => {
      p.map.data.forEach((v, j) => (mapDiff = Math.max(mapDiff, Math.abs(v - b[i].map.data[j]))));
      scoreDiff = Math.max(scoreDiff, Math.abs(p.score - b[i].score));
    });
    console.log(`case=${name} max_map_diff=${mapDiff.toExponential(2)} max_score_diff=${scoreDiff.toExponential(2)}`);
  } finally {
    exported.dispose();
    reference.dispose();
  }
}

const dir = await mkdtemp(path.join(os.tmpdir(), 'anoseg-bench-onnx-'));
try {
  console.log(`threads=${threads} iterations=${iterations} image=${size}x${size} RGB`);
  const models = args.model ? { [path.basename(args.model)]: args.model } : await seededModels(dir);
  for (const [name, file] of Object.entries(models)) await benchModel(name, file);
} finally {
  await rm(dir, { recursive: true, force: true });
}
