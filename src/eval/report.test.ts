import { describe, expect, it } from 'vitest';
import type { Image } from '../image/types.js';
import { Rng } from '../util/rng.js';
import { PixelMetricsAccumulator, type ImageStats } from './metrics.js';
import {
  ReportCases,
  TopK,
  caseStrip,
  colourScale,
  histogramBins,
  inputLine,
  niceTicks,
  renderHistogram,
  renderHtmlReport,
  renderLineChart,
} from './report.js';

describe('niceTicks', () => {
  it('uses 1-2-5 steps covering the range', () => {
    expect(niceTicks(0, 1, 5)).toEqual([0, 0.2, 0.4, 0.6, 0.8, 1]);
    expect(niceTicks(0, 0.3, 5)).toEqual([0, 0.1, 0.2, 0.3]);
    expect(niceTicks(0, 0.3, 8)).toEqual([0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3]);
    expect(niceTicks(-3, 17, 4)).toEqual([0, 5, 10, 15]);
    expect(niceTicks(2, 2)).toEqual([2]);
  });
});

describe('renderLineChart', () => {
  it('draws one polyline per finite run, with axes, labels and an escaped legend', () => {
    const svg = renderLineChart(
      [
        { name: 'loss <train>', x: [0, 1, 2, 3, 4], y: [1, 0.5, NaN, 0.3, 0.2] },
        { name: 'val AUROC', x: [0, 2, 4], y: [0.5, 0.7, 0.9], dashed: true },
      ],
      { title: 'Training & validation', xLabel: 'epoch', yLabel: 'value', xDomain: [0, 4], yDomain: [0, 1] },
    );
    expect(svg.startsWith('<svg xmlns="http://www.w3.org/2000/svg"')).toBe(true);
    expect(svg.trim().endsWith('</svg>')).toBe(true);
    // Series 1 is broken by the NaN into two runs; series 2 is one run.
    const lines = [...svg.matchAll(/<polyline points="([^"]+)"/g)].map((m) => m[1].split(' ').length);
    expect(lines).toEqual([2, 2, 3]);
    expect(svg).toContain('loss &lt;train&gt;');
    expect(svg).toContain('Training &amp; validation');
    expect(svg).toContain('>epoch</text>');
    expect(svg).toContain('stroke-dasharray="6 3"');
    // Point (0, 1) sits at the top-left corner of the plot area; (4, 0.2) at 80 % of the height from the top.
    const first = [...svg.matchAll(/<polyline points="([^"]+)"/g)][0][1].split(' ')[0].split(',').map(Number);
    const rect = svg.match(/<rect x="(\d+)" y="(\d+)" width="(\d+)" height="(\d+)" fill="none"/);
    expect(rect).not.toBeNull();
    const [left, top] = [Number(rect?.[1]), Number(rect?.[2])];
    expect(first).toEqual([left, top]);
    for (const t of ['0', '0.2', '0.4', '0.6', '0.8', '1']) expect(svg).toContain(`>${t}</text>`);
  });

  it('places the legend in the requested corner', () => {
    const two = [
      { name: 'a', x: [0, 1], y: [0, 1] },
      { name: 'b', x: [0, 1], y: [1, 0] },
    ];
    const legendBox = (svg: string): number[] =>
      (svg.match(/<rect x="([\d.-]+)" y="([\d.-]+)" width="[\d.]+" height="[\d.]+" fill="white" fill-opacity/) ?? [])
        .slice(1)
        .map(Number);
    const [tlx, tly] = legendBox(renderLineChart(two, { width: 400, height: 300 }));
    const [brx, bry] = legendBox(renderLineChart(two, { width: 400, height: 300, legendPosition: 'bottom-right' }));
    expect(tlx).toBeLessThan(100);
    expect(tly).toBeLessThan(50);
    expect(brx).toBeGreaterThan(250);
    expect(bry).toBeGreaterThan(200);
    expect(renderLineChart(two, { legend: false })).not.toContain('fill-opacity');
  });

  it('handles empty and single-point series and a flat range', () => {
    const svg = renderLineChart([{ name: 'one', x: [3], y: [7] }]);
    expect(svg).toContain('<circle');
    expect(svg).not.toContain('<polyline');
    expect(svg).not.toContain('NaN');
    expect(renderLineChart([])).toContain('</svg>');
  });
});

