/**
 * Anomaly-segmentation metrics, faithful to the field (MVTec AD) and to the AnoSeg paper. Pure TypeScript, no I/O.
 *
 * SCORE CONVENTION
 * - Every function here takes ANOMALY SCORES: higher = more anomalous. AnoSeg's network outputs a normal-region
 *   map (1 = normal, 0 = anomalous); convert it first with `scoresFromNormalMap` (score = 1 - map).
 * - A pixel is predicted defective at threshold t iff score >= t.
 * - Ground-truth masks: any value > 0 is a defective pixel; a missing mask (null) means an all-normal image.
 *   An image is anomalous iff its mask has at least one defective pixel (as MVTec's official script does).
 * - A defective image WITHOUT a mask (labelled by its folder only) is added with `addImageOnly`: it counts in every
 *   image-level figure (image AUROC, AP, best F1) and in none of the pixel figures, which are computed over the
 *   images with pixel ground truth only (good images and defective images with masks; `GroupMetrics.pixelImages`).
 * - A metric that is undefined (e.g. AUROC without positives or without negatives) is NaN here and null in JSON.
 *
 * WHAT IS COMPUTED (per defect type and overall, see `PixelMetricsAccumulator`)
 * - Image AUROC, image AP and best image F1 from one score per image, as the pixel figures below but per image.
 * - Pixel AUROC: exact ROC over all unique thresholds; tied scores form one step of the curve (a diagonal segment),
 *   integrated with the trapezoid rule. This equals the Mann-Whitney U statistic with ties counted 1/2, and
 *   sklearn.metrics.roc_auc_score.
 * - Pixel AP: step-wise average precision, sum_n (R_n - R_{n-1}) P_n over unique thresholds in decreasing order,
 *   as sklearn.metrics.average_precision_score (no interpolation).
 * - Best F1 over all unique thresholds (F1 = 2 TP / (2 TP + FP + FN)) and its threshold.
 * - IoU as in the paper (Sec. 4.3.4): the score range [min, max] of the evaluated pixels is divided into 10,000 steps
 *   (thresholds t_k = min + (max - min) * k / 10000, k = 0..10000); IoU(t) = TP / (TP + FP + FN) counted over all
 *   test pixels of the evaluated images (not a per-image mean); the best IoU and its threshold are reported, plus
 *   an IoU-over-threshold curve (paper Fig. 6b) on thresholds spanning [0, 1] when all scores lie in [0, 1], else
 *   [min, max].
 * - PRO / AUPRO as MVTec AD defines it: ground-truth regions are the 8-connected components of each mask
 *   (scipy.ndimage.label with a 3x3 ones structure in MVTec's official code). PRO(t) = mean over all regions of all
 *   evaluated images of the fraction of the region predicted defective; FPR(t) = false positives / all normal pixels
 *   (pixels outside every region, of all evaluated images including the good ones). The (FPR, PRO) curve is
 *   computed exactly: pixels are sorted by score and each defect pixel adds 1 / (|its region| * nRegions) to PRO,
 *   tied scores forming one step; it starts at (0, 0), ends at (1, 1), is interpolated linearly at FPR = 0.3,
 *   integrated with the trapezoid rule and divided by 0.3 (so AUPRO <= 1; anomalib once divided by the last FPR
 *   point instead, which can exceed 1).
 *
 * DIFFERENCES FROM MVTec AD's OFFICIAL EVALUATION SCRIPT (evaluate_experiment.py, pro_curve_util.py)
 * - Same PRO curve definition (the MVTec AD script also sorts all pixels and merges tied scores; the older MVTec 3D-AD
 *   variant sampled a fixed number of thresholds on the normal-pixel scores, which only approximates the curve).
 * - The official script accumulates the FPR in float32 and clips PRO to <= 1; here counts are exact integers and
 *   sums are float64 (PRO is also clipped to <= 1 against rounding). Differences are ~1e-7.
 * - The official script requires maps at full dataset resolution; here maps are compared with masks at the mask's
 *   resolution (the caller resizes maps bilinearly to the mask size, see evaluate.ts).
 * - Per defect type, the official script evaluates a category as a whole only; per-type figures here are computed on
 *   that type's images plus all good test images (the field's convention for per-type AUROC), so normal pixels /
 *   images from the good set are shared by every type.
 * - Plotted curves are decimated for JSON/SVG output; every reported number is computed on the exact curve.
 */
import type { Image } from '../image/types.js';

export const DEFAULT_PRO_FPR_LIMIT = 0.3;
export const DEFAULT_IOU_STEPS = 10_000;
export const DEFAULT_IOU_CURVE_POINTS = 101;
export const DEFAULT_CURVE_POINTS = 500;

