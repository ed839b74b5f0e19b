import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** The raw addon surface (native/torch_addon.cc). Only src/engine talks to it. */
export interface NativeTensorHandle {
  dispose(): void;
  readonly disposed: boolean;
  readonly shape: number[];
  readonly dtype: string;
  readonly device: string;
  readonly nbytes: number;
  requiresGrad: boolean;
  readonly isLeaf: boolean;
  grad(): NativeTensorHandle | null;
  setGrad(grad: NativeTensorHandle | null): void;
  toArray(): Float32Array | Float64Array | Int32Array | BigInt64Array | Uint8Array | Int8Array;
  item(): number | boolean;
  sameStorage(other: NativeTensorHandle): boolean;
}

/** An operator value that is not a tensor: a TorchScript custom-class object (e.g. a prepacked weight context). */
export interface NativeObjectHandle {
  dispose(): void;
  readonly disposed: boolean;
  /** Its TorchScript class, e.g. __torch__.torch.classes.mkldnn.ConvOpContext. */
  readonly type: string;
}

export interface OpInfo {
  id: number;
  schema: string;
  args: { name: string; type: string; hasDefault: boolean; kwargOnly: boolean }[];
}

export type NativeArg =
  NativeTensorHandle | NativeObjectHandle | number | boolean | string | null | undefined | NativeArg[];

/** A c10d ProcessGroupGloo over a TCPStore (native/distributed.cc); every call blocks until all ranks took part. */
export interface NativeProcessGroup {
  readonly rank: number;
  readonly size: number;
  allreduce(tensors: NativeTensorHandle[], op: 'sum' | 'avg'): void;
  broadcast(tensors: NativeTensorHandle[], root: number): void;
  barrier(): void;
  close(): void;
}

export interface NativeProcessGroupOptions {
  rank: number;
  size: number;
  /** The TCPStore's address: rank 0 listens there, the others connect. */
  host: string;
  port: number;
  timeoutMs: number;
  /** Gloo binds to this network interface (GLOO_SOCKET_IFNAME), else to bindHost, else to the host name's address. */
  interface?: string;
  bindHost?: string;
}

export interface NativeAddon {
  ProcessGroup: new (options: NativeProcessGroupOptions) => NativeProcessGroup;
  ObjectHandle: abstract new (...args: never[]) => NativeObjectHandle;
  opHandle(name: string, overload: string): OpInfo;
  callOp(id: number, args: NativeArg[], discardResult?: boolean): unknown;
  fromArray(
    data: Float32Array | Float64Array | Int32Array | BigInt64Array | Uint8Array | Int8Array,
    shape: number[],
    dtype?: string,
  ): NativeTensorHandle;
  backward(tensors: NativeTensorHandle[], grads: NativeTensorHandle[] | null, retainGraph: boolean): void;
  setGradEnabled(enabled: boolean): boolean;
  isGradEnabled(): boolean;
  setNumThreads(n: number): void;
  getNumThreads(): number;
  manualSeed(seed: number): void;
  cudaAvailable(): boolean;
  /** Tells V8 the bytes held by live tensor handles; returns them. */
  syncExternalMemory(): number;
  buildInfo(): { torchVersion: string; parallel: string; mkldnn: boolean; cuda: boolean; retainFreedMemory: boolean };
  profilerStart(): void;
  profilerStop(byShape?: boolean): { name: string; totalUs: number; count: number }[];
}

function findAddon(): string {
  const here = path.dirname(fileURLToPath(import.meta.url));
  // src/engine or dist/engine -> repository root
  const root = path.resolve(here, '..', '..');
  const candidates = [path.join(root, 'build', 'Release', 'anoseg_torch.node')];
  const found = candidates.find((p) => existsSync(p));
  if (!found) {
    throw new Error(
      `The libtorch addon is not built (looked for ${candidates.join(', ')}). ` +
        'Install libtorch (apt-get install libtorch-dev) and run `npm install` (or `npm run install`) in the project.',
    );
  }
  return found;
}

const require = createRequire(import.meta.url);
export const native: NativeAddon = require(findAddon()) as NativeAddon;
