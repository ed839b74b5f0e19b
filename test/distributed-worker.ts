/**
 * One process of the data-parallel equivalence check (test/distributed.test.ts, bench/distributed.ts):
 *
 *   node --import tsx test/distributed-worker.ts RANK WORLD PORT OUT.safetensors [STEPS] [RESOLUTION] [WIDTH] [BATCH]
 *     [BUCKET_BYTES] [adv|hang]
 *
 * Trains a small AnoSeg generator (map decoder, L_Seg) with Adam for STEPS steps on a seeded stream of global
 * batches of BATCH images (default 4). RANK 0 with WORLD 1: plain single-process training. RANK >= 0: one rank of a WORLD-process group on 127.0.0.1:PORT, training on its slice of
 * each batch through anosegTrainStep with DataParallel's gradient averaging (each rank starts from its own random
 * initialisation; the broadcast from rank 0 must make them equal). RANK = -1: the reference, one process that for
 * every step computes the gradients of each of the WORLD slices from the same weights, averages them (and the
 * BatchNorm statistics each slice would have produced) and steps once. Writes the final parameters and buffers,
 * and timing figures (mean over the steps after the first) as metadata. With 'adv' (ranks only), the step also
 * has the adversarial term and the discriminator update, whose gradients go through the same hook. With 'hang', the
 * rank joins the group and then sleeps for a minute without taking part in anything (a hung peer).
 */
import { ProcessGroup, Tensor, manualSeed, setNumThreads, tidy } from '../src/engine/index.js';
import { AnoSegGenerator, anoSegDiscriminator, type AnoSegArchitecture } from '../src/methods/anoseg/network.js';
import { Adam, saveSafetensors } from '../src/nn/index.js';
import { anosegTrainStep, configuredSegLoss, type AnoSegLossConfig } from '../src/methods/anoseg/step.js';
import { DataParallel } from '../src/train/data-parallel.js';
import { Rng } from '../src/util/rng.js';

const [rank, world, port] = process.argv.slice(2, 5).map(Number);
const out = process.argv[5];
const steps = Number(process.argv[6] ?? 3);
const resolution = Number(process.argv[7] ?? 32);
const width = Number(process.argv[8] ?? 0.125);
const BATCH = Number(process.argv[9] ?? 4);
// Small buckets by default, so that the test also covers gradients spread over several buckets.
const bucketBytes = Number(process.argv[10] ?? 64 * 1024);
const adversarial = process.argv[11] === 'adv';
if (process.argv[11] === 'hang') {
  const group = ProcessGroup.join({ rank, worldSize: world, masterAddr: '127.0.0.1', masterPort: port });
  await new Promise((r) => setTimeout(r, 60_000));
  group.close(); // (also keeps the group reachable: a collected one closes its connections)
  process.exit(0);
}
if (adversarial && rank < 0) throw new Error('the reference covers the map loss only');

setNumThreads(1);
const arch: AnoSegArchitecture = {
  resolution,
  channels: 1,
  width,
  coordChannels: true,
  reconstruction: false,
  upsampling: 'transposed',
  skips: false,
};
const loss: AnoSegLossConfig = {
  segLoss: 'l1',
  segWeight: 1,
  reconstructionWeight: 0,
  adversarialWeight: adversarial ? 0.5 : 0,
  fakePair: 'input',
};

/** Global batch of step s: noise images, masks (1 = normal) with one anomalous rectangle each. */
function globalBatch(s: number): { images: Float32Array; masks: Float32Array } {
  const rng = new Rng(500 + s);
  const px = resolution * resolution;
  const images = new Float32Array(BATCH * px).map(() => rng.next());
  const masks = new Float32Array(BATCH * px).fill(1);
  for (let b = 0; b < BATCH; b++) {
    const y0 = rng.int(0, resolution / 2);
    const x0 = rng.int(0, resolution / 2);
    for (let y = y0; y < y0 + resolution / 4; y++)
      for (let x = x0; x < x0 + resolution / 4; x++) masks[b * px + y * resolution + x] = 0;
  }
  return { images, masks };
}

/** Slice `part` of `parts` of the global batch as tensors. */
function slice(s: number, part: number, parts: number): { x: Tensor; a: Tensor } {
  const { images, masks } = globalBatch(s);
  const n = BATCH / parts;
  const px = resolution * resolution;
  const shape = [n, 1, resolution, resolution];
  return {
    x: Tensor.from(images.slice(part * n * px, (part + 1) * n * px), shape),
    a: Tensor.from(masks.slice(part * n * px, (part + 1) * n * px), shape),
  };
}

