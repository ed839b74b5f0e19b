import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { F, Tensor, getNumThreads, liveTensors, manualSeed, noGrad, setNumThreads, tidy } from '../../engine/index.js';
import { BatchNorm2d, Conv2d, ConvTranspose2d, type Module } from '../../nn/index.js';
import {
  AnoSegGenerator,
  Decoder,
  Discriminator,
  PAPER_ARCHITECTURE,
  SpectralNormConv2d,
  anoSegDiscriminator,
  validateArchitecture,
  cropCoordinates,
  withCoordinates,
  type AnoSegArchitecture,
} from './network.js';
import { tinyArchitecture } from '../../../test/fixtures/tiny-architecture.js';

const threadsBefore = getNumThreads();
beforeAll(() => setNumThreads(1));
afterAll(() => setNumThreads(threadsBefore));

const tiny = tinyArchitecture;

/** Every module below `m`, depth first, in registration order (= forward order for Sequential). */
function walk(m: Module): Module[] {
  return [m, ...m.namedChildren().flatMap(([, c]) => walk(c))];
}

/** [kind, in, out, kernel] of every (transposed) convolution, in forward order, read from the weight shapes. */
function convs(m: Module): [string, number, number, number][] {
  return walk(m).flatMap((c): [string, number, number, number][] => {
    // Conv2d weight: [out, in, k, k]; ConvTranspose2d weight: [in, out, k, k] (PyTorch layout)
    if (c instanceof ConvTranspose2d) return [['convtr', c.weight.shape[0], c.weight.shape[1], c.weight.shape[2]]];
    if (c instanceof Conv2d) return [['conv', c.weight.shape[1], c.weight.shape[0], c.weight.shape[2]]];
    return [];
  });
}

describe('withCoordinates', () => {
  it('appends an x ramp and a y ramp from -1 to 1 (hand-checked on a 3x4 input)', () => {
    const data = Float32Array.from({ length: 2 * 1 * 3 * 4 }, (_, i) => i / 10);
    const x = Tensor.from(data, [2, 1, 3, 4]);
    const y = withCoordinates(x);
    expect(y.shape).toEqual([2, 3, 3, 4]);
    const v = Array.from(y.toFloat32Array());
    const t = 1 / 3;
    const xRamp = [-1, -t, t, 1, -1, -t, t, 1, -1, -t, t, 1];
    const yRamp = [-1, -1, -1, -1, 0, 0, 0, 0, 1, 1, 1, 1];
    for (let n = 0; n < 2; n++) {
      const base = n * 3 * 12;
      // the image channel is unchanged
      v.slice(base, base + 12).forEach((val, i) => expect(val).toBeCloseTo(data[n * 12 + i], 6));
      v.slice(base + 12, base + 24).forEach((val, i) => expect(val).toBeCloseTo(xRamp[i], 6));
      v.slice(base + 24, base + 36).forEach((val, i) => expect(val).toBeCloseTo(yRamp[i], 6));
    }
    x.dispose();
    y.dispose();
  });

  it('crop coordinates are the matching window of the whole-image ramps', () => {
    tidy(() => {
      const full = withCoordinates(Tensor.zeros([1, 1, 8, 8]));
      const ramps = full.toFloat32Array().subarray(64); // x ramp then y ramp, 8x8 each
      const offsets = [
        { y: 0, x: 0 },
        { y: 3, x: 5 },
        { y: 4, x: 1 },
      ];
      const crops = cropCoordinates(offsets, 3, 8);
      expect(crops.shape).toEqual([3, 2, 3, 3]);
      const v = crops.toFloat32Array();
      offsets.forEach(({ y, x }, n) => {
        for (let c = 0; c < 2; c++)
          for (let i = 0; i < 3; i++)
            for (let j = 0; j < 3; j++)
              expect(v[((n * 2 + c) * 3 + i) * 3 + j]).toBeCloseTo(ramps[(c * 8 + y + i) * 8 + x + j], 6);
      });
      // the whole image as its own crop gives the plain ramps
      const whole = cropCoordinates([{ y: 0, x: 0 }], 8, 8).toFloat32Array();
      whole.forEach((val, i) => expect(val).toBeCloseTo(ramps[i], 6));
      expect(() => cropCoordinates([{ y: 6, x: 0 }], 3, 8)).toThrow(/outside 8x8/);
    });
  });

  it('the generator uses given crop coordinates instead of the whole-image ramps', () => {
    manualSeed(3);
    const g = new AnoSegGenerator(tiny({ resolution: 32 }));
    g.train(); // batch statistics: an untrained network's eval-mode map is nearly constant
    noGrad(() =>
      tidy(() => {
        const x = Tensor.rand([2, 3, 32, 32]);
        const at = (coords?: Tensor): Float32Array => g.forward(x, coords).reconstruction!.toFloat32Array();
        const plain = at();
        const offsets = [
          { y: 0, x: 0 },
          { y: 0, x: 0 },
        ];
        at(cropCoordinates(offsets, 32, 32)).forEach((v, i) => expect(v).toBeCloseTo(plain[i], 5));
        const shifted = at(
          cropCoordinates(
            offsets.map(() => ({ y: 32, x: 32 })),
            32,
            64,
          ),
        );
        expect(Math.max(...shifted.map((v, i) => Math.abs(v - plain[i])))).toBeGreaterThan(1e-4);
      }),
    );
    g.dispose();
  });

  it('adds exactly two channels whatever the input channel count', () => {
    tidy(() => {
      for (const c of [1, 3]) expect(withCoordinates(Tensor.zeros([1, c, 5, 7])).shape).toEqual([1, c + 2, 5, 7]);
    });
  });

  it('the generator feeds the coordinate channels to the encoder stem only when asked', () => {
    for (const coordChannels of [true, false]) {
      for (const channels of [1, 3]) {
        const g = new AnoSegGenerator(tiny({ coordChannels, channels }));
        const [, cin] = convs(g.encoder)[0];
        expect(cin).toBe(channels + (coordChannels ? 2 : 0));
        g.dispose();
      }
    }
  });
});

