/**
 * Inference forms of trained networks, built once at load: every BatchNorm (eval mode: a per-channel affine map) is
 * folded into the convolution before it, so a block is one convolution with a bias and an in-place ReLU; every 4x4
 * stride-2 transposed convolution becomes ONE regular 2x2 convolution whose output channels hold the four sub-pixel
 * phases (kernels gathered at load), plus one strided copy that interleaves the phases; convolutions call oneDNN
 * directly (libtorch's own dispatch sends batch-1 3x3 convolutions to its slow im2col kernel), on channels-last
 * activations; no autograd graph is recorded. Outputs equal the networks' eval-mode outputs up to float rounding.
 * Used by AnoSeg's folded generator (src/methods/anoseg/inference.ts) and the feature backbones (FusedResNet).
 */
import { ScriptObject, Tensor, keep, noGrad, op, tidy } from '../engine/index.js';
import { BatchNorm2d, Conv2d, ConvTranspose2d, MaxPool2d, ReLU, Upsample } from './layers.js';
import { Sequential, type Layer } from './module.js';
import type { BasicBlock, ResNet18 } from './resnet.js';

type Pair = [number, number];

function pairOf(v: number | readonly [number, number] | undefined, fallback: number): Pair {
  if (v === undefined) return [fallback, fallback];
  return typeof v === 'number' ? [v, v] : [v[0], v[1]];
}

/** Per-output-channel scale and shift of an eval-mode BatchNorm: y = x * scale + shift. */
function batchNormAffine(bn: BatchNorm2d): { scale: Tensor; shift: Tensor } {
  return tidy(() => {
    const scale = bn.weight.mul(bn.runningVar.add(bn.eps).rsqrt());
    const shift = bn.bias.sub(bn.runningMean.mul(scale));
    return { scale, shift };
  });
}

/** How convolutions run; chosen by measurement (bench/predict.ts --conv). */
export type ConvKernel = 'prepacked' | 'mkldnn';
export const inferenceSettings: { conv: ConvKernel } = { conv: 'prepacked' };

/**
 * A convolution (BatchNorm folded in) followed by an optional ReLU. With the 'prepacked' kernel the weights are
 * reordered once into oneDNN's blocked layout (at the first call, which tells the input size) and the ReLU runs
 * inside the convolution; otherwise every call reorders them and the ReLU is a second pass. Owns its tensors.
 */
export class FusedConv {
  private packed: ScriptObject | null = null;

  constructor(
    readonly weight: Tensor,
    readonly bias: Tensor | null,
    private readonly stride: Pair,
    private readonly padding: Pair,
    readonly relu: boolean,
  ) {
    keep(weight);
    if (bias) keep(bias);
  }

  static fold(conv: Conv2d, bn: BatchNorm2d | null, relu: boolean): FusedConv {
    if ((conv.options.groups ?? 1) !== 1 || pairOf(conv.options.dilation, 1).some((d) => d !== 1)) {
      throw new Error('FusedConv: grouped or dilated convolutions are not used by AnoSeg');
    }
    const stride = pairOf(conv.options.stride, 1);
    const padding = pairOf(conv.options.padding, 0);
    const { weight, bias } = noGrad(() =>
      tidy(() => {
        if (!bn) return { weight: conv.weight.detach().clone(), bias: conv.bias?.detach().clone() ?? null };
        const { scale, shift } = batchNormAffine(bn);
        const w = conv.weight.mul(scale.view([-1, 1, 1, 1]));
        const b = conv.bias ? conv.bias.mul(scale).add(shift) : shift;
        return { weight: w, bias: b };
      }),
    );
    return new FusedConv(weight, bias, stride, padding, relu);
  }

  forward(x: Tensor): Tensor {
    if (inferenceSettings.conv === 'prepacked') {
      this.packed ??= op(
        'mkldnn_prepacked::conv2d_prepack',
        this.weight,
        this.bias,
        this.stride,
        this.padding,
        [1, 1],
        1,
        x.shape,
        this.relu ? 'relu' : 'none',
      ) as ScriptObject;
      return op('mkldnn_prepacked::conv2d_run', x, this.packed) as Tensor;
    }
    const y = op('aten::mkldnn_convolution', x, this.weight, this.bias, this.padding, this.stride, [1, 1], 1) as Tensor;
    return this.relu ? y.relu_() : y;
  }

  dispose(): void {
    this.weight.dispose();
    this.bias?.dispose();
    this.packed?.dispose();
  }
}

