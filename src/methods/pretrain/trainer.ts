/**
 * Semi-formula-driven pre-training of a PaDiM feature extractor (after Kobayashi et al., "Anomaly Detection Based
 * on Semi-Formula Driven Pre-training Dataset to Represent Subtle Difference and Anomaly Score"): instead of
 * ImageNet, the ResNet18 learns on an endless stream of defect-free bases (procedural textures, or crops of real
 * good images) with GMM-shaped defects rendered by formula (src/synth/formula.ts), each with a soft mask alpha and a
 * scalar strength in [0, 1]. The per-pixel target is t = alpha * strength (0 outside the defect and on defect-free
 * samples).
 *
 * Heads (small, discarded after training; only the backbone is saved): a 1x1 convolution on layer2 (stride 8) and
 * one on layer3 (stride 16) giving per-position outputs m8, m16, and an image head (1x1 convolution on the
 * concatenated global average and global max of layer3) giving one output g per image. t is average-pooled to
 * t8, t16 (the share of each patch that is defect, weighted by strength).
 *
 * L_direct (regression of the anomaly score; batch = `batch` independent stream samples, 10% defect-free):
 *     L_direct = bMSE(m8, t8) + bMSE(m16, t16) + MSE(g, strength)
 *   bMSE is a class-balanced MSE: mean squared error over defect positions (t > 0.02) plus mean squared error over
 *   the other positions, so the few defect patches weigh as much as the many clean ones.
 *
 * L_indirect (pairwise ranking, never shown the score's value; batch = `batch` / 2 pairs): each pair is a clean base
 * c and the same base with a defect d. The outputs act as anomaly scores compared within the pair (Bradley-Terry /
 * logistic ranking: P(d more anomalous than c) = sigmoid(s(d) - s(c))):
 *     L_indirect = R8 + R16 + R_img + 0.01 * mean(m8^2 + m16^2 + g^2)
 *   R_k    = mean over the defect patches (t_k(d) > 0.25) of softplus(-(m_k(d) - m_k(c)))
 *   R_img  = mean over the pairs of softplus(-(g(d) - g(c)))
 *   pairs whose defect is nearly invisible (strength < 0.05) are left out; the small L2 term pins the otherwise free
 *   offset of the scores. Why this variant: the difference is taken between two images that are identical except
 *   for the defect, so the only way to lower the loss is to represent that subtle difference in the features (the
 *   poster's "represent subtle difference"), and a ranking is well defined without assuming the strength scale is
 *   meaningful, unlike the regression.
 *
 * Default (and the shipped checkpoint): 'indirect', chosen without test data; the comparison is in README.md here.
 *
 * Training: Adam, linear warm-up then cosine decay to 5% of the learning rate; BatchNorm running statistics are
 * re-estimated at the end (plain average over 16 training batches). Checkpoints (backbone, heads, optimiser state,
 * loss history) are written atomically to runDir/checkpoint.safetensors; a rerun with the same settings resumes
 * (a resumed run draws a fresh seeded data stream). The loss on a fixed evaluation batch (eval mode) is logged.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { F, Tensor, manualSeed, noGrad, tidy } from '../../engine/index.js';
import { Adam, Conv2d, Module, reestimateBatchNorm } from '../../nn/index.js';
import { FeatureBackbone } from '../../models/backbone.js';
import { toChannels } from '../../models/fitted-prediction.js';
import { openImageFolder, loadImages } from '../../data/dataset.js';
import { createImage, type Image } from '../../image/types.js';
import {
  formulaStream,
  BasePool,
  resolveFormulaConfig,
  sampleFormulaDefect,
  type FormulaDefectConfig,
  type FormulaSample,
} from '../../synth/formula.js';
import { auroc } from '../../eval/metrics.js';
import { rankSeedOffset, type DataParallel } from '../../train/data-parallel.js';
import { Rng } from '../../util/rng.js';
import { imagesToTensor } from '../../models/image-tensor.js';
import { RunClock, runTrainingLoop } from '../../train/loop.js';
import { RunFolder } from '../../train/run-folder.js';

export type PretrainLoss = 'direct' | 'indirect';
export const PRETRAIN_LOSSES: readonly PretrainLoss[] = ['direct', 'indirect'];
export const DEFAULT_PRETRAIN_LOSS: PretrainLoss = 'indirect';
export const PRETRAIN_CHECKPOINT_FORMAT = 'anoseg.ts/pretrain-checkpoint@1';

/** Defect patches for the balanced MSE (direct) and the ranking (indirect). */
const DIRECT_POSITIVE = 0.02;
const RANK_POSITIVE = 0.25;
const RANK_MIN_STRENGTH = 0.05;
const RANK_L2 = 0.01;
const DEFAULT_GRAY_FRACTION = 0.3;
// PaDiM's default input side: real bases are seen at the scale PaDiM sees a category.
export const DEFAULT_REAL_SIDE = 256;

