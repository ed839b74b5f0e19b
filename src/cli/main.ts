#!/usr/bin/env node
/**
 * The `anoseg` command line. Each command is a thin layer over the library API (src/index.ts).
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { existsSync, promises as fs } from 'node:fs';
import path from 'node:path';
import { presetConfig, DEFAULT_PRESET, PRESETS, validateConfig, type AnoSegTrainConfig } from '../train/config.js';
import { trainAnoSeg } from '../train/anoseg-trainer.js';
import { loadPredictor, modelFileKind } from '../models/load.js';
import { AnoSegPredictor } from '../models/anoseg-model.js';
import {
  openFolderDataset,
  openImageFolder,
  openMvtecDataset,
  openTrainingData,
  isImageFile,
  loadImages,
} from '../data/dataset.js';
import { generateSyntheticDataset } from '../data/synthetic-dataset.js';
import { evaluateMaps, folderMapProvider, formatEvaluationSummary, formatMetricsTable } from '../eval/evaluate.js';
import { modelMapProvider } from '../eval/model-maps.js';
import { ImageReadError } from '../image/io.js';
import { EVAL_MAX_SIDE, MAP_MAX_SIDE, MODEL_DECODE_MAX_SIDE } from '../image/bounded.js';
import { predictImageFile } from '../models/predict-file.js';
import { REGION_SHAPES, writeSynthSamples, type RegionShape } from '../synth/anomalies.js';
import { SEG_LOSSES } from '../train/anoseg-step.js';
import { writeFormulaSamples } from '../synth/formula.js';
import { writeFileAtomic } from '../util/atomic.js';
import { detectorConfig, trainDetector, type DetectorTrainConfig } from '../train/detector-trainer.js';
import { runAblation } from '../train/ablation.js';
import { TABLE5_VARIANTS } from '../models/detector.js';
import { MAP_TOLERANCE, formatExportCheck } from '../onnx/check.js';
import {
  GROUP_OPTIONS,
  GROUP_USAGE,
  LAUNCH_OPTIONS,
  LAUNCH_USAGE,
  inGroup,
  launchLocal,
  otherRankDone,
} from './distributed.js';

class UsageError extends Error {}

/** --help: print the command's usage and exit 0. */
class HelpRequested extends Error {}

const HELP = `anoseg — anomaly segmentation trained on defect-free images (AnoSeg, PaDiM) on libtorch

Usage: anoseg <command> [options]

Commands:
  train          train a model on good images (MVTec-layout category or a plain folder)
  train-detector train the image-level detector (paper 3.4) on top of an AnoSeg model
  ablation       reproduce the paper's ablation (Table 3 or Table 5) at CPU size
  predict        anomaly maps, heatmaps, overlays and scores for images or folders
  eval           metrics.json + report.html on a test split (from a model or from map files)
  synth          write synthetic-anomaly samples (image | mask) to look at
  formula-synth  write formula-driven (GMM) defect samples and a contact sheet
  serve          HTTP inspection service with a web page
  export         write an AnoSeg or PaDiM model as ONNX (checked against libtorch on seeded inputs)
  pretrain       pre-train a PaDiM feature extractor on formula-driven synthetic defects
  padim          fit a PaDiM model (random or formula-pretrained backbone) on good images
  study          train presets on several data sets with one budget and tabulate the metrics
  demo           train and evaluate on ../shared/datasets/mvtec/bottle or a generated data set
  launch         start N local processes of a command as one data-parallel group (anoseg launch --nproc 2 -- train ...)

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

const TRAIN_USAGE = `anoseg train --data DIR [--method anoseg|padim] [options]

  --data DIR            a category in one of the layouts of README "Data layouts" (trains on its good images; a
                        test split enables live test diagnostics, pixel ones where masks exist) or a plain
                        folder of good images
  --out DIR             run folder (default runs/anoseg/<data name>); rerunning resumes from its checkpoint
  --preset NAME         ${Object.keys(PRESETS).join(' | ')} (default ${DEFAULT_PRESET})
  --steps N             optimisation steps      --minutes M   wall-clock budget (stops and saves; recipe: 60)
  --resolution PX       input size (power of 2) --width W     channel multiplier of Table 6
  --train-crop PX       train on random PX-pixel windows of the images at --resolution (power of 2)
  --batch N             images per step         --lr LR       learning rate
  --seed N              random seed             --aspect stretch|pad|crop
  --no-hard-aug         CutPaste without rotation/perm/jitter (ablation)
  --no-adversarial      drop L_Adv (ablation)   --adv-weight W  weight of L_Adv
  --no-coords           no coordinate channels (ablation)
  --fake-pair reconstruction|input            eq. 3's fake pair
  --mask-shape rect|perlin|gmm|stroke|mixed  --blend hard|soft|mixed  --source self|other-image|texture|mixed
  --mixed-shapes LIST   comma-separated shapes 'mixed' draws from (e.g. rect,perlin,gmm,stroke)
  --area-range LO,HI    anomaly patch area as fractions of the image  --area-sampling uniform|log-uniform
  --placement inside|anywhere  anomaly boxes inside the image (CutPaste) or overhanging it (even coverage)
  --seg-loss l1|balanced-l1|focal  segmentation loss (eq. 2, its class-balanced variant, or focal)
  --dice-weight W       weight of a soft Dice term added to the segmentation loss (0 = none)
  --skips | --no-skips  U-Net skip connections into the map decoder (recipe) or Table 6's plain decoder
  --upsampling transposed|resize
  --eval-every N        steps between diagnostics  --no-resume  start over even if a checkpoint exists
  --checkpoint-every N  steps between checkpoints

