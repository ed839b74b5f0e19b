import { describe, expect, it } from 'vitest';
import { trainConfigFromArgs } from '../../cli/main.js';
import {
  ADVERSARIAL_DEFAULTS,
  DEFAULT_PRESET,
  PRESETS,
  adversarialSettings,
  discriminatorStepOptions,
  instanceNoiseStd,
  presetConfig,
  validateConfig,
  type AnoSegTrainConfig,
} from './config.js';

describe('presets', () => {
  it.each(Object.keys(PRESETS))('%s validates', (name) => {
    expect(() => validateConfig(presetConfig(name))).not.toThrow();
    expect(presetConfig(name).preset).toBe(name);
  });

  it('the default preset exists', () => {
    expect(PRESETS[DEFAULT_PRESET]).toBeDefined();
  });

  it("'paper' matches the paper (4.1, 3.1-3.3, Table 6)", () => {
    const p = presetConfig('paper');
    // 4.1: images resized to 256 x 256, 16 images per batch
    expect(p.arch.resolution).toBe(256);
    expect(p.batchSize).toBe(16);
    // Table 6 widths, ResNet-18 + two decoders with transposed convolutions, coordinate channels (3.3)
    expect(p.arch.width).toBe(1);
    expect(p.arch.reconstruction).toBe(true);
    expect(p.arch.upsampling).toBe('transposed');
    expect(p.arch.coordChannels).toBe(true);
    // 3.1: rotation, perm, colour jitter each with a 50% chance, then CutPaste of a rectangle, opaque
    expect(p.anomaly.hardAugmentation).toBe(true);
    expect(p.anomaly.augmentProbability).toBe(0.5);
    expect(p.anomaly.maskShape).toBe('rect');
    expect(p.anomaly.blend).toBe('hard');
    expect(p.anomaly.source).toBe('self');
    // 3.2: L_Seg + L_Re + L_Adv. The paper gives no weights: unit weights for L_Seg and L_Re, and L_Adv at 0.1
    // after a ramp with its stabilisers, are ours, and so is D's fake pair (x, Â) with blurred real masks instead of
    // eq. 3's (x̂, Â) (README "Making L_Adv work", S8).
    expect(p.loss).toMatchObject({
      segWeight: 1,
      reconstructionWeight: 1,
      adversarialWeight: 0.1,
      fakePair: 'input',
    });
    expect(p.adversarialRampSteps).toBe(200);
    expect(adversarialSettings(p)).toEqual({
      ...ADVERSARIAL_DEFAULTS,
      realLabel: 0.9,
      r1Weight: 10,
      dLr: 0.5,
      realMaskBlur: 2,
    });
    // eq. 2 is a plain L1
    expect(p.loss.segLoss).toBe('l1');
    // the paper reads the map directly (no reconstruction term in the score)
    expect(p.reconstructionScoreWeight).toBe(0);
  });

  it('presetConfig returns an independent copy and names the known presets on error', () => {
    const a = presetConfig('paper');
    a.arch.resolution = 32;
    a.anomaly.areaRange[0] = 0.5;
    expect(presetConfig('paper').arch.resolution).toBe(256);
    expect(presetConfig('paper').anomaly.areaRange[0]).not.toBe(0.5);
    expect(() => presetConfig('nope')).toThrow(/unknown preset 'nope'.*paper.*cpu.*recipe/);
  });
});

