/**
 * Dataset discovery and bulk loading.
 *
 * MVTec AD layout:
 *   ROOT/train/good/*                      defect-free training images
 *   ROOT/test/<defect>/*                   test images; <defect> = 'good' for normal ones
 *   ROOT/ground_truth/<defect>/<name>_mask.png
 *
 * Ground-truth masks follow MVTec's convention, 1 = defect (the opposite of the AnoSeg training masks in
 * src/synth, where 1 = normal). Any mask value > 0 counts as defect, not only 255, because resized or
 * re-encoded masks carry intermediate values at their borders.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { ImageReadError, loadImage, resizeImage, type LoadOptions } from '../image/io.js';
import { createImage, type Image } from '../image/types.js';

export const IMAGE_EXTENSIONS = ['.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff'] as const;

export function isImageFile(name: string): boolean {
  const base = path.basename(name);
  if (base.startsWith('.')) return false; // .DS_Store, editor temp files, our own atomic-write temps
  return (IMAGE_EXTENSIONS as readonly string[]).includes(path.extname(base).toLowerCase());
}

export interface TestItem {
  path: string;
  /** 'good' for normal images, otherwise the defect folder name. */
  defect: string;
  /** Ground-truth mask (1 = defect) for defective images; null for good ones. */
  maskPath: string | null;
}

export interface MvtecDataset {
  root: string;
  trainGood: string[];
  test: TestItem[];
  /** Defect type names found under test/, sorted, without 'good'. */
  defects: string[];
}

export class DatasetError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'DatasetError';
  }
}

