/** `anoseg eval`: metrics.json + report.html on a test split, from a model or from map files. */
import path from 'node:path';
import { openFolderDataset, openMvtecDataset } from '../../data/dataset.js';
import { evaluateMaps, folderMapProvider, formatEvaluationSummary, formatMetricsTable } from '../../eval/evaluate.js';
import { modelMapProvider } from '../../eval/model-maps.js';
import { EVAL_MAX_SIDE, MODEL_DECODE_MAX_SIDE } from '../../image/bounded.js';
import { AnoSegPredictor } from '../../methods/anoseg/model-file.js';
import type { AnomalyPredictor } from '../../models/predictor.js';
import { EVAL_LAYOUTS } from '../choices.js';
import { openPredictor, workersOption } from '../predictor-workers.js';
import {
  UsageError,
  choice,
  flag,
  integer,
  maxSide,
  number,
  parseCommand,
  section,
  text,
  texts,
  usage,
  type Command,
  type CommandSpec,
  type Options,
  type Values,
} from '../options.js';

const DEFAULTS = { workers: 0 } as const;

const DATA_OPTIONS = section('Data (--data, or --good and --defective):', {
  data: text(
    'DIR',
    'an MVTec AD, MVTec LOCO, MVTec 3D-AD or VisA category (VisA/<category>, split by VisA/split_csv/1cls.csv)',
  ),
  layout: choice(EVAL_LAYOUTS, "--data's layout, checked (auto: detected); folder: the --good/--defective layout", {
    default: 'auto',
  }),
  good: text('DIR', 'good test images (the folder layout)'),
  defective: texts('DIR', 'defective test images; the folder name is the defect type'),
  masks: text('DIR', 'masks of the defective images, MASKS/<name>.png or MASKS/<name>_mask.png (optional)'),
});

const SCORE_OPTIONS = section('Scores (--model or --maps):', {
  model: text('MODEL', 'score the test images with this model (.safetensors or .onnx)'),
  maps: text(
    'DIR',
    'score maps made elsewhere: DIR/<defect>/<name>.tiff (float) or .png (16/8-bit), higher = more anomalous',
  ),
  invert: flag('--maps: maps where 1 = normal (score = 1 - value)'),
  sigma: number(
    'S',
    '--maps: the image score is the maximum of the map smoothed with this Gaussian sigma (pixels of the evaluated map)',
    { min: 0 },
    { default: 0 },
  ),
  'score-sigma': number('S', "AnoSeg --model: the model's image-score smoothing, overridden", { min: 0 }),
  'recon-weight': number(
    'W',
    'AnoSeg --model: the weight of the blurred reconstruction error added to 1 - map, overridden',
    { min: 0 },
  ),
  'image-threshold': number(
    'T',
    "the image threshold the pass/reject counts use (default: the model's; for --maps none is given, the best-F1 " +
      'threshold on the test set is used and marked as optimistic)',
  ),
});

const SIZE_OPTIONS = section('Sizes:', {
  'eval-size': integer('PX', 'evaluate every map and mask at PX x PX (instead of --eval-max-side)'),
  'eval-max-side': maxSide(
    "maps are evaluated at each mask's own size (the image's without a mask), aspect kept, with at most this longer side",
    EVAL_MAX_SIDE,
  ),
  'decode-max-side': maxSide(
    '--model: longer side images are decoded at, at most, for the model',
    MODEL_DECODE_MAX_SIDE,
  ),
});

const SPEED_OPTIONS = section('Speed:', {
  workers: workersOption(
    '--model: worker threads predicting the next images while this thread decodes and scores',
    DEFAULTS.workers,
  ),
});

export const EVAL = {
  name: 'eval',
  summary: 'metrics.json + report.html on a test split (from a model or from map files)',
  synopsis: `anoseg eval (--data DIR [--layout ${EVAL_LAYOUTS.filter((l) => l !== 'folder').join('|')}] | --good DIR --defective DIR... [--masks DIR])
            (--model MODEL | --maps DIR) [--out DIR] [--eval-size PX | --eval-max-side PX] [options]`,
  about: `Evaluates a test split: image AUROC, image AP and best F1 over every test image, with how many good and
defective parts the image threshold passes and rejects; and pixel AUROC, best IoU (10,000-step search) and IoU over
thresholds, AUPRO up to FPR 0.3, pixel AP, best F1 over the images with masks (good images count as all normal;
defective images without a mask count at image level only; one whose mask is empty counts as good, as in MVTec AD's
evaluation) — per defect type and overall — into metrics.json and report.html (with a histogram of good vs defective
image scores). The sizes used are written to metrics.json (input, settings) and stated in report.html.`,
  options: {
    ...DATA_OPTIONS,
    ...SCORE_OPTIONS,
    ...SIZE_OPTIONS,
    ...SPEED_OPTIONS,
    out: section('Output:', { out: text('DIR', 'output folder', { default: 'MODEL_FOLDER/eval or MAPS/eval' }) }).out,
  },
} satisfies CommandSpec<Options>;

type EvalValues = Values<typeof EVAL.options>;

export type EvalData =
  | { data: string; layout: 'auto' | 'mvtec' | 'mvtec3d' | 'visa' }
  | { good: string; defective: string[]; masks?: string };

export interface EvalInvocation {
  dataset: EvalData;
  model?: string;
  maps?: string;
  invert: boolean;
  out: string;
  evalSize?: number;
  evalMaxSide: number | null;
  decodeMaxSide: number | null;
  sigma?: number;
  imageThreshold?: number;
  scoreSigma?: number;
  reconWeight?: number;
  workers: number;
}