Data-parallel training (README "Beyond one machine"): run the same command on every process with
${GROUP_USAGE}`;

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
  cfg.trainCrop = num(v['train-crop'], 'train-crop', int) ?? cfg.trainCrop;
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
    choice(v['mask-shape'], 'mask-shape', [...REGION_SHAPES, 'mixed'] as const) ?? cfg.anomaly.maskShape;
  cfg.anomaly.blend = choice(v.blend, 'blend', ['hard', 'soft', 'mixed'] as const) ?? cfg.anomaly.blend;
  cfg.anomaly.source =
    choice(v.source, 'source', ['self', 'other-image', 'texture', 'mixed'] as const) ?? cfg.anomaly.source;
  if (v['mixed-shapes'] !== undefined) {
    const list = String(v['mixed-shapes']).split(',');
    cfg.anomaly.mixedShapes = list.map((m) => choice(m, 'mixed-shapes', REGION_SHAPES) as RegionShape);
  }
  if (v['area-range'] !== undefined) {
    const r = String(v['area-range']).split(',').map(Number);
    if (r.length !== 2 || !(r[0] > 0 && r[1] >= r[0] && r[1] <= 1))
      throw new UsageError(`invalid value for --area-range: ${String(v['area-range'])} (LO,HI with 0 < LO <= HI <= 1)`);
    cfg.anomaly.areaRange = [r[0], r[1]];
  }
  cfg.anomaly.areaSampling =
    choice(v['area-sampling'], 'area-sampling', ['uniform', 'log-uniform'] as const) ?? cfg.anomaly.areaSampling;
  cfg.anomaly.placement = choice(v.placement, 'placement', ['inside', 'anywhere'] as const) ?? cfg.anomaly.placement;
  cfg.loss.segLoss = choice(v['seg-loss'], 'seg-loss', SEG_LOSSES) ?? cfg.loss.segLoss;
  cfg.loss.diceWeight = num(v['dice-weight'], 'dice-weight', (n) => n >= 0) ?? cfg.loss.diceWeight;
  if (v.skips && v['no-skips']) throw new UsageError('--skips and --no-skips contradict each other');
  if (v.skips) cfg.arch.skips = true;
  if (v['no-skips']) cfg.arch.skips = false;
  cfg.arch.upsampling = choice(v.upsampling, 'upsampling', ['transposed', 'resize'] as const) ?? cfg.arch.upsampling;
  cfg.checkpointEvery = num(v['checkpoint-every'], 'checkpoint-every', int) ?? cfg.checkpointEvery;
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
  'train-crop': { type: 'string' },
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
  'dice-weight': { type: 'string' },
  'mixed-shapes': { type: 'string' },
  'area-range': { type: 'string' },
  'area-sampling': { type: 'string' },
  placement: { type: 'string' },
  skips: { type: 'boolean' },
  'no-skips': { type: 'boolean' },
  blend: { type: 'string' },
  source: { type: 'string' },
  upsampling: { type: 'string' },
  'eval-every': { type: 'string' },
  'no-resume': { type: 'boolean' },
  'checkpoint-every': { type: 'string' },
  ...GROUP_OPTIONS,
};

async function cmdTrain(args: string[]): Promise<void> {
  const methodAt = args.indexOf('--method');
  if (methodAt >= 0) {
    const method = args[methodAt + 1];
    const rest = [...args.slice(0, methodAt), ...args.slice(methodAt + 2)];
    if (method === 'padim') return cmdPadim(rest);
    if (method !== 'anoseg')
      throw new UsageError(`invalid value for --method: ${String(method)} (one of anoseg, padim)`);
    args = rest;
  }
  const { values: v } = parse(args, TRAIN_OPTIONS, TRAIN_USAGE);
  if (typeof v.data !== 'string') throw new UsageError(`--data is required\n\n${TRAIN_USAGE}`);
  const cfg = trainConfigFromArgs(v);
  if (!existsSync(v.data)) throw new UsageError(`data folder not found: ${v.data}`);
  const out = typeof v.out === 'string' ? v.out : path.join('runs', 'anoseg', path.basename(path.resolve(v.data)));
  const data = v.data;
  const what = `training ${cfg.preset} preset on ${data} -> ${out} (log: ${path.join(out, 'train.log')})`;
  const { r, dp } = await inGroup(
    v,
    (m) => new UsageError(m),
    what,
    async (dp) => ({
      r: await trainAnoSeg({ data, out, config: cfg, resume: !v['no-resume'], distributed: dp }),
      dp,
    }),
  );
  if (otherRankDone(dp, r.steps)) return;
  const last = r.diagnostics.at(-1);
  process.stdout.write(
    `model: ${r.modelPath}\nsteps ${r.steps}, ${r.minutes.toFixed(1)} min` +
      (last ? `, synthetic val pixel AUROC ${last.syntheticPixelAuroc.toFixed(3)}` : '') +
      (last?.testPixelAuroc != null ? `, test pixel AUROC ${last.testPixelAuroc.toFixed(3)}` : '') +
      (last?.testImageAuroc != null ? `, test image AUROC ${last.testImageAuroc.toFixed(3)}` : '') +
      `\ncurves: ${path.join(path.dirname(r.modelPath), 'curves.html')}\n`,
  );
}

const PREDICT_USAGE = `anoseg predict --model MODEL [--out DIR] [--format png|tiff|both] [--decode-max-side PX] [--map-max-side PX] IMAGE_OR_FOLDER...