/** Code-point order, independent of locale, so every machine lists files identically. */
function byName(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

async function isDir(p: string): Promise<boolean> {
  try {
    return (await fs.stat(p)).isDirectory();
  } catch {
    return false;
  }
}

async function listImages(dir: string): Promise<string[]> {
  const entries = await fs.readdir(dir, { withFileTypes: true });
  return entries
    .filter((e) => e.isFile() && isImageFile(e.name))
    .map((e) => e.name)
    .sort(byName)
    .map((n) => path.join(dir, n));
}

export interface MvtecOptions {
  /** Require ROOT/test to exist (default true); false allows a training-only folder (test = []). */
  requireTest?: boolean;
}

/**
 * Discover an MVTec-AD-style dataset. Throws DatasetError naming the missing folder when ROOT, ROOT/train/good
 * or ROOT/test is absent or train/good holds no images, and one error listing every defective test image
 * without a mask. Paths are sorted by defect then file name.
 */
export async function openMvtecDataset(root: string, opts: MvtecOptions = {}): Promise<MvtecDataset> {
  const requireTest = opts.requireTest ?? true;
  if (!(await isDir(root))) throw new DatasetError(`dataset folder not found: ${root}`);
  const trainDir = path.join(root, 'train', 'good');
  if (!(await isDir(trainDir))) {
    throw new DatasetError(`not an MVTec-style dataset: missing folder ${trainDir} (expected ROOT/train/good/*.png)`);
  }
  const trainGood = await listImages(trainDir);
  if (trainGood.length === 0) throw new DatasetError(`no training images in ${trainDir}`);

  const testDir = path.join(root, 'test');
  const test: TestItem[] = [];
  const defects: string[] = [];
  if (!(await isDir(testDir))) {
    if (requireTest) throw new DatasetError(`missing folder ${testDir} (expected ROOT/test/<defect>/*.png)`);
    return { root, trainGood, test, defects };
  }
  const groups = (await fs.readdir(testDir, { withFileTypes: true }))
    .filter((e) => e.isDirectory() && !e.name.startsWith('.'))
    .map((e) => e.name)
    .sort(byName);
  const missing: string[] = [];
  for (const defect of groups) {
    const files = await listImages(path.join(testDir, defect));
    if (defect !== 'good' && files.length > 0) defects.push(defect);
    for (const file of files) {
      if (defect === 'good') {
        test.push({ path: file, defect, maskPath: null });
        continue;
      }
      const maskPath = await findMask(root, defect, file);
      if (maskPath === null) missing.push(path.join(root, 'ground_truth', defect, `${stem(file)}_mask.png`));
      test.push({ path: file, defect, maskPath });
    }
  }
  if (missing.length > 0) {
    const shown = missing.slice(0, 20).join('\n  ');
    const more = missing.length > 20 ? `\n  ... and ${missing.length - 20} more` : '';
    throw new DatasetError(`${missing.length} defective test image(s) in ${root} have no mask:\n  ${shown}${more}`);
  }
  return { root, trainGood, test, defects };
}

function stem(file: string): string {
  return path.basename(file, path.extname(file));
}

/** ground_truth/<defect>/<stem>_mask.png, or the same name with another image extension. */
async function findMask(root: string, defect: string, file: string): Promise<string | null> {
  const base = path.join(root, 'ground_truth', defect, `${stem(file)}_mask`);
  for (const ext of ['.png', ...IMAGE_EXTENSIONS.filter((e) => e !== '.png')]) {
    try {
      if ((await fs.stat(base + ext)).isFile()) return base + ext;
    } catch {
      // try the next extension
    }
  }
  return null;
}

export interface FolderOptions {
  /** Descend into sub-folders (default false). Hidden folders are skipped. */
  recursive?: boolean;
}

/**
 * List the images (png, jpg, jpeg, bmp, tif, tiff) of a plain folder of good images, sorted.
 * Throws DatasetError when the folder does not exist or holds no images.
 */
export async function openImageFolder(dir: string, opts: FolderOptions = {}): Promise<string[]> {
  if (!(await isDir(dir))) throw new DatasetError(`image folder not found: ${dir}`);
  const out: string[] = [];
  const walk = async (d: string): Promise<void> => {
    const entries = (await fs.readdir(d, { withFileTypes: true })).sort((a, b) => byName(a.name, b.name));
    for (const e of entries) {
      const p = path.join(d, e.name);
      if (e.isFile() && isImageFile(e.name)) out.push(p);
      else if (opts.recursive && e.isDirectory() && !e.name.startsWith('.')) await walk(p);
    }
  };
  await walk(dir);
  if (out.length === 0) {
    throw new DatasetError(
      `no images (${IMAGE_EXTENSIONS.join(', ')}) in ${dir}${opts.recursive ? ' or its sub-folders' : ''}`,
    );
  }
  return out;
}

export interface LoadFailure {
  path: string;
  reason: string;
}

export interface LoadedImages {
  /** Successfully loaded images, in input order (failed paths left out). */
  images: Array<{ path: string; image: Image }>;
  failures: LoadFailure[];
}

/**
 * Load many images, collecting unreadable ones as { path, reason } instead of stopping; the caller decides
 * whether failures are fatal. `onError` is called for each failure as it happens (e.g. to log it).
 * Errors other than ImageReadError (bugs, bad options) are rethrown.
 */
export async function loadImages(
  paths: readonly string[],
  opts: LoadOptions = {},
  onError?: (failure: LoadFailure) => void,
): Promise<LoadedImages> {
  const results: Array<Image | LoadFailure> = new Array(paths.length);
  // A few reads in flight overlap file I/O with decoding without flooding the 2-core machine.
  const concurrency = 4;
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < paths.length) {
      const i = next++;
      try {
        results[i] = await loadImage(paths[i], opts);
      } catch (err) {
        if (!(err instanceof ImageReadError)) throw err;
        const failure = { path: paths[i], reason: err.reason };
        results[i] = failure;
        onError?.(failure);
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, paths.length) }, worker));
  const images: LoadedImages['images'] = [];
  const failures: LoadFailure[] = [];
  results.forEach((r, i) => {
    if ('data' in r) images.push({ path: paths[i], image: r });
    else failures.push(r);
  });
  return { images, failures };
}

/** Binarise a 1-channel mask: any value > 0 becomes 1 (defect), else 0. */
export function binarizeMask(mask: Image): Image {
  if (mask.channels !== 1) throw new Error(`binarizeMask: expected 1 channel, got ${mask.channels}`);
  const out = createImage(1, mask.height, mask.width);
  for (let i = 0; i < out.data.length; i++) out.data[i] = mask.data[i] > 0 ? 1 : 0;
  return out;
}

/**
 * Load a ground-truth mask as a 1-channel {0, 1} image (1 = defect, any value > 0) resized nearest to
 * height x width. Colour masks are reduced to luma first.
 */
export async function loadMask(maskPath: string, height: number, width: number): Promise<Image> {
  const mask = binarizeMask(await loadImage(maskPath, { channels: 1 }));
  return resizeImage(mask, height, width, 'nearest');
}

/** An all-zero (no defect) mask, for good test images. */
export function emptyMask(height: number, width: number): Image {
  return createImage(1, height, width);
}
