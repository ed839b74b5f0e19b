/**
 * Data-parallel training across processes on the loopback interface (libtorch's ProcessGroupGloo through the
 * addon): two ranks end with identical weights equal to one process averaging the gradients of the same two
 * half-batches; a group survives the death of a rank with a clear error and an intact checkpoint, and resumes.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { generateSyntheticDataset } from '../src/data/synthetic-dataset.js';
import { ProcessGroup, Tensor, resolveProcessGroup } from '../src/engine/index.js';
import { loadSafetensors } from '../src/nn/index.js';
import { freePort } from '../src/cli/distributed.js';
import { CHECKPOINT_FORMAT } from '../src/methods/anoseg/trainer.js';
import { runCli } from './run-cli.js';

const repo = path.resolve(import.meta.dirname, '..');
let root: string;
let data: string;

beforeAll(async () => {
  root = await mkdtemp(path.join(os.tmpdir(), 'anoseg-distributed-'));
  data = path.join(root, 'data');
  await generateSyntheticDataset(data, {
    seed: 5,
    size: 32,
    trainCount: 8,
    testGoodCount: 1,
    testDefectCount: 1,
    kind: 'texture',
  });
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

interface Run {
  child: ChildProcess;
  done: Promise<{ code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }>;
}

/** Runs a TypeScript entry of the repository in a new node process (1 libtorch thread). */
function run(script: string, args: string[], env: NodeJS.ProcessEnv = {}): Run {
  const child = spawn(process.execPath, ['--import', 'tsx', script, ...args], {
    cwd: repo,
    env: { ...process.env, ANOSEG_THREADS: '1', ...env },
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const done = new Promise<{ code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }>(
    (resolve) => child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr })),
  );
  return { child, done };
}

/** `anoseg launch --nproc 2 --threads 1 -- ARGS`, to its end. */
const launch2 = (args: string[]): Run['done'] =>
  run('src/cli/main.ts', ['launch', '--nproc', '2', '--threads', '1', '--', ...args]).done;

/** `anoseg train` of a tiny model on the test data set into `out`, checkpoints every 2 steps. */
const trainArgs = (out: string, steps: number): string[] => [
  'train',
  ...['--data', data, '--out', out, '--preset', 'paper', '--resolution', '32', '--width', '0.125'],
  ...['--batch', '4', '--steps', String(steps), '--checkpoint-every', '2', '--eval-every', '100000'],
];

/** Starts ranks 0 and 1 of a long run; returns once a checkpoint exists and a few more steps ran. */
async function startLongRun(out: string): Promise<[Run, Run]> {
  const port = await freePort();
  const rank = (r: number): Run =>
    run('src/cli/main.ts', [
      ...trainArgs(out, 100_000),
      ...['--world-size', '2', '--rank', String(r), '--master', `127.0.0.1:${port}`, '--dist-timeout', '20'],
    ]);
  const ranks: [Run, Run] = [rank(0), rank(1)];
  const ckpt = path.join(out, 'checkpoint.safetensors');
  const deadline = Date.now() + 60_000;
  while (!existsSync(ckpt) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200));
  expect(existsSync(ckpt)).toBe(true);
  await new Promise((r) => setTimeout(r, 1500)); // a few more steps, checkpoints among them
  return ranks;
}

function maxAbsDiff(a: Map<string, { toArray(): ArrayLike<number | bigint> }>, b: typeof a): number {
  let d = 0;
  expect([...a.keys()].sort()).toEqual([...b.keys()].sort());
  for (const [k, t] of a) {
    const x = t.toArray();
    const y = b.get(k)!.toArray();
    for (let i = 0; i < x.length; i++) d = Math.max(d, Math.abs(Number(x[i]) - Number(y[i])));
  }
  return d;
}