Writes per image <name>_map.tiff (float anomaly map, higher = more anomalous) and/or <name>_map.png (16-bit),
<name>_heatmap.png, <name>_overlay.png, and scores.csv (path, score, verdict at the model's threshold).
Large images: decoded straight to at most --decode-max-side px on the longer side for the model (default
${MODEL_DECODE_MAX_SIDE}; 0 = as stored); the map is written at the input's size up to --map-max-side px on the longer side
(default ${MAP_MAX_SIDE}; 0 = always the input's size); heatmap and overlay at the decoded size.`;

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
    {
      model: { type: 'string' },
      out: { type: 'string' },
      format: { type: 'string' },
      'decode-max-side': { type: 'string' },
      'map-max-side': { type: 'string' },
    },
    PREDICT_USAGE,
  );
  if (typeof v.model !== 'string') throw new UsageError(`--model is required\n\n${PREDICT_USAGE}`);
  if (positionals.length === 0) throw new UsageError(`no input images given\n\n${PREDICT_USAGE}`);
  const format = choice(v.format, 'format', ['png', 'tiff', 'both'] as const) ?? 'tiff';
  const decodeMaxSide = maxSideOption(v['decode-max-side'], 'decode-max-side', MODEL_DECODE_MAX_SIDE);
  const mapMaxSide = maxSideOption(v['map-max-side'], 'map-max-side', MAP_MAX_SIDE);
  const out = typeof v.out === 'string' ? v.out : 'predictions';
  const files = await expandInputs(positionals);
  const predictor = await loadPredictor(v.model);
  if (decodeMaxSide !== null && decodeMaxSide < predictor.info.resolution) {
    predictor.dispose();
    throw new UsageError(
      `invalid value for --decode-max-side: ${decodeMaxSide} is below the model resolution ${predictor.info.resolution}`,
    );
  }
  const lines = ['path,score,verdict'];
  let failures = 0;
  // Streaming: one image at a time, each decoded within a bounded size, so folders of any size fit in memory.
  for (const { file, rel } of files) {
    const base = path.join(out, rel.replace(/\.[^.]+$/, ''));
    let r;
    try {
      r = await predictImageFile(predictor, file, base, { format, decodeMaxSide, mapMaxSide });
    } catch (err) {
      if (!(err instanceof ImageReadError)) throw err;
      failures++;
      process.stderr.write(`skipped ${file}: ${err.reason}\n`);
      continue;
    }
    const sizes = (s: { height: number; width: number }): string => `${s.width}x${s.height}`;
    if (r.decoded.height !== r.source.height || r.decoded.width !== r.source.width) {
      process.stderr.write(
        `${file}: ${sizes(r.source)} decoded at ${sizes(r.decoded)} for the model (longer side <= ${String(decodeMaxSide)}); ` +
          `map written at ${sizes(r.map)}, heatmap and overlay at ${sizes(r.decoded)}\n`,
      );
    } else if (r.map.height !== r.source.height || r.map.width !== r.source.width) {
      process.stderr.write(
        `${file}: ${sizes(r.source)}, map written at ${sizes(r.map)} (longer side <= ${String(mapMaxSide)})\n`,
      );
    }
    lines.push(`${JSON.stringify(file)},${r.score.toFixed(6)},${r.verdict}`);
    process.stdout.write(`${file}\t${r.score.toFixed(4)}\t${r.verdict}\n`);
  }
  await writeFileAtomic(path.join(out, 'scores.csv'), `${lines.join('\n')}\n`);
  predictor.dispose();
  process.stderr.write(
    `wrote ${files.length - failures} prediction(s) to ${out}${failures ? `, ${failures} unreadable file(s) skipped` : ''}\n`,
  );
}

/** A --*-max-side option: a positive integer, 0 for none (null), or the default when absent. */
function maxSideOption(v: string | boolean | undefined, name: string, fallback: number): number | null {
  const n = num(v, name, (x) => Number.isInteger(x) && x >= 0);
  if (n === undefined) return fallback;
  return n === 0 ? null : n;
}

const EVAL_USAGE = `anoseg eval (--data DIR [--layout auto|mvtec|mvtec3d|visa] | --good DIR --defective DIR... [--masks DIR])
            (--model MODEL | --maps DIR) [--out DIR] [--eval-size PX | --eval-max-side PX] [--decode-max-side PX]
            [--sigma S] [--image-threshold T]

Evaluates a test split: image AUROC, image AP and best F1 over every test image, with how many good and
defective parts the image threshold passes and rejects (the model's threshold; --image-threshold T for --maps;
else the best-F1 threshold on the test set, marked as optimistic); and pixel AUROC, best IoU (10,000-step
search) and IoU over thresholds, AUPRO up to FPR 0.3, pixel AP, best F1 over the images with masks (good
images count as all normal; defective images without a mask count at image level only) — per defect type and
overall — into metrics.json and report.html (with a histogram of good vs defective image scores).
Data: --data, an MVTec AD, MVTec LOCO, MVTec 3D-AD or VisA (VisA/<category>, split by VisA/split_csv/1cls.csv)
category (detected, or --layout), or the folder layout:
--good DIR (good test images), --defective DIR (repeatable; the folder name is the defect type), --masks DIR
(optional; MASKS/<name>.png or MASKS/<name>_mask.png).
--score-sigma / --recon-weight override an AnoSeg model's score settings (image-score smoothing; weight of the
blurred reconstruction error added to 1 - map). --maps scores maps made elsewhere: DIR/<defect>/<name>.tiff
(float) or .png (16/8-bit), higher = more anomalous (--invert for maps where 1 = normal).
Sizes: maps are evaluated at each mask's own size (the image's without a mask), capped at --eval-max-side px on the
longer side (default ${EVAL_MAX_SIDE}, aspect kept; 0 = no cap), or at --eval-size PX x PX; with --model, images larger than
--decode-max-side px on the longer side (default ${MODEL_DECODE_MAX_SIDE}; 0 = as stored) are decoded straight to that size.
The sizes used are written to metrics.json (input, settings) and stated in report.html.`;

