import { cpSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { generateSyntheticDataset } from '../data/synthetic-dataset.js';
import { presetConfig } from '../methods/anoseg/config.js';
import {
  ablationBaseConfig,
  ablationMarkdown,
  effectiveConfig,
  meanOverSeeds,
  runAblation,
  table3Configs,
  table5Runs,
  type AblationResult,
  type AblationRow,
} from './ablation.js';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'ablation-test-'));
const data = path.join(tmp, 'data');
beforeAll(async () => {
  await generateSyntheticDataset(data, {
    seed: 3,
    size: 32,
    trainCount: 12,
    testGoodCount: 3,
    testDefectCount: 3,
    kind: 'texture',
  });
});
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** A one-row Table 3 result of the row's seed: the settings a study of the cpu preset at 128 px records. */
function table3Result(row: AblationRow): Omit<AblationResult, 'files'> {
  return {
    table: 3,
    data: 'd',
    preset: 'cpu',
    seeds: row.perSeed.map((f) => f.seed),
    minutesPerRun: 1,
    resolution: 128,
    adversarialWeight: 0.1,
    adversarial: { rampSteps: 0, stabilisers: {} },
    evalSize: 256,
    rows: [row],
    mapScoreImageAuroc: null,
    anosegModel: null,
  };
}

describe('Table 3 configurations', () => {
  it('are exactly the four cumulative configurations on the cpu preset', () => {
    const runs = table3Configs();
    expect(runs.map((r) => r.name)).toEqual(['base', 'hard-aug', 'adversarial', 'coords']);
    const sw = runs.map((r) => ({
      hardAugmentation: r.config.anomaly.hardAugmentation,
      reconstruction: r.config.arch.reconstruction,
      reconstructionWeight: r.config.loss.reconstructionWeight,
      adversarialWeight: r.config.loss.adversarialWeight,
      coordChannels: r.config.arch.coordChannels,
    }));
    expect(sw).toEqual([
      {
        hardAugmentation: false,
        reconstruction: false,
        reconstructionWeight: 0,
        adversarialWeight: 0,
        coordChannels: false,
      },
      {
        hardAugmentation: true,
        reconstruction: false,
        reconstructionWeight: 0,
        adversarialWeight: 0,
        coordChannels: false,
      },
      {
        hardAugmentation: true,
        reconstruction: true,
        reconstructionWeight: 1,
        adversarialWeight: 0.1,
        coordChannels: false,
      },
      {
        hardAugmentation: true,
        reconstruction: true,
        reconstructionWeight: 1,
        adversarialWeight: 0.1,
        coordChannels: true,
      },
    ]);
    // The last column is the cpu preset itself (the paper's recipe at CPU size); all share everything else.
    const cpu = presetConfig('cpu');
    expect({ ...runs[3].config, preset: cpu.preset }).toEqual(cpu);
    for (const r of runs) {
      expect(r.config.arch.resolution).toBe(128);
      expect(r.config.batchSize).toBe(cpu.batchSize);
      expect(r.config.lr).toBe(cpu.lr);
      expect(r.config.anomaly.maskShape).toBe('rect');
      expect(r.config.anomaly.source).toBe('self');
    }
    expect(runs.map((r) => [r.paper.pixelAuroc, r.paper.iou])).toEqual([
      [0.923, 0.492],
      [0.942, 0.503],
      [0.951, 0.527],
      [0.97, 0.542],
    ]);
    expect(table5Runs().map((r) => [r.name, r.paper.imageAuroc])).toEqual([
      ['base', 0.812],
      ['feature-matching', 0.842],
      ['map-input', 0.943],
      ['full', 0.961],
    ]);
  });

  it('apply the study overrides to every run', () => {
    const base = ablationBaseConfig({
      resolution: 32,
      width: 0.125,
      batchSize: 4,
      steps: 3,
      seed: 9,
      minutesPerRun: 2,
    });
    for (const r of table3Configs(base)) {
      expect([
        r.config.arch.resolution,
        r.config.arch.width,
        r.config.batchSize,
        r.config.steps,
        r.config.seed,
        r.config.maxMinutes,
      ]).toEqual([32, 0.125, 4, 3, 9, 2]);
    }
  });

  it('take another L_Adv weight for the adversarial rows only, and reject a non-positive one', () => {
    const runs = table3Configs(ablationBaseConfig({ minutesPerRun: 1, adversarialWeight: 0.1 }));
    expect(runs.map((r) => r.config.loss.adversarialWeight)).toEqual([0, 0, 0.1, 0.1]);
    expect(() => ablationBaseConfig({ minutesPerRun: 1, adversarialWeight: 0 })).toThrow(/adversarial weight/);
  });
});