/** score = 1 - map, for networks (like AnoSeg) whose map is 1 on normal pixels. */
export function scoresFromNormalMap(normalMap: Image): Image {
  const data = new Float32Array(normalMap.data.length);
  for (let i = 0; i < data.length; i++) data[i] = 1 - normalMap.data[i];
  return { channels: normalMap.channels, height: normalMap.height, width: normalMap.width, data };
}

// ---------------------------------------------------------------------------------------------------------------
// Threshold sweep over sorted score streams
// ---------------------------------------------------------------------------------------------------------------

type SortedScores = Float32Array | Float64Array;

/** Scores sorted ascending, all of one label; `weights` (PRO contribution per pixel) only for positives. */
interface Stream {
  scores: SortedScores;
  positive: boolean;
  weights: Float64Array | null;
}

/**
 * Visit every unique threshold t in decreasing order, after all samples with score >= t have been counted:
 * fp = negatives >= t, tp = positives >= t, w = sum of positive weights >= t. Streams are merged on the fly
 * (k-way merge), so subsets of a category never have to be concatenated.
 */
function sweep(streams: Stream[], visit: (t: number, fp: number, tp: number, w: number) => void): void {
  const idx = streams.map((s) => s.scores.length - 1);
  let fp = 0;
  let tp = 0;
  let w = 0;
  for (;;) {
    let t = 0;
    let any = false;
    for (let s = 0; s < streams.length; s++) {
      const i = idx[s];
      if (i >= 0) {
        const v = streams[s].scores[i];
        if (!any || v > t) {
          t = v;
          any = true;
        }
      }
    }
    if (!any) return;
    for (let s = 0; s < streams.length; s++) {
      const st = streams[s];
      const sc = st.scores;
      let i = idx[s];
      if (i < 0 || sc[i] !== t) continue;
      if (st.positive) {
        const wt = st.weights;
        while (i >= 0 && sc[i] === t) {
          tp++;
          if (wt) w += wt[i];
          i--;
        }
      } else {
        while (i >= 0 && sc[i] === t) {
          fp++;
          i--;
        }
      }
      idx[s] = i;
    }
    visit(t, fp, tp, w);
  }
}

/** Number of positives / negatives with score >= t for each threshold of an ascending list. */
function countsAtOrAbove(streams: Stream[], thresholds: ArrayLike<number>): { tp: Float64Array; fp: Float64Array } {
  const n = thresholds.length;
  const tp = new Float64Array(n);
  const fp = new Float64Array(n);
  for (const st of streams) {
    const sc = st.scores;
    const out = st.positive ? tp : fp;
    let below = 0; // number of scores < current threshold (thresholds ascend, so it only grows)
    for (let k = 0; k < n; k++) {
      const t = thresholds[k];
      if (k > 0 && t < thresholds[k - 1]) throw new Error('countsAtOrAbove: thresholds must ascend');
      while (below < sc.length && sc[below] < t) below++;
      out[k] += sc.length - below;
    }
  }
  return { tp, fp };
}

// ---------------------------------------------------------------------------------------------------------------
// Plain binary-classification metrics (image level, or any score/label list)
// ---------------------------------------------------------------------------------------------------------------

export interface RocCurve {
  /** Points in increasing FPR order, from (0, 0) to (1, 1); one point per unique threshold. */
  fpr: number[];
  tpr: number[];
  /** thresholds[i] is the threshold of point i (score >= threshold predicted anomalous); Infinity for (0, 0). */
  thresholds: number[];
}

function labelledStreams(scores: ArrayLike<number>, labels: ArrayLike<boolean | number>): Stream[] {
  if (scores.length !== labels.length) {
    throw new Error(`metrics: ${scores.length} scores but ${labels.length} labels`);
  }
  const pos: number[] = [];
  const neg: number[] = [];
  for (let i = 0; i < scores.length; i++) {
    const s = scores[i];
    if (Number.isNaN(s)) throw new Error(`metrics: score ${i} is NaN`);
    (labels[i] ? pos : neg).push(s);
  }
  return [
    { scores: Float64Array.from(pos).sort(), positive: true, weights: null },
    { scores: Float64Array.from(neg).sort(), positive: false, weights: null },
  ];
}

/** Exact ROC curve; labels: truthy = anomalous (positive). */
export function rocCurve(scores: ArrayLike<number>, labels: ArrayLike<boolean | number>): RocCurve {
  const streams = labelledStreams(scores, labels);
  const P = streams[0].scores.length;
  const N = streams[1].scores.length;
  const curve: RocCurve = { fpr: [0], tpr: [0], thresholds: [Infinity] };
  sweep(streams, (t, fp, tp) => {
    curve.fpr.push(N > 0 ? fp / N : NaN);
    curve.tpr.push(P > 0 ? tp / P : NaN);
    curve.thresholds.push(t);
  });
  return curve;
}