describe('validateConfig', () => {
  const base = (): AnoSegTrainConfig => presetConfig('cpu');
  const cases: [string, (c: AnoSegTrainConfig) => void, RegExp][] = [
    ['resolution not a power of two', (c) => (c.arch.resolution = 96), /resolution/],
    ['resolution too small', (c) => (c.arch.resolution = 16), /resolution/],
    ['channels', (c) => (c.arch.channels = 4), /channels/],
    ['width 0', (c) => (c.arch.width = 0), /width/],
    ['width too large', (c) => (c.arch.width = 8), /width/],
    ['batch 0', (c) => (c.batchSize = 0), /batch size/],
    ['batch 1 (BatchNorm)', (c) => (c.batchSize = 1), /batch size must be at least 2/],
    ['fractional batch', (c) => (c.batchSize = 2.5), /batch size/],
    ['steps 0', (c) => (c.steps = 0), /steps/],
    ['evalEvery 0', (c) => (c.evalEvery = 0), /evalEvery/],
    ['checkpointEvery -1', (c) => (c.checkpointEvery = -1), /checkpointEvery/],
    ['anomalyFraction > 1', (c) => (c.anomalyFraction = 1.5), /anomalyFraction/],
    ['anomalyFraction NaN', (c) => (c.anomalyFraction = Number.NaN), /anomalyFraction/],
    ['lr 0', (c) => (c.lr = 0), /learning rate/],
    ['lr 1', (c) => (c.lr = 1), /learning rate/],
    ['validationFraction 0.5', (c) => (c.validationFraction = 0.5), /validationFraction/],
    ['maxMinutes 0', (c) => (c.maxMinutes = 0), /maxMinutes/],
    ['adversarialRampSteps -1', (c) => (c.adversarialRampSteps = -1), /adversarialRampSteps/],
    ['an unknown adversarial loss', (c) => (c.adversarial = { loss: 'wasserstein' as 'bce' }), /adversarial\.loss/],
    ['realLabel 0', (c) => (c.adversarial = { realLabel: 0 }), /adversarial\.realLabel/],
    ['realLabel 1.1', (c) => (c.adversarial = { realLabel: 1.1 }), /adversarial\.realLabel/],
    ['label smoothing with hinge', (c) => (c.adversarial = { loss: 'hinge', realLabel: 0.9 }), /hinge/],
    ['negative instance noise', (c) => (c.adversarial = { instanceNoise: -0.1 }), /adversarial\.instanceNoise/],
    ['fractional noise steps', (c) => (c.adversarial = { instanceNoiseSteps: 2.5 }), /instanceNoiseSteps/],
    ['negative R1 weight', (c) => (c.adversarial = { r1Weight: -1 }), /adversarial\.r1Weight/],
    ['dLr 0', (c) => (c.adversarial = { dLr: 0 }), /adversarial\.dLr/],
    ['a D learning rate >= 1', (c) => (c.adversarial = { dLr: 1e4 }), /adversarial\.dLr/],
    ['negative D loss floor', (c) => (c.adversarial = { dLossFloor: -1 }), /adversarial\.dLossFloor/],
    ['unknown real pairs', (c) => (c.adversarial = { realPairs: 'some' as 'all' }), /adversarial\.realPairs/],
    ['an unknown anomaly shape', (c) => (c.anomaly.mixedShapes = ['star' as 'rect']), /mixedShapes.*star/],
    ['an inverted anomaly area range', (c) => (c.anomaly.areaRange = [0.2, 0.1]), /areaRange/],
    [
      "realPairs 'normal' with only anomalies",
      (c) => {
        c.anomalyFraction = 1;
        c.adversarial = { realPairs: 'normal' };
      },
      /needs a normal image/,
    ],
    [
      "fakePair 'reconstruction' without the decoder",
      (c) => {
        c.arch.reconstruction = false;
        c.loss.fakePair = 'reconstruction';
        c.loss.adversarialWeight = 1;
      },
      /fakePair 'reconstruction' needs the reconstruction decoder/,
    ],
  ];

  it.each(cases)('rejects %s', (_, mutate, message) => {
    const c = base();
    mutate(c);
    expect(() => validateConfig(c)).toThrow(message);
  });

  it('accepts the edge values', () => {
    const c = base();
    Object.assign(c, { batchSize: 2, anomalyFraction: 0, validationFraction: 0, maxMinutes: 0.01, steps: 1 });
    c.arch.resolution = 32;
    expect(() => validateConfig(c)).not.toThrow();
    // without the reconstruction decoder and without the adversarial term any fake pair is fine
    c.arch.reconstruction = false;
    c.loss.adversarialWeight = 0;
    c.loss.fakePair = 'reconstruction';
    expect(() => validateConfig(c)).not.toThrow();
  });
});