manualSeed(rank < 0 ? 100 : 100 + rank);
const generator = new AnoSegGenerator(arch);
const discriminator = adversarial ? anoSegDiscriminator(arch, resolution) : null;
generator.train();
discriminator?.train();
const params = generator.parameters();
const optimizer = new Adam(params, { lr: 1e-3 });
const optD = discriminator ? new Adam(discriminator.parameters(), { lr: 1e-3 }) : null;
const timing = { stepMs: 0, commMs: 0, allreduceMs: 0, gradientMB: 0 };
/** Times a step; the first one (allocations, the other ranks still starting) is left out. */
function timed(s: number, fn: () => void): void {
  const t0 = performance.now();
  fn();
  if (s > 0) timing.stepMs += performance.now() - t0;
}

if (rank === 0 && world === 1) {
  for (let s = 0; s < steps; s++) {
    const { x, a } = slice(s, 0, 1);
    const trainables = { generator, discriminator: null, generatorOptimizer: optimizer, discriminatorOptimizer: null };
    timed(s, () => anosegTrainStep(trainables, x, a, loss));
    x.dispose();
    a.dispose();
  }
} else if (rank >= 0) {
  const dp = new DataParallel(
    ProcessGroup.join({ rank, worldSize: world, masterAddr: '127.0.0.1', masterPort: port }),
    bucketBytes,
  );
  dp.broadcastModules(generator, discriminator);
  for (let s = 0; s < steps; s++) {
    const { x, a } = slice(s, rank, world);
    const commBefore = dp.stats.gradientMs;
    timed(s, () =>
      anosegTrainStep(
        {
          generator,
          discriminator,
          generatorOptimizer: optimizer,
          discriminatorOptimizer: optD,
          syncGradients: dp.averageGradients,
        },
        x,
        a,
        loss,
      ),
    );
    if (s > 0) timing.commMs += dp.stats.gradientMs - commBefore;
    x.dispose();
    a.dispose();
  }
  // The allreduce alone, ranks in step (the gradient sync above also waits for the slower rank): 5 rounds.
  const flat = Tensor.zeros([params.reduce((n, p) => n + p.numel, 0)]);
  dp.group.barrier();
  const t0 = performance.now();
  for (let k = 0; k < 5; k++) dp.group.allreduce([flat], 'avg');
  timing.allreduceMs = (performance.now() - t0) / 5;
  timing.gradientMB = (flat.numel * 4) / 1e6;
  flat.dispose();
  dp.averageBatchNormStatistics(generator, discriminator);
  dp.group.close();
} else {
  // Each slice starts from the same buffers; the running statistics are averaged, the batch counters agree.
  const buffers = generator.namedBuffers().map(([, b]) => b);
  const floatBuffers = buffers.filter((b) => b.dtype === 'float32');
  for (let s = 0; s < steps; s++) {
    const t0 = performance.now();
    const start = buffers.map((b) => b.clone());
    const gradSum = params.map((p) => Tensor.zerosLike(p));
    const bufferSum = floatBuffers.map((b) => Tensor.zerosLike(b));
    for (let part = 0; part < world; part++) {
      buffers.forEach((b, i) => b.copy_(start[i]));
      optimizer.zeroGrad();
      const { x, a } = slice(s, part, world);
      tidy(() => configuredSegLoss(generator.forward(x).map, a, loss).mul(loss.segWeight).backward());
      params.forEach((p, i) => {
        const g = p.grad;
        if (g) gradSum[i].add_(g);
        g?.dispose();
      });
      floatBuffers.forEach((b, i) => bufferSum[i].add_(b));
      x.dispose();
      a.dispose();
    }
    params.forEach((p, i) => (p.grad = gradSum[i].div_(world)));
    floatBuffers.forEach((b, i) => b.copy_(bufferSum[i].div_(world)));
    optimizer.step();
    for (const t of [...start, ...gradSum, ...bufferSum]) t.dispose();
    if (s > 0) timing.stepMs += performance.now() - t0;
  }
}
const state = new Map(generator.stateDict());
for (const [k, v] of discriminator?.stateDict() ?? []) state.set(`discriminator.${k}`, v);
await saveSafetensors(out, state, {
  steps: String(steps),
  stepMs: String(timing.stepMs / Math.max(1, steps - 1)),
  commMs: String(timing.commMs / Math.max(1, steps - 1)),
  allreduceMs: String(timing.allreduceMs),
  gradientMB: String(timing.gradientMB),
});