async function cmdEval(args: string[]): Promise<void> {
  const { values: v } = parse(
    args,
    {
      data: { type: 'string' },
      model: { type: 'string' },
      maps: { type: 'string' },
      out: { type: 'string' },
      'eval-size': { type: 'string' },
      'eval-max-side': { type: 'string' },
      'decode-max-side': { type: 'string' },
      sigma: { type: 'string' },
      invert: { type: 'boolean' },
      'score-sigma': { type: 'string' },
      'recon-weight': { type: 'string' },
      layout: { type: 'string' },
      good: { type: 'string' },
      defective: { type: 'string', multiple: true },
      masks: { type: 'string' },
      'image-threshold': { type: 'string' },
    },
    EVAL_USAGE,
  );
  const defective = v.defective as unknown as string[] | undefined;
  const folderLayout = typeof v.good === 'string' || defective !== undefined || typeof v.masks === 'string';
  if (folderLayout) {
    if (typeof v.data === 'string')
      throw new UsageError(`give --data or --good/--defective, not both\n\n${EVAL_USAGE}`);
    if (typeof v.good !== 'string' || !defective?.length)
      throw new UsageError(`the folder layout needs --good DIR and at least one --defective DIR\n\n${EVAL_USAGE}`);
    if (v.layout !== undefined && v.layout !== 'folder')
      throw new UsageError(`--layout ${String(v.layout)} does not go with --good/--defective`);
  } else if (typeof v.data !== 'string') {
    throw new UsageError(`--data is required (or --good DIR --defective DIR)\n\n${EVAL_USAGE}`);
  }
  if (v.layout === 'folder' && !folderLayout)
    throw new UsageError(`--layout folder takes --good DIR --defective DIR [--masks DIR] instead of --data`);
  const layout = folderLayout
    ? undefined
    : (choice(v.layout, 'layout', ['auto', 'mvtec', 'mvtec3d', 'visa'] as const) ?? 'auto');
  if ((typeof v.model === 'string') === (typeof v.maps === 'string'))
    throw new UsageError(`give exactly one of --model or --maps\n\n${EVAL_USAGE}`);
  const out =
    typeof v.out === 'string'
      ? v.out
      : typeof v.model === 'string'
        ? path.join(path.dirname(v.model), 'eval')
        : path.join(v.maps as string, 'eval');
  const evalSize = num(v['eval-size'], 'eval-size', (n) => Number.isInteger(n) && n > 0);
  if (evalSize !== undefined && v['eval-max-side'] !== undefined)
    throw new UsageError('give --eval-size or --eval-max-side, not both');
  const evalMaxSide = maxSideOption(v['eval-max-side'], 'eval-max-side', EVAL_MAX_SIDE);
  if (v['decode-max-side'] !== undefined && typeof v.model !== 'string')
    throw new UsageError('--decode-max-side applies to --model only (--maps are read as they are)');
  const decodeMaxSide = maxSideOption(v['decode-max-side'], 'decode-max-side', MODEL_DECODE_MAX_SIDE);
  const dataset = folderLayout
    ? await openFolderDataset({
        good: v.good as string,
        defective: defective as string[],
        masks: v.masks as string | undefined,
      })
    : await openMvtecDataset(v.data as string, { layout, requireTrain: false });
  const givenThreshold = num(v['image-threshold'], 'image-threshold');
  const predictor = typeof v.model === 'string' ? await loadPredictor(v.model) : null;
  if (predictor && decodeMaxSide !== null && decodeMaxSide < predictor.info.resolution) {
    predictor.dispose();
    throw new UsageError(
      `invalid value for --decode-max-side: ${decodeMaxSide} is below the model resolution ${predictor.info.resolution}`,
    );
  }
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
    ? modelMapProvider(predictor, { decodeMaxSide })
    : folderMapProvider(v.maps as string, { invert: Boolean(v.invert) });
  const metrics = await evaluateMaps({
    dataset,
    mapProvider: provider,
    outDir: out,
    evalSize,
    evalMaxSide,
    imageScoreSigma: num(v.sigma, 'sigma', (n) => n >= 0),
    model: predictor?.info,
    imageThreshold:
      givenThreshold !== undefined
        ? { value: givenThreshold, source: 'given' }
        : predictor
          ? { value: predictor.info.imageThreshold, source: 'model' }
          : undefined,
    onProgress: (done, total) => process.stderr.write(`\revaluating ${done}/${total}`),
  });
  process.stderr.write('\n');
  predictor?.dispose();
  process.stdout.write(
    `${formatMetricsTable(metrics)}\n${formatEvaluationSummary(metrics)}\n` +
      `metrics: ${path.join(out, 'metrics.json')}\nreport:  ${path.join(out, 'report.html')}\n`,
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
  const paths = (await openTrainingData(v.data)).train.slice(0, Math.max(count, 8));
  const loaded = await loadImages(paths, { channels: 'keep' });
  if (!loaded.images.length) throw new Error(`no readable images in ${v.data}`);
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
    const loaded = await loadImages((await openTrainingData(v.data)).train.slice(0, 64), { channels: 3 });
    if (!loaded.images.length) throw new Error(`no readable images in ${v.data}`);
    bases = loaded.images.map((l) => l.image);
  }
  await writeFormulaSamples(out, count, seed, undefined, bases, { size });
  process.stdout.write(`wrote ${count} samples, contact_sheet.png and parameter_sweep.png to ${out}\n`);
}

/** Options with their help text: parseArgs reads `type`, the usage lines are made from `arg` and `help`. */
type DescribedOptions = Record<string, { type: 'string' | 'boolean'; arg?: string; help: string }>;

function usageFromOptions(synopsis: string, about: string, options: DescribedOptions): string {
  const names = Object.entries(options).map(([name, o]) => `--${name}${o.arg ? ` ${o.arg}` : ''}`);
  const width = Math.max(...names.map((n) => n.length)) + 2;
  const lines = Object.values(options).map((o, i) => `  ${names[i].padEnd(width)}${o.help}`);
  return `${synopsis}\n\n${about}\n\n${lines.join('\n')}`;
}

const EXPORT_OPTIONS: DescribedOptions = {
  model: { type: 'string', arg: 'MODEL', help: 'AnoSeg or PaDiM model file (.safetensors) to export' },
  out: { type: 'string', arg: 'FILE', help: 'ONNX file to write (default: MODEL with the extension .onnx)' },
  check: { type: 'string', arg: 'N', help: 'seeded inputs the exported graph is checked on (default 4)' },
  seed: { type: 'string', arg: 'S', help: 'seed of those inputs (default 0)' },
};

