/**
 * Self-contained HTML evaluation report: metrics table, inline SVG plots (pixel ROC, PRO up to the FPR limit,
 * IoU over threshold as in the paper's Fig. 6b, image ROC; pixel plots only when some image has a defect mask), the
 * image-level part (ground-truth counts, pass / reject counts at the image threshold, score histogram) and image | map | overlay | ground-truth strips embedded
 * as PNG data URIs, so the single file can be mailed or archived without assets.
 *
 * Cases shown: among defective images, the best and worst k by per-image pixel AUROC (the image's own defect pixels
 * against its own normal pixels; threshold-free, so it needs no category-wide threshold and can be ranked while
 * streaming), plus the k good images with the highest image score (worst false alarms) and the k defective images
 * with the lowest image score (likeliest misses; these may lack a mask). Only those maps are kept:
 * each list is a bounded heap of size k.
 *
 * `renderLineChart` is generic (numbers in, SVG text out) so training curves can reuse it.
 */
import type { TestItem } from '../data/dataset.js';
import type { EvaluationGroundTruth, EvaluationInput, ImageVerdicts } from './evaluate.js';
import { encodePng, loadImage, resizeImage } from '../image/io.js';
import type { Image } from '../image/types.js';
import { heatmap, hstack, maskOutline, overlay, toRgb } from '../image/visual.js';
import { writeFileAtomic } from '../util/atomic.js';
import type { CategoryMetrics, GroupMetrics, ImageStats } from './metrics.js';
import { formatFigure, metricsTable } from './metrics-table.js';

// ---------------------------------------------------------------------------------------------------------------
// SVG line chart
// ---------------------------------------------------------------------------------------------------------------

export interface LineSeries {
  name: string;
  x: ArrayLike<number>;
  y: ArrayLike<number>;
  /** CSS colour; defaults to a palette colour by index. */
  color?: string;
  dashed?: boolean;
}

export interface LineChartOptions {
  width?: number;
  height?: number;
  title?: string;
  xLabel?: string;
  yLabel?: string;
  /** Axis ranges; default: the data range (a flat range is widened by ±0.5). */
  xDomain?: [number, number];
  yDomain?: [number, number];
  /** Approximate number of ticks per axis (default 5). */
  ticks?: number;
  /** Show the legend (default: when there is more than one series). */
  legend?: boolean;
  /** Legend corner inside the plot area (default 'top-left'). */
  legendPosition?: 'top-left' | 'top-right' | 'bottom-left' | 'bottom-right';
  /** Draw the diagonal y = x (for ROC plots). */
  diagonal?: boolean;
}

const PALETTE = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f', '#17becf'];

export function escapeHtml(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

function fnv1a(text: string): string {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 0x01000193) >>> 0;
  return h.toString(16).padStart(8, '0');
}

/** "Nice" tick values (1, 2, 5 x 10^k steps) covering [lo, hi]. */
export function niceTicks(lo: number, hi: number, count = 5): number[] {
  if (!(Number.isFinite(lo) && Number.isFinite(hi)) || hi <= lo) return [lo];
  const raw = (hi - lo) / Math.max(1, count);
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) ?? 10 * mag;
  const ticks: number[] = [];
  for (let v = Math.ceil(lo / step - 1e-9) * step; v <= hi + step * 1e-9; v += step) {
    ticks.push(Math.abs(v) < step * 1e-9 ? 0 : Number(v.toPrecision(12)));
  }
  return ticks;
}

function tickLabel(v: number): string {
  if (v === 0) return '0';
  const a = Math.abs(v);
  if (a >= 1e5 || a < 1e-3) return v.toExponential(1);
  return String(Number(v.toPrecision(6)));
}

function dataRange(series: LineSeries[], key: 'x' | 'y'): [number, number] {
  let lo = Infinity;
  let hi = -Infinity;
  for (const s of series) {
    const a = s[key];
    for (let i = 0; i < a.length; i++) {
      const v = a[i];
      if (Number.isFinite(v) && Number.isFinite(key === 'x' ? s.y[i] : s.x[i])) {
        if (v < lo) lo = v;
        if (v > hi) hi = v;
      }
    }
  }
  if (lo === Infinity) return [0, 1];
  if (lo === hi) return [lo - 0.5, hi + 0.5];
  return [lo, hi];
}

/**
 * An SVG line chart (axes, ticks, grid, labels, legend) as text. Points with a non-finite x or y break the line.
 */
