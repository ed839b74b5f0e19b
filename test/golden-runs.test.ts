/**
 * Golden runs: short seeded runs of the three training loops (AnoSeg with its resume, the detector on top of it,
 * formula pre-training with both losses) and the synthesis / resize primitives they draw on, compared with values
 * recorded from the code before the training loops were unified (issue 17: "the same figures from the same seeds").
 * Losses, diagnostics, thresholds and checksums of every weight and optimiser moment must agree to ~1e-5.
 *
 * `GOLDEN_UPDATE=1 npx vitest run test/golden-runs.test.ts` rewrites test/fixtures/golden-runs.json; do that only
 * for a change that is meant to alter these figures, and say why in the commit.
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as prettier from 'prettier';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { getNumThreads, setNumThreads } from '../src/engine/index.js';
import { loadSafetensors } from '../src/nn/index.js';
import { generateSyntheticDataset } from '../src/data/synthetic-dataset.js';
import { resizeImage } from '../src/image/io.js';
import { makeSyntheticAnomaly } from '../src/synth/anomalies.js';
import { sampleFormulaDefect } from '../src/synth/formula.js';
import { perlinNoise, valueNoise } from '../src/synth/noise.js';
import { PROCEDURAL_FAMILIES, cutPasteTexture, proceduralTexture } from '../src/synth/texture.js';
import { Rng } from '../src/util/rng.js';
import { trainAnoSeg } from '../src/methods/anoseg/trainer.js';
import { trainDetector } from '../src/methods/detector/trainer.js';
import { pretrainBackbone } from '../src/methods/pretrain/trainer.js';
import { presetConfig, type AnoSegTrainConfig } from '../src/methods/anoseg/config.js';
import { tinyArchitecture } from './fixtures/tiny-architecture.js';

const GOLDEN = path.join(path.dirname(fileURLToPath(import.meta.url)), 'fixtures', 'golden-runs.json');
const update = process.env.GOLDEN_UPDATE === '1';
const golden: Record<string, unknown> = existsSync(GOLDEN)
  ? (JSON.parse(readFileSync(GOLDEN, 'utf8')) as Record<string, unknown>)
  : {};
const recorded: Record<string, unknown> = {};

let root: string;
let data: string;
const threadsBefore = getNumThreads();
beforeAll(async () => {
  setNumThreads(1);
  root = await mkdtemp(path.join(os.tmpdir(), 'anoseg-golden-'));
  data = path.join(root, 'data');
  await generateSyntheticDataset(data, {
    seed: 11,
    size: 32,
    trainCount: 10,
    testGoodCount: 2,
    testDefectCount: 3,
    kind: 'texture',
  });
});
afterAll(async () => {
  setNumThreads(threadsBefore);
  await rm(root, { recursive: true, force: true });
  if (update) {
    // 9 significant digits are plenty for a 1e-5 comparison; prettier keeps the file as the linter wants it.
    const text = JSON.stringify({ ...golden, ...recorded }, (_, v: unknown) =>
      typeof v === 'number' && !Number.isInteger(v) ? Number(v.toPrecision(9)) : v,
    );
    writeFileSync(GOLDEN, await prettier.format(text, { parser: 'json', printWidth: 120 }));
  }
});

/** Order-sensitive checksum of some numbers: count, sum, sum of absolute values, position-weighted sum. */
function checksum(values: ArrayLike<number>): number[] {
  let sum = 0;
  let abs = 0;
  let weighted = 0;
  for (let i = 0; i < values.length; i++) {
    sum += values[i];
    abs += Math.abs(values[i]);
    weighted += values[i] * ((i % 13) + 1);
  }
  return [values.length, sum, abs, weighted];
}

/** Checksums of every tensor of a safetensors file, by name, and the metadata fields named. */
async function fileDigest(file: string, metaFields: string[] = []): Promise<Record<string, unknown>> {
  const { tensors, metadata } = await loadSafetensors(file);
  const out: Record<string, unknown> = {};
  for (const name of [...tensors.keys()].sort()) {
    const t = tensors.get(name)!;
    out[name] = checksum(t.dtype === 'float32' ? t.toFloat32Array() : Array.from(t.toFloat32Array()));
  }
  for (const t of tensors.values()) t.dispose();
  for (const f of metaFields) out[`meta.${f}`] = metadata[f];
  return out;
}

