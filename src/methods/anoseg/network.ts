/**
 * AnoSeg networks (Song et al., "AnoSeg: Anomaly Segmentation Network Using Self-Supervised Learning"),
 * Appendix B, Table 6: a ResNet-18 encoder over image + coordinate channels, a decoder for the anomaly map and
 * one for the reconstruction, and a discriminator on concat(image, map). Channel widths scale by `width`.
 */
import { F, Tensor, noGrad } from '../../engine/index.js';
import {
  BatchNorm2d,
  Conv2d,
  ConvTranspose2d,
  Layer,
  LeakyReLU,
  Module,
  ReLU,
  ResNet18,
  Sequential,
  Upsample,
  type ConvOptions,
} from '../../nn/index.js';

export interface AnoSegArchitecture {
  /** Square input resolution; a power of two >= 32 (the encoder downsamples by 32, the decoder restores it). */
  resolution: number;
  /** Image channels (1 or 3). */
  channels: number;
  /** Channel multiplier of Table 6 (1 = paper). */
  width: number;
  /** Concatenate the two coordinate channels (paper 3.3). */
  coordChannels: boolean;
  /** Build the reconstruction decoder (the ablation's base model has only the map decoder). */
  reconstruction: boolean;
  /** Decoder upsampling: 'transposed' = Table 6 (ConvTr 4x4 stride 2); 'resize' = nearest x2 + 3x3 conv. */
  upsampling: 'transposed' | 'resize';
  /**
   * U-Net skip connections into the map decoder (recipe lever, not in Table 6): after each x2 upsampling the
   * encoder's activation of the same resolution (layer3, layer2, layer1, the stem, the input itself) is
   * concatenated, so the map can follow a defect's outline instead of being painted from the 1/32 code. The
   * reconstruction decoder never gets them: it would copy anomalies through and its error would be useless.
   * Absent in model files written before the lever existed (= false).
   */
  skips?: boolean;
}

export const PAPER_ARCHITECTURE: AnoSegArchitecture = {
  resolution: 256,
  channels: 3,
  width: 1,
  coordChannels: true,
  reconstruction: true,
  upsampling: 'transposed',
  skips: false,
};

export function validateArchitecture(a: AnoSegArchitecture): void {
  const r = a.resolution;
  if (!Number.isInteger(r) || r < 32 || (r & (r - 1)) !== 0) {
    throw new Error(`resolution must be a power of two >= 32 (got ${r})`);
  }
  if (a.channels !== 1 && a.channels !== 3) throw new Error(`channels must be 1 or 3 (got ${a.channels})`);
  if (!(a.width > 0 && a.width <= 4)) throw new Error(`width must be in (0, 4] (got ${a.width})`);
}

const scaled = (n: number, w: number): number => Math.max(8, Math.floor(n * w));

/** Conv 3x3 + BN + ReLU */
function convBlock(cin: number, cout: number): Layer {
  return new Sequential(new Conv2d(cin, cout, 3, { padding: 1, bias: false }), new BatchNorm2d(cout), new ReLU(true));
}

/** x2 upsampling + BN + ReLU */
function upBlock(cin: number, cout: number, mode: AnoSegArchitecture['upsampling']): Layer {
  const up =
    mode === 'transposed'
      ? new ConvTranspose2d(cin, cout, 4, { stride: 2, padding: 1, bias: false })
      : new Sequential(new Upsample(2, 'nearest'), new Conv2d(cin, cout, 3, { padding: 1, bias: false }));
  return new Sequential(up, new BatchNorm2d(cout), new ReLU(true));
}

/**
 * Decoder of Table 6 from the encoder's 1/32 feature map: Conv1, then five (ConvTr, Conv) pairs with widths
 * (512,256), (256,128), (128,128), (128,128), (128,128), then a 3x3 conv to `outChannels` and a sigmoid.
 * `skipChannels[i]` widens the i-th pair's Conv for a tensor concatenated after its upsampling.
 */
export class Decoder extends Module {
  readonly body: Sequential;

  constructor(
    inChannels: number,
    outChannels: number,
    a: AnoSegArchitecture,
    readonly skipChannels: readonly number[] = [],
  ) {
    super();
    const w = a.width;
    const pairs: [number, number][] = [
      [512, 256],
      [256, 128],
      [128, 128],
      [128, 128],
      [128, 128],
    ];
    const layers: Layer[] = [convBlock(inChannels, scaled(512, w))];
    let prev = scaled(512, w);
    pairs.forEach(([up, conv], i) => {
      const skip = skipChannels[i] ?? 0;
      layers.push(upBlock(prev, scaled(up, w), a.upsampling), convBlock(scaled(up, w) + skip, scaled(conv, w)));
      prev = scaled(conv, w);
    });
    layers.push(new Conv2d(prev, outChannels, 3, { padding: 1 }));
    this.body = this.registerModule('body', new Sequential(...layers));
  }

