/**
 * The CLI's data-parallel parts: the group options of the training commands and `anoseg launch`, which starts N
 * local processes of a command as one group (both defined with the options of ./options.ts: parser and help text
 * from one definition).
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
import {
  UsageError,
  integer,
  number,
  parseCommand,
  section,
  text,
  usage,
  type CommandSpec,
  type Options,
  type Values,
} from './options.js';

export const GROUP_SECTION =
  'Data-parallel training (README "Beyond one machine"; anoseg launch sets these for local processes):';

/** The group options of the training commands (train, train-detector, pretrain). */
export const GROUP_OPTIONS = section(GROUP_SECTION, {
  'world-size': integer('N', 'processes in the data-parallel group (1 = no group)', {}, { default: 'WORLD_SIZE' }),
  rank: integer(
    'R',
    "this process's rank, 0..N-1; rank 0 hosts the rendezvous and writes all files",
    { min: 0 },
    { default: 'RANK' },
  ),
  master: text('HOST:PORT', "rank 0's address, the same on every rank", { default: 'MASTER_ADDR:MASTER_PORT' }),
  'dist-timeout': number(
    'S',
    'seconds a rank waits for the others to join or to take part in a step',
    { above: 0 },
    { default: DEFAULT_TIMEOUT_SECONDS },
  ),
});

/** The group described by the options and the environment, or null for a single process; misuse is a UsageError. */
export function groupFromValues(
  v: Values<typeof GROUP_OPTIONS>,
  env: NodeJS.ProcessEnv = process.env,
): ProcessGroupOptions | null {
  try {
    return resolveProcessGroup(
      { worldSize: v['world-size'], rank: v.rank, master: v.master, timeoutSeconds: v['dist-timeout'] },
      env,
    );
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
}

export const LAUNCH = {
  name: 'launch',
  summary: 'start N local processes of a command as one data-parallel group (anoseg launch --nproc 2 -- train ...)',
  synopsis: 'anoseg launch [--nproc N] [--master-port P] [--threads T] -- COMMAND [options]',
  about: `Starts N processes of 'anoseg COMMAND [options]' on this machine as one data-parallel group (as torchrun does: each
gets WORLD_SIZE, RANK, MASTER_ADDR=127.0.0.1 and MASTER_PORT) and splits the cores between them (ANOSEG_THREADS).
Example: 'anoseg launch --nproc 2 -- train --data DIR --out runs/x'`,
  options: {
    nproc: integer('N', 'processes', {}, { default: 2 }),
    'master-port': integer('P', 'rendezvous port', { max: 65535 }, { default: 'a free one' }),
    threads: integer('T', 'libtorch threads per process', {}, { default: 'cores / N, at least 1' }),
  },
  notes: `When a process fails, the others are stopped (SIGTERM; a training rank saves nothing then: the last checkpoint
stays as it was); exits with the first failing process's status, else 0.`,
} satisfies CommandSpec<Options>;

/** `anoseg launch` resolved: the group's settings and the command each process runs. */
export function resolveLaunch(args: string[]): LaunchOptions {
  const split = args.indexOf('--');
  const { values: v } = parseCommand(LAUNCH, split < 0 ? args : args.slice(0, split));
  if (split < 0 || split === args.length - 1) throw new UsageError(`no command given after --\n\n${usage(LAUNCH)}`);
  return { nproc: v.nproc ?? 2, masterPort: v['master-port'], threads: v.threads, args: args.slice(split + 1) };
}

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
 * Runs a training command in the group (joined, and left again afterwards, also on errors) or, for null, as a
 * single process (dp undefined).
 */
export async function inGroup<T>(
  group: ProcessGroupOptions | null,
  what: string,
  run: (dp: DataParallel | undefined) => Promise<T>,
): Promise<T> {
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