describe('process group settings', () => {
  it('reads torchrun variables, lets flags win, and names what is missing', () => {
    const env = { WORLD_SIZE: '4', RANK: '2', MASTER_ADDR: 'node-a', MASTER_PORT: '29500' };
    expect(resolveProcessGroup({}, env)).toEqual({ worldSize: 4, rank: 2, masterAddr: 'node-a', masterPort: 29500 });
    expect(resolveProcessGroup({ rank: 3, master: '[::1]:1234' }, env)).toMatchObject({
      rank: 3,
      masterAddr: '::1',
      masterPort: 1234,
    });
    expect(resolveProcessGroup({}, {})).toBeNull();
    expect(resolveProcessGroup({ worldSize: 1 }, {})).toBeNull();
    expect(() => resolveProcessGroup({ worldSize: 2 }, {})).toThrow(/needs the rank .* and the master/);
    expect(() => resolveProcessGroup({ worldSize: 2, rank: 2, master: 'h:1' }, {})).toThrow(/rank must be .*\[0, 1\]/);
    expect(() => resolveProcessGroup({ worldSize: 2, rank: 0, master: 'h' }, {})).toThrow(/HOST:PORT/);
  });

  it('anoseg train documents the group flags; an incomplete group or launch without a command is a usage error', async () => {
    const help = await runCli('train', '--help');
    expect(help.stdout).toMatch(/--world-size N .*WORLD_SIZE/);
    expect(help.stdout).toMatch(/--master HOST:PORT .*MASTER_ADDR:MASTER_PORT/);
    const incomplete = await runCli('train', '--data', root, '--world-size', '2');
    expect(incomplete.code).toBe(2);
    expect(incomplete.stderr).toMatch(/a group of 2 processes needs the rank \(--rank or RANK\) and the master/);
    const launch = await runCli('launch', '--nproc', '2');
    expect(launch.code).toBe(2);
    expect(launch.stderr).toContain('no command given after --');
    expect((await runCli('launch', '--help')).stdout).toMatch(/--nproc N .*processes/);
  });

  it('a group of one: collectives work in place; a failing one is a JS error; a closed group refuses', async () => {
    const g = ProcessGroup.join({ rank: 0, worldSize: 1, masterAddr: '127.0.0.1', masterPort: await freePort() });
    const t = Tensor.from([1, 2, 3]);
    const counts = Tensor.from(new Int32Array([1, 2]), [2]);
    try {
      g.allreduce([t], 'avg');
      g.broadcast([t], 0);
      g.barrier();
      expect(Array.from(t.toArray() as Float32Array)).toEqual([1, 2, 3]);
      expect(() => g.allreduce([counts], 'avg')).toThrow(/allreduce failed on rank 0 of 1: .*(cast|Long|Int)/);
      g.close();
      expect(() => g.allreduce([t])).toThrow(/closed/);
    } finally {
      t.dispose();
      counts.dispose();
    }
  });

  it('a collective that a hung peer never joins fails after the timeout', async () => {
    const port = await freePort();
    const args = ['1', '2', String(port), path.join(root, 'unused.safetensors'), '0', '32', '0.125', '4', '0', 'hang'];
    const peer = run('test/distributed-worker.ts', args);
    const g = ProcessGroup.join({
      rank: 0,
      worldSize: 2,
      masterAddr: '127.0.0.1',
      masterPort: port,
      timeoutSeconds: 2,
    });
    const t = Tensor.from([1, 2]);
    try {
      const t0 = performance.now();
      expect(() => g.allreduce([t])).toThrow(/allreduce failed on rank 0 of 2: .*[Tt]imed out/);
      expect(performance.now() - t0).toBeGreaterThan(1500);
      expect(performance.now() - t0).toBeLessThan(15_000);
    } finally {
      t.dispose();
      g.close();
      peer.child.kill('SIGKILL');
      await peer.done;
    }
  }, 60_000);

  it('a rank whose peers never come fails with an error after the timeout', async () => {
    const port = await freePort();
    const t0 = performance.now();
    expect(() =>
      ProcessGroup.join({ rank: 0, worldSize: 2, masterAddr: '127.0.0.1', masterPort: port, timeoutSeconds: 1 }),
    ).toThrow(/joining the process group failed/);
    expect(performance.now() - t0).toBeLessThan(15_000);
  });
});

