/**
 * Evaluate anomaly maps on an MVTec-style test set: stream (map, mask) pairs one image at a time into
 * PixelMetricsAccumulator, write `metrics.json` (and `report.html`) atomically into outDir, return the metrics.
 *
 * Score convention: maps are ANOMALY SCORES, higher = more anomalous (see metrics.ts). Folder maps that store a
 * normal-region map (AnoSeg's raw output, 1 = normal) are read with `invert: true` (score = 1 - value).
 *
 * Evaluation resolution: by default each map is resized (bilinear, align_corners=False) to its ground-truth mask's
 * own size (the test image's size for good images), as MVTec's official script evaluates at mask resolution, up to
 * `evalMaxSide` (default EVAL_MAX_SIDE, 1024 px) on the longer side: larger masks and maps are evaluated at that size,
 * aspect kept (masks sampled nearest while decoding, so a multi-megapixel mask is never held as floats), which bounds
 * the accumulator's 4-8 bytes per evaluated pixel. `evalSize` instead evaluates everything at evalSize x evalSize
 * (maps bilinear, masks nearest), e.g. 256 as in the AnoSeg paper.
 *
 * Masks are optional: a defective test image without a mask counts in the image-level figures (image AUROC, AP, best
 * F1, the pass/reject counts at the image threshold) and in none of the pixel figures, which are computed over the
 * images with pixel ground truth (good images and defective images with masks); `groundTruth` says how many.
 *
 * Image score, in order of precedence: `imageScores` (per test path), a score returned by the map provider,
 * else the maximum of the evaluated map, optionally Gaussian-smoothed first (`imageScoreSigma`, in pixels of the
 * evaluated map; 0 = no smoothing, the default, as MVTec's script uses the plain max).
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { gaussianBlur } from '../models/gaussian.js';
import {
  groundTruthCounts,
  loadGroundTruthAt,
  openMvtecDataset,
  type DataLayout,
  type GroundTruthCounts,
  type MvtecDataset,
  type TestItem,
} from '../data/dataset.js';
import { loadImage, readImageSize, resizeImage } from '../image/io.js';
import { EVAL_MAX_SIDE, capLongerSide, checkMaxSide, type Size } from '../image/bounded.js';
import type { Image } from '../image/types.js';
import { writeFileAtomic } from '../util/atomic.js';
import { mapAhead } from '../util/map-ahead.js';
import {
  PixelMetricsAccumulator,
  imageConfusion,
  scoresFromNormalMap,
  type ImageConfusion,
  type CategoryMetrics,
  type ImageStats,
  type PixelMetricsOptions,
} from './metrics.js';
import { ReportCases, emptyMaskNote, writeHtmlReport } from './report.js';
import { formatFigure, metricsTable } from './metrics-table.js';

/** A map, optionally with the image-level score the model computed itself. */
export interface ProvidedMap {
  map: Image;
  score?: number;
  /** How the test image was decoded for the model (modelMapProvider): its stored size, the decoded size, the cap. */
  decoded?: { source: Size; decoded: Size; maxSide: number | null };
}

/** Gives the anomaly-score map (1 channel, any size) of one test image. */
export type MapProvider = (item: TestItem) => Promise<Image | ProvidedMap>;

export type ImageScoreSource = Map<string, number> | Record<string, number>;

