#!/usr/bin/env node
/**
 * The `anoseg` command line. Each command is a thin layer over the library API (src/index.ts).
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { existsSync, promises as fs } from 'node:fs';
import path from 'node:path';
import { presetConfig, DEFAULT_PRESET, PRESETS, validateConfig, type AnoSegTrainConfig } from '../train/config.js';
import { trainAnoSeg } from '../train/anoseg-trainer.js';
import { loadPredictor } from '../models/load.js';
import { AnoSegPredictor } from '../models/anoseg-model.js';
import { openImageFolder, openMvtecDataset, isImageFile, loadImages } from '../data/dataset.js';
import { generateSyntheticDataset } from '../data/synthetic-dataset.js';
import { evaluateMaps, folderMapProvider, formatMetricsTable } from '../eval/evaluate.js';
import { modelMapProvider } from '../eval/model-maps.js';
import { saveImagePng, saveMapTiff, saveMap16 } from '../image/io.js';
import { heatmap, overlay } from '../image/visual.js';
import { writeSynthSamples } from '../synth/anomalies.js';
import { writeFormulaSamples } from '../synth/formula.js';
import { writeFileAtomic } from '../util/atomic.js';

class UsageError extends Error {}

/** --help: print the command's usage and exit 0. */
class HelpRequested extends Error {}

const HELP = `anoseg — anomaly segmentation trained on defect-free images (AnoSeg, PaDiM) on libtorch

Usage: anoseg <command> [options]

Commands:
  train          train a model on good images (MVTec-layout category or a plain folder)
  predict        anomaly maps, heatmaps, overlays and scores for images or folders
  eval           metrics.json + report.html on a test split (from a model or from map files)
  synth          write synthetic-anomaly samples (image | mask) to look at
  formula-synth  write formula-driven (GMM) defect samples and a contact sheet
  serve          HTTP inspection service with a web page
  study          train presets on several data sets with one budget and tabulate the metrics
  demo           train and evaluate on ../shared/datasets/mvtec/bottle or a generated data set

Run 'anoseg <command> --help' for the options of a command.`;

type Opts = NonNullable<ParseArgsConfig['options']>;

function parse(
  args: string[],
  options: Opts,
  usage: string,
): { values: Record<string, string | boolean | undefined>; positionals: string[] } {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      options: { ...options, help: { type: 'boolean', short: 'h' } },
      allowPositionals: true,
      strict: true,
    });
  } catch (e) {
    throw new UsageError(`${(e as Error).message}\n\n${usage}`);
  }
  if (parsed.values.help) throw new HelpRequested(usage);
  return parsed as { values: Record<string, string | boolean | undefined>; positionals: string[] };
}

function num(
  v: string | boolean | undefined,
  name: string,
  check: (n: number) => boolean = () => true,
): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (typeof v !== 'string' || v.trim() === '' || !Number.isFinite(n) || !check(n))
    throw new UsageError(`invalid value for --${name}: ${String(v)}`);
  return n;
}

function choice<T extends string>(v: string | boolean | undefined, name: string, allowed: readonly T[]): T | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== 'string' || !(allowed as readonly string[]).includes(v)) {
    throw new UsageError(`invalid value for --${name}: ${String(v)} (one of ${allowed.join(', ')})`);
  }
  return v as T;
}

const TRAIN_USAGE = `anoseg train --data DIR [options]

  --data DIR            MVTec-layout category (uses train/good; test/ + ground_truth/ enable live test diagnostics)
                        or a plain folder of good images
  --out DIR             run folder (default runs/anoseg/<data name>); rerunning resumes from its checkpoint
  --preset NAME         ${Object.keys(PRESETS).join(' | ')} (default ${DEFAULT_PRESET})
  --steps N             optimisation steps      --minutes M   wall-clock budget (stops and saves)
  --resolution PX       input size (power of 2) --width W     channel multiplier of Table 6
  --batch N             images per step         --lr LR       learning rate
  --seed N              random seed             --aspect stretch|pad|crop
  --no-hard-aug         CutPaste without rotation/perm/jitter (ablation)
  --no-adversarial      drop L_Adv (ablation)   --adv-weight W  weight of L_Adv
  --no-coords           no coordinate channels (ablation)
  --fake-pair reconstruction|input            eq. 3's fake pair
  --mask-shape rect|perlin|gmm|mixed  --blend hard|soft|mixed  --source self|other-image|texture|mixed
  --seg-loss l1|balanced-l1     segmentation loss (eq. 2 or its class-balanced variant)
  --upsampling transposed|resize
  --eval-every N        steps between diagnostics  --no-resume  start over even if a checkpoint exists`;

