/**
 * anosegTrainStep on a tiny seeded model, checked against a twin of the model (same weights) on which the losses
 * and their gradients are computed by hand, part by part: what the discriminator is given, that it is frozen
 * while the generator updates, what is detached, and that the configured weights multiply the parts.
 */
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { Tensor, getNumThreads, liveTensors, manualSeed, setNumThreads, tidy } from '../../engine/index.js';
import { SGD } from '../../nn/index.js';
import { AnoSegGenerator, anoSegDiscriminator, type Discriminator, type DiscriminatorOptions } from './network.js';
import {
  adversarialLoss,
  balancedSegmentationLoss,
  diceSegmentationLoss,
  discriminatorLoss,
  focalSegmentationLoss,
  generatorAdversarialLoss,
  maskedReconstructionLoss,
  r1Penalty,
  segmentationLoss,
} from './losses.js';
import { tinyArchitecture } from '../../../test/fixtures/tiny-architecture.js';
import type { AnoSegArchitecture } from './network.js';
import {
  anosegTrainStep,
  configuredSegLoss,
  realPairsOf,
  type AnoSegLossConfig,
  type DiscriminatorStepOptions,
} from './step.js';
import { blurMaps } from '../../models/scoring.js';

const threadsBefore = getNumThreads();
beforeAll(() => setNumThreads(1));
afterAll(() => setNumThreads(threadsBefore));

const LR_G = 0.01;
const LR_D = 0.02;
/** Distinct weights, none 1, so a missing or swapped weight changes the total and the gradients. */
const WEIGHTS = { segWeight: 2, reconstructionWeight: 3, adversarialWeight: 0.5 };

/** max |a - b| relative to the largest |b| (one number for a whole tensor). */
function relDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  let diff = 0;
  let scale = 0;
  for (let i = 0; i < a.length; i++) {
    diff = Math.max(diff, Math.abs(a[i] - b[i]));
    scale = Math.max(scale, Math.abs(b[i]));
  }
  return diff / Math.max(scale, 1e-12);
}

const values = (ts: Tensor[]): Float32Array[] => ts.map((t) => t.toFloat32Array());
/** Gradients as arrays (null where none); the grad handles are released. */
const grads = (ts: Tensor[]): (Float32Array | null)[] => tidy(() => ts.map((t) => t.grad?.toFloat32Array() ?? null));

/** The gradient of `loss` w.r.t. `params` (the graph is kept for the next part); grads are cleared after. */
function gradientOf(loss: Tensor, params: Tensor[]): Float32Array[] {
  for (const p of params) p.grad = null;
  loss.backward(undefined, true);
  const g = grads(params).map((a, i) => a ?? new Float32Array(params[i].numel));
  for (const p of params) p.grad = null;
  return g;
}

/** sum_k w_k * g_k, element-wise, per parameter. */
function weightedSum(parts: [number, Float32Array[]][]): Float32Array[] {
  return parts[0][1].map((_, i) => {
    const out = new Float32Array(parts[0][1][i].length);
    for (const [w, g] of parts) for (let j = 0; j < out.length; j++) out[j] += w * g[i][j];
    return out;
  });
}

interface Models {
  gen: AnoSegGenerator;
  disc: Discriminator;
  twinGen: AnoSegGenerator;
  twinDisc: Discriminator;
  x: Tensor;
  masks: Tensor;
  dispose: () => void;
}

/** Seeded generator + discriminator, a twin of each with the same state, and a batch of 2 with one anomaly. */
function models(arch: AnoSegArchitecture, seed: number, dOptions: DiscriminatorOptions = {}): Models {
  manualSeed(seed);
  const gen = new AnoSegGenerator(arch);
  const disc = anoSegDiscriminator(arch, arch.resolution, dOptions);
  const twinGen = new AnoSegGenerator(arch);
  const twinDisc = anoSegDiscriminator(arch, arch.resolution, dOptions);
  twinGen.loadStateDict(gen.stateDict());
  twinDisc.loadStateDict(disc.stateDict());
  const r = arch.resolution;
  const x = Tensor.rand([2, arch.channels, r, r]);
  const m = new Float32Array(2 * r * r).fill(1);
  for (let i = 8; i < 16; i++) for (let j = 10; j < 20; j++) m[i * r + j] = 0; // anomaly in image 0
  const masks = Tensor.from(m, [2, 1, r, r]);
  return {
    gen,
    disc,
    twinGen,
    twinDisc,
    x,
    masks,
    dispose: () => [gen, disc, twinGen, twinDisc, x, masks].forEach((t) => t.dispose()),
  };
}

