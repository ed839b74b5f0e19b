import { describe, expect, it } from 'vitest';
import { Tensor, manualSeed, noGrad } from '../../engine/index.js';
import { FeatureBackbone } from '../../models/backbone.js';
import { initialiseEncoder } from './encoder-init.js';
import { AnoSegGenerator, withCoordinates, type AnoSegArchitecture } from './network.js';

const arch = (channels: number): AnoSegArchitecture => ({
  resolution: 64,
  channels,
  width: 0.25,
  coordChannels: true,
  reconstruction: false,
  upsampling: 'transposed',
  skips: true,
});

/** A width-0.25 backbone with the given normalisation and random (not identity) BatchNorm statistics. */
function backboneWith(mean: [number, number, number], std: [number, number, number]): FeatureBackbone {
  const b = FeatureBackbone.random(0.25, 3, { mean, std });
  manualSeed(11);
  for (const [name, t] of b.stateDict()) {
    if (name.endsWith('running_mean')) t.copy_(Tensor.randn(t.shape).mul(0.3));
    if (name.endsWith('running_var')) t.copy_(Tensor.rand(t.shape).add(0.5));
  }
  return b;
}

function maxAbsDiff(a: Tensor, b: Tensor): number {
  expect(a.shape).toEqual(b.shape);
  return a.sub(b).abs().amax().item();
}

describe('initialiseEncoder', () => {
  it('gives the backbone features on raw images when the backbone normalises without a mean shift', () => {
    const backbone = backboneWith([0, 0, 0], [0.2, 0.3, 0.25]);
    const g = new AnoSegGenerator(arch(3));
    expect(initialiseEncoder(g.encoder, backbone, 3)).toBe(backbone.stateDict().size);
    g.eval();
    manualSeed(5);
    const x = Tensor.rand([2, 3, 64, 64]);
    noGrad(() => {
      const [, l1, l2, l3] = g.encoder.forwardStages(withCoordinates(x));
      const [f1, f2, f3] = backbone.features(backbone.normalize(x));
      expect(maxAbsDiff(l1, f1)).toBeLessThan(1e-4);
      expect(maxAbsDiff(l2, f2)).toBeLessThan(1e-4);
      expect(maxAbsDiff(l3, f3)).toBeLessThan(1e-4);
    });
  });

  it('folds the mean shift into the stem BatchNorm (equal away from the zero-padded border)', () => {
    const backbone = backboneWith([0.45, 0.4, 0.5], [0.2, 0.3, 0.25]);
    const g = new AnoSegGenerator(arch(3));
    initialiseEncoder(g.encoder, backbone, 3);
    g.eval();
    manualSeed(6);
    const x = Tensor.rand([1, 3, 64, 64]);
    noGrad(() => {
      const ours = g.encoder.stem.forward(withCoordinates(x));
      const theirs = backbone.net.stem.forward(backbone.normalize(x));
      // stem output j reads conv rows 2j-1..2j+1, conv row i reads input rows 2i-3..2i+3: j in 2..14 sees no padding
      const inner = (t: Tensor): Tensor => t.slice(2, 2, 15).slice(3, 2, 15);
      expect(maxAbsDiff(inner(ours), inner(theirs))).toBeLessThan(1e-4);
      // without the BatchNorm correction the two differ by the folded constant
      expect(maxAbsDiff(ours, theirs)).toBeGreaterThan(1e-3);
    });
  });

  it('starts the coordinate channels at zero and sums RGB weights for a grayscale model', () => {
    const backbone = backboneWith([0, 0, 0], [0.2, 0.3, 0.25]);
    const g = new AnoSegGenerator(arch(1));
    initialiseEncoder(g.encoder, backbone, 1);
    const stemWeight = g.encoder.stateDict().get('stem.0.weight')!;
    expect(stemWeight.shape[1]).toBe(3);
    expect(stemWeight.slice(1, 1, 3).abs().amax().item()).toBe(0);
    g.eval();
    manualSeed(7);
    const gray = Tensor.rand([2, 1, 64, 64]);
    noGrad(() => {
      const [, l1, , l3] = g.encoder.forwardStages(withCoordinates(gray));
      const [f1, , f3] = backbone.features(backbone.normalize(gray.expand([2, 3, 64, 64])));
      expect(maxAbsDiff(l1, f1)).toBeLessThan(1e-4);
      expect(maxAbsDiff(l3, f3)).toBeLessThan(1e-4);
    });
  });

  it('refuses a backbone of another width, naming both', () => {
    const backbone = FeatureBackbone.random(0.5, 1);
    const g = new AnoSegGenerator(arch(3));
    expect(() => initialiseEncoder(g.encoder, backbone, 3, '--encoder-init bb')).toThrow(
      /--encoder-init bb: the backbone has width 0.5 .*16-32-64.*--width/,
    );
  });
});