describe('data-parallel training on 2 processes', () => {
  it('gives both ranks identical weights, equal to one process averaging the two half-batch gradients', async () => {
    const port = await freePort();
    const worker = 'test/distributed-worker.ts';
    const files = ['rank0', 'rank1', 'reference', 'single'].map((n) => path.join(root, `${n}.safetensors`));
    const runs = [
      run(worker, ['0', '2', String(port), files[0], '3']),
      run(worker, ['1', '2', String(port), files[1], '3']),
      run(worker, ['-1', '2', '0', files[2], '3']),
      // one process on the whole batch without averaging: the same weights only if the check cannot tell
      run(worker, ['-1', '1', '0', files[3], '3']),
    ];
    for (const r of await Promise.all(runs.map((x) => x.done))) expect(r.code, r.stderr).toBe(0);
    const [r0, r1, ref, single] = await Promise.all(files.map((f) => loadSafetensors(f)));
    expect(r0.tensors.size).toBeGreaterThan(50);
    expect(maxAbsDiff(r0.tensors, r1.tensors)).toBe(0);
    expect(maxAbsDiff(r0.tensors, ref.tensors)).toBeLessThan(1e-5);
    expect(maxAbsDiff(ref.tensors, single.tensors)).toBeGreaterThan(1e-4);
    for (const c of [r0, r1, ref, single]) for (const t of c.tensors.values()) t.dispose();
  }, 60_000);

  it('keeps both ranks identical with the adversarial term (the discriminator update goes through the hook too)', async () => {
    const port = await freePort();
    const files = [0, 1].map((r) => path.join(root, `adv-rank${r}.safetensors`));
    const runs = files.map((f, r) =>
      run('test/distributed-worker.ts', [String(r), '2', String(port), f, '3', '32', '0.125', '4', '65536', 'adv']),
    );
    for (const r of await Promise.all(runs.map((x) => x.done))) expect(r.code, r.stderr).toBe(0);
    const [r0, r1] = await Promise.all(files.map((f) => loadSafetensors(f)));
    const discriminatorTensors = [...r0.tensors.keys()].filter((k) => k.startsWith('discriminator.'));
    expect(discriminatorTensors.length).toBeGreaterThan(5);
    expect(maxAbsDiff(r0.tensors, r1.tensors)).toBe(0);
    for (const c of [r0, r1]) for (const t of c.tensors.values()) t.dispose();
  }, 60_000);

  it('a killed rank stops the other with a clear error, leaves the checkpoint loadable, the group resumes; detector too', async () => {
    const out = path.join(root, 'run');
    const ckpt = path.join(out, 'checkpoint.safetensors');
    const [r0, r1] = await startLongRun(out);
    r1.child.kill('SIGKILL');
    const killedAt = Date.now();
    const [e0, e1] = await Promise.all([r0.done, r1.done]);
    expect(e1.signal).toBe('SIGKILL');
    expect(e0.code).toBe(1);
    expect(Date.now() - killedAt).toBeLessThan(20_000);
    expect(e0.stderr).toMatch(/distributed training stopped \(rank 0 of 2, .* after \d+ steps\): .*rank .*died/s);
    const saved = await loadSafetensors(ckpt);
    expect(saved.metadata.format).toBe(CHECKPOINT_FORMAT);
    const step = Number(saved.metadata.step);
    expect(step).toBeGreaterThanOrEqual(2);
    expect(step % 2).toBe(0);
    for (const t of saved.tensors.values()) t.dispose();

    // the same command on every rank resumes: here through `anoseg launch`, 2 steps further
    const resumed = await launch2(trainArgs(out, step + 2));
    expect(resumed.code, resumed.stderr).toBe(0);
    expect(resumed.stdout).toMatch(/rank 1: \d+ steps done/);
    expect(resumed.stdout).toMatch(/model: /);
    const log = await readFile(path.join(out, 'train.log'), 'utf8');
    expect(log).toContain(`resumed from ${ckpt} at step ${step}`);
    expect(log).toContain('data-parallel over 2 processes: 2 images per step per process');
    const final = await loadSafetensors(ckpt);
    expect(Number(final.metadata.step)).toBe(step + 2);
    for (const t of final.tensors.values()) t.dispose();

    // the detector on top of that model, as a group of 2 as well
    const detOut = path.join(root, 'detector');
    const detector = await launch2([
      ...['train-detector', '--anoseg', path.join(out, 'model.safetensors'), '--data', data, '--out', detOut],
      ...['--steps', '2', '--batch', '4', '--anomaly-batch', '2', '--eval-every', '2'],
    ]);
    expect(detector.code, detector.stderr).toBe(0);
    expect(detector.stdout).toMatch(/rank 1: 2 steps done/);
    expect(existsSync(path.join(detOut, 'model.safetensors'))).toBe(true);
    expect(await readFile(path.join(detOut, 'train.log'), 'utf8')).toContain(
      'data-parallel over 2 processes: 3 images per step per process',
    );
  }, 180_000);

  it('Ctrl-C on one rank stops the whole group after the same step, with a checkpoint of that step', async () => {
    const out = path.join(root, 'interrupted');
    const [r0, r1] = await startLongRun(out);
    r1.child.kill('SIGINT');
    const [e0, e1] = await Promise.all([r0.done, r1.done]);
    const stepOf = (stderr: string): number => Number(/training interrupted at step (\d+)/.exec(stderr)?.[1]);
    expect(e0.code, e0.stderr).toBe(1);
    expect(e1.code, e1.stderr).toBe(1);
    expect(stepOf(e0.stderr)).toBeGreaterThan(0);
    expect(stepOf(e1.stderr)).toBe(stepOf(e0.stderr));
    const saved = await loadSafetensors(path.join(out, 'checkpoint.safetensors'));
    expect(Number(saved.metadata.step)).toBe(stepOf(e0.stderr));
    for (const t of saved.tensors.values()) t.dispose();
  }, 120_000);

  it('pre-training runs as a group of 2: rank 0 writes the backbone', async () => {
    const out = path.join(root, 'pretrain', 'backbone.safetensors');
    const r = await launch2([
      'pretrain',
      '--out',
      out,
      '--steps',
      '2',
      '--batch',
      '4',
      '--size',
      '32',
      '--width',
      '0.125',
    ]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/rank 1: 2 steps done/);
    expect(r.stdout).toContain(`backbone: ${out}`);
    const log = await readFile(path.join(root, 'pretrain', 'backbone.run', 'pretrain.log'), 'utf8');
    expect(log).toContain('data-parallel over 2 processes: 2 images per step per process');
  }, 120_000);
});
