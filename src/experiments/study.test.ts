import { describe, expect, it } from 'vitest';
import { presetVariants, studyTable, type StudyRow } from './study.js';
import { jsonDifferences } from '../util/json-diff.js';

const row = (dataset: string, variant = 'recipe'): StudyRow => ({
  variant,
  dataset,
  pixelAuroc: 0.9512,
  imageAuroc: 0.9,
  bestIou: 0.5,
  aupro: 0.8,
  trainMinutes: 15.04,
  steps: 1500,
});

describe('studyTable', () => {
  it('puts the paper reported bottle figures after the last bottle row and marks held-out sets', () => {
    const lines = studyTable([row('bottle', 'cpu'), row('bottle'), row('magnetic_tile')], ['magnetic_tile']).split(
      '\n',
    );
    expect(lines).toHaveLength(2 + 4);
    expect(lines[2]).toBe('| cpu | bottle | 0.951 | 0.900 | 0.500 | 0.800 | 15.0 | 1500 |');
    expect(lines[4]).toBe('| paper (reported, GPU) | bottle | 0.990 | 0.980 | - | - | - | - |');
    expect(lines[5]).toContain('| magnetic_tile (held out) |');
    expect(studyTable([row('kolektorsdd')])).not.toContain('paper');
  });
});

describe('presetVariants', () => {
  it('gives the recipe its PaDiM ensemble as anoseg train does, unless told otherwise', () => {
    expect(presetVariants(['paper', 'recipe']).map((v) => [v.name, v.ensemble])).toEqual([
      ['paper', false],
      ['recipe', true],
    ]);
    expect(presetVariants(['paper', 'recipe'], 'padim').every((v) => v.ensemble)).toBe(true);
    expect(presetVariants(['recipe'], 'none')[0].ensemble).toBe(false);
  });
});

describe('jsonDifferences on configurations (what a study names when it refuses a row)', () => {
  it('names the settings that differ as dotted paths, arrays compared whole, absent = undefined', () => {
    const a = { lr: 1e-4, anomaly: { placement: 'inside', areaRange: [0.005, 0.1] }, tiling: 'long-side' };
    expect(jsonDifferences(a, structuredClone(a))).toEqual([]);
    expect(
      jsonDifferences(a, { lr: 2e-4, anomaly: { placement: 'seams', areaRange: [0.005, 0.2] }, tiling: 'long-side' }),
    ).toEqual(['anomaly.areaRange', 'anomaly.placement', 'lr']);
    expect(jsonDifferences({ x: 1, y: undefined }, { x: 1 })).toEqual([]);
    expect(jsonDifferences({ x: 1 }, { x: 1, z: { w: 2 } })).toEqual(['z']);
    expect(jsonDifferences(1, 2)).toEqual(['(value)']);
  });
});

describe('runStudy', () => {
  it('trains, fuses and evaluates an ensemble variant, caches both rows and reuses them', async () => {
    const { mkdtemp, readFile, rm } = await import('node:fs/promises');
    const os = await import('node:os');
    const path = await import('node:path');
    const { generateSyntheticDataset } = await import('../data/synthetic-dataset.js');
    const { presetConfig } = await import('../methods/anoseg/config.js');
    const { runStudy } = await import('./study.js');
    const dir = await mkdtemp(path.join(os.tmpdir(), 'anoseg-study-'));
    try {
      const ds = await generateSyntheticDataset(path.join(dir, 'cat'), {
        seed: 2,
        size: 48,
        trainCount: 20,
        testGoodCount: 2,
        testDefectCount: 2,
        kind: 'texture',
      });
      const config = presetConfig('recipe');
      Object.assign(config, { steps: 3, batchSize: 4, evalEvery: 3, checkpointEvery: 3, bnRecalibrationBatches: 1 });
      config.arch = { ...config.arch, resolution: 32, width: 0.125 };
      // --steps replaces the preset's step count (config.steps is 30 here)
      config.steps = 30;
      const o = {
        datasets: [ds.root],
        variants: [{ name: 'tiny', config, ensemble: true }],
        minutes: 5,
        steps: 3,
        out: dir,
      };
      const lines: string[] = [];
      const rows = await runStudy({ ...o, log: (l) => lines.push(l) });
      expect(rows.map((r) => r.variant)).toEqual(['tiny', 'tiny + PaDiM']);
      for (const r of rows) {
        expect(r.steps).toBe(3);
        expect(r.pixelAuroc).toBeGreaterThanOrEqual(0);
        expect(r.pixelAuroc).toBeLessThanOrEqual(1);
      }
      expect(rows[1].trainMinutes).toBeGreaterThan(rows[0].trainMinutes);
      // each report counts passes and rejects at the model's own threshold, as anoseg eval --model does
      const { loadPredictor } = await import('../methods/load.js');
      for (const [model, evalDir] of [
        ['model.safetensors', 'eval'],
        ['ensemble.safetensors', 'eval-ensemble'],
      ]) {
        const runDir = path.join(dir, 'tiny', 'cat');
        const metrics = JSON.parse(await readFile(path.join(runDir, evalDir, 'metrics.json'), 'utf8')) as {
          verdicts: { source: string; overall: { threshold: number } };
          input: { model: { method: string } };
        };
        const predictor = await loadPredictor(path.join(runDir, model));
        expect(metrics.verdicts.source).toBe('model');
        expect(metrics.verdicts.overall.threshold).toBe(predictor.info.imageThreshold);
        expect(metrics.input.model.method).toBe(predictor.info.method);
        predictor.dispose();
      }
      // the second run finds both rows on disk and trains nothing
      const again = await runStudy({ ...o, log: (l) => lines.push(l) });
      expect(again).toEqual(rows);
      expect(lines.at(-1)).toBe('tiny on cat: already done');
      // rows made under another budget are refused, not reused, and stay as they were
      const rowFile = path.join(dir, 'tiny', 'cat', 'study-row.json');
      const before = await readFile(rowFile, 'utf8');
      await expect(runStudy({ ...o, steps: 4, log: () => {} })).rejects.toThrow(
        /made with --minutes 5 --steps 3, not --minutes 5 --steps 4: give this study another --out/,
      );
      await expect(runStudy({ ...o, steps: undefined, minutes: 6, log: () => {} })).rejects.toThrow(/not --minutes 6:/);
      // and so are rows of another configuration of the variant (a preset changed since they were made)
      const changed = structuredClone(config);
      changed.anomaly.placement = changed.anomaly.placement === 'seams' ? 'inside' : 'seams';
      await expect(
        runStudy({ ...o, variants: [{ name: 'tiny', config: changed, ensemble: true }], log: () => {} }),
      ).rejects.toThrow(
        /study-row\.json holds a run made from another configuration of 'tiny' \(anomaly\.placement differ\): give this study another --out/,
      );
      expect(await readFile(rowFile, 'utf8')).toBe(before);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }, 180_000);
});
