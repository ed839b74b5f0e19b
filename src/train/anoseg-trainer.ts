/**
 * AnoSeg training run: data, synthetic anomalies, the optimisation loop, diagnostics (held-out synthetic
 * validation AUROC and, where the data has a test split, real test image AUROC over all test images and pixel
 * AUROC over those with masks, over time), atomic checkpoints with resume, BatchNorm re-estimation, threshold
 * choice, and the final model file.
 */
import { existsSync, promises as fs } from 'node:fs';
import path from 'node:path';
import { Tensor, manualSeed, noGrad, releaseDeferred, tidy } from '../engine/index.js';
import { Adam, BatchNorm2d, loadSafetensors, saveSafetensors, type Module } from '../nn/index.js';
import {
  AnoSegGenerator,
  anoSegDiscriminator,
  cropCoordinates,
  type AnoSegArchitecture,
  type Discriminator,
} from '../models/anoseg.js';
import { saveAnoSegModel, scoreBatch, type AnoSegModelMeta } from '../models/anoseg-model.js';
import { openTrainingData, loadMask, type TestItem } from '../data/dataset.js';
import { fitImage, loadImage } from '../image/io.js';
import { makeSyntheticAnomaly } from '../synth/anomalies.js';
import type { Image } from '../image/types.js';
import { auroc } from '../eval/metrics.js';
import { renderLineChart, escapeHtml } from '../eval/report.js';
import { writeFileAtomic } from '../util/atomic.js';
import { ProgressBar } from '../util/progress.js';
import { Rng } from '../util/rng.js';
import { anosegTrainStep, type StepLosses } from './anoseg-step.js';
import { rankSeedOffset, runLogFor, startGroup, stepAgreement, type DataParallel } from './data-parallel.js';
import { validateConfig, type AnoSegTrainConfig } from './config.js';
import { loadTrainingImages, makeSegmentationBatch, splitValidation } from './data.js';
import { imagesToTensor } from '../models/image-tensor.js';

export const CHECKPOINT_FORMAT = 'anoseg.ts/checkpoint@1';

export interface TrainRunOptions {
  /** MVTec-layout category folder (train/good used for training) or a plain folder of good images. */
  data: string;
  /** Run folder: checkpoint, model, logs, curves. */
  out: string;
  config: AnoSegTrainConfig;
  /** Continue from out/checkpoint.safetensors if present (default true). */
  resume?: boolean;
  /** Print progress to stderr (default true). */
  progress?: boolean;
  /**
   * Data-parallel training: this process is one rank of the group. Each rank trains on its own shard of the
   * training images with batch/worldSize images per step; gradients are averaged; rank 0 alone writes files.
   * Every rank must see the same data and, to resume, the same checkpoint (a shared --out folder).
   */
  distributed?: DataParallel;
}

export interface DiagnosticPoint {
  step: number;
  minutes: number;
  syntheticPixelAuroc: number;
  testPixelAuroc: number | null;
  testImageAuroc: number | null;
  /** L_Seg on the synthetic validation batch in eval mode vs train-mode BatchNorm (BN drift check). */
  evalSegLoss: number;
}

export interface TrainResult {
  modelPath: string;
  steps: number;
  minutes: number;
  diagnostics: DiagnosticPoint[];
}

interface ValidationSet {
  images: Image[];
  masks: Image[]; // 1 = normal
  normals: Image[];
}

interface TestSet {
  images: Image[];
  /** 1 = defect; null for a defective image without a mask (image-level only). */
  gt: (Image | null)[];
  anomalous: boolean[];
}

/**
 * The real test split for logged diagnostics: every readable test image (image AUROC over all of them) and, for
 * the images with pixel ground truth (good images and defective images with a mask), their masks (pixel AUROC
 * over those only). Null without test images.
 */
