/**
 * Collective communication between processes, on one machine or many: libtorch's own distributed backend (c10d's
 * ProcessGroupGloo, the engine under PyTorch's DistributedDataParallel on CPU) through the addon. Rank 0 hosts the
 * rendezvous (a TCPStore at the master address); every rank then talks to every other directly over TCP.
 *
 * Every call blocks until all ranks made the same call (calls must come in the same order on every rank). A rank
 * that died or became unreachable makes the others' next call fail with an error naming the peer (a closed
 * connection is noticed at once; a silent peer after the timeout). Keep a reference to a ProcessGroup while the
 * group is in use: a garbage-collected one closes its connections, which its peers see as this rank's death.
 */
import { native, type NativeProcessGroup } from './native.js';
import type { Tensor } from './tensor.js';

export interface ProcessGroupOptions {
  rank: number;
  worldSize: number;
  /** Where rank 0 listens for the rendezvous (MASTER_ADDR). */
  masterAddr: string;
  /** MASTER_PORT; Gloo's own connections use further, ephemeral ports. */
  masterPort: number;
  /** How long joining and each collective may wait for the other ranks (default 1800 s). */
  timeoutSeconds?: number;
  /**
   * Network interface Gloo binds to (default: GLOO_SOCKET_IFNAME; else the loopback address when the master is on
   * the loopback, else the address this machine's host name resolves to).
   */
  interface?: string;
}

/** PyTorch's default for process groups: only hangs wait this long (a dead peer's closed connection is seen at once). */
export const DEFAULT_TIMEOUT_SECONDS = 1800;

const isLoopback = (host: string): boolean => host === 'localhost' || host.startsWith('127.') || host === '::1';

export class ProcessGroup {
  private constructor(
    private readonly pg: NativeProcessGroup,
    readonly timeoutSeconds: number,
  ) {}

  /** Joins the group; returns once every rank joined (or throws after the timeout). */
  static join(o: ProcessGroupOptions): ProcessGroup {
    checkGroupOptions(o);
    const timeoutSeconds = o.timeoutSeconds ?? DEFAULT_TIMEOUT_SECONDS;
    const iface = o.interface ?? process.env.GLOO_SOCKET_IFNAME;
    const pg = new native.ProcessGroup({
      rank: o.rank,
      size: o.worldSize,
      host: o.masterAddr,
      port: o.masterPort,
      timeoutMs: Math.round(timeoutSeconds * 1000),
      ...(iface ? { interface: iface } : isLoopback(o.masterAddr) ? { bindHost: '127.0.0.1' } : {}),
    });
    return new ProcessGroup(pg, timeoutSeconds);
  }

  get rank(): number {
    return this.pg.rank;
  }

  get worldSize(): number {
    return this.pg.size;
  }

  /** In place: each tensor becomes its sum (or mean) over all ranks. All tensors are in flight together. */
  allreduce(tensors: readonly Tensor[], op: 'sum' | 'avg' = 'sum'): void {
    this.pg.allreduce(
      tensors.map((t) => t.handle),
      op,
    );
  }

  /** In place: every rank's tensors take the values of rank `root`'s. */
  broadcast(tensors: readonly Tensor[], root = 0): void {
    this.pg.broadcast(
      tensors.map((t) => t.handle),
      root,
    );
  }

  barrier(): void {
    this.pg.barrier();
  }

  /** Leaves the group (rank 0 stops hosting the rendezvous); later calls throw. */
  close(): void {
    this.pg.close();
  }
}

function checkGroupOptions(o: ProcessGroupOptions): void {
  const int = (n: number): boolean => Number.isInteger(n);
  if (!int(o.worldSize) || o.worldSize < 1) throw new Error(`world size must be a positive integer (${o.worldSize})`);
  if (!int(o.rank) || o.rank < 0 || o.rank >= o.worldSize)
    throw new Error(`rank must be an integer in [0, ${o.worldSize - 1}] (${o.rank})`);
  if (!int(o.masterPort) || o.masterPort < 1 || o.masterPort > 65535)
    throw new Error(`master port must be in 1..65535 (${o.masterPort})`);
  if (!o.masterAddr) throw new Error('master address is empty');
  if (o.timeoutSeconds !== undefined && !(o.timeoutSeconds > 0))
    throw new Error(`timeout must be positive (${o.timeoutSeconds})`);
}

/** How a process was told its place in a group: command-line flags, each falling back to torchrun's variable. */
export interface GroupSettings {
  worldSize?: number;
  rank?: number;
  /** HOST:PORT */
  master?: string;
  timeoutSeconds?: number;
}

/**
 * The group from flags and the environment as torchrun sets it (WORLD_SIZE, RANK, MASTER_ADDR, MASTER_PORT; a flag
 * wins over its variable), or null for a single process (no world size, or 1). A partial description is an error
 * naming what is missing.
 */
export function resolveProcessGroup(
  flags: GroupSettings,
  env: NodeJS.ProcessEnv = process.env,
): ProcessGroupOptions | null {
  const fromEnv = (k: string): number | undefined =>
    env[k] === undefined || env[k] === '' ? undefined : Number(env[k]);
  const worldSize = flags.worldSize ?? fromEnv('WORLD_SIZE');
  if (worldSize === undefined || worldSize === 1) return null;
  const rank = flags.rank ?? fromEnv('RANK');
  let master = flags.master;
  if (master === undefined && env.MASTER_ADDR && env.MASTER_PORT) master = `${env.MASTER_ADDR}:${env.MASTER_PORT}`;
  const missing = [
    rank === undefined ? 'the rank (--rank or RANK)' : '',
    master ? '' : 'the master (--master HOST:PORT or MASTER_ADDR and MASTER_PORT)',
  ].filter(Boolean);
  if (missing.length) throw new Error(`a group of ${worldSize} processes needs ${missing.join(' and ')}`);
  const o: ProcessGroupOptions = {
    worldSize,
    rank: rank as number,
    ...parseMasterAddress(master as string),
    ...(flags.timeoutSeconds !== undefined ? { timeoutSeconds: flags.timeoutSeconds } : {}),
  };
  checkGroupOptions(o);
  return o;
}

/** "host:port" (IPv6 as [addr]:port) -> parts; throws on anything else. */
export function parseMasterAddress(s: string): { masterAddr: string; masterPort: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d+)$/.exec(s);
  if (!m) throw new Error(`master address must be HOST:PORT (${s})`);
  return { masterAddr: m[1] ?? m[2], masterPort: Number(m[3]) };
}