describe('runAblation', () => {
  it('trains and evaluates two Table 3 configurations, writes ablation.md / .json, and reuses finished runs', async () => {
    const out = path.join(tmp, 'study');
    const o = {
      data,
      out,
      minutesPerRun: 1,
      seeds: [1],
      table: 3 as const,
      steps: 3,
      resolution: 32,
      width: 0.125,
      batchSize: 4,
      runs: ['base', 'coords'],
      evalSize: 32,
      report: false,
      progress: false,
    };
    const r = await runAblation(o);
    expect(r.rows.map((x) => x.name)).toEqual(['base', 'coords']);
    for (const row of r.rows) {
      expect(row.steps).toBe(3);
      for (const v of [row.pixelAuroc, row.imageAuroc, row.iou, row.aupro]) {
        expect(v).toBeGreaterThanOrEqual(0);
        expect(v).toBeLessThanOrEqual(1);
      }
    }
    const md = readFileSync(path.join(out, 'ablation.md'), 'utf8');
    expect(md).toContain('| Base model (CutPaste only) |');
    expect(md).toContain('| + Coordinate channel |');
    expect(md).toContain('0.923 / 0.492');
    expect(md).toContain('0.970 / 0.542');
    // the adversarial rows' formulation, from the cpu preset
    expect(md).toContain(
      'L_Adv weight 0.1 in the adversarial rows, fake pair (x, Â): the input image beside the map, ramped up over 200 ' +
        'steps; stabilisers: realLabel 0.9, r1Weight 10, dLr 0.5, realMaskBlur 2.',
    );
    expect(md.split('\n').filter((l) => l.startsWith('| ') && !l.startsWith('| Configuration')).length).toBe(2);
    const json = JSON.parse(readFileSync(path.join(out, 'ablation.json'), 'utf8'));
    expect(json.table).toBe(3);
    expect(json.rows[0].pixelAuroc).toBeCloseTo(r.rows[0].pixelAuroc, 10);

    const modelTime = statSync(r.rows[0].modelPath).mtimeMs;
    const again = await runAblation(o);
    expect(again.rows).toEqual(r.rows);
    expect(statSync(r.rows[0].modelPath).mtimeMs).toBe(modelTime);
    await expect(runAblation({ ...o, runs: ['nope'] })).rejects.toThrow(/unknown ablation run/);

    // A row without L_Adv stored by a study whose adversarial rows were set otherwise (older stabilisers, the other
    // fake pair) is the same training: reused. The same edit on a row with L_Adv would retrain it.
    const storedFile = path.join(path.dirname(r.rows[0].modelPath), 'ablation-run.json');
    const stored = JSON.parse(readFileSync(storedFile, 'utf8'));
    const fp = JSON.parse(stored.fingerprint);
    fp.config.adversarial = { realLabel: 0.8 };
    fp.config.loss.fakePair = 'reconstruction';
    fp.config.adversarialRampSteps = 7;
    writeFileSync(storedFile, JSON.stringify({ ...stored, fingerprint: JSON.stringify(fp) }));
    await runAblation({ ...o, runs: ['base'] });
    expect(statSync(r.rows[0].modelPath).mtimeMs).toBe(modelTime);

    // A folder whose checkpoint is a finished run of another configuration is refused, not resumed as this row.
    cpSync(path.dirname(r.rows[0].modelPath), path.join(out, 'hard-aug-seed1'), { recursive: true });
    rmSync(path.join(out, 'hard-aug-seed1', 'ablation-run.json'));
    await expect(runAblation({ ...o, runs: ['hard-aug'] })).rejects.toThrow(
      /hard-aug-seed1 holds a run of another configuration \(anomaly\.hardAugmentation, preset\); move or remove/,
    );

    // A second seed: seed 1's run is reused, seed 2's trained into base-seed2, the row is the mean of both.
    const two = await runAblation({ ...o, out, runs: ['base'], seeds: [1, 2] });
    expect(statSync(r.rows[0].modelPath).mtimeMs).toBe(modelTime);
    expect(two.seeds).toEqual([1, 2]);
    expect(two.rows[0].perSeed.map((f) => f.seed)).toEqual([1, 2]);
    expect(two.rows[0].perSeed[0].pixelAuroc).toBe(r.rows[0].pixelAuroc);
    expect(statSync(path.join(out, 'base-seed2', 'model.safetensors')).isFile()).toBe(true);
    const [f1, f2] = two.rows[0].perSeed;
    expect(two.rows[0].iou).toBeCloseTo((f1.iou + f2.iou) / 2, 12);
    expect(two.rows[0].pixelAuroc).toBeCloseTo((f1.pixelAuroc + f2.pixelAuroc) / 2, 12);
    expect(readFileSync(path.join(out, 'ablation.md'), 'utf8')).toContain('seeds 1, 2 (each figure is their mean)');
    await expect(runAblation({ ...o, seeds: [1, 1] })).rejects.toThrow(/distinct/);

    // Table 5 on top of the 'coords' model: two detector variants.
    const t5 = await runAblation({
      ...o,
      out: path.join(tmp, 'study5'),
      table: 5,
      runs: ['base', 'full'],
      anosegModel: r.rows[1].modelPath,
    });
    expect(t5.rows.map((x) => x.name)).toEqual(['base', 'full']);
    expect(t5.mapScoreImageAuroc).not.toBeNull();
    const md5 = readFileSync(path.join(tmp, 'study5', 'ablation.md'), 'utf8');
    expect(md5).toContain('| Base model |');
    expect(md5).toContain('| + Anomaly classification loss |');
    expect(md5).toContain('0.961');
    expect(md5).toContain('AnoSeg map score');
    // Every row of Table 5 shares the AnoSeg map, hence the same pixel AUROC.
    expect(t5.rows[0].pixelAuroc).toBeCloseTo(t5.rows[1].pixelAuroc, 10);
  });

  it('averages each row over the seeds and lists every seed beside it', () => {
    const table = (seed: number, px: number, iou: number, steps: number) =>
      table3Result({
        name: 'coords',
        label: '+ Coordinate channel',
        paper: { pixelAuroc: 0.97, iou: 0.542 },
        perSeed: [{ seed, pixelAuroc: px, imageAuroc: 0.5, iou, aupro: 0.25 }],
        pixelAuroc: px,
        imageAuroc: 0.5,
        iou,
        aupro: 0.25,
        steps,
        minutes: 2,
        modelPath: `m${seed}`,
        metricsPath: '',
      });
    const m = meanOverSeeds([table(0, 0.8, 0.2, 100), table(1, 0.9, 0.4, 200)]);
    expect(m.seeds).toEqual([0, 1]);
    expect(m.rows[0].pixelAuroc).toBeCloseTo(0.85, 12);
    expect(m.rows[0].iou).toBeCloseTo(0.3, 12);
    expect(m.rows[0].steps).toBe(150);
    expect(m.rows[0].modelPath).toBe('m0');
    const md = ablationMarkdown(m);
    expect(md).toContain(
      '| + Coordinate channel | 0.850 | 0.300 | 0.500 | 0.250 | 150 | 2.0 | 0.970 / 0.542 | 0.800 / 0.200, 0.900 / 0.400 |',
    );
    expect(md).toContain('seeds 0, 1 (each figure is their mean)');
  });

  it('formats missing figures as "-"', () => {
    const md = ablationMarkdown(
      table3Result({
        name: 'base',
        label: 'Base',
        paper: { pixelAuroc: 0.923, iou: 0.492 },
        perSeed: [{ seed: 0, pixelAuroc: 0.9, imageAuroc: Number.NaN, iou: 0.5, aupro: 0.7 }],
        pixelAuroc: 0.9,
        imageAuroc: Number.NaN,
        iou: 0.5,
        aupro: 0.7,
        steps: 10,
        minutes: 1,
        modelPath: '',
        metricsPath: '',
      }),
    );
    expect(md).toContain('| Base | 0.900 | 0.500 | - | 0.700 | 10 | 1.0 | 0.923 / 0.492 |');
    // a result stored before the fake pair was recorded: eq. 3's (x̂, Â)
    expect(md).toContain(
      'L_Adv weight 0.1 in the adversarial rows, fake pair (x̂, Â) as in eq. 3; stabilisers: none (plain eq. 3).',
    );
  });
});

describe('effectiveConfig', () => {
  it('drops the adversarial settings of a run without L_Adv only', () => {
    const [base, hardAug, adversarial] = table3Configs();
    for (const run of [base, hardAug]) {
      const e = effectiveConfig(run.config);
      expect(e.adversarial).toBeUndefined();
      expect(e.loss.fakePair).toBeUndefined();
      expect('adversarialRampSteps' in e).toBe(false);
      expect(run.config.adversarial).toBeDefined(); // the input is not changed
      expect(e.anomaly).toEqual(run.config.anomaly);
    }
    expect(effectiveConfig(adversarial.config)).toBe(adversarial.config);
  });
});
