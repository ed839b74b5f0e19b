/**
 * The metrics table, defined once: its columns, labels and number format. evaluate.ts prints it as text and
 * report.ts renders it as HTML.
 */
import type { CategoryMetrics, GroupMetrics } from './metrics.js';

/** Four decimals; '-' for undefined figures (e.g. AUROC of a group without anomalous images). */
export function formatFigure(v: number, digits = 4): string {
  return Number.isFinite(v) ? v.toFixed(digits) : '-';
}

interface Column {
  /** Short header for the text table. */
  short: string;
  /** Header for the HTML report. */
  long: string;
  cell: (g: GroupMetrics) => string;
}

function columns(proFprLimit: number): Column[] {
  // Image-level figures use every test image; pixel figures only those with pixel ground truth ('px imgs').
  return [
    { short: 'images', long: 'images', cell: (g) => String(g.images) },
    { short: 'img AUROC', long: 'image AUROC', cell: (g) => formatFigure(g.imageAuroc) },
    { short: 'img AP', long: 'image AP', cell: (g) => formatFigure(g.imageAp) },
    { short: 'img F1', long: 'image F1 max', cell: (g) => formatFigure(g.imageF1.f1) },
    // The pixel figures below are computed over these images only (good + defective with a mask).
    { short: 'px imgs', long: 'images with masks (pixel figures)', cell: (g) => String(g.pixelImages) },
    { short: 'px AUROC', long: 'pixel AUROC', cell: (g) => formatFigure(g.pixelAuroc) },
    { short: `AUPRO@${proFprLimit}`, long: `AUPRO (FPR ≤ ${proFprLimit})`, cell: (g) => formatFigure(g.aupro) },
    { short: 'px AP', long: 'pixel AP', cell: (g) => formatFigure(g.pixelAp) },
    { short: 'F1 max', long: 'pixel F1 max', cell: (g) => formatFigure(g.f1.f1) },
    { short: 'F1 thr', long: 'pixel F1 threshold', cell: (g) => formatFigure(g.f1.threshold) },
    { short: 'IoU', long: 'IoU (best)', cell: (g) => formatFigure(g.iou.iou) },
    { short: 'IoU thr', long: 'IoU threshold', cell: (g) => formatFigure(g.iou.threshold) },
    { short: 'defect px', long: 'defect px', cell: (g) => String(g.defectPixels) },
    { short: 'regions', long: 'regions', cell: (g) => String(g.regions) },
  ];
}

export interface MetricsTable {
  /** Headers, first the group column. */
  header: { short: string[]; long: string[] };
  /** One row per defect type (its images + all good ones), then the overall row. */
  rows: { label: string; overall: boolean; cells: string[] }[];
}

export function metricsTable(metrics: CategoryMetrics): MetricsTable {
  const cols = columns(metrics.overall.proFprLimit);
  const row = (label: string, g: GroupMetrics, overall: boolean): MetricsTable['rows'][number] => ({
    label,
    overall,
    cells: cols.map((c) => c.cell(g)),
  });
  return {
    header: { short: ['group', ...cols.map((c) => c.short)], long: ['group', ...cols.map((c) => c.long)] },
    rows: [
      ...Object.entries(metrics.perDefect).map(([name, g]) => row(`${name} (+${metrics.goodType})`, g, false)),
      row('overall', metrics.overall, true),
    ],
  };
}
