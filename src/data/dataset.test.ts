import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadImage, saveImagePng } from '../image/io.js';
import { createImage } from '../image/types.js';
import {
  DatasetError,
  detectLayout,
  groundTruthCounts,
  loadGroundTruth,
  loadImages,
  loadMask,
  openFolderDataset,
  openImageFolder,
  openMvtecDataset,
  openTrainingData,
} from './dataset.js';
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

  it('opens defective images without masks as image-level items (maskPath null) and counts them', async () => {
    const copy = path.join(tmp, 'missing-masks');
    await copyDir(root, copy);
    await fs.rm(path.join(copy, 'ground_truth', 'scratch', '001_mask.png'));
    await fs.rm(path.join(copy, 'ground_truth', 'stain', '000_mask.png'));
    const ds = await openMvtecDataset(copy);
    expect(ds.layout).toBe('mvtec');
    expect(ds.test.map((t) => [path.relative(copy, t.path), t.maskPath && path.relative(copy, t.maskPath)])).toEqual([
      ['test/good/000.png', null],
      ['test/good/001.png', null],
      ['test/missing/000.png', 'ground_truth/missing/000_mask.png'],
      ['test/scratch/000.png', 'ground_truth/scratch/000_mask.png'],
      ['test/scratch/001.png', null],
      ['test/stain/000.png', null],
    ]);
    expect(groundTruthCounts(ds.test)).toEqual({
      images: 6,
      good: 2,
      defective: 4,
      defectiveWithMask: 2,
      defectiveWithoutMask: 2,
    });
    // No ground_truth folder at all: every defective image is image-level only.
    await fs.rm(path.join(copy, 'ground_truth'), { recursive: true });
    const bare = await openMvtecDataset(copy);
    expect(bare.test.every((t) => t.maskPath === null)).toBe(true);
    expect(bare.defects).toEqual(['missing', 'scratch', 'stain']);
    expect(groundTruthCounts(bare.test).defectiveWithoutMask).toBe(4);
  });

  it('opens a generated category laid out like MVTec AD bottle: counts, order, masks, distractor files', async () => {
    // The layout of mvtec/bottle at a small scale: train/good, test/good + three defect types whose names hold
    // underscores, ground_truth/<type>/<name>_mask.png for every defective image (none for good ones), RGB
    // images and 8-bit grayscale 0/255 masks; plus files a data set picks up on the way (notes, hidden files).
    const cat = path.join(tmp, 'mvtec-like', 'bottle');
    const name = (i: number): string => String(i).padStart(3, '0');
    const counts: Record<string, number> = { broken_large: 3, broken_small: 2, contamination: 4 };
    for (let i = 0; i < 12; i++) await png(path.join(cat, 'train', 'good', `${name(i)}.png`), i / 12);
    for (let i = 0; i < 4; i++) await png(path.join(cat, 'test', 'good', `${name(i)}.png`));
    for (const [type, n] of Object.entries(counts)) {
      for (let i = 0; i < n; i++) {
        await png(path.join(cat, 'test', type, `${name(i)}.png`), 0.3);
        const mask = createImage(1, 4, 4);
        mask.data[5] = 1;
        mask.data[6] = 1;
        await saveImagePng(path.join(cat, 'ground_truth', type, `${name(i)}_mask.png`), mask);
      }
    }
    await fs.writeFile(path.join(cat, 'license.txt'), 'CC BY-NC-SA 4.0');
    await fs.writeFile(path.join(cat, 'train', 'good', '.DS_Store'), '');
    await fs.writeFile(path.join(cat, 'test', 'good', 'Thumbs.db'), '');

    expect(await detectLayout(cat)).toBe('mvtec');
    const ds = await openMvtecDataset(cat);
    expect(ds.layout).toBe('mvtec');
    expect(ds.trainGood.map((p) => path.relative(cat, p))).toEqual(
      Array.from({ length: 12 }, (_, i) => `train/good/${name(i)}.png`),
    );
    expect(ds.defects).toEqual(['broken_large', 'broken_small', 'contamination']);
    const expected: [string, string, string | null][] = [];
    for (const [type, n] of Object.entries(counts))
      for (let i = 0; i < n; i++)
        expected.push([type, `test/${type}/${name(i)}.png`, `ground_truth/${type}/${name(i)}_mask.png`]);
    for (let i = 0; i < 4; i++) expected.push(['good', `test/good/${name(i)}.png`, null]);
    expect(
      ds.test.map((t) => [t.defect, path.relative(cat, t.path), t.maskPath && path.relative(cat, t.maskPath)]),
    ).toEqual(expected);
    expect(groundTruthCounts(ds.test)).toEqual({
      images: 13,
      good: 4,
      defective: 9,
      defectiveWithMask: 9,
      defectiveWithoutMask: 0,
    });
    // the files themselves: RGB images, binary masks at the image size
    const first = ds.test[0];
    expect((await loadImage(first.path)).channels).toBe(3);
    const m = await loadMask(first.maskPath as string, 4, 4);
    expect(Array.from(m.data)).toEqual([0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    // the trainers see the same split
    const t = await openTrainingData(cat);
    expect([t.layout, t.train.length, t.test.length]).toEqual(['mvtec', 12, 13]);
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

/** Writes a tiny PNG (value v everywhere) with the project's own encoder. */
async function png(file: string, v = 0.5, channels: 1 | 3 = 3): Promise<void> {
  await saveImagePng(file, createImage(channels, 4, 4, v));
}

describe('MVTec 3D-AD layout (RGB only)', () => {
  let cat = '';
  beforeAll(async () => {
    cat = path.join(tmp, 'mvtec3d', 'cable_gland');
    for (const n of ['000', '001', '002']) await png(path.join(cat, 'train', 'good', 'rgb', `${n}.png`));
    await fs.mkdir(path.join(cat, 'train', 'good', 'xyz'), { recursive: true });
    await fs.writeFile(path.join(cat, 'train', 'good', 'xyz', '000.tiff'), 'point cloud, ignored');
    await png(path.join(cat, 'validation', 'good', 'rgb', '000.png'));
    for (const n of ['000', '001']) {
      await png(path.join(cat, 'test', 'good', 'rgb', `${n}.png`));
      await png(path.join(cat, 'test', 'good', 'gt', `${n}.png`), 0, 1);
    }
    for (const n of ['000', '001']) await png(path.join(cat, 'test', 'bent', 'rgb', `${n}.png`));
    await png(path.join(cat, 'test', 'bent', 'gt', '000.png'), 1, 1); // 001 has no mask
    await png(path.join(cat, 'test', 'cut', 'rgb', '000.png'));
    await png(path.join(cat, 'test', 'cut', 'gt', '000.png'), 1, 1);
  });

  it('is detected and lists rgb images with gt masks of the same name; validation is ignored by default', async () => {
    expect(await detectLayout(cat)).toBe('mvtec3d');
    const ds = await openMvtecDataset(cat);
    expect(ds.layout).toBe('mvtec3d');
    expect(ds.trainGood.map((p) => path.relative(cat, p))).toEqual([
      'train/good/rgb/000.png',
      'train/good/rgb/001.png',
      'train/good/rgb/002.png',
    ]);
    expect(ds.defects).toEqual(['bent', 'cut']);
    expect(
      ds.test.map((t) => [t.defect, path.relative(cat, t.path), t.maskPath && path.relative(cat, t.maskPath)]),
    ).toEqual([
      ['bent', 'test/bent/rgb/000.png', 'test/bent/gt/000.png'],
      ['bent', 'test/bent/rgb/001.png', null],
      ['cut', 'test/cut/rgb/000.png', 'test/cut/gt/000.png'],
      ['good', 'test/good/rgb/000.png', null],
      ['good', 'test/good/rgb/001.png', null],
    ]);
    expect(groundTruthCounts(ds.test)).toEqual({
      images: 5,
      good: 2,
      defective: 3,
      defectiveWithMask: 2,
      defectiveWithoutMask: 1,
    });
    const withVal = await openMvtecDataset(cat, { includeValidation: true });
    expect(withVal.trainGood.map((p) => path.relative(cat, p)).at(-1)).toBe('validation/good/rgb/000.png');
    expect((await openMvtecDataset(cat, { layout: 'mvtec3d' })).test).toHaveLength(5);
    await expect(openMvtecDataset(cat, { layout: 'mvtec' })).rejects.toThrow(
      /--layout mvtec: .* looks like MVTec 3D-AD/,
    );
    await expect(openMvtecDataset(root, { layout: 'mvtec3d' })).rejects.toThrow(
      /--layout mvtec3d: .* looks like MVTec AD; expected .*train.good.rgb/,
    );
  });

  it('gives the trainers its training images and test split', async () => {
    const t = await openTrainingData(cat);
    expect(t.layout).toBe('mvtec3d');
    expect(t.train).toHaveLength(3);
    expect(t.test).toHaveLength(5);
  });
});

describe('MVTec LOCO layout (several masks per image)', () => {
  it('takes ground_truth/<type>/<name>/ as one mask folder whose union is the ground truth', async () => {
    const cat = path.join(tmp, 'loco', 'juice_bottle');
    await png(path.join(cat, 'train', 'good', '000.png'));
    await png(path.join(cat, 'validation', 'good', '000.png'));
    await png(path.join(cat, 'test', 'good', '000.png'));
    await png(path.join(cat, 'test', 'logical_anomalies', '000.png'));
    await png(path.join(cat, 'test', 'structural_anomalies', '000.png')); // no masks
    const a = createImage(1, 4, 4);
    a.data[0] = 1;
    const b = createImage(1, 2, 2); // another size: resized nearest to the first mask's 4x4
    b.data[3] = 200 / 255; // LOCO masks carry values other than 255
    await saveImagePng(path.join(cat, 'ground_truth', 'logical_anomalies', '000', '000.png'), a);
    await saveImagePng(path.join(cat, 'ground_truth', 'logical_anomalies', '000', '001.png'), b);
    const ds = await openMvtecDataset(cat);
    expect(ds.layout).toBe('mvtec-loco');
    expect(ds.trainGood).toHaveLength(1);
    expect((await openMvtecDataset(cat, { includeValidation: true })).trainGood).toHaveLength(2);
    expect(ds.test.map((t) => [t.defect, t.maskPath && path.relative(cat, t.maskPath)])).toEqual([
      ['good', null],
      ['logical_anomalies', 'ground_truth/logical_anomalies/000'],
      ['structural_anomalies', null],
    ]);
    const union = await loadGroundTruth(ds.test[1].maskPath as string);
    expect([union.height, union.width]).toEqual([4, 4]);
    expect(Array.from(union.data)).toEqual([1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 1, 1]);
    expect(Array.from((await loadMask(ds.test[1].maskPath as string, 2, 2)).data)).toEqual([1, 0, 0, 1]);
    const emptyDir = path.join(tmp, 'loco-empty');
    await fs.mkdir(emptyDir, { recursive: true });
    await expect(loadGroundTruth(emptyDir)).rejects.toThrow(/mask folder .*loco-empty holds no mask images/);
  });
});

describe('VisA layout (split CSV)', () => {
  it('reads its category rows of split_csv/1cls.csv: train normals, test normal / anomaly, optional masks', async () => {
    const visa = path.join(tmp, 'VisA');
    const cat = path.join(visa, 'candle');
    for (const n of ['0000', '0001', '0002']) await png(path.join(cat, 'Data', 'Images', 'Normal', `${n}.png`));
    for (const n of ['000', '001']) await png(path.join(cat, 'Data', 'Images', 'Anomaly', `${n}.png`));
    await png(path.join(cat, 'Data', 'Masks', 'Anomaly', '000.png'), 1, 1);
    const csv = path.join(visa, 'split_csv', '1cls.csv');
    await fs.mkdir(path.dirname(csv), { recursive: true });
    await fs.writeFile(
      csv,
      [
        'object,split,label,image,mask',
        'candle,train,normal,candle/Data/Images/Normal/0001.png,',
        'candle,train,normal,candle/Data/Images/Normal/0000.png,',
        'pcb1,train,normal,pcb1/Data/Images/Normal/0000.png,',
        'candle,test,normal,candle/Data/Images/Normal/0002.png,',
        'candle,test,anomaly,candle/Data/Images/Anomaly/000.png,candle/Data/Masks/Anomaly/000.png',
        'candle,test,anomaly,candle/Data/Images/Anomaly/001.png,',
        '',
      ].join('\r\n'),
    );
    expect(await detectLayout(cat)).toBe('visa');
    const ds = await openMvtecDataset(cat);
    expect(ds.layout).toBe('visa');
    expect(ds.trainGood.map((p) => path.relative(visa, p))).toEqual([
      'candle/Data/Images/Normal/0000.png',
      'candle/Data/Images/Normal/0001.png',
    ]);
    expect(ds.defects).toEqual(['anomaly']);
    expect(
      ds.test.map((t) => [t.defect, path.relative(visa, t.path), t.maskPath && path.relative(visa, t.maskPath)]),
    ).toEqual([
      ['anomaly', 'candle/Data/Images/Anomaly/000.png', 'candle/Data/Masks/Anomaly/000.png'],
      ['anomaly', 'candle/Data/Images/Anomaly/001.png', null],
      ['good', 'candle/Data/Images/Normal/0002.png', null],
    ]);
    expect((await openTrainingData(cat)).train).toHaveLength(2);
    await expect(openMvtecDataset(cat, { layout: 'mvtec' })).rejects.toThrow(/looks like a VisA category/);
    await expect(openMvtecDataset(root, { layout: 'visa' })).rejects.toThrow(/--layout visa: no folder .*Data.Images/);

    await fs.writeFile(csv, 'object;split;label\ncandle;train;normal\n');
    await expect(openMvtecDataset(cat)).rejects.toThrow(/expected the header object,split,label,image,mask/);
    await fs.writeFile(csv, 'object,split,label,image,mask\ncandle,val,normal,x.png,\n');
    await expect(openMvtecDataset(cat)).rejects.toThrow(/line 2: expected split train\|test .* found val, normal/);
    await fs.rm(csv);
    await expect(openMvtecDataset(cat)).rejects.toThrow(
      /VisA category .* split file is missing: looked for .*split_csv.1cls\.csv/,
    );
  });
});

describe('folder layout (anomalib Folder) and unrecognised folders', () => {
  it('takes good, defective and optional mask folders; masks by name or <name>_mask', async () => {
    const base = path.join(tmp, 'folders');
    await png(path.join(base, 'ok', 'a.png'));
    await png(path.join(base, 'ok', 'b.png'));
    await png(path.join(base, 'bad', 'x.png'));
    await png(path.join(base, 'bad', 'y.png'));
    await png(path.join(base, 'bad', 'z.png'));
    await png(path.join(base, 'scratched', 'w.png'));
    await png(path.join(base, 'masks', 'x.png'), 1, 1);
    await png(path.join(base, 'masks', 'z_mask.png'), 1, 1);
    const ds = await openFolderDataset({
      good: path.join(base, 'ok'),
      defective: [path.join(base, 'scratched'), path.join(base, 'bad')],
      masks: path.join(base, 'masks'),
    });
    expect(ds.layout).toBe('folder');
    expect(ds.defects).toEqual(['bad', 'scratched']);
    expect(
      ds.test.map((t) => [t.defect, path.basename(t.path), t.maskPath && path.relative(base, t.maskPath)]),
    ).toEqual([
      ['good', 'a.png', null],
      ['good', 'b.png', null],
      ['bad', 'x.png', 'masks/x.png'],
      ['bad', 'y.png', null],
      ['bad', 'z.png', 'masks/z_mask.png'],
      ['scratched', 'w.png', null],
    ]);
    const noMasks = await openFolderDataset({ good: path.join(base, 'ok'), defective: [path.join(base, 'bad')] });
    expect(groundTruthCounts(noMasks.test)).toEqual({
      images: 5,
      good: 2,
      defective: 3,
      defectiveWithMask: 0,
      defectiveWithoutMask: 3,
    });
    await expect(
      openFolderDataset({
        good: path.join(base, 'ok'),
        defective: [path.join(base, 'bad')],
        masks: path.join(base, 'nope'),
      }),
    ).rejects.toThrow(/mask folder not found: .*nope/);
    await expect(openFolderDataset({ good: path.join(base, 'ok'), defective: [] })).rejects.toThrow(/at least one/);
    await expect(
      openFolderDataset({ good: path.join(base, 'ok'), defective: [path.join(base, 'bad'), path.join(base, 'bad')] }),
    ).rejects.toThrow(/two defective folders are named bad/);
  });

  it('says what it found and what it expected when a folder matches no layout', async () => {
    const odd = path.join(tmp, 'odd');
    await fs.mkdir(path.join(odd, 'images', 'ok'), { recursive: true });
    await fs.mkdir(path.join(odd, 'labels'), { recursive: true });
    await fs.writeFile(path.join(odd, 'notes.txt'), 'x');
    const err = (await openMvtecDataset(odd).catch((e: unknown) => e)) as Error;
    expect(err).toBeInstanceOf(DatasetError);
    expect(err.message).toContain(`missing folder ${path.join(odd, 'train', 'good')}`);
    expect(err.message).toMatch(/found in .*odd: images\/, labels\/, 1 other file\(s\)/);
    expect(err.message).toMatch(/MVTec AD: .*ROOT\/train\/good\/\*\.png/);
    expect(err.message).toMatch(/MVTec 3D-AD: .*ROOT\/train\/good\/rgb\/\*\.png/);
    expect(err.message).toMatch(/folder: .*--good DIR --defective DIR/);
    // A test split alone is a data set for evaluation (requireTrain: false), not for training.
    const testOnly = path.join(tmp, 'test-only');
    await png(path.join(testOnly, 'test', 'good', 'a.png'));
    await png(path.join(testOnly, 'test', 'bad', 'b.png'));
    const t = await openMvtecDataset(testOnly, { requireTrain: false });
    expect([t.layout, t.trainGood, t.test.map((i) => i.defect)]).toEqual(['mvtec', [], ['bad', 'good']]);
    await expect(openMvtecDataset(testOnly)).rejects.toThrow(/missing folder .*test-only.train.good/);
    await png(path.join(testOnly, 'test', 'cut', 'rgb', 'c.png'));
    expect(await detectLayout(testOnly)).toBe('mvtec3d');
    // Training: no layout and no images either, the same explanation.
    await expect(openTrainingData(odd)).rejects.toThrow(
      /no images \(.*\) in .*odd, and .*odd is not a recognised data set[\s\S]*labels\//,
    );
    // A plain folder of good images is fine for training (no test split).
    const plain = path.join(tmp, 'plain');
    await png(path.join(plain, 'a.png'));
    expect(await openTrainingData(plain)).toEqual({
      train: [path.join(plain, 'a.png')],
      test: [],
      layout: 'plain folder',
    });
    await expect(openTrainingData(path.join(tmp, 'absent'))).rejects.toThrow(/data folder not found/);
  });
});