export function renderLineChart(series: LineSeries[], opts: LineChartOptions = {}): string {
  const W = opts.width ?? 480;
  const H = opts.height ?? 320;
  const m = { left: 58, right: 16, top: opts.title ? 30 : 12, bottom: opts.xLabel ? 46 : 30 };
  const pw = W - m.left - m.right;
  const ph = H - m.top - m.bottom;
  const [x0, x1] = opts.xDomain ?? dataRange(series, 'x');
  const [y0, y1] = opts.yDomain ?? dataRange(series, 'y');
  const sx = (v: number): number => m.left + ((v - x0) / (x1 - x0 || 1)) * pw;
  const sy = (v: number): number => m.top + ph - ((v - y0) / (y1 - y0 || 1)) * ph;
  const f = (v: number): string => v.toFixed(2);
  const parts: string[] = [];
  parts.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" ` +
      `font-family="sans-serif" font-size="11">`,
  );
  parts.push(`<rect x="0" y="0" width="${W}" height="${H}" fill="white"/>`);
  if (opts.title) {
    parts.push(
      `<text x="${f(W / 2)}" y="18" text-anchor="middle" font-size="13" font-weight="bold">` +
        `${escapeHtml(opts.title)}</text>`,
    );
  }
  const n = opts.ticks ?? 5;
  for (const t of niceTicks(x0, x1, n)) {
    const x = sx(t);
    parts.push(`<line x1="${f(x)}" y1="${m.top}" x2="${f(x)}" y2="${m.top + ph}" stroke="#e5e5e5"/>`);
    parts.push(`<line x1="${f(x)}" y1="${m.top + ph}" x2="${f(x)}" y2="${m.top + ph + 4}" stroke="#333"/>`);
    parts.push(`<text x="${f(x)}" y="${m.top + ph + 16}" text-anchor="middle">${tickLabel(t)}</text>`);
  }
  for (const t of niceTicks(y0, y1, n)) {
    const y = sy(t);
    parts.push(`<line x1="${m.left}" y1="${f(y)}" x2="${m.left + pw}" y2="${f(y)}" stroke="#e5e5e5"/>`);
    parts.push(`<line x1="${m.left - 4}" y1="${f(y)}" x2="${m.left}" y2="${f(y)}" stroke="#333"/>`);
    parts.push(`<text x="${m.left - 7}" y="${f(y + 4)}" text-anchor="end">${tickLabel(t)}</text>`);
  }
  parts.push(`<rect x="${m.left}" y="${m.top}" width="${pw}" height="${ph}" fill="none" stroke="#333"/>`);
  if (opts.xLabel) {
    parts.push(`<text x="${f(m.left + pw / 2)}" y="${H - 8}" text-anchor="middle">${escapeHtml(opts.xLabel)}</text>`);
  }
  if (opts.yLabel) {
    const cy = m.top + ph / 2;
    parts.push(
      `<text x="14" y="${f(cy)}" text-anchor="middle" transform="rotate(-90 14 ${f(cy)})">` +
        `${escapeHtml(opts.yLabel)}</text>`,
    );
  }
  // Several charts share one HTML page: the clip-path id is derived from the chart's content so it is unique
  // per distinct chart yet deterministic.
  const clipId = `clip-${fnv1a(JSON.stringify([opts, series.map((s) => [s.name, s.x.length, s.y.length])]))}`;
  parts.push(`<clipPath id="${clipId}"><rect x="${m.left}" y="${m.top}" width="${pw}" height="${ph}"/></clipPath>`);
  parts.push(`<g clip-path="url(#${clipId})">`);
  if (opts.diagonal) {
    const lo = Math.max(x0, y0);
    const hi = Math.min(x1, y1);
    if (hi > lo) {
      parts.push(
        `<line x1="${f(sx(lo))}" y1="${f(sy(lo))}" x2="${f(sx(hi))}" y2="${f(sy(hi))}" ` +
          `stroke="#999" stroke-dasharray="4 3"/>`,
      );
    }
  }
  series.forEach((s, i) => {
    const color = s.color ?? PALETTE[i % PALETTE.length];
    const segments: string[] = [];
    let current: string[] = [];
    const len = Math.min(s.x.length, s.y.length);
    for (let k = 0; k < len; k++) {
      const xv = s.x[k];
      const yv = s.y[k];
      if (Number.isFinite(xv) && Number.isFinite(yv)) current.push(`${f(sx(xv))},${f(sy(yv))}`);
      else if (current.length > 0) {
        segments.push(current.join(' '));
        current = [];
      }
    }
    if (current.length > 0) segments.push(current.join(' '));
    for (const pts of segments) {
      const dash = s.dashed ? ' stroke-dasharray="6 3"' : '';
      if (pts.includes(' ')) {
        parts.push(`<polyline points="${pts}" fill="none" stroke="${escapeHtml(color)}" stroke-width="1.6"${dash}/>`);
      } else {
        const [px, py] = pts.split(',');
        parts.push(`<circle cx="${px}" cy="${py}" r="2.5" fill="${escapeHtml(color)}"/>`);
      }
    }
  });
  parts.push('</g>');
  if (opts.legend ?? series.length > 1) {
    const boxW = Math.min(pw - 16, 12 + 7 * Math.max(...series.map((s) => s.name.length), 1) + 30);
    const boxH = series.length * 15 + 6;
    const pos = opts.legendPosition ?? 'top-left';
    const lx = pos.endsWith('left') ? m.left + 8 : m.left + pw - 4 - boxW;
    let ly = pos.startsWith('top') ? m.top + 8 : m.top + ph - 4 - boxH;
    parts.push(
      `<rect x="${lx - 4}" y="${ly - 4}" width="${boxW}" height="${boxH}" ` +
        `fill="white" fill-opacity="0.85" stroke="#ccc"/>`,
    );
    series.forEach((s, i) => {
      const color = s.color ?? PALETTE[i % PALETTE.length];
      const dash = s.dashed ? ' stroke-dasharray="6 3"' : '';
      parts.push(
        `<line x1="${lx}" y1="${ly + 6}" x2="${lx + 20}" y2="${ly + 6}" stroke="${escapeHtml(color)}" ` +
          `stroke-width="2"${dash}/>`,
      );
      parts.push(`<text x="${lx + 26}" y="${ly + 10}">${escapeHtml(s.name)}</text>`);
      ly += 15;
    });
  }
  parts.push('</svg>');
  return parts.join('\n');
}