/** Trapezoid-rule area under the exact ROC curve (= Mann-Whitney U / (P N), ties count 1/2). NaN if P or N is 0. */
export function auroc(scores: ArrayLike<number>, labels: ArrayLike<boolean | number>): number {
  return sweepMetrics(labelledStreams(scores, labels), 0, DEFAULT_PRO_FPR_LIMIT, 0).auroc;
}

/** Image-level AUROC from one anomaly score per image; labels: true = anomalous image. */
export function imageAuroc(imageScores: ArrayLike<number>, anomalous: ArrayLike<boolean | number>): number {
  return auroc(imageScores, anomalous);
}

/** Threshold maximising Youden's J (TPR - FPR) between normal and anomalous scores. */
export function youdenThreshold(normal: ArrayLike<number>, anomalous: ArrayLike<number>): number {
  const all = [...Array.from(normal, (s) => ({ s, a: 0 })), ...Array.from(anomalous, (s) => ({ s, a: 1 }))].sort(
    (p, q) => q.s - p.s,
  );
  let tp = 0;
  let fp = 0;
  let best = -Infinity;
  let threshold = all.length ? all[0].s : 0.5;
  for (let i = 0; i < all.length; i++) {
    if (all[i].a) tp++;
    else fp++;
    if (i + 1 < all.length && all[i + 1].s === all[i].s) continue;
    const j = tp / Math.max(1, anomalous.length) - fp / Math.max(1, normal.length);
    if (j > best) {
      best = j;
      threshold = i + 1 < all.length ? (all[i].s + all[i + 1].s) / 2 : all[i].s;
    }
  }
  return threshold;
}

/** Step-wise average precision as sklearn.metrics.average_precision_score. NaN without positives. */
export function averagePrecision(scores: ArrayLike<number>, labels: ArrayLike<boolean | number>): number {
  return sweepMetrics(labelledStreams(scores, labels), 0, DEFAULT_PRO_FPR_LIMIT, 0).ap;
}

/** Image verdicts at one threshold (score >= threshold = rejected as defective). */
export interface ImageConfusion {
  threshold: number;
  /** Good images passed (true negatives) and rejected (false alarms). */
  goodPassed: number;
  goodRejected: number;
  /** Defective images passed (missed) and rejected (caught). */
  defectivePassed: number;
  defectiveRejected: number;
}

/** Count how many good / defective images a threshold passes and rejects; labels: truthy = defective. */
export function imageConfusion(
  scores: ArrayLike<number>,
  labels: ArrayLike<boolean | number>,
  threshold: number,
): ImageConfusion {
  if (scores.length !== labels.length) throw new Error(`metrics: ${scores.length} scores but ${labels.length} labels`);
  if (Number.isNaN(threshold)) throw new Error('imageConfusion: threshold is NaN');
  const c: ImageConfusion = { threshold, goodPassed: 0, goodRejected: 0, defectivePassed: 0, defectiveRejected: 0 };
  for (let i = 0; i < scores.length; i++) {
    const rejected = scores[i] >= threshold;
    if (labels[i]) {
      if (rejected) c.defectiveRejected++;
      else c.defectivePassed++;
    } else if (rejected) c.goodRejected++;
    else c.goodPassed++;
  }
  return c;
}

// ---------------------------------------------------------------------------------------------------------------
// Everything that needs the exact sorted sweep, in one pass
// ---------------------------------------------------------------------------------------------------------------

export interface F1Result {
  f1: number;
  /** Pixels with score >= threshold are predicted defective; the lowest threshold among ties. */
  threshold: number;
  precision: number;
  recall: number;
}

interface SweepResult {
  auroc: number;
  ap: number;
  f1: F1Result;
  aupro: number;
  roc: { fpr: number[]; tpr: number[] };
  pro: { fpr: number[]; pro: number[] };
}

/** Keeps a plotted curve small: a point is kept when it moved by >= step in x or y since the last kept one. */
class CurveDecimator {
  readonly x: number[] = [];
  readonly y: number[] = [];
  private pendingX = NaN;
  private pendingY = NaN;

  constructor(
    private readonly stepX: number,
    private readonly stepY: number,
  ) {}