/**
 * A 4x4 stride-2 padding-1 transposed convolution (BatchNorm folded in) + ReLU as one 2x2 convolution over the
 * input padded by 1, whose 4 * Cout output channels are the output phases (row parity a, column parity b): phase
 * (a, b) at (m, q) is that convolution's output at (m + a, q + b). One strided copy interleaves them.
 * Per axis, phase 0 uses kernel taps [3, 1] and phase 1 taps [2, 0] (o = 2i + k - 1).
 */
class FusedUpsample {
  private constructor(
    private readonly phases: FusedConv,
    private readonly outChannels: number,
  ) {}

  static applies(t: ConvTranspose2d): boolean {
    const [kh, kw] = [t.weight.shape[2], t.weight.shape[3]];
    const stride = pairOf(t.options.stride, 1);
    const padding = pairOf(t.options.padding, 0);
    const outPad = pairOf(t.options.outputPadding, 0);
    return (
      kh === 4 && kw === 4 && stride.every((s) => s === 2) && padding.every((p) => p === 1) && !outPad.some(Boolean)
    );
  }

  /** The ReLU runs inside the phase convolution: it commutes with the interleaving copy. */
  static fold(t: ConvTranspose2d, bn: BatchNorm2d | null): FusedUpsample {
    const [cin, cout] = t.weight.shape;
    const { weight, bias } = noGrad(() =>
      tidy(() => {
        let w = t.weight; // [Cin, Cout, 4, 4]
        let b = t.bias ?? Tensor.zeros([cout]);
        if (bn) {
          const { scale, shift } = batchNormAffine(bn);
          w = w.mul(scale.view([1, -1, 1, 1]));
          b = b.mul(scale).add(shift);
        }
        const taps = Tensor.from(Int32Array.from([3, 1, 2, 0]), [4], { dtype: 'int64' });
        // [Cin, Cout, 4, 4] -> [Cin, Cout, a, t, b, u] -> [a, b, Cout, Cin, t, u]
        const k = w
          .indexSelect(2, taps)
          .indexSelect(3, taps)
          .reshape([cin, cout, 2, 2, 2, 2])
          .permute([2, 4, 1, 0, 3, 5])
          .reshape([4 * cout, cin, 2, 2]);
        return { weight: k.contiguous(), bias: b.repeat([4]) };
      }),
    );
    return new FusedUpsample(new FusedConv(weight, bias, [1, 1], [1, 1], true), cout);
  }

  forward(x: Tensor): Tensor {
    return tidy(() => {
      const [n, , h, w] = x.shape;
      const c = this.outChannels;
      const y = this.phases.forward(x).contiguous('channels_last'); // [n, 4c, h+1, w+1]
      const rowStride = (w + 1) * 4 * c;
      const colStride = 4 * c;
      // dims [n, m, a, q, b, c] of the output in memory order, read from phase (a, b) at (m + a, q + b)
      const interleaved = op(
        'aten::as_strided',
        y,
        [n, h, 2, w, 2, c],
        [(h + 1) * rowStride, rowStride, rowStride + 2 * c, colStride, colStride + c, 1],
        0,
      ) as Tensor;
      return interleaved
        .contiguous()
        .view([n, 2 * h, 2 * w, c])
        .permute([0, 3, 1, 2]);
    });
  }

  dispose(): void {
    this.phases.dispose();
  }
}

/** A transposed convolution that is not 4x4 / stride 2 / padding 1: libtorch's kernel with BatchNorm folded in. */
class FusedTransposed {
  private constructor(
    private readonly layer: ConvTranspose2d,
    private readonly weight: Tensor,
    private readonly bias: Tensor,
  ) {
    keep(weight);
    keep(bias);
  }

  static fold(t: ConvTranspose2d, bn: BatchNorm2d | null): FusedTransposed {
    const cout = t.weight.shape[1];
    const { weight, bias } = noGrad(() =>
      tidy(() => {
        const b = t.bias ?? Tensor.zeros([cout]);
        if (!bn) return { weight: t.weight.clone(), bias: b.clone() };
        const { scale, shift } = batchNormAffine(bn);
        return { weight: t.weight.mul(scale.view([1, -1, 1, 1])), bias: b.mul(scale).add(shift) };
      }),
    );
    return new FusedTransposed(t, weight, bias);
  }

  forward(x: Tensor): Tensor {
    const o = this.layer.options;
    return op(
      'aten::conv_transpose2d.input',
      x,
      this.weight,
      this.bias,
      pairOf(o.stride, 1),
      pairOf(o.padding, 0),
      pairOf(o.outputPadding, 0),
      1,
      [1, 1],
    ) as Tensor;
  }