export function trainConfigFromArgs(v: Record<string, string | boolean | undefined>): AnoSegTrainConfig {
  const preset = choice(v.preset, 'preset', Object.keys(PRESETS)) ?? DEFAULT_PRESET;
  if (v['no-adversarial'] && v['adv-weight'] !== undefined)
    throw new UsageError('--no-adversarial and --adv-weight contradict each other');
  const cfg = presetConfig(preset);
  const pos = (n: number): boolean => n > 0;
  const int = (n: number): boolean => Number.isInteger(n) && n > 0;
  cfg.steps = num(v.steps, 'steps', int) ?? cfg.steps;
  cfg.maxMinutes = num(v.minutes, 'minutes', pos) ?? cfg.maxMinutes;
  cfg.arch.resolution = num(v.resolution, 'resolution', int) ?? cfg.arch.resolution;
  cfg.arch.width = num(v.width, 'width', pos) ?? cfg.arch.width;
  cfg.batchSize = num(v.batch, 'batch', int) ?? cfg.batchSize;
  cfg.lr = num(v.lr, 'lr', pos) ?? cfg.lr;
  cfg.seed = num(v.seed, 'seed', (n) => Number.isInteger(n) && n >= 0) ?? cfg.seed;
  cfg.evalEvery = num(v['eval-every'], 'eval-every', int) ?? cfg.evalEvery;
  cfg.aspect = choice(v.aspect, 'aspect', ['stretch', 'pad', 'crop'] as const) ?? cfg.aspect;
  if (v['no-hard-aug']) cfg.anomaly.hardAugmentation = false;
  if (v['no-adversarial']) cfg.loss.adversarialWeight = 0;
  cfg.loss.adversarialWeight = num(v['adv-weight'], 'adv-weight', (n) => n >= 0) ?? cfg.loss.adversarialWeight;
  if (v['no-coords']) cfg.arch.coordChannels = false;
  cfg.loss.fakePair = choice(v['fake-pair'], 'fake-pair', ['reconstruction', 'input'] as const) ?? cfg.loss.fakePair;
  cfg.anomaly.maskShape =
    choice(v['mask-shape'], 'mask-shape', ['rect', 'perlin', 'gmm'] as const) ?? cfg.anomaly.maskShape;
  cfg.anomaly.blend = choice(v.blend, 'blend', ['hard', 'soft'] as const) ?? cfg.anomaly.blend;
  cfg.anomaly.source = choice(v.source, 'source', ['self', 'other-image', 'texture'] as const) ?? cfg.anomaly.source;
  cfg.arch.upsampling = choice(v.upsampling, 'upsampling', ['transposed', 'resize'] as const) ?? cfg.arch.upsampling;
  cfg.checkpointEvery = Math.min(cfg.checkpointEvery, cfg.steps);
  cfg.evalEvery = Math.min(cfg.evalEvery, cfg.steps);
  try {
    validateConfig(cfg);
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  return cfg;
}

const TRAIN_OPTIONS: Opts = {
  data: { type: 'string' },
  out: { type: 'string' },
  preset: { type: 'string' },
  steps: { type: 'string' },
  minutes: { type: 'string' },
  resolution: { type: 'string' },
  width: { type: 'string' },
  batch: { type: 'string' },
  lr: { type: 'string' },
  seed: { type: 'string' },
  aspect: { type: 'string' },
  'no-hard-aug': { type: 'boolean' },
  'no-adversarial': { type: 'boolean' },
  'adv-weight': { type: 'string' },
  'no-coords': { type: 'boolean' },
  'fake-pair': { type: 'string' },
  'mask-shape': { type: 'string' },
  'seg-loss': { type: 'string' },
  blend: { type: 'string' },
  source: { type: 'string' },
  upsampling: { type: 'string' },
  'eval-every': { type: 'string' },
  'no-resume': { type: 'boolean' },
};

async function cmdTrain(args: string[]): Promise<void> {
  const { values: v } = parse(args, TRAIN_OPTIONS, TRAIN_USAGE);
  if (typeof v.data !== 'string') throw new UsageError(`--data is required\n\n${TRAIN_USAGE}`);
  const cfg = trainConfigFromArgs(v);
  const out = typeof v.out === 'string' ? v.out : path.join('runs', 'anoseg', path.basename(path.resolve(v.data)));
  process.stderr.write(`training ${cfg.preset} preset on ${v.data} -> ${out} (log: ${path.join(out, 'train.log')})\n`);
  const r = await trainAnoSeg({ data: v.data, out, config: cfg, resume: !v['no-resume'] });
  const last = r.diagnostics.at(-1);
  process.stdout.write(
    `model: ${r.modelPath}\nsteps ${r.steps}, ${r.minutes.toFixed(1)} min` +
      (last ? `, synthetic val pixel AUROC ${last.syntheticPixelAuroc.toFixed(3)}` : '') +
      (last?.testPixelAuroc != null ? `, test pixel AUROC ${last.testPixelAuroc.toFixed(3)}` : '') +
      (last?.testImageAuroc != null ? `, test image AUROC ${last.testImageAuroc.toFixed(3)}` : '') +
      `\ncurves: ${path.join(path.dirname(r.modelPath), 'curves.html')}\n`,
  );
}

const PREDICT_USAGE = `anoseg predict --model MODEL [--out DIR] [--format png|tiff|both] IMAGE_OR_FOLDER...

Writes per image <name>_map.tiff (float anomaly map, higher = more anomalous) and/or <name>_map.png (16-bit),
<name>_heatmap.png, <name>_overlay.png, and scores.csv (path, score, verdict at the model's threshold).`;

/** Input files with their output name: the path relative to the given folder, so sub-folders never collide. */
async function expandInputs(inputs: string[]): Promise<{ file: string; rel: string }[]> {
  const files: { file: string; rel: string }[] = [];
  for (const p of inputs) {
    let st;
    try {
      st = await fs.stat(p);
    } catch {
      throw new UsageError(`input not found: ${p}`);
    }
    if (st.isDirectory()) {
      for (const f of await openImageFolder(p, { recursive: true })) files.push({ file: f, rel: path.relative(p, f) });
    } else if (isImageFile(p)) files.push({ file: p, rel: path.basename(p) });
    else throw new UsageError(`not an image file (png, jpg, bmp, tif): ${p}`);
  }
  return files;
}

async function cmdPredict(args: string[]): Promise<void> {
  const { values: v, positionals } = parse(
    args,
    { model: { type: 'string' }, out: { type: 'string' }, format: { type: 'string' } },
    PREDICT_USAGE,
  );
  if (typeof v.model !== 'string') throw new UsageError(`--model is required\n\n${PREDICT_USAGE}`);
  if (positionals.length === 0) throw new UsageError(`no input images given\n\n${PREDICT_USAGE}`);
  const format = choice(v.format, 'format', ['png', 'tiff', 'both'] as const) ?? 'tiff';
  const out = typeof v.out === 'string' ? v.out : 'predictions';
  const files = await expandInputs(positionals);
  const predictor = await loadPredictor(v.model);
  const lines = ['path,score,verdict'];
  let failures = 0;
  // Streaming: one image at a time, so folders of any size fit in memory.
  for (const { file, rel } of files) {
    const loaded = await loadImages([file], { channels: 'keep' });
    if (loaded.failures.length) {
      failures++;
      process.stderr.write(`skipped ${file}: ${loaded.failures[0].reason}\n`);
      continue;
    }
    const img = loaded.images[0].image;
    const [pred] = await predictor.predict([img]);
    const base = path.join(out, rel.replace(/\.[^.]+$/, ''));
    if (format !== 'png') await saveMapTiff(`${base}_map.tiff`, pred.map);
    if (format !== 'tiff') await saveMap16(`${base}_map.png`, pred.map);
    const vis = { ...pred.map, data: pred.map.data.map((x) => Math.min(1, Math.max(0, x))) };
    await saveImagePng(`${base}_heatmap.png`, heatmap(vis));
    await saveImagePng(
      `${base}_overlay.png`,
      overlay(
        img.channels === 4 ? { ...img, channels: 3, data: img.data.subarray(0, 3 * img.height * img.width) } : img,
        vis,
        0.45,
      ),
    );
    const verdict = pred.score >= predictor.info.imageThreshold ? 'defective' : 'good';
    lines.push(`${JSON.stringify(file)},${pred.score.toFixed(6)},${verdict}`);
    process.stdout.write(`${file}\t${pred.score.toFixed(4)}\t${verdict}\n`);
  }
  await writeFileAtomic(path.join(out, 'scores.csv'), `${lines.join('\n')}\n`);
  predictor.dispose();
  process.stderr.write(
    `wrote ${files.length - failures} prediction(s) to ${out}${failures ? `, ${failures} unreadable file(s) skipped` : ''}\n`,
  );
}

const EVAL_USAGE = `anoseg eval --data DIR (--model MODEL | --maps DIR) [--out DIR] [--eval-size PX] [--sigma S]

Evaluates the test split of an MVTec-layout category: pixel AUROC, image AUROC, best IoU (10,000-step search)
and IoU over thresholds, AUPRO up to FPR 0.3, pixel AP, best F1 — per defect type and overall — into
metrics.json and report.html. --score-sigma / --recon-weight override an AnoSeg model's score settings
(image-score smoothing; weight of the blurred reconstruction error added to 1 - map). --maps scores maps made elsewhere: DIR/<defect>/<name>.tiff (float) or .png
(16/8-bit), higher = more anomalous (--invert for maps where 1 = normal).`;

async function cmdEval(args: string[]): Promise<void> {
  const { values: v } = parse(
    args,
    {
      data: { type: 'string' },
      model: { type: 'string' },
      maps: { type: 'string' },
      out: { type: 'string' },
      'eval-size': { type: 'string' },
      sigma: { type: 'string' },
      invert: { type: 'boolean' },
      'score-sigma': { type: 'string' },
      'recon-weight': { type: 'string' },
    },
    EVAL_USAGE,
  );
  if (typeof v.data !== 'string') throw new UsageError(`--data is required\n\n${EVAL_USAGE}`);
  if ((typeof v.model === 'string') === (typeof v.maps === 'string'))
    throw new UsageError(`give exactly one of --model or --maps\n\n${EVAL_USAGE}`);
  const out =
    typeof v.out === 'string'
      ? v.out
      : typeof v.model === 'string'
        ? path.join(path.dirname(v.model), 'eval')
        : path.join(v.maps as string, 'eval');
  const predictor = typeof v.model === 'string' ? await loadPredictor(v.model) : null;
  const scoreSigma = num(v['score-sigma'], 'score-sigma', (n) => n >= 0);
  const reconWeight = num(v['recon-weight'], 'recon-weight', (n) => n >= 0);
  if (scoreSigma !== undefined || reconWeight !== undefined) {
    if (!(predictor instanceof AnoSegPredictor))
      throw new UsageError('--score-sigma / --recon-weight apply to AnoSeg models only');
    predictor.meta.score = {
      sigma: scoreSigma ?? predictor.meta.score.sigma,
      reconstructionWeight: reconWeight ?? predictor.meta.score.reconstructionWeight,
    };
  }
  const provider = predictor
    ? modelMapProvider(predictor)
    : folderMapProvider(v.maps as string, { invert: Boolean(v.invert) });
  const metrics = await evaluateMaps({
    dataRoot: v.data,
    mapProvider: provider,
    outDir: out,
    evalSize: num(v['eval-size'], 'eval-size', (n) => Number.isInteger(n) && n > 0),
    imageScoreSigma: num(v.sigma, 'sigma', (n) => n >= 0),
    onProgress: (done, total) => process.stderr.write(`\revaluating ${done}/${total}`),
  });
  process.stderr.write('\n');
  predictor?.dispose();
  process.stdout.write(
    `${formatMetricsTable(metrics)}\nmetrics: ${path.join(out, 'metrics.json')}\nreport:  ${path.join(out, 'report.html')}\n`,
  );
}

const SYNTH_USAGE = `anoseg synth --data DIR [--out DIR] [--count N] [--seed N] [--preset NAME] [--mask-shape ...] [--blend ...] [--source ...]

Writes synthetic-anomaly samples (image | mask, white = normal) made from the good images of DIR.`;

async function cmdSynth(args: string[]): Promise<void> {
  const { values: v } = parse(args, { ...TRAIN_OPTIONS, count: { type: 'string' } }, SYNTH_USAGE);
  if (typeof v.data !== 'string') throw new UsageError(`--data is required\n\n${SYNTH_USAGE}`);
  const cfg = trainConfigFromArgs(v);
  const count = num(v.count, 'count', (n) => Number.isInteger(n) && n > 0) ?? 16;
  const out = typeof v.out === 'string' ? v.out : 'synth-samples';
  const dir = existsSync(path.join(v.data, 'train', 'good')) ? path.join(v.data, 'train', 'good') : v.data;
  const paths = (await openImageFolder(dir)).slice(0, Math.max(count, 8));
  const loaded = await loadImages(paths, { channels: 'keep' });
  if (!loaded.images.length) throw new Error(`no readable images in ${dir}`);
  const { fitImage } = await import('../image/io.js');
  const images = loaded.images.map((l) => fitImage(l.image, cfg.arch.resolution, cfg.aspect).image);
  const written = await writeSynthSamples(out, images, count, cfg.seed, cfg.anomaly);
  process.stdout.write(`wrote ${written.length} samples to ${out}\n`);
}

const FORMULA_USAGE = `anoseg formula-synth [--out DIR] [--count N] [--seed N] [--size PX] [--data DIR]

Writes formula-driven defect samples (GMM-shaped defects on procedural textures, or on the good images of
--data), a contact sheet and a parameter sweep sheet.`;

async function cmdFormulaSynth(args: string[]): Promise<void> {
  const { values: v } = parse(
    args,
    {
      out: { type: 'string' },
      count: { type: 'string' },
      seed: { type: 'string' },
      size: { type: 'string' },
      data: { type: 'string' },
    },
    FORMULA_USAGE,
  );
  const count = num(v.count, 'count', (n) => Number.isInteger(n) && n > 0) ?? 36;
  const seed = num(v.seed, 'seed', (n) => Number.isInteger(n) && n >= 0) ?? 0;
  const size = num(v.size, 'size', (n) => Number.isInteger(n) && n >= 16) ?? 128;
  const out = typeof v.out === 'string' ? v.out : 'formula-samples';
  let bases: import('../image/types.js').Image[] | 'procedural' = 'procedural';
  if (typeof v.data === 'string') {
    const dir = existsSync(path.join(v.data, 'train', 'good')) ? path.join(v.data, 'train', 'good') : v.data;
    const loaded = await loadImages((await openImageFolder(dir)).slice(0, 64), { channels: 3 });
    if (!loaded.images.length) throw new Error(`no readable images in ${dir}`);
    bases = loaded.images.map((l) => l.image);
  }
  await writeFormulaSamples(out, count, seed, undefined, bases, { size });
  process.stdout.write(`wrote ${count} samples, contact_sheet.png and parameter_sweep.png to ${out}\n`);
}

const SERVE_USAGE = `anoseg serve --model MODEL [--port 8080] [--host 127.0.0.1] [--max-queue 16]`;

async function cmdServe(args: string[]): Promise<void> {
  const { values: v } = parse(
    args,
    { model: { type: 'string' }, port: { type: 'string' }, host: { type: 'string' }, 'max-queue': { type: 'string' } },
    SERVE_USAGE,
  );
  if (typeof v.model !== 'string') throw new UsageError(`--model is required\n\n${SERVE_USAGE}`);
  const port = num(v.port, 'port', (n) => Number.isInteger(n) && n >= 0 && n < 65536) ?? 8080;
  const host = typeof v.host === 'string' ? v.host : '127.0.0.1';
  const { createInspectionServer } = await import('../service/server.js');
  const predictor = await loadPredictor(v.model);
  const srv = createInspectionServer({
    predictor,
    maxQueue: num(v['max-queue'], 'max-queue', (n) => Number.isInteger(n) && n > 0),
  });
  const url = await srv.listen(port, host);
  process.stdout.write(`serving ${v.model} on ${url}\n`);
  const stop = (): void => {
    void srv.close().then(() => {
      predictor.dispose();
      process.exit(0);
    });
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
}

const DEMO_USAGE = `anoseg demo [--data DIR] [--out DIR] [--minutes M]

Trains the default recipe and evaluates it. Data: --data, else ../shared/datasets/mvtec/bottle when present,
else a generated synthetic data set. Default budget: 20 minutes of training.`;

async function cmdDemo(args: string[]): Promise<void> {
  const { values: v } = parse(
    args,
    { data: { type: 'string' }, out: { type: 'string' }, minutes: { type: 'string' } },
    DEMO_USAGE,
  );
  const out = typeof v.out === 'string' ? v.out : path.join('runs', 'demo');
  let data = typeof v.data === 'string' ? v.data : '';
  if (!data) {
    const shared = path.resolve('..', 'shared', 'datasets', 'mvtec', 'bottle');
    if (existsSync(shared)) data = shared;
    else {
      data = path.join(out, 'synthetic-data');
      if (!existsSync(path.join(data, 'train', 'good'))) {
        process.stderr.write(`generating a synthetic data set in ${data}\n`);
        await generateSyntheticDataset(data, {
          seed: 0,
          size: 128,
          trainCount: 120,
          testGoodCount: 20,
          testDefectCount: 30,
          kind: 'texture',
        });
      }
    }
  }
  await openMvtecDataset(data);
  const minutes = num(v.minutes, 'minutes', (n) => n > 0) ?? 20;
  const cfg = presetConfig(DEFAULT_PRESET);
  cfg.maxMinutes = minutes;
  process.stderr.write(`demo: training '${cfg.preset}' on ${data} for up to ${minutes} min -> ${out}\n`);
  const r = await trainAnoSeg({ data, out, config: cfg });
  const predictor = await AnoSegPredictor.load(r.modelPath);
  const metrics = await evaluateMaps({
    dataRoot: data,
    mapProvider: modelMapProvider(predictor),
    outDir: path.join(out, 'eval'),
    onProgress: (done, total) => process.stderr.write(`\revaluating ${done}/${total}`),
  });
  predictor.dispose();
  process.stdout.write(
    `\n${formatMetricsTable(metrics)}\nreport: ${path.join(out, 'eval', 'report.html')}\ncurves: ${path.join(out, 'curves.html')}\n`,
  );
}

const STUDY_USAGE = `anoseg study [--data DIR,DIR,...] [--presets paper,recipe] [--minutes M] [--out DIR]

Trains each preset on each data set with the same wall-clock budget, evaluates each on its test split and
writes study.md (pixel AUROC, image AUROC, best IoU, AUPRO, training minutes). Default data: the three sets
under ../shared/datasets. Finished runs are kept and not repeated.`;

async function cmdStudy(args: string[]): Promise<void> {
  const { values: v } = parse(
    args,
    { data: { type: 'string' }, presets: { type: 'string' }, minutes: { type: 'string' }, out: { type: 'string' } },
    STUDY_USAGE,
  );
  const shared = path.resolve('..', 'shared', 'datasets');
  const datasets =
    typeof v.data === 'string'
      ? v.data.split(',')
      : ['mvtec/bottle', 'kolektorsdd', 'magnetic_tile'].map((d) => path.join(shared, d));
  const presets = typeof v.presets === 'string' ? v.presets.split(',') : ['paper', 'recipe'];
  for (const p of presets)
    if (!PRESETS[p]) throw new UsageError(`unknown preset '${p}' (known: ${Object.keys(PRESETS).join(', ')})`);
  const minutes = num(v.minutes, 'minutes', (n) => n > 0) ?? 15;
  const out = typeof v.out === 'string' ? v.out : path.join('runs', 'study');
  const { runStudy, presetVariants, studyTable } = await import('../train/study.js');
  const rows = await runStudy({ datasets, variants: presetVariants(presets), minutes, out });
  process.stdout.write(`${studyTable(rows)}\n\ntable: ${path.join(out, 'study.md')}\n`);
}

const COMMANDS: Record<string, (args: string[]) => Promise<void>> = {
  study: cmdStudy,
  train: cmdTrain,
  predict: cmdPredict,
  eval: cmdEval,
  synth: cmdSynth,
  'formula-synth': cmdFormulaSynth,
  serve: cmdServe,
  demo: cmdDemo,
};

export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (!command || command === '--help' || command === '-h' || command === 'help') {
    process.stdout.write(`${HELP}\n`);
    return command ? 0 : 1;
  }
  const run = COMMANDS[command];
  if (!run) {
    process.stderr.write(`unknown command '${command}'\n\n${HELP}\n`);
    return 2;
  }
  try {
    await run(rest);
    return 0;
  } catch (e) {
    if (e instanceof HelpRequested) {
      process.stdout.write(`${e.message}\n`);
      return 0;
    }
    if (e instanceof UsageError) {
      process.stderr.write(`anoseg ${command}: ${e.message}\n`);
      return 2;
    }
    process.stderr.write(`anoseg ${command}: error: ${(e as Error).message}\n`);
    if (process.env.ANOSEG_DEBUG) process.stderr.write(`${(e as Error).stack}\n`);
    return 1;
  }
}

const invokedDirectly = process.argv[1] && /(?:cli[\\/]main\.[jt]s|bin[\\/]anoseg(\.js)?)$/.test(process.argv[1]);
if (invokedDirectly) {
  main(process.argv.slice(2)).then(
    (code) => {
      if (code !== 0 || !process.argv.includes('serve')) process.exitCode = code;
    },
    (e: unknown) => {
      process.stderr.write(`${String(e)}\n`);
      process.exitCode = 1;
    },
  );
}