  push(x: number, y: number): void {
    const n = this.x.length;
    if (n === 0 || Math.abs(x - this.x[n - 1]) >= this.stepX || Math.abs(y - this.y[n - 1]) >= this.stepY) {
      this.x.push(x);
      this.y.push(y);
      this.pendingX = NaN;
    } else {
      this.pendingX = x;
      this.pendingY = y;
    }
  }

  /** Make sure the last pushed point is part of the curve. */
  finish(): void {
    if (!Number.isNaN(this.pendingX)) {
      this.x.push(this.pendingX);
      this.y.push(this.pendingY);
      this.pendingX = NaN;
    }
  }
}

function sweepMetrics(streams: Stream[], nRegions: number, proLimit: number, curvePoints: number): SweepResult {
  let P = 0;
  let N = 0;
  for (const s of streams) {
    if (s.positive) P += s.scores.length;
    else N += s.scores.length;
  }
  let area = 0;
  let ap = 0;
  let prevFp = 0;
  let prevTp = 0;
  const f1: F1Result = { f1: NaN, threshold: NaN, precision: NaN, recall: NaN };
  let bestF1 = -1;
  // PRO curve state.
  const proDefined = nRegions > 0 && N > 0;
  let proArea = 0;
  let prevFpr = 0;
  let prevPro = 0;
  let proDone = !proDefined;
  const keep = curvePoints > 0;
  const roc = new CurveDecimator(1 / Math.max(1, curvePoints), 1 / Math.max(1, curvePoints));
  const pro = new CurveDecimator(proLimit / Math.max(1, curvePoints), 1 / Math.max(1, curvePoints));
  if (keep) {
    roc.push(0, 0);
    if (proDefined) pro.push(0, 0);
  }
  sweep(streams, (t, fp, tp, w) => {
    area += (fp - prevFp) * (tp + prevTp);
    if (P > 0 && tp > prevTp) ap += ((tp - prevTp) / P) * (tp / (tp + fp));
    if (P > 0) {
      const f = (2 * tp) / (tp + fp + P);
      if (f >= bestF1) {
        bestF1 = f;
        f1.f1 = f;
        f1.threshold = t;
        f1.precision = tp / (tp + fp);
        f1.recall = tp / P;
      }
    }
    if (keep && P > 0 && N > 0) roc.push(fp / N, tp / P);
    if (!proDone) {
      const fpr = fp / N;
      const p = Math.min(1, w / nRegions);
      if (fpr <= proLimit) {
        proArea += ((fpr - prevFpr) * (p + prevPro)) / 2;
        if (keep) pro.push(fpr, p);
        if (fpr === proLimit) proDone = true;
      } else {
        // Linear interpolation of the curve at FPR = limit (prevFpr < limit < fpr).
        const pAt = prevPro + ((p - prevPro) * (proLimit - prevFpr)) / (fpr - prevFpr);
        proArea += ((proLimit - prevFpr) * (pAt + prevPro)) / 2;
        if (keep) pro.push(proLimit, pAt);
        proDone = true;
      }
      prevFpr = fpr;
      prevPro = p;
    }
    prevFp = fp;
    prevTp = tp;
  });
  roc.finish();
  pro.finish();
  return {
    auroc: P > 0 && N > 0 ? area / (2 * P * N) : NaN,
    ap: P > 0 ? ap : NaN,
    f1,
    aupro: proDefined ? Math.min(1, proArea / proLimit) : NaN,
    roc: { fpr: roc.x, tpr: roc.y },
    pro: { fpr: pro.x, pro: pro.y },
  };
}

// ---------------------------------------------------------------------------------------------------------------
// Connected components (MVTec: scipy.ndimage.label with a 3x3 ones structure = 8-connectivity)
// ---------------------------------------------------------------------------------------------------------------

export interface Components {
  /** 0 = background, k = component k (1-based), row-major height x width. */
  labels: Int32Array;
  /** sizes[k - 1] = number of pixels of component k. */
  sizes: number[];
}

/** Label the connected components of `mask[i] > 0` (8-connectivity by default, 4 on request). */
export function labelComponents(
  mask: ArrayLike<number>,
  height: number,
  width: number,
  connectivity: 4 | 8 = 8,
): Components {
  if (mask.length !== height * width) throw new Error(`labelComponents: ${mask.length} values for ${height}x${width}`);
  const labels = new Int32Array(height * width);
  const sizes: number[] = [];
  const stack = new Int32Array(height * width);
  for (let start = 0; start < labels.length; start++) {
    if (!(mask[start] > 0) || labels[start] !== 0) continue;
    const label = sizes.length + 1;
    let top = 0;
    let size = 0;
    stack[top++] = start;
    labels[start] = label;
    while (top > 0) {
      const p = stack[--top];
      size++;
      const y = (p / width) | 0;
      const x = p - y * width;
      for (let dy = -1; dy <= 1; dy++) {
        const yy = y + dy;
        if (yy < 0 || yy >= height) continue;
        for (let dx = -1; dx <= 1; dx++) {
          if ((dx === 0 && dy === 0) || (connectivity === 4 && dx !== 0 && dy !== 0)) continue;
          const xx = x + dx;
          if (xx < 0 || xx >= width) continue;
          const q = yy * width + xx;
          if (labels[q] === 0 && mask[q] > 0) {
            labels[q] = label;
            stack[top++] = q;
          }
        }
      }
    }
    sizes.push(size);
  }
  return { labels, sizes };
}