describe('AnoSegGenerator shapes', () => {
  const cases: AnoSegArchitecture[] = [];
  for (const resolution of [32, 64])
    for (const channels of [1, 3])
      for (const coordChannels of [true, false])
        for (const reconstruction of [true, false])
          for (const upsampling of ['transposed', 'resize'] as const) {
            // keep the 64 px half small: every lever is still exercised once at 64
            if (resolution === 64 && (channels === 1) !== coordChannels) continue;
            cases.push(tiny({ resolution, channels, coordChannels, reconstruction, upsampling }));
          }

  it.each(cases)('R=$resolution C=$channels coords=$coordChannels rec=$reconstruction up=$upsampling', (arch) => {
    manualSeed(1);
    const g = new AnoSegGenerator(arch);
    const before = liveTensors();
    noGrad(() =>
      tidy(() => {
        const R = arch.resolution;
        const x = Tensor.rand([2, arch.channels, R, R]);
        for (const mode of ['train', 'eval'] as const) {
          if (mode === 'train') g.train();
          else g.eval();
          const out = g.forward(x);
          expect(out.map.shape).toEqual([2, 1, R, R]);
          const m = out.map.toFloat32Array();
          expect(m.every((v) => Number.isFinite(v) && v >= 0 && v <= 1)).toBe(true);
          if (arch.reconstruction) {
            expect(out.reconstruction?.shape).toEqual([2, arch.channels, R, R]);
            const r = out.reconstruction!.toFloat32Array();
            expect(r.every((v) => v >= 0 && v <= 1)).toBe(true);
          } else expect(out.reconstruction).toBeNull();
        }
      }),
    );
    expect(liveTensors()).toBe(before);
    expect(g.reconstructionDecoder === null).toBe(!arch.reconstruction);
    g.dispose();
  });

  it('gives the same map for the same input in eval mode (channels-last and NCHW agree)', () => {
    manualSeed(3);
    const g = new AnoSegGenerator(tiny()).eval();
    noGrad(() =>
      tidy(() => {
        const x = Tensor.rand([2, 3, 32, 32]);
        const a = g.forward(x).map.toFloat32Array();
        g.channelsLast = false;
        const b = g.forward(x).map.toFloat32Array();
        for (let i = 0; i < a.length; i++) expect(b[i]).toBeCloseTo(a[i], 4);
      }),
    );
    g.dispose();
  });

  it('skips widen only the map decoder: the encoder stage of each resolution joins after each upsampling', () => {
    manualSeed(5);
    const plain = new AnoSegGenerator(tiny());
    const skip = new AnoSegGenerator(tiny({ skips: true }));
    // the pair convs after each upsampling: 5 convBlocks at strides 16, 8, 4, 2, 1
    const pairConvIns = (d: Decoder) =>
      d.body.layers.filter((_, i) => i >= 2 && i <= 10 && i % 2 === 0).map((l) => convs(l)[0][1]);
    const [stem, l1, l2, l3] = [skip.encoder.channels[0], ...skip.encoder.channels];
    const extra = pairConvIns(skip.mapDecoder).map((c, i) => c - pairConvIns(plain.mapDecoder)[i]);
    expect(extra).toEqual([l3, l2, l1, stem, 3 + 2]);
    expect(convs(skip.reconstructionDecoder!)).toEqual(convs(plain.reconstructionDecoder!));
    noGrad(() =>
      tidy(() => {
        const x = Tensor.rand([2, 3, 32, 32]);
        const out = skip.eval().forward(x);
        expect(out.map.shape).toEqual([2, 1, 32, 32]);
        expect(out.reconstruction?.shape).toEqual([2, 3, 32, 32]);
        // the stages the decoder receives: stem at stride 2, then layer1..4; forwardFeatures = the last four
        const stages = skip.encoder.forwardStages(withCoordinates(x));
        expect(stages.map((t) => t.shape[2])).toEqual([16, 8, 4, 2, 1]);
        const feats = skip.encoder.forwardFeatures(withCoordinates(x));
        feats.forEach((f, i) =>
          expect(Array.from(f.toFloat32Array())).toEqual(Array.from(stages[i + 1].toFloat32Array())),
        );
      }),
    );
    expect(() => tidy(() => skip.mapDecoder.forward(Tensor.rand([1, 8, 1, 1])))).toThrow(/skip tensors/);
    plain.dispose();
    skip.dispose();
  });

  it('with skips a change of one input pixel moves the map most at that pixel (outlines are local)', () => {
    manualSeed(9);
    const g = new AnoSegGenerator(tiny({ skips: true, resolution: 64 })).eval();
    noGrad(() =>
      tidy(() => {
        const x = Tensor.rand([1, 3, 64, 64]);
        const base = g.forward(x).map.toFloat32Array();
        const poked = x.clone();
        const data = poked.toFloat32Array();
        for (let c = 0; c < 3; c++) data[c * 64 * 64 + 40 * 64 + 20] = 1 - data[c * 64 * 64 + 40 * 64 + 20];
        const moved = g.forward(Tensor.from(data, [1, 3, 64, 64])).map.toFloat32Array();
        const diff = base.map((v, i) => Math.abs(v - moved[i]));
        const at = diff[40 * 64 + 20];
        const far = Math.max(
          ...Array.from(diff).filter((_, i) => Math.abs((i % 64) - 20) > 16 || Math.abs(Math.floor(i / 64) - 40) > 16),
        );
        expect(at).toBeGreaterThan(far);
      }),
    );
    g.dispose();
  });

  it('the decoder restores the resolution with either upsampling', () => {
    for (const upsampling of ['transposed', 'resize'] as const) {
      const d = new Decoder(16, 2, tiny({ upsampling }));
      tidy(() => expect(d.forward(Tensor.rand([1, 16, 2, 2])).shape).toEqual([1, 2, 64, 64]));
      const kinds = convs(d).map(([k]) => k);
      if (upsampling === 'transposed') expect(kinds.filter((k) => k === 'convtr')).toHaveLength(5);
      else expect(kinds).not.toContain('convtr');
      d.dispose();
    }
  });
});

