import { existsSync } from 'node:fs';
import { copyFile, cp, mkdir, mkdtemp, readFile, readdir, rm, stat, truncate, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import {
  getNumThreads,
  liveTensors,
  manualSeed,
  setNumThreads,
  type Tensor,
  type TypedData,
} from '../../engine/index.js';
import { generateSyntheticDataset } from '../../data/synthetic-dataset.js';
import { openTrainingData } from '../../data/dataset.js';
import { createImage } from '../../image/types.js';
import { saveImagePng } from '../../image/io.js';
import { cropTiles, stitchTiles, tileRects, type TileSeams } from '../../image/tiles.js';
import { loadTrainingImages, splitTrainingImages, syntheticValidationSet } from '../../train/data.js';
import { thresholdsFromValidation } from '../../train/validation.js';
import { loadPredictor } from '../load.js';
import { FeatureBackbone } from '../../models/backbone.js';
import { Adam, loadSafetensors } from '../../nn/index.js';
import { AnoSegGenerator, Discriminator, anoSegDiscriminator } from './network.js';
import { RunLog } from '../../util/progress.js';
import { CHECKPOINT_FORMAT, scorePartSpreads, trainAnoSeg } from './trainer.js';
import { scoreBatch } from './model-file.js';
import type { ScoreOptions } from '../../models/scoring.js';
import { Rng } from '../../util/rng.js';
import { presetConfig, type AnoSegTrainConfig } from './config.js';

let root: string;
let data: string;
const threadsBefore = getNumThreads();

beforeAll(async () => {
  setNumThreads(1);
  root = await mkdtemp(path.join(os.tmpdir(), 'anoseg-trainer-'));
  data = path.join(root, 'data');
  await generateSyntheticDataset(data, {
    seed: 3,
    size: 32,
    trainCount: 12,
    testGoodCount: 2,
    testDefectCount: 3,
    kind: 'texture',
  });
});
afterAll(async () => {
  setNumThreads(threadsBefore);
  await rm(root, { recursive: true, force: true });
});

/**
 * The paper's preset at toy size: 32 px, widths x0.125, batch 4, 6 steps, diagnostics and checkpoints every 3; with
 * a short adversarial ramp and BatchNorm re-estimation so that every part of the loop runs.
 */
function tinyConfig(o: Partial<AnoSegTrainConfig> = {}): AnoSegTrainConfig {
  const c = presetConfig('paper');
  c.arch = { ...c.arch, resolution: 32, width: 0.125 };
  return {
    ...c,
    batchSize: 4,
    steps: 6,
    evalEvery: 3,
    checkpointEvery: 3,
    adversarialRampSteps: 2,
    bnRecalibrationBatches: 2,
    seed: 1,
    ...o,
  };
}

const outDir = (name: string): string => path.join(root, 'runs', name);
const readLog = (out: string): Promise<string> => readFile(path.join(out, 'train.log'), 'utf8');

type Values = Map<string, TypedData>;
const values = (state: Map<string, Tensor>): Values => new Map([...state].map(([k, t]) => [k, t.toArray()]));

/** Same names, and for each the same dtype, length and bytes. */
function expectSameValues(actual: Values, expected: Values, what: string): void {
  expect([...actual.keys()].sort(), what).toEqual([...expected.keys()].sort());
  for (const [k, e] of expected) {
    const a = actual.get(k)!;
    expect(a.constructor.name, `${what}.${k}`).toBe(e.constructor.name);
    const bytes = (v: TypedData): Buffer => Buffer.from(v.buffer, v.byteOffset, v.byteLength);
    expect(Buffer.compare(bytes(a), bytes(e)), `${what}.${k} differs from the checkpoint`).toBe(0);
  }
}

describe('trainAnoSeg', () => {
  let firstRun: string;

  it('writes the model, checkpoint, log and curves; the model predicts maps at the input size', async () => {
    firstRun = outDir('basic');
    const sigintBefore = process.listenerCount('SIGINT');
    const r = await trainAnoSeg({ data, out: firstRun, config: tinyConfig(), progress: false });
    expect(process.listenerCount('SIGINT')).toBe(sigintBefore);
    expect(r.steps).toBe(6);
    expect(r.modelPath).toBe(path.join(firstRun, 'model.safetensors'));
    for (const f of ['model.safetensors', 'checkpoint.safetensors', 'train.log', 'curves.html', 'config.json']) {
      expect(existsSync(path.join(firstRun, f)), f).toBe(true);
    }
    // diagnostics at 3 and 6, plus the one after BN re-estimation; the data set has masks, so test AUROCs too
    expect(r.diagnostics.map((d) => d.step)).toEqual([3, 6, 6]);
    for (const d of r.diagnostics) {
      expect(d.syntheticPixelAuroc).toBeGreaterThanOrEqual(0);
      expect(d.syntheticPixelAuroc).toBeLessThanOrEqual(1);
      expect(d.testPixelAuroc).not.toBeNull();
      expect(d.testImageAuroc).not.toBeNull();
    }
    const log = await readLog(firstRun);
    expect(log).toMatch(/11 training, 1 validation images, 3 channel\(s\)/);
    expect(log).toMatch(/real test diagnostics on 5 test images/);
    expect(log).toMatch(/saved .*model\.safetensors/);
    expect(log).toMatch(/steps 0-\d+: data \d+\.\d% of step time/);
    expect(await readFile(path.join(firstRun, 'curves.html'), 'utf8')).toMatch(/<svg[\s\S]*<\/svg>/);

    const ckpt = await loadSafetensors(path.join(firstRun, 'checkpoint.safetensors'));
    expect(ckpt.metadata.format).toBe(CHECKPOINT_FORMAT);
    expect(ckpt.metadata.step).toBe('6');
    const keys = [...ckpt.tensors.keys()];
    for (const prefix of ['generator.', 'discriminator.', 'optim_g.', 'optim_d.']) {
      expect(
        keys.some((k) => k.startsWith(prefix)),
        prefix,
      ).toBe(true);
    }
    for (const t of ckpt.tensors.values()) t.dispose();

    const tensorsBefore = liveTensors();
    const predictor = await loadPredictor(r.modelPath);
    expect(predictor.info.method).toBe('anoseg');
    expect(predictor.info.resolution).toBe(32);
    expect(predictor.info.channels).toBe(3);
    expect(Number.isFinite(predictor.info.imageThreshold)).toBe(true);
    expect(Number.isFinite(predictor.info.pixelThreshold)).toBe(true);
    const rgb = createImage(3, 40, 52, 0.4);
    const gray = createImage(1, 32, 32, 0.6);
    const preds = await predictor.predict([rgb, gray]);
    expect(preds.map((p) => [p.map.channels, p.map.height, p.map.width])).toEqual([
      [1, 40, 52],
      [1, 32, 32],
    ]);
    for (const p of preds) {
      expect(Number.isFinite(p.score)).toBe(true);
      expect(p.map.data.every((v) => Number.isFinite(v))).toBe(true);
    }
    predictor.dispose();
    expect(liveTensors()).toBe(tensorsBefore);
  });

  it('resumes from the checkpoint of a shorter run with its exact weights, BN statistics and Adam state', async () => {
    const out = outDir('resume');
    const first = await trainAnoSeg({ data, out, config: tinyConfig({ steps: 3 }), progress: false });
    expect(first.steps).toBe(3);
    const ckpt = await loadSafetensors(path.join(out, 'checkpoint.safetensors'));
    expect(ckpt.metadata.step).toBe('3');
    // the checkpoint's values, by prefix (generator. discriminator. optim_g. optim_d.) and name
    const saved = new Map<string, Map<string, TypedData>>();
    for (const [k, t] of ckpt.tensors) {
      const [prefix, name] = [k.slice(0, k.indexOf('.')), k.slice(k.indexOf('.') + 1)];
      if (!saved.has(prefix)) saved.set(prefix, new Map());
      saved.get(prefix)!.set(name, t.toArray());
      t.dispose();
    }
    expect([...saved.keys()].sort()).toEqual(['discriminator', 'generator', 'optim_d', 'optim_g']);

    // What the resumed run holds when it starts training, read at the first generator and discriminator forward
    // and the first step() of each optimiser (before they change anything).
    const seen: { generator?: Values; discriminator?: Values; optim: Values[] } = { optim: [] };
    const genForward = AnoSegGenerator.prototype.forward;
    const discForward = Discriminator.prototype.forward;
    const adamStep = Adam.prototype.step;
    const spies = [
      vi.spyOn(AnoSegGenerator.prototype, 'forward').mockImplementation(function (this: AnoSegGenerator, x, c) {
        seen.generator ??= values(this.stateDict());
        return genForward.call(this, x, c);
      }),
      vi.spyOn(Discriminator.prototype, 'forward').mockImplementation(function (this: Discriminator, x) {
        seen.discriminator ??= values(this.stateDict());
        return discForward.call(this, x);
      }),
      vi.spyOn(Adam.prototype, 'step').mockImplementation(function (this: Adam) {
        if (seen.optim.length < 2) {
          const state = this.stateDict();
          seen.optim.push(values(state));
          state.get('step')!.dispose();
        }
        adamStep.call(this);
      }),
    ];
    let second: Awaited<ReturnType<typeof trainAnoSeg>>;
    try {
      second = await trainAnoSeg({ data, out, config: tinyConfig({ steps: 6 }), progress: false });
    } finally {
      for (const s of spies) s.mockRestore();
    }
    // element-wise (bit for bit) equal to the checkpoint: every parameter and buffer of both networks, both
    // optimisers' first and second moments and their per-parameter step counts (the G update comes first)
    expectSameValues(seen.generator!, saved.get('generator')!, 'generator');
    expectSameValues(seen.discriminator!, saved.get('discriminator')!, 'discriminator');
    expectSameValues(seen.optim[0], saved.get('optim_g')!, 'optim_g');
    expectSameValues(seen.optim[1], saved.get('optim_d')!, 'optim_d');
    // G's parameters had a gradient in each of the 3 steps; D's in 2 (the adversarial ramp is 0 at step 0)
    for (const [o, n] of [
      ['optim_g', 3],
      ['optim_d', 2],
    ] as const) {
      const steps = Array.from(saved.get(o)!.get('step') as Float64Array);
      expect(steps, o).toEqual(new Array(steps.length).fill(n));
      // the moments are not trivially zero (a fresh optimiser would not pass the comparison above)
      const moments = [...saved.get(o)!].filter(([k]) => k.startsWith('exp_avg.'));
      expect(moments.some(([, v]) => (v as Float32Array).some((e) => e !== 0))).toBe(true);
    }
    expect(second.steps).toBe(6);
    const log = await readLog(out);
    expect(log).toContain(`resumed from ${path.join(out, 'checkpoint.safetensors')} at step 3`);
    expect(log).not.toContain('other settings'); // a longer budget is no other setting
    expect(existsSync(path.join(out, 'model.safetensors'))).toBe(true);
    // the diagnostics of the first part are carried over
    expect(second.diagnostics[0].step).toBe(3);
    expect(second.diagnostics.at(-1)!.step).toBe(6);

    // resuming with other settings says which ones changed
    const changed = tinyConfig({ steps: 7 });
    await trainAnoSeg({ data, out, config: { ...changed, lr: changed.lr * 2 }, progress: false });
    expect(await readLog(out)).toContain('warning: the checkpoint was trained with other settings (lr); the new ones');

    // --no-resume starts over
    await trainAnoSeg({ data, out, config: tinyConfig({ steps: 3 }), resume: false, progress: false });
    expect((await readLog(out)).match(/resumed from/g)).toHaveLength(2);
  });

  it('stops on SIGINT after the current step, saves a checkpoint and resumes from it', async () => {
    const out = outDir('sigint');
    const before = new Set(process.listeners('SIGINT'));
    // deliver the signal deterministically: while step 3's diagnostics are logged, call the trainer's handler
    const info = RunLog.prototype.info;
    const spy = vi.spyOn(RunLog.prototype, 'info').mockImplementation(function (this: RunLog, message: string) {
      if (message.startsWith('step 3:')) for (const l of process.listeners('SIGINT')) if (!before.has(l)) l('SIGINT');
      info.call(this, message);
    });
    try {
      await expect(trainAnoSeg({ data, out, config: tinyConfig(), progress: false })).rejects.toThrow(
        `training interrupted at step 3; checkpoint saved in ${path.join(out, 'checkpoint.safetensors')}`,
      );
    } finally {
      spy.mockRestore();
    }
    expect(process.listeners('SIGINT').filter((l) => !before.has(l))).toHaveLength(0);
    expect(existsSync(path.join(out, 'model.safetensors'))).toBe(false);
    expect(await readLog(out)).toMatch(/stopped by signal at step 3/);
    const r = await trainAnoSeg({ data, out, config: tinyConfig(), progress: false });
    expect(r.steps).toBe(6);
    expect(await readLog(out)).toMatch(/resumed from .* at step 3/);
  });

  it('refuses a checkpoint trained with another architecture', async () => {
    const out = outDir('other-arch');
    await mkdir(out, { recursive: true });
    await copyFile(path.join(firstRun, 'checkpoint.safetensors'), path.join(out, 'checkpoint.safetensors'));
    const cfg = tinyConfig({ steps: 9 });
    cfg.arch.width = 0.25;
    await expect(trainAnoSeg({ data, out, config: cfg, progress: false })).rejects.toThrow(
      `${path.join(out, 'checkpoint.safetensors')} was trained with another architecture`,
    );
    const noCoords = tinyConfig({ steps: 9 });
    noCoords.arch.coordChannels = false;
    await expect(trainAnoSeg({ data, out, config: noCoords, progress: false })).rejects.toThrow(/another architecture/);
  });

  it('a truncated checkpoint gives an error naming the file and leaves the previous model intact', async () => {
    const out = outDir('corrupt');
    await mkdir(out, { recursive: true });
    for (const f of ['checkpoint.safetensors', 'model.safetensors']) {
      await copyFile(path.join(firstRun, f), path.join(out, f));
    }
    const ckpt = path.join(out, 'checkpoint.safetensors');
    const model = path.join(out, 'model.safetensors');
    const modelBytes = await readFile(model);
    await truncate(ckpt, Math.floor((await stat(ckpt)).size / 2));
    const err = await trainAnoSeg({ data, out, config: tinyConfig({ steps: 9 }), progress: false }).catch(
      (e: Error) => e,
    );
    expect(err).toBeInstanceOf(Error);
    expect((err as Error).message).toContain(ckpt);
    expect((err as Error).message).toMatch(/truncated|beyond the data|exceeds/);
    expect(Buffer.compare(await readFile(model), modelBytes)).toBe(0);

    // a file that is not a checkpoint at all (the model file) is refused too
    await copyFile(model, ckpt);
    await expect(trainAnoSeg({ data, out, config: tinyConfig({ steps: 9 }), progress: false })).rejects.toThrow(
      `${ckpt}: not an AnoSeg training checkpoint`,
    );
    expect(Buffer.compare(await readFile(model), modelBytes)).toBe(0);
  });

  it('keeps the early snapshot as a second model, equal to a run stopped there, when the run reaches twice its step', async () => {
    const out = outDir('early');
    // constant learning rate (paper preset): a 3-step run is the first 3 steps of a 6-step one
    const r = await trainAnoSeg({ data, out, config: tinyConfig({ earlySnapshotStep: 3 }), progress: false });
    expect(r.earlyModelPath).toBe(path.join(out, 'early-model.safetensors'));
    const short = await trainAnoSeg({
      data,
      out: outDir('early-short'),
      config: tinyConfig({ steps: 3 }),
      progress: false,
    });
    expect(short.earlyModelPath).toBeNull();
    const early = await loadSafetensors(r.earlyModelPath!);
    const stopped = await loadSafetensors(short.modelPath);
    const final = await loadSafetensors(r.modelPath);
    try {
      // weights, the re-estimated BatchNorm statistics and their batch counters alike
      expectSameValues(values(early.tensors), values(stopped.tensors), 'early model');
      // training-mode passes: 3 steps and 2 re-estimation batches, none while the thresholds were chosen
      expect(Number(early.tensors.get('generator.encoder.layer1.0.bn1.num_batches_tracked')!.toArray()[0])).toBe(5);
      const meta = (m: Record<string, string>): { facts: Record<string, unknown>; imageThreshold: number } =>
        JSON.parse(m.meta) as { facts: Record<string, unknown>; imageThreshold: number };
      expect(meta(early.metadata).facts).toMatchObject({ steps: 3, snapshotOf: 6 });
      expect(Number.isFinite(meta(early.metadata).imageThreshold)).toBe(true);
      const name = 'generator.encoder.layer1.0.conv1.weight';
      expect(final.tensors.has(name)).toBe(true);
      expect(Buffer.from(final.tensors.get(name)!.toArray().buffer)).not.toEqual(
        Buffer.from(early.tensors.get(name)!.toArray().buffer),
      );
    } finally {
      for (const f of [early, stopped, final]) for (const t of f.tensors.values()) t.dispose();
    }
    expect(await readLog(out)).toMatch(/early snapshot of step 3 kept in/);

    // a run that ends before twice the snapshot's step keeps no early model; a fresh run removes an old snapshot
    const r5 = await trainAnoSeg({
      data,
      out,
      config: tinyConfig({ steps: 5, earlySnapshotStep: 3 }),
      resume: false,
      progress: false,
    });
    expect(r5.earlyModelPath).toBeNull();
    expect(await readLog(out)).toMatch(/no early model: the run ended at step 5, before twice the snapshot's 3/);
    await trainAnoSeg({ data, out, config: tinyConfig({ steps: 3 }), resume: false, progress: false });
    expect(existsSync(path.join(out, 'early-snapshot.safetensors'))).toBe(false);
  });

  it("puts the reconstruction error on the map's scale when the score is 'standardised', and keeps it raw otherwise", async () => {
    const score = async (name: string, o: Partial<AnoSegTrainConfig>): Promise<ScoreOptions> => {
      const r = await trainAnoSeg({ data, out: outDir(name), config: tinyConfig({ steps: 3, ...o }), progress: false });
      const f = await loadSafetensors(r.modelPath);
      for (const t of f.tensors.values()) t.dispose();
      return (JSON.parse(f.metadata.meta) as { score: ScoreOptions }).score;
    };
    // a config written before the settings: the raw weight and the image score of the pixel score
    const before = tinyConfig({ reconstructionScoreWeight: 2 });
    delete before.reconstructionScoreScale;
    delete before.imageScore;
    delete before.reconstructionScoreBlur;
    expect(await score('score-old', before)).toEqual({
      sigma: 4,
      reconstructionWeight: 2,
      imageScore: 'map+reconstruction',
      reconstructionBlur: 2,
    });
    const out = 'score-standardised';
    const s = await score(out, {
      reconstructionScoreWeight: 2,
      reconstructionScoreScale: 'standardised',
      imageScore: 'map',
    });
    expect(s.imageScore).toBe('map');
    // the log states both spreads; the saved weight is 2 x their ratio
    const m = /x(\S+) = 2 x std\(1 - map\) (\S+) \/ std\(error\) (\S+) on the held-out good images/.exec(
      await readLog(outDir(out)),
    );
    expect(m).not.toBeNull();
    const [weight, mapStd, errorStd] = m!.slice(1).map(Number);
    expect(s.reconstructionWeight).toBeCloseTo(weight, 4);
    expect(s.reconstructionWeight / ((2 * mapStd) / errorStd)).toBeCloseTo(1, 3);
    expect(s.reconstructionWeight).not.toBeCloseTo(2, 2);
    // without a reconstruction decoder there is no error to scale: the weight stays as given, and the log says why
    const plain = tinyConfig({ reconstructionScoreWeight: 2, reconstructionScoreScale: 'standardised' });
    plain.arch = { ...plain.arch, reconstruction: false };
    plain.loss = { ...plain.loss, fakePair: 'input' };
    expect((await score('score-no-decoder', plain)).reconstructionWeight).toBe(2);
    expect(await readLog(outDir('score-no-decoder'))).toMatch(
      /reconstruction error x2 as given: no reconstruction decoder/,
    );
  });

  it('re-estimates BatchNorm statistics on batches with the configured share of synthetic anomalies', async () => {
    const run = async (name: string, share: number | undefined): Promise<Values> => {
      const config = tinyConfig({ steps: 3, evalEvery: 3, bnRecalibrationAnomalies: share });
      if (share === undefined) delete config.bnRecalibrationAnomalies;
      const r = await trainAnoSeg({ data, out: outDir(name), config, progress: false });
      const f = await loadSafetensors(r.modelPath);
      const v = values(f.tensors);
      for (const t of f.tensors.values()) t.dispose();
      return v;
    };
    // a config written before the setting re-estimates on training batches (anomalyFraction 0.5 in this preset)
    const old = await run('bn-old', undefined);
    expectSameValues(await run('bn-half', 0.5), old, 'share 0.5');
    const all = await run('bn-all', 1);
    const weight = 'generator.encoder.layer1.0.conv1.weight';
    const mean = 'generator.encoder.layer1.0.bn1.running_mean';
    expect(Buffer.from(all.get(weight)!.buffer)).toEqual(Buffer.from(old.get(weight)!.buffer));
    expect(Buffer.from(all.get(mean)!.buffer)).not.toEqual(Buffer.from(old.get(mean)!.buffer));
  });

  it('skips and logs a corrupt training image and trains on the rest', async () => {
    const dir = path.join(root, 'with-corrupt');
    await mkdir(dir, { recursive: true });
    for (let i = 0; i < 5; i++) {
      const name = `${String(i).padStart(3, '0')}.png`;
      await copyFile(path.join(data, 'train', 'good', name), path.join(dir, name));
    }
    await writeFile(path.join(dir, '002b.png'), Buffer.from([0x89, 0x50, 0x4e, 0x47, 1, 2, 3]));
    const out = outDir('corrupt-image');
    const r = await trainAnoSeg({ data: dir, out, config: tinyConfig({ steps: 2, evalEvery: 2 }), progress: false });
    expect(r.steps).toBe(2);
    const log = await readLog(out);
    expect(log).toContain(`skipped unreadable training image ${path.join(dir, '002b.png')}`);
    expect(log).toMatch(/4 training, 1 validation images/);
    // a plain folder has no test split: no real test diagnostics
    expect(r.diagnostics.every((d) => d.testPixelAuroc === null)).toBe(true);
  });

  it('fails clearly on a missing or empty data folder', async () => {
    await expect(
      trainAnoSeg({ data: path.join(root, 'nope'), out: outDir('missing'), config: tinyConfig(), progress: false }),
    ).rejects.toThrow(`data folder not found: ${path.join(root, 'nope')}`);
    const empty = path.join(root, 'empty');
    await mkdir(empty, { recursive: true });
    await expect(
      trainAnoSeg({ data: empty, out: outDir('empty'), config: tinyConfig(), progress: false }),
    ).rejects.toThrow(/no images .* in .*empty/);
    const onlyBroken = path.join(root, 'only-broken');
    await mkdir(onlyBroken, { recursive: true });
    await writeFile(path.join(onlyBroken, 'a.png'), 'not an image');
    await expect(
      trainAnoSeg({ data: onlyBroken, out: outDir('only-broken'), config: tinyConfig(), progress: false }),
    ).rejects.toThrow(/could be read/);
  });

  it('trains on test splits without masks, with partial masks and in the MVTec 3D-AD layout', async () => {
    const cfg = tinyConfig({ steps: 3, evalEvery: 3, checkpointEvery: 3, bnRecalibrationBatches: 0 });
    // No masks at all: image AUROC over every test image, no pixel AUROC.
    const none = path.join(root, 'no-masks');
    await cp(data, none, { recursive: true });
    await rm(path.join(none, 'ground_truth'), { recursive: true });
    const a = await trainAnoSeg({ data: none, out: outDir('no-masks'), config: cfg, progress: false });
    expect(a.diagnostics.length).toBeGreaterThan(0);
    for (const d of a.diagnostics) {
      expect(d.testPixelAuroc).toBeNull();
      expect(d.testImageAuroc).not.toBeNull();
    }
    expect(await readLog(outDir('no-masks'))).toMatch(
      /real test diagnostics on 5 test images \(3 defective, 0 of them with masks; .*no defective image has a mask/,
    );
    // One mask left: pixel AUROC over the 2 good images and that one.
    const partial = path.join(root, 'partial-masks');
    await cp(data, partial, { recursive: true });
    const gt = path.join(partial, 'ground_truth');
    const kept = (await readdir(gt)).sort()[0];
    for (const d of await readdir(gt)) if (d !== kept) await rm(path.join(gt, d), { recursive: true });
    const b = await trainAnoSeg({ data: partial, out: outDir('partial-masks'), config: cfg, progress: false });
    for (const d of b.diagnostics) {
      expect(d.testPixelAuroc).not.toBeNull();
      expect(d.testImageAuroc).not.toBeNull();
    }
    expect(await readLog(outDir('partial-masks'))).toMatch(
      /3 defective, 1 of them with masks; pixel AUROC over the 3 images with pixel ground truth/,
    );
    // MVTec 3D-AD: <split>/<type>/rgb images, <split>/<type>/gt masks of the same name.
    const d3 = path.join(root, 'mvtec3d');
    for (const split of ['train', 'test']) {
      for (const type of await readdir(path.join(data, split))) {
        for (const f of await readdir(path.join(data, split, type))) {
          await mkdir(path.join(d3, split, type, 'rgb'), { recursive: true });
          await copyFile(path.join(data, split, type, f), path.join(d3, split, type, 'rgb', f));
          const mask = path.join(data, 'ground_truth', type, f.replace('.png', '_mask.png'));
          if (existsSync(mask)) {
            await mkdir(path.join(d3, split, type, 'gt'), { recursive: true });
            await copyFile(mask, path.join(d3, split, type, 'gt', f));
          }
        }
      }
    }
    const c = await trainAnoSeg({ data: d3, out: outDir('mvtec3d'), config: cfg, progress: false });
    for (const d of c.diagnostics) expect(d.testPixelAuroc).not.toBeNull();
    const log = await readLog(outDir('mvtec3d'));
    expect(log).toMatch(/11 training, 1 validation images/);
    expect(log).toMatch(/real test diagnostics on 5 test images \(3 defective, 3 of them with masks/);
  });

  it('trains on crops (adversarial term included) and predicts whole images at the full resolution', async () => {
    const out = outDir('crops');
    const cfg = tinyConfig({ arch: { ...tinyConfig().arch, resolution: 64 }, trainCrop: 32, steps: 3 });
    const r = await trainAnoSeg({ data, out, config: cfg, progress: false });
    expect(r.steps).toBe(3);
    const predictor = await loadPredictor(r.modelPath);
    try {
      expect(predictor.info.resolution).toBe(64);
      const [p] = await predictor.predict([createImage(3, 48, 40, 0.5)]);
      expect([p.map.height, p.map.width]).toEqual([48, 40]);
      expect(Number.isFinite(p.score)).toBe(true);
    } finally {
      predictor.dispose();
    }
    const saved = JSON.parse(await readFile(path.join(out, 'config.json'), 'utf8')) as AnoSegTrainConfig;
    expect(saved.trainCrop).toBe(32);
  });

  it('with tiling trains on the tiles of elongated images, split by image, and predicts each tile', async () => {
    // 32 x 80 images (ratio 2.5: 3 tiles of about 32 x 27), a bright bar as the test defect
    const tiled = path.join(root, 'tiled-data');
    const rng = new Rng(8);
    const part = (bar: boolean) => {
      const img = createImage(3, 32, 80);
      for (let i = 0; i < img.data.length; i++) img.data[i] = 0.4 + 0.1 * rng.next();
      if (bar) for (let c = 0; c < 3; c++) for (let x = 10; x < 30; x++) img.data[c * 32 * 80 + 15 * 80 + x] = 1;
      return img;
    };
    for (let k = 0; k < 20; k++)
      await saveImagePng(path.join(tiled, 'train/good', `${String(k).padStart(2, '0')}.png`), part(false));
    await saveImagePng(path.join(tiled, 'test/good/0.png'), part(false));
    const mask = createImage(1, 32, 80);
    for (let x = 10; x < 30; x++) mask.data[15 * 80 + x] = 1;
    for (let k = 0; k < 2; k++) {
      await saveImagePng(path.join(tiled, 'test/bar', `${k}.png`), part(true));
      await saveImagePng(path.join(tiled, 'ground_truth/bar', `${k}_mask.png`), mask);
    }
    const out = outDir('tiled');
    const r = await trainAnoSeg({
      data: tiled,
      out,
      config: tinyConfig({ tiling: 'long-side', steps: 3 }),
      progress: false,
    });
    const log = await readLog(out);
    // 20 images of 3 tiles; the held-out images (splitValidation of 20: two) with all of their tiles
    expect(log).toMatch(/54 training, 6 validation images/);
    // the bar (x 10-29) lies in the first two tiles of each defective image: 4 defective tiles
    expect(log).toMatch(/real test diagnostics on 9 test images \(4 defective, 4 of them with masks/);
    const predictor = await loadPredictor(r.modelPath);
    try {
      expect(predictor.info.tiling).toBe('long-side');
      const img = part(true);
      const [p] = await predictor.predict([img]);
      expect([p.map.height, p.map.width]).toEqual([32, 80]);
      // the same as each tile predicted alone (a near-square tile is its own single tile), put back in place
      const rects = tileRects(32, 80, 'long-side');
      const alone = await predictor.predict(cropTiles(img, rects));
      const stitched = stitchTiles(
        alone.map((a) => a.map),
        rects,
        32,
        80,
      );
      expect(p.score).toBeCloseTo(Math.max(...alone.map((a) => a.score)), 5);
      p.map.data.forEach((v, i) => expect(Math.abs(v - stitched.data[i])).toBeLessThan(1e-5));
      // The image threshold: the held-out images' tiles and their synthetic anomalies, scored again, and chosen on
      // image-level scores (each image by its highest tile), not per tile.
      const cfg = tinyConfig({ tiling: 'long-side' });
      const paths = (await openTrainingData(tiled)).train;
      const loaded = await loadTrainingImages(paths, 32, cfg.aspect, 'auto', undefined, 'long-side');
      const { validation, validationTiles } = splitTrainingImages(loaded, cfg.validationFraction);
      expect(validationTiles).toEqual([3, 3]);
      const val = syntheticValidationSet(validation, new Rng(cfg.seed + 1_000_003), cfg.anomaly, validationTiles);
      const preds = await predictor.predict(val.images);
      const scored = { maps: preds.map((q) => q.map), scores: preds.map((q) => q.score) };
      const masks = val.masks.map((m, i) => (val.anomalous[i] ? m : null));
      const perImage = thresholdsFromValidation(scored, masks, val.tiles);
      const perTile = thresholdsFromValidation(scored, masks);
      expect(predictor.info.imageThreshold).toBeCloseTo(perImage.imageThreshold, 5);
      // the log's synthetic-validation image AUROC is the per-image one (per tile it differs here)
      const logged = Number(/synthetic validation image AUROC ([\d.]+)/.exec(await readLog(out))?.[1]);
      expect(logged).toBeCloseTo(perImage.imageAuroc, 3);
      expect(Math.abs(perImage.imageAuroc - perTile.imageAuroc)).toBeGreaterThan(0.01);
    } finally {
      predictor.dispose();
    }
    const saved = JSON.parse(await readFile(path.join(out, 'config.json'), 'utf8')) as AnoSegTrainConfig;
    expect(saved.tiling).toBe('long-side');

    // With placement 'seams' the synthetic validation anomalies may cross the validation tiles' seams: the model's
    // threshold is the one recomputed with them, not without.
    const seamsConfig = tinyConfig({ tiling: 'long-side', steps: 3 });
    seamsConfig.anomaly = { ...seamsConfig.anomaly, placement: 'seams' };
    const seamsOut = outDir('tiled-seams');
    const seamsRun = await trainAnoSeg({ data: tiled, out: seamsOut, config: seamsConfig, progress: false });
    const seamsPredictor = await loadPredictor(seamsRun.modelPath);
    try {
      const paths = (await openTrainingData(tiled)).train;
      const loaded = await loadTrainingImages(paths, 32, seamsConfig.aspect, 'auto', undefined, 'long-side');
      const split = splitTrainingImages(loaded, seamsConfig.validationFraction);
      expect(split.validationSeams.map((s) => [s.left, s.right])).toEqual([
        [false, true],
        [true, true],
        [true, false],
        [false, true],
        [true, true],
        [true, false],
      ]);
      const threshold = async (seams?: TileSeams[]) => {
        const val = syntheticValidationSet(
          split.validation,
          new Rng(seamsConfig.seed + 1_000_003),
          seamsConfig.anomaly,
          split.validationTiles,
          seams,
        );
        const preds = await seamsPredictor.predict(val.images);
        const scored = { maps: preds.map((q) => q.map), scores: preds.map((q) => q.score) };
        return thresholdsFromValidation(
          scored,
          val.masks.map((m, i) => (val.anomalous[i] ? m : null)),
          val.tiles,
        ).imageThreshold;
      };
      const withSeams = await threshold(split.validationSeams);
      expect(seamsPredictor.info.imageThreshold).toBeCloseTo(withSeams, 5);
      expect(Math.abs(withSeams - (await threshold()))).toBeGreaterThan(1e-4);
    } finally {
      seamsPredictor.dispose();
    }
  });

  it('resumes a spectrally normalised discriminator with its power-iteration vectors u (checkpointed buffers)', async () => {
    const out = outDir('spectral-resume');
    const config = (steps: number): AnoSegTrainConfig => tinyConfig({ steps, adversarial: { spectralNorm: true } });
    await trainAnoSeg({ data, out, config: config(3), progress: false });
    const ckpt = await loadSafetensors(path.join(out, 'checkpoint.safetensors'));
    const savedU = new Map<string, TypedData>();
    for (const [k, t] of ckpt.tensors) {
      if (k.startsWith('discriminator.') && k.endsWith('.weight_u'))
        savedU.set(k.slice('discriminator.'.length), t.toArray());
      t.dispose();
    }
    expect(savedU.size).toBeGreaterThan(0);
    expect(savedU.has('head.weight_u')).toBe(true);
    // the vectors a run of this seed starts from (as createNets makes them: generator, then discriminator) are
    // not the saved ones: the power iteration moved them, so a resume that dropped them would be seen below
    manualSeed(config(3).seed);
    const freshNets = [
      new AnoSegGenerator(config(3).arch),
      anoSegDiscriminator(config(3).arch, 32, { spectralNorm: true }),
    ];
    const freshU = values(freshNets[1].stateDict());
    for (const n of freshNets) n.dispose();
    // (the head's u has one element, ±1 whatever the iteration does)
    const asArray = (v: TypedData): number[] => Array.from(v as Float32Array);
    for (const [k, v] of savedU) if (v.length > 1) expect(asArray(v), k).not.toEqual(asArray(freshU.get(k)!));

    let seen: Values | undefined;
    const discForward = Discriminator.prototype.forward;
    const spy = vi.spyOn(Discriminator.prototype, 'forward').mockImplementation(function (this: Discriminator, x) {
      seen ??= values(this.stateDict());
      return discForward.call(this, x);
    });
    try {
      const r = await trainAnoSeg({ data, out, config: config(5), progress: false });
      expect(r.steps).toBe(5);
    } finally {
      spy.mockRestore();
    }
    const seenU = new Map([...seen!].filter(([k]) => k.endsWith('.weight_u')));
    expectSameValues(seenU, savedU, 'discriminator u');
    // switching spectral normalisation on or off is another discriminator: refused, naming it
    await expect(trainAnoSeg({ data, out, config: tinyConfig({ steps: 7 }), progress: false })).rejects.toThrow(
      /another architecture \(discriminator spectral norm true vs false\)/,
    );
  });

  it('trains with every adversarial stabiliser on: finite losses, balance figures in the log and on the curves page', async () => {
    const out = outDir('stabilisers');
    const config = tinyConfig({
      steps: 25,
      evalEvery: 25,
      checkpointEvery: 25,
      adversarialRampSteps: 5,
      bnRecalibrationBatches: 0,
      adversarial: {
        loss: 'hinge',
        spectralNorm: true,
        instanceNoise: 0.1,
        instanceNoiseSteps: 20,
        r1Weight: 1,
        dLr: 2,
        dLossFloor: 0.05,
        realPairs: 'normal',
      },
    });
    const r = await trainAnoSeg({ data, out, config, progress: false });
    expect(r.steps).toBe(25);
    const records = (await readFile(path.join(out, 'train.jsonl'), 'utf8'))
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    const loss = records.find((e) => e.event === 'loss')!;
    expect(loss).toBeDefined();
    for (const k of [
      'seg',
      'reconstruction',
      'adversarial',
      'discriminator',
      'total',
      'r1',
      'segGradNorm',
      'advGradNorm',
    ])
      expect(Number.isFinite(loss[k]), k).toBe(true);
    for (const k of ['dRealAccuracy', 'dFakeAccuracy', 'dUpdated']) {
      expect(loss[k] as number, k).toBeGreaterThanOrEqual(0);
      expect(loss[k] as number, k).toBeLessThanOrEqual(1);
    }
    expect(loss.advGradNorm as number).toBeGreaterThan(0);
    expect(loss.r1 as number).toBeGreaterThan(0);
    expect(await readLog(out)).toMatch(
      /D accuracy real \d\.\d\d \/ fake \d\.\d\d, D updated in \d+% of steps, gradient norm/,
    );
    const curves = await readFile(path.join(out, 'curves.html'), 'utf8');
    for (const title of ['Adversarial balance', 'Discriminator accuracy', 'Gradient norms at the map'])
      expect(curves).toContain(title);
    const saved = JSON.parse(await readFile(path.join(out, 'config.json'), 'utf8')) as AnoSegTrainConfig;
    expect(saved.adversarial).toEqual(config.adversarial);
    // the discriminator learns at twice the generator's rate
    const ckpt = await loadSafetensors(path.join(out, 'checkpoint.safetensors'));
    for (const t of ckpt.tensors.values()) t.dispose();
    expect(JSON.parse(ckpt.metadata.config ?? '{}')).toMatchObject({ adversarial: { dLr: 2 } });
  });

  it('starts the encoder from an --encoder-init backbone; a missing or other-width file is refused before the run folder exists', async () => {
    const backbone = FeatureBackbone.random(0.125, 5);
    const file = path.join(root, 'encoder-init.safetensors');
    await backbone.save(file);
    const wantLayer1 = backbone.stateDict().get('layer1.0.conv1.weight')!.toFloat32Array();
    backbone.dispose();
    // a learning rate too small to move the weights: the saved encoder is the backbone's
    const out = outDir('encoder-init');
    const r = await trainAnoSeg({
      data,
      out,
      config: tinyConfig({ steps: 1, evalEvery: 1, checkpointEvery: 1, lr: 1e-12, encoderInit: file }),
      progress: false,
    });
    expect(await readLog(out)).toContain(`encoder initialised from ${file}`);
    const { tensors } = await loadSafetensors(r.modelPath);
    const [name, saved] = [...tensors].find(([n]) => n.endsWith('encoder.layer1.0.conv1.weight'))!;
    const got = saved.toFloat32Array();
    const maxDiff = got.reduce((m, v, i) => Math.max(m, Math.abs(v - wantLayer1[i])), 0);
    expect(maxDiff, name).toBeLessThan(1e-6);
    for (const t of tensors.values()) t.dispose();

    const other = path.join(root, 'encoder-init-wide.safetensors');
    const wide = FeatureBackbone.random(0.25, 5);
    await wide.save(other);
    wide.dispose();
    const refused = outDir('encoder-init-refused');
    await expect(
      trainAnoSeg({ data, out: refused, config: tinyConfig({ encoderInit: other }), progress: false }),
    ).rejects.toThrow(`--encoder-init ${other}: the backbone has width 0.25, the model 0.125`);
    const missing = path.join(root, 'no-such-backbone.safetensors');
    await expect(
      trainAnoSeg({ data, out: refused, config: tinyConfig({ encoderInit: missing }), progress: false }),
    ).rejects.toThrow(missing);
    expect(existsSync(refused)).toBe(false);
  });

  it('rejects an invalid config before touching the disk', async () => {
    const out = outDir('invalid');
    await expect(trainAnoSeg({ data, out, config: tinyConfig({ batchSize: 1 }), progress: false })).rejects.toThrow(
      /batch size/,
    );
    expect(existsSync(out)).toBe(false);
  });
});

describe('scorePartSpreads', () => {
  it('equals the population standard deviations of 1 - map and of the error over every pixel (two-pass, float64)', async () => {
    manualSeed(5);
    const generator = new AnoSegGenerator({ ...presetConfig('cpu').arch, resolution: 32, width: 0.125 });
    generator.eval();
    const rng = new Rng(9);
    // 20 images: one full batch of 16 and a partial one
    const images = Array.from({ length: 20 }, () => {
      const im = createImage(3, 32, 32, 0);
      for (let i = 0; i < im.data.length; i++) im.data[i] = rng.next();
      return im;
    });
    const spreads = await scorePartSpreads(generator, images, 1);
    // the reference: the maps the score computes without and with the error, their difference is the error
    const anomaly = scoreBatch(generator, images, { sigma: 0, reconstructionWeight: 0, reconstructionBlur: 1 }).maps;
    const summed = scoreBatch(generator, images, { sigma: 0, reconstructionWeight: 1, reconstructionBlur: 1 }).maps;
    const std = (v: number[]): number => {
      const mean = v.reduce((a, b) => a + b, 0) / v.length;
      return Math.sqrt(v.reduce((a, b) => a + (b - mean) ** 2, 0) / v.length);
    };
    const mapValues = anomaly.flatMap((m) => [...m.data]);
    const errorValues = summed.flatMap((m, k) => [...m.data].map((v, i) => v - anomaly[k].data[i]));
    expect(spreads!.map / std(mapValues)).toBeCloseTo(1, 4);
    expect(spreads!.error / std(errorValues)).toBeCloseTo(1, 3);
    expect(await scorePartSpreads(generator, [], 1)).toBeNull();
    generator.dispose();
  });
});