// ---------------------------------------------------------------------------------------------------------------
// Streaming per-category accumulator
// ---------------------------------------------------------------------------------------------------------------

export interface PixelMetricsOptions {
  /** Defect-type name of the normal test images, shared by every per-type evaluation. Default 'good'. */
  goodType?: string;
  /** PRO integration limit (FPR). Default 0.3. */
  proFprLimit?: number;
  /** Number of steps of the IoU threshold search over [min, max]. Default 10,000 (the paper). */
  iouSteps?: number;
  /** Number of thresholds of the IoU-over-threshold curve. Default 101. */
  iouCurvePoints?: number;
  /** Resolution of the decimated ROC / PRO curves kept for plots (about this many points). Default 500. */
  curvePoints?: number;
  /** Connectivity of ground-truth regions for PRO. Default 8 (MVTec). */
  connectivity?: 4 | 8;
}

/** What `add` learned about one image (used to pick best / worst cases for reports). */
export interface ImageStats {
  /** Order in which the image was added (0-based). */
  index: number;
  defectType: string;
  anomalous: boolean;
  imageScore: number;
  maxScore: number;
  defectPixels: number;
  regions: number;
  /** AUROC of this image's own pixels (NaN unless it has both defect and normal pixels). */
  pixelAuroc: number;
  /**
   * Whether the image has pixel ground truth (a mask, or a good image known to be all normal) and so counts in the
   * pixel metrics; false for a defective image without a mask, which counts at image level only.
   */
  pixelLevel: boolean;
}

export interface IouResult {
  /** Best IoU over the threshold grid (NaN without defect pixels). */
  iou: number;
  /** Threshold achieving it (score >= threshold predicted defective); the lowest one among ties. */
  threshold: number;
  tp: number;
  fp: number;
  fn: number;
  /** The searched grid: min + (max - min) * k / steps, k = 0..steps. */
  min: number;
  max: number;
  steps: number;
}

export interface GroupMetrics {
  /** All images of the group; image-level metrics are computed over all of them. */
  images: number;
  anomalousImages: number;
  /** Images with pixel ground truth (good images and defective images with a mask): the pixel metrics' images. */
  pixelImages: number;
  /** Of those, the anomalous ones (defective images with a non-empty mask). */
  pixelAnomalousImages: number;
  pixels: number;
  defectPixels: number;
  regions: number;
  imageAuroc: number;
  /** Image-level average precision (sklearn's average_precision_score). */
  imageAp: number;
  /** Best image-level F1 over all thresholds and its threshold. */
  imageF1: F1Result;
  pixelAuroc: number;
  pixelAp: number;
  f1: F1Result;
  iou: IouResult;
  aupro: number;
  proFprLimit: number;
  curves: {
    /** Pixel ROC (decimated for plotting). */
    roc: { fpr: number[]; tpr: number[] };
    /** PRO curve up to FPR = proFprLimit (decimated; ends with the interpolated point at the limit). */
    pro: { fpr: number[]; pro: number[] };
    /** IoU over threshold (paper Fig. 6b). */
    iou: { threshold: number[]; iou: number[] };
    /** Exact image-level ROC. */
    imageRoc: { fpr: number[]; tpr: number[] };
  };
}

export interface CategoryMetrics {
  overall: GroupMetrics;
  /** One entry per defect type other than the good type: that type's images plus the good test images. */
  perDefect: Record<string, GroupMetrics>;
  goodType: string;
  /** Number of test images per defect type (good included). */
  imageCounts: Record<string, number>;
}