describe('adversarial settings (stabilisers)', () => {
  it('configs written before them (no adversarial object, or a partial one) load with the defaults: all off', () => {
    const old = presetConfig('paper');
    delete old.adversarial;
    expect(adversarialSettings(old)).toEqual(ADVERSARIAL_DEFAULTS);
    expect(ADVERSARIAL_DEFAULTS).toMatchObject({ loss: 'bce', spectralNorm: false, realLabel: 1, r1Weight: 0, dLr: 1 });
    expect(ADVERSARIAL_DEFAULTS).toMatchObject({ instanceNoise: 0, dLossFloor: 0, realPairs: 'all', realMaskBlur: 0 });
    const partial = { ...old, adversarial: { loss: 'hinge' as const } };
    expect(adversarialSettings(partial)).toEqual({ ...ADVERSARIAL_DEFAULTS, loss: 'hinge' });
    // a JSON round trip (what a checkpoint stores) validates as before
    expect(() => validateConfig(JSON.parse(JSON.stringify(old)) as AnoSegTrainConfig)).not.toThrow();
    // the step options of an old config are the plain eq. 3
    expect(discriminatorStepOptions(old, 10)).toEqual({
      loss: 'bce',
      realLabel: 1,
      noiseStd: 0,
      r1Weight: 0,
      lossFloor: 0,
      realPairs: 'all',
      realMaskBlur: 0,
    });
  });

  it('instance noise: the std decays linearly from its start to 0 over instanceNoiseSteps (0 = the whole run)', () => {
    const a = { ...ADVERSARIAL_DEFAULTS, instanceNoise: 0.2, instanceNoiseSteps: 100 };
    expect(instanceNoiseStd(a, 0, 1000)).toBeCloseTo(0.2, 12);
    expect(instanceNoiseStd(a, 25, 1000)).toBeCloseTo(0.15, 12);
    expect(instanceNoiseStd(a, 50, 1000)).toBeCloseTo(0.1, 12);
    expect(instanceNoiseStd(a, 100, 1000)).toBe(0);
    expect(instanceNoiseStd(a, 400, 1000)).toBe(0);
    const wholeRun = { ...a, instanceNoiseSteps: 0 };
    expect(instanceNoiseStd(wholeRun, 500, 1000)).toBeCloseTo(0.1, 12);
    expect(instanceNoiseStd(wholeRun, 1000, 1000)).toBe(0);
    expect(instanceNoiseStd(ADVERSARIAL_DEFAULTS, 0, 1000)).toBe(0);
    const c = { ...presetConfig('cpu'), adversarial: { instanceNoise: 0.2, instanceNoiseSteps: 100 } };
    expect(discriminatorStepOptions(c, 50).noiseStd).toBeCloseTo(0.1, 12);
  });
});

