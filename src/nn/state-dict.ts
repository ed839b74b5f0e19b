/**
 * Prefix-aware state dicts: several modules and optimisers share one file (a checkpoint, a model file) under
 * prefixes ('generator.', 'optim_g.'), and each part is read back by its prefix. The maps hold the tensors
 * themselves, not copies.
 */
import type { Tensor } from '../engine/index.js';

export type StateDict = Map<string, Tensor>;

/** Anything that saves and loads its state by name: modules and optimisers. */
export interface Stateful {
  stateDict(): StateDict;
  loadStateDict(state: StateDict): void;
}

/** The entries of `state` with `prefix` put before their names. */
export function prefixed(state: ReadonlyMap<string, Tensor>, prefix: string): StateDict {
  return new Map([...state].map(([k, v]) => [prefix + k, v]));
}

/** The entries of `state` whose names start with `prefix`, with the prefix removed (others are left out). */
export function withoutPrefix(state: ReadonlyMap<string, Tensor>, prefix: string): StateDict {
  const out: StateDict = new Map();
  for (const [k, v] of state) if (k.startsWith(prefix)) out.set(k.slice(prefix.length), v);
  return out;
}

/** One state dict from named parts: `{ generator: g.stateDict() }` -> 'generator.<name>'; null parts are skipped. */
export function joinStateDicts(parts: Record<string, ReadonlyMap<string, Tensor> | null | undefined>): StateDict {
  const out: StateDict = new Map();
  for (const [name, state] of Object.entries(parts)) {
    if (state) for (const [k, v] of state) out.set(`${name}.${k}`, v);
  }
  return out;
}
