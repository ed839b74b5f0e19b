/**
 * The `anoseg` command line end to end, in-process through main(argv): synth, train, predict, eval (from a model
 * and from map files), and the exit codes / messages of bad invocations. Tiny settings throughout.
 */
import { existsSync } from 'node:fs';
import { copyFile, cp, mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { generateSyntheticDataset, DEFECT_TYPES } from '../src/data/synthetic-dataset.js';
import { getNumThreads, setNumThreads } from '../src/engine/index.js';
import { loadImage } from '../src/image/io.js';
import { loadPredictor, modelFormat } from '../src/methods/load.js';
import { runCli } from './run-cli.js';

const run = runCli;

let root: string;
let data: string;
let runDir: string;
let model: string;
const threadsBefore = getNumThreads();

beforeAll(async () => {
  setNumThreads(1);
  root = await mkdtemp(path.join(os.tmpdir(), 'anoseg-cli-'));
  data = path.join(root, 'data');
  runDir = path.join(root, 'run');
  model = path.join(runDir, 'model.safetensors');
  await generateSyntheticDataset(data, {
    seed: 5,
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

const pixelAuroc = async (metricsFile: string): Promise<number> =>
  (JSON.parse(await readFile(metricsFile, 'utf8')) as { overall: { pixelAuroc: number } }).overall.pixelAuroc;

describe('anoseg CLI', () => {
  it('synth writes sample PNGs (anomaly | mask) at the requested resolution', async () => {
    const out = path.join(root, 'synth');
    const r = await run('synth', '--data', data, '--out', out, '--count', '3', '--resolution', '32', '--seed', '2');
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(`wrote 3 samples to ${out}`);
    expect((await readdir(out)).sort()).toEqual(['sample_000.png', 'sample_001.png', 'sample_002.png']);
    const sample = await loadImage(path.join(out, 'sample_000.png'));
    expect(sample.height).toBe(32);
    expect(sample.width).toBeGreaterThan(64); // two 32 px panels side by side
  });

  it('train with tiny settings through flags writes the model', async () => {
    const r = await run(
      'train',
      '--data',
      data,
      '--out',
      runDir,
      '--resolution',
      '32',
      '--width',
      '0.125',
      '--batch',
      '4',
      '--steps',
      '4',
      '--eval-every',
      '2',
      '--seed',
      '3',
      '--early-snapshot',
      '2',
    );
    expect(r.stderr).not.toMatch(/error/);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(`model: ${model}`);
    expect(r.stdout).toMatch(/steps 4, .*synthetic val pixel AUROC \d\.\d{3}, test pixel AUROC \d\.\d{3}/);
    // the default (recipe preset): PaDiM fitted beside AnoSeg and the two fused into the model to use
    // with --early-snapshot 2 the network of step 2 is a third member (its map only)
    expect(r.stdout).toContain(
      `model: ${path.join(runDir, 'ensemble.safetensors')} (AnoSeg + its early snapshot + PaDiM, the one to use`,
    );
    for (const f of [
      'model.safetensors',
      'checkpoint.safetensors',
      'train.log',
      'curves.html',
      'config.json',
      'ensemble.safetensors',
      'early-model.safetensors',
      path.join('padim', 'model.safetensors'),
    ]) {
      expect(existsSync(path.join(runDir, f)), f).toBe(true);
    }
    expect(await modelFormat(path.join(runDir, 'ensemble.safetensors'))).toBe('anoseg.ts/ensemble@1');
    const ensemble = await loadPredictor(path.join(runDir, 'ensemble.safetensors'));
    expect(ensemble.info.method).toBe('ensemble(anoseg+anoseg+padim)');
    ensemble.dispose();
    const cfg = JSON.parse(await readFile(path.join(runDir, 'config.json'), 'utf8')) as {
      arch: { resolution: number; width: number };
      batchSize: number;
      steps: number;
      evalEvery: number;
    };
    expect([cfg.arch.resolution, cfg.arch.width, cfg.batchSize, cfg.steps, cfg.evalEvery]).toEqual([
      32, 0.125, 4, 4, 2,
    ]);
  });

  it('predict on a folder writes map, heatmap, overlay per image and scores.csv', async () => {
    const input = path.join(data, 'test', 'scratch');
    const out = path.join(root, 'predict');
    const names = (await readdir(input)).map((f) => f.replace(/\.png$/, '')).sort();
    const r = await run('predict', '--model', model, '--out', out, input);
    expect(r.code).toBe(0);
    expect(r.stderr).toContain(`wrote ${names.length} prediction(s) to ${out}`);
    const files = await readdir(out);
    for (const n of names) {
      for (const suffix of ['_map.tiff', '_heatmap.png', '_overlay.png']) expect(files).toContain(`${n}${suffix}`);
      const map = await loadImage(path.join(out, `${n}_map.tiff`));
      expect([map.channels, map.height, map.width]).toEqual([1, 32, 32]);
      expect(map.data.every(Number.isFinite)).toBe(true);
      const heat = await loadImage(path.join(out, `${n}_heatmap.png`));
      expect([heat.channels, heat.height, heat.width]).toEqual([3, 32, 32]);
    }
    const csv = (await readFile(path.join(out, 'scores.csv'), 'utf8')).trim().split('\n');
    expect(csv[0]).toBe('path,score,verdict');
    expect(csv).toHaveLength(names.length + 1);
    for (const line of csv.slice(1)) expect(line).toMatch(/^".*\.png",-?\d+\.\d{6},(good|defective)$/);

    const both = await run(
      'predict',
      '--model',
      model,
      '--out',
      path.join(root, 'predict-png'),
      '--format',
      'png',
      input,
    );
    expect(both.code).toBe(0);
    const pngFiles = await readdir(path.join(root, 'predict-png'));
    expect(pngFiles).toContain(`${names[0]}_map.png`);
    expect(pngFiles).not.toContain(`${names[0]}_map.tiff`);
  });

  it('predict skips an unreadable image in a folder and says so', async () => {
    const input = path.join(root, 'mixed');
    await mkdir(input, { recursive: true });
    await copyFile(path.join(data, 'test', 'good', '000.png'), path.join(input, 'ok.png'));
    await writeFile(path.join(input, 'broken.png'), 'definitely not a png');
    const r = await run('predict', '--model', model, '--out', path.join(root, 'predict-mixed'), input);
    expect(r.code).toBe(0);
    expect(r.stderr).toContain(`skipped ${path.join(input, 'broken.png')}`);
    expect(r.stderr).toMatch(/wrote 1 prediction\(s\) .*1 unreadable file\(s\) skipped/);
  });

  it('predict fails when no input could be read, or a folder holds no image', async () => {
    const input = path.join(root, 'all-broken');
    await mkdir(input, { recursive: true });
    await writeFile(path.join(input, 'broken.png'), 'definitely not a png');
    const r = await run('predict', '--model', model, '--out', path.join(root, 'predict-broken'), input);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`skipped ${path.join(input, 'broken.png')}`);
    expect(r.stderr).toContain('none of the 1 input image(s) could be read');
    const empty = path.join(root, 'no-images');
    await mkdir(empty, { recursive: true });
    await writeFile(path.join(empty, 'notes.txt'), 'not an image');
    const e = await run('predict', '--model', model, '--out', path.join(root, 'predict-empty'), empty);
    expect(e.code).toBe(1);
    expect(e.stderr).toContain(`no images (.png, .jpg, .jpeg, .bmp, .tif, .tiff) in ${empty}`);
  });

  let modelPixelAuroc: number;

  it('eval --model writes metrics.json with a pixel AUROC in [0, 1] and a report', async () => {
    const out = path.join(root, 'eval-model');
    const r = await run('eval', '--data', data, '--model', model, '--out', out);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(`metrics: ${path.join(out, 'metrics.json')}`);
    expect(existsSync(path.join(out, 'report.html'))).toBe(true);
    modelPixelAuroc = await pixelAuroc(path.join(out, 'metrics.json'));
    expect(modelPixelAuroc).toBeGreaterThanOrEqual(0);
    expect(modelPixelAuroc).toBeLessThanOrEqual(1);
  });

  it('eval and predict --workers 2 run the model in a worker pool and give the in-thread figures', async () => {
    const metricsOf = async (dir: string) =>
      JSON.parse(await readFile(path.join(dir, 'metrics.json'), 'utf8')) as {
        overall: Record<string, unknown>;
        images: unknown[];
      };
    const out = path.join(root, 'eval-workers');
    const r = await run('eval', '--data', data, '--model', model, '--out', out, '--workers', '2');
    expect(r.code).toBe(0);
    const [pooled, inThread] = [await metricsOf(out), await metricsOf(path.join(root, 'eval-model'))];
    expect(pooled.images).toEqual(inThread.images);
    expect(pooled.overall).toEqual(inThread.overall);

    const input = path.join(data, 'test');
    const one = await run('predict', '--model', model, '--out', path.join(root, 'predict-1'), input);
    const two = await run('predict', '--model', model, '--out', path.join(root, 'predict-2'), '--workers', '2', input);
    expect([one.code, two.code]).toEqual([0, 0]);
    const csv = (dir: string) => readFile(path.join(root, dir, 'scores.csv'), 'utf8');
    expect(await csv('predict-2')).toBe(await csv('predict-1'));
    expect((await csv('predict-2')).trim().split('\n').length).toBeGreaterThan(4);
    expect(two.stdout).toBe(one.stdout);

    const mapsAndWorkers = await run('eval', '--data', data, '--maps', out, '--workers', '1');
    expect(mapsAndWorkers.code).toBe(2);
    expect(mapsAndWorkers.stderr).toContain('--workers applies to --model only');
    const reweighted = await run('eval', '--data', data, '--model', model, '--workers', '1', '--recon-weight', '1');
    expect(reweighted.code).toBe(2);
    expect(reweighted.stderr).toContain('not with --workers');
  });

  it('eval --maps on the maps written by predict scores the same pixel AUROC as eval --model', async () => {
    // predict writes DIR/<name>_map.tiff; eval --maps reads DIR/<defect>/<name>.tiff
    const maps = path.join(root, 'maps');
    for (const defect of ['good', ...DEFECT_TYPES]) {
      const predOut = path.join(root, 'predict-for-maps', defect);
      const r = await run('predict', '--model', model, '--out', predOut, path.join(data, 'test', defect));
      expect(r.code).toBe(0);
      await mkdir(path.join(maps, defect), { recursive: true });
      for (const f of await readdir(predOut)) {
        if (f.endsWith('_map.tiff'))
          await copyFile(path.join(predOut, f), path.join(maps, defect, f.replace('_map', '')));
      }
    }
    const out = path.join(root, 'eval-maps');
    const r = await run('eval', '--data', data, '--maps', maps, '--out', out);
    expect(r.code).toBe(0);
    expect(Math.abs((await pixelAuroc(path.join(out, 'metrics.json'))) - modelPixelAuroc)).toBeLessThanOrEqual(1e-6);
  });
});

describe('anoseg CLI: test sets without (all) masks', () => {
  it('train and eval on a category without masks, eval with partial masks and on plain folders', async () => {
    const bare = path.join(root, 'bare');
    await cp(data, bare, { recursive: true });
    await rm(path.join(bare, 'ground_truth'), { recursive: true });
    const runBare = path.join(root, 'run-bare');
    const tiny = ['--resolution', '32', '--width', '0.125', '--batch', '4', '--steps', '2', '--eval-every', '2'];
    const t = await run('train', '--data', bare, '--out', runBare, '--ensemble', 'none', ...tiny);
    expect(t.code).toBe(0);
    expect(t.stdout).toMatch(/test image AUROC/);
    expect(t.stdout).not.toMatch(/test pixel AUROC/);
    const modelBare = path.join(runBare, 'model.safetensors');

    const e = await run('eval', '--data', bare, '--model', modelBare, '--out', path.join(root, 'eval-bare'));
    expect(e.code).toBe(0);
    expect(e.stdout).toContain('test images: 5 (2 good, 3 defective, 0 of them with masks)');
    expect(e.stdout).toContain('pixel figures: not computed');
    expect(e.stdout).toMatch(/at the model's threshold [\d.]+: good parts \d passed \/ \d rejected/);
    const m = JSON.parse(await readFile(path.join(root, 'eval-bare', 'metrics.json'), 'utf8')) as {
      overall: { imageAuroc: number; pixelAuroc: number | null };
      verdicts: { source: string; overall: { goodPassed: number; goodRejected: number } };
    };
    expect(m.overall.pixelAuroc).toBeNull();
    expect(m.overall.imageAuroc).toBeGreaterThanOrEqual(0);
    expect(m.verdicts.source).toBe('model');
    expect(m.verdicts.overall.goodPassed + m.verdicts.overall.goodRejected).toBe(2);

    // One mask left: pixel figures over the 2 good images and that one.
    const partial = path.join(root, 'partial');
    await cp(data, partial, { recursive: true });
    const gt = path.join(partial, 'ground_truth');
    const kept = (await readdir(gt)).sort()[0];
    for (const d of await readdir(gt)) if (d !== kept) await rm(path.join(gt, d), { recursive: true });
    const p = await run('eval', '--data', partial, '--model', model, '--out', path.join(root, 'eval-partial'));
    expect(p.code).toBe(0);
    expect(p.stdout).toContain('pixel figures over 3 images with pixel ground truth (2 good + 1 defective with masks)');

    // anomalib-style folders, with a maps threshold given by hand.
    const types = (await readdir(path.join(data, 'test'))).filter((d) => d !== 'good');
    const f = await run(
      'eval',
      '--good',
      path.join(data, 'test', 'good'),
      ...types.flatMap((d) => ['--defective', path.join(data, 'test', d)]),
      '--masks',
      path.join(data, 'ground_truth'),
      '--model',
      model,
      '--image-threshold',
      '1e9',
      '--out',
      path.join(root, 'eval-folder'),
    );
    expect(f.code).toBe(0);
    expect(f.stdout).toContain('test images: 5 (2 good, 3 defective, 3 of them with masks)');
    expect(f.stdout).toContain('good parts 2 passed / 0 rejected, defective parts 0 rejected / 3 passed');

    const mixed = await run('eval', '--data', data, '--good', path.join(data, 'test', 'good'), '--model', model);
    expect(mixed.code).toBe(2);
    expect(mixed.stderr).toContain('give --data or --good/--defective, not both');
    const half = await run('eval', '--good', path.join(data, 'test', 'good'), '--model', model);
    expect(half.code).toBe(2);
    expect(half.stderr).toContain('needs --good DIR and at least one --defective DIR');
    const wrong = await run('eval', '--data', data, '--layout', 'mvtec3d', '--model', model);
    expect(wrong.code).toBe(1);
    expect(wrong.stderr).toMatch(/--layout mvtec3d: .* looks like MVTec AD/);
  });
});

describe('anoseg CLI: bad invocations', () => {
  it('unknown command -> exit 2 with the command list', async () => {
    const r = await run('frobnicate');
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("unknown command 'frobnicate'");
    expect(r.stderr).toContain('Commands:');
  });

  it('no command prints the help and fails; help succeeds', async () => {
    const none = await run();
    expect(none.code).toBe(1);
    expect(none.stdout).toContain('Usage: anoseg <command>');
    expect((await run('help')).code).toBe(0);
  });

  it('train without --data -> exit 2 and the usage text', async () => {
    const r = await run('train', '--steps', '3');
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('--data is required');
    expect(r.stderr).toContain('anoseg train --data DIR [--method anoseg|padim|patchcore] [options]');
  });

  it('train with an unknown switch or a bad value -> exit 2 naming it', async () => {
    const unknown = await run('train', '--data', data, '--epochs', '3');
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toMatch(/--epochs/);
    const bad = await run('train', '--data', data, '--steps', 'ten');
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('invalid value for --steps: ten');
    const shape = await run('train', '--data', data, '--mask-shape', 'star');
    expect(shape.code).toBe(2);
    expect(shape.stderr).toMatch(/invalid value for --mask-shape: star \(one of rect, perlin, gmm/);
  });

  it('train on a missing data folder -> non-zero exit naming the folder', async () => {
    const missing = path.join(root, 'no-such-data');
    const r = await run('train', '--data', missing, '--out', path.join(root, 'run-missing'), '--steps', '2');
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain(`data folder not found: ${missing}`);
  });

  it('predict on a missing path -> exit 2 with a message', async () => {
    const missing = path.join(root, 'nothing-here.png');
    const r = await run('predict', '--model', model, missing);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(`input not found: ${missing}`);
  });

  it('predict on a file that is not an image, or without inputs or model -> exit 2', async () => {
    const txt = path.join(root, 'notes.txt');
    await writeFile(txt, 'hello');
    const notImage = await run('predict', '--model', model, txt);
    expect(notImage.code).toBe(2);
    expect(notImage.stderr).toContain(`not an image file`);
    expect((await run('predict', '--model', model)).stderr).toContain('no input images given');
    expect((await run('predict', path.join(data, 'test', 'good'))).code).toBe(2);
  });

  it('predict with a file that is not a model -> exit 1 with a clear error', async () => {
    const fake = path.join(root, 'fake-model.safetensors');
    await writeFile(fake, JSON.stringify({ weights: [1, 2, 3] }));
    const r = await run('predict', '--model', fake, path.join(data, 'test', 'good'));
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`${fake}: not a model file`);
  });

  it('eval with both --model and --maps, or neither -> exit 2', async () => {
    const both = await run('eval', '--data', data, '--model', model, '--maps', path.join(root, 'maps'));
    expect(both.code).toBe(2);
    expect(both.stderr).toContain('give exactly one of --model or --maps');
    const neither = await run('eval', '--data', data);
    expect(neither.code).toBe(2);
    const noData = await run('eval', '--model', model);
    expect(noData.code).toBe(2);
    expect(noData.stderr).toContain('--data is required');
  });

  it('eval --maps on a folder without the maps names the missing file', async () => {
    const empty = path.join(root, 'empty-maps');
    await mkdir(empty, { recursive: true });
    const r = await run('eval', '--data', data, '--maps', empty, '--out', path.join(root, 'eval-empty'));
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/no anomaly map for .*looked for/s);
  });
});