describe('trainConfigFromArgs', () => {
  it('without switches gives the default preset', () => {
    const c = trainConfigFromArgs({});
    expect(c.preset).toBe(DEFAULT_PRESET);
    expect(c).toEqual({ ...presetConfig(DEFAULT_PRESET), checkpointEvery: c.checkpointEvery, evalEvery: c.evalEvery });
  });

  it('maps every numeric and choice switch', () => {
    const c = trainConfigFromArgs({
      preset: 'paper',
      steps: '40',
      minutes: '2.5',
      resolution: '64',
      width: '0.5',
      batch: '6',
      lr: '0.0003',
      seed: '7',
      aspect: 'pad',
      'adv-weight': '0.25',
      'fake-pair': 'input',
      'mask-shape': 'gmm',
      blend: 'soft',
      source: 'texture',
      upsampling: 'resize',
      'eval-every': '10',
    });
    expect(c.preset).toBe('paper');
    expect(c.steps).toBe(40);
    expect(c.maxMinutes).toBe(2.5);
    expect(c.arch.resolution).toBe(64);
    expect(c.arch.width).toBe(0.5);
    expect(c.batchSize).toBe(6);
    expect(c.lr).toBe(0.0003);
    expect(c.seed).toBe(7);
    expect(c.aspect).toBe('pad');
    expect(c.loss.adversarialWeight).toBe(0.25);
    expect(c.loss.fakePair).toBe('input');
    expect(c.anomaly.maskShape).toBe('gmm');
    expect(c.anomaly.blend).toBe('soft');
    expect(c.anomaly.source).toBe('texture');
    expect(c.arch.upsampling).toBe('resize');
    expect(c.evalEvery).toBe(10);
    // checkpoints never less often than the run length
    expect(c.checkpointEvery).toBe(40);
    expect(() => validateConfig(c)).not.toThrow();
  });

  it('maps the adversarial stabilisers into config.adversarial (absent without them)', () => {
    expect(trainConfigFromArgs({ preset: 'paper' }).adversarial).toEqual(presetConfig('paper').adversarial);
    const c = trainConfigFromArgs({
      preset: 'paper',
      'adv-ramp': '300',
      'adv-loss': 'least-squares',
      'spectral-norm': true,
      'real-label': '0.9',
      'instance-noise': '0.1',
      'instance-noise-steps': '2000',
      'r1-weight': '10',
      'd-lr': '4',
      'd-loss-floor': '0.3',
      'real-pairs': 'normal',
      'real-mask-blur': '1.5',
    });
    expect(c.adversarialRampSteps).toBe(300);
    expect(c.adversarial).toEqual({
      loss: 'least-squares',
      spectralNorm: true,
      realLabel: 0.9,
      instanceNoise: 0.1,
      instanceNoiseSteps: 2000,
      r1Weight: 10,
      dLr: 4,
      dLossFloor: 0.3,
      realPairs: 'normal',
      realMaskBlur: 1.5,
    });
    // one stabiliser given: the preset's others stay
    expect(trainConfigFromArgs({ preset: 'cpu', 'd-lr': '2' }).adversarial).toEqual({
      realLabel: 0.9,
      r1Weight: 10,
      dLr: 2,
      realMaskBlur: 2,
    });
    expect(() => trainConfigFromArgs({ 'adv-loss': 'hinge', 'real-label': '0.9' })).toThrow(/hinge/);
    // the hinge loss drops the preset's label smoothing (meaningless for it) unless it was asked for
    expect(trainConfigFromArgs({ preset: 'cpu', 'adv-loss': 'hinge' }).adversarial?.realLabel).toBe(1);
  });

  it('maps the ablation switches', () => {
    const c = trainConfigFromArgs({ preset: 'paper', 'no-hard-aug': true, 'no-adversarial': true, 'no-coords': true });
    expect(c.anomaly.hardAugmentation).toBe(false);
    expect(c.loss.adversarialWeight).toBe(0);
    expect(c.arch.coordChannels).toBe(false);
    // everything else stays the paper's
    const p = presetConfig('paper');
    expect(c.anomaly.maskShape).toBe(p.anomaly.maskShape);
    expect(c.arch.reconstruction).toBe(true);
    const plain = trainConfigFromArgs({ preset: 'paper' });
    expect(plain.anomaly.hardAugmentation).toBe(true);
    expect(plain.loss.adversarialWeight).toBe(0.1);
    expect(plain.arch.coordChannels).toBe(true);
  });

  it('maps the recipe levers (segmentation loss, Dice, skips, anomaly shapes and areas) into the config', () => {
    const c = trainConfigFromArgs({
      'seg-loss': 'focal',
      'dice-weight': '0.5',
      'no-skips': true,
      'mask-shape': 'mixed',
      'mixed-shapes': 'stroke,gmm',
      'area-range': '0.001,0.2',
      'area-sampling': 'log-uniform',
      placement: 'anywhere',
      blend: 'mixed',
      source: 'mixed',
    });
    expect(c.loss.segLoss).toBe('focal');
    expect(c.loss.diceWeight).toBe(0.5);
    expect(c.arch.skips).toBe(false);
    expect(c.anomaly.maskShape).toBe('mixed');
    expect(c.anomaly.mixedShapes).toEqual(['stroke', 'gmm']);
    expect(c.anomaly.areaRange).toEqual([0.001, 0.2]);
    expect(c.anomaly.areaSampling).toBe('log-uniform');
    expect(c.anomaly.placement).toBe('anywhere');
    expect(c.anomaly.blend).toBe('mixed');
    expect(c.anomaly.source).toBe('mixed');
    expect(trainConfigFromArgs({ preset: 'paper', skips: true }).arch.skips).toBe(true);
    expect(trainConfigFromArgs({ preset: 'paper', 'seg-loss': 'balanced-l1' }).loss.segLoss).toBe('balanced-l1');
    expect(() => trainConfigFromArgs({ skips: true, 'no-skips': true })).toThrow(/contradict/);
  });

  it('takes a training crop no larger than the resolution', () => {
    expect(trainConfigFromArgs({ resolution: '256', 'train-crop': '128' }).trainCrop).toBe(128);
    expect(trainConfigFromArgs({}).trainCrop ?? null).toBeNull();
    expect(() => trainConfigFromArgs({ resolution: '128', 'train-crop': '256' })).toThrow(/train crop/);
    expect(() => trainConfigFromArgs({ resolution: '256', 'train-crop': '96' })).toThrow(/power of two/);
  });

  it('clamps evalEvery and checkpointEvery to short runs', () => {
    const c = trainConfigFromArgs({ steps: '3' });
    expect(c.evalEvery).toBe(3);
    expect(c.checkpointEvery).toBe(3);
    const d = trainConfigFromArgs({ steps: '3', 'eval-every': '2' });
    expect(d.evalEvery).toBe(2);
  });

  it.each<[string, string]>([
    ['steps', '0'],
    ['steps', '1.5'],
    ['steps', 'many'],
    ['steps', ''],
    ['minutes', '0'],
    ['minutes', '-1'],
    ['resolution', '0'],
    ['resolution', '32.5'],
    ['width', '-0.5'],
    ['batch', '0'],
    ['lr', '0'],
    ['lr', 'fast'],
    ['seed', '-1'],
    ['seed', '0.5'],
    ['eval-every', '0'],
    ['adv-weight', '-1'],
    ['aspect', 'squash'],
    ['fake-pair', 'both'],
    ['mask-shape', 'circle'],
    ['blend', 'alpha'],
    ['source', 'web'],
    ['upsampling', 'bilinear'],
    ['seg-loss', 'dice'],
    ['dice-weight', '-1'],
    ['mixed-shapes', 'rect,circle'],
    ['area-range', '0.2,0.1'],
    ['area-range', '0.1'],
    ['area-sampling', 'normal'],
    ['placement', 'outside'],
    ['adv-loss', 'wgan'],
    ['real-label', '0'],
    ['real-label', '1.5'],
    ['instance-noise', '-0.1'],
    ['instance-noise-steps', '1.5'],
    ['r1-weight', '-1'],
    ['d-lr', '0'],
    ['d-loss-floor', '-1'],
    ['real-pairs', 'some'],
    ['adv-ramp', '-1'],
  ])('rejects --%s %j with a message naming the switch', (name, value) => {
    expect(() => trainConfigFromArgs({ [name]: value })).toThrow(`invalid value for --${name}`);
  });

  it('rejects an unknown preset', () => {
    expect(() => trainConfigFromArgs({ preset: 'fastest' })).toThrow(
      /invalid value for --preset: fastest \(one of paper, cpu, recipe\)/,
    );
  });
});