async function loadTestSet(items: TestItem[], cfg: AnoSegTrainConfig, channels: 1 | 3): Promise<TestSet | null> {
  if (items.length === 0) return null;
  const res = cfg.arch.resolution;
  const set: TestSet = { images: [], gt: [], anomalous: [] };
  for (const item of items) {
    try {
      const img = fitImage(await loadImage(item.path, { channels }), res, cfg.aspect).image;
      let gt: Image | null = null;
      if (item.maskPath) {
        const probe = await loadImage(item.path, { channels: 'keep' });
        const mask = await loadMask(item.maskPath, probe.height, probe.width);
        gt = fitImage(mask, res, cfg.aspect, { padFill: 'black' }).image;
        for (let i = 0; i < gt.data.length; i++) gt.data[i] = gt.data[i] >= 0.5 ? 1 : 0;
      } else if (item.defect === 'good') {
        gt = { channels: 1, height: res, width: res, data: new Float32Array(res * res) };
      }
      set.images.push(img);
      set.gt.push(gt);
      set.anomalous.push(item.defect !== 'good');
    } catch {
      // unreadable test files are reported by `anoseg eval`; diagnostics just skip them
    }
  }
  return set.images.length ? set : null;
}

/** What the test diagnostics cover, for the log: image AUROC over all images, pixel AUROC over the masked ones. */
function describeTestSet(t: TestSet): string {
  const withGt = t.gt.filter((g) => g !== null).length;
  const defectiveWithMask = t.gt.filter((g, i) => g !== null && t.anomalous[i]).length;
  return (
    `${t.images.length} test images (${t.anomalous.filter(Boolean).length} defective, ${defectiveWithMask} of them ` +
    `with masks; pixel AUROC over the ${withGt} images with pixel ground truth` +
    `${defectiveWithMask === 0 ? ': no defective image has a mask, so no pixel AUROC' : ''})`
  );
}

function allModules(m: Module): Module[] {
  return [m, ...m.namedChildren().flatMap(([, c]) => allModules(c))];
}

/** Re-estimates BatchNorm running statistics as a plain average over `batches` training batches. */
function recalibrateBatchNorm(
  generator: AnoSegGenerator,
  makeBatch: () => { x: Tensor; coords?: Tensor },
  batches: number,
): void {
  const bns = allModules(generator).filter((m): m is BatchNorm2d => m instanceof BatchNorm2d);
  generator.train();
  noGrad(() => {
    for (let k = 0; k < batches; k++) {
      for (const bn of bns) bn.momentum = 1 / (k + 1);
      tidy(() => {
        const { x, coords } = makeBatch();
        generator.forward(x, coords);
      });
    }
  });
  for (const bn of bns) bn.momentum = 0.1;
  generator.eval();
}

/** Threshold maximising Youden's J (TPR - FPR) between normal and anomalous scores. */
export function youdenThreshold(normal: ArrayLike<number>, anomalous: ArrayLike<number>): number {
  const all = [...Array.from(normal, (s) => ({ s, a: 0 })), ...Array.from(anomalous, (s) => ({ s, a: 1 }))].sort(
    (p, q) => q.s - p.s,
  );
  let tp = 0;
  let fp = 0;
  let best = -Infinity;
  let threshold = all.length ? all[0].s : 0.5;
  for (let i = 0; i < all.length; i++) {
    if (all[i].a) tp++;
    else fp++;
    if (i + 1 < all.length && all[i + 1].s === all[i].s) continue;
    const j = tp / Math.max(1, anomalous.length) - fp / Math.max(1, normal.length);
    if (j > best) {
      best = j;
      threshold = i + 1 < all.length ? (all[i].s + all[i + 1].s) / 2 : all[i].s;
    }
  }
  return threshold;
}

function evalSegLoss(generator: AnoSegGenerator, val: ValidationSet): number {
  return noGrad(() =>
    tidy(() => {
      const x = imagesToTensor(val.images.slice(0, 16));
      const a = imagesToTensor(val.masks.slice(0, 16));
      return generator.forward(x).map.sub(a).abs().mean().item();
    }),
  );
}

function scoreInBatches(
  generator: AnoSegGenerator,
  images: Image[],
  cfg: AnoSegTrainConfig,
): { maps: Image[]; scores: number[] } {
  const maps: Image[] = [];
  const scores: number[] = [];
  const score = { sigma: cfg.scoreSigma, reconstructionWeight: cfg.reconstructionScoreWeight };
  for (let i = 0; i < images.length; i += 16) {
    const r = scoreBatch(generator, images.slice(i, i + 16), score);
    maps.push(...r.maps);
    scores.push(...r.scores);
  }
  return { maps, scores };
}

