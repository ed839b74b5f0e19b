/**
 * Inference benchmark: latency (batch 1, p50 / p99) and throughput (best batch) of the anomaly map of seeded,
 * randomly initialised models (speed does not depend on trained weights), printed beside PyTorch's reference
 * (../shared/bench/torch_ref_infer.py: eager and jit-frozen, run here as a subprocess) on the same machine.
 *
 *   npm run bench:predict                                # cpu size, paper size, PaDiM
 *   npm run bench:predict -- --sizes cpu --no-torch      # one size, without PyTorch
 *   npm run bench:predict -- --profile                   # libtorch's per-operator profile of each map case
 *   npm run bench:predict -- --sizes cpu --ablation      # the map path with each inference change undone
 *
 * One line per measured case, comparable between runs:
 *   case=<name> res=<px> width=<w> batch=<n> ms_per_image=<ms> img_per_s=<x> [p50_ms= p99_ms=]
 * Cases:
 *   anoseg-map        the anomaly-map path of the paper's network (coordinates + encoder + map decoder, Table 6),
 *                     the same network torch_ref_infer.py times: compared with torch-eager / torch-jit
 *   anoseg-recipe-map the recipe model's map path (U-Net skips into the map decoder)
 *   anoseg-recipe-net the recipe model's whole network as its score needs it (map + reconstruction decoders)
 *   anoseg-e2e        AnoSegPredictor.predict on decoded 256 px RGB images: fit to the model, network, score, map
 *                     back at the input size (image in, map and score out)
 *   padim-map         PaDiM (width 0.5 backbone, 100 dims) on fitted inputs: embedding, Mahalanobis, smoothing
 *   padim-e2e         PadimPredictor.predict on decoded 256 px RGB images
 *   onnx-e2e / onnx-padim-e2e  the same two models exported to ONNX (anoseg export) and run by onnxruntime-node
 *                     (OnnxPredictor), image in, map and score out, timed in turn with the libtorch cases
 * ms_per_image is the mean over timed calls (as PyTorch's script reports it); latency lines (batch 1) add the p50 and
 * p99 of single calls; throughput is the best batch of the sizes tried.
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import {
  Tensor,
  engineInfo,
  getNumThreads,
  manualSeed,
  noGrad,
  profile,
  releaseDeferred,
  setNumThreads,
  tidy,
} from '../src/engine/index.js';
import type { Image } from '../src/image/types.js';
import { AnoSegGenerator, type AnoSegArchitecture } from '../src/methods/anoseg/network.js';
import { InferenceGenerator, inferenceSettings, type ConvKernel } from '../src/methods/anoseg/inference.js';
import { AnoSegPredictor } from '../src/methods/anoseg/model-file.js';
import { FeatureBackbone } from '../src/models/backbone.js';
import { fitPadimStats, PadimModel, PadimPredictor } from '../src/methods/padim/model.js';
import type { AnomalyPredictor } from '../src/models/predictor.js';
import { exportAnoSeg, exportPadim } from '../src/onnx/export.js';
import { OnnxPredictor } from '../src/onnx/predictor.js';
import { presetConfig } from '../src/methods/anoseg/config.js';

const { values: args } = parseArgs({
  options: {
    sizes: { type: 'string', default: 'cpu,paper' },
    cases: { type: 'string', default: 'anoseg,recipe,padim' },
    threads: { type: 'string' },
    'no-torch': { type: 'boolean', default: false },
    python: { type: 'string' },
    conv: { type: 'string' },
    profile: { type: 'boolean', default: false },
    ablation: { type: 'boolean', default: false },
    help: { type: 'boolean', short: 'h', default: false },
  },
});

if (args.help) {
  console.log(
    'usage: npm run bench:predict -- [--sizes cpu,paper] [--cases anoseg,recipe,padim] [--threads N] [--no-torch]\n' +
      '                               [--python PATH] [--conv prepacked|mkldnn] [--profile] [--ablation]',
  );
  process.exit(0);
}

interface Size {
  name: string;
  res: number;
  width: number;
  /** Batches tried for throughput (batch 1 is the latency case). */
  batches: number[];
  /** Timed repetitions per batch; PyTorch gets the same. */
  reps: number;
  /** Repetitions of the batch-1 latency case (p99 needs enough of them). */
  latencyReps: number;
}