export interface PretrainOptions {
  /** The backbone file to write (format anoseg.ts/backbone@1). */
  out: string;
  steps: number;
  /** Images per step (indirect: batch / 2 clean-defective pairs). */
  batch: number;
  /** Sample side in pixels (multiple of 16, >= 32). */
  size: number;
  /** ResNet18 channel multiplier. */
  width: number;
  /** Default DEFAULT_PRETRAIN_LOSS ('indirect'). */
  loss?: PretrainLoss;
  seed: number;
  /**
   * Defect-free bases ("semi-formula" when real): folders of good images (an MVTec-style category -> train/good, or a
   * plain folder), the word 'procedural' for procedural textures, or images; several are combined. Default procedural.
   */
  bases?: string | readonly string[] | Image[];
  /**
   * Share of procedural bases when real ones are given too (default: 1 / number of sources when 'procedural' is
   * among them, else 0).
   */
  proceduralShare?: number;
  /**
   * Real images are rescaled to about this shorter side (times a random factor in [0.75, 1.33]) before a crop is
   * taken, so that crops show parts at the scale the detector sees them (default 256, PaDiM's default resolution); null keeps
   * the stored size.
   */
  realSide?: number | null;
  /**
   * Start from this backbone file instead of random weights (its width and input normalisation are kept): the
   * per-category adaptation of a generic backbone to a category's own good images (bases) with a lower lr.
   */
  init?: string;
  /** Adam learning rate (default 1e-3). */
  lr?: number;
  /** Wall-clock budget in minutes: stops early (and still writes the backbone). */
  maxMinutes?: number | null;
  /** Share of procedural bases drawn as grayscale (default 0.3; industrial data is often grayscale). */
  grayFraction?: number;
  /** Formula defect settings (defaults: DEFAULT_FORMULA_CONFIG). */
  formula?: Partial<FormulaDefectConfig>;
  /** Checkpoint and logs (default: `out` without extension + '.run'). */
  runDir?: string;
  /** Continue from runDir/checkpoint.safetensors when present (default true). */
  resume?: boolean;
  /** Progress bar on stderr (default true). */
  progress?: boolean;
  /** Steps between evaluations of the fixed batch (default 50) and between checkpoints (default 100). */
  evalEvery?: number;
  checkpointEvery?: number;
  /**
   * Data-parallel training (as trainAnoSeg's): each rank draws batch/N samples per step from its own seeded stream;
   * gradients are averaged; rank 0 alone writes the checkpoint, log and backbone.
   */
  distributed?: DataParallel;
}

export interface PretrainPoint {
  step: number;
  minutes: number;
  /** Exponential moving average of the training loss. */
  trainLoss: number;
  /** Loss on the fixed evaluation batch, eval-mode BatchNorm. */
  evalLoss: number;
  /** AUROC of the stride-8 head output on the evaluation batch: defect patches (t8 > 0.25) vs the rest. */
  evalPatchAuroc: number;
}

export interface PretrainResult {
  out: string;
  steps: number;
  minutes: number;
  history: PretrainPoint[];
  finalEvalLoss: number;
}

/** One training batch: images (any of 1 / 3 channels, all the same size), per-pixel targets, image strengths. */
export interface PretrainBatch {
  images: Image[];
  /** alpha * strength, 1 channel per image. */
  targets: Image[];
  strengths: number[];
  /** 'indirect': images[i] (clean) and images[i + pairs] (its defective twin) for i < pairs. 0 for 'direct'. */
  pairs: number;
}

/** The heads of the pre-training losses (see the module comment). */
export class PretrainHeads extends Module {
  readonly map8: Conv2d;
  readonly map16: Conv2d;
  readonly image: Conv2d;

  constructor(channels: readonly [number, number, number]) {
    super();
    this.map8 = this.registerModule('map8', new Conv2d(channels[1], 1, 1));
    this.map16 = this.registerModule('map16', new Conv2d(channels[2], 1, 1));
    this.image = this.registerModule('image', new Conv2d(2 * channels[2], 1, 1));
  }