interface DiscriminatorCall {
  input: Float32Array;
  channels: number;
  inputRequiresGrad: boolean;
  paramsRequireGrad: boolean[];
}

/** Records every discriminator forward: its input's values and whether gradients were being recorded. */
function recordDiscriminator(disc: Discriminator): DiscriminatorCall[] {
  const calls: DiscriminatorCall[] = [];
  const forward = disc.forward.bind(disc);
  vi.spyOn(disc, 'forward').mockImplementation((input: Tensor) => {
    calls.push({
      input: input.toFloat32Array(),
      channels: input.shape[1],
      inputRequiresGrad: input.requiresGrad,
      paramsRequireGrad: disc.parameters().map((p) => p.requiresGrad),
    });
    return forward(input);
  });
  return calls;
}

/** What the models looked like when an optimiser's step() was called. */
interface AtStep {
  genGrads: (Float32Array | null)[];
  discGrads: (Float32Array | null)[];
  genParams: Float32Array[];
  discParams: Float32Array[];
}

function recordStep(opt: SGD, m: Models, log: string[], name: string): { at: AtStep | null } {
  const rec: { at: AtStep | null } = { at: null };
  const step = opt.step.bind(opt);
  vi.spyOn(opt, 'step').mockImplementation(() => {
    log.push(name);
    rec.at = {
      genGrads: grads(m.gen.parameters()),
      discGrads: grads(m.disc.parameters()),
      genParams: values(m.gen.parameters()),
      discParams: values(m.disc.parameters()),
    };
    step();
  });
  return rec;
}

/** Concatenation of two [N, a, H, W] and [N, b, H, W] arrays along channels, as plain numbers. */
function catChannels(a: Float32Array, ca: number, b: Float32Array, cb: number, n: number): Float32Array {
  const plane = a.length / (n * ca);
  const out = new Float32Array(n * (ca + cb) * plane);
  for (let i = 0; i < n; i++) {
    out.set(a.subarray(i * ca * plane, (i + 1) * ca * plane), i * (ca + cb) * plane);
    out.set(b.subarray(i * cb * plane, (i + 1) * cb * plane), (i * (ca + cb) + ca) * plane);
  }
  return out;
}