/** Per defect type storage: compact per-pixel data only. */
class TypeStore {
  /** Normal-pixel scores, sorted ascending (merged lazily from `negPending`). */
  negSorted: Float32Array = new Float32Array(0);
  negPending: Float32Array[] = [];
  posChunks: Float32Array[] = [];
  /** Global region index of every defect pixel, aligned with posChunks. */
  regionChunks: Uint32Array[] = [];
  /** Cache of positives sorted ascending with their PRO weight 1 / |region|. */
  posSorted: { scores: Float32Array; weights: Float64Array } | null = null;
  imageScores: number[] = [];
  imageLabels: boolean[] = [];
  /** Images whose pixels were added (see ImageStats.pixelLevel) and how many of them are anomalous. */
  pixelImages = 0;
  pixelAnomalousImages = 0;
  regions = 0;
  min = Infinity;
  max = -Infinity;

  finalize(regionSizes: number[]): void {
    if (this.negPending.length > 0) {
      const total = this.negPending.reduce((n, a) => n + a.length, 0);
      const fresh = new Float32Array(total);
      let o = 0;
      for (const a of this.negPending) {
        fresh.set(a, o);
        o += a.length;
      }
      fresh.sort();
      this.negSorted = mergeSorted(this.negSorted, fresh);
      this.negPending = [];
    }
    if (this.posSorted === null) {
      const total = this.posChunks.reduce((n, a) => n + a.length, 0);
      const scores = new Float32Array(total);
      const regions = new Uint32Array(total);
      let o = 0;
      for (let c = 0; c < this.posChunks.length; c++) {
        scores.set(this.posChunks[c], o);
        regions.set(this.regionChunks[c], o);
        o += this.posChunks[c].length;
      }
      const order = new Uint32Array(total);
      for (let i = 0; i < total; i++) order[i] = i;
      order.sort((a, b) => scores[a] - scores[b]);
      const sortedScores = new Float32Array(total);
      const weights = new Float64Array(total);
      for (let i = 0; i < total; i++) {
        sortedScores[i] = scores[order[i]];
        weights[i] = 1 / regionSizes[regions[order[i]]];
      }
      this.posSorted = { scores: sortedScores, weights };
    }
  }

  streams(): Stream[] {
    if (this.posSorted === null) throw new Error('TypeStore.streams before finalize');
    return [
      { scores: this.negSorted, positive: false, weights: null },
      { scores: this.posSorted.scores, positive: true, weights: this.posSorted.weights },
    ];
  }
}

function mergeSorted(a: Float32Array, b: Float32Array): Float32Array {
  if (a.length === 0) return b;
  if (b.length === 0) return a;
  const out = new Float32Array(a.length + b.length);
  let i = 0;
  let j = 0;
  let o = 0;
  while (i < a.length && j < b.length) out[o++] = a[i] <= b[j] ? a[i++] : b[j++];
  while (i < a.length) out[o++] = a[i++];
  while (j < b.length) out[o++] = b[j++];
  return out;
}

/**
 * Streaming pixel metrics for one category: `add` one (score map, mask) pair at a time, then `compute`.
 * Memory: 4 bytes per normal pixel (float32 score) and 8 bytes per defect pixel (score + region index), plus one
 * number per region and per image; maps and masks themselves are not kept. This is exact: every metric depends on
 * the scores only through their order, label and region, which is what is kept.
 */
export class PixelMetricsAccumulator {
  private readonly goodType: string;
  private readonly proLimit: number;
  private readonly iouSteps: number;
  private readonly iouCurvePoints: number;
  private readonly curvePoints: number;
  private readonly connectivity: 4 | 8;
  private readonly types = new Map<string, TypeStore>();
  private readonly regionSizes: number[] = [];
  private count = 0;

  constructor(opts: PixelMetricsOptions = {}) {
    this.goodType = opts.goodType ?? 'good';
    this.proLimit = opts.proFprLimit ?? DEFAULT_PRO_FPR_LIMIT;
    this.iouSteps = opts.iouSteps ?? DEFAULT_IOU_STEPS;
    this.iouCurvePoints = opts.iouCurvePoints ?? DEFAULT_IOU_CURVE_POINTS;
    this.curvePoints = opts.curvePoints ?? DEFAULT_CURVE_POINTS;
    this.connectivity = opts.connectivity ?? 8;
    if (!(this.proLimit > 0 && this.proLimit <= 1)) throw new Error(`proFprLimit must be in (0, 1]: ${this.proLimit}`);
    if (!(Number.isInteger(this.iouSteps) && this.iouSteps >= 1)) throw new Error(`iouSteps: ${this.iouSteps}`);
    if (!(Number.isInteger(this.iouCurvePoints) && this.iouCurvePoints >= 2)) {
      throw new Error(`iouCurvePoints: ${this.iouCurvePoints}`);
    }
  }

  /** Number of images added so far. */
  get imageCount(): number {
    return this.count;
  }