export interface EvaluateOptions {
  /** Category folder, MVTec AD or MVTec 3D-AD (see src/data/dataset.ts; train/ may be absent); or `dataset`. */
  dataRoot?: string;
  /** An opened test set (e.g. openFolderDataset); takes the place of dataRoot. */
  dataset?: MvtecDataset;
  /** Layout of dataRoot: detected by default. */
  layout?: 'auto' | 'mvtec' | 'mvtec3d' | 'visa';
  /**
   * Image-score threshold (score >= threshold = rejected as defective) at which the pass / reject counts are
   * given: the model's own, or one the user chose. Default: the best-F1 threshold on this test set.
   */
  imageThreshold?: { value: number; source: 'model' | 'given' };
  /** The model that made the maps (input size, channels, aspect handling), recorded in metrics.json and the report. */
  model?: EvaluationInput['model'];
  mapProvider: MapProvider;
  /**
   * Maps requested ahead of the one being scored (default 1: one at a time). With a provider that computes
   * elsewhere (a worker pool), the next images are predicted while this thread scores the current map. Each map
   * requested ahead is held in memory until its turn.
   */
  prefetch?: number;
  /** metrics.json and report.html are written here. */
  outDir: string;
  /** Image-level scores by test image path (as listed by openMvtecDataset); every test image must have one. */
  imageScores?: ImageScoreSource;
  /** Gaussian sigma (pixels) applied to the map before taking its max as image score. Default 0 (none). */
  imageScoreSigma?: number;
  /** Evaluate at evalSize x evalSize instead of each mask's own size. */
  evalSize?: number;
  /**
   * Without evalSize: the longer side masks and maps are evaluated at, at most (larger ones are downscaled, aspect
   * kept). Default EVAL_MAX_SIDE (1024); null = each mask's own size, however large.
   */
  evalMaxSide?: number | null;
  /** Options of the metrics (PRO limit, IoU steps, curve resolution, ...). */
  metrics?: PixelMetricsOptions;
  /** Write report.html (default true). */
  report?: boolean;
  /** Best / worst cases shown in the report (default 3 of each). */
  reportCases?: number;
  /** Report title (default: the category folder name). */
  title?: string;
  onProgress?: (done: number, total: number, item: TestItem) => void;
  /** Called once with the readable metrics table and summary (formatMetricsTable, formatEvaluationSummary). */
  log?: (text: string) => void;
}

/** Per-test-image record kept in metrics.json: the accumulator's per-image figures with the image's path. */
export type ImageRecord = { path: string; defect: string } & Omit<ImageStats, 'index' | 'defectType'>;

export interface SizeRange {
  minHeight: number;
  maxHeight: number;
  minWidth: number;
  maxWidth: number;
}

/** What the maps were made from and at which size they were evaluated. */
export interface EvaluationInput {
  model: { method: string; resolution: number; channels: number; aspect?: string } | null;
  /**
   * How the model's images were decoded (maps from modelMapProvider): the cap on the longer side, how many images
   * were decoded below their stored size and the largest decoded size. Null for maps from elsewhere.
   */
  decode: { maxSide: number | null; downscaledImages: number; maxHeight: number; maxWidth: number } | null;
  /** Range of the stored sizes of the masks (images without a mask: the images). */
  sourceSize: SizeRange;
  /** Range of the evaluated sizes (each mask's or image's own size capped at evalMaxSide, or evalSize). */
  evaluatedSize: SizeRange;
  /** The cap on the evaluated longer side (null: none, or evalSize given). */
  evalMaxSide: number | null;
  /** How many test images were evaluated below their stored size (by the cap or evalSize). */
  downscaledImages: number;
}

/** Pass / reject counts at the image threshold, overall and per defect type (that type's images only). */
export interface ImageVerdicts {
  /** 'model': the model's threshold; 'given': the caller's; 'best-f1': the best-F1 threshold on this test set. */
  source: 'model' | 'given' | 'best-f1';
  overall: ImageConfusion;
  perDefect: Record<string, { passed: number; rejected: number }>;
}

/** The test split's counts, and how many of its defective images have an empty mask. */
export interface EvaluationGroundTruth extends GroundTruthCounts {
  /**
   * Images of a defect type whose mask marks no pixel: they count as good at image level (the label comes from the
   * mask, as in MVTec AD's evaluation) and in the pixel figures.
   */
  defectiveWithEmptyMask: number;
}

/** Everything evaluateMaps computes; metrics.json holds exactly this (NaN written as null). */
export interface EvaluationMetrics extends CategoryMetrics {
  dataRoot: string;
  layout: DataLayout;
  /** How many test images there are and how many of the defective ones have masks (pixel metrics use those). */
  groundTruth: EvaluationGroundTruth;
  /** Null when no threshold is defined (no defective test image and none given). */
  verdicts: ImageVerdicts | null;
  input: EvaluationInput;
  settings: {
    evalSize: number | null;
    evalMaxSide: number | null;
    imageScore: 'provided' | 'max' | 'max-smoothed' | 'model';
    imageScoreSigma: number;
    proFprLimit: number;
    iouSteps: number;
  };
  images: ImageRecord[];
  files: { metrics: string; report: string | null };
}

/** The decode record of the model maps, counting one more decoded test image. */
function tallyDecode(
  decode: EvaluationInput['decode'],
  d: NonNullable<ProvidedMap['decoded']>,
): NonNullable<EvaluationInput['decode']> {
  const t = decode ?? { maxSide: d.maxSide, downscaledImages: 0, maxHeight: 0, maxWidth: 0 };
  if (d.decoded.height < d.source.height || d.decoded.width < d.source.width) t.downscaledImages++;
  t.maxHeight = Math.max(t.maxHeight, d.decoded.height);
  t.maxWidth = Math.max(t.maxWidth, d.decoded.width);
  return t;
}