describe('TopK', () => {
  it('keeps the k largest keys while streaming, ties going to the earlier entry', () => {
    const rng = new Rng(5);
    const keys = Array.from({ length: 200 }, () => rng.int(0, 40));
    const top = new TopK<number>(7);
    let built = 0;
    keys.forEach((k, i) =>
      top.offer(k, () => {
        built++;
        return i;
      }),
    );
    const expected = keys
      .map((k, i) => ({ key: k, value: i }))
      .sort((a, b) => b.key - a.key || a.value - b.value)
      .slice(0, 7);
    expect(top.sorted()).toEqual(expected);
    expect(top.size).toBe(7);
    // Values are built only for entries that get in (far fewer than offered).
    expect(built).toBeLessThan(60);
    expect(new TopK<number>(0).offer(1, () => 1)).toBe(false);
    expect(new TopK<number>(2).accepts(NaN)).toBe(false);
  });
});

function img(h: number, w: number, values: number[]): Image {
  return { channels: 1, height: h, width: w, data: Float32Array.from(values) };
}

describe('ReportCases and the HTML report', () => {
  const acc = new PixelMetricsAccumulator({ curvePoints: 50 });
  const cases = new ReportCases(1);
  const add = (name: string, defect: string, map: Image, mask: Image | null): ImageStats => {
    const stats = acc.add(map, mask, defect);
    cases.offer({ path: `/nonexistent/${defect}/${name}.png`, defect }, stats, map, mask);
    return stats;
  };
  const mask = img(2, 2, [1, 0, 0, 0]);
  add('perfect', 'a', img(2, 2, [0.9, 0.1, 0.2, 0.3]), mask);
  add('inverted', 'a', img(2, 2, [0.1, 0.9, 0.8, 0.7]), mask);
  add('half', 'b', img(2, 2, [0.5, 0.5, 0.2, 0.6]), mask);
  add('quiet', 'good', img(2, 2, [0.1, 0.1, 0.1, 0.2]), null);
  add('loud', 'good', img(2, 2, [0.1, 0.95, 0.1, 0.2]), null);

  it('picks the best / worst defective images by per-image AUROC and the loudest good image', () => {
    expect(cases.best.sorted().map((c) => c.value.path)).toEqual(['/nonexistent/a/perfect.png']);
    expect(cases.worst.sorted().map((c) => c.value.path)).toEqual(['/nonexistent/a/inverted.png']);
    expect(cases.falseAlarms.sorted().map((c) => c.value.path)).toEqual(['/nonexistent/good/loud.png']);
    expect(cases.missed.sorted().map((c) => c.value.path)).toEqual(['/nonexistent/b/half.png']);
  });

  it('builds image | map | overlay | ground-truth strips (grey placeholder when the image is unreadable)', async () => {
    const c = cases.best.sorted()[0].value;
    const strip = await caseStrip(c, [0, 1]);
    expect(strip.channels).toBe(3);
    expect(strip.height).toBe(2);
    expect(strip.width).toBe(4 * 2 + 3 * 4);
    // Last panel: the ground truth (white defect pixel at top-left).
    const n = strip.height * strip.width;
    const x = strip.width - 2;
    for (let ch = 0; ch < 3; ch++) expect(strip.data[ch * n + x]).toBe(1);
    expect(strip.data[x + 1]).toBe(0);
    // First panel: grey placeholder.
    expect(strip.data[0]).toBe(0.5);
  });

  it('renders a self-contained page with the table, four plots and the strips', async () => {
    const html = await renderHtmlReport({ title: 'Test <report>', metrics: acc.compute(), cases });
    expect(html).toContain('<title>Test &lt;report&gt;</title>');
    expect(html.match(/<svg /g)).toHaveLength(4);
    expect(html.match(/<tr/g)).toHaveLength(4); // header + overall + a + b
    expect(html).toContain('a (+good)');
    // best, worst, false alarm, likeliest miss (here 'half', the defective image with the lowest score).
    expect(html.match(/src="data:image\/png;base64,/g)).toHaveLength(4);
    expect(html).not.toMatch(/(src|href)="(?!data:)/);
    const ids = [...html.matchAll(/clipPath id="([^"]+)"/g)].map((m) => m[1]);
    expect(new Set(ids).size).toBe(4);
  });
});

describe('score histogram', () => {
  it('bins every group on shared bins spanning the values and the marker', () => {
    const { lo, hi, counts } = histogramBins(
      [
        [0, 0.1, 0.9],
        [1, 0.55],
      ],
      4,
    );
    expect([lo, hi]).toEqual([0, 1]);
    expect(counts).toEqual([
      [2, 0, 0, 1],
      [0, 0, 1, 1],
    ]);
    // A marker outside the data widens the range; a flat range is widened by ±0.5; non-finite values are left out.
    expect(histogramBins([[1, 2]], 2, [3])).toEqual({ lo: 1, hi: 3, counts: [[1, 1]] });
    expect(histogramBins([[2, 2, NaN]], 2)).toEqual({ lo: 1.5, hi: 2.5, counts: [[0, 2]] });
    expect(() => histogramBins([[1]], 0)).toThrow(/bins/);
  });

  it('renders bars per group, the legend with counts and the threshold marker', () => {
    const svg = renderHistogram(
      [
        { name: 'good', values: [0, 0.1, 0.9] },
        { name: 'defective', values: [1, 0.55] },
      ],
      { bins: 4, title: 'scores', marker: { value: 0.5, label: 'threshold' } },
    );
    expect(svg.startsWith('<svg ')).toBe(true);
    expect([...svg.matchAll(/<title>good: (\d+)<\/title>/g)].map((m) => Number(m[1]))).toEqual([2, 1]);
    expect([...svg.matchAll(/<title>defective: (\d+)<\/title>/g)].map((m) => Number(m[1]))).toEqual([1, 1]);
    expect(svg).toContain('good (3)');
    expect(svg).toContain('defective (2)');
    expect(svg).toContain('stroke-dasharray="5 3"');
    expect(svg).toContain('>threshold</text>');
    expect(svg).not.toContain('NaN');
  });
});

describe('colourScale', () => {
  it('uses the ground-truth pixel range, or without masks the range of the maps shown', () => {
    const acc = new PixelMetricsAccumulator();
    const cases = new ReportCases(2);
    const good = img(1, 2, [0.5, 3]);
    cases.offer({ path: 'g.png', defect: 'good' }, acc.add(good, null, 'good'), good, null);
    expect(colourScale(acc.compute(), cases)).toEqual([0.5, 3]);
    const bare = new PixelMetricsAccumulator();
    const only = new ReportCases(2);
    const m = img(1, 2, [-2, 7]);
    only.offer({ path: 'd.png', defect: 'dent' }, bare.addImageOnly(m, 'dent', true), m, null);
    // No pixel has ground truth: the accumulator's range is undefined, the case maps give it.
    expect(bare.compute().overall.iou.min).toBeNaN();
    expect(colourScale(bare.compute(), only)).toEqual([-2, 7]);
    expect(colourScale(bare.compute())).toEqual([0, 1]);
  });
});

describe('inputLine', () => {
  const base = {
    decode: null,
    sourceSize: { minHeight: 900, maxHeight: 1024, minWidth: 1024, maxWidth: 1024 },
    evalMaxSide: 1024,
    downscaledImages: 0,
  };
  it('states the model input, aspect handling and evaluation size', () => {
    const evaluatedSize = { minHeight: 900, maxHeight: 1024, minWidth: 1024, maxWidth: 1024 };
    expect(
      inputLine({
        ...base,
        model: { method: 'anoseg', resolution: 128, channels: 3, aspect: 'pad' },
        evaluatedSize,
        evalSize: null,
      }),
    ).toBe(
      'Model anoseg: 128 x 128 px input, 3 channel(s), other aspect ratios fitted by pad; its maps are resized ' +
        "bilinearly to each mask's own size (the image's for images without a mask), capped at 1024 px on the " +
        'longer side (aspect kept): 1024 x 900-1024 px for evaluation.',
    );
    expect(inputLine({ ...base, model: null, evaluatedSize, evalSize: 256, evalMaxSide: null })).toBe(
      'Maps resized bilinearly to 256 x 256 px (evalSize) for evaluation.',
    );
  });

  it('states the model-side decode cap and the images evaluated below their stored size', () => {
    expect(
      inputLine({
        model: { method: 'padim', resolution: 64, channels: 1, aspect: 'stretch' },
        decode: { maxSide: 2048, downscaledImages: 2, maxHeight: 1365, maxWidth: 2048 },
        sourceSize: { minHeight: 300, maxHeight: 4000, minWidth: 400, maxWidth: 6000 },
        evaluatedSize: { minHeight: 300, maxHeight: 683, minWidth: 400, maxWidth: 1024 },
        evalMaxSide: 1024,
        downscaledImages: 2,
        evalSize: null,
      }),
    ).toBe(
      'Model padim: 64 x 64 px input, 1 channel(s), other aspect ratios fitted by stretch; images larger than 2048 px ' +
        'on the longer side decoded straight to that size (2 image(s), largest decoded 2048 x 1365 px); its maps are ' +
        "resized bilinearly to each mask's own size (the image's for images without a mask), capped at 1024 px on " +
        'the longer side (aspect kept): 400-1024 x 300-683 px for evaluation. 2 image(s) evaluated below their ' +
        'stored size (stored 400-6000 x 300-4000 px).',
    );
  });
});