export interface HistogramGroup {
  name: string;
  values: ArrayLike<number>;
  color?: string;
}

export interface HistogramOptions {
  width?: number;
  height?: number;
  title?: string;
  xLabel?: string;
  /** Number of equal-width bins over the range of all values (default 20). */
  bins?: number;
  /** A vertical dashed line, e.g. the decision threshold. */
  marker?: { value: number; label: string };
}

/**
 * Per-group bin counts over shared equal-width bins spanning [lo, hi], the range of all values and of `include`
 * (e.g. a threshold to be marked); a flat range is widened by ±0.5. Non-finite values are left out.
 */
export function histogramBins(
  groups: Array<ArrayLike<number>>,
  bins: number,
  include: number[] = [],
): { lo: number; hi: number; counts: number[][] } {
  if (!(Number.isInteger(bins) && bins >= 1))
    throw new Error(`histogram: bins must be a positive integer, got ${bins}`);
  let lo = Infinity;
  let hi = -Infinity;
  for (const g of [...groups, include]) {
    for (let i = 0; i < g.length; i++) {
      if (!Number.isFinite(g[i])) continue;
      lo = Math.min(lo, g[i]);
      hi = Math.max(hi, g[i]);
    }
  }
  if (lo === Infinity) [lo, hi] = [0, 1];
  else if (lo === hi) [lo, hi] = [lo - 0.5, hi + 0.5];
  const counts = groups.map((g) => {
    const c = new Array<number>(bins).fill(0);
    for (let i = 0; i < g.length; i++) {
      if (!Number.isFinite(g[i])) continue;
      c[Math.min(bins - 1, Math.floor(((g[i] - lo) / (hi - lo)) * bins))]++;
    }
    return c;
  });
  return { lo, hi, counts };
}