/** Deep comparison: numbers to a relative 1e-5 (absolute 1e-6 near zero), everything else equal. */
function expectClose(actual: unknown, expected: unknown, where: string): void {
  if (typeof expected === 'number') {
    expect(typeof actual, where).toBe('number');
    const a = actual as number;
    if (Number.isNaN(expected)) expect(Number.isNaN(a), where).toBe(true);
    else
      expect(Math.abs(a - expected), `${where}: ${a} vs ${expected}`).toBeLessThanOrEqual(
        Math.max(1e-6, 1e-5 * Math.abs(expected)),
      );
  } else if (Array.isArray(expected)) {
    expect(Array.isArray(actual), where).toBe(true);
    expect((actual as unknown[]).length, `${where}.length`).toBe(expected.length);
    expected.forEach((e, i) => expectClose((actual as unknown[])[i], e, `${where}[${i}]`));
  } else if (expected !== null && typeof expected === 'object') {
    expect(Object.keys(actual as object).sort(), `${where} keys`).toEqual(Object.keys(expected).sort());
    for (const [k, e] of Object.entries(expected))
      expectClose((actual as Record<string, unknown>)[k], e, `${where}.${k}`);
  } else {
    expect(actual, where).toEqual(expected);
  }
}

/** Records the value (GOLDEN_UPDATE=1) or compares it with the recorded one. */
function matchGolden(name: string, value: unknown): void {
  const plain = JSON.parse(JSON.stringify(value)) as unknown;
  if (update) {
    recorded[name] = plain;
    return;
  }
  expect(golden[name], `no golden value '${name}': run with GOLDEN_UPDATE=1 on the reference code`).toBeDefined();
  expectClose(plain, golden[name], name);
}

/** The jsonl records of a run folder's log, without their wall-clock fields. */
async function records(file: string): Promise<unknown[]> {
  return (await readFile(file, 'utf8'))
    .split('\n')
    .filter(Boolean)
    .map((l) => {
      const r = JSON.parse(l) as Record<string, unknown>;
      delete r.time;
      delete r.minutes;
      delete r.t;
      return r;
    });
}

function anosegConfig(steps: number): AnoSegTrainConfig {
  const c = presetConfig('paper');
  // The golden figures predate the paper preset's stabilisers and fake pair: plain eq. 3 with (x̂, Â).
  delete c.adversarial;
  c.loss.fakePair = 'reconstruction';
  return {
    ...c,
    arch: tinyArchitecture({ skips: true }),
    batchSize: 4,
    steps,
    lr: 1e-3,
    schedule: 'cosine',
    loss: { ...c.loss, adversarialWeight: 0.1 },
    adversarialRampSteps: 4,
    anomaly: { ...c.anomaly, source: 'mixed', maskShape: 'mixed', blend: 'mixed' },
    anomalyFraction: 0.5,
    evalEvery: 1,
    checkpointEvery: 2,
    bnRecalibrationBatches: 2,
    maxMinutes: null,
    seed: 5,
  };
}