  /**
   * Add one test image. `scoreMap` (1 channel) and `gtMask` (1 channel, > 0 = defect; null = all normal) must have
   * the same size. `imageScore` defaults to the maximum of the map.
   */
  add(scoreMap: Image, gtMask: Image | null, defectType: string, imageScore?: number): ImageStats {
    const { height, width } = scoreMap;
    const n = height * width;
    if (scoreMap.channels !== 1 || scoreMap.data.length !== n) {
      throw new Error(`PixelMetricsAccumulator.add: score map must be 1 x H x W, got ${scoreMap.channels} channels`);
    }
    if (gtMask && (gtMask.channels !== 1 || gtMask.height !== height || gtMask.width !== width)) {
      throw new Error(
        `PixelMetricsAccumulator.add: mask ${gtMask.channels}x${gtMask.height}x${gtMask.width} ` +
          `does not match map 1x${height}x${width}`,
      );
    }
    const s = scoreMap.data;
    let max = -Infinity;
    let min = Infinity;
    for (let i = 0; i < n; i++) {
      const v = s[i];
      if (!Number.isFinite(v)) throw new Error(`PixelMetricsAccumulator.add: non-finite score ${v} at pixel ${i}`);
      if (v > max) max = v;
      if (v < min) min = v;
    }
    const comps = gtMask
      ? labelComponents(gtMask.data, height, width, this.connectivity)
      : { labels: null, sizes: [] as number[] };
    const nPos = comps.sizes.reduce((a, b) => a + b, 0);
    const neg = new Float32Array(n - nPos);
    const pos = new Float32Array(nPos);
    const reg = new Uint32Array(nPos);
    const regionBase = this.regionSizes.length;
    if (comps.labels) {
      let a = 0;
      let b = 0;
      for (let i = 0; i < n; i++) {
        const l = comps.labels[i];
        if (l === 0) neg[a++] = s[i];
        else {
          pos[b] = s[i];
          reg[b++] = regionBase + l - 1;
        }
      }
    } else {
      neg.set(s);
    }
    for (const size of comps.sizes) this.regionSizes.push(size);

    const store = this.store(defectType);
    store.negPending.push(neg);
    if (nPos > 0) {
      store.posChunks.push(pos);
      store.regionChunks.push(reg);
    }
    store.posSorted = null;
    store.regions += comps.sizes.length;
    if (min < store.min) store.min = min;
    if (max > store.max) store.max = max;
    const anomalous = nPos > 0;
    const score = imageScore ?? max;
    if (Number.isNaN(score)) throw new Error('PixelMetricsAccumulator.add: image score is NaN');
    store.imageScores.push(score);
    store.imageLabels.push(anomalous);
    store.pixelImages++;
    if (anomalous) store.pixelAnomalousImages++;

    let pixelAuroc = NaN;
    if (nPos > 0 && nPos < n) {
      pixelAuroc = sweepMetrics(
        [
          { scores: neg.slice().sort(), positive: false, weights: null },
          { scores: pos.slice().sort(), positive: true, weights: null },
        ],
        0,
        this.proLimit,
        0,
      ).auroc;
    }
    return {
      index: this.count++,
      defectType,
      anomalous,
      imageScore: score,
      maxScore: max,
      defectPixels: nPos,
      regions: comps.sizes.length,
      pixelAuroc,
      pixelLevel: true,
    };
  }

  /**
   * Add one test image that has an image-level label but no pixel ground truth (a defective image without a mask):
   * it counts in the image-level metrics only, its pixels in none. `imageScore` defaults to the map's maximum.
   */
  addImageOnly(scoreMap: Image, defectType: string, anomalous: boolean, imageScore?: number): ImageStats {
    if (scoreMap.channels !== 1) {
      throw new Error(`PixelMetricsAccumulator.addImageOnly: score map must be 1 x H x W, got ${scoreMap.channels}`);
    }
    let max = -Infinity;
    for (let i = 0; i < scoreMap.data.length; i++) {
      const v = scoreMap.data[i];
      if (!Number.isFinite(v)) {
        throw new Error(`PixelMetricsAccumulator.addImageOnly: non-finite score ${v} at pixel ${i}`);
      }
      if (v > max) max = v;
    }
    const score = imageScore ?? max;
    if (Number.isNaN(score)) throw new Error('PixelMetricsAccumulator.addImageOnly: image score is NaN');
    const store = this.store(defectType);
    store.imageScores.push(score);
    store.imageLabels.push(anomalous);
    return {
      index: this.count++,
      defectType,
      anomalous,
      imageScore: score,
      maxScore: max,
      defectPixels: 0,
      regions: 0,
      pixelAuroc: NaN,
      pixelLevel: false,
    };
  }

