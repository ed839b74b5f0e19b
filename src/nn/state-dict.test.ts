import { describe, expect, it } from 'vitest';
import { Tensor } from '../engine/index.js';
import { joinStateDicts, prefixed, withoutPrefix } from './state-dict.js';

describe('prefix-aware state dicts', () => {
  it('prefixes, joins and splits again, holding the same tensors', () => {
    const a = Tensor.from(Float32Array.from([1, 2]), [2]);
    const b = Tensor.from(Float32Array.from([3]), [1]);
    const g = new Map([
      ['w', a],
      ['bn.mean', b],
    ]);
    expect([...prefixed(g, 'generator.').keys()]).toEqual(['generator.w', 'generator.bn.mean']);
    const joined = joinStateDicts({ generator: g, discriminator: null, optim: new Map([['step', b]]) });
    expect([...joined.keys()]).toEqual(['generator.w', 'generator.bn.mean', 'optim.step']);
    const back = withoutPrefix(joined, 'generator.');
    expect([...back.keys()]).toEqual(['w', 'bn.mean']);
    expect(back.get('w')).toBe(a);
    // a prefix is matched whole: 'generator.' does not take 'generator2.x'
    expect([...withoutPrefix(new Map([['generator2.x', a]]), 'generator.').keys()]).toEqual([]);
    a.dispose();
    b.dispose();
  });
});