const SIZES: Record<string, Size> = {
  cpu: { name: 'cpu', res: 128, width: 0.25, batches: [2, 4, 8, 16], reps: 10, latencyReps: 60 },
  paper: { name: 'paper', res: 256, width: 1, batches: [2, 4], reps: 3, latencyReps: 12 },
};

const threads = args.threads ? Number(args.threads) : getNumThreads();
setNumThreads(threads);
process.env.ANOSEG_THREADS = String(threads); // OnnxPredictor's intra-op threads: the same count
if (args.conv) inferenceSettings.conv = args.conv as ConvKernel;

interface Timing {
  batch: number;
  /** Milliseconds per call, sorted ascending. */
  calls: number[];
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))];
}

type Run = () => void | Promise<void>;

/**
 * Times runs (one call = one batch) after warm-up calls, yielding between calls like a serving loop does. Several
 * runs are timed call by call in turn (a, b, c, a, b, c, ...), so a change in the machine's load during the
 * measurement hits them alike and their ratios hold even when the absolute figures drift.
 */
async function timeTogether(batch: number, reps: number, runs: Run[]): Promise<Timing[]> {
  for (let i = 0; i < 3; i++) {
    for (const run of runs) {
      await run();
      await releaseDeferred();
    }
  }
  const calls = runs.map((): number[] => []);
  for (let i = 0; i < reps; i++) {
    for (const [k, run] of runs.entries()) {
      const t0 = performance.now();
      await run();
      calls[k].push(performance.now() - t0);
      await releaseDeferred();
    }
  }
  return calls.map((c) => ({ batch, calls: c.sort((a, b) => a - b) }));
}

/** Mean milliseconds per image: the statistic torch_ref_infer.py prints, so the two compare like with like. */
function msPerImage(t: Timing): number {
  return t.calls.reduce((a, b) => a + b, 0) / t.calls.length / t.batch;
}

function line(name: string, s: Size, t: Timing, latency: boolean): string {
  const ms = msPerImage(t);
  const tail = latency
    ? ` p50_ms=${percentile(t.calls, 50).toFixed(2)} p99_ms=${percentile(t.calls, 99).toFixed(2)}`
    : '';
  return `case=${name} res=${s.res} width=${s.width} batch=${t.batch} ms_per_image=${ms.toFixed(2)} img_per_s=${(1000 / ms).toFixed(1)}${tail}`;
}

interface CaseResult {
  latency: Timing;
  throughput: Timing;
}

/** Batch-1 latency and the best throughput over the size's batches; prints both lines. */
async function measure(name: string, s: Size, runBatch: (batch: number) => Run): Promise<CaseResult> {
  return (await measureTogether(s, [[name, runBatch]]))[0];
}

/** measure() for several cases timed in turn (see timeTogether); prints each case's lines. */
async function measureTogether(s: Size, cases: [string, (batch: number) => Run][]): Promise<CaseResult[]> {
  const latency = await timeTogether(
    1,
    s.latencyReps,
    cases.map(([, runBatch]) => runBatch(1)),
  );
  const best = latency.slice();
  for (const b of s.batches) {
    const timings = await timeTogether(
      b,
      s.reps,
      cases.map(([, runBatch]) => runBatch(b)),
    );
    timings.forEach((t, k) => {
      if (msPerImage(t) < msPerImage(best[k])) best[k] = t;
    });
  }
  return cases.map(([name], k) => {
    console.log(line(name, s, latency[k], true));
    console.log(line(name, s, best[k], false));
    return { latency: latency[k], throughput: best[k] };
  });
}

function printProfile(title: string, fn: () => void): void {
  const rows = profile(() => {
    for (let i = 0; i < 5; i++) fn();
  });
  console.log(`  profile ${title} (ms per call, inclusive):`);
  for (const r of rows.slice(0, 15)) {
    console.log(`    ${r.name.padEnd(44)} ${(r.totalMs / 5).toFixed(2).padStart(9)}  x${r.count / 5}`);
  }
}