/** What metrics.json records of the model whose maps are evaluated. */
function modelInput(model: EvaluateOptions['model']): EvaluationInput['model'] {
  if (!model) return null;
  const { method, resolution, channels, aspect } = model;
  return { method, resolution, channels, ...(aspect !== undefined ? { aspect } : {}) };
}

/** Run the evaluation. Maps are requested, scored and released one test image at a time. */
export async function evaluateMaps(opts: EvaluateOptions): Promise<EvaluationMetrics> {
  if ((opts.dataRoot === undefined) === (opts.dataset === undefined)) {
    throw new Error('evaluateMaps: give exactly one of dataRoot and dataset');
  }
  const dataset =
    opts.dataset ??
    (await openMvtecDataset(opts.dataRoot as string, { layout: opts.layout ?? 'auto', requireTrain: false }));
  if (dataset.test.length === 0) throw new Error(`evaluateMaps: no test images in ${dataset.root}`);
  const threshold = opts.imageThreshold;
  if (threshold !== undefined && !Number.isFinite(threshold.value)) {
    throw new Error(`evaluateMaps: imageThreshold must be a finite number, got ${threshold.value}`);
  }
  const sigma = opts.imageScoreSigma ?? 0;
  if (!(sigma >= 0)) throw new Error(`evaluateMaps: imageScoreSigma must be >= 0, got ${sigma}`);
  const evalSize = opts.evalSize ?? null;
  if (evalSize !== null && !(Number.isInteger(evalSize) && evalSize > 0)) {
    throw new Error(`evaluateMaps: evalSize must be a positive integer, got ${evalSize}`);
  }
  const evalMaxSide =
    evalSize !== null
      ? null
      : checkMaxSide(opts.evalMaxSide === undefined ? EVAL_MAX_SIDE : opts.evalMaxSide, 'evaluateMaps: evalMaxSide');
  const evalTarget = (h: number, w: number): Size =>
    evalSize !== null ? { height: evalSize, width: evalSize } : capLongerSide(h, w, evalMaxSide);
  const acc = new PixelMetricsAccumulator(opts.metrics);
  const writeReport = opts.report ?? true;
  const cases = new ReportCases(opts.reportCases ?? 3);
  const images: ImageRecord[] = [];
  const sizes = emptyRange();
  const sourceSizes = emptyRange();
  let downscaled = 0;
  let decode: EvaluationInput['decode'] = null;
  let providedScores = 0;
  let i = 0;
  for await (const provided of mapAhead(dataset.test, opts.prefetch ?? 1, (t) => opts.mapProvider(t))) {
    const item = dataset.test[i++];
    const raw = 'map' in provided ? provided.map : provided;
    if (raw.channels !== 1) {
      throw new Error(`evaluateMaps: the map of ${item.path} has ${raw.channels} channels, expected 1`);
    }
    if ('map' in provided && provided.decoded !== undefined) decode = tallyDecode(decode, provided.decoded);
    const gt = item.maskPath === null ? null : await loadGroundTruthAt(item.maskPath, evalTarget);
    const mask = gt?.mask ?? null;
    const source = gt?.source ?? (await readImageSize(item.path));
    const { height, width } = mask ?? evalTarget(source.height, source.width);
    widen(sizes, height, width);
    widen(sourceSizes, source.height, source.width);
    if (height * width < source.height * source.width) downscaled++;
    const map = raw.height === height && raw.width === width ? raw : resizeImage(raw, height, width, 'bilinear');
    let score: number | undefined = lookupScore(opts.imageScores, item.path);
    if (score === undefined && 'map' in provided && provided.score !== undefined) {
      score = provided.score;
      providedScores++;
    }
    if (score === undefined && sigma > 0) score = mapMax(gaussianBlur(map, sigma));
    const stats =
      mask === null && item.defect !== 'good'
        ? acc.addImageOnly(map, item.defect, true, score)
        : acc.add(map, mask, item.defect, score);
    const { index: _index, defectType: _defectType, ...figures } = stats;
    images.push({ path: item.path, defect: item.defect, ...figures });
    if (writeReport) cases.offer(item, stats, map, mask);
    opts.onProgress?.(i, dataset.test.length, item);
  }
  if (providedScores > 0 && providedScores !== dataset.test.length && opts.imageScores === undefined) {
    throw new Error(
      `evaluateMaps: the map provider gave an image score for ${providedScores} of ${dataset.test.length} images; ` +
        'give one for all or none',
    );
  }
  const metrics = acc.compute();
  const verdicts = imageVerdicts(images, threshold ?? { value: metrics.overall.imageF1.threshold, source: 'best-f1' });
  const outDir = opts.outDir;
  const metricsPath = path.join(outDir, 'metrics.json');
  const reportPath = writeReport ? path.join(outDir, 'report.html') : null;
  const result: EvaluationMetrics = {
    dataRoot: dataset.root,
    layout: dataset.layout,
    groundTruth: {
      ...groundTruthCounts(dataset.test),
      defectiveWithEmptyMask: images.filter((r) => r.defect !== 'good' && r.pixelLevel && !r.anomalous).length,
    },
    verdicts,
    input: {
      model: modelInput(opts.model),
      decode,
      sourceSize: sourceSizes,
      evaluatedSize: sizes,
      evalMaxSide,
      downscaledImages: downscaled,
    },
    settings: {
      evalSize,
      evalMaxSide,
      imageScore: opts.imageScores ? 'provided' : providedScores > 0 ? 'model' : sigma > 0 ? 'max-smoothed' : 'max',
      imageScoreSigma: sigma,
      proFprLimit: metrics.overall.proFprLimit,
      iouSteps: metrics.overall.iou.steps,
    },
    ...metrics,
    images,
    files: { metrics: metricsPath, report: reportPath },
  };
  await writeFileAtomic(metricsPath, metricsToJson(result));
  if (reportPath) {
    await writeHtmlReport(reportPath, {
      title: opts.title ?? `Anomaly segmentation: ${path.basename(path.resolve(dataset.root))}`,
      metrics: result,
      cases,
      imageLevel: { groundTruth: result.groundTruth, verdicts: result.verdicts, images },
      input: { ...result.input, evalSize },
    });
  }
  opts.log?.(`${formatMetricsTable(result)}\n${formatEvaluationSummary(result)}`);
  return result;
}