  forward(f2: Tensor, f3: Tensor): { m8: Tensor; m16: Tensor; g: Tensor } {
    const n = f3.shape[0];
    const pooled = Tensor.cat([f3.mean([2, 3], true), f3.amax([2, 3], true)], 1);
    return { m8: this.map8.forward(f2), m16: this.map16.forward(f3), g: this.image.forward(pooled).reshape([n]) };
  }
}

/** sum(values * weight) / max(1, sum(weight)) */
function weightedMean(values: Tensor, weight: Tensor): Tensor {
  return values.mul(weight).sum().div(weight.sum().clamp(1, null));
}

/**
 * The loss of one batch (see the module comment). `x` is the normalised [N, 3, H, W] input; returns the scalar loss
 * and the stride-8 head output (for diagnostics).
 */
export function pretrainLoss(
  backbone: FeatureBackbone,
  heads: PretrainHeads,
  x: Tensor,
  batch: PretrainBatch,
  loss: PretrainLoss,
): { loss: Tensor; m8: Tensor; t8: Tensor } {
  const [, f2, f3] = backbone.features(x);
  const { m8, m16, g } = heads.forward(f2, f3);
  const n = batch.images.length;
  const t = imagesToTensor(batch.targets); // [n, 1, h, w]
  const t8 = F.avgPool2d(t, 8);
  const t16 = F.avgPool2d(t, 16);
  const s = Tensor.from(Float32Array.from(batch.strengths), [n]);
  if (loss === 'direct') {
    const bmse = (m: Tensor, target: Tensor): Tensor => {
      const err = m.sub(target).square();
      const pos = target.gt(DIRECT_POSITIVE).to('float32');
      return weightedMean(err, pos).add(weightedMean(err, pos.rsub(1)));
    };
    return { loss: bmse(m8, t8).add(bmse(m16, t16)).add(F.mseLoss(g, s)), m8, t8 };
  }
  const p = batch.pairs;
  if (!(p >= 1 && 2 * p === n))
    throw new Error(`pretrainLoss: an indirect batch needs pairs, got ${p} pairs of ${n} images`);
  const valid = s
    .slice(0, p, 2 * p)
    .ge(RANK_MIN_STRENGTH)
    .to('float32'); // [p]
  const rank = (m: Tensor, target: Tensor): Tensor => {
    const delta = m.slice(0, p, 2 * p).sub(m.slice(0, 0, p));
    const ones = Tensor.ones(delta.shape);
    const weight = target
      .slice(0, p, 2 * p)
      .gt(RANK_POSITIVE)
      .to('float32')
      .mul(valid.reshape([p, 1, 1, 1]));
    return weightedMean(F.bceWithLogits(delta, ones, 'none'), weight);
  };
  const gDelta = g.slice(0, p, 2 * p).sub(g.slice(0, 0, p));
  const rImg = weightedMean(F.bceWithLogits(gDelta, Tensor.ones([p]), 'none'), valid);
  const l2 = m8.square().mean().add(m16.square().mean()).add(g.square().mean()).mul(RANK_L2);
  return { loss: rank(m8, t8).add(rank(m16, t16)).add(rImg).add(l2), m8, t8 };
}

function targetOf(sample: FormulaSample): Image {
  const t = createImage(1, sample.alpha.height, sample.alpha.width);
  for (let i = 0; i < t.data.length; i++) t.data[i] = sample.alpha.data[i] * sample.strength;
  return t;
}

/** Endless batches of one loss kind, reproducible from the seed. */
export class PretrainData {
  private readonly rng: Rng;
  private readonly stream: Generator<FormulaSample, never, undefined>;
  private readonly config: FormulaDefectConfig;
  private readonly pool: BasePool;

  constructor(
    readonly loss: PretrainLoss,
    readonly size: number,
    seed: number,
    bases: BasePool | Image[] | 'procedural' = 'procedural',
    formula: Partial<FormulaDefectConfig> = {},
  ) {
    if (!(Number.isInteger(size) && size >= 32 && size % 16 === 0)) {
      throw new Error(`pre-training size must be a multiple of 16 and >= 32, got ${size}`);
    }
    this.pool =
      bases instanceof BasePool
        ? bases
        : new BasePool(bases === 'procedural' ? { grayFraction: DEFAULT_GRAY_FRACTION } : { real: bases });
    this.config = resolveFormulaConfig(formula);
    this.rng = new Rng(seed);
    this.stream = formulaStream(this.pool, seed * 2 + 1, this.config, size, 3);
  }