const EXPORT_USAGE = usageFromOptions(
  'anoseg export --model MODEL [--out FILE] [--check N] [--seed S]',
  `Writes the model as an ONNX graph (opset 17) from fitted image batch to anomaly map and image score, with the
preprocessing, score and thresholds in its metadata. Before writing, onnxruntime-node runs the graph on N seeded
inputs next to the libtorch predictor and the maximum differences are printed; the file is written only when maps
agree within ${MAP_TOLERANCE} (relative to the map's scale where values exceed 1) and every verdict is the same.`,
  EXPORT_OPTIONS,
);

async function cmdExport(args: string[]): Promise<void> {
  const { values: v } = parse(args, EXPORT_OPTIONS, EXPORT_USAGE);
  if (typeof v.model !== 'string') throw new UsageError(`--model is required\n\n${EXPORT_USAGE}`);
  const out = typeof v.out === 'string' ? v.out : v.model.replace(/(\.safetensors)?$/, '.onnx');
  const count = num(v.check, 'check', (n) => Number.isInteger(n) && n > 0) ?? 4;
  const seed = num(v.seed, 'seed', (n) => Number.isInteger(n) && n >= 0) ?? 0;
  const { exportAndCheck } = await import('../onnx/export-checked.js');
  const { onnx, info, check, passed } = await exportAndCheck(v.model, count, seed);
  const ops = [...onnx.operators].map(([op, n]) => `${op} ${n}`).join(', ');
  process.stdout.write(
    `${v.model} (${info.method}, ${info.resolution} px, ${info.channels} ch): ${onnx.nodeCount} nodes (${ops}), ` +
      `${(onnx.bytes.length / 1e6).toFixed(2)} MB\n` +
      `check, onnxruntime-node vs libtorch, ${formatExportCheck(check)}\n`,
  );
  if (!passed) {
    throw new Error(`the exported graph does not reproduce the model (see the check above); ${out} was not written`);
  }
  await writeFileAtomic(out, onnx.bytes);
  process.stdout.write(`wrote ${out}\n`);
}

/**
 * The served model as ONNX for the page's in-browser mode: the file itself, or an export checked against the
 * model; null (with the reason on stderr) when it cannot be exported.
 */
async function browserModelFor(model: string): Promise<{ onnx: Uint8Array; name: string } | null> {
  if ((await modelFileKind(model)) === 'onnx') return { onnx: await fs.readFile(model), name: model };
  try {
    const { exportAndCheck } = await import('../onnx/export-checked.js');
    const { onnx, check, passed } = await exportAndCheck(model, 2);
    if (!passed) throw new Error(`the export does not reproduce the model: ${formatExportCheck(check)}`);
    return { onnx: onnx.bytes, name: `${model} (exported)` };
  } catch (e) {
    process.stderr.write(`in-browser inspection off: ${(e as Error).message}\n`);
    return null;
  }
}

const SERVE_USAGE = `anoseg serve --model MODEL [--port 8080] [--host 127.0.0.1] [--max-queue 16] [--workers 1] [--timeout 120]

The model runs in --workers worker threads (the cores divided among them; 0 = on the server's own thread), so the
service keeps answering while it computes. An inspection not answered within --timeout seconds gets 504 and its
worker is replaced.`;

async function cmdServe(args: string[]): Promise<void> {
  const { values: v } = parse(
    args,
    {
      model: { type: 'string' },
      port: { type: 'string' },
      host: { type: 'string' },
      'max-queue': { type: 'string' },
      workers: { type: 'string' },
      timeout: { type: 'string' },
    },
    SERVE_USAGE,
  );
  if (typeof v.model !== 'string') throw new UsageError(`--model is required\n\n${SERVE_USAGE}`);
  const port = num(v.port, 'port', (n) => Number.isInteger(n) && n >= 0 && n < 65536) ?? 8080;
  const host = typeof v.host === 'string' ? v.host : '127.0.0.1';
  const workers = num(v.workers, 'workers', (n) => Number.isInteger(n) && n >= 0) ?? 1;
  const timeout = num(v.timeout, 'timeout', (n) => n > 0);
  const { createInspectionServer } = await import('../service/server.js');
  const { PredictorPool } = await import('../models/predictor-pool.js');
  const predictor = workers > 0 ? await PredictorPool.create(v.model, { workers }) : await loadPredictor(v.model);
  const browserModel = await browserModelFor(v.model);
  const srv = createInspectionServer({
    predictor,
    maxQueue: num(v['max-queue'], 'max-queue', (n) => Number.isInteger(n) && n > 0),
    inspectTimeoutMs: timeout === undefined ? undefined : timeout * 1000,
    browserModel: browserModel ?? undefined,
  });
  const url = await srv.listen(port, host);
  process.stdout.write(
    `serving ${v.model} on ${url}` +
      (predictor instanceof PredictorPool
        ? ` (${workers} worker(s) x ${predictor.stats().threadsPerWorker} libtorch thread(s))\n`
        : ' (on the server thread)\n') +
      (browserModel
        ? `in-browser inspection on: the page can run the ONNX model (${(browserModel.onnx.length / 1e6).toFixed(1)} MB)\n`
        : ''),
  );
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
    imageThreshold: { value: predictor.info.imageThreshold, source: 'model' },
    model: predictor.info,
    onProgress: (done, total) => process.stderr.write(`\revaluating ${done}/${total}`),
  });
  predictor.dispose();
  process.stdout.write(
    `\n${formatMetricsTable(metrics)}\n${formatEvaluationSummary(metrics)}\nreport: ${path.join(out, 'eval', 'report.html')}\ncurves: ${path.join(out, 'curves.html')}\n`,
  );
}

const PRETRAIN_USAGE = `anoseg pretrain [--out FILE] [--steps N] [--batch N] [--size PX] [--width W] [--loss direct|indirect]
                [--seed N] [--bases DIR] [--lr LR] [--minutes M] [--run-dir DIR] [--no-resume]

Pre-trains a ResNet18 on formula-driven (GMM) synthetic defects and writes a backbone file for
'anoseg padim --backbone FILE'. Checkpoints in --run-dir (default FILE.run); rerun to resume.

Data-parallel training (as for anoseg train; also through anoseg launch):
${GROUP_USAGE}`;