function architecture(s: Size, recipe: boolean): AnoSegArchitecture {
  if (recipe) return { ...presetConfig('recipe').arch, resolution: s.res, width: s.width, channels: 3 };
  // torch_ref_infer.py's network: the paper's Table 6 (no skips), coordinate channels
  return {
    resolution: s.res,
    channels: 3,
    width: s.width,
    coordChannels: true,
    reconstruction: true,
    upsampling: 'transposed',
    skips: false,
  };
}

/** Seeded random RGB images of a size (decoded pixels in [0, 1]). */
function randomImages(n: number, side: number, seed: number): Image[] {
  manualSeed(seed);
  return Array.from({ length: n }, () =>
    tidy(() => ({
      channels: 3,
      height: side,
      width: side,
      data: Tensor.rand([3, side, side]).toFloat32Array(),
    })),
  );
}

/** Runs the folded generator on a batch and fetches the map, as scoring does. */
function mapRunner(g: InferenceGenerator, s: Size, mapOnly: boolean): (batch: number) => () => void {
  return (batch) => {
    manualSeed(1);
    const x = Tensor.rand([batch, 3, s.res, s.res]);
    return () =>
      tidy(() => {
        const out = g.forward(x, { mapOnly });
        out.map.toFloat32Array();
        out.reconstruction?.toFloat32Array();
      });
  };
}

function predictorRunner(p: AnomalyPredictor, side: number): (batch: number) => () => Promise<void> {
  return (batch) => {
    const images = randomImages(batch, side, 2);
    return async () => {
      await p.predict(images);
    };
  };
}

// ------------------------------------------------------------------------------------------------ PyTorch

interface TorchLine {
  path: 'eager' | 'jit';
  batch: number;
  msPerImage: number;
}

function pythonPath(): string {
  if (args.python) return args.python;
  // Debian's python3-torch lives in the system interpreter; a pyenv/venv python3 first on PATH lacks it.
  return existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';
}

const here = path.dirname(fileURLToPath(import.meta.url));
const torchScript = path.resolve(here, '..', '..', 'shared', 'bench', 'torch_ref_infer.py');

function torchAvailable(): string | null {
  if (args['no-torch']) return 'skipped (--no-torch)';
  if (!existsSync(torchScript)) return `skipped: ${torchScript} not found`;
  const r = spawnSync(pythonPath(), ['-c', 'import torch; print(torch.__version__)'], { encoding: 'utf8' });
  if (r.status !== 0) return `skipped: ${pythonPath()} cannot import torch (apt-get install -y python3-torch)`;
  return null;
}

/** Runs torch_ref_infer.py at one batch and parses its `torch <v> <path> ... ms_per_image=<ms>` lines. */
function runTorch(s: Size, batch: number, reps: number): TorchLine[] {
  const r = spawnSync(
    pythonPath(),
    [
      torchScript,
      '--res',
      String(s.res),
      '--width',
      String(s.width),
      '--batch',
      String(batch),
      '--reps',
      String(reps),
      '--threads',
      String(threads),
    ],
    { encoding: 'utf8', cwd: path.dirname(torchScript) },
  );
  if (r.status !== 0) throw new Error(`torch_ref_infer.py failed (${r.status}): ${r.stderr.trim().split('\n').pop()}`);
  const out: TorchLine[] = [];
  for (const l of r.stdout.split('\n')) {
    const m = /^torch \S+ (eager|jit) .*ms_per_image=([\d.]+)/.exec(l);
    if (m) out.push({ path: m[1] as 'eager' | 'jit', batch, msPerImage: Number(m[2]) });
  }
  if (out.length !== 2) throw new Error(`torch_ref_infer.py: unexpected output:\n${r.stdout}`);
  return out;
}