/** An SVG histogram of several groups on shared bins, bars side by side within each bin, as text. */
export function renderHistogram(groups: HistogramGroup[], opts: HistogramOptions = {}): string {
  const W = opts.width ?? 480;
  const H = opts.height ?? 320;
  const bins = opts.bins ?? 20;
  const marker = opts.marker && Number.isFinite(opts.marker.value) ? opts.marker : null;
  const {
    lo,
    hi,
    counts: useCounts,
  } = histogramBins(
    groups.map((g) => g.values),
    bins,
    marker ? [marker.value] : [],
  );
  const m = { left: 58, right: 16, top: opts.title ? 30 : 12, bottom: opts.xLabel ? 46 : 30 };
  const pw = W - m.left - m.right;
  const ph = H - m.top - m.bottom;
  const maxCount = Math.max(1, ...useCounts.flat());
  const sx = (v: number): number => m.left + ((v - lo) / (hi - lo)) * pw;
  const sy = (c: number): number => m.top + ph - (c / maxCount) * ph;
  const f = (v: number): string => v.toFixed(2);
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" ` +
      `font-family="sans-serif" font-size="11">`,
    `<rect x="0" y="0" width="${W}" height="${H}" fill="white"/>`,
  ];
  if (opts.title) {
    parts.push(
      `<text x="${f(W / 2)}" y="18" text-anchor="middle" font-size="13" font-weight="bold">${escapeHtml(opts.title)}</text>`,
    );
  }
  for (const t of niceTicks(lo, hi, 5)) {
    parts.push(`<line x1="${f(sx(t))}" y1="${m.top + ph}" x2="${f(sx(t))}" y2="${m.top + ph + 4}" stroke="#333"/>`);
    parts.push(`<text x="${f(sx(t))}" y="${m.top + ph + 16}" text-anchor="middle">${tickLabel(t)}</text>`);
  }
  for (const t of niceTicks(0, maxCount, Math.min(5, maxCount)).filter((t) => Number.isInteger(t))) {
    parts.push(`<line x1="${m.left}" y1="${f(sy(t))}" x2="${m.left + pw}" y2="${f(sy(t))}" stroke="#e5e5e5"/>`);
    parts.push(`<text x="${m.left - 7}" y="${f(sy(t) + 4)}" text-anchor="end">${t}</text>`);
  }
  const binW = pw / bins;
  const barW = (binW - 2) / Math.max(1, groups.length);
  groups.forEach((g, k) => {
    const color = escapeHtml(g.color ?? PALETTE[k % PALETTE.length]);
    useCounts[k].forEach((c, b) => {
      if (c === 0) return;
      const x = m.left + b * binW + 1 + k * barW;
      parts.push(
        `<rect class="bar" x="${f(x)}" y="${f(sy(c))}" width="${f(barW)}" height="${f(m.top + ph - sy(c))}" fill="${color}"><title>${escapeHtml(g.name)}: ${c}</title></rect>`,
      );
    });
  });
  parts.push(`<rect x="${m.left}" y="${m.top}" width="${pw}" height="${ph}" fill="none" stroke="#333"/>`);
  if (marker) {
    const x = sx(marker.value);
    parts.push(
      `<line x1="${f(x)}" y1="${m.top}" x2="${f(x)}" y2="${m.top + ph}" stroke="#000" stroke-dasharray="5 3"/>`,
    );
    parts.push(`<text x="${f(x + 4)}" y="${m.top + ph - 6}">${escapeHtml(marker.label)}</text>`);
  }
  if (opts.xLabel) {
    parts.push(`<text x="${f(m.left + pw / 2)}" y="${H - 8}" text-anchor="middle">${escapeHtml(opts.xLabel)}</text>`);
  }
  parts.push(
    `<text x="14" y="${f(m.top + ph / 2)}" text-anchor="middle" transform="rotate(-90 14 ${f(m.top + ph / 2)})">images</text>`,
  );
  let ly = m.top + 8;
  groups.forEach((g, k) => {
    const color = escapeHtml(g.color ?? PALETTE[k % PALETTE.length]);
    parts.push(`<rect x="${m.left + pw - 120}" y="${ly}" width="10" height="10" fill="${color}"/>`);
    parts.push(`<text x="${m.left + pw - 105}" y="${ly + 9}">${escapeHtml(g.name)} (${g.values.length})</text>`);
    ly += 15;
  });
  parts.push('</svg>');
  return parts.join('\n');
}

// ---------------------------------------------------------------------------------------------------------------
// Bounded top-k selection while streaming
// ---------------------------------------------------------------------------------------------------------------

/**
 * Keeps the k entries with the largest keys (ties: the earlier offered entry wins) in a binary min-heap,
 * so memory stays O(k) however many entries are offered.
 */
export class TopK<T> {
  private readonly heap: Array<{ key: number; seq: number; value: T }> = [];
  private seq = 0;

  constructor(readonly k: number) {
    if (!(Number.isInteger(k) && k >= 0)) throw new Error(`TopK: k must be a non-negative integer, got ${k}`);
  }

  get size(): number {
    return this.heap.length;
  }

  /** Would an entry with this key be kept? (Lets callers avoid copying data that would be dropped.) */
  accepts(key: number): boolean {
    if (this.k === 0 || Number.isNaN(key)) return false;
    return this.heap.length < this.k || key > this.heap[0].key;
  }

  /** Offer an entry; `make` builds the value only when it is kept. Returns whether it was kept. */
  offer(key: number, make: () => T): boolean {
    if (!this.accepts(key)) {
      this.seq++;
      return false;
    }
    const node = { key, seq: this.seq++, value: make() };
    if (this.heap.length < this.k) {
      this.heap.push(node);
      this.up(this.heap.length - 1);
    } else {
      this.heap[0] = node;
      this.down(0);
    }
    return true;
  }