async function cmdPretrain(args: string[]): Promise<void> {
  const { values: v } = parse(
    args,
    {
      out: { type: 'string' },
      steps: { type: 'string' },
      batch: { type: 'string' },
      size: { type: 'string' },
      width: { type: 'string' },
      loss: { type: 'string' },
      seed: { type: 'string' },
      bases: { type: 'string' },
      lr: { type: 'string' },
      minutes: { type: 'string' },
      'run-dir': { type: 'string' },
      'no-resume': { type: 'boolean' },
      ...GROUP_OPTIONS,
    },
    PRETRAIN_USAGE,
  );
  const int = (n: number): boolean => Number.isInteger(n) && n > 0;
  const out = typeof v.out === 'string' ? v.out : path.join('runs', 'pretrain', 'backbone.safetensors');
  const { pretrainBackbone, PRETRAIN_LOSSES, DEFAULT_PRETRAIN_LOSS } = await import('../train/pretrain.js');
  const options = {
    out,
    steps: num(v.steps, 'steps', int) ?? 4000,
    batch: num(v.batch, 'batch', (n) => int(n) && n >= 2) ?? 16,
    size: num(v.size, 'size', (n) => Number.isInteger(n) && n >= 32 && n % 16 === 0) ?? 64,
    width: num(v.width, 'width', (n) => n > 0 && n <= 4) ?? 0.5,
    loss: choice(v.loss, 'loss', PRETRAIN_LOSSES) ?? DEFAULT_PRETRAIN_LOSS,
    seed: num(v.seed, 'seed', (n) => Number.isInteger(n) && n >= 0) ?? 0,
    bases: typeof v.bases === 'string' ? v.bases : undefined,
    lr: num(v.lr, 'lr', (n) => n > 0),
    maxMinutes: num(v.minutes, 'minutes', (n) => n > 0) ?? null,
    runDir: typeof v['run-dir'] === 'string' ? v['run-dir'] : undefined,
    resume: !v['no-resume'],
  };
  const what = `pre-training a backbone -> ${out}`;
  const { r, dp } = await inGroup(
    v,
    (m) => new UsageError(m),
    what,
    async (dp) => ({
      r: await pretrainBackbone({ ...options, distributed: dp }),
      dp,
    }),
  );
  if (otherRankDone(dp, r.steps)) return;
  const last = r.history.at(-1);
  process.stdout.write(
    `backbone: ${r.out}\nsteps ${r.steps}, ${r.minutes.toFixed(1)} min, eval loss ${r.finalEvalLoss.toFixed(4)}` +
      (last ? `, eval patch AUROC ${last.evalPatchAuroc.toFixed(3)}` : '') +
      '\n',
  );
}

const PADIM_USAGE = `anoseg padim --data DIR [--out DIR] [--backbone random|formula|FILE] [--resolution PX] [--dims D]
             [--width W] [--seed N] [--aspect stretch|pad|crop]

Fits PaDiM (a Gaussian per patch position over ResNet18 layer1-3 features) on the good images of DIR; thresholds
from a held-out split with synthetic anomalies. Writes OUT/model.safetensors for predict / eval / serve.
('anoseg train --method padim' is the same command.)`;

async function cmdPadim(args: string[]): Promise<void> {
  const { values: v } = parse(
    args,
    {
      data: { type: 'string' },
      out: { type: 'string' },
      backbone: { type: 'string' },
      resolution: { type: 'string' },
      dims: { type: 'string' },
      width: { type: 'string' },
      seed: { type: 'string' },
      aspect: { type: 'string' },
    },
    PADIM_USAGE,
  );
  if (typeof v.data !== 'string') throw new UsageError(`--data is required\n\n${PADIM_USAGE}`);
  const out = typeof v.out === 'string' ? v.out : path.join('runs', 'padim', path.basename(path.resolve(v.data)));
  const { trainPadim } = await import('../train/padim-trainer.js');
  const r = await trainPadim({
    data: v.data,
    out,
    backbone: typeof v.backbone === 'string' ? v.backbone : 'formula',
    resolution: num(v.resolution, 'resolution', (n) => Number.isInteger(n) && n >= 32 && n % 16 === 0),
    dims: num(v.dims, 'dims', (n) => Number.isInteger(n) && n > 0),
    width: num(v.width, 'width', (n) => n > 0 && n <= 4),
    seed: num(v.seed, 'seed', (n) => Number.isInteger(n) && n >= 0),
    aspect: choice(v.aspect, 'aspect', ['stretch', 'pad', 'crop'] as const),
  });
  process.stdout.write(
    `model: ${r.modelPath}\n${r.trainImages} training / ${r.validationImages} validation images, ` +
      `${r.minutes.toFixed(1)} min; synthetic validation image AUROC ${r.validationImageAuroc.toFixed(3)}, ` +
      `pixel AUROC ${r.validationPixelAuroc.toFixed(3)}\n`,
  );
}

const STUDY_USAGE = `anoseg study [--data DIR,DIR,...] [--presets paper,recipe] [--minutes M] [--out DIR] [--held-out NAME,...]

Trains each preset on each data set with the same wall-clock budget, evaluates each on its test split and
writes study.md (pixel AUROC, image AUROC, best IoU, AUPRO, training minutes; the paper's reported figures
beside bottle). Default data: the three sets under ../shared/datasets. --held-out marks the data sets (folder
names) that no choice of the recipe looked at. Each run's eval/report.html has its strips (image | map | ground
truth). Finished runs are kept and not repeated.`;

