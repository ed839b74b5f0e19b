/**
 * `anoseg export` end to end, in-process: a tiny PaDiM model exported, checked and written; the ONNX file then
 * drives predict and eval (through onnxruntime-node) with the libtorch model's scores; bad invocations.
 */
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { generateSyntheticDataset } from '../src/data/synthetic-dataset.js';
import { getNumThreads, setNumThreads } from '../src/engine/index.js';
import { runCli } from './run-cli.js';

const run = runCli;

let root: string;
let data: string;
let model: string;
const threadsBefore = getNumThreads();

beforeAll(async () => {
  setNumThreads(1);
  root = await mkdtemp(path.join(os.tmpdir(), 'anoseg-cli-export-'));
  data = path.join(root, 'data');
  await generateSyntheticDataset(data, {
    seed: 3,
    size: 32,
    trainCount: 8,
    testGoodCount: 2,
    testDefectCount: 2,
    kind: 'texture',
  });
  const fit = await run(
    'padim',
    '--data',
    data,
    '--out',
    path.join(root, 'padim'),
    '--backbone',
    'random',
    '--resolution',
    '32',
    '--dims',
    '20',
  );
  expect(fit.code, fit.stderr).toBe(0);
  model = path.join(root, 'padim', 'model.safetensors');
}, 60_000);

afterAll(async () => {
  setNumThreads(threadsBefore);
  await rm(root, { recursive: true, force: true });
});

const scores = async (dir: string): Promise<string[]> =>
  (await readFile(path.join(dir, 'scores.csv'), 'utf8'))
    .trim()
    .split('\n')
    .slice(1)
    .map((line) => line.replace(/,(\d+\.\d{4})\d*,/, ',$1,'));

describe('anoseg export', () => {
  it('writes the ONNX file after checking it against libtorch, and predict / eval run it', async () => {
    const r = await run('export', '--model', model, '--check', '3', '--seed', '2');
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/\(padim, 32 px, 3 ch\): \d+ nodes \(.*Conv \d+.*MatMul 1.*\)/);
    expect(r.stdout).toMatch(
      /check, onnxruntime-node vs libtorch, 3 seeded inputs: max \|map difference\| \d\.\d\de-\d+/,
    );
    expect(r.stdout).toMatch(/verdicts agree on 3\/3/);
    const onnx = model.replace(/\.safetensors$/, '.onnx');
    expect(r.stdout).toContain(`wrote ${onnx}`);
    expect(existsSync(onnx)).toBe(true);

    const test = path.join(data, 'test');
    const viaTorch = await run('predict', '--model', model, test, '--out', path.join(root, 'pred-torch'));
    const viaOnnx = await run('predict', '--model', onnx, test, '--out', path.join(root, 'pred-onnx'));
    expect([viaTorch.code, viaOnnx.code], viaOnnx.stderr).toEqual([0, 0]);
    expect(await scores(path.join(root, 'pred-onnx'))).toEqual(await scores(path.join(root, 'pred-torch')));

    const ev = await run('eval', '--model', onnx, '--data', data, '--out', path.join(root, 'eval-onnx'));
    expect(ev.code, ev.stderr).toBe(0);
    expect(existsSync(path.join(root, 'eval-onnx', 'metrics.json'))).toBe(true);
  });

  it('help comes from the option definitions; bad invocations fail naming the problem', async () => {
    const help = await run('export', '--help');
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/^anoseg export --model MODEL/);
    for (const option of ['--model MODEL', '--out FILE', '--check N', '--seed S'])
      expect(help.stdout).toContain(option);

    const missing = await run('export');
    expect(missing.code).toBe(2);
    expect(missing.stderr).toMatch(/--model is required/);
    expect((await run('export', '--model', model, '--check', '0')).stderr).toMatch(/invalid value for --check: 0/);

    const again = await run('export', '--model', model.replace(/\.safetensors$/, '.onnx'));
    expect(again.code).toBe(1);
    expect(again.stderr).toMatch(/model\.onnx is an ONNX model already/);
    const notModel = await run('export', '--model', path.join(data, 'test', 'good', '000.png'));
    expect(notModel.code).toBe(1);
    expect(notModel.stderr).toMatch(/000\.png: not a model file: .*it is a PNG image/);
  });
});