function imageVerdicts(
  images: ImageRecord[],
  threshold: { value: number; source: ImageVerdicts['source'] },
): ImageVerdicts | null {
  if (!Number.isFinite(threshold.value)) return null;
  const overall = imageConfusion(
    images.map((r) => r.imageScore),
    images.map((r) => r.anomalous),
    threshold.value,
  );
  const perDefect: ImageVerdicts['perDefect'] = {};
  for (const r of images) {
    if (r.defect === 'good') continue;
    const v = (perDefect[r.defect] ??= { passed: 0, rejected: 0 });
    if (r.imageScore >= threshold.value) v.rejected++;
    else v.passed++;
  }
  return { source: threshold.source, overall, perDefect };
}

function lookupScore(source: ImageScoreSource | undefined, key: string): number | undefined {
  if (source === undefined) return undefined;
  const v =
    source instanceof Map
      ? source.get(key)
      : Object.prototype.hasOwnProperty.call(source, key)
        ? source[key]
        : undefined;
  if (v === undefined || Number.isNaN(v)) throw new Error(`evaluateMaps: no image score given for ${key}`);
  return v;
}

function emptyRange(): SizeRange {
  return { minHeight: Infinity, maxHeight: 0, minWidth: Infinity, maxWidth: 0 };
}

function widen(r: SizeRange, height: number, width: number): void {
  r.minHeight = Math.min(r.minHeight, height);
  r.maxHeight = Math.max(r.maxHeight, height);
  r.minWidth = Math.min(r.minWidth, width);
  r.maxWidth = Math.max(r.maxWidth, width);
}

function mapMax(map: Image): number {
  let m = -Infinity;
  for (let i = 0; i < map.data.length; i++) if (map.data[i] > m) m = map.data[i];
  return m;
}

// ---------------------------------------------------------------------------------------------------------------
// Reading maps produced elsewhere
// ---------------------------------------------------------------------------------------------------------------

export interface FolderMapOptions {
  /** The files hold normal-region maps (1 = normal, AnoSeg's raw output): score = 1 - value. Default false. */
  invert?: boolean;
}