describe('Discriminator', () => {
  it.each([32, 64])('gives one logit per image and the second-to-last features at %i px', (R) => {
    manualSeed(2);
    const d = anoSegDiscriminator(tiny({ resolution: R }));
    noGrad(() =>
      tidy(() => {
        const out = d.forward(Tensor.rand([3, 4, R, R]));
        expect(out.logits.shape).toEqual([3]);
        // as many stride-2 layers as leave a 2x2 map; the last one has width 512 * 0.125
        expect(out.features.shape).toEqual([3, 64, 2, 2]);
        expect(out.logits.toFloat32Array().every(Number.isFinite)).toBe(true);
      }),
    );
    // input: image channels + the map
    expect(convs(d)[0][1]).toBe(4);
    d.dispose();
  });
});

/** Largest singular value of a rows x cols matrix (float64 power iteration on MᵀM, plain JS). */
function largestSingularValue(m: ArrayLike<number>, rows: number, cols: number, iterations = 3000): number {
  let v = Array.from({ length: cols }, (_, i) => 1 + ((i * 7919) % 13) / 13);
  let lambda = 0;
  for (let it = 0; it < iterations; it++) {
    const mv = Array.from({ length: rows }, (_, r) => v.reduce((s, x, c) => s + m[r * cols + c] * x, 0));
    const w = Array.from({ length: cols }, (_, c) => mv.reduce((s, x, r) => s + m[r * cols + c] * x, 0));
    lambda = Math.sqrt(w.reduce((s, x) => s + x * x, 0));
    v = w.map((x) => x / lambda);
  }
  return Math.sqrt(lambda);
}

