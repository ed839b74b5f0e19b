/**
 * Dataset discovery and bulk loading. Three layouts (README "Data layouts"):
 *
 * MVTec AD:
 *   ROOT/train/good/*                      defect-free training images
 *   ROOT/test/<defect>/*                   test images; <defect> = 'good' for normal ones
 *   ROOT/ground_truth/<defect>/<name>_mask.png
 *
 * MVTec 3D-AD (RGB only; the xyz point clouds are ignored):
 *   ROOT/train/good/rgb/*                  defect-free training images
 *   ROOT/validation/good/rgb/*             ignored, or extra training images with `includeValidation`
 *   ROOT/test/<defect>/rgb/*               test images
 *   ROOT/test/<defect>/gt/<same name>      masks
 *
 * MVTec LOCO AD (several masks per image, their union is the ground truth):
 *   ROOT/train/good/*, ROOT/validation/good/* (ignored, or extra training images with `includeValidation`)
 *   ROOT/test/<defect>/<name>.png
 *   ROOT/ground_truth/<defect>/<name>/000.png, 001.png, ...
 *
 * VisA (its split CSV decides train / test; paths in it are relative to the VisA root):
 *   VISA/<cat>/Data/Images/{Normal,Anomaly}/*.JPG, VISA/<cat>/Data/Masks/Anomaly/*.png
 *   VISA/split_csv/1cls.csv                 object,split,label,image,mask (ROOT = VISA/<cat>)
 *
 * Folder (anomalib's Folder data module): a folder of good images, one or more folders of defective images and an
 * optional mask folder (masks named as the image, or <name>_mask.<ext>), see openFolderDataset.
 *
 * Masks are optional everywhere: a defective test image without one has `maskPath: null` and is evaluated at image
 * level only (its folder says it is defective); training uses the good images alone.
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
  /**
   * Ground-truth mask (1 = defect) of a defective image; null for good images (all normal) and for defective
   * images without a mask (evaluated at image level only). A folder (MVTec LOCO) holds several masks whose union
   * is the ground truth; read it with loadGroundTruth / loadMask.
   */
  maskPath: string | null;
}

/** The category layouts openDataset recognises ('folder' comes from openFolderDataset). */
export const DATA_LAYOUTS = ['mvtec', 'mvtec3d', 'mvtec-loco', 'visa', 'folder'] as const;
export type DataLayout = (typeof DATA_LAYOUTS)[number];

export interface MvtecDataset {
  root: string;
  layout: DataLayout;
  trainGood: string[];
  test: TestItem[];
  /** Defect type names found under test/, sorted, without 'good'. */
  defects: string[];
}

/** Test-set counts: how many images there are and how many of the defective ones have masks. */
export interface GroundTruthCounts {
  images: number;
  good: number;
  defective: number;
  defectiveWithMask: number;
  defectiveWithoutMask: number;
}