function torchLine(s: Size, t: TorchLine): string {
  return `case=torch-${t.path} res=${s.res} width=${s.width} batch=${t.batch} ms_per_image=${t.msPerImage.toFixed(2)} img_per_s=${(1000 / t.msPerImage).toFixed(1)}`;
}

/** PyTorch at batch 1 and at each throughput batch; prints batch 1 and each path's best batch. */
function measureTorch(s: Size): { latency: number; throughput: number } {
  const latency = runTorch(s, 1, s.latencyReps);
  for (const t of latency) console.log(torchLine(s, t));
  const all = [...latency, ...s.batches.flatMap((b) => runTorch(s, b, s.reps))];
  for (const p of ['eager', 'jit'] as const) {
    const best = all.filter((t) => t.path === p).reduce((a, b) => (b.msPerImage < a.msPerImage ? b : a));
    console.log(torchLine(s, best));
  }
  return {
    latency: Math.min(...latency.map((t) => t.msPerImage)),
    throughput: Math.min(...all.map((t) => t.msPerImage)),
  };
}

// ------------------------------------------------------------------------------------------------ main

async function main(): Promise<void> {
  const info = engineInfo();
  const cases = new Set(args.cases.split(','));
  const torchSkip = torchAvailable();
  console.log(
    `bench:predict libtorch ${info.torchVersion}, ${threads} thread(s), conv kernel ${inferenceSettings.conv}; ` +
      `PyTorch reference: ${torchSkip ?? `${pythonPath()} ${path.relative(process.cwd(), torchScript)}`}`,
  );
  for (const sizeName of args.sizes.split(',')) {
    const s = SIZES[sizeName];
    if (!s) throw new Error(`unknown size '${sizeName}' (known: ${Object.keys(SIZES).join(', ')})`);
    console.log(`-- ${s.name} size: ${s.res} px, width ${s.width}`);
    if (cases.has('anoseg')) {
      manualSeed(0);
      const generator = new AnoSegGenerator(architecture(s, false)).eval();
      const folded = InferenceGenerator.fromGenerator(generator);
      generator.dispose();
      const ours = await measure('anoseg-map', s, mapRunner(folded, s, true));
      if (args.profile) printProfile('anoseg-map batch 1', mapRunner(folded, s, true)(1));
      folded.dispose();
      if (!torchSkip) {
        const torch = measureTorch(s);
        console.log(
          `ratio anoseg-map vs faster PyTorch path res=${s.res} width=${s.width}: ` +
            `batch 1 x${(torch.latency / msPerImage(ours.latency)).toFixed(2)}, ` +
            `throughput x${(torch.throughput / msPerImage(ours.throughput)).toFixed(2)}`,
        );
      }
    }
    if (args.ablation) await ablation(s);
    if (cases.has('recipe')) {
      manualSeed(0);
      const arch = architecture(s, true);
      const generator = new AnoSegGenerator(arch).eval();
      const meta = {
        arch,
        aspect: 'stretch' as const,
        score: { sigma: 4, reconstructionWeight: 1 },
        imageThreshold: 0.5,
        pixelThreshold: 0.5,
        facts: {},
      };
      const predictor = new AnoSegPredictor(generator, meta);
      const onnx = await OnnxPredictor.fromBytes(
        exportAnoSeg(generator, meta, predictor.info).bytes,
        'recipe (seeded)',
      );
      const folded = predictor.inference;
      const [map, net, e2e] = await measureTogether(s, [
        ['anoseg-recipe-map', mapRunner(folded, s, true)],
        ['anoseg-recipe-net', mapRunner(folded, s, false)],
        ['anoseg-e2e', predictorRunner(predictor, 256)],
        ['onnx-e2e', predictorRunner(onnx, 256)],
      ]);
      onnx.dispose();
      for (const [label, base] of [
        ['map', map],
        ['net', net],
      ] as const) {
        console.log(
          `ratio anoseg-e2e / anoseg-recipe-${label} res=${s.res}: batch 1 x${(msPerImage(e2e.latency) / msPerImage(base.latency)).toFixed(2)}, ` +
            `throughput x${(msPerImage(e2e.throughput) / msPerImage(base.throughput)).toFixed(2)}`,
        );
      }
      if (args.profile) {
        const images = randomImages(1, 256, 2);
        printProfile(
          'anoseg-e2e batch 1 (libtorch part)',
          () => void predictor.scoreFitted(images.map(() => fitted(s))),
        );
      }
      predictor.dispose();
    }
    if (cases.has('padim') && s.name === 'cpu') {
      const predictor = padimPredictor(s.res);
      const inputs = (batch: number) => () => {
        const images = Array.from({ length: batch }, () => fitted(s));
        return () => void predictor.scoreFitted(images);
      };
      const padimSize = { ...s, width: 0.5 };
      const onnx = await OnnxPredictor.fromBytes(exportPadim(predictor.model, predictor.info).bytes, 'PaDiM (seeded)');
      await measureTogether(padimSize, [
        ['padim-map', (b) => inputs(b)()],
        ['padim-e2e', predictorRunner(predictor, 256)],
        ['onnx-padim-e2e', predictorRunner(onnx, 256)],
      ]);
      onnx.dispose();
      if (args.profile) printProfile('padim-map batch 1', inputs(1)());
      predictor.dispose();
    }
  }
}