describe('anosegTrainStep', () => {
  it('paper pair (x̂, Â): D frozen in the G update, G gets segW·∇L_Seg + reW·∇L_Re + advW·∇L_Adv, D the detached pair', () => {
    const m = models(tinyArchitecture(), 11);
    const cfg: AnoSegLossConfig = { segLoss: 'l1', ...WEIGHTS, fakePair: 'reconstruction' };
    const genParams0 = values(m.gen.parameters());
    const discParams0 = values(m.disc.parameters());

    // By hand on the twin: each loss part and its gradient separately.
    const hand = tidy(() => {
      const out = m.twinGen.forward(m.x);
      const recon = out.reconstruction!;
      const lSeg = segmentationLoss(out.map, m.masks);
      const lRe = maskedReconstructionLoss(m.x, recon, m.masks);
      const fake = Tensor.cat([recon, out.map], 1);
      const lAdv = m.twinDisc.frozen(() => adversarialLoss(m.twinDisc.forward(fake).logits, true));
      const gp = m.twinGen.parameters();
      const gSeg = gradientOf(lSeg, gp);
      const gRe = gradientOf(lRe, gp);
      const gAdv = gradientOf(lAdv, gp);
      const dp = m.twinDisc.parameters();
      const lReal = adversarialLoss(m.twinDisc.forward(Tensor.cat([m.x, m.masks], 1)).logits, true);
      const lFake = adversarialLoss(m.twinDisc.forward(fake.detach()).logits, false);
      return {
        seg: lSeg.item(),
        re: lRe.item(),
        adv: lAdv.item(),
        d: lReal.item() + lFake.item(),
        genGrad: weightedSum([
          [WEIGHTS.segWeight, gSeg],
          [WEIGHTS.reconstructionWeight, gRe],
          [WEIGHTS.adversarialWeight, gAdv],
        ]),
        discGrad: weightedSum([
          [1, gradientOf(lReal, dp)],
          [1, gradientOf(lFake, dp)],
        ]),
        fakePair: fake.toFloat32Array(),
        realPair: Tensor.cat([m.x, m.masks], 1).toFloat32Array(),
      };
    });
    // the three parts are all non-trivial, so each weight matters
    for (const v of [hand.seg, hand.re, hand.adv]) expect(v).toBeGreaterThan(0.05);

    const optG = new SGD(m.gen.parameters(), { lr: LR_G });
    const optD = new SGD(m.disc.parameters(), { lr: LR_D });
    const order: string[] = [];
    const calls = recordDiscriminator(m.disc);
    const atG = recordStep(optG, m, order, 'G step');
    const atD = recordStep(optD, m, order, 'D step');
    const synced: string[] = [];
    const syncGradients = (params: readonly Tensor[]): void => {
      order.push('sync');
      const ids = (ps: Tensor[]): boolean => ps.length === params.length && ps.every((p, i) => p === params[i]);
      synced.push(ids(m.gen.parameters()) ? 'generator' : ids(m.disc.parameters()) ? 'discriminator' : 'other');
      // called after backward: every parameter it is given has its gradient
      expect(params.every((p) => tidy(() => p.grad !== null))).toBe(true);
    };

    const live = liveTensors();
    const l = anosegTrainStep(
      {
        generator: m.gen,
        discriminator: m.disc,
        generatorOptimizer: optG,
        discriminatorOptimizer: optD,
        syncGradients,
      },
      m.x,
      m.masks,
      cfg,
    );
    expect(liveTensors()).toBe(live); // every intermediate released

    // Losses: the parts are the hand-computed ones, the total their weighted sum.
    expect(l.seg).toBeCloseTo(hand.seg, 5);
    expect(l.reconstruction).toBeCloseTo(hand.re, 5);
    expect(l.adversarial).toBeCloseTo(hand.adv, 5);
    expect(l.discriminator).toBeCloseTo(hand.d, 5);
    expect(l.total).toBeCloseTo(2 * hand.seg + 3 * hand.re + 0.5 * hand.adv, 5);
    expect(l.total).toBeCloseTo(2 * l.seg + 3 * l.reconstruction + 0.5 * l.adversarial, 5);

    // Order: G backward, sync, G update, then D backward, sync, D update.
    expect(order).toEqual(['sync', 'G step', 'sync', 'D step']);
    expect(synced).toEqual(['generator', 'discriminator']);

    // D saw three inputs: the fake pair (x̂, Â) for the generator's loss, the real pair (x, A), and the fake pair
    // again for its own loss - the same pre-update values, detached.
    expect(calls.map((c) => c.channels)).toEqual([4, 4, 4]);
    expect(relDiff(calls[0].input, hand.fakePair)).toBeLessThan(1e-6);
    expect(calls[0].inputRequiresGrad).toBe(true); // the generator's gradient flows through D
    expect(calls[0].paramsRequireGrad.every((r) => r === false)).toBe(true); // D frozen
    expect(Array.from(calls[1].input)).toEqual(Array.from(hand.realPair));
    expect(calls[1].inputRequiresGrad).toBe(false);
    expect(Array.from(calls[2].input)).toEqual(Array.from(calls[0].input));
    expect(calls[2].inputRequiresGrad).toBe(false); // detached: D's loss sends nothing into G's graph
    for (const c of calls.slice(1)) expect(c.paramsRequireGrad.every(Boolean)).toBe(true);
    expect(m.disc.parameters().every((p) => p.requiresGrad)).toBe(true); // unfrozen afterwards

    // At the generator's update: G's gradient is the weighted sum of the parts; D has no gradient and its
    // weights are untouched.
    const g = atG.at!;
    g.genGrads.forEach((a, i) => expect(relDiff(a!, hand.genGrad[i]), `G grad ${i}`).toBeLessThan(1e-4));
    expect(g.discGrads.every((a) => a === null)).toBe(true);
    g.discParams.forEach((a, i) => expect(Array.from(a)).toEqual(Array.from(discParams0[i])));
    g.genParams.forEach((a, i) => expect(Array.from(a)).toEqual(Array.from(genParams0[i])));

    // At the discriminator's update: G is already updated (p - lr g) and its gradients are exactly those of its
    // own update (nothing from D's loss reached it); D's gradient is that of BCE(real, 1) + BCE(fake, 0).
    const d = atD.at!;
    d.genGrads.forEach((a, i) => expect(Array.from(a!)).toEqual(Array.from(g.genGrads[i]!)));
    d.discGrads.forEach((a, i) => expect(relDiff(a!, hand.discGrad[i]), `D grad ${i}`).toBeLessThan(1e-4));

    // After the step: one SGD step each, with those gradients.
    const after = (p0: Float32Array[], grad: Float32Array[], lr: number): Float32Array[] =>
      p0.map((p, i) => p.map((v, j) => v - lr * grad[i][j]));
    const genExpected = after(genParams0, hand.genGrad, LR_G);
    values(m.gen.parameters()).forEach((a, i) => expect(relDiff(a, genExpected[i])).toBeLessThan(1e-5));
    const discExpected = after(discParams0, hand.discGrad, LR_D);
    values(m.disc.parameters()).forEach((a, i) => expect(relDiff(a, discExpected[i])).toBeLessThan(1e-5));
    // and the update moved every parameter tensor (none was left out of an optimiser)
    values(m.gen.parameters()).forEach((a, i) => expect(relDiff(a, genParams0[i])).toBeGreaterThan(0));
    values(m.disc.parameters()).forEach((a, i) => expect(relDiff(a, discParams0[i])).toBeGreaterThan(0));

    vi.restoreAllMocks();
    m.dispose();
  });

  it("fakePair 'input' gives D (x, Â); without a reconstruction decoder the pair is (x, Â) and L_Re is 0", () => {
    for (const arch of [tinyArchitecture(), tinyArchitecture({ reconstruction: false })]) {
      const m = models(arch, 12);
      const fakePair = arch.reconstruction ? 'input' : 'reconstruction';
      const expectedMap = tidy(() => m.twinGen.forward(m.x).map.toFloat32Array());
      const optG = new SGD(m.gen.parameters(), { lr: LR_G });
      const optD = new SGD(m.disc.parameters(), { lr: LR_D });
      const calls = recordDiscriminator(m.disc);
      const l = anosegTrainStep(
        { generator: m.gen, discriminator: m.disc, generatorOptimizer: optG, discriminatorOptimizer: optD },
        m.x,
        m.masks,
        { segLoss: 'l1', ...WEIGHTS, fakePair },
      );
      const xs = m.x.toFloat32Array();
      const pair = catChannels(xs, 3, expectedMap, 1, 2);
      expect(calls).toHaveLength(3);
      // the image channels are x itself, bit for bit; the map channel the generator's map
      for (const c of [calls[0], calls[2]]) {
        const plane = 32 * 32;
        for (let n = 0; n < 2; n++) {
          const img = c.input.subarray(n * 4 * plane, (n * 4 + 3) * plane);
          expect(Array.from(img)).toEqual(Array.from(xs.subarray(n * 3 * plane, (n + 1) * 3 * plane)));
        }
        expect(relDiff(c.input, pair)).toBeLessThan(1e-6);
      }
      expect(calls[0].inputRequiresGrad).toBe(true); // through the map
      expect(calls[2].inputRequiresGrad).toBe(false);
      if (!arch.reconstruction) expect(l.reconstruction).toBe(0);
      else expect(l.reconstruction).toBeGreaterThan(0);
      expect(l.total).toBeCloseTo(2 * l.seg + 3 * l.reconstruction + 0.5 * l.adversarial, 5);
      vi.restoreAllMocks();
      m.dispose();
    }
  });

  it('adversarial weight 0: the discriminator is never run or updated; weight 0 for L_Re drops it', () => {
    const m = models(tinyArchitecture(), 13);
    const discParams0 = values(m.disc.parameters());
    const genParams0 = values(m.gen.parameters());
    const hand = tidy(() => {
      const out = m.twinGen.forward(m.x);
      return { seg: segmentationLoss(out.map, m.masks), gp: m.twinGen.parameters() };
    });
    const segValue = hand.seg.item();
    const gSeg = gradientOf(hand.seg, hand.gp);
    hand.seg.dispose();
    const optG = new SGD(m.gen.parameters(), { lr: LR_G });
    const optD = new SGD(m.disc.parameters(), { lr: LR_D });
    const calls = recordDiscriminator(m.disc);
    const dStep = vi.spyOn(optD, 'step');
    const l = anosegTrainStep(
      { generator: m.gen, discriminator: m.disc, generatorOptimizer: optG, discriminatorOptimizer: optD },
      m.x,
      m.masks,
      { segLoss: 'l1', segWeight: 2, reconstructionWeight: 0, adversarialWeight: 0, fakePair: 'reconstruction' },
    );
    expect(calls).toHaveLength(0);
    expect(dStep).not.toHaveBeenCalled();
    values(m.disc.parameters()).forEach((a, i) => expect(Array.from(a)).toEqual(Array.from(discParams0[i])));
    expect(l).toMatchObject({ reconstruction: 0, adversarial: 0, discriminator: 0 });
    expect(l.seg).toBeCloseTo(segValue, 5);
    expect(l.total).toBeCloseTo(2 * segValue, 5);
    // G's update is 2·∇L_Seg alone (the reconstruction decoder gets no gradient, so SGD leaves it as it was)
    const expected = genParams0.map((p, i) => p.map((v, j) => v - LR_G * 2 * gSeg[i][j]));
    values(m.gen.parameters()).forEach((a, i) => expect(relDiff(a, expected[i])).toBeLessThan(1e-5));
    m.gen.namedParameters().forEach(([name], i) => {
      if (name.startsWith('reconstruction_decoder.'))
        expect(Array.from(m.gen.parameters()[i].toFloat32Array())).toEqual(Array.from(genParams0[i]));
    });
    vi.restoreAllMocks();
    m.dispose();
  });
});

