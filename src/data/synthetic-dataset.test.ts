import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadImage } from '../image/io.js';
import { cloneImage } from '../image/types.js';
import { Rng } from '../util/rng.js';
import { DEFECT_TYPES, applyDefect, drawStyle, generateSyntheticDataset, renderGood } from './synthetic-dataset.js';

let tmp: string;
beforeAll(async () => {
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'anoseg-synth-ds-'));
});
afterAll(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});

async function readTree(dir: string): Promise<Map<string, Buffer>> {
  const out = new Map<string, Buffer>();
  const files = (await fs.readdir(dir, { recursive: true, withFileTypes: true })).filter((e) => e.isFile());
  for (const f of files) {
    const p = path.join(f.parentPath, f.name);
    out.set(path.relative(dir, p), await fs.readFile(p));
  }
  return out;
}

describe('generateSyntheticDataset', () => {
  it('is byte-identical for the same seed and differs for another seed; fast at 64 px', async () => {
    const opts = { seed: 11, trainCount: 20, testGoodCount: 4, testDefectCount: 6, kind: 'texture' as const };
    const t0 = performance.now();
    await generateSyntheticDataset(path.join(tmp, 'a'), opts);
    const elapsed = performance.now() - t0;
    await generateSyntheticDataset(path.join(tmp, 'b'), opts);
    await generateSyntheticDataset(path.join(tmp, 'c'), { ...opts, seed: 12 });
    const a = await readTree(path.join(tmp, 'a'));
    const b = await readTree(path.join(tmp, 'b'));
    const c = await readTree(path.join(tmp, 'c'));
    expect(a.size).toBe(20 + 4 + 6 * 2);
    expect([...a.keys()].sort()).toEqual([...b.keys()].sort());
    for (const [k, v] of a) expect(v.equals(b.get(k) as Buffer), k).toBe(true);
    expect(a.get('train/good/000.png')?.equals(c.get('train/good/000.png') as Buffer)).toBe(false);
    expect(elapsed).toBeLessThan(3000); // target < 1 s; slack for a loaded 2-core machine
    const img = await loadImage(path.join(tmp, 'a', 'train', 'good', '000.png'));
    expect([img.channels, img.height, img.width]).toEqual([3, 64, 64]);
  });

  it('refuses to write over an existing dataset unless overwrite is set', async () => {
    const dir = path.join(tmp, 'over');
    const opts = { seed: 1, size: 16, trainCount: 1, testGoodCount: 0, testDefectCount: 0, kind: 'object' as const };
    await generateSyntheticDataset(dir, opts);
    await expect(generateSyntheticDataset(dir, opts)).rejects.toThrow(/already exists/);
    const ds = await generateSyntheticDataset(dir, { ...opts, overwrite: true });
    expect(ds.trainGood.length).toBe(1);
    expect(ds.test).toEqual([]);
  });

  it('saved masks mark exactly the changed pixels of every defect type', async () => {
    for (const kind of ['texture', 'object'] as const) {
      for (const channels of [1, 3] as const) {
        const style = drawStyle(kind, 48, channels, new Rng(5));
        for (let trial = 0; trial < 6; trial++) {
          const type = DEFECT_TYPES[trial % 3];
          const rng = new Rng(100 + trial);
          const good = renderGood(style, rng);
          const bad = cloneImage(good);
          const mask = applyDefect(bad, style, type, rng);
          const n = 48 * 48;
          let area = 0;
          for (let i = 0; i < n; i++) {
            let maxDiff = 0;
            for (let ch = 0; ch < channels; ch++)
              maxDiff = Math.max(maxDiff, Math.abs(bad.data[ch * n + i] - good.data[ch * n + i]));
            if (mask.data[i] === 1) {
              area++;
              expect(maxDiff, `${kind}/${type} inside`).toBeGreaterThanOrEqual(0.1);
            } else expect(maxDiff, `${kind}/${type} outside`).toBe(0);
          }
          expect(area, `${kind}/${type} area`).toBeGreaterThan(5);
        }
      }
    }
  });
});