  next(batch: number): PretrainBatch {
    if (this.loss === 'direct') {
      const samples = Array.from({ length: batch }, () => this.stream.next().value);
      return {
        images: samples.map((s) => s.image),
        targets: samples.map(targetOf),
        strengths: samples.map((s) => s.strength),
        pairs: 0,
      };
    }
    const pairs = Math.floor(batch / 2);
    if (pairs < 1) throw new Error(`the indirect loss needs a batch of at least 2, got ${batch}`);
    const clean: Image[] = [];
    const defective: FormulaSample[] = [];
    for (let i = 0; i < pairs; i++) {
      const r = this.rng.fork();
      const base = this.pool.draw(this.size, r);
      clean.push(base);
      defective.push(sampleFormulaDefect(base, r, this.config));
    }
    const zero = createImage(1, this.size, this.size);
    return {
      images: [...clean, ...defective.map((d) => d.image)],
      targets: [...clean.map(() => zero), ...defective.map(targetOf)],
      strengths: [...clean.map(() => 0), ...defective.map((d) => d.strength)],
      pairs,
    };
  }
}

/** Per-channel mean and standard deviation (after grayscale replication) of some images, rounded to 4 decimals. */
export function channelStats(images: readonly Image[]): {
  mean: [number, number, number];
  std: [number, number, number];
} {
  const sum = [0, 0, 0];
  const sq = [0, 0, 0];
  let count = 0;
  for (const img of images) {
    const rgb = toChannels(img, 3);
    const n = rgb.height * rgb.width;
    for (let c = 0; c < 3; c++) {
      for (let i = 0; i < n; i++) {
        const v = rgb.data[c * n + i];
        sum[c] += v;
        sq[c] += v * v;
      }
    }
    count += n;
  }
  const round = (v: number): number => Math.round(v * 1e4) / 1e4;
  const mean = sum.map((s) => s / count);
  const std = sq.map((s, c) => Math.sqrt(Math.max(1e-6, s / count - mean[c] * mean[c])));
  return {
    mean: mean.map(round) as [number, number, number],
    std: std.map((v) => Math.max(1e-3, round(v))) as [number, number, number],
  };
}

/** Folders and images of PretrainOptions.bases as a BasePool, with a label for logs and the run identity. */
async function loadBases(
  o: Pick<PretrainOptions, 'bases' | 'proceduralShare' | 'realSide' | 'grayFraction'>,
): Promise<{ pool: BasePool; label: string }> {
  const grayFraction = o.grayFraction ?? DEFAULT_GRAY_FRACTION;
  const realSide = o.realSide === undefined ? DEFAULT_REAL_SIDE : o.realSide;
  const sources: (string | Image)[] =
    o.bases === undefined ? ['procedural'] : typeof o.bases === 'string' ? [o.bases] : [...o.bases];
  if (sources.length === 0) throw new Error('pretrainBackbone: bases is an empty list');
  const real: Image[] = [];
  const labels: string[] = [];
  let procedural = false;
  let given = 0;
  for (const source of sources) {
    if (source === 'procedural') {
      procedural = true;
      labels.push('procedural');
    } else if (typeof source !== 'string') {
      real.push(source);
      given++;
    } else {
      if (!existsSync(source)) throw new Error(`pretrainBackbone: base folder ${source} does not exist`);
      const good = path.join(source, 'train', 'good');
      const dir = existsSync(good) ? good : source;
      const loaded = await loadImages(await openImageFolder(dir), { channels: 'keep' });
      if (loaded.images.length === 0) throw new Error(`pretrainBackbone: no readable base images in ${dir}`);
      real.push(...loaded.images.map((l) => (l.image.channels === 4 ? toChannels(l.image, 3) : l.image)));
      labels.push(`${path.resolve(dir)} (${loaded.images.length})`);
    }
  }
  if (given > 0) labels.push(`${given} given images`);
  const proceduralShare = o.proceduralShare ?? (procedural ? (real.length > 0 ? 1 / sources.length : 1) : 0);
  if (!procedural && o.proceduralShare !== undefined && o.proceduralShare > 0)
    throw new Error("pretrainBackbone: proceduralShare > 0 needs 'procedural' among the bases");
  const pool = new BasePool({ real, proceduralShare, grayFraction, realSide });
  const mix = real.length > 0 && procedural ? `, ${(proceduralShare * 100).toFixed(0)}% procedural` : '';
  const scale = real.length > 0 && realSide !== null ? `, real images at ~${realSide} px` : '';
  return { pool, label: `${labels.join(' + ')}${mix}${scale}` };
}

