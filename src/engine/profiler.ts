import { native } from './native.js';

export interface ProfileRow {
  name: string;
  totalMs: number;
  count: number;
}

/**
 * Runs fn under libtorch's autograd profiler and returns time per operator (inclusive of nested operators,
 * so rows overlap: read them as "time spent inside this op"), sorted by total time. With byShape, operators are
 * told apart by their input shapes too (the name then ends with the shapes, e.g. "aten::clone [8,32,128,128]").
 */
export function profile(fn: () => void, o: { byShape?: boolean } = {}): ProfileRow[] {
  native.profilerStart();
  try {
    fn();
  } finally {
    const rows = native.profilerStop(o.byShape ?? false);
    profileRows = rows
      .map((r) => ({ name: r.name, totalMs: r.totalUs / 1000, count: r.count }))
      .sort((a, b) => b.totalMs - a.totalMs);
  }
  return profileRows;
}

let profileRows: ProfileRow[] = [];