/** L2 norm of an array. */
const norm = (a: Float32Array): number => Math.sqrt(a.reduce((s, v) => s + v * v, 0));

describe('anosegTrainStep: discriminator-side stabilisers and balance diagnostics', () => {
  const cfg: AnoSegLossConfig = { segLoss: 'l1', ...WEIGHTS, fakePair: 'reconstruction' };
  const optimisers = (m: Models): { optG: SGD; optD: SGD } => ({
    optG: new SGD(m.gen.parameters(), { lr: LR_G }),
    optD: new SGD(m.disc.parameters(), { lr: LR_D }),
  });

  it("reports the norms of segW·∇L_Seg and advW·∇L_Adv at the map, and D's accuracy on its real and fake pairs", () => {
    const m = models(tinyArchitecture(), 21);
    const hand = tidy(() => {
      const out = m.twinGen.forward(m.x);
      const map = out.map.detach();
      map.requiresGrad = true;
      segmentationLoss(map, m.masks).mul(WEIGHTS.segWeight).backward();
      const seg = norm(map.grad!.toFloat32Array());
      map.grad = null;
      const fake = Tensor.cat([out.reconstruction!.detach(), map], 1);
      const logits = m.twinDisc.frozen(() => m.twinDisc.forward(fake).logits);
      adversarialLoss(logits, true).mul(WEIGHTS.adversarialWeight).backward();
      const adv = norm(map.grad!.toFloat32Array());
      const real = m.twinDisc.forward(Tensor.cat([m.x, m.masks], 1)).logits.toFloat32Array();
      const fakeAgain = m.twinDisc.forward(fake.detach()).logits.toFloat32Array();
      return {
        seg,
        adv,
        realAccuracy: real.filter((v) => v > 0).length / 2,
        fakeAccuracy: fakeAgain.filter((v) => v < 0).length / 2,
      };
    });
    const { optG, optD } = optimisers(m);
    const l = anosegTrainStep(
      { generator: m.gen, discriminator: m.disc, generatorOptimizer: optG, discriminatorOptimizer: optD },
      m.x,
      m.masks,
      cfg,
    );
    expect(hand.seg).toBeGreaterThan(0);
    expect(hand.adv).toBeGreaterThan(0);
    expect(l.segGradNorm).toBeCloseTo(hand.seg, 6);
    expect(l.advGradNorm).toBeCloseTo(hand.adv, 6);
    expect(l.dRealAccuracy).toBe(hand.realAccuracy);
    expect(l.dFakeAccuracy).toBe(hand.fakeAccuracy);
    expect(l).toMatchObject({ dUpdated: 1, r1: 0 });
    // without L_Adv: the L_Seg norm alone, the D figures 0
    const noAdv = anosegTrainStep(
      { generator: m.gen, discriminator: m.disc, generatorOptimizer: optG, discriminatorOptimizer: optD },
      m.x,
      m.masks,
      { ...cfg, adversarialWeight: 0 },
    );
    expect(noAdv.segGradNorm).toBeGreaterThan(0);
    expect(noAdv).toMatchObject({ advGradNorm: 0, dRealAccuracy: 0, dFakeAccuracy: 0, dUpdated: 0 });
    m.dispose();
  });

  it('a D loss at or below the floor skips the D update (weights unchanged, no optimiser step); above it D updates', () => {
    const m = models(tinyArchitecture(), 22);
    const { optG, optD } = optimisers(m);
    const discParams0 = values(m.disc.parameters());
    const dStep = vi.spyOn(optD, 'step');
    const order: string[] = [];
    const syncGradients = (params: readonly Tensor[]): void => {
      order.push(params.length === 1 && params[0].numel === 1 ? 'agree' : 'sync');
    };
    const trainables = {
      generator: m.gen,
      discriminator: m.disc,
      generatorOptimizer: optG,
      discriminatorOptimizer: optD,
      syncGradients,
    };
    const live = liveTensors();
    const skipped = anosegTrainStep(trainables, m.x, m.masks, cfg, undefined, { lossFloor: 100 });
    expect(liveTensors()).toBe(live);
    expect(skipped.dUpdated).toBe(0);
    expect(skipped.discriminator).toBeGreaterThan(0); // still measured
    expect(skipped.discriminator).toBeLessThan(100);
    expect(dStep).not.toHaveBeenCalled();
    values(m.disc.parameters()).forEach((a, i) => expect(Array.from(a)).toEqual(Array.from(discParams0[i])));
    // the ranks of a group agree on the loss before deciding (one-number probe), then skip D's gradient sync
    expect(order).toEqual(['sync', 'agree']);

    order.length = 0;
    const updated = anosegTrainStep(trainables, m.x, m.masks, cfg, undefined, { lossFloor: 0.01 });
    expect(updated.dUpdated).toBe(1);
    expect(dStep).toHaveBeenCalledTimes(1);
    expect(order).toEqual(['sync', 'agree', 'sync']);
    values(m.disc.parameters()).forEach((a, i) => expect(relDiff(a, discParams0[i])).toBeGreaterThan(0));
    vi.restoreAllMocks();
    m.dispose();
  });

  /** One step of fresh tiny models (seeded) with these D-side options; what D saw, in call order. */
  function stepRecordingD(seed: number, options: DiscriminatorStepOptions) {
    const m = models(tinyArchitecture(), seed);
    const { optG, optD } = optimisers(m);
    const calls = recordDiscriminator(m.disc);
    anosegTrainStep(
      { generator: m.gen, discriminator: m.disc, generatorOptimizer: optG, discriminatorOptimizer: optD },
      m.x,
      m.masks,
      cfg,
      undefined,
      options,
    );
    return { m, calls };
  }

  it("realPairs 'normal': D's real pairs are the normal images only, with the all-ones mask", () => {
    const { m, calls } = stepRecordingD(23, { realPairs: 'normal' });
    // image 0 has the anomaly, image 1 is normal: one real pair, (x_1, 1)
    const plane = 32 * 32;
    const xs = m.x.toFloat32Array();
    const expected = new Float32Array(4 * plane).fill(1);
    expected.set(xs.subarray(3 * plane, 6 * plane));
    expect(calls.map((c) => c.input.length)).toEqual([8 * plane, 4 * plane, 8 * plane]);
    expect(Array.from(calls[1].input)).toEqual(Array.from(expected));
    // 'all' is every image with its mask; a batch without a normal image is refused under 'normal'
    tidy(() => {
      expect(realPairsOf(m.x, m.masks, 'all').shape).toEqual([2, 4, 32, 32]);
      expect(() => realPairsOf(m.x, m.masks.mul(0), 'normal')).toThrow(/no normal image/);
    });
    vi.restoreAllMocks();
    m.dispose();
  });

  it("realMaskBlur: D's real pairs carry the mask blurred by blurMaps, the images untouched, the fake pair unchanged", () => {
    const { m, calls } = stepRecordingD(25, { realMaskBlur: 2 });
    const plane = 32 * 32;
    const xs = m.x.toFloat32Array();
    const blurred = tidy(() => blurMaps(m.masks, 2).toFloat32Array());
    const real = calls[1].input;
    for (let n = 0; n < 2; n++) {
      const at = n * 4 * plane;
      expect(Array.from(real.subarray(at, at + 3 * plane))).toEqual(
        Array.from(xs.subarray(n * 3 * plane, (n + 1) * 3 * plane)),
      );
      expect(
        relDiff(real.subarray(at + 3 * plane, at + 4 * plane), blurred.subarray(n * plane, (n + 1) * plane)),
      ).toBeLessThan(1e-6);
    }
    // the hard 0/1 edge of image 0's anomaly became a ramp: values strictly between 0 and 1 exist, none outside
    const mask0 = real.subarray(3 * plane, 4 * plane);
    expect(mask0.some((v) => v > 0.05 && v < 0.95)).toBe(true);
    expect(mask0.every((v) => v >= -1e-6 && v <= 1 + 1e-6)).toBe(true);
    // the normal image's all-ones mask stays all ones
    expect(real.subarray(7 * plane, 8 * plane).every((v) => Math.abs(v - 1) < 1e-6)).toBe(true);
    vi.restoreAllMocks();
    m.dispose();
    // the fake pairs (G's pass and D's) are those of the same step with hard masks
    const hard = stepRecordingD(25, {});
    for (const k of [0, 2]) expect(Array.from(calls[k].input)).toEqual(Array.from(hard.calls[k].input));
    expect(relDiff(hard.calls[1].input, real)).toBeGreaterThan(0.01);
    vi.restoreAllMocks();
    hard.m.dispose();
  });

  it('instance noise: every pair D sees (G step and D step) carries Gaussian noise of the given std', () => {
    const m = models(tinyArchitecture(), 24);
    const { optG, optD } = optimisers(m);
    const clean = tidy(() => {
      const out = m.twinGen.forward(m.x);
      return {
        fake: Tensor.cat([out.reconstruction!, out.map], 1).toFloat32Array(),
        real: Tensor.cat([m.x, m.masks], 1).toFloat32Array(),
      };
    });
    const calls = recordDiscriminator(m.disc);
    anosegTrainStep(
      { generator: m.gen, discriminator: m.disc, generatorOptimizer: optG, discriminatorOptimizer: optD },
      m.x,
      m.masks,
      cfg,
      undefined,
      { noiseStd: 0.3 },
    );
    const std = (a: Float32Array, b: Float32Array): number => {
      const d = a.map((v, i) => v - b[i]);
      const mean = d.reduce((s, v) => s + v, 0) / d.length;
      return Math.sqrt(d.reduce((s, v) => s + (v - mean) ** 2, 0) / d.length);
    };
    // 8192 values each: the sample std is within a few percent of 0.3
    expect(std(calls[0].input, clean.fake)).toBeCloseTo(0.3, 1);
    expect(std(calls[1].input, clean.real)).toBeCloseTo(0.3, 1);
    expect(std(calls[2].input, clean.fake)).toBeCloseTo(0.3, 1);
    // independent draws
    expect(std(calls[2].input, calls[0].input)).toBeGreaterThan(0.35);
    vi.restoreAllMocks();
    m.dispose();
  });

  it("least squares + label smoothing + R1 through a spectrally normalised D: D's gradient is that of L_D + R1", () => {
    const m = models(tinyArchitecture(), 25, { spectralNorm: true });
    const o = { loss: 'least-squares', realLabel: 0.9, r1Weight: 5 } as const;
    const hand = tidy(() => {
      const out = m.twinGen.forward(m.x);
      const fake = Tensor.cat([out.reconstruction!, out.map], 1);
      const lAdv = m.twinDisc.frozen(() => generatorAdversarialLoss(m.twinDisc.forward(fake).logits, o.loss));
      const real = Tensor.cat([m.x, m.masks], 1);
      real.requiresGrad = true;
      const realLogits = m.twinDisc.forward(real).logits;
      const lD = discriminatorLoss(realLogits, m.twinDisc.forward(fake.detach()).logits, o.loss, o.realLabel);
      const r1 = r1Penalty(realLogits, real, o.r1Weight);
      const dp = m.twinDisc.parameters();
      return { adv: lAdv.item(), d: lD.item(), r1: r1.item(), grad: gradientOf(lD.add(r1), dp) };
    });
    const { optG, optD } = optimisers(m);
    const atD = recordStep(optD, m, [], 'D step');
    const live = liveTensors();
    const l = anosegTrainStep(
      { generator: m.gen, discriminator: m.disc, generatorOptimizer: optG, discriminatorOptimizer: optD },
      m.x,
      m.masks,
      cfg,
      undefined,
      o,
    );
    expect(liveTensors()).toBe(live);
    expect(l.adversarial).toBeCloseTo(hand.adv, 5);
    expect(l.discriminator).toBeCloseTo(hand.d, 5);
    expect(hand.r1).toBeGreaterThan(0);
    expect(l.r1).toBeCloseTo(hand.r1, 4);
    atD.at!.discGrads.forEach((a, i) => expect(relDiff(a!, hand.grad[i]), `D grad ${i}`).toBeLessThan(1e-3));
    vi.restoreAllMocks();
    m.dispose();
  });
});

describe('configuredSegLoss', () => {
  it('picks the configured L_Seg and adds the Dice term with its weight', () => {
    tidy(() => {
      manualSeed(5);
      const map = Tensor.rand([2, 1, 8, 8]);
      const target = Tensor.rand([2, 1, 8, 8]).gt(0.3).to('float32');
      const dice = diceSegmentationLoss(map, target).item();
      const cases: [AnoSegLossConfig['segLoss'], number][] = [
        ['l1', segmentationLoss(map, target).item()],
        ['balanced-l1', balancedSegmentationLoss(map, target).item()],
        ['focal', focalSegmentationLoss(map, target).item()],
      ];
      expect(new Set(cases.map(([, v]) => v.toFixed(6))).size).toBe(3); // distinguishable
      for (const [segLoss, base] of cases) {
        expect(configuredSegLoss(map, target, { segLoss }).item()).toBeCloseTo(base, 6);
        expect(configuredSegLoss(map, target, { segLoss, diceWeight: 0 }).item()).toBeCloseTo(base, 6);
        expect(configuredSegLoss(map, target, { segLoss, diceWeight: 0.7 }).item()).toBeCloseTo(base + 0.7 * dice, 6);
      }
    });
  });
});