function learningRate(lr: number, step: number, steps: number): number {
  const warmup = Math.min(50, Math.max(1, Math.floor(steps / 10)));
  if (step < warmup) return (lr * (step + 1)) / warmup;
  const floor = 0.05 * lr;
  return (
    floor +
    (lr - floor) *
      0.5 *
      (1 + Math.cos((Math.PI * Math.min(step - warmup, steps - warmup)) / Math.max(1, steps - warmup)))
  );
}

/** The settings that must match for a checkpoint to be resumed. */
interface RunIdentity {
  width: number;
  loss: PretrainLoss;
  size: number;
  batch: number;
  seed: number;
  lr: number;
  bases: string;
  grayFraction: number;
  init: string | null;
  formula: FormulaDefectConfig;
  mean: number[];
  std: number[];
}

/** Checks the options and fills in their defaults. */
function resolvePretrainOptions(o: PretrainOptions): {
  loss: PretrainLoss;
  lr: number;
  evalEvery: number;
  checkpointEvery: number;
  runDir: string;
} {
  if (!(Number.isInteger(o.steps) && o.steps >= 1))
    throw new Error(`pretrainBackbone: steps must be an integer >= 1, got ${o.steps}`);
  if (!(Number.isInteger(o.batch) && o.batch >= 2))
    throw new Error(`pretrainBackbone: batch must be an integer >= 2, got ${o.batch}`);
  const loss = o.loss ?? DEFAULT_PRETRAIN_LOSS;
  if (!PRETRAIN_LOSSES.includes(loss))
    throw new Error(`pretrainBackbone: loss must be 'direct' or 'indirect', got '${String(loss)}'`);
  if (!(o.width > 0 && o.width <= 4)) throw new Error(`pretrainBackbone: width must be in (0, 4], got ${o.width}`);
  if (!(Number.isInteger(o.seed) && o.seed >= 0)) throw new Error(`pretrainBackbone: seed must be an integer >= 0`);
  return {
    loss,
    lr: o.lr ?? 1e-3,
    evalEvery: o.evalEvery ?? 50,
    checkpointEvery: o.checkpointEvery ?? 100,
    runDir: o.runDir ?? `${o.out.replace(/\.safetensors$/, '')}.run`,
  };
}

/** The backbone to train (from `init` or random, normalised by the evaluation batch) and what the run must match. */
async function initialBackbone(
  o: PretrainOptions,
  r: ReturnType<typeof resolvePretrainOptions>,
  evalData: PretrainData,
  evalBatch: PretrainBatch,
  basesLabel: string,
  formula: FormulaDefectConfig,
): Promise<{ backbone: FeatureBackbone; identity: RunIdentity }> {
  const initial = o.init === undefined ? null : await FeatureBackbone.load(o.init);
  if (initial && initial.meta.width !== o.width) {
    initial.dispose();
    throw new Error(`pretrainBackbone: ${o.init} has width ${initial.meta.width}, not the requested ${o.width}`);
  }
  const norm = initial
    ? { mean: initial.meta.mean, std: initial.meta.std }
    : channelStats([...evalBatch.images, ...evalData.next(32).images]);
  const identity: RunIdentity = {
    width: o.width,
    loss: r.loss,
    size: o.size,
    batch: o.batch,
    seed: o.seed,
    lr: r.lr,
    bases: basesLabel,
    grayFraction: o.grayFraction ?? DEFAULT_GRAY_FRACTION,
    init: o.init === undefined ? null : path.resolve(o.init),
    formula,
    mean: norm.mean,
    std: norm.std,
  };
  manualSeed(o.seed);
  const backbone =
    initial ??
    new FeatureBackbone({
      arch: 'resnet18',
      width: o.width,
      mean: norm.mean,
      std: norm.std,
      training: { kind: 'random', seed: o.seed },
    });
  return { backbone, identity };
}