function evalData(v: EvalValues): EvalData {
  const folderLayout = v.good !== undefined || v.defective !== undefined || v.masks !== undefined;
  if (folderLayout) {
    if (v.data !== undefined) throw new UsageError(`give --data or --good/--defective, not both\n\n${usage(EVAL)}`);
    if (v.good === undefined || !v.defective?.length)
      throw new UsageError(`the folder layout needs --good DIR and at least one --defective DIR\n\n${usage(EVAL)}`);
    if (v.layout !== undefined && v.layout !== 'folder')
      throw new UsageError(`--layout ${v.layout} does not go with --good/--defective`);
    return { good: v.good, defective: v.defective, masks: v.masks };
  }
  if (v.data === undefined)
    throw new UsageError(`--data is required (or --good DIR --defective DIR)\n\n${usage(EVAL)}`);
  if (v.layout === 'folder')
    throw new UsageError(`--layout folder takes --good DIR --defective DIR [--masks DIR] instead of --data`);
  return { data: v.data, layout: v.layout ?? 'auto' };
}

/** `anoseg eval ARGS` resolved without reading anything. */
export function resolveEval(args: string[]): EvalInvocation {
  const { values: v } = parseCommand(EVAL, args);
  const dataset = evalData(v);
  if ((v.model === undefined) === (v.maps === undefined))
    throw new UsageError(`give exactly one of --model or --maps\n\n${usage(EVAL)}`);
  if (v['eval-size'] !== undefined && v['eval-max-side'] !== undefined)
    throw new UsageError('give --eval-size or --eval-max-side, not both');
  const onlyWith = (names: (keyof EvalValues)[], ok: boolean, message: string): void => {
    if (!ok && names.some((n) => v[n] !== undefined)) throw new UsageError(message);
  };
  const model = v.model !== undefined;
  onlyWith(['decode-max-side'], model, '--decode-max-side applies to --model only (--maps are read as they are)');
  onlyWith(['score-sigma', 'recon-weight'], model, '--score-sigma / --recon-weight apply to AnoSeg models only');
  onlyWith(['workers'], model, '--workers applies to --model only');
  onlyWith(
    ['score-sigma', 'recon-weight'],
    !v.workers,
    '--score-sigma / --recon-weight change the model on this thread: not with --workers',
  );
  onlyWith(['invert', 'sigma'], !model, '--invert / --sigma apply to --maps only (a model gives its own image scores)');
  return {
    dataset,
    model: v.model,
    maps: v.maps,
    invert: v.invert ?? false,
    out: v.out ?? path.join(v.model !== undefined ? path.dirname(v.model) : (v.maps as string), 'eval'),
    evalSize: v['eval-size'],
    evalMaxSide: v['eval-max-side'] === undefined ? EVAL_MAX_SIDE : v['eval-max-side'],
    decodeMaxSide: v['decode-max-side'] === undefined ? MODEL_DECODE_MAX_SIDE : v['decode-max-side'],
    sigma: v.sigma,
    imageThreshold: v['image-threshold'],
    scoreSigma: v['score-sigma'],
    reconWeight: v['recon-weight'],
    workers: v.workers ?? DEFAULTS.workers,
  };
}

async function loadModel(o: EvalInvocation): Promise<AnomalyPredictor> {
  const predictor = await openPredictor(o.model as string, o.workers);
  if (o.decodeMaxSide !== null && o.decodeMaxSide < predictor.info.resolution) {
    predictor.dispose();
    throw new UsageError(
      `invalid value for --decode-max-side: ${o.decodeMaxSide} is below the model resolution ${predictor.info.resolution}`,
    );
  }
  if (o.scoreSigma !== undefined || o.reconWeight !== undefined) {
    if (!(predictor instanceof AnoSegPredictor)) {
      predictor.dispose();
      throw new UsageError('--score-sigma / --recon-weight apply to AnoSeg models only');
    }
    predictor.meta.score = {
      ...predictor.meta.score,
      sigma: o.scoreSigma ?? predictor.meta.score.sigma,
      reconstructionWeight: o.reconWeight ?? predictor.meta.score.reconstructionWeight,
    };
  }
  return predictor;
}

async function run(args: string[]): Promise<void> {
  const o = resolveEval(args);
  const dataset =
    'good' in o.dataset
      ? await openFolderDataset(o.dataset)
      : await openMvtecDataset(o.dataset.data, { layout: o.dataset.layout, requireTrain: false });
  const predictor = o.model !== undefined ? await loadModel(o) : null;
  const metrics = await evaluateMaps({
    dataset,
    mapProvider: predictor
      ? modelMapProvider(predictor, { decodeMaxSide: o.decodeMaxSide })
      : folderMapProvider(o.maps as string, { invert: o.invert }),
    // every worker busy, plus one image decoded ahead
    prefetch: o.workers + 1,
    outDir: o.out,
    evalSize: o.evalSize,
    evalMaxSide: o.evalMaxSide,
    imageScoreSigma: o.sigma,
    model: predictor?.info,
    imageThreshold:
      o.imageThreshold !== undefined
        ? { value: o.imageThreshold, source: 'given' }
        : predictor
          ? { value: predictor.info.imageThreshold, source: 'model' }
          : undefined,
    onProgress: (done, total) => process.stderr.write(`\revaluating ${done}/${total}`),
  }).finally(() => predictor?.dispose()); // also after an error: a pool's workers would keep the process alive
  process.stderr.write('\n');
  process.stdout.write(
    `${formatMetricsTable(metrics)}\n${formatEvaluationSummary(metrics)}\n` +
      `metrics: ${path.join(o.out, 'metrics.json')}\nreport:  ${path.join(o.out, 'report.html')}\n`,
  );
}

export const evalCommand: Command = { spec: EVAL, run };