  private store(defectType: string): TypeStore {
    let store = this.types.get(defectType);
    if (!store) {
      store = new TypeStore();
      this.types.set(defectType, store);
    }
    return store;
  }

  /** All metrics, per defect type (type + good images) and overall. Can be called again after more `add`s. */
  compute(): CategoryMetrics {
    if (this.count === 0) throw new Error('PixelMetricsAccumulator.compute: no images added');
    for (const store of this.types.values()) store.finalize(this.regionSizes);
    const good = this.types.get(this.goodType);
    const perDefect: Record<string, GroupMetrics> = {};
    const imageCounts: Record<string, number> = {};
    const names = [...this.types.keys()].sort();
    for (const name of names) {
      const store = this.types.get(name) as TypeStore;
      imageCounts[name] = store.imageScores.length;
      if (name === this.goodType) continue;
      perDefect[name] = this.groupMetrics(good ? [good, store] : [store]);
    }
    return {
      overall: this.groupMetrics(names.map((n) => this.types.get(n) as TypeStore)),
      perDefect,
      goodType: this.goodType,
      imageCounts,
    };
  }

  private groupMetrics(stores: TypeStore[]): GroupMetrics {
    const streams = stores.flatMap((s) => s.streams());
    let P = 0;
    let N = 0;
    let regions = 0;
    let min = Infinity;
    let max = -Infinity;
    const imageScores: number[] = [];
    const imageLabels: boolean[] = [];
    let pixelImages = 0;
    let pixelAnomalousImages = 0;
    for (const s of stores) {
      pixelImages += s.pixelImages;
      pixelAnomalousImages += s.pixelAnomalousImages;
      P += s.posSorted ? s.posSorted.scores.length : 0;
      N += s.negSorted.length;
      regions += s.regions;
      min = Math.min(min, s.min);
      max = Math.max(max, s.max);
      imageScores.push(...s.imageScores);
      imageLabels.push(...s.imageLabels);
    }
    const sw = sweepMetrics(streams, regions, this.proLimit, this.curvePoints);

    // IoU search (paper): 10,000 steps over [min, max] (of the pixels with ground truth; none: no search).
    if (P + N === 0) {
      min = NaN;
      max = NaN;
    }
    const steps = this.iouSteps;
    const grid = new Float64Array(P + N === 0 ? 0 : steps + 1);
    for (let k = 0; k < grid.length; k++) grid[k] = min + (max - min) * (k / steps);
    const searched = countsAtOrAbove(streams, grid);
    const iou: IouResult = { iou: NaN, threshold: NaN, tp: NaN, fp: NaN, fn: NaN, min, max, steps };
    if (P > 0) {
      let best = -1;
      for (let k = 0; k <= steps; k++) {
        const tp = searched.tp[k];
        const fp = searched.fp[k];
        const v = tp / (fp + P);
        if (v > best) {
          best = v;
          Object.assign(iou, { iou: v, threshold: grid[k], tp, fp, fn: P - tp });
        }
      }
    }

    // IoU over threshold for plots (Fig. 6b): [0, 1] when the scores are in [0, 1].
    const lo = min >= 0 && max <= 1 ? 0 : min;
    const hi = min >= 0 && max <= 1 ? 1 : max;
    const m = this.iouCurvePoints - 1;
    const curveT: number[] = [];
    if (P + N > 0) for (let k = 0; k <= m; k++) curveT.push(lo + (hi - lo) * (k / m));
    const curveCounts = countsAtOrAbove(streams, curveT);
    const curveIou = curveT.map((_, k) => (P > 0 ? curveCounts.tp[k] / (curveCounts.fp[k] + P) : NaN));

    const imgRoc = rocCurve(imageScores, imageLabels);
    const img = sweepMetrics(labelledStreams(imageScores, imageLabels), 0, this.proLimit, 0);
    return {
      images: imageScores.length,
      anomalousImages: imageLabels.filter(Boolean).length,
      pixelImages,
      pixelAnomalousImages,
      pixels: P + N,
      defectPixels: P,
      regions,
      imageAuroc: img.auroc,
      imageAp: img.ap,
      imageF1: img.f1,
      pixelAuroc: sw.auroc,
      pixelAp: sw.ap,
      f1: sw.f1,
      iou,
      aupro: sw.aupro,
      proFprLimit: this.proLimit,
      curves: {
        roc: sw.roc,
        pro: sw.pro,
        iou: { threshold: curveT, iou: curveIou },
        imageRoc: { fpr: imgRoc.fpr, tpr: imgRoc.tpr },
      },
    };
  }
}