/** Loss and stride-8 patch AUROC on the fixed evaluation batch, in eval mode (training mode again after). */
function evaluateBatch(
  backbone: FeatureBackbone,
  heads: PretrainHeads,
  batch: PretrainBatch,
  loss: PretrainLoss,
): { loss: number; patchAuroc: number } {
  backbone.eval();
  heads.eval();
  const r = noGrad(() =>
    tidy(() => {
      const x = backbone.prepare(batch.images);
      const out = pretrainLoss(backbone, heads, x, batch, loss);
      return { loss: out.loss.item(), m8: out.m8.toFloat32Array(), t8: out.t8.toFloat32Array() };
    }),
  );
  backbone.train();
  heads.train();
  const labels = Array.from(r.t8, (v) => v > RANK_POSITIVE);
  return {
    loss: r.loss,
    patchAuroc: labels.some((v) => v) && labels.some((v) => !v) ? auroc(r.m8, labels) : Number.NaN,
  };
}

/** The loop's step: learning rate, a batch from the stream, the loss, backward, gradient sync, Adam. */
function pretrainStep(c: {
  backbone: FeatureBackbone;
  heads: PretrainHeads;
  opt: Adam;
  params: Tensor[];
  data: PretrainData;
  loss: PretrainLoss;
  lr: number;
  steps: number;
  localBatch: number;
  dp: DataParallel | null;
}): (step: number) => { loss: number } {
  return (step) => {
    c.opt.lr = learningRate(c.lr, step, c.steps);
    const batch = c.data.next(c.localBatch);
    const value = tidy(() => {
      const x = c.backbone.prepare(batch.images);
      const out = pretrainLoss(c.backbone, c.heads, x, batch, c.loss);
      c.opt.zeroGrad();
      out.loss.backward();
      c.dp?.averageGradients(c.params);
      c.opt.step();
      return out.loss.item();
    });
    if (!Number.isFinite(value))
      throw new Error(`pre-training diverged at step ${step} (loss ${value}); lower the learning rate`);
    return { loss: value };
  };
}

/** Rank 0 after the loop: BatchNorm re-estimation, the final evaluation, the backbone file. */
async function finishPretrain(
  o: PretrainOptions,
  c: {
    backbone: FeatureBackbone;
    heads: PretrainHeads;
    bases: BasePool;
    formula: FormulaDefectConfig;
    evalBatch: PretrainBatch;
    identity: RunIdentity;
    basesLabel: string;
    loss: PretrainLoss;
  },
  step: number,
  clock: RunClock,
  run: RunFolder,
  history: PretrainPoint[],
): Promise<PretrainResult> {
  const { backbone, heads, bases, formula, evalBatch, identity, basesLabel, loss } = c;
  // BatchNorm re-estimation: plain average of the batch statistics of 16 training batches.
  const bnData = new PretrainData(loss, o.size, o.seed + 17, bases, formula);
  reestimateBatchNorm(backbone.net, 16, () => backbone.features(backbone.prepare(bnData.next(o.batch).images)));
  const final = evaluateBatch(backbone, heads, evalBatch, loss);
  backbone.eval();
  const minutes = clock.minutes();
  run.log.info(
    `final (after BatchNorm re-estimation): eval loss ${final.loss.toFixed(4)}, eval patch AUROC ${final.patchAuroc.toFixed(3)}`,
  );
  await backbone.save(o.out, {
    kind: 'formula',
    loss: loss,
    steps: step,
    batch: o.batch,
    size: o.size,
    seed: o.seed,
    bases: basesLabel,
    ...(identity.init ? { init: identity.init } : {}),
    minutes: Number(minutes.toFixed(2)),
    finalEvalLoss: Number(final.loss.toFixed(5)),
    trainedAt: new Date().toISOString(),
  });
  run.log.info(`saved ${o.out} (${step} steps, ${minutes.toFixed(1)} min)`);
  return { out: o.out, steps: step, minutes, history, finalEvalLoss: final.loss };
}

/**
 * Pre-trains a ResNet18 on the formula-driven defect stream with L_direct or L_indirect and writes the backbone
 * file `out`. Resumable, time-boxed, logged to runDir/pretrain.log (+ .jsonl records).
 */