function pixelAuroc(maps: Image[], defectMasks: Image[]): number {
  const n = maps.reduce((s, m) => s + m.data.length, 0);
  const scores = new Float32Array(n);
  const labels = new Uint8Array(n);
  let o = 0;
  maps.forEach((m, i) => {
    scores.set(m.data, o);
    const g = defectMasks[i].data;
    for (let j = 0; j < g.length; j++) labels[o + j] = g[j] > 0.5 ? 1 : 0;
    o += m.data.length;
  });
  return auroc(scores, labels);
}

function diagnose(
  generator: AnoSegGenerator,
  cfg: AnoSegTrainConfig,
  val: ValidationSet,
  test: TestSet | null,
  step: number,
  minutes: number,
): DiagnosticPoint {
  generator.eval();
  const synth = scoreInBatches(generator, val.images, cfg);
  const invMasks = val.masks.map((m) => ({ ...m, data: m.data.map((v) => 1 - v) }));
  const point: DiagnosticPoint = {
    step,
    minutes,
    syntheticPixelAuroc: pixelAuroc(synth.maps, invMasks),
    testPixelAuroc: null,
    testImageAuroc: null,
    evalSegLoss: evalSegLoss(generator, val),
  };
  if (test) {
    const r = scoreInBatches(generator, test.images, cfg);
    const withGt = test.gt.flatMap((g, i) => (g === null ? [] : [i]));
    const pixelPositives = withGt.some((i) => (test.gt[i] as Image).data.some((v) => v > 0.5));
    point.testPixelAuroc = pixelPositives
      ? pixelAuroc(
          withGt.map((i) => r.maps[i]),
          withGt.map((i) => test.gt[i] as Image),
        )
      : null;
    point.testImageAuroc =
      test.anomalous.some((a) => a) && test.anomalous.some((a) => !a) ? auroc(r.scores, test.anomalous) : null;
  }
  generator.train();
  return point;
}

async function writeCurves(
  file: string,
  losses: { step: number; l: StepLosses }[],
  diags: DiagnosticPoint[],
): Promise<void> {
  const lossChart = renderLineChart(
    (['seg', 'reconstruction', 'adversarial', 'discriminator'] as const).map((k) => ({
      name: k,
      x: losses.map((p) => p.step),
      y: losses.map((p) => p.l[k]),
    })),
    { title: 'Training losses', xLabel: 'step', yLabel: 'loss' },
  );
  const aurocChart = renderLineChart(
    [
      {
        name: 'synthetic validation pixel AUROC',
        x: diags.map((d) => d.step),
        y: diags.map((d) => d.syntheticPixelAuroc),
      },
      {
        name: 'real test pixel AUROC',
        x: diags.map((d) => d.step),
        y: diags.map((d) => d.testPixelAuroc ?? Number.NaN),
      },
      {
        name: 'real test image AUROC',
        x: diags.map((d) => d.step),
        y: diags.map((d) => d.testImageAuroc ?? Number.NaN),
        dashed: true,
      },
    ],
    { title: 'Diagnostics', xLabel: 'step', yLabel: 'AUROC', yDomain: [0, 1], legendPosition: 'bottom-right' },
  );
  const rows = diags
    .map(
      (d) =>
        `<tr><td>${d.step}</td><td>${d.minutes.toFixed(1)}</td><td>${d.syntheticPixelAuroc.toFixed(3)}</td>` +
        `<td>${d.testPixelAuroc?.toFixed(3) ?? '-'}</td><td>${d.testImageAuroc?.toFixed(3) ?? '-'}</td><td>${d.evalSegLoss.toFixed(3)}</td></tr>`,
    )
    .join('');
  const html =
    `<!doctype html><meta charset="utf-8"><title>${escapeHtml(path.basename(path.dirname(file)))} training</title>` +
    `<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{padding:2px 8px;border-bottom:1px solid #ddd}</style>` +
    `<h1>Training curves</h1>${lossChart}${aurocChart}<table><tr><th>step</th><th>min</th><th>synthetic val pixel AUROC</th>` +
    `<th>test pixel AUROC</th><th>test image AUROC</th><th>eval-mode L_Seg</th></tr>${rows}</table>`;
  await writeFileAtomic(file, html);
}