describe('spectral normalisation (SpectralNormConv2d)', () => {
  it('after enough power-iteration steps the normalised weight has largest singular value ~1 (checked in plain JS)', () => {
    manualSeed(7);
    const conv = new SpectralNormConv2d(4, 8, 4, { stride: 2, padding: 1 });
    const [rows, cols] = [8, 4 * 4 * 4];
    const sigmaOfWeight = largestSingularValue(conv.weight.toFloat32Array(), rows, cols);
    expect(sigmaOfWeight).toBeGreaterThan(0.2); // not already ~1 by chance
    const x = Tensor.rand([2, 4, 8, 8]);
    // one step per training-mode forward
    const first = conv.sigma();
    noGrad(() => tidy(() => conv.forward(x)));
    expect(conv.sigma()).not.toBe(first);
    for (let i = 0; i < 150; i++) noGrad(() => tidy(() => conv.forward(x)));
    // the estimate u^T W v converged to the weight's largest singular value
    expect(conv.sigma()).toBeCloseTo(sigmaOfWeight, 3);
    conv.eval();
    const normalised = noGrad(() => tidy(() => conv.normalizedWeight().toFloat32Array()));
    expect(largestSingularValue(normalised, rows, cols)).toBeCloseTo(1, 3);
    // the convolution uses the normalised weight, and eval mode leaves u as it is
    const u = conv.u.toFloat32Array();
    const [y, expected] = noGrad(() =>
      tidy(() => {
        const w = Tensor.from(normalised, conv.weight.shape);
        return [conv.forward(x).toFloat32Array(), F.conv2d(x, w, conv.bias, conv.options).toFloat32Array()];
      }),
    );
    y.forEach((v, i) => expect(v).toBeCloseTo(expected[i], 5));
    expect(Array.from(conv.u.toFloat32Array())).toEqual(Array.from(u));
    x.dispose();
    conv.dispose();
  });

  it('σ carries gradient to the weight; u is a buffer of the state dict, not a parameter', () => {
    manualSeed(8);
    const conv = new SpectralNormConv2d(2, 3, 4, { stride: 2, padding: 1 });
    expect([...conv.stateDict().keys()].sort()).toEqual(['bias', 'weight', 'weight_u']);
    expect(conv.parameters()).toHaveLength(2);
    tidy(() => {
      // ‖W/σ‖ grows with nothing: scaling the weight leaves the normalised weight (and the output) unchanged
      conv.eval();
      const x = Tensor.rand([1, 2, 6, 6]);
      const y = conv.forward(x).toFloat32Array();
      noGrad(() => conv.weight.mul_(3));
      const y3 = conv.forward(x).toFloat32Array();
      y.forEach((v, i) => expect(y3[i]).toBeCloseTo(v, 5));
      conv.train();
      conv.forward(x).sum().backward();
      expect(conv.weight.grad).not.toBeNull();
      expect(conv.u.requiresGrad).toBe(false);
    });
    conv.dispose();
  });

  it('the discriminator with spectralNorm normalises every convolution and keeps its shapes', () => {
    manualSeed(9);
    const plain = anoSegDiscriminator(tiny());
    const sn = anoSegDiscriminator(tiny(), 32, { spectralNorm: true });
    const snConvs = walk(sn).filter((m) => m instanceof Conv2d);
    expect(snConvs.length).toBeGreaterThan(0);
    expect(snConvs.every((m) => m instanceof SpectralNormConv2d)).toBe(true);
    expect(walk(plain).some((m) => m instanceof SpectralNormConv2d)).toBe(false);
    expect(convs(sn)).toEqual(convs(plain));
    const uKeys = [...sn.stateDict().keys()].filter((k) => k.endsWith('weight_u'));
    expect(uKeys).toHaveLength(snConvs.length);
    expect(uKeys).toContain('head.weight_u');
    noGrad(() => tidy(() => expect(sn.forward(Tensor.rand([2, 4, 32, 32])).logits.shape).toEqual([2])));
    plain.dispose();
    sn.dispose();
  });
});

