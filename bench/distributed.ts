/**
 * Data-parallel scaling on this machine: the same AnoSeg training (generator, L_Seg, Adam; global batch fixed) in
 * 1 process and in 2 processes x 1 libtorch thread each over the loopback (ProcessGroupGloo), with the share of a
 * step spent synchronising gradients. Runs test/distributed-worker.ts, the process of the equivalence test.
 *
 *   npm run bench:distributed [-- --res 64 --width 0.25 --batch 8 --steps 6 --rounds 3]
 */
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { loadSafetensors } from '../src/nn/index.js';
import { freePort } from '../src/cli/distributed.js';
import { DEFAULT_BUCKET_BYTES } from '../src/train/data-parallel.js';

const { values } = parseArgs({
  options: {
    res: { type: 'string', default: '64' },
    width: { type: 'string', default: '0.25' },
    batch: { type: 'string', default: '8' },
    steps: { type: 'string', default: '6' },
    rounds: { type: 'string', default: '3' },
  },
});
const repo = path.resolve(import.meta.dirname, '..');
const dir = await mkdtemp(path.join(os.tmpdir(), 'bench-distributed-'));

interface Figures {
  stepMs: number;
  commMs: number;
  allreduceMs: number;
  gradientMB: number;
}

/** Runs `world` worker processes (1 thread each); returns rank 0's figures. */
async function runGroup(world: number): Promise<Figures> {
  const port = await freePort();
  const files = Array.from({ length: world }, (_, r) => path.join(dir, `w${world}-r${r}.safetensors`));
  const exits = files.map(
    (file, rank) =>
      new Promise<void>((resolve, reject) => {
        const args = [String(rank), String(world), String(port), file, values.steps!, values.res!, values.width!];
        const child = spawn(
          process.execPath,
          ['--import', 'tsx', 'test/distributed-worker.ts', ...args, values.batch!, String(DEFAULT_BUCKET_BYTES)],
          { cwd: repo, env: { ...process.env, ANOSEG_THREADS: '1' }, stdio: ['ignore', 'inherit', 'inherit'] },
        );
        child.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`rank ${rank} exited with ${code}`))));
      }),
  );
  await Promise.all(exits);
  const { tensors, metadata } = await loadSafetensors(files[0]);
  for (const t of tensors.values()) t.dispose();
  return {
    stepMs: Number(metadata.stepMs),
    commMs: Number(metadata.commMs),
    allreduceMs: Number(metadata.allreduceMs ?? 0),
    gradientMB: Number(metadata.gradientMB ?? 0),
  };
}

try {
  const load = os.loadavg()[0];
  const rounds = Number(values.rounds);
  process.stdout.write(
    `AnoSeg generator (L_Seg, Adam), ${values.res} px, width x${values.width}, global batch ${values.batch}, ` +
      `${values.steps} steps (first left out), ${rounds} round(s) of 1 then 2 processes; ` +
      `${os.availableParallelism()} cores, load average ${load.toFixed(1)} at start\n`,
  );
  const ms = (x: number): string => `${x.toFixed(0)} ms`;
  const rows = [
    ['round', 'processes x threads', 'step (global batch)', 'images/s', 'speed-up', 'gradient sync (share)'],
  ];
  const results: { one: Figures; two: Figures }[] = [];
  // Rounds alternate the two set-ups, so that a change of the machine's load hits both alike.
  for (let k = 0; k < rounds; k++) {
    const one = await runGroup(1);
    const two = await runGroup(2);
    results.push({ one, two });
    const share = `${ms(two.commMs)} (${((100 * two.commMs) / two.stepMs).toFixed(1)}%)`;
    const imagesPerSecond = (f: Figures): string => ((1000 * Number(values.batch)) / f.stepMs).toFixed(2);
    rows.push([String(k + 1), '1 x 1', ms(one.stepMs), imagesPerSecond(one), '1.00', '-']);
    rows.push([
      String(k + 1),
      '2 x 1',
      ms(two.stepMs),
      imagesPerSecond(two),
      (one.stepMs / two.stepMs).toFixed(2),
      share,
    ]);
  }
  const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)));
  for (const r of rows) process.stdout.write(`${r.map((cell, c) => cell.padEnd(widths[c])).join('  ')}\n`);
  const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor((xs.length - 1) / 2)];
  const speedups = results.map((r) => r.one.stepMs / r.two.stepMs);
  const shares = results.map((r) => (100 * r.two.commMs) / r.two.stepMs);
  const last = results[results.length - 1].two;
  process.stdout.write(
    `median speed-up ${median(speedups).toFixed(2)} (range ${Math.min(...speedups).toFixed(2)}-${Math.max(...speedups).toFixed(2)}), ` +
      `median gradient-sync share ${median(shares).toFixed(1)}%\n` +
      `gradients ${last.gradientMB.toFixed(2)} MB per step; the allreduce alone (ranks in step) ` +
      `${median(results.map((r) => r.two.allreduceMs)).toFixed(1)} ms (median); the rest of the gradient sync is waiting ` +
      `for the slower rank, flattening and copying back\nload average ${os.loadavg()[0].toFixed(1)} at the end\n`,
  );
} finally {
  await rm(dir, { recursive: true, force: true });
}