export function groundTruthCounts(test: readonly TestItem[]): GroundTruthCounts {
  const good = test.filter((t) => t.defect === 'good').length;
  const withMask = test.filter((t) => t.defect !== 'good' && t.maskPath !== null).length;
  return {
    images: test.length,
    good,
    defective: test.length - good,
    defectiveWithMask: withMask,
    defectiveWithoutMask: test.length - good - withMask,
  };
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

async function isFile(p: string): Promise<boolean> {
  try {
    return (await fs.stat(p)).isFile();
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

async function subfolders(dir: string): Promise<string[]> {
  return (await fs.readdir(dir, { withFileTypes: true }))
    .filter((e) => e.isDirectory() && !e.name.startsWith('.'))
    .map((e) => e.name)
    .sort(byName);
}

export interface MvtecOptions {
  /** Require a test split (default true); false allows a training-only folder (test = []). */
  requireTest?: boolean;
  /** Require training images (default true); false allows a test-only folder (trainGood = []), e.g. for eval. */
  requireTrain?: boolean;
  /** 'auto' (default) detects MVTec AD or MVTec 3D-AD; naming one checks that the folder has that layout. */
  layout?: 'auto' | 'mvtec' | 'mvtec3d' | 'visa';
  /** MVTec 3D-AD / LOCO: add validation/good(/rgb) to the training images (default false: ignored). */
  includeValidation?: boolean;
}

const LAYOUT_HELP =
  'expected one of:\n' +
  '  MVTec AD:     ROOT/train/good/*.png, ROOT/test/<type>/*.png, [ROOT/ground_truth/<type>/<name>_mask.png]\n' +
  '  MVTec 3D-AD:  ROOT/train/good/rgb/*.png, ROOT/test/<type>/rgb/*.png, [ROOT/test/<type>/gt/<name>.png]\n' +
  '  MVTec LOCO:   as MVTec AD, masks in [ROOT/ground_truth/<type>/<name>/000.png, 001.png, ...]\n' +
  '  VisA:         ROOT/Data/Images/{Normal,Anomaly}/*, ROOT/../split_csv/1cls.csv (ROOT = VisA/<category>)\n' +
  '  folder:       --good DIR --defective DIR [--masks DIR] (eval), or a plain folder of good images (training)';

/** "ROOT holds: a/, b/, 3 image files" — what a folder that matched no layout actually contains. */
async function describeFolder(root: string): Promise<string> {
  const entries = (await fs.readdir(root, { withFileTypes: true })).filter((e) => !e.name.startsWith('.'));
  const dirs = entries.filter((e) => e.isDirectory()).map((e) => `${e.name}/`);
  const images = entries.filter((e) => e.isFile() && isImageFile(e.name)).length;
  const other = entries.filter((e) => e.isFile() && !isImageFile(e.name)).length;
  const parts = [...dirs.sort(byName).slice(0, 12)];
  if (dirs.length > 12) parts.push(`... ${dirs.length - 12} more folders`);
  if (images) parts.push(`${images} image file(s)`);
  if (other) parts.push(`${other} other file(s)`);
  return parts.length ? parts.join(', ') : 'nothing';
}

/**
 * Which category layout ROOT has: 'mvtec3d' when ROOT/train/good/rgb exists (or, without train/good, some
 * ROOT/test/<type>/rgb), 'mvtec' when ROOT/train/good exists (or, without it, ROOT/test has sub-folders), 'visa'
 * when ROOT/Data/Images exists, null when none (ROOT must exist). MVTec LOCO is detected as 'mvtec' here.
 */
export async function detectLayout(root: string): Promise<'mvtec' | 'mvtec3d' | 'visa' | null> {
  if (await isDir(path.join(root, 'Data', 'Images'))) return 'visa';
  const trainGood = path.join(root, 'train', 'good');
  if (await isDir(trainGood)) return (await isDir(path.join(trainGood, 'rgb'))) ? 'mvtec3d' : 'mvtec';
  const testDir = path.join(root, 'test');
  if (!(await isDir(testDir))) return null;
  const groups = await subfolders(testDir);
  if (groups.length === 0) return null;
  for (const g of groups) if (await isDir(path.join(testDir, g, 'rgb'))) return 'mvtec3d';
  return 'mvtec';
}

/**
 * Discover an MVTec AD, MVTec LOCO, MVTec 3D-AD or VisA category (detected, or as `opts.layout` says). Throws
 * DatasetError naming what was found and what was expected when ROOT matches no layout, and naming the folder
 * when train/good holds no images (unless `requireTrain: false`) or the test split is missing (unless
 * `requireTest: false`). Masks are optional: a defective test image without one gets `maskPath: null`. Paths
 * are sorted by defect then file name.
 */
export async function openMvtecDataset(root: string, opts: MvtecOptions = {}): Promise<MvtecDataset> {
  const requireTest = opts.requireTest ?? true;
  const requireTrain = opts.requireTrain ?? true;
  if (!(await isDir(root))) throw new DatasetError(`dataset folder not found: ${root}`);
  const detected = await detectLayout(root);
  const wanted = opts.layout ?? 'auto';
  if (wanted === 'visa' && detected !== 'visa') {
    throw new DatasetError(
      `--layout visa: no folder ${path.join(root, 'Data', 'Images')} (expected ROOT = VisA/<category>)\n${LAYOUT_HELP}`,
    );
  }
  if (detected === 'visa') {
    if (wanted !== 'auto' && wanted !== 'visa') {
      throw new DatasetError(
        `--layout ${wanted}: ${root} looks like a VisA category (it has Data/Images)\n${LAYOUT_HELP}`,
      );
    }
    return openVisaCategory(root, requireTrain, requireTest);
  }
  if (detected === null || (requireTrain && !(await isDir(path.join(root, 'train', 'good'))))) {
    throw new DatasetError(
      `${root} is not a recognised data set: missing folder ${path.join(root, 'train', 'good')}\n` +
        `found in ${root}: ${await describeFolder(root)}\n${LAYOUT_HELP}`,
    );
  }
  if (wanted !== 'auto' && wanted !== detected) {
    const expected =
      wanted === 'mvtec3d'
        ? `${path.join(root, 'train', 'good', 'rgb')}/*.png`
        : `images directly in ${path.join(root, 'train', 'good')}`;
    throw new DatasetError(
      `--layout ${wanted}: ${root} looks like ${detected === 'mvtec3d' ? 'MVTec 3D-AD' : 'MVTec AD'}; expected ${expected}\n${LAYOUT_HELP}`,
    );
  }
  const is3d = detected === 'mvtec3d';
  // MVTec 3D-AD keeps images in <split>/<type>/rgb and masks in <split>/<type>/gt.
  const imageDir = (split: string, type: string): string =>
    is3d ? path.join(root, split, type, 'rgb') : path.join(root, split, type);
  const trainDir = imageDir('train', 'good');
  const trainGood = (await isDir(trainDir)) ? await listImages(trainDir) : [];
  if (opts.includeValidation && (await isDir(imageDir('validation', 'good')))) {
    trainGood.push(...(await listImages(imageDir('validation', 'good'))));
  }
  if (trainGood.length === 0 && requireTrain) {
    throw new DatasetError(
      `no training images in ${trainDir} (found: ${await describeFolder(trainDir)}; expected ${IMAGE_EXTENSIONS.join(', ')} files)`,
    );
  }

  const testDir = path.join(root, 'test');
  const test: TestItem[] = [];
  const defects: string[] = [];
  if (!(await isDir(testDir))) {
    if (requireTest) {
      throw new DatasetError(
        `missing folder ${testDir} (expected ${is3d ? 'ROOT/test/<type>/rgb/*.png' : 'ROOT/test/<type>/*.png'})`,
      );
    }
    return { root, layout: detected, trainGood, test, defects };
  }
  const emptyGroups: string[] = [];
  let maskFolders = 0;
  for (const defect of await subfolders(testDir)) {
    const dir = imageDir('test', defect);
    const files = (await isDir(dir)) ? await listImages(dir) : [];
    if (files.length === 0) emptyGroups.push(dir);
    if (defect !== 'good' && files.length > 0) defects.push(defect);
    for (const file of files) {
      if (defect === 'good') {
        test.push({ path: file, defect, maskPath: null });
        continue;
      }
      let maskPath = is3d
        ? await findMask(path.join(root, 'test', defect, 'gt', stem(file)))
        : await findMask(path.join(root, 'ground_truth', defect, `${stem(file)}_mask`));
      const locoDir = path.join(root, 'ground_truth', defect, stem(file));
      if (maskPath === null && !is3d && (await isDir(locoDir)) && (await listImages(locoDir)).length > 0) {
        maskPath = locoDir;
        maskFolders++;
      }
      test.push({ path: file, defect, maskPath });
    }
  }
  if (test.length === 0 && requireTest) {
    throw new DatasetError(
      `no test images in ${testDir}: looked in ${emptyGroups.join(', ') || '(no sub-folders)'} ` +
        `(expected ${is3d ? 'ROOT/test/<type>/rgb/*.png' : 'ROOT/test/<type>/*.png'})`,
    );
  }
  return { root, layout: maskFolders > 0 ? 'mvtec-loco' : detected, trainGood, test, defects };
}

/** The VisA split CSV for category folder ROOT: ROOT/../split_csv/1cls.csv, or ROOT/split_csv/1cls.csv. */
async function findVisaCsv(root: string): Promise<{ csv: string; base: string } | null> {
  for (const base of [path.dirname(path.resolve(root)), path.resolve(root)]) {
    const csv = path.join(base, 'split_csv', '1cls.csv');
    if (await isFile(csv)) return { csv, base };
  }
  return null;
}

/**
 * A VisA category: its rows of split_csv/1cls.csv (object,split,label,image,mask; label normal | anomaly; paths
 * relative to the VisA root). Anomalous images form one defect type, 'anomaly'; an empty or absent mask makes an
 * image-level item.
 */
async function openVisaCategory(root: string, requireTrain: boolean, requireTest: boolean): Promise<MvtecDataset> {
  const found = await findVisaCsv(root);
  if (found === null) {
    throw new DatasetError(
      `${root} looks like a VisA category (it has Data/Images) but its split file is missing: looked for ` +
        `${path.join(path.dirname(path.resolve(root)), 'split_csv', '1cls.csv')} and ` +
        `${path.join(path.resolve(root), 'split_csv', '1cls.csv')} (VisA's object,split,label,image,mask CSV)`,
    );
  }
  const { csv, base } = found;
  const lines = (await fs.readFile(csv, 'utf8')).split(/\r?\n/).filter((l) => l.trim() !== '');
  const header = (lines.shift() ?? '').split(',').map((h) => h.trim());
  const col = (name: string): number => header.indexOf(name);
  if (['object', 'split', 'label', 'image', 'mask'].some((c) => col(c) < 0)) {
    throw new DatasetError(`${csv}: expected the header object,split,label,image,mask, found ${header.join(',')}`);
  }
  const category = path.basename(path.resolve(root));
  const trainGood: string[] = [];
  const test: TestItem[] = [];
  for (const [i, line] of lines.entries()) {
    const cells = line.split(',').map((c) => c.trim());
    if (cells[col('object')] !== category) continue;
    const split = cells[col('split')];
    const label = cells[col('label')];
    if ((split !== 'train' && split !== 'test') || (label !== 'normal' && label !== 'anomaly')) {
      throw new DatasetError(
        `${csv} line ${i + 2}: expected split train|test and label normal|anomaly, found ${split}, ${label}`,
      );
    }
    const image = path.join(base, cells[col('image')]);
    if (split === 'train') {
      if (label === 'normal') trainGood.push(image);
      continue;
    }
    const mask = cells[col('mask')] ?? '';
    const maskPath =
      label === 'anomaly' && mask !== '' && (await isFile(path.join(base, mask))) ? path.join(base, mask) : null;
    test.push({ path: image, defect: label === 'normal' ? 'good' : 'anomaly', maskPath });
  }
  if (trainGood.length === 0 && requireTrain) {
    throw new DatasetError(`no training images for ${category} in ${csv} (rows with object ${category}, split train)`);
  }
  if (test.length === 0 && requireTest) {
    throw new DatasetError(`no test images for ${category} in ${csv} (rows with object ${category}, split test)`);
  }
  trainGood.sort(byName);
  test.sort((a, b) => byName(a.defect, b.defect) || byName(a.path, b.path));
  return {
    root,
    layout: 'visa',
    trainGood,
    test,
    defects: test.some((t) => t.defect === 'anomaly') ? ['anomaly'] : [],
  };
}

function stem(file: string): string {
  return path.basename(file, path.extname(file));
}

/** BASE.png, or BASE with another image extension; null when none exists. */
async function findMask(base: string): Promise<string | null> {
  for (const ext of ['.png', ...IMAGE_EXTENSIONS.filter((e) => e !== '.png')]) {
    if (await isFile(base + ext)) return base + ext;
  }
  return null;
}

export interface FolderDatasetOptions {
  /** Folder of good (normal) test images. */
  good: string;
  /** One or more folders of defective test images; each folder's name is its defect type. */
  defective: string[];
  /** Optional mask folder: MASKS/<name>.<ext> or MASKS/<name>_mask.<ext>, also MASKS/<defect folder>/... . */
  masks?: string;
}

/**
 * A test set in anomalib's Folder sense: good images, defective images, optional masks. Throws DatasetError
 * naming the folder when one is missing or holds no images, or when two defective folders share a name.
 * trainGood is empty (training takes a plain folder of good images).
 */
export async function openFolderDataset(opts: FolderDatasetOptions): Promise<MvtecDataset> {
  if (opts.defective.length === 0) throw new DatasetError('folder layout: give at least one defective folder');
  const test: TestItem[] = [];
  for (const file of await openImageFolder(opts.good)) test.push({ path: file, defect: 'good', maskPath: null });
  if (opts.masks !== undefined && !(await isDir(opts.masks))) {
    throw new DatasetError(`mask folder not found: ${opts.masks}`);
  }
  const defects: string[] = [];
  for (const dir of opts.defective) {
    let defect = path.basename(path.resolve(dir));
    if (defect === 'good') defect = 'defective';
    if (defects.includes(defect)) {
      throw new DatasetError(`folder layout: two defective folders are named ${defect} (${opts.defective.join(', ')})`);
    }
    defects.push(defect);
    for (const file of await openImageFolder(dir)) {
      let maskPath: string | null = null;
      if (opts.masks !== undefined) {
        for (const base of [
          path.join(opts.masks, stem(file)),
          path.join(opts.masks, `${stem(file)}_mask`),
          path.join(opts.masks, defect, stem(file)),
          path.join(opts.masks, defect, `${stem(file)}_mask`),
        ]) {
          maskPath = await findMask(base);
          if (maskPath) break;
        }
      }
      test.push({ path: file, defect, maskPath });
    }
  }
  const order = (t: TestItem): string => (t.defect === 'good' ? '' : t.defect);
  test.sort((a, b) => byName(order(a), order(b)) || byName(a.path, b.path));
  return { root: opts.good, layout: 'folder', trainGood: [], test, defects: defects.sort(byName) };
}

/**
 * Training data as the trainers take it: an MVTec AD / 3D-AD category (its training images, and its test split for
 * logged diagnostics) or, when `dir` has neither layout, a plain folder of good images (no test split).
 */
export async function openTrainingData(dir: string): Promise<{ train: string[]; test: TestItem[]; layout: string }> {
  if (!(await isDir(dir))) throw new DatasetError(`data folder not found: ${dir}`);
  if ((await isDir(path.join(dir, 'train', 'good'))) || (await detectLayout(dir)) === 'visa') {
    const ds = await openMvtecDataset(dir, { requireTest: false });
    return { train: ds.trainGood, test: ds.test, layout: ds.layout };
  }
  try {
    return { train: await openImageFolder(dir), test: [], layout: 'plain folder' };
  } catch (e) {
    if (!(e instanceof DatasetError)) throw e;
    throw new DatasetError(
      `${e.message}, and ${dir} is not a recognised data set (no ${path.join(dir, 'train', 'good')})\n` +
        `found in ${dir}: ${await describeFolder(dir)}\n${LAYOUT_HELP}`,
    );
  }
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
 * A ground-truth mask file as a 1-channel {0, 1} image (1 = defect, any value > 0; colour masks are reduced to
 * luma first), or for a folder of masks (MVTec LOCO) their union, each resized nearest to the first one's size.
 */
export async function loadGroundTruth(maskPath: string): Promise<Image> {
  return (await loadGroundTruthAt(maskPath)).mask;
}

/**
 * loadGroundTruth at the size `size` gives for the stored size (of the first mask of a folder), resized nearest;
 * a smaller size is sampled while decoding, so a large mask is never held as a full-size float image (only its
 * stored samples, 1-2 bytes per pixel). Also returns the stored size.
 */
export async function loadGroundTruthAt(
  maskPath: string,
  size?: (height: number, width: number) => { height: number; width: number },
): Promise<{ mask: Image; source: { height: number; width: number } }> {
  const decode = async (
    file: string,
    want: (height: number, width: number) => { height: number; width: number },
  ): Promise<{ mask: Image; source: { height: number; width: number } }> => {
    let source = { height: 0, width: 0 };
    let target = source;
    const img = await loadImage(file, {
      channels: 1,
      shrink: {
        kernel: 'nearest',
        size: (height, width) => (target = want(height, width)),
        onSize: (height, width) => {
          source = { height, width };
        },
      },
    });
    // The decoder samples only downwards; a larger (or mixed) target is reached here, with the same nearest rule.
    const sized =
      img.height === target.height && img.width === target.width
        ? img
        : resizeImage(img, target.height, target.width, 'nearest');
    return { mask: binarizeMask(sized), source };
  };
  const own = size ?? ((height: number, width: number) => ({ height, width }));
  if (!(await isDir(maskPath))) return decode(maskPath, own);
  const files = await listImages(maskPath);
  if (files.length === 0) throw new DatasetError(`mask folder ${maskPath} holds no mask images`);
  const first = await decode(files[0], own);
  const union = first.mask;
  for (const file of files.slice(1)) {
    const { mask: m } = await decode(file, () => ({ height: union.height, width: union.width }));
    for (let i = 0; i < union.data.length; i++) if (m.data[i] > 0) union.data[i] = 1;
  }
  return { mask: union, source: first.source };
}

/** loadGroundTruth resized nearest to height x width. */
export async function loadMask(maskPath: string, height: number, width: number): Promise<Image> {
  return (await loadGroundTruthAt(maskPath, () => ({ height, width }))).mask;
}

/** An all-zero (no defect) mask, for good test images. */
export function emptyMask(height: number, width: number): Image {
  return createImage(1, height, width);
}