/**
 * The anoseg-map case with each inference change undone, in alternating rounds (so drift in the machine's load hits
 * every variant alike): the training modules in eval mode under noGrad (BatchNorm as its own op, sub-pixel
 * transposed convolutions as four convolutions, libtorch's convolution dispatch), the folded network on
 * aten::mkldnn_convolution (weights reordered every call, ReLU as a second pass), and the folded network on
 * prepacked convolutions (the default).
 */
async function ablation(s: Size): Promise<void> {
  manualSeed(0);
  const generator = new AnoSegGenerator(architecture(s, false)).eval();
  const folded = new Map<ConvKernel, InferenceGenerator>();
  for (const kernel of ['mkldnn', 'prepacked'] as ConvKernel[])
    folded.set(kernel, InferenceGenerator.fromGenerator(generator));
  const unfolded = (batch: number) => {
    manualSeed(1);
    const x = Tensor.rand([batch, 3, s.res, s.res]);
    return () => noGrad(() => tidy(() => void generator.forward(x).map.toFloat32Array()));
  };
  const variants: [string, (batch: number) => () => void, ConvKernel][] = [
    ['anoseg-map-unfolded', unfolded, inferenceSettings.conv],
    ['anoseg-map-folded-mkldnn', mapRunner(folded.get('mkldnn')!, s, true), 'mkldnn'],
    ['anoseg-map-folded-prepacked', mapRunner(folded.get('prepacked')!, s, true), 'prepacked'],
  ];
  const kernel = inferenceSettings.conv;
  for (const batch of [1, 8]) {
    const runs = variants.map(([, runner, conv]) => {
      const run = runner(batch);
      return () => {
        inferenceSettings.conv = conv;
        run();
      };
    });
    const timings = await timeTogether(batch, batch === 1 ? s.latencyReps : s.reps * 2, runs);
    timings.forEach((t, k) => console.log(line(variants[k][0], s, t, batch === 1)));
  }
  inferenceSettings.conv = kernel;
  for (const f of folded.values()) f.dispose();
  generator.dispose();
}

/** A random image already at model resolution (what scoreFitted takes). */
function fitted(s: Size): Image {
  return randomImages(1, s.res, 3)[0];
}

function padimPredictor(res: number): PadimPredictor {
  const backbone = FeatureBackbone.random(0.5, 0);
  const train = randomImages(4, res, 4);
  const stats = noGrad(() => fitPadimStats(backbone, train, { dims: 100, seed: 0 }));
  const model = new PadimModel(backbone, stats, {
    resolution: res,
    aspect: 'stretch',
    channels: 3,
    dims: 100,
    seed: 0,
    eps: 0.01,
    sigma: 4,
    backbone: backbone.meta,
    imageThreshold: 1,
    pixelThreshold: 1,
    facts: {},
  });
  return new PadimPredictor(model);
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
