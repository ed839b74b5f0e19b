/**
 * Engine benchmark: full AnoSeg training steps (generator + discriminator, Adam on both), the same network and
 * losses as ../shared/bench/torch_ref_step.py, so images/second compare 1:1 with PyTorch on the same machine.
 *
 *   npm run bench:engine                     # both standard configurations
 *   npm run bench:engine -- --res 128 --batch 8 --width 0.25 --steps 5 [--warmup 8] [--direct] [--profile | --profile-shapes]
 */
import { parseArgs } from 'node:util';
import {
  Tensor,
  F,
  manualSeed,
  getNumThreads,
  profile,
  engineInfo,
  tidy,
  releaseDeferred,
} from '../src/engine/index.js';
import { Adam } from '../src/nn/index.js';
import { AnoSegGenerator, anoSegDiscriminator, type AnoSegArchitecture } from '../src/methods/anoseg/network.js';
import { anosegTrainStep, type AnoSegLossConfig } from '../src/methods/anoseg/step.js';
import { ConvTranspose2d } from '../src/nn/index.js';

const { values } = parseArgs({
  options: {
    res: { type: 'string' },
    batch: { type: 'string' },
    width: { type: 'string' },
    steps: { type: 'string' },
    warmup: { type: 'string' },
    direct: { type: 'boolean', default: false },
    'channels-first': { type: 'boolean', default: false },
    profile: { type: 'boolean', default: false },
    'profile-shapes': { type: 'boolean', default: false },
  },
});

async function bench(res: number, batch: number, width: number, steps: number, warmup: number): Promise<void> {
  manualSeed(0);
  const arch: AnoSegArchitecture = {
    resolution: res,
    channels: 3,
    width,
    coordChannels: true,
    reconstruction: true,
    upsampling: 'transposed',
  };
  const generator = new AnoSegGenerator(arch);
  generator.channelsLast = !values['channels-first'];
  const discriminator = anoSegDiscriminator(arch);
  discriminator.channelsLast = !values['channels-first'];
  if (values.direct) {
    for (const m of allModules(generator)) if (m instanceof ConvTranspose2d) m.options.algorithm = 'direct';
  }
  const trainables = {
    generator,
    discriminator,
    generatorOptimizer: new Adam(generator.parameters(), { lr: 1e-4, betas: [0.5, 0.999] }),
    discriminatorOptimizer: new Adam(discriminator.parameters(), { lr: 1e-4, betas: [0.5, 0.999] }),
  };
  const cfg: AnoSegLossConfig = {
    segLoss: 'l1',
    segWeight: 1,
    reconstructionWeight: 1,
    adversarialWeight: 1,
    fakePair: 'reconstruction',
  };
  const x = Tensor.rand([batch, 3, res, res]);
  const a = tidy(() => Tensor.rand([batch, 1, res, res]).gt(0.1).to('float32'));
  const step = (): void => void anosegTrainStep(trainables, x, a, cfg);
  // FLOPs: forward convolutions counted once, backward ~2x forward.
  F.flopCounter.enabled = true;
  F.flopCounter.flops = 0;
  step();
  F.flopCounter.enabled = false;
  const flops = F.flopCounter.flops * 3;
  // Warm-up: the allocator's heap reaches its steady layout after a few steps (page faults per step fall to ~0).
  for (let i = 0; i < warmup; i++) {
    step();
    await releaseDeferred();
  }
  const faults0 = process.resourceUsage().minorPageFault;
  const t0 = performance.now();
  for (let i = 0; i < steps; i++) {
    step();
    await releaseDeferred(); // as the trainer does every step
  }
  const dt = (performance.now() - t0) / 1000 / steps;
  const faultsPerStep = (process.resourceUsage().minorPageFault - faults0) / steps;
  console.log(
    `anoseg.ts res=${res} batch=${batch} width=${width} threads=${getNumThreads()} ` +
      `step_s=${dt.toFixed(3)} gflop_per_step=${(flops / 1e9).toFixed(1)} gflops=${(flops / 1e9 / dt).toFixed(1)} page_faults_per_step=${faultsPerStep.toFixed(0)}` +
      (values.direct ? ' (direct transposed conv)' : '') +
      (values['channels-first'] ? ' (channels-first)' : ''),
  );
  console.log(`${(batch / dt).toFixed(2)} img/s`);
  if (values.profile || values['profile-shapes']) {
    const rows = profile(step, { byShape: values['profile-shapes'] }).slice(0, values['profile-shapes'] ? 60 : 25);
    for (const r of rows)
      console.log(`${r.totalMs.toFixed(1).padStart(9)} ms  ${String(r.count).padStart(5)}x  ${r.name}`);
  }
  generator.dispose();
  discriminator.dispose();
  trainables.generatorOptimizer.dispose();
  trainables.discriminatorOptimizer.dispose();
  x.dispose();
  a.dispose();
}

function* allModules(m: import('../src/nn/index.js').Module): Generator<import('../src/nn/index.js').Module> {
  yield m;
  for (const [, c] of m.namedChildren()) yield* allModules(c);
}

const info = engineInfo();
console.log(
  `libtorch ${info.torchVersion}, oneDNN ${info.mkldnn}, threads ${info.threads}, ` +
    `freed memory retained ${info.retainFreedMemory}`,
);
/** A numeric option, or exit with a message naming it. */
function option(
  name: 'res' | 'batch' | 'width' | 'steps' | 'warmup',
  fallback: number,
  ok: (n: number) => boolean,
): number {
  const raw = values[name];
  const n = raw === undefined ? fallback : Number(raw);
  if (!ok(n)) {
    console.error(`bench:engine: invalid value for --${name}: ${raw}`);
    process.exit(2);
  }
  return n;
}

if (values.res) {
  const int = (min: number) => (n: number) => Number.isInteger(n) && n >= min;
  await bench(
    option('res', 128, int(32)),
    option('batch', 8, int(2)),
    option('width', 0.25, (n) => n > 0 && n <= 4),
    option('steps', 5, int(1)),
    option('warmup', 8, int(0)),
  );
} else {
  await bench(128, 8, 0.25, 10, 8);
  await bench(256, 4, 0.5, 4, 8);
}