  /** `skips[i]` (same resolution as the i-th upsampling's output) is concatenated before the pair's Conv. */
  forward(z: Tensor, skips: readonly Tensor[] = []): Tensor {
    if (skips.length !== this.skipChannels.length)
      throw new Error(`Decoder: ${skips.length} skip tensors for ${this.skipChannels.length} skip inputs`);
    if (skips.length === 0) return this.body.forward(z).sigmoid();
    const l = this.body.layers;
    let y = l[0].forward(z);
    for (let i = 0; i < 5; i++) {
      y = l[1 + 2 * i].forward(y);
      if (i < skips.length) y = Tensor.cat([y, skips[i]], 1);
      y = l[2 + 2 * i].forward(y);
    }
    return l[11].forward(y).sigmoid();
  }
}

/**
 * Appends the two coordinate channels of CoordConv, each a rank-1 ramp in [-1, 1] (paper Fig. 4): x then y.
 * `coords` ([N, 2, H, W], from cropCoordinates) replaces the full-image ramps for crops of a larger image.
 */
export function withCoordinates(x: Tensor, coords?: Tensor): Tensor {
  if (coords) return Tensor.cat([x, coords], 1);
  const [n, , h, w] = x.shape;
  const ys = Tensor.linspace(-1, 1, h).view([1, 1, h, 1]).expand([n, 1, h, w]);
  const xs = Tensor.linspace(-1, 1, w).view([1, 1, 1, w]).expand([n, 1, h, w]);
  return Tensor.cat([x, xs, ys], 1);
}

/**
 * The coordinate channels of `size`-pixel square crops at `offsets` of a `full`-pixel image: the matching window
 * of withCoordinates' ramps, so a network trained on crops sees the coordinates it gets on the whole image.
 */
export function cropCoordinates(offsets: readonly { y: number; x: number }[], size: number, full: number): Tensor {
  const plane = size * size;
  const data = new Float32Array(offsets.length * 2 * plane);
  const step = full > 1 ? 2 / (full - 1) : 0;
  offsets.forEach(({ y, x }, n) => {
    if (y < 0 || x < 0 || y + size > full || x + size > full)
      throw new Error(`cropCoordinates: crop at ${y},${x} of size ${size} outside ${full}x${full}`);
    const base = n * 2 * plane;
    for (let i = 0; i < size; i++) {
      const yValue = -1 + (y + i) * step;
      for (let j = 0; j < size; j++) {
        data[base + i * size + j] = -1 + (x + j) * step;
        data[base + plane + i * size + j] = yValue;
      }
    }
  });
  return Tensor.from(data, [offsets.length, 2, size, size]);
}

export interface GeneratorOutput {
  /** Normal-region map in [0, 1] (1 = normal), [N, 1, H, W]. */
  map: Tensor;
  /** Reconstructed image [N, C, H, W], or null without the reconstruction decoder. */
  reconstruction: Tensor | null;
}

/**
 * Channels-last (NHWC) activations let oneDNN run convolutions and their gradients without layout reorders:
 * measured 3x faster training steps on CPU than NCHW (npm run bench:engine -- --channels-first to compare).
 */
const CHANNELS_LAST_DEFAULT = true;

export class AnoSegGenerator extends Module {
  channelsLast = CHANNELS_LAST_DEFAULT;
  readonly encoder: ResNet18;
  readonly mapDecoder: Decoder;
  readonly reconstructionDecoder: Decoder | null;

  constructor(readonly arch: AnoSegArchitecture) {
    super();
    validateArchitecture(arch);
    const inChannels = arch.channels + (arch.coordChannels ? 2 : 0);
    this.encoder = this.registerModule('encoder', new ResNet18({ inChannels, width: arch.width }));
    // skips at strides 16, 8, 4, 2, 1: layer3, layer2, layer1, the stem, the input
    const [stem, l1, l2, l3] = [this.encoder.channels[0], ...this.encoder.channels];
    const skipChannels = arch.skips ? [l3, l2, l1, stem, inChannels] : [];
    this.mapDecoder = this.registerModule('map_decoder', new Decoder(this.encoder.outChannels, 1, arch, skipChannels));
    this.reconstructionDecoder = arch.reconstruction
      ? this.registerModule('reconstruction_decoder', new Decoder(this.encoder.outChannels, arch.channels, arch))
      : null;
  }

  /** `coords`: the coordinate channels of crops (cropCoordinates); the whole-image ramps when absent. */
  forward(x: Tensor, coords?: Tensor): GeneratorOutput {
    const withCoords = this.arch.coordChannels ? withCoordinates(x, coords) : x;
    const input = this.channelsLast ? withCoords.contiguous('channels_last') : withCoords;
    if (!this.arch.skips) {
      const z = this.encoder.forward(input);
      return { map: this.mapDecoder.forward(z), reconstruction: this.reconstructionDecoder?.forward(z) ?? null };
    }
    const [stem, l1, l2, l3, z] = this.encoder.forwardStages(input);
    return {
      map: this.mapDecoder.forward(z, [l3, l2, l1, stem, input]),
      reconstruction: this.reconstructionDecoder?.forward(z) ?? null,
    };
  }
}

