import { afterEach, describe, expect, it } from 'vitest';
import { Tensor, manualSeed, noGrad, tidy } from '../../engine/index.js';
import { AnoSegGenerator, PAPER_ARCHITECTURE, type AnoSegArchitecture } from './network.js';
import { InferenceGenerator, inferenceSettings, type ConvKernel } from './inference.js';

const base: AnoSegArchitecture = { ...PAPER_ARCHITECTURE, resolution: 32, width: 0.125 };

/** A generator whose BatchNorms hold non-trivial statistics and affine parameters (trained-like), in eval mode. */
function trainedLike(arch: AnoSegArchitecture): AnoSegGenerator {
  manualSeed(7);
  const g = new AnoSegGenerator(arch);
  noGrad(() => {
    for (const [name, t] of g.stateDict()) {
      if (name.endsWith('running_mean')) t.copy_(tidy(() => Tensor.randn(t.shape).mul(0.2)));
      if (name.endsWith('running_var')) t.copy_(tidy(() => Tensor.rand(t.shape).add(0.5)));
      if (/\.(1|bn\d)\.weight$|bn\d\.weight$/.test(name) && t.ndim === 1)
        t.copy_(tidy(() => Tensor.rand(t.shape).add(0.5)));
      if (/bn\d\.bias$|\.1\.bias$/.test(name) && t.ndim === 1) t.copy_(tidy(() => Tensor.randn(t.shape).mul(0.1)));
    }
  });
  return g.eval();
}

function maxDiff(a: Tensor, b: Tensor): number {
  return tidy(() => a.sub(b).abs().amax().item());
}

const saved = inferenceSettings.conv;
afterEach(() => {
  inferenceSettings.conv = saved;
});

describe('InferenceGenerator (BatchNorm folded, sub-pixel upsampling, oneDNN)', () => {
  const variants: [string, Partial<AnoSegArchitecture>][] = [
    ['Table 6 decoders', {}],
    ['skips into the map decoder', { skips: true }],
    ['resize upsampling, one channel, no coordinates', { upsampling: 'resize', channels: 1, coordChannels: false }],
  ];
  for (const kernel of ['prepacked', 'mkldnn'] as ConvKernel[]) {
    for (const [label, change] of variants) {
      it(`equals the eval-mode generator: ${label}, ${kernel} convolutions, batches 1 and 3`, () => {
        inferenceSettings.conv = kernel;
        const arch = { ...base, ...change };
        const g = trainedLike(arch);
        const folded = InferenceGenerator.fromGenerator(g);
        try {
          for (const batch of [1, 3]) {
            tidy(() => {
              const x = Tensor.rand([batch, arch.channels, 32, 32]);
              const want = noGrad(() => g.forward(x));
              const got = folded.forward(x);
              expect(got.map.shape).toEqual([batch, 1, 32, 32]);
              expect(maxDiff(got.map, want.map)).toBeLessThan(1e-5);
              expect(maxDiff(got.reconstruction!, want.reconstruction!)).toBeLessThan(1e-5);
              expect(folded.forward(x, { mapOnly: true }).reconstruction).toBeNull();
            });
          }
        } finally {
          folded.dispose();
          g.dispose();
        }
      });
    }
  }

  it('records no autograd graph and leaves no tensors behind', () => {
    const g = trainedLike(base);
    const folded = InferenceGenerator.fromGenerator(g);
    const x = Tensor.rand([1, 3, 32, 32]);
    const out = folded.forward(x);
    expect(out.map.requiresGrad).toBe(false);
    out.map.dispose();
    out.reconstruction?.dispose();
    x.dispose();
    folded.dispose();
    g.dispose();
  });
});
