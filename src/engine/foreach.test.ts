import { describe, expect, it } from 'vitest';
import { Tensor, foreach, tidy } from './index.js';

const values = (ts: Tensor[]): number[][] => ts.map((t) => Array.from(t.toArray() as Float32Array));

describe('foreach (multi-tensor operators)', () => {
  it('in-place updates match hand-computed values, per-tensor scalars included', () => {
    tidy(() => {
      const a = [Tensor.from([1, 2]), Tensor.from([3])];
      const b = [Tensor.from([4, 8]), Tensor.from([2])];
      foreach.mul_(a, 2); // [2, 4], [6]
      foreach.add_(a, b, 0.5); // [4, 8], [7]
      foreach.addcmul_(a, b, b, 0.25); // [8, 24], [8]
      expect(values(a)).toEqual([[8, 24], [8]]);
      const r = foreach.sqrt(a); // [2.828.., 4.898..], [2.828..]
      foreach.div_(r, [2, 4]);
      foreach.addScalar_(r, 1);
      const v = values(r);
      expect(v[0][0]).toBeCloseTo(Math.SQRT2 + 1, 6);
      expect(v[0][1]).toBeCloseTo(Math.sqrt(24) / 2 + 1, 6);
      expect(v[1][0]).toBeCloseTo(Math.sqrt(8) / 4 + 1, 6);
      foreach.addcdiv_(a, b, r, [-1, 3]);
      const got = values(a);
      expect(got[0][0]).toBeCloseTo(8 - 4 / (Math.SQRT2 + 1), 5);
      expect(got[0][1]).toBeCloseTo(24 - 8 / (Math.sqrt(24) / 2 + 1), 5);
      expect(got[1][0]).toBeCloseTo(8 + (3 * 2) / (Math.sqrt(8) / 4 + 1), 5);
      const sum = foreach.add(a, b, 2);
      expect(values(sum)[1][0]).toBeCloseTo(got[1][0] + 4, 5);
      expect(values(a)[1][0]).toBeCloseTo(got[1][0], 6); // the out-of-place form leaves its inputs alone
    });
  });

  it('rejects lists of different lengths, naming the operator', () => {
    tidy(() => {
      const a = [Tensor.from([1]), Tensor.from([2])];
      expect(() => foreach.add_(a, [Tensor.from([1])])).toThrow(/foreach\.add_: lists of different lengths \(2, 1\)/);
      expect(() => foreach.div_(a, [1])).toThrow(/foreach\.div_/);
    });
  });
});
