import { describe, expect, it } from 'vitest';
import { jsonDifferences } from './json-diff.js';

describe('jsonDifferences', () => {
  it('names the dotted paths that differ, ignoring key order', () => {
    const a = { x: 1, y: { p: [1, 2], q: 'a' }, z: null };
    expect(jsonDifferences(a, { z: null, y: { q: 'a', p: [1, 2] }, x: 1 })).toEqual([]);
    expect(jsonDifferences(a, { x: 2, y: { p: [2, 1], q: 'a' }, w: true })).toEqual(['w', 'x', 'y.p', 'z']);
    expect(jsonDifferences(1, 2)).toEqual(['(value)']);
    expect(jsonDifferences({ a: { b: 1 } }, { a: 3 })).toEqual(['a']);
  });
});