describe('golden runs (same seeds, same figures)', () => {
  it('synthesis, noise and resize primitives', () => {
    const rng = new Rng(21);
    const values: Record<string, number[]> = {};
    values.anomalyTexture = checksum(cutPasteTexture(3, 24, 20, rng).data);
    values.anomalyTextureGray = checksum(cutPasteTexture(1, 16, 16, rng).data);
    values.perlin = checksum(perlinNoise(24, 20, 4, rng));
    values.valueNoise = checksum(valueNoise(24, 20, 5, rng));
    for (const family of PROCEDURAL_FAMILIES)
      values[`formula.${family}`] = checksum(proceduralTexture(3, 32, 32, rng, family).data);
    values.formulaAny = checksum(proceduralTexture(1, 32, 32, rng).data);
    const base = proceduralTexture(3, 32, 32, new Rng(3));
    const defect = sampleFormulaDefect(base, new Rng(4));
    values.formulaDefect = checksum(defect.image.data);
    values.formulaAlpha = checksum(defect.alpha.data);
    for (const source of ['self', 'texture', 'other-image'] as const) {
      for (const maskShape of ['rect', 'perlin', 'gmm', 'stroke'] as const) {
        const s = makeSyntheticAnomaly(
          base,
          new Rng(7),
          { ...presetConfig('paper').anomaly, source, maskShape },
          defect.image,
        );
        values[`anomaly.${source}.${maskShape}`] = checksum(s.image.data);
      }
    }
    values.resizeDown = checksum(resizeImage(base, 13, 17).data);
    values.resizeUp = checksum(resizeImage(base, 45, 50).data);
    values.resizeNearest = checksum(resizeImage(base, 45, 21, 'nearest').data);
    matchGolden('primitives', values);
  });

  it('trainAnoSeg: 3 steps, then resumed to 6 (adversarial term, mixed anomalies, BN re-estimation)', async () => {
    const out = path.join(root, 'anoseg');
    await trainAnoSeg({ data, out, config: anosegConfig(3), progress: false });
    const first = await fileDigest(path.join(out, 'checkpoint.safetensors'), ['step']);
    const r = await trainAnoSeg({ data, out, config: anosegConfig(6), progress: false });
    expect(r.steps).toBe(6);
    const model = await fileDigest(r.modelPath);
    const { tensors: modelTensors, metadata } = await loadSafetensors(r.modelPath);
    for (const t of modelTensors.values()) t.dispose();
    const meta = JSON.parse(metadata.meta ?? '{}') as Record<string, unknown>;
    matchGolden('anoseg', {
      diagnostics: r.diagnostics.map((d) => ({ ...d, minutes: 0 })),
      log: (await records(path.join(out, 'train.jsonl'))).filter((e) => (e as { event: string }).event !== 'info'),
      firstCheckpoint: first,
      checkpoint: await fileDigest(path.join(out, 'checkpoint.safetensors'), ['step']),
      model,
      thresholds: [meta.imageThreshold, meta.pixelThreshold],
    });
  }, 120_000);

  it('trainDetector: 4 steps on the AnoSeg model', async () => {
    const out = path.join(root, 'detector');
    const r = await trainDetector({
      anosegModel: path.join(root, 'anoseg', 'model.safetensors'),
      data,
      out,
      steps: 4,
      seed: 2,
      progress: false,
      config: { batchSize: 4, anomalyBatch: 2, evalEvery: 2, checkpointEvery: 2 },
    });
    matchGolden('detector', {
      threshold: r.imageThreshold,
      diagnostics: r.diagnostics.map((d) => ({ ...d, minutes: 0 })),
      checkpoint: await fileDigest(path.join(out, 'checkpoint.safetensors'), ['step']),
    });
  }, 120_000);

  for (const loss of ['indirect', 'direct'] as const) {
    it(`pretrainBackbone (${loss}): 2 steps, then resumed to 4`, async () => {
      const out = path.join(root, `backbone-${loss}.safetensors`);
      const runDir = path.join(root, `pretrain-${loss}`);
      const common = { out, runDir, batch: 4, size: 32, width: 0.125, loss, seed: 3, evalEvery: 1, checkpointEvery: 2 };
      await pretrainBackbone({ ...common, steps: 2, progress: false });
      const r = await pretrainBackbone({ ...common, steps: 4, progress: false });
      expect(r.steps).toBe(4);
      matchGolden(`pretrain.${loss}`, {
        history: r.history.map((h) => ({ ...h, minutes: 0 })),
        finalEvalLoss: r.finalEvalLoss,
        checkpoint: await fileDigest(path.join(runDir, 'checkpoint.safetensors'), ['step']),
        backbone: await fileDigest(out),
      });
    }, 120_000);
  }
});
