import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadImage, saveImagePng } from '../image/io.js';
import { createImage } from '../image/types.js';
import { DatasetError, loadImages, loadMask, openImageFolder, openMvtecDataset } from './dataset.js';
import { generateSyntheticDataset } from './synthetic-dataset.js';

let tmp: string;
let root: string;
beforeAll(async () => {
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'anoseg-data-'));
  root = path.join(tmp, 'synth');
  await generateSyntheticDataset(root, {
    seed: 7,
    size: 32,
    trainCount: 4,
    testGoodCount: 2,
    testDefectCount: 4,
    kind: 'object',
  });
});
afterAll(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});

async function copyDir(src: string, dst: string): Promise<void> {
  await fs.cp(src, dst, { recursive: true });
}

describe('openMvtecDataset', () => {
  it('discovers train/test/masks of a generated dataset, sorted', async () => {
    const ds = await openMvtecDataset(root);
    expect(ds.trainGood.map((p) => path.relative(root, p))).toEqual([0, 1, 2, 3].map((i) => `train/good/00${i}.png`));
    expect(ds.defects).toEqual(['missing', 'scratch', 'stain']);
    expect(
      ds.test.map((t) => [t.defect, path.relative(root, t.path), t.maskPath && path.relative(root, t.maskPath)]),
    ).toEqual([
      ['good', 'test/good/000.png', null],
      ['good', 'test/good/001.png', null],
      ['missing', 'test/missing/000.png', 'ground_truth/missing/000_mask.png'],
      ['scratch', 'test/scratch/000.png', 'ground_truth/scratch/000_mask.png'],
      ['scratch', 'test/scratch/001.png', 'ground_truth/scratch/001_mask.png'],
      ['stain', 'test/stain/000.png', 'ground_truth/stain/000_mask.png'],
    ]);
  });

  it('names the missing folder or the empty train folder', async () => {
    await expect(openMvtecDataset(path.join(tmp, 'nowhere'))).rejects.toThrow(/dataset folder not found: .*nowhere/);
    const noTrain = path.join(tmp, 'no-train');
    await fs.mkdir(path.join(noTrain, 'test', 'good'), { recursive: true });
    await expect(openMvtecDataset(noTrain)).rejects.toThrow(DatasetError);
    await expect(openMvtecDataset(noTrain)).rejects.toThrow(path.join(noTrain, 'train', 'good'));
    await fs.mkdir(path.join(noTrain, 'train', 'good'), { recursive: true });
    await fs.writeFile(path.join(noTrain, 'train', 'good', 'notes.txt'), 'x');
    await expect(openMvtecDataset(noTrain)).rejects.toThrow(/no training images in .*train.good/);
  });

  it('lists every defective image without a mask in one error', async () => {
    const copy = path.join(tmp, 'missing-masks');
    await copyDir(root, copy);
    await fs.rm(path.join(copy, 'ground_truth', 'scratch', '001_mask.png'));
    await fs.rm(path.join(copy, 'ground_truth', 'stain', '000_mask.png'));
    const err = await openMvtecDataset(copy).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DatasetError);
    const msg = (err as Error).message;
    expect(msg).toMatch(/^2 defective test image\(s\)/);
    expect(msg).toContain(path.join(copy, 'ground_truth', 'scratch', '001_mask.png'));
    expect(msg).toContain(path.join(copy, 'ground_truth', 'stain', '000_mask.png'));
  });

  it('works on the shared MVTec bottle copy when present', async () => {
    const bottle = '/work/shared/datasets/mvtec/bottle';
    const exists = await fs.stat(bottle).then(
      () => true,
      () => false,
    );
    if (!exists) return;
    const ds = await openMvtecDataset(bottle);
    expect(ds.trainGood.length).toBe(209);
    expect(ds.test.filter((t) => t.defect === 'good').length).toBe(20);
    expect(ds.test.filter((t) => t.maskPath !== null).length).toBe(63);
  });
});

describe('openImageFolder', () => {
  it('lists images, optionally recursively, and rejects missing or empty folders', async () => {
    const dir = path.join(tmp, 'folder');
    await fs.mkdir(path.join(dir, 'sub'), { recursive: true });
    const img = createImage(1, 2, 2, 0.5);
    await saveImagePng(path.join(dir, 'b.png'), img);
    await saveImagePng(path.join(dir, 'a.PNG'), img);
    await saveImagePng(path.join(dir, 'sub', 'c.png'), img);
    await fs.writeFile(path.join(dir, 'readme.md'), '#');
    await fs.writeFile(path.join(dir, '.hidden.png'), '');
    expect((await openImageFolder(dir)).map((p) => path.relative(dir, p))).toEqual(['a.PNG', 'b.png']);
    expect((await openImageFolder(dir, { recursive: true })).map((p) => path.relative(dir, p))).toEqual([
      'a.PNG',
      'b.png',
      'sub/c.png',
    ]);
    await expect(openImageFolder(path.join(tmp, 'absent'))).rejects.toThrow(/image folder not found: .*absent/);
    await fs.mkdir(path.join(tmp, 'empty'));
    await expect(openImageFolder(path.join(tmp, 'empty'))).rejects.toThrow(/no images/);
  });
});

describe('loadImages / loadMask', () => {
  it('continues past unreadable files and reports them', async () => {
    const ds = await openMvtecDataset(root);
    const bad = path.join(tmp, 'bad.png');
    await fs.writeFile(bad, Buffer.from('definitely not a png, just text bytes'));
    const paths = [ds.trainGood[0], bad, ds.trainGood[1], path.join(tmp, 'gone.png')];
    const seen: string[] = [];
    const { images, failures } = await loadImages(paths, { channels: 3 }, (f) => seen.push(f.path));
    expect(images.map((i) => i.path)).toEqual([ds.trainGood[0], ds.trainGood[1]]);
    expect(images[0].image.channels).toBe(3);
    expect(failures.map((f) => f.path)).toEqual([bad, path.join(tmp, 'gone.png')]);
    expect(failures[0].reason).toMatch(/corrupt/);
    expect(failures[1].reason).toMatch(/ENOENT/);
    expect(seen.sort()).toEqual([bad, path.join(tmp, 'gone.png')].sort());
  });

  it('binarises masks at > 0 and resizes nearest', async () => {
    const m = createImage(1, 2, 2);
    m.data.set([0, 1 / 255, 0.5, 1]);
    const file = path.join(tmp, 'mask.png');
    await saveImagePng(file, m);
    const big = await loadMask(file, 4, 4);
    expect(Array.from(big.data)).toEqual([0, 0, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]);
    const gen = await loadImage((await openMvtecDataset(root)).test[2].maskPath as string);
    expect(new Set(gen.data)).toEqual(new Set([0, 1]));
  });
});