async function cmdStudy(args: string[]): Promise<void> {
  const { values: v } = parse(
    args,
    {
      data: { type: 'string' },
      presets: { type: 'string' },
      minutes: { type: 'string' },
      out: { type: 'string' },
      'held-out': { type: 'string' },
    },
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
  const heldOut = typeof v['held-out'] === 'string' ? v['held-out'].split(',') : [];
  const names = datasets.map((d) => path.basename(path.resolve(d)));
  const unknown = heldOut.filter((h) => !names.includes(h));
  if (unknown.length)
    throw new UsageError(
      `--held-out names no data set of this study: ${unknown.join(', ')} (data sets: ${names.join(', ')})`,
    );
  const rows = await runStudy({ datasets, variants: presetVariants(presets), minutes, out, heldOut });
  process.stdout.write(`${studyTable(rows, heldOut)}\n\ntable: ${path.join(out, 'study.md')}\n`);
}

// ---- anoseg train-detector ----------------------------------------------------------------------------------

const TRAIN_DETECTOR_USAGE = `anoseg train-detector --anoseg MODEL --data DIR [options]

Trains the anomaly detector of paper 3.4 / Appendix A on top of a trained AnoSeg model and writes one model file
(pixel map from AnoSeg, image score from eq. 5) for predict, eval and serve.

  --anoseg MODEL        trained AnoSeg model file (anoseg train)
  --data DIR            MVTec-layout category (train/good; a labelled test split enables logged test AUROC)
                        or a plain folder of good images
  --out DIR             run folder (default runs/detector/<data name>-<variant>); rerunning resumes from its checkpoint
  --variant NAME        ${TABLE5_VARIANTS.join(' | ')} (Table 5; default full)
  --steps N             optimisation steps (default 3000)   --minutes M   wall-clock budget (stops and saves)
  --batch N             normal images per step (default 8)  --anomaly-batch N  synthetic anomalies per step (L_cls, default 4)
  --lr LR               learning rate (default 2e-4)        --seed N      random seed
  --alpha A             eq. 5 feature weight (default 1)    --beta B      eq. 5 image weight (default 0.1)
  --cls-map mask|anoseg|ones   map paired with synthetic anomalies in L_cls (default mask, as in the paper)
  --no-coords           no coordinate channels on the detector's generator input
  --eval-every N        steps between diagnostics              --no-resume   start over even if a checkpoint exists

Data-parallel training (as for anoseg train; also through anoseg launch):
${GROUP_USAGE}`;

const TRAIN_DETECTOR_OPTIONS: Opts = {
  anoseg: { type: 'string' },
  data: { type: 'string' },
  out: { type: 'string' },
  variant: { type: 'string' },
  steps: { type: 'string' },
  minutes: { type: 'string' },
  batch: { type: 'string' },
  'anomaly-batch': { type: 'string' },
  lr: { type: 'string' },
  seed: { type: 'string' },
  alpha: { type: 'string' },
  beta: { type: 'string' },
  'cls-map': { type: 'string' },
  'no-coords': { type: 'boolean' },
  'eval-every': { type: 'string' },
  'no-resume': { type: 'boolean' },
  ...GROUP_OPTIONS,
};

export function detectorConfigFromArgs(v: Record<string, string | boolean | undefined>): DetectorTrainConfig {
  const variant = choice(v.variant, 'variant', TABLE5_VARIANTS) ?? 'full';
  const int = (n: number): boolean => Number.isInteger(n) && n > 0;
  const cfg = detectorConfig(variant);
  cfg.steps = num(v.steps, 'steps', int) ?? cfg.steps;
  cfg.maxMinutes = num(v.minutes, 'minutes', (n) => n > 0) ?? cfg.maxMinutes;
  cfg.batchSize = num(v.batch, 'batch', (n) => int(n) && n >= 2) ?? cfg.batchSize;
  cfg.anomalyBatch = num(v['anomaly-batch'], 'anomaly-batch', int) ?? cfg.anomalyBatch;
  cfg.lr = num(v.lr, 'lr', (n) => n > 0 && n < 1) ?? cfg.lr;
  cfg.seed = num(v.seed, 'seed', (n) => Number.isInteger(n) && n >= 0) ?? cfg.seed;
  cfg.score.alpha = num(v.alpha, 'alpha', (n) => n >= 0) ?? cfg.score.alpha;
  cfg.score.beta = num(v.beta, 'beta', (n) => n >= 0) ?? cfg.score.beta;
  cfg.clsMap = choice(v['cls-map'], 'cls-map', ['mask', 'anoseg', 'ones'] as const) ?? cfg.clsMap;
  if (v['no-coords']) cfg.coordChannels = false;
  cfg.evalEvery = Math.min(num(v['eval-every'], 'eval-every', int) ?? cfg.evalEvery, cfg.steps);
  cfg.checkpointEvery = Math.min(cfg.checkpointEvery, cfg.steps);
  return cfg;
}

async function cmdTrainDetector(args: string[]): Promise<void> {
  const { values: v } = parse(args, TRAIN_DETECTOR_OPTIONS, TRAIN_DETECTOR_USAGE);
  if (typeof v.anoseg !== 'string') throw new UsageError(`--anoseg is required\n\n${TRAIN_DETECTOR_USAGE}`);
  if (typeof v.data !== 'string') throw new UsageError(`--data is required\n\n${TRAIN_DETECTOR_USAGE}`);
  const config = detectorConfigFromArgs(v);
  const out =
    typeof v.out === 'string'
      ? v.out
      : path.join('runs', 'detector', `${path.basename(path.resolve(v.data))}-${config.variant}`);
  const [anosegModel, data] = [v.anoseg, v.data];
  const what = `training detector '${config.variant}' on ${data} over ${anosegModel} -> ${out} (log: ${path.join(out, 'train.log')})`;
  const { r, dp } = await inGroup(
    v,
    (m) => new UsageError(m),
    what,
    async (dp) => ({
      r: await trainDetector({
        anosegModel,
        data,
        out,
        variant: config.variant,
        config,
        resume: !v['no-resume'],
        distributed: dp,
      }),
      dp,
    }),
  );
  if (otherRankDone(dp, r.steps)) return;
  const last = r.diagnostics.at(-1);
  process.stdout.write(
    `model: ${r.modelPath}\nsteps ${r.steps}, ${r.minutes.toFixed(1)} min, eq. 5 threshold ${r.imageThreshold.toPrecision(4)}` +
      (last ? `, validation image AUROC ${last.validationImageAuroc.toFixed(3)}` : '') +
      (last?.testImageAuroc != null
        ? `, test image AUROC ${last.testImageAuroc.toFixed(3)} (map score ${last.testMapImageAuroc?.toFixed(3)})`
        : '') +
      `\ncurves: ${path.join(out, 'curves.html')}\n`,
  );
}

// ---- anoseg ablation ----------------------------------------------------------------------------------------

const ABLATION_USAGE = `anoseg ablation --data DIR --table 3|5 [options]

Reproduces the paper's ablation at CPU size ('cpu' preset), every run with the same time budget, and writes
ablation.md (with the paper's figures alongside) and ablation.json. Table 3: base (CutPaste only), + hard
augmentation, + adversarial learning, + coordinate channels, evaluated on pixel AUROC, IoU, image AUROC, AUPRO.
Table 5: the detector variants on top of one AnoSeg model, evaluated on image AUROC of eq. 5. Finished runs are reused.

  --data DIR            MVTec-layout category with a labelled test split
  --table 3|5           which table
  --out DIR             study folder (default runs/ablation/table<N>-<data name>)
  --minutes M           training budget per run (default 10)
  --seed N              seed of every run       --steps N     step cap per run
  --runs a,b            only these runs (table 3: base,hard-aug,adversarial,coords; table 5: ${TABLE5_VARIANTS.join(',')})
  --anoseg MODEL        table 5: build on this AnoSeg model (default: train the full Table 3 configuration)
  --adv-weight W        table 3: weight of L_Adv in the adversarial rows (default 1, as in the paper)
  --eval-size PX        evaluation size (default 256 as in the paper; 0 = each mask's own size)
  --resolution PX  --width W  --batch N     overrides of the preset (quick studies)`;

async function cmdAblation(args: string[]): Promise<void> {
  const { values: v } = parse(
    args,
    {
      data: { type: 'string' },
      table: { type: 'string' },
      out: { type: 'string' },
      minutes: { type: 'string' },
      seed: { type: 'string' },
      steps: { type: 'string' },
      runs: { type: 'string' },
      anoseg: { type: 'string' },
      'adv-weight': { type: 'string' },
      'eval-size': { type: 'string' },
      resolution: { type: 'string' },
      width: { type: 'string' },
      batch: { type: 'string' },
    },
    ABLATION_USAGE,
  );
  if (typeof v.data !== 'string') throw new UsageError(`--data is required\n\n${ABLATION_USAGE}`);
  const table = Number(choice(v.table, 'table', ['3', '5'] as const) ?? '') as 3 | 5;
  if (!table) throw new UsageError(`--table is required (3 or 5)\n\n${ABLATION_USAGE}`);
  const int = (n: number): boolean => Number.isInteger(n) && n > 0;
  const evalSize = num(v['eval-size'], 'eval-size', (n) => Number.isInteger(n) && n >= 0);
  const out =
    typeof v.out === 'string'
      ? v.out
      : path.join('runs', 'ablation', `table${table}-${path.basename(path.resolve(v.data))}`);
  const r = await runAblation({
    data: v.data,
    out,
    table,
    minutesPerRun: num(v.minutes, 'minutes', (n) => n > 0) ?? 10,
    seed: num(v.seed, 'seed', (n) => Number.isInteger(n) && n >= 0),
    steps: num(v.steps, 'steps', int),
    runs:
      typeof v.runs === 'string'
        ? v.runs
            .split(',')
            .map((s) => s.trim())
            .filter(Boolean)
        : undefined,
    anosegModel: typeof v.anoseg === 'string' ? v.anoseg : undefined,
    adversarialWeight: num(v['adv-weight'], 'adv-weight', (n) => n > 0),
    evalSize: evalSize === 0 ? null : evalSize,
    resolution: num(v.resolution, 'resolution', int),
    width: num(v.width, 'width', (n) => n > 0),
    batchSize: num(v.batch, 'batch', (n) => int(n) && n >= 2),
  });
  process.stdout.write(
    `${await fs.readFile(r.files.markdown, 'utf8')}\ntable: ${r.files.markdown}\ndata:  ${r.files.json}\n`,
  );
}

async function cmdLaunch(args: string[]): Promise<void> {
  const split = args.indexOf('--');
  const { values: v } = parse(split < 0 ? args : args.slice(0, split), LAUNCH_OPTIONS, LAUNCH_USAGE);
  if (split < 0 || split === args.length - 1) throw new UsageError(`no command given after --\n\n${LAUNCH_USAGE}`);
  const int = (n: number): boolean => Number.isInteger(n) && n > 0;
  const code = await launchLocal({
    nproc: num(v.nproc, 'nproc', int) ?? 2,
    masterPort: num(v['master-port'], 'master-port', (n) => int(n) && n < 65536),
    threads: num(v.threads, 'threads', int),
    args: args.slice(split + 1),
  });
  if (code !== 0) throw new Error(`a process of the group failed (status ${code})`);
}

const COMMANDS: Record<string, (args: string[]) => Promise<void>> = {
  launch: cmdLaunch,
  export: cmdExport,
  study: cmdStudy,
  pretrain: cmdPretrain,
  padim: cmdPadim,
  train: cmdTrain,
  predict: cmdPredict,
  eval: cmdEval,
  synth: cmdSynth,
  'formula-synth': cmdFormulaSynth,
  serve: cmdServe,
  demo: cmdDemo,
  'train-detector': cmdTrainDetector,
  ablation: cmdAblation,
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

const invokedDirectly = process.argv[1] && /cli[\\/]main\.[jt]s$/.test(process.argv[1]);
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