/** Exponential moving average of the step losses for display and logs. */
function smoothLosses(avg: StepLosses, l: StepLosses): StepLosses {
  const keys = Object.keys(avg) as (keyof StepLosses)[];
  return Object.fromEntries(keys.map((k) => [k, 0.95 * avg[k] + 0.05 * l[k]])) as unknown as StepLosses;
}

/**
 * Learning rate at a point of the run; `progress` in [0, 1] is the larger of the step fraction and, with a
 * time budget, the elapsed-time fraction, so a budget-limited run still anneals to the end of its budget.
 */
function scheduledLr(cfg: AnoSegTrainConfig, progress: number): number {
  if (cfg.schedule === 'constant') return cfg.lr;
  const floor = 0.05 * cfg.lr;
  return floor + (cfg.lr - floor) * 0.5 * (1 + Math.cos(Math.PI * Math.min(1, progress)));
}

export async function trainAnoSeg(o: TrainRunOptions): Promise<TrainResult> {
  const cfg = structuredClone(o.config);
  validateConfig(cfg);
  // Open the data before creating the run folder, so a wrong path leaves nothing behind.
  const { train: trainPaths, test } = await openTrainingData(o.data);
  await fs.mkdir(o.out, { recursive: true });
  const dp = o.distributed ?? null;
  const isMain = dp?.isMain ?? true;
  const log = runLogFor(dp, path.join(o.out, 'train.log'));
  const ckptPath = path.join(o.out, 'checkpoint.safetensors');
  const showProgress = (o.progress ?? true) && isMain;

  const loaded = await loadTrainingImages(trainPaths, cfg.arch.resolution, cfg.aspect, 'auto', (f) =>
    log.info(`skipped unreadable training image ${f.path}: ${f.reason}`),
  );
  if (loaded.failures.length && showProgress) {
    process.stderr.write(
      `warning: ${loaded.failures.length} unreadable training image(s), e.g. ${loaded.failures[0].path}: ${loaded.failures[0].reason}\n`,
    );
  }
  cfg.arch.channels = loaded.channels;
  const { train: pool, validation } = splitValidation(loaded.images, cfg.validationFraction);
  log.info(
    `data ${o.data}: ${pool.length} training, ${validation.length} validation images, ${loaded.channels} channel(s)`,
  );

  // Fixed synthetic validation set: every validation image once normal and twice with an anomaly. It is scored
  // whole, as test images are; when training on crops its anomalies keep the crops' sizes in pixels.
  const crop = cfg.trainCrop ?? null;
  const res = cfg.arch.resolution;
  const cropArea = crop === null ? 1 : (crop / res) ** 2;
  const valAnomaly = { ...cfg.anomaly, areaRange: cfg.anomaly.areaRange.map((a) => a * cropArea) as [number, number] };
  const valRng = new Rng(cfg.seed + 1_000_003);
  const valBase = validation.length ? validation : pool.slice(0, Math.min(8, pool.length));
  const val: ValidationSet = { images: [], masks: [], normals: valBase };
  for (const img of valBase) {
    for (let k = 0; k < 2; k++) {
      const donor =
        cfg.anomaly.source === 'other-image' || cfg.anomaly.source === 'mixed' ? valRng.pick(valBase) : undefined;
      const syn = makeSyntheticAnomaly(img, valRng, valAnomaly, donor);
      val.images.push(syn.image);
      val.masks.push(syn.mask);
    }
    val.images.push(img);
    val.masks.push({
      channels: 1,
      height: img.height,
      width: img.width,
      data: new Float32Array(img.height * img.width).fill(1),
    });
  }
  const testSet = isMain ? await loadTestSet(test, cfg, loaded.channels) : null;
  // Data-parallel: this rank's disjoint shard of the training images and its part of every batch.
  const batchPool = dp ? dp.shard(pool) : pool;
  const batchSize = dp ? dp.localBatch(cfg.batchSize) : cfg.batchSize;
  if (batchPool.length === 0)
    throw new Error(`${pool.length} training images cannot be shared by ${dp?.worldSize} processes`);
  if (dp) log.info(`data-parallel over ${dp.worldSize} processes: ${batchSize} images per step per process`);
  if (testSet) log.info(`real test diagnostics on ${describeTestSet(testSet)} (logged only, never used for choices)`);

  /** A training batch as tensors: images, masks (1 = normal) and, when cropping, the crops' coordinates. */
  const trainingBatch = (rng: Rng): { x: Tensor; a: Tensor; coords?: Tensor } => {
    const b = makeSegmentationBatch(
      batchPool,
      batchSize,
      cfg.anomalyFraction,
      cfg.anomaly,
      cfg.normalAugment,
      rng,
      crop,
    );
    const coords = crop !== null && cfg.arch.coordChannels ? cropCoordinates(b.offsets, crop, res) : undefined;
    return { x: imagesToTensor(b.images), a: imagesToTensor(b.masks), coords };
  };

  manualSeed(cfg.seed);
  const generator = new AnoSegGenerator(cfg.arch);
  const discriminator: Discriminator | null =
    cfg.loss.adversarialWeight > 0 ? anoSegDiscriminator(cfg.arch, crop ?? res) : null;
  const optG = new Adam(generator.parameters(), { lr: cfg.lr, betas: cfg.betas });
  const optD = discriminator ? new Adam(discriminator.parameters(), { lr: cfg.lr, betas: cfg.betas }) : null;

  // Ctrl-C / SIGTERM: finish the current step, save a checkpoint, stop.
  let stopRequested = false;
  const onSignal = (): void => {
    stopRequested = true;
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    let startStep = 0;
    let elapsedBefore = 0;
    const diagnostics: DiagnosticPoint[] = [];
    const lossHistory: { step: number; l: StepLosses }[] = [];
    if ((o.resume ?? true) && existsSync(ckptPath)) {
      const { tensors, metadata } = await loadSafetensors(ckptPath);
      try {
        if (metadata.format !== CHECKPOINT_FORMAT) throw new Error(`${ckptPath}: not an AnoSeg training checkpoint`);
        const saved = JSON.parse(metadata.config ?? '{}') as AnoSegTrainConfig;
        const keys = Object.keys(cfg.arch) as (keyof AnoSegArchitecture)[];
        // architectures written before the skips lever existed have no 'skips' field: they had none
        const withSkips = (a: AnoSegArchitecture): AnoSegArchitecture => ({ ...a, skips: a.skips ?? false });
        const savedArch = saved.arch ? withSkips(saved.arch) : undefined;
        const current = withSkips(cfg.arch);
        const diff = keys.filter((k) => savedArch?.[k] !== current[k]);
        if (diff.length) {
          const what = diff.map((k) => `${k} ${String(savedArch?.[k])} vs ${String(current[k])}`).join(', ');
          throw new Error(
            `${ckptPath} was trained with another architecture (${what}); use a new --out folder or the same settings`,
          );
        }
        const part = (prefix: string): Map<string, Tensor> =>
          new Map([...tensors].filter(([k]) => k.startsWith(prefix)).map(([k, v]) => [k.slice(prefix.length), v]));
        generator.loadStateDict(part('generator.'));
        if (discriminator) discriminator.loadStateDict(part('discriminator.'));
        optG.loadStateDict(part('optim_g.'));
        if (optD) optD.loadStateDict(part('optim_d.'));
        startStep = Number(metadata.step);
        elapsedBefore = Number(metadata.minutes ?? 0);
        diagnostics.push(...(JSON.parse(metadata.diagnostics ?? '[]') as DiagnosticPoint[]));
        lossHistory.push(...(JSON.parse(metadata.losses ?? '[]') as { step: number; l: StepLosses }[]));
        log.info(`resumed from ${ckptPath} at step ${startStep}`);
      } finally {
        for (const t of tensors.values()) t.dispose();
      }
    }

    startGroup(dp, startStep, generator, discriminator);

    const saveCheckpoint = async (step: number, minutes: number): Promise<void> => {
      dp?.averageBatchNormStatistics(generator, discriminator);
      if (!isMain) return;
      const t = new Map<string, Tensor>();
      for (const [k, v] of generator.stateDict()) t.set(`generator.${k}`, v);
      if (discriminator) for (const [k, v] of discriminator.stateDict()) t.set(`discriminator.${k}`, v);
      const og = optG.stateDict();
      for (const [k, v] of og) t.set(`optim_g.${k}`, v);
      const od = optD?.stateDict();
      if (od) for (const [k, v] of od) t.set(`optim_d.${k}`, v);
      await saveSafetensors(ckptPath, t, {
        format: CHECKPOINT_FORMAT,
        config: JSON.stringify(cfg),
        step: String(step),
        minutes: String(minutes),
        diagnostics: JSON.stringify(diagnostics),
        losses: JSON.stringify(lossHistory),
      });
      og.get('step')?.dispose();
      od?.get('step')?.dispose();
    };

    const t0 = performance.now();
    const minutesNow = (): number => elapsedBefore + (performance.now() - t0) / 60000;
    const budgetSeconds = cfg.maxMinutes !== null ? (cfg.maxMinutes - elapsedBefore) * 60 : undefined;
    const bar = showProgress ? new ProgressBar(cfg.steps, 'train', process.stderr, startStep, budgetSeconds) : null;
    // A resumed run draws a fresh, seeded stream: batches differ from an uninterrupted run, statistics do not.
    // Each rank of a data-parallel group draws its own stream (rank 0 the single-process one).
    const rng = new Rng(cfg.seed * 7919 + startStep + rankSeedOffset(dp));
    generator.train();
    discriminator?.train();
    let step = startStep;
    let lossAvg: StepLosses | null = null;
    // Time spent making batches (decoding is done up front; this is augmentation and synthetic anomalies, on this
    // thread while libtorch's threads wait) against the whole step, reported with the diagnostics.
    const dataTime = { batchMs: 0, stepMs: 0 };
    const dataShare = (): string =>
      `data ${((100 * dataTime.batchMs) / Math.max(1e-9, dataTime.stepMs)).toFixed(1)}% of step time`;
    while (step < cfg.steps) {
      // A data-parallel group stops together and schedules by one clock (see DataParallel.agree).
      const { stop, minutes: now } = stepAgreement(dp, stopRequested, minutesNow());
      if (stop) {
        stopRequested = true;
        break;
      }
      const stepStart = performance.now();
      if (cfg.maxMinutes !== null && now >= cfg.maxMinutes) {
        log.info(`time budget of ${cfg.maxMinutes} min reached at step ${step}`);
        break;
      }
      const progress = Math.max(step / cfg.steps, cfg.maxMinutes !== null ? now / cfg.maxMinutes : 0);
      const lr = scheduledLr(cfg, progress);
      optG.lr = lr;
      if (optD) optD.lr = lr;
      const ramp = cfg.adversarialRampSteps > 0 ? Math.min(1, step / cfg.adversarialRampSteps) : 1;
      const { x, a, coords } = trainingBatch(rng);
      dataTime.batchMs += performance.now() - stepStart;
      const l = anosegTrainStep(
        {
          generator,
          discriminator,
          generatorOptimizer: optG,
          discriminatorOptimizer: optD,
          syncGradients: dp?.averageGradients,
        },
        x,
        a,
        { ...cfg.loss, adversarialWeight: cfg.loss.adversarialWeight * ramp },
        coords,
      );
      x.dispose();
      a.dispose();
      coords?.dispose();
      if (!Number.isFinite(l.total))
        throw new Error(`training diverged at step ${step} (loss ${l.total}); lower the learning rate`);
      step++;
      lossAvg = lossAvg ? smoothLosses(lossAvg, l) : l;
      if (step % 25 === 0) {
        lossHistory.push({ step, l: lossAvg });
        log.record('loss', { step, ...lossAvg, lr });
      }
      bar?.update(step, {
        seg: lossAvg.seg,
        rec: lossAvg.reconstruction,
        adv: lossAvg.adversarial,
        d: lossAvg.discriminator,
      });
      const diagnoseNow = step % cfg.evalEvery === 0 || step === cfg.steps;
      if (diagnoseNow) dp?.averageBatchNormStatistics(generator, discriminator);
      if (diagnoseNow && isMain) {
        const d = diagnose(generator, cfg, val, testSet, step, minutesNow());
        diagnostics.push(d);
        log.record('diagnostics', { ...d });
        log.info(
          `step ${step}: synthetic val pixel AUROC ${d.syntheticPixelAuroc.toFixed(3)}` +
            (d.testPixelAuroc !== null ? `, test pixel AUROC ${d.testPixelAuroc.toFixed(3)}` : '') +
            (d.testImageAuroc !== null ? `, test image AUROC ${d.testImageAuroc.toFixed(3)}` : '') +
            `, eval-mode L_Seg ${d.evalSegLoss.toFixed(3)}; ${dataShare()}`,
        );
        await writeCurves(path.join(o.out, 'curves.html'), lossHistory, diagnostics);
      }
      if (step % cfg.checkpointEvery === 0) await saveCheckpoint(step, minutesNow());
      // Every step: lets signals and I/O through and frees released tensor wrappers (see releaseDeferred).
      await releaseDeferred();
      dataTime.stepMs += performance.now() - stepStart;
    }
    if (step > startStep)
      log.info(`steps ${startStep}-${step}: ${dataShare()} (making batches on the training thread)`);
    bar?.finish();
    await saveCheckpoint(step, minutesNow());
    if (stopRequested) {
      log.info(`stopped by signal at step ${step}; checkpoint saved, rerun the same command to resume`);
      throw new Error(`training interrupted at step ${step}; checkpoint saved in ${ckptPath}`);
    }
    // Rank 0 alone finishes the run (BatchNorm re-estimation, thresholds, model file).
    if (!isMain) {
      return { modelPath: path.join(o.out, 'model.safetensors'), steps: step, minutes: minutesNow(), diagnostics };
    }

    if (cfg.bnRecalibrationBatches > 0) {
      const bnRng = new Rng(cfg.seed + 17);
      recalibrateBatchNorm(generator, () => trainingBatch(bnRng), cfg.bnRecalibrationBatches);
    }
    generator.eval();
    const final = diagnose(generator, cfg, val, testSet, step, minutesNow());
    if (diagnostics.at(-1)?.step !== step || cfg.bnRecalibrationBatches > 0) diagnostics.push(final);
    await writeCurves(path.join(o.out, 'curves.html'), lossHistory, diagnostics);

    // Thresholds from validation data only: normal validation images vs their synthetic anomalies.
    const valScores = scoreInBatches(generator, val.images, cfg);
    const normalScores: number[] = [];
    const anomalousScores: number[] = [];
    const pixNormal: number[] = [];
    const pixAnomalous: number[] = [];
    val.masks.forEach((m, i) => {
      const isAnomalous = m.data.some((v) => v < 0.5);
      (isAnomalous ? anomalousScores : normalScores).push(valScores.scores[i]);
      const map = valScores.maps[i].data;
      for (let j = 0; j < map.length; j += 7) (m.data[j] < 0.5 ? pixAnomalous : pixNormal).push(map[j]);
    });
    const meta: AnoSegModelMeta = {
      arch: cfg.arch,
      aspect: cfg.aspect,
      score: { sigma: cfg.scoreSigma, reconstructionWeight: cfg.reconstructionScoreWeight },
      imageThreshold: youdenThreshold(normalScores, anomalousScores),
      pixelThreshold: youdenThreshold(pixNormal, pixAnomalous),
      facts: {
        preset: cfg.preset,
        data: path.resolve(o.data),
        steps: step,
        minutes: Number(minutesNow().toFixed(1)),
        trainImages: pool.length,
        seed: cfg.seed,
        trainedAt: new Date().toISOString(),
      },
    };
    const modelPath = path.join(o.out, 'model.safetensors');
    await saveAnoSegModel(modelPath, generator, meta);
    await writeFileAtomic(path.join(o.out, 'config.json'), JSON.stringify(cfg, null, 2));
    log.info(
      `saved ${modelPath} (image threshold ${meta.imageThreshold.toFixed(4)}, pixel threshold ${meta.pixelThreshold.toFixed(4)})`,
    );
    return { modelPath, steps: step, minutes: minutesNow(), diagnostics };
  } finally {
    // Also on errors: a long-running process (service, tests, ablation) keeps neither handlers nor tensors.
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    generator.dispose();
    discriminator?.dispose();
    optG.dispose();
    optD?.dispose();
  }
}