/** Extensions tried, in order, for a map file. */
export const MAP_EXTENSIONS = ['.tiff', '.tif', '.png'] as const;

/**
 * Maps produced elsewhere, one file per test image: DIR/<defect>/<name>.tiff (32-bit float, any range, as MVTec's
 * official script expects), .tif, or .png (16-bit or 8-bit grayscale, read as value / 65535 or / 255), where <name>
 * is the test image's file name without extension (e.g. DIR/broken_large/000.tiff for test/broken_large/000.png).
 * MVTec's own layout DIR/test/<defect>/<name>.tiff is accepted too, and so are the files of `anoseg predict` run on
 * the test folder (DIR/<defect>/<name>_map.tiff). Values are anomaly scores unless `invert`.
 */
export function folderMapProvider(dir: string, opts: FolderMapOptions = {}): (item: TestItem) => Promise<Image> {
  return async (item: TestItem): Promise<Image> => {
    const name = path.basename(item.path, path.extname(item.path));
    const tried: string[] = [];
    for (const base of [path.join(dir, item.defect, name), path.join(dir, 'test', item.defect, name)]) {
      for (const file of [...MAP_EXTENSIONS.map((e) => base + e), ...MAP_EXTENSIONS.map((e) => `${base}_map${e}`)]) {
        tried.push(file);
        if (!(await isFile(file))) continue;
        const map = await loadImage(file);
        if (map.channels !== 1) throw new Error(`map ${file} has ${map.channels} channels, expected a grayscale map`);
        return opts.invert ? scoresFromNormalMap(map) : map;
      }
    }
    throw new Error(`no anomaly map for ${item.path}; looked for:\n  ${tried.join('\n  ')}`);
  };
}

async function isFile(p: string): Promise<boolean> {
  try {
    return (await fs.stat(p)).isFile();
  } catch {
    return false;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------------------------------------------

/** JSON with NaN / ±Infinity written as null (JSON has no such numbers). */
export function metricsToJson(value: unknown): string {
  return `${JSON.stringify(value, (_k, v: unknown) => (typeof v === 'number' && !Number.isFinite(v) ? null : v), 2)}\n`;
}

/** A plain-text table of every figure, one row per defect type (evaluated with the good images) and overall. */
export function formatMetricsTable(metrics: CategoryMetrics): string {
  const table = metricsTable(metrics);
  const header = table.header.short;
  const rows = table.rows.map((r) => [r.label, ...r.cells]);
  const widths = header.map((h, c) => Math.max(h.length, ...rows.map((r) => r[c].length)));
  const line = (cells: string[]): string =>
    cells.map((cell, c) => (c === 0 ? cell.padEnd(widths[c]) : cell.padStart(widths[c]))).join('  ');
  const rule = widths.map((w) => '-'.repeat(w)).join('  ');
  return [line(header), rule, ...rows.slice(0, -1).map(line), rule, line(rows[rows.length - 1])].join('\n');
}

/**
 * What the table does not say: how many images the pixel figures cover, and how many good / defective parts the
 * image threshold passes and rejects.
 */
export function formatEvaluationSummary(m: EvaluationMetrics): string {
  const g = m.groundTruth;
  const lines = [
    `test images: ${g.images} (${g.good} good, ${g.defective} defective, ${g.defectiveWithMask} of them with masks)`,
  ];
  if (g.defectiveWithMask === 0) {
    lines.push('pixel figures: not computed (no defective test image has a mask); image-level figures only');
  } else {
    lines.push(
      `pixel figures over ${m.overall.pixelImages} images with pixel ground truth (${g.good} good + ${g.defectiveWithMask} defective with masks)` +
        (g.defectiveWithoutMask > 0
          ? `; ${g.defectiveWithoutMask} defective images without masks count at image level only`
          : ''),
    );
  }
  if (g.defectiveWithEmptyMask > 0) lines.push(emptyMaskNote(g.defectiveWithEmptyMask));
  const v = m.verdicts;
  if (v) {
    const c = v.overall;
    const source = {
      model: "the model's threshold",
      given: 'the given threshold',
      'best-f1': 'the best-F1 threshold on this test set (optimistic)',
    }[v.source];
    lines.push(
      `at ${source} ${formatFigure(c.threshold)}: good parts ${c.goodPassed} passed / ${c.goodRejected} rejected, ` +
        `defective parts ${c.defectiveRejected} rejected / ${c.defectivePassed} passed (missed)`,
    );
  }
  return lines.join('\n');
}