  dispose(): void {
    this.weight.dispose();
    this.bias.dispose();
  }
}

export interface Step {
  forward(x: Tensor): Tensor;
  dispose(): void;
}

/** Nearest x2 upsampling (the 'resize' decoder variant), then the fused convolution. */
class ResizeThen implements Step {
  constructor(private readonly conv: FusedConv) {}

  forward(x: Tensor): Tensor {
    const [, , h, w] = x.shape;
    const up = op('aten::upsample_nearest2d', x, [2 * h, 2 * w], null, null) as Tensor;
    const y = this.conv.forward(up);
    up.dispose();
    return y;
  }

  dispose(): void {
    this.conv.dispose();
  }
}

/** One Sequential block of the decoder: (conv | transposed conv | resize + conv) [+ BatchNorm] [+ ReLU]. */
export function foldBlock(block: Layer): Step {
  const layers = block instanceof Sequential ? block.layers : [block];
  const [first, ...rest] = layers;
  const bn = rest.find((l): l is BatchNorm2d => l instanceof BatchNorm2d) ?? null;
  const relu = rest.some((l) => l instanceof ReLU);
  const known = rest.every((l) => l instanceof BatchNorm2d || l instanceof ReLU);
  if (!known) throw new Error('foldBlock: unexpected layer after the convolution');
  if (first instanceof Conv2d) return FusedConv.fold(first, bn, relu);
  if (first instanceof ConvTranspose2d) {
    if (!relu) throw new Error('foldBlock: a transposed convolution without ReLU is not supported');
    return FusedUpsample.applies(first) ? FusedUpsample.fold(first, bn) : withRelu(FusedTransposed.fold(first, bn));
  }
  if (first instanceof Sequential && first.layers[0] instanceof Upsample && first.layers[1] instanceof Conv2d) {
    return new ResizeThen(FusedConv.fold(first.layers[1], bn, relu));
  }
  throw new Error(`foldBlock: cannot fold a block starting with ${first.constructor.name}`);
}

function withRelu(step: Step): Step {
  return { forward: (x) => step.forward(x).relu_(), dispose: () => step.dispose() };
}

class FusedBasicBlock {
  constructor(
    private readonly conv1: FusedConv,
    private readonly conv2: FusedConv,
    private readonly downsample: FusedConv | null,
  ) {}

  static fold(b: BasicBlock): FusedBasicBlock {
    const ds = b.downsample
      ? FusedConv.fold(b.downsample.layers[0] as Conv2d, b.downsample.layers[1] as BatchNorm2d, false)
      : null;
    return new FusedBasicBlock(FusedConv.fold(b.conv1, b.bn1, true), FusedConv.fold(b.conv2, b.bn2, false), ds);
  }

  forward(x: Tensor): Tensor {
    const y = this.conv2.forward(this.conv1.forward(x));
    return y.add_(this.downsample ? this.downsample.forward(x) : x).relu_();
  }

  dispose(): void {
    this.conv1.dispose();
    this.conv2.dispose();
    this.downsample?.dispose();
  }
}

/** ResNet18 (stem + the first `stages` layers) with BatchNorm folded; also PaDiM's backbone (stem + layer1..3). */
export class FusedResNet {
  private constructor(
    private readonly stem: FusedConv,
    private readonly pool: MaxPool2d,
    private readonly blocks: FusedBasicBlock[][],
  ) {}

  static fold(e: ResNet18, stages = e.layers.length): FusedResNet {
    const [conv, bn, relu, pool] = e.stem.layers;
    if (!(conv instanceof Conv2d && bn instanceof BatchNorm2d && relu instanceof ReLU && pool instanceof MaxPool2d)) {
      throw new Error('FusedResNet: unexpected stem layout');
    }
    const blocks = e.layers
      .slice(0, stages)
      .map((stage) => stage.layers.map((b) => FusedBasicBlock.fold(b as BasicBlock)));
    return new FusedResNet(FusedConv.fold(conv, bn, true), pool, blocks);
  }

  /** The stem's activation (stride 2), then the folded layers (strides 4, 8, ...), as ResNet18.forwardStages. */
  forwardStages(x: Tensor): Tensor[] {
    let y = this.stem.forward(x);
    const stages = [y];
    y = this.pool.forward(y);
    for (const stage of this.blocks) {
      for (const b of stage) y = b.forward(y);
      stages.push(y);
    }
    return stages;
  }

  dispose(): void {
    this.stem.dispose();
    for (const stage of this.blocks) for (const b of stage) b.dispose();
  }
}