export async function pretrainBackbone(o: PretrainOptions): Promise<PretrainResult> {
  const r = resolvePretrainOptions(o);
  const { loss, lr, steps } = { ...r, steps: o.steps };
  const dp = o.distributed ?? null;
  const run = await RunFolder.open(r.runDir, {
    logName: 'pretrain.log',
    checkpointFormat: PRETRAIN_CHECKPOINT_FORMAT,
    checkpointKind: 'a pre-training checkpoint',
    distributed: dp,
  });
  const localBatch = dp ? dp.localBatch(o.batch) : o.batch;
  if (localBatch < 2) throw new Error(`pretrainBackbone: batch ${o.batch} leaves fewer than 2 images per process`);
  const { pool: bases, label: basesLabel } = await loadBases(o);
  const formula = resolveFormulaConfig(o.formula);

  // Fixed evaluation batch (also gives the input normalisation), from its own seed.
  const evalData = new PretrainData(loss, o.size, o.seed + 1_000_003, bases, formula);
  const evalBatch = evalData.next(Math.max(16, o.batch));
  const { backbone, identity } = await initialBackbone(o, r, evalData, evalBatch, basesLabel, formula);
  const heads = new PretrainHeads(backbone.featureChannels);
  const opt = new Adam([...backbone.parameters(), ...heads.parameters()], { lr });
  const parts = { backbone, heads, optim: opt };
  const history: PretrainPoint[] = [];
  try {
    const resumed = await run.resume(o.resume ?? true, parts, (m) => {
      if (m.identity !== JSON.stringify(identity)) {
        throw new Error(
          `${run.checkpointPath} was written with other settings (${m.identity}); use another runDir, the same settings, or resume: false`,
        );
      }
    });
    if (resumed) history.push(...(JSON.parse(resumed.metadata.history ?? '[]') as PretrainPoint[]));
    else {
      run.log.info(
        `pre-training ${loss}: width ${o.width}, ${o.size} px, batch ${o.batch}, ${steps} steps, lr ${lr}, seed ${o.seed}, ` +
          (identity.init ? `from ${identity.init}, ` : '') +
          `bases ${basesLabel}, normalisation mean [${identity.mean}] std [${identity.std}]`,
      );
    }
    const startStep = resumed?.step ?? 0;
    const clock = new RunClock(resumed?.minutes ?? 0);

    // What is trained (the backbone without its unused layer4, the heads) and its parameters.
    const trained = [backbone.net.stem, ...backbone.net.layers.slice(0, 3), heads];
    const params = [...backbone.parameters(), ...heads.parameters()];
    if (dp) run.log.info(`data-parallel over ${dp.worldSize} processes: ${localBatch} images per step per process`);
    const data = new PretrainData(loss, o.size, o.seed * 7919 + startStep + rankSeedOffset(dp), bases, formula);
    backbone.train();
    heads.train();
    const last = history.at(-1);
    const step = await runTrainingLoop<{ loss: number }>({
      run,
      clock,
      what: 'pre-training',
      steps,
      startStep,
      maxMinutes: o.maxMinutes ?? null,
      modules: trained,
      initialAverage: last ? { loss: last.trainLoss } : null,
      step: pretrainStep({ backbone, heads, opt, params, data, loss, lr, steps, localBatch, dp }),
      progress: (o.progress ?? true) ? { label: `pretrain ${loss}`, figures: (l) => ({ loss: l.loss }) } : null,
      evalEvery: r.evalEvery,
      evaluate: (step, average) => {
        const e = evaluateBatch(backbone, heads, evalBatch, loss);
        const ema = average.loss;
        const point = {
          step,
          minutes: clock.minutes(),
          trainLoss: ema,
          evalLoss: e.loss,
          evalPatchAuroc: e.patchAuroc,
        };
        history.push(point);
        run.log.record('pretrain', { ...point, lr: opt.lr });
        run.log.info(
          `step ${step}: train loss ${ema.toFixed(4)}, eval loss ${e.loss.toFixed(4)}, eval patch AUROC ${e.patchAuroc.toFixed(3)}`,
        );
      },
      checkpointEvery: r.checkpointEvery,
      checkpoint: (step) =>
        run.saveCheckpoint(parts, {
          identity: JSON.stringify(identity),
          step: String(step),
          minutes: String(clock.minutes()),
          history: JSON.stringify(history),
        }),
    });
    // Rank 0 alone finishes the run (BatchNorm re-estimation, the backbone file).
    if (!run.isMain) return { out: o.out, steps: step, minutes: clock.minutes(), history, finalEvalLoss: Number.NaN };

    return await finishPretrain(
      o,
      { backbone, heads, bases, formula, evalBatch, identity, basesLabel, loss },
      step,
      clock,
      run,
      history,
    );
  } finally {
    backbone.dispose();
    heads.dispose();
    opt.dispose();
  }
}