  /** Kept entries, largest key first (ties: earliest first). */
  sorted(): Array<{ key: number; value: T }> {
    return [...this.heap].sort((a, b) => b.key - a.key || a.seq - b.seq).map(({ key, value }) => ({ key, value }));
  }

  /** Heap order: smaller key first; among equal keys the later entry is "smaller" (evicted first). */
  private less(i: number, j: number): boolean {
    const a = this.heap[i];
    const b = this.heap[j];
    return a.key < b.key || (a.key === b.key && a.seq > b.seq);
  }

  private swap(i: number, j: number): void {
    const t = this.heap[i];
    this.heap[i] = this.heap[j];
    this.heap[j] = t;
  }

  private up(i: number): void {
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!this.less(i, p)) return;
      this.swap(i, p);
      i = p;
    }
  }

  private down(i: number): void {
    const n = this.heap.length;
    for (;;) {
      const l = 2 * i + 1;
      const r = l + 1;
      let s = i;
      if (l < n && this.less(l, s)) s = l;
      if (r < n && this.less(r, s)) s = r;
      if (s === i) return;
      this.swap(i, s);
      i = s;
    }
  }
}

export interface ReportCase {
  path: string;
  defect: string;
  stats: ImageStats;
  /** The evaluated map and mask (copies). */
  map: Image;
  mask: Image | null;
}

function copyImage(img: Image): Image {
  return { channels: img.channels, height: img.height, width: img.width, data: img.data.slice() };
}

/**
 * Best / worst defective images by per-image pixel AUROC (images with masks), worst good images by image score, and
 * the defective images with the lowest image score (the likeliest misses, with or without masks), k of each.
 */
export class ReportCases {
  readonly best: TopK<ReportCase>;
  readonly worst: TopK<ReportCase>;
  readonly falseAlarms: TopK<ReportCase>;
  readonly missed: TopK<ReportCase>;

  constructor(readonly k = 3) {
    this.best = new TopK(k);
    this.worst = new TopK(k);
    this.falseAlarms = new TopK(k);
    this.missed = new TopK(k);
  }

