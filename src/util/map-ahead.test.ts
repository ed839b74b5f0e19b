import { describe, expect, it } from 'vitest';
import { mapAhead } from './map-ahead.js';

const collect = async <R>(g: AsyncGenerator<R>): Promise<R[]> => {
  const out: R[] = [];
  for await (const r of g) out.push(r);
  return out;
};

describe('mapAhead', () => {
  it('yields results in the items order however the calls finish', async () => {
    const delays = [30, 1, 15, 0, 5];
    const out = await collect(
      mapAhead(delays, 3, (d, i) => new Promise<string>((r) => setTimeout(() => r(`${i}:${d}`), d))),
    );
    expect(out).toEqual(['0:30', '1:1', '2:15', '3:0', '4:5']);
  });

  it('runs at most `ahead` calls at once and starts the next as soon as one is taken', async () => {
    const startedAt: number[] = [];
    let running = 0;
    let peak = 0;
    const gen = mapAhead([0, 1, 2, 3, 4, 5], 2, async (x) => {
      startedAt.push(x);
      running++;
      peak = Math.max(peak, running);
      await new Promise((r) => setTimeout(r, 3));
      running--;
      return x * 10;
    });
    const first = await gen.next();
    expect(first.value).toBe(0);
    expect(startedAt).toEqual([0, 1]); // the caller holds item 0: item 2 waits until it asks again
    expect(await collect(gen)).toEqual([10, 20, 30, 40, 50]);
    expect(peak).toBe(2);
  });

  it('with ahead 1 calls one at a time', async () => {
    let running = 0;
    let peak = 0;
    const out = await collect(
      mapAhead([1, 2, 3], 1, async (x) => {
        running++;
        peak = Math.max(peak, running);
        await new Promise((r) => setTimeout(r, 2));
        running--;
        return x;
      }),
    );
    expect(out).toEqual([1, 2, 3]);
    expect(peak).toBe(1);
  });

  it('throws a failed call when its turn comes, without an unhandled rejection before', async () => {
    const seen: number[] = [];
    const g = mapAhead([0, 1, 2], 3, async (x) => {
      if (x === 1) throw new Error('bad image 1');
      await new Promise((r) => setTimeout(r, 20));
      return x;
    });
    for (;;) {
      try {
        const r = await g.next();
        if (r.done) break;
        seen.push(r.value);
      } catch (e) {
        expect((e as Error).message).toBe('bad image 1');
        break;
      }
    }
    expect(seen).toEqual([0]);
  });

  it('rejects a bad ahead and handles no items', async () => {
    await expect(collect(mapAhead([1], 0, async (x) => x))).rejects.toThrow(/ahead/);
    expect(await collect(mapAhead([], 4, async (x: number) => x))).toEqual([]);
  });
});