/** x / max(‖x‖, 1e-12) (PyTorch's F.normalize). */
function normalize(x: Tensor): Tensor {
  return x.div(x.square().sum().sqrt().clamp(1e-12));
}

/**
 * Conv2d with spectral normalisation (Miyato et al. 2018; a stabiliser switch, not in the paper): the weight, read
 * as a matrix W [out, in·kh·kw], is divided by an estimate σ = uᵀWv of its largest singular value. Every forward in
 * training mode refines the estimate by one power-iteration step (v = Wᵀu/‖Wᵀu‖, u = Wv/‖Wv‖), as PyTorch's
 * torch.nn.utils.spectral_norm does; in eval mode u stays. u is the buffer `weight_u` (saved in checkpoints, so a
 * resumed run continues the iteration); `weight` is the unnormalised, trained weight. σ carries gradient to W,
 * u and v do not.
 */
export class SpectralNormConv2d extends Conv2d {
  readonly u: Tensor;

  constructor(inChannels: number, outChannels: number, kernel: number, options: ConvOptions = {}) {
    super(inChannels, outChannels, kernel, options);
    this.u = this.registerBuffer(
      'weight_u',
      noGrad(() => normalize(Tensor.randn([outChannels]))),
    );
  }

  /** The weight divided by its spectral-norm estimate (one power-iteration step first in training mode). */
  normalizedWeight(): Tensor {
    const w = this.weight;
    const matrix = w.view([w.shape[0], -1]);
    const [u, v] = noGrad(() => {
      const m = matrix.detach();
      const v = normalize(m.transpose(0, 1).matmul(this.u));
      if (!this.training) return [this.u.clone(), v];
      this.u.copy_(normalize(m.matmul(v)));
      // a copy: the next forward updates the buffer in place, and autograd keeps u for this forward's backward
      return [this.u.clone(), v];
    });
    return w.div(u.matmul(matrix.matmul(v)));
  }

  /** The current estimate uᵀWv of the weight's largest singular value (no update). */
  sigma(): number {
    return noGrad(() => {
      const m = this.weight.view([this.weight.shape[0], -1]);
      const v = normalize(m.transpose(0, 1).matmul(this.u));
      return this.u.matmul(m.matmul(v)).item();
    });
  }

  override forward(x: Tensor): Tensor {
    return F.conv2d(x, this.normalizedWeight(), this.bias, this.options);
  }
}

export interface DiscriminatorOptions {
  /** Spectral normalisation in every convolution (default off; Table 6 has none). */
  spectralNorm?: boolean;
}

export interface DiscriminatorOutput {
  /** Real/fake logits [N] (the sigmoid of Table 6 is folded into the loss: BCE-with-logits, same value). */
  logits: Tensor;
  /** Output of the second-to-last layer (feature matching, Appendix A). */
  features: Tensor;
}

/**
 * Discriminator of Table 6: 4x4 stride-2 convs with widths 64, 128, 256, 512, 512, 512, 128 (BN from the
 * second layer on, LeakyReLU 0.2), as many as the resolution allows, then a 4x4 stride-2 conv to one logit.
 */
export class Discriminator extends Module {
  channelsLast = CHANNELS_LAST_DEFAULT;
  readonly body: Sequential;
  readonly head: Conv2d;

  constructor(inChannels: number, resolution: number, width: number, options: DiscriminatorOptions = {}) {
    super();
    const spec = [64, 128, 256, 512, 512, 512, 128];
    const nLayers = Math.min(spec.length, Math.round(Math.log2(resolution)) - 1);
    const conv = (cin: number, cout: number): Conv2d =>
      options.spectralNorm
        ? new SpectralNormConv2d(cin, cout, 4, { stride: 2, padding: 1 })
        : new Conv2d(cin, cout, 4, { stride: 2, padding: 1 });
    const layers: Layer[] = [];
    let prev = inChannels;
    spec.slice(0, nLayers).forEach((c, i) => {
      const ch = scaled(c, width);
      layers.push(conv(prev, ch));
      if (i > 0) layers.push(new BatchNorm2d(ch));
      layers.push(new LeakyReLU(0.2, true));
      prev = ch;
    });
    this.body = this.registerModule('body', new Sequential(...layers));
    this.head = this.registerModule('head', conv(prev, 1));
  }

  forward(x: Tensor): DiscriminatorOutput {
    const features = this.body.forward(this.channelsLast ? x.contiguous('channels_last') : x);
    // Above 256 px the body leaves more than 2x2; average the logit map to one score per image.
    const logits = this.head.forward(features).mean([1, 2, 3]);
    return { logits, features };
  }
}

/** A discriminator for AnoSeg's (image, map) pairs at the training input size (the crop size when cropping). */
export function anoSegDiscriminator(
  arch: AnoSegArchitecture,
  trainResolution = arch.resolution,
  options: DiscriminatorOptions = {},
): Discriminator {
  return new Discriminator(arch.channels + 1, trainResolution, arch.width, options);
}
