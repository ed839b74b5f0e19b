/**
 * The CLI's data-parallel parts: the group flags of `anoseg train` (one definition gives both the parser's options
 * and the help text) and `anoseg launch`, which starts N local processes of a command as one group.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import net from 'node:net';
import os from 'node:os';
import {
  DEFAULT_TIMEOUT_SECONDS,
  ProcessGroup,
  resolveProcessGroup,
  type ProcessGroupOptions,
} from '../engine/distributed.js';
import { DataParallel } from '../train/data-parallel.js';

/** name, value placeholder, help. */
const GROUP_FLAGS: readonly (readonly [string, string, string])[] = [
  ['world-size', 'N', 'processes in the data-parallel group (default WORLD_SIZE; 1 = no group)'],
  ['rank', 'R', "this process's rank, 0..N-1 (default RANK); rank 0 hosts the rendezvous and writes all files"],
  ['master', 'HOST:PORT', "rank 0's address, the same on every rank (default MASTER_ADDR:MASTER_PORT)"],
  [
    'dist-timeout',
    'S',
    `seconds a rank waits for the others to join or to take part in a step (default ${DEFAULT_TIMEOUT_SECONDS})`,
  ],
];

export const GROUP_OPTIONS: Record<string, { type: 'string' }> = Object.fromEntries(
  GROUP_FLAGS.map(([name]) => [name, { type: 'string' as const }]),
);

export const GROUP_USAGE = GROUP_FLAGS.map(([name, arg, help]) => `  --${`${name} ${arg}`.padEnd(20)}${help}`).join(
  '\n',
);

/** The group described by the flags and environment, or null for a single process; throws a message on misuse. */
export function groupFromArgs(
  v: Record<string, string | boolean | undefined>,
  env: NodeJS.ProcessEnv = process.env,
): ProcessGroupOptions | null {
  const number = (name: string): number | undefined => {
    const s = v[name];
    if (s === undefined) return undefined;
    const n = Number(s);
    if (typeof s !== 'string' || s.trim() === '' || !Number.isFinite(n))
      throw new Error(`invalid value for --${name}: ${String(s)}`);
    return n;
  };
  return resolveProcessGroup(
    {
      worldSize: number('world-size'),
      rank: number('rank'),
      master: typeof v.master === 'string' ? v.master : undefined,
      timeoutSeconds: number('dist-timeout'),
    },
    env,
  );
}

export const LAUNCH_USAGE = `anoseg launch --nproc N [--master-port P] [--threads T] -- COMMAND [options]

Starts N processes of 'anoseg COMMAND [options]' on this machine as one data-parallel group (as torchrun does: each
gets WORLD_SIZE, RANK, MASTER_ADDR=127.0.0.1 and MASTER_PORT) and splits the cores between them (ANOSEG_THREADS).
Example: anoseg launch --nproc 2 -- train --data DIR --out runs/x
  --nproc N          processes (default 2)
  --master-port P    rendezvous port (default: a free one)
  --threads T        libtorch threads per process (default: cores / N, at least 1)
When a process fails, the others are stopped (SIGTERM; a training rank saves nothing then: the last checkpoint
stays as it was); exits with the first failing process's status, else 0.`;

export const LAUNCH_OPTIONS = {
  nproc: { type: 'string' },
  'master-port': { type: 'string' },
  threads: { type: 'string' },
} as const;

/** A TCP port that was free on the loopback a moment ago (for a local rendezvous). */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

export interface LaunchOptions {
  nproc: number;
  /** The arguments of the command each process runs (e.g. ['train', '--data', ...]). */
  args: string[];
  masterPort?: number;
  threads?: number;
  /** How to start the CLI: node's arguments before the command (default: this process's own entry). */
  entry?: string[];
}

/** Starts the group, forwards SIGINT/SIGTERM to it, and resolves with the exit status (first failure wins). */
export async function launchLocal(o: LaunchOptions): Promise<number> {
  const port = o.masterPort ?? (await freePort());
  const threads = o.threads ?? Math.max(1, Math.floor(os.availableParallelism() / o.nproc));
  const entry = o.entry ?? [...process.execArgv, process.argv[1]];
  const children: ChildProcess[] = [];
  const exits: Promise<number>[] = [];
  for (let rank = 0; rank < o.nproc; rank++) {
    const child = spawn(process.execPath, [...entry, ...o.args], {
      stdio: 'inherit',
      env: {
        ...process.env,
        WORLD_SIZE: String(o.nproc),
        RANK: String(rank),
        LOCAL_RANK: String(rank),
        MASTER_ADDR: '127.0.0.1',
        MASTER_PORT: String(port),
        ANOSEG_THREADS: String(threads),
      },
    });
    children.push(child);
    exits.push(
      new Promise((resolve) =>
        child.on('exit', (code, signal) => resolve(code ?? (signal ? 128 + (os.constants.signals[signal] ?? 0) : 1))),
      ),
    );
  }
  const forward = (signal: NodeJS.Signals): void => {
    for (const c of children) if (c.exitCode === null) c.kill(signal);
  };
  const onInt = (): void => forward('SIGINT');
  const onTerm = (): void => forward('SIGTERM');
  process.on('SIGINT', onInt);
  process.on('SIGTERM', onTerm);
  try {
    let first = 0;
    await Promise.all(
      exits.map(async (p, rank) => {
        const code = await p;
        if (code !== 0 && first === 0) {
          first = code;
          process.stderr.write(`anoseg launch: rank ${rank} exited with status ${code}; stopping the others\n`);
          // as torchrun does: the others would otherwise wait for it up to their timeout (e.g. while joining)
          forward('SIGTERM');
        }
      }),
    );
    return first;
  } finally {
    process.off('SIGINT', onInt);
    process.off('SIGTERM', onTerm);
  }
}

/**
 * Runs a training command as described by the group flags: in a joined group (left again afterwards, also on
 * errors) or, without them, as a single process (dp undefined). Misused flags become `usage(message)`.
 */
export async function inGroup<T>(
  v: Record<string, string | boolean | undefined>,
  usage: (message: string) => Error,
  what: string,
  run: (dp: DataParallel | undefined) => Promise<T>,
): Promise<T> {
  let group;
  try {
    group = groupFromArgs(v);
  } catch (e) {
    throw usage((e as Error).message);
  }
  process.stderr.write(`${group ? `rank ${group.rank} of ${group.worldSize}: ` : ''}${what}\n`);
  const dp = group ? new DataParallel(ProcessGroup.join(group)) : undefined;
  try {
    return await run(dp);
  } finally {
    dp?.group.close();
  }
}

/** What a rank other than 0 prints at the end of a training command (rank 0 prints the model's summary). */
export function otherRankDone(dp: DataParallel | undefined, steps: number): boolean {
  if (!dp || dp.isMain) return false;
  process.stdout.write(`rank ${dp.rank}: ${steps} steps done (rank 0 writes the model)\n`);
  return true;
}