  offer(item: Pick<TestItem, 'path' | 'defect'>, stats: ImageStats, map: Image, mask: Image | null): void {
    const make = (): ReportCase => ({
      path: item.path,
      defect: item.defect,
      stats,
      map: copyImage(map),
      mask: mask && copyImage(mask),
    });
    if (stats.anomalous) {
      this.missed.offer(-stats.imageScore, make);
      if (Number.isNaN(stats.pixelAuroc)) return;
      this.best.offer(stats.pixelAuroc, make);
      this.worst.offer(-stats.pixelAuroc, make);
    } else {
      this.falseAlarms.offer(stats.imageScore, make);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// HTML report
// ---------------------------------------------------------------------------------------------------------------

export interface HtmlReportInput {
  title: string;
  metrics: CategoryMetrics;
  cases?: ReportCases;
  /** Model input and evaluation size (evaluateMaps gives it). */
  input?: EvaluationInput & { evalSize: number | null };
  /** Image-level part (evaluateMaps gives it): ground-truth counts, pass / reject counts, score histogram. */
  imageLevel?: {
    groundTruth: EvaluationGroundTruth;
    verdicts: ImageVerdicts | null;
    images: ReadonlyArray<{ imageScore: number; anomalous: boolean }>;
  };
}

function groups(metrics: CategoryMetrics): Array<[string, GroupMetrics]> {
  return [['overall', metrics.overall], ...Object.entries(metrics.perDefect)];
}

function metricsTableHtml(metrics: CategoryMetrics): string {
  const { header, rows } = metricsTable(metrics);
  const body = rows.map(
    (r) =>
      `<tr${r.overall ? ' class="overall"' : ''}>${[escapeHtml(r.label), ...r.cells].map((c) => `<td>${c}</td>`).join('')}</tr>`,
  );
  return `<table><thead><tr>${header.long.map((h) => `<th>${escapeHtml(h)}</th>`).join('')}</tr></thead>\n<tbody>${body.join('\n')}</tbody></table>`;
}

function plots(metrics: CategoryMetrics): string {
  const gs = groups(metrics);
  const style = (i: number): Pick<LineSeries, 'color' | 'dashed'> =>
    i === 0 ? { color: '#000', dashed: false } : { color: PALETTE[(i - 1) % PALETTE.length], dashed: true };
  const limit = metrics.overall.proFprLimit;
  const roc = renderLineChart(
    gs.map(([name, g], i) => ({ name, x: g.curves.roc.fpr, y: g.curves.roc.tpr, ...style(i) })),
    {
      title: 'Pixel ROC',
      xLabel: 'false positive rate',
      yLabel: 'true positive rate',
      xDomain: [0, 1],
      yDomain: [0, 1],
      diagonal: true,
      legendPosition: 'bottom-right',
    },
  );
  const pro = renderLineChart(
    gs.map(([name, g], i) => ({ name, x: g.curves.pro.fpr, y: g.curves.pro.pro, ...style(i) })),
    {
      title: `PRO curve (FPR ≤ ${limit})`,
      xLabel: 'false positive rate',
      yLabel: 'per-region overlap',
      xDomain: [0, limit],
      yDomain: [0, 1],
      legendPosition: 'bottom-right',
    },
  );
  const iou = renderLineChart(
    gs.map(([name, g], i) => ({ name, x: g.curves.iou.threshold, y: g.curves.iou.iou, ...style(i) })),
    {
      title: 'IoU over threshold',
      xLabel: 'threshold (score ≥ t is defective)',
      yLabel: 'IoU',
      yDomain: [0, 1],
      legendPosition: 'top-right',
    },
  );
  const img = renderLineChart(
    gs.map(([name, g], i) => ({ name, x: g.curves.imageRoc.fpr, y: g.curves.imageRoc.tpr, ...style(i) })),
    {
      title: 'Image ROC',
      xLabel: 'false positive rate',
      yLabel: 'true positive rate',
      xDomain: [0, 1],
      yDomain: [0, 1],
      diagonal: true,
      legendPosition: 'bottom-right',
    },
  );
  // Without a single defect pixel (no defective image has a mask) the pixel curves are undefined: image ROC only.
  const shown = metrics.overall.defectPixels > 0 ? [roc, pro, iou, img] : [img];
  return `<div class="plots">${shown.map((s) => `<div>${s}</div>`).join('\n')}</div>`;
}

/**
 * "Model padim: 128 x 128 px input, 3 channel(s), other aspect ratios fitted by stretch; images decoded at ...; its
 * maps are resized bilinearly to each mask's own size, capped at 1024 px on the longer side: ... px for evaluation."
 */
export function inputLine(input: EvaluationInput & { evalSize: number | null }): string {
  const m = input.model;
  const s = input.evaluatedSize;
  const src = input.sourceSize;
  const range = (lo: number, hi: number): string => (lo === hi ? `${lo}` : `${lo}-${hi}`);
  const d = input.decode;
  const decode =
    d === null
      ? ''
      : d.maxSide === null
        ? '; images decoded at their stored size'
        : `; images larger than ${d.maxSide} px on the longer side decoded straight to that size ` +
          `(${d.downscaledImages} image(s)` +
          (d.downscaledImages > 0 ? `, largest decoded ${d.maxWidth} x ${d.maxHeight} px` : '') +
          ')';
  const model = m
    ? `Model ${m.method}: ${m.resolution} x ${m.resolution} px input, ${m.channels} channel(s)` +
      (m.aspect ? `, other aspect ratios fitted by ${m.aspect}` : '') +
      decode +
      '; its maps are'
    : 'Maps';
  const own = "each mask's own size (the image's for images without a mask)";
  const where =
    input.evalSize !== null
      ? `${input.evalSize} x ${input.evalSize} px (evalSize)`
      : (input.evalMaxSide !== null
          ? `${own}, capped at ${input.evalMaxSide} px on the longer side (aspect kept)`
          : own) + `: ${range(s.minWidth, s.maxWidth)} x ${range(s.minHeight, s.maxHeight)} px`;
  const shrunk =
    input.downscaledImages > 0
      ? ` ${input.downscaledImages} image(s) evaluated below their stored size ` +
        `(stored ${range(src.minWidth, src.maxWidth)} x ${range(src.minHeight, src.maxHeight)} px).`
      : '';
  return `${model} resized bilinearly to ${where} for evaluation.${shrunk}`;
}

const THRESHOLD_SOURCE: Record<ImageVerdicts['source'], string> = {
  model: "the model's image threshold (chosen at training time, without test data)",
  given: 'the given image threshold',
  'best-f1': 'the best-F1 image threshold on this test set (chosen on the test data itself, so optimistic)',
};

/** What the summary and the report say of the defective images whose mask is empty (`count` of them). */
export function emptyMaskNote(count: number): string {
  return `${count} image(s) of a defect type have an empty mask and count as good (labels from the masks, as MVTec AD's evaluation does)`;
}

/** Ground-truth counts, pass / reject table at the image threshold, score histogram of good vs defective. */
function imageLevelHtml(level: NonNullable<HtmlReportInput['imageLevel']>): string {
  const g = level.groundTruth;
  const pixelNote =
    g.defectiveWithMask === 0
      ? 'No defective test image has a mask: the pixel figures are not computed (shown as -); the image-level ' +
        'figures use every test image.'
      : `Pixel figures are computed over the ${g.good + g.defectiveWithMask} images with pixel ground truth ` +
        `(${g.good} good, ${g.defectiveWithMask} defective with masks)` +
        (g.defectiveWithoutMask > 0
          ? `; the ${g.defectiveWithoutMask} defective images without masks count in the image-level figures only.`
          : '.');
  const emptyNote = g.defectiveWithEmptyMask > 0 ? ` ${emptyMaskNote(g.defectiveWithEmptyMask)}.` : '';
  const parts = [
    `<h2>Image level</h2>`,
    `<p>${g.images} test images: ${g.good} good, ${g.defective} defective (${g.defectiveWithMask} with masks, ` +
      `${g.defectiveWithoutMask} without). ${escapeHtml(pixelNote + emptyNote)}</p>`,
  ];
  const v = level.verdicts;
  if (v) {
    const c = v.overall;
    const perDefect = Object.entries(v.perDefect)
      .map(
        ([name, d]) =>
          `<tr><td>${escapeHtml(name)}</td><td>-</td><td>-</td><td>${d.rejected}</td><td>${d.passed}</td></tr>`,
      )
      .join('\n');
    parts.push(
      `<p>Verdicts at ${escapeHtml(THRESHOLD_SOURCE[v.source])}: score ≥ ${formatFigure(c.threshold)} is rejected as defective.</p>`,
      `<table class="verdicts"><thead><tr><th>parts</th><th>good passed</th><th>good rejected (false alarms)</th>` +
        `<th>defective rejected</th><th>defective passed (missed)</th></tr></thead><tbody>` +
        `<tr class="overall"><td>all</td><td>${c.goodPassed}</td><td>${c.goodRejected}</td>` +
        `<td>${c.defectiveRejected}</td><td>${c.defectivePassed}</td></tr>\n${perDefect}</tbody></table>`,
    );
  }
  const good = level.images.filter((r) => !r.anomalous).map((r) => r.imageScore);
  const bad = level.images.filter((r) => r.anomalous).map((r) => r.imageScore);
  parts.push(
    `<div class="plots"><div>${renderHistogram(
      [
        { name: 'good', values: good, color: '#1f77b4' },
        { name: 'defective', values: bad, color: '#d62728' },
      ],
      {
        title: 'Image scores: good vs defective',
        xLabel: 'image score (higher = more anomalous)',
        marker: v ? { value: v.overall.threshold, label: 'threshold' } : undefined,
      },
    )}</div></div>`,
  );
  return parts.join('\n');
}

/**
 * Score range used to colour maps, so every strip uses the same scale: [0, 1] if the scores fit, else [min, max] of
 * the pixels with ground truth or, without any (no masks), of the maps shown.
 */
export function colourScale(metrics: CategoryMetrics, cases?: ReportCases): [number, number] {
  let { min, max } = metrics.overall.iou;
  if (!(Number.isFinite(min) && Number.isFinite(max)) && cases) {
    min = Infinity;
    max = -Infinity;
    for (const list of [cases.best, cases.worst, cases.falseAlarms, cases.missed]) {
      for (const { value } of list.sorted()) {
        for (const v of value.map.data) {
          if (v < min) min = v;
          if (v > max) max = v;
        }
      }
    }
  }
  if (!(Number.isFinite(min) && Number.isFinite(max))) return [0, 1];
  if (min >= 0 && max <= 1) return [0, 1];
  return Number.isFinite(min) && Number.isFinite(max) && max > min ? [min, max] : [min, min + 1];
}

/** image | map | overlay with the ground-truth outline | ground truth, as one RGB image. */
export async function caseStrip(c: ReportCase, scale: [number, number]): Promise<Image> {
  const { height, width } = c.map;
  let image: Image;
  try {
    // Decoded straight to the map's size when stored larger (a large image is never held at full size).
    const loaded = await loadImage(c.path, { shrink: { kernel: 'area', size: () => ({ height, width }) } });
    image = toRgb(loaded.height === height && loaded.width === width ? loaded : resizeImage(loaded, height, width));
  } catch {
    image = { channels: 3, height, width, data: new Float32Array(3 * height * width).fill(0.5) };
  }
  const [lo, hi] = scale;
  const norm: Image = { channels: 1, height, width, data: c.map.data.map((v) => (v - lo) / (hi - lo)) };
  const mask = c.mask ?? { channels: 1, height, width, data: new Float32Array(height * width) };
  const over = maskOutline(overlay(image, norm, 0.5), mask, [1, 1, 1], 1);
  return hstack([image, heatmap(norm), over, mask], 4);
}

async function casesHtml(cases: ReportCases, scale: [number, number]): Promise<string> {
  const section = async (title: string, list: Array<{ value: ReportCase }>, what: string): Promise<string> => {
    if (list.length === 0) return '';
    const items: string[] = [];
    for (const { value: c } of list) {
      const png = await encodePng(await caseStrip(c, scale));
      const s = c.stats;
      const caption =
        `${escapeHtml(c.defect)} / ${escapeHtml(c.path.split(/[\\/]/).pop() ?? c.path)} — ` +
        (what === 'auroc' ? `pixel AUROC ${formatFigure(s.pixelAuroc)}, ` : '') +
        `image score ${formatFigure(s.imageScore)}, max ${formatFigure(s.maxScore)}, ` +
        (s.pixelLevel ? `defect px ${s.defectPixels}` : 'no mask');
      items.push(
        `<figure><img alt="${escapeHtml(c.path)}" src="data:image/png;base64,${png.toString('base64')}"/>` +
          `<figcaption>${caption}</figcaption></figure>`,
      );
    }
    return `<h3>${escapeHtml(title)}</h3>\n${items.join('\n')}`;
  };
  const parts = [
    await section('Best defective images (highest per-image pixel AUROC)', cases.best.sorted(), 'auroc'),
    await section('Worst defective images (lowest per-image pixel AUROC)', cases.worst.sorted(), 'auroc'),
    await section('Good images with the highest image score (false alarms)', cases.falseAlarms.sorted(), 'score'),
    await section('Defective images with the lowest image score (likeliest misses)', cases.missed.sorted(), 'score'),
  ].filter((s) => s !== '');
  if (parts.length === 0) return '';
  return (
    `<h2>Cases</h2><p>Each strip: image | anomaly map (colour scale ${formatFigure(scale[0], 3)}–${formatFigure(scale[1], 3)}) | ` +
    `overlay with ground-truth outline | ground truth.</p>\n${parts.join('\n')}`
  );
}

/** The report as one HTML string (no external assets). */
export async function renderHtmlReport(input: HtmlReportInput): Promise<string> {
  const { metrics } = input;
  const casesPart = input.cases ? await casesHtml(input.cases, colourScale(metrics, input.cases)) : '';
  const o = metrics.overall;
  return `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>${escapeHtml(input.title)}</title>
<style>
body{font-family:sans-serif;margin:24px;color:#222}
table{border-collapse:collapse;font-size:13px}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}
tr.overall td{font-weight:bold;background:#f3f3f3}
.plots{display:flex;flex-wrap:wrap;gap:12px}
figure{margin:8px 0}
figure img{max-width:100%;image-rendering:pixelated}
figcaption{font-size:12px;color:#555}
.note{font-size:12px;color:#555;max-width:900px}
</style></head><body>
<h1>${escapeHtml(input.title)}</h1>
<p>${o.images} test images (${o.anomalousImages} anomalous); pixel figures over ${o.pixelImages} images with pixel ground truth: ${o.pixels} pixels, ${o.defectPixels} defect pixels in ${o.regions} regions.</p>
${input.input ? `<p>${escapeHtml(inputLine(input.input))}</p>` : ''}
${metricsTableHtml(metrics)}
<p class="note">Scores: higher = more anomalous; a pixel is predicted defective when its score ≥ threshold.
Per-type rows use that type's images plus all ${escapeHtml(metrics.goodType)} images. IoU: best of ${o.iou.steps} steps
over the score range [${formatFigure(o.iou.min)}, ${formatFigure(o.iou.max)}], TP/(TP+FP+FN) over all pixels. AUPRO: exact PRO curve
(8-connected ground-truth regions), integrated to FPR ${o.proFprLimit} and divided by ${o.proFprLimit}.</p>
${plots(metrics)}
${input.imageLevel ? imageLevelHtml(input.imageLevel) : ''}
${casesPart}
</body></html>
`;
}

/** Write the report atomically. */
export async function writeHtmlReport(file: string, input: HtmlReportInput): Promise<void> {
  await writeFileAtomic(file, await renderHtmlReport(input));
}