describe('Table 6 at width 1, 256 px (parameter shapes only, no forward)', () => {
  it('validates the paper architecture and rejects bad ones', () => {
    expect(() => validateArchitecture(PAPER_ARCHITECTURE)).not.toThrow();
    expect(() => validateArchitecture({ ...PAPER_ARCHITECTURE, resolution: 48 })).toThrow(/resolution/);
    expect(() => validateArchitecture({ ...PAPER_ARCHITECTURE, resolution: 16 })).toThrow(/resolution/);
    expect(() => validateArchitecture({ ...PAPER_ARCHITECTURE, channels: 2 })).toThrow(/channels/);
    expect(() => validateArchitecture({ ...PAPER_ARCHITECTURE, width: 0 })).toThrow(/width/);
    expect(() => new AnoSegGenerator({ ...PAPER_ARCHITECTURE, resolution: 100 })).toThrow(/power of two/);
  });

  it('generator: ResNet-18 encoder over 5 channels and two decoders 512,512,256,256,128 x7 -> out', () => {
    const g = new AnoSegGenerator(PAPER_ARCHITECTURE);
    try {
      const decoderWidths = [512, 512, 256, 256, 128, 128, 128, 128, 128, 128, 128];
      const kernels = [3, 4, 3, 4, 3, 4, 3, 4, 3, 4, 3, 3];
      for (const [dec, out] of [
        [g.mapDecoder, 1],
        [g.reconstructionDecoder!, 3],
      ] as const) {
        const c = convs(dec);
        expect(c.map(([, , o]) => o)).toEqual([...decoderWidths, out]);
        expect(c.map(([, i]) => i)).toEqual([512, ...decoderWidths]);
        expect(c.map(([, , , k]) => k)).toEqual(kernels);
        expect(c.map(([kind]) => kind)).toEqual([...Array(5).fill(['conv', 'convtr']).flat(), 'conv', 'conv']);
        // BN after every layer but the last (Table 6: "Conv 7 (-, Sigmoid)")
        expect(walk(dec).filter((m) => m instanceof BatchNorm2d)).toHaveLength(11);
      }
      // Parameter count from Table 6 by hand: 3x3 convs and 4x4 transposed convs without bias + BN (2 per channel),
      // final 3x3 conv with bias.
      const decoderParams = (out: number): number => {
        let n = 0;
        let prev = 512;
        decoderWidths.forEach((w, i) => {
          n += prev * w * kernels[i] ** 2 + 2 * w;
          prev = w;
        });
        return n + 128 * out * 9 + out;
      };
      expect(g.mapDecoder.numParameters()).toBe(decoderParams(1));
      expect(g.reconstructionDecoder!.numParameters()).toBe(decoderParams(3));
      // torchvision resnet18 without its fc layer has 11,176,512 parameters on RGB; two more input channels add
      // 64 * 2 * 7 * 7 stem weights.
      expect(g.encoder.numParameters()).toBe(11_176_512 + 64 * 2 * 49);
      expect(g.encoder.outChannels).toBe(512);
    } finally {
      g.dispose();
    }
  });

  it('discriminator: 4x4 stride-2 convs 64,128,256,512,512,512,128 then one logit', () => {
    const d = anoSegDiscriminator(PAPER_ARCHITECTURE);
    try {
      const c = convs(d);
      expect(c.map(([, , o]) => o)).toEqual([64, 128, 256, 512, 512, 512, 128, 1]);
      expect(c.map(([, i]) => i)).toEqual([4, 64, 128, 256, 512, 512, 512, 128]);
      expect(c.every(([kind, , , k]) => kind === 'conv' && k === 4)).toBe(true);
      expect(
        walk(d)
          .filter((m) => m instanceof Conv2d)
          .every((m) => (m as Conv2d).options.stride === 2),
      ).toBe(true);
      // BN on layers 2..7 only
      expect(walk(d).filter((m) => m instanceof BatchNorm2d)).toHaveLength(6);
      const widths = [4, 64, 128, 256, 512, 512, 512, 128, 1];
      let expected = 0;
      for (let i = 1; i < widths.length; i++) expected += widths[i - 1] * widths[i] * 16 + widths[i];
      expected += 2 * (128 + 256 + 512 + 512 + 512 + 128);
      expect(d.numParameters()).toBe(expected);
    } finally {
      d.dispose();
    }
  });

  it('a smaller discriminator keeps the first layers of Table 6', () => {
    const d = new Discriminator(2, 32, 1);
    expect(convs(d).map(([, , o]) => o)).toEqual([64, 128, 256, 512, 1]);
    d.dispose();
  });
});
