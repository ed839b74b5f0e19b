import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  F,
  Tensor,
  getNumThreads,
  liveTensors,
  manualSeed,
  noGrad,
  setNumThreads,
  tidy,
  type DType,
} from '../engine/index.js';
import { Module, Sequential } from './module.js';
import { BatchNorm2d, Conv2d, ConvTranspose2d, LeakyReLU, ReLU, Tanh } from './layers.js';
import { BasicBlock, ResNet18 } from './resnet.js';
import { Adam, SGD, type Optimizer } from './optim.js';
import {
  SafetensorsError,
  decodeSafetensors,
  encodeSafetensors,
  loadSafetensors,
  readSafetensorsMetadata,
  saveSafetensors,
} from './safetensors.js';
import * as init from './init.js';

let threadsBefore = 1;
beforeAll(() => {
  threadsBefore = getNumThreads();
  setNumThreads(1); // the test runner runs files in parallel on few cores
});
afterAll(() => setNumThreads(threadsBefore));

function f32(shape: number[], data: number[]): Tensor {
  return Tensor.from(Float32Array.from(data), shape);
}

/** Elements of a typed array (of any element type, bigint included) as a plain array. */
function list(a: ArrayLike<unknown> | BigInt64Array): unknown[] {
  return Array.from(a as ArrayLike<unknown>);
}

function values(t: Tensor): number[] {
  return Array.from(t.toArray() as ArrayLike<number>, Number);
}

function expectClose(actual: ArrayLike<number>, expected: ArrayLike<number>, tol: number, what = ''): void {
  expect(actual.length, `${what} length`).toBe(expected.length);
  for (let i = 0; i < expected.length; i++) {
    if (!(Math.abs(actual[i] - expected[i]) <= tol)) {
      throw new Error(`${what} index ${i}: ${actual[i]} vs expected ${expected[i]} (tol ${tol})`);
    }
  }
}

function allModules(m: Module): Module[] {
  return [m, ...m.namedChildren().flatMap(([, c]) => allModules(c))];
}

// ---------------------------------------------------------------------------------------------------------

describe('layers against hand-computed cases', () => {
  it('Conv2d: parameter shapes, default init bounds, loadStateDict weights, padding 1', () => {
    manualSeed(1);
    const conv = new Conv2d(1, 2, 3, { padding: 1 });
    expect(conv.weight.shape).toEqual([2, 1, 3, 3]);
    expect(conv.bias!.shape).toEqual([2]);
    // PyTorch's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in = 1*3*3 for weight and bias.
    for (const v of [...values(conv.weight), ...values(conv.bias!)]) expect(Math.abs(v)).toBeLessThanOrEqual(1 / 3);
    expect(conv.namedParameters().map(([n]) => n)).toEqual(['weight', 'bias']);
    // channel 0: identity tap + 0.5; channel 1: 3x3 box sum (zero padding).
    const w = [0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1];
    conv.loadStateDict(
      new Map([
        ['weight', f32([2, 1, 3, 3], w)],
        ['bias', f32([2], [0.5, 0])],
      ]),
    );
    const x = f32([1, 1, 3, 3], [1, 2, 3, 4, 5, 6, 7, 8, 9]);
    const y = conv.forward(x);
    expect(y.shape).toEqual([1, 2, 3, 3]);
    expectClose(
      y.toFloat32Array(),
      [1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 7.5, 8.5, 9.5, 12, 21, 16, 27, 45, 33, 24, 39, 28],
      1e-5,
    );
    expect(conv.weight.requiresGrad).toBe(true);
  });

  it('Conv2d: no bias, groups, stride', () => {
    const conv = new Conv2d(4, 2, 1, { groups: 2, bias: false, stride: 2 });
    expect(conv.bias).toBeNull();
    expect(conv.namedParameters().map(([n]) => n)).toEqual(['weight']);
    expect(conv.weight.shape).toEqual([2, 2, 1, 1]);
    // out0 = x0 + 2 x1, out1 = 3 x2 + 4 x3 (groups: out0 sees channels 0-1, out1 channels 2-3)
    init.fill(conv.weight, f32([2, 2, 1, 1], [1, 2, 3, 4]));
    const x = f32([1, 4, 2, 2], [1, 1, 1, 1, 10, 0, 0, 0, 100, 0, 0, 0, 1000, 0, 0, 0]);
    const y = conv.forward(x);
    expect(y.shape).toEqual([1, 2, 1, 1]);
    expectClose(y.toFloat32Array(), [21, 4300], 1e-3);
    expect(() => new Conv2d(3, 2, 1, { groups: 2 })).toThrow(/divide by groups/);
  });

  it('ConvTranspose2d: weight [Cin, Cout, k, k], init bound from Cout*k*k, stride-2 stamps, both algorithms', () => {
    manualSeed(2);
    const ct = new ConvTranspose2d(1, 2, 2, { stride: 2 });
    expect(ct.weight.shape).toEqual([1, 2, 2, 2]);
    for (const v of values(ct.weight)) expect(Math.abs(v)).toBeLessThanOrEqual(1 / Math.sqrt(2 * 4));
    init.fill(ct.weight, f32([1, 2, 2, 2], [1, 2, 3, 4, 0, 0, 0, 1]));
    init.fill(ct.bias!, f32([2], [0.5, 0]));
    // Each input pixel v stamps v*w[c] into its own 2x2 output block.
    const x = f32([1, 1, 2, 2], [1, 2, 3, 4]);
    const expected = [
      [1.5, 2.5, 2.5, 4.5, 3.5, 4.5, 6.5, 8.5, 3.5, 6.5, 4.5, 8.5, 9.5, 12.5, 12.5, 16.5],
      [0, 0, 0, 0, 0, 1, 0, 2, 0, 0, 0, 0, 0, 3, 0, 4],
    ].flat();
    const y = ct.forward(x);
    expect(y.shape).toEqual([1, 2, 4, 4]);
    expectClose(y.toFloat32Array(), expected, 1e-5);
    const direct = new ConvTranspose2d(1, 2, 2, { stride: 2, algorithm: 'direct' });
    direct.loadStateDict(ct.stateDict());
    expectClose(direct.forward(x).toFloat32Array(), expected, 1e-5);
  });

  it('BatchNorm2d: training output, running statistics (momentum 0.1, unbiased variance), eval mode', () => {
    const bn = new BatchNorm2d(2);
    expect(bn.namedParameters().map(([n]) => n)).toEqual(['weight', 'bias']);
    expect(bn.namedBuffers().map(([n]) => n)).toEqual(['running_mean', 'running_var', 'num_batches_tracked']);
    expect(values(bn.runningMean)).toEqual([0, 0]);
    expect(values(bn.runningVar)).toEqual([1, 1]);
    // x [N=2, C=2, 1, 2]: channel 0 holds 1, 3, 5, 7 (mean 4, biased var 5, unbiased 20/3);
    // channel 1 holds 0, 0, 2, -2 (mean 0, biased var 2, unbiased 8/3).
    const x = f32([2, 2, 1, 2], [1, 3, 0, 0, 5, 7, 2, -2]);
    const y = bn.forward(x);
    const s0 = Math.sqrt(5 + 1e-5);
    const s1 = Math.sqrt(2 + 1e-5);
    expectClose(y.toFloat32Array(), [-3 / s0, -1 / s0, 0, 0, 1 / s0, 3 / s0, 2 / s1, -2 / s1], 1e-5);
    // running = (1 - momentum) * running + momentum * batch statistic, variance unbiased.
    let rm = [0.1 * 4, 0];
    let rv = [0.9 + (0.1 * 20) / 3, 0.9 + (0.1 * 8) / 3];
    expectClose(bn.runningMean.toFloat32Array(), rm, 1e-6);
    expectClose(bn.runningVar.toFloat32Array(), rv, 1e-6);
    expect(Number(bn.numBatchesTracked.item())).toBe(1);
    bn.forward(x);
    rm = [0.9 * rm[0] + 0.4, 0];
    rv = [0.9 * rv[0] + (0.1 * 20) / 3, 0.9 * rv[1] + (0.1 * 8) / 3];
    expectClose(bn.runningMean.toFloat32Array(), rm, 1e-6);
    expectClose(bn.runningVar.toFloat32Array(), rv, 1e-6);
    expect(bn.numBatchesTracked.item()).toBe(2);

    // Eval: (x - running_mean) / sqrt(running_var + eps) * weight + bias; no statistics change.
    init.fill(bn.weight, f32([2], [2, 0.5]));
    init.fill(bn.bias, f32([2], [1, -1]));
    bn.eval();
    const xe = f32([1, 2, 1, 2], [1, 2, 3, -4]);
    const ye = bn.forward(xe);
    const expected = [1, 2].map((v) => ((v - rm[0]) / Math.sqrt(rv[0] + 1e-5)) * 2 + 1);
    expected.push(...[3, -4].map((v) => ((v - rm[1]) / Math.sqrt(rv[1] + 1e-5)) * 0.5 - 1));
    expectClose(ye.toFloat32Array(), expected, 1e-5);
    expectClose(bn.runningMean.toFloat32Array(), rm, 1e-6);
    expectClose(bn.runningVar.toFloat32Array(), rv, 1e-6);
    expect(bn.numBatchesTracked.item()).toBe(2);
  });

  it('BatchNorm2d with another momentum; gradients flow to weight and bias', () => {
    const bn = new BatchNorm2d(1, 0.5);
    const x = f32([4, 1, 1, 1], [1, 2, 3, 4]);
    const y = bn.forward(x);
    expectClose(bn.runningMean.toFloat32Array(), [0.5 * 2.5], 1e-6);
    expectClose(bn.runningVar.toFloat32Array(), [0.5 + 0.5 * (5 / 3)], 1e-6);
    y.mul(f32([4, 1, 1, 1], [1, 0, 0, 0]))
      .sum()
      .backward();
    // d/d bias = sum of upstream = 1; d/d weight = normalised x at the first element = -1.5 / sqrt(1.25 + eps)
    expectClose(bn.bias.grad!.toFloat32Array(), [1], 1e-6);
    expectClose(bn.weight.grad!.toFloat32Array(), [-1.5 / Math.sqrt(1.25 + 1e-5)], 1e-5);
  });

  it('train/eval propagate through nested modules', () => {
    const net = new Sequential(new Conv2d(1, 2, 3), new BatchNorm2d(2), new Sequential(new ReLU(), new BatchNorm2d(2)));
    expect(allModules(net).every((m) => m.training)).toBe(true);
    expect(net.eval()).toBe(net);
    expect(allModules(net).map((m) => m.training)).toEqual(new Array(6).fill(false));
    net.train();
    expect(allModules(net).every((m) => m.training)).toBe(true);
    net.train(false);
    expect(allModules(net).some((m) => m.training)).toBe(false);
    const r = new ResNet18({ inChannels: 1, width: 0.125 });
    r.eval();
    expect(allModules(r).some((m) => m.training)).toBe(false);
    expect(allModules(r).filter((m) => m instanceof BatchNorm2d).length).toBe(1 + 4 * 4 + 3);
    r.dispose();
  });

  it('in-place ReLU / LeakyReLU after BatchNorm: same outputs and gradients as the out-of-place layers', () => {
    for (const [plain, inplace] of [
      [new ReLU(), new ReLU(true)],
      [new LeakyReLU(0.2), new LeakyReLU(0.2, true)],
    ] as const) {
      const run = (act: ReLU | LeakyReLU): [number[], number[], number[]] => {
        manualSeed(5);
        const net = new Sequential(new Conv2d(2, 3, 3), new BatchNorm2d(3), act);
        const x = Tensor.randn([2, 2, 6, 6], { requiresGrad: true });
        const y = tidy(() => {
          const out = net.forward(x);
          out.square().sum().backward();
          return out.detach();
        });
        const r: [number[], number[], number[]] = [
          Array.from(y.toArray() as Float32Array),
          Array.from(x.grad!.toArray() as Float32Array),
          Array.from(net.parameters()[0].grad!.toArray() as Float32Array),
        ];
        y.dispose();
        x.dispose();
        net.dispose();
        return r;
      };
      const [a, b] = [run(plain), run(inplace)];
      for (let k = 0; k < 3; k++) expect(b[k]).toEqual(a[k]);
    }
  });

  it('frozen: gradients reach the input but not the frozen parameters, which require grad again afterwards', () => {
    manualSeed(3);
    const net = new Sequential(new Conv2d(1, 2, 3), new BatchNorm2d(2));
    const x = Tensor.randn([2, 1, 5, 5], { requiresGrad: true });
    tidy(() =>
      net
        .frozen(() => net.forward(x))
        .square()
        .sum()
        .backward(),
    );
    const inputGrad = x.grad!;
    expect(inputGrad.abs().sum().item()).toBeGreaterThan(0);
    expect(net.parameters().every((p) => p.grad === null && p.requiresGrad)).toBe(true);
    // Same input gradient as an unfrozen pass (which also fills the parameters' gradients).
    x.grad = null;
    tidy(() => net.forward(x).square().sum().backward());
    expect(net.parameters().every((p) => p.grad !== null)).toBe(true);
    expect(x.grad!.sub(inputGrad).abs().amax().item()).toBeLessThan(1e-6);
    // An exception inside fn restores requiresGrad too.
    expect(() =>
      net.frozen(() => {
        throw new Error('boom');
      }),
    ).toThrow('boom');
    expect(net.parameters().every((p) => p.requiresGrad)).toBe(true);
    inputGrad.dispose();
    x.dispose();
    net.dispose();
  });
});

// ---------------------------------------------------------------------------------------------------------

describe('ResNet18', () => {
  it('parameter and buffer names, shapes and count', () => {
    manualSeed(3);
    const net = new ResNet18({ inChannels: 3 });
    const names = net.namedParameters().map(([n]) => n);
    // The code names the stem 'stem.0' (conv) and 'stem.1' (bn); the stages follow torchvision
    // ('layer1.0.conv1.weight', 'layer2.0.downsample.0.weight', ...).
    expect(names.slice(0, 3)).toEqual(['stem.0.weight', 'stem.1.weight', 'stem.1.bias']);
    expect(names.slice(3, 9)).toEqual([
      'layer1.0.conv1.weight',
      'layer1.0.bn1.weight',
      'layer1.0.bn1.bias',
      'layer1.0.conv2.weight',
      'layer1.0.bn2.weight',
      'layer1.0.bn2.bias',
    ]);
    expect(names).toContain('layer2.0.downsample.0.weight');
    expect(names).toContain('layer2.0.downsample.1.bias');
    expect(names).toContain('layer4.1.bn2.bias');
    expect(names.filter((n) => n.includes('downsample')).map((n) => n.split('.')[0])).toEqual([
      'layer2',
      'layer2',
      'layer2',
      'layer3',
      'layer3',
      'layer3',
      'layer4',
      'layer4',
      'layer4',
    ]);
    expect(names.every((n) => !n.endsWith('conv1.bias') && !n.endsWith('conv2.bias'))).toBe(true); // bias-free convs
    const state = net.stateDict();
    expect(state.get('stem.0.weight')!.shape).toEqual([64, 3, 7, 7]);
    expect(state.get('layer1.0.conv1.weight')!.shape).toEqual([64, 64, 3, 3]);
    expect(state.get('layer3.0.downsample.0.weight')!.shape).toEqual([256, 128, 1, 1]);
    expect(state.get('layer4.1.conv2.weight')!.shape).toEqual([512, 512, 3, 3]);
    expect(state.get('layer2.1.bn1.running_var')!.shape).toEqual([128]);
    expect(state.get('stem.1.num_batches_tracked')!.dtype).toBe('int64');
    expect(net.namedBuffers().length).toBe(20 * 3);
    // torchvision's resnet18 has 11,689,512 parameters, of which the fc head holds 512*1000 + 1000.
    expect(net.numParameters()).toBe(11_689_512 - 513_000);
    // He (fan_out) init of conv weights: std sqrt(2 / (64 * 3 * 3)) for layer1 convs.
    const w = values(state.get('layer1.0.conv1.weight')!);
    const std = Math.sqrt(w.reduce((s, v) => s + v * v, 0) / w.length);
    expect(std).toBeGreaterThan(0.95 * Math.sqrt(2 / 576));
    expect(std).toBeLessThan(1.05 * Math.sqrt(2 / 576));
    expect(values(state.get('layer1.0.bn1.weight')!).every((v) => v === 1)).toBe(true);
    net.dispose();
  });

  it('feature shapes at strides 4, 8, 16, 32 (even and odd inputs) and width scaling', () => {
    manualSeed(4);
    const net = new ResNet18({ inChannels: 1, width: 0.125 });
    expect(net.channels).toEqual([8, 16, 32, 64]);
    expect(net.outChannels).toBe(64);
    tidy(() => {
      const feats = net.forwardFeatures(Tensor.randn([2, 1, 64, 64]));
      expect(feats.map((f) => f.shape)).toEqual([
        [2, 8, 16, 16],
        [2, 16, 8, 8],
        [2, 32, 4, 4],
        [2, 64, 2, 2],
      ]);
      // 65 -> conv 33 -> pool 17 -> 17, 9, 5, 3
      const odd = net.forwardFeatures(Tensor.randn([1, 1, 65, 40]));
      expect(odd.map((f) => f.shape.slice(2))).toEqual([
        [17, 10],
        [9, 5],
        [5, 3],
        [3, 2],
      ]);
      expect(net.forward(Tensor.randn([2, 1, 32, 32])).shape).toEqual([2, 64, 1, 1]);
      // After the final ReLU every feature is non-negative.
      expect(values(feats[3]).every((v) => v >= 0)).toBe(true);
    });
    net.dispose();
  });

  it('BasicBlock: identity shortcut adds the input, projection when the shape changes', () => {
    const same = new BasicBlock(4, 4);
    expect(same.downsample).toBeNull();
    // Zero the second BN's scale: the residual branch vanishes and the block computes relu(x).
    init.fill(same.bn2.weight, Tensor.zeros([4]));
    const x = f32(
      [1, 4, 2, 2],
      Array.from({ length: 16 }, (_, i) => i - 8),
    );
    expectClose(
      same.forward(x).toFloat32Array(),
      values(x).map((v) => Math.max(v, 0)),
      1e-6,
    );
    const down = new BasicBlock(4, 8, 2);
    expect(down.downsample).not.toBeNull();
    expect(down.forward(Tensor.randn([1, 4, 4, 4])).shape).toEqual([1, 8, 2, 2]);
  });
});

// ---------------------------------------------------------------------------------------------------------

describe('Module.loadStateDict', () => {
  const make = (): Sequential => new Sequential(new Conv2d(1, 2, 3), new BatchNorm2d(2));
  const snapshot = (m: Module): Record<string, number[]> =>
    Object.fromEntries([...m.stateDict()].map(([n, t]) => [n, values(t)]));

  it('state names and a full round trip (through safetensors) reproduce the outputs', () => {
    manualSeed(5);
    const a = make();
    expect([...a.stateDict().keys()]).toEqual([
      '0.weight',
      '0.bias',
      '1.weight',
      '1.bias',
      '1.running_mean',
      '1.running_var',
      '1.num_batches_tracked',
    ]);
    a.forward(Tensor.randn([2, 1, 4, 4])); // moves the running statistics away from their defaults
    const b = make();
    const params = b.parameters();
    b.loadStateDict(decodeSafetensors(encodeSafetensors(a.stateDict())).tensors);
    expect(snapshot(b)).toEqual(snapshot(a));
    b.parameters().forEach((p, i) => expect(p).toBe(params[i])); // same tensors, updated in place
    expect(b.parameters().every((p) => p.requiresGrad && p.isLeaf)).toBe(true);
    a.eval();
    b.eval();
    const x = Tensor.randn([1, 1, 5, 5]);
    expect(values(b.forward(x))).toEqual(values(a.forward(x)));
  });

  it('copies values (no aliasing) and converts dtypes', () => {
    const m = make();
    const state = new Map([...m.stateDict()].map(([n, t]) => [n, t.to(t.dtype === 'int64' ? 'int64' : 'float64')]));
    noGrad(() => state.get('0.bias')!.fill_(0.25));
    m.loadStateDict(state);
    expect(values(m.stateDict().get('0.bias')!)).toEqual([0.25, 0.25]);
    expect(m.stateDict().get('0.bias')!.dtype).toBe('float32');
    noGrad(() => state.get('0.bias')!.fill_(7));
    expect(values(m.stateDict().get('0.bias')!)).toEqual([0.25, 0.25]);
  });

  it('rejects missing, unexpected and wrongly shaped entries, naming them, and changes nothing', () => {
    manualSeed(6);
    const m = make();
    const before = snapshot(m);
    const changed = (): Map<string, Tensor> =>
      new Map([...m.stateDict()].map(([n, t]) => [n, noGrad(() => (t.dtype === 'int64' ? t.add(5) : t.add(1)))]));

    const missing = changed();
    missing.delete('1.bias');
    expect(() => m.loadStateDict(missing)).toThrow(/state does not fit the model: missing entry '1\.bias'/);

    const unexpected = changed();
    unexpected.set('2.weight', Tensor.zeros([1]));
    expect(() => m.loadStateDict(unexpected)).toThrow(/unexpected entry '2\.weight'/);

    const shape = changed();
    shape.set('0.weight', Tensor.zeros([2, 1, 2, 2]));
    expect(() => m.loadStateDict(shape)).toThrow(/'0\.weight' has shape \[2,1,2,2\] but the model expects \[2,1,3,3\]/);
    expect(() => m.loadStateDict(shape, false)).toThrow(/'0\.weight' has shape/); // shapes are checked even when not strict

    expect(snapshot(m)).toEqual(before); // every failed load left the model untouched

    // Many problems: the first 8 are listed, the rest counted.
    const many = new Map<string, Tensor>();
    for (let i = 0; i < 12; i++) many.set(`extra${i}`, Tensor.zeros([1]));
    expect(() => m.loadStateDict(many)).toThrow(/\(\+11 more\)$/);
    expect(snapshot(m)).toEqual(before);
  });

  it('non-strict loading takes a subset and ignores unknown names', () => {
    const m = make();
    const before = snapshot(m);
    m.loadStateDict(
      new Map([
        ['0.bias', f32([2], [3, 4])],
        ['head.weight', Tensor.zeros([5])],
      ]),
      false,
    );
    const after = snapshot(m);
    expect(after['0.bias']).toEqual([3, 4]);
    expect(after['0.weight']).toEqual(before['0.weight']);
    expect(after['1.running_var']).toEqual(before['1.running_var']);
  });
});

// ---------------------------------------------------------------------------------------------------------
// Optimisers. Reference trajectories: loss = sum(a * p^2) with a = [1, 3] (gradient 2 a p) from p = [1, -2],
// three steps, computed by torch 1.13 in float64:
//   p = torch.tensor([1., -2.], dtype=torch.float64, requires_grad=True); a = torch.tensor([1., 3.], ...)
//   for _ in range(3): opt.zero_grad(); (a * p * p).sum().backward(); opt.step(); print(p.tolist())
// and, independently, by the update rules of PyTorch's documentation written out in plain JS below.

const A = [1, 3];
const P0 = [1, -2];

function runOptimizer(make: (params: Tensor[]) => Optimizer, dtype: DType, steps = 3): number[][] {
  const p = Tensor.from(Float64Array.from(P0), [2], { dtype, requiresGrad: true });
  const a = Tensor.from(Float64Array.from(A), [2], { dtype });
  const opt = make([p]);
  const out: number[][] = [];
  for (let i = 0; i < steps; i++) {
    tidy(() => {
      opt.zeroGrad();
      a.mul(p).mul(p).sum().backward();
      opt.step();
    });
    out.push(values(p));
  }
  opt.dispose();
  return out;
}

function adamReference(lr: number, [b1, b2]: [number, number], eps: number, wd: number, steps = 3): number[][] {
  const p = [...P0];
  const m = [0, 0];
  const v = [0, 0];
  const out: number[][] = [];
  for (let t = 1; t <= steps; t++) {
    for (let i = 0; i < 2; i++) {
      const g = 2 * A[i] * p[i] + wd * p[i];
      m[i] = b1 * m[i] + (1 - b1) * g;
      v[i] = b2 * v[i] + (1 - b2) * g * g;
      const mHat = m[i] / (1 - b1 ** t);
      const vHat = v[i] / (1 - b2 ** t);
      p[i] -= (lr * mHat) / (Math.sqrt(vHat) + eps);
    }
    out.push([...p]);
  }
  return out;
}

function sgdReference(lr: number, momentum: number, nesterov: boolean, wd: number, steps = 3): number[][] {
  const p = [...P0];
  const buf: (number | null)[] = [null, null];
  const out: number[][] = [];
  for (let t = 1; t <= steps; t++) {
    for (let i = 0; i < 2; i++) {
      let g = 2 * A[i] * p[i] + wd * p[i];
      if (momentum) {
        const b = buf[i] === null ? g : momentum * buf[i]! + g;
        buf[i] = b;
        g = nesterov ? g + momentum * b : b;
      }
      p[i] -= lr * g;
    }
    out.push([...p]);
  }
  return out;
}

describe('optimisers', () => {
  it('Adam matches torch.optim.Adam and the written-out update rule (float32 parameters)', () => {
    const torchAdam = [
      [0.9000000005, -1.9000000000833333],
      [0.8004122286917927, -1.8001664857787731],
      [0.7015862729460302, -1.7006233915360325],
    ];
    const torchAdamWd = [
      [0.900000047619025, -1.9000000081967205],
      [0.8006961061725127, -1.8003048420849241],
      [0.7026563497220542, -1.7011364622081628],
    ];
    const ref = adamReference(0.1, [0.9, 0.999], 1e-8, 0);
    const refWd = adamReference(0.1, [0.8, 0.99], 1e-6, 0.1);
    ref.forEach((r, i) => expectClose(r, torchAdam[i], 1e-12, `reference step ${i}`));
    refWd.forEach((r, i) => expectClose(r, torchAdamWd[i], 1e-12, `reference wd step ${i}`));

    const got = runOptimizer((ps) => new Adam(ps, { lr: 0.1 }), 'float32');
    got.forEach((r, i) => expectClose(r, torchAdam[i], 2e-6, `Adam step ${i}`));
    const gotWd = runOptimizer(
      (ps) => new Adam(ps, { lr: 0.1, betas: [0.8, 0.99], eps: 1e-6, weightDecay: 0.1 }),
      'float32',
    );
    gotWd.forEach((r, i) => expectClose(r, torchAdamWd[i], 2e-6, `Adam wd step ${i}`));
  });

  // Adam's state follows each parameter's dtype and device (zerosLike).
  it('Adam steps float64 parameters', () => {
    const got = runOptimizer((ps) => new Adam(ps, { lr: 0.1 }), 'float64');
    got.forEach((r, i) => expectClose(r, adamReference(0.1, [0.9, 0.999], 1e-8, 0)[i], 1e-12, `step ${i}`));
  });

  it('SGD (plain, momentum, nesterov + weight decay) matches torch.optim.SGD exactly (float64)', () => {
    const torchRuns: [
      string,
      { lr: number; momentum?: number; nesterov?: boolean; weightDecay?: number },
      number[][],
    ][] = [
      [
        'plain',
        { lr: 0.1 },
        [
          [0.8, -0.7999999999999999],
          [0.64, -0.31999999999999995],
          [0.512, -0.12799999999999997],
        ],
      ],
      [
        'momentum',
        { lr: 0.1, momentum: 0.9 },
        [
          [0.8, -0.7999999999999999],
          [0.45999999999999996, 0.7600000000000003],
          [0.0619999999999999, 1.7080000000000002],
        ],
      ],
      [
        'nesterov + weight decay',
        { lr: 0.1, momentum: 0.9, nesterov: true, weightDecay: 0.01 },
        [
          [0.6181, 0.2838000000000002],
          [0.21923760999999992, 0.9333487800000001],
          [-0.11165109425900013, 0.605659130118],
        ],
      ],
    ];
    for (const [name, o, expected] of torchRuns) {
      const ref = sgdReference(o.lr, o.momentum ?? 0, o.nesterov ?? false, o.weightDecay ?? 0);
      ref.forEach((r, i) => expectClose(r, expected[i], 1e-12, `${name} reference step ${i}`));
      const got = runOptimizer((ps) => new SGD(ps, o), 'float64');
      got.forEach((r, i) => expectClose(r, expected[i], 1e-12, `${name} step ${i}`));
    }
  });

  it('lr can change between steps; parameters without a gradient are left alone', () => {
    const p = Tensor.from([1, 2], [2], { requiresGrad: true });
    const q = Tensor.from([5], [1], { requiresGrad: true });
    for (const opt of [new SGD([p, q], { lr: 0.5, momentum: 0.9 }), new Adam([p, q], { lr: 0.5 })]) {
      tidy(() => p.sum().backward());
      opt.lr = 0;
      opt.step();
      expect(values(p)).toEqual([1, 2]);
      expect(values(q)).toEqual([5]);
      opt.zeroGrad();
      expect(p.grad).toBeNull();
      opt.dispose();
    }
  });

  // Like torch.optim.Adam, bias correction counts steps per parameter (from its first gradient): with a
  // global count, q would move to 0.9256 instead of 0.9 here.
  it("Adam's bias correction counts steps per parameter, like PyTorch", () => {
    const p = Tensor.from([1], [1], { requiresGrad: true });
    const q = Tensor.from([1], [1], { requiresGrad: true });
    const opt = new Adam([p, q], { lr: 0.1 });
    tidy(() => p.sum().backward());
    opt.step(); // q has no gradient yet
    opt.zeroGrad();
    tidy(() => q.sum().backward());
    opt.step();
    expectClose(values(q), [0.9], 1e-6); // torch: first step of q is lr * g / |g|
  });

  const makeNet = (seed: number): Sequential => {
    manualSeed(seed);
    return new Sequential(new Conv2d(2, 4, 3, { padding: 1 }), new BatchNorm2d(4), new ReLU(), new Conv2d(4, 1, 1));
  };

  for (const [name, makeOpt] of [
    ['Adam', (ps: Tensor[]) => new Adam(ps, { lr: 0.01, weightDecay: 1e-3 })],
    ['SGD', (ps: Tensor[]) => new SGD(ps, { lr: 0.01, momentum: 0.9, nesterov: true })],
  ] as const) {
    it(`${name} state round trip: continuing and resuming from saved state give identical parameters`, () => {
      manualSeed(100);
      const x = Tensor.randn([3, 2, 5, 5]);
      const target = Tensor.randn([3, 1, 5, 5]);
      const train = (net: Sequential, opt: Optimizer, steps: number): void => {
        for (let i = 0; i < steps; i++) {
          tidy(() => {
            opt.zeroGrad();
            F.mseLoss(net.forward(x), target).backward();
            opt.step();
          });
        }
      };
      const net1 = makeNet(1);
      const opt1 = makeOpt(net1.parameters());
      train(net1, opt1, 4);
      // Save model and optimiser state as checkpoint bytes.
      const modelBytes = encodeSafetensors(net1.stateDict());
      const optBytes = tidy(() => encodeSafetensors(opt1.stateDict()));
      train(net1, opt1, 4);
      const continued = net1.parameters().map(values);

      const net2 = makeNet(2);
      const opt2 = makeOpt(net2.parameters());
      net2.loadStateDict(decodeSafetensors(modelBytes).tensors);
      opt2.loadStateDict(decodeSafetensors(optBytes).tensors);
      train(net2, opt2, 4);
      expect(net2.parameters().map(values)).toEqual(continued);

      // Control: resuming the model without the optimiser state ends elsewhere.
      const net3 = makeNet(3);
      const opt3 = makeOpt(net3.parameters());
      net3.loadStateDict(decodeSafetensors(modelBytes).tensors);
      train(net3, opt3, 4);
      expect(net3.parameters().map(values)).not.toEqual(continued);
      for (const o of [opt1, opt2, opt3]) o.dispose();
      for (const n of [net1, net2, net3]) n.dispose();
    });
  }

  it('loading optimiser state validates it', () => {
    const p = Tensor.zeros([2], { requiresGrad: true });
    const adam = new Adam([p]);
    expect(() => adam.loadStateDict(new Map())).toThrow(/no step entry/);
    const step = Tensor.from(Float64Array.of(3), [1], { dtype: 'float64' });
    expect(() => adam.loadStateDict(new Map([['step', step]]))).toThrow(/missing 'exp_avg\.0'/);
    expect(() =>
      adam.loadStateDict(
        new Map([
          ['step', step],
          ['exp_avg.0', Tensor.zeros([3])],
          ['exp_avg_sq.0', Tensor.zeros([2])],
        ]),
      ),
    ).toThrow(/'exp_avg\.0' has the wrong shape \[3\]/);
    const sgd = new SGD([p], { momentum: 0.9 });
    expect(() => sgd.loadStateDict(new Map([['momentum_buffer.0', Tensor.zeros([3])]]))).toThrow(/wrong shape/);
  });

  it('a tiny net learns XOR with Adam, and a linear map with SGD + momentum', () => {
    manualSeed(7);
    // 1x1 convolutions on [N, C, 1, 1] act as fully connected layers.
    const net = new Sequential(new Conv2d(2, 8, 1), new Tanh(), new Conv2d(8, 1, 1));
    const x = f32([4, 2, 1, 1], [0, 0, 0, 1, 1, 0, 1, 1]);
    const y = f32([4, 1, 1, 1], [0, 1, 1, 0]);
    const opt = new Adam(net.parameters(), { lr: 0.05 });
    const live = liveTensors();
    let loss = Infinity;
    for (let i = 0; i < 300; i++) {
      loss = tidy(() => {
        opt.zeroGrad();
        const l = F.bceWithLogits(net.forward(x), y);
        l.backward();
        opt.step();
        return l.item();
      });
    }
    expect(liveTensors()).toBe(live);
    expect(loss).toBeLessThan(0.05);
    const pred = tidy(() => values(net.forward(x).sigmoid()));
    expect(pred.map((p) => (p > 0.5 ? 1 : 0))).toEqual([0, 1, 1, 0]);

    // y = M x + c for M = [[1, -2, 0.5], [0, 3, -1]], c = [0.5, -1] on 16 fixed points.
    const lin = new Conv2d(3, 2, 1);
    const xs = Tensor.randn([16, 3, 1, 1]);
    const ys = tidy(() => {
      const m = f32([2, 3, 1, 1], [1, -2, 0.5, 0, 3, -1]);
      return F.conv2d(xs, m, f32([2], [0.5, -1]));
    });
    const sgd = new SGD(lin.parameters(), { lr: 0.05, momentum: 0.9 });
    for (let i = 0; i < 200; i++) {
      loss = tidy(() => {
        sgd.zeroGrad();
        const l = F.mseLoss(lin.forward(xs), ys);
        l.backward();
        sgd.step();
        return l.item();
      });
    }
    expect(loss).toBeLessThan(1e-6);
    expectClose(lin.weight.toFloat32Array(), [1, -2, 0.5, 0, 3, -1], 1e-3);
    expectClose(lin.bias!.toFloat32Array(), [0.5, -1], 1e-3);
  });
});

// ---------------------------------------------------------------------------------------------------------

describe('safetensors', () => {
  const le64 = (n: number): Buffer => {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(BigInt(n));
    return b;
  };
  /** A file from a header object and data bytes (header unpadded). */
  const build = (header: unknown, data: Buffer | number[] = []): Buffer => {
    const json = Buffer.from(typeof header === 'string' ? header : JSON.stringify(header));
    return Buffer.concat([le64(json.length), json, Buffer.from(data)]);
  };

  it('decodes a hand-built file laid out as the format specifies', () => {
    // 8-byte little-endian header size, JSON header, then little-endian data addressed by data_offsets
    // relative to the start of the data area (tensors out of order in the header on purpose).
    const data = Buffer.alloc(8 + 16 + 2);
    data.writeFloatLE(1.5, 0);
    data.writeFloatLE(-2, 4);
    data.writeBigInt64LE(-3n, 8);
    data.writeBigInt64LE(2n ** 40n, 16);
    data[24] = 7;
    data[25] = 255;
    const file = build(
      {
        b: { dtype: 'I64', shape: [2, 1], data_offsets: [8, 24] },
        __metadata__: { format: 'pt', note: 'hand built' },
        a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] },
        c: { dtype: 'U8', shape: [1, 2], data_offsets: [24, 26] },
      },
      data,
    );
    const { tensors, metadata } = decodeSafetensors(file);
    expect(metadata).toEqual({ format: 'pt', note: 'hand built' });
    expect([...tensors.keys()].sort()).toEqual(['a', 'b', 'c']);
    expect(tensors.get('a')!.dtype).toBe('float32');
    expect(list(tensors.get('a')!.toArray())).toEqual([1.5, -2]);
    expect(tensors.get('b')!.shape).toEqual([2, 1]);
    expect(list(tensors.get('b')!.toArray())).toEqual([-3n, 2n ** 40n]);
    expect(tensors.get('c')!.dtype).toBe('uint8');
    expect(list(tensors.get('c')!.toArray())).toEqual([7, 255]);
  });

  it('encodes with the specified byte layout: LE header size, sorted names, aligned data, LE values', () => {
    const buf = encodeSafetensors(
      new Map([
        ['z', Tensor.from(Int32Array.of(1, -2), [2])],
        ['a', Tensor.from(Float64Array.of(0.5), [1, 1], { dtype: 'float64' })],
      ]),
      { framework: 'anoseg' },
    );
    const n = Number(buf.readBigUInt64LE(0));
    expect((8 + n) % 8).toBe(0); // padded with spaces so data starts 8-byte aligned
    const headerText = buf.subarray(8, 8 + n).toString('utf8');
    expect(headerText).toMatch(/^\{.*\} *$/); // JSON, then space padding only
    expect(JSON.parse(headerText)).toEqual({
      __metadata__: { framework: 'anoseg' },
      a: { dtype: 'F64', shape: [1, 1], data_offsets: [0, 8] },
      z: { dtype: 'I32', shape: [2], data_offsets: [8, 16] },
    });
    expect(buf.length).toBe(8 + n + 16);
    expect(buf.readDoubleLE(8 + n)).toBe(0.5);
    expect(buf.readInt32LE(8 + n + 8)).toBe(1);
    expect(buf.readInt32LE(8 + n + 12)).toBe(-2);
    // No metadata: no __metadata__ key.
    const plain = encodeSafetensors(new Map([['t', Tensor.zeros([1])]]));
    expect(Object.keys(JSON.parse(plain.subarray(8, 8 + Number(plain.readBigUInt64LE(0))).toString()))).toEqual(['t']);
  });

  it('round trips float32, float64, int32, int64, uint8, bool, scalars, empty tensors and metadata', async () => {
    const tensors = new Map<string, Tensor>([
      ['f32', Tensor.from(Float32Array.of(1.5, -0, Infinity, 3e-39), [2, 2])],
      ['f64', Tensor.from(Float64Array.of(Math.PI, -1e300), [2], { dtype: 'float64' })],
      ['i32', Tensor.from(Int32Array.of(-2147483648, 7, 2147483647), [3, 1])],
      ['i64', Tensor.from(BigInt64Array.of(-(2n ** 63n), 2n ** 53n + 1n), [2])],
      ['u8', Tensor.from(Uint8Array.of(0, 128, 255), [1, 3])],
      ['bool', Tensor.from(Uint8Array.of(1, 0, 1), [3], { dtype: 'bool' })],
      ['scalar', Tensor.full([], 2.25)],
      ['empty', Tensor.zeros([0, 4])],
      ['view', Tensor.from(Float32Array.of(1, 2, 3, 4, 5, 6), [2, 3]).transpose(0, 1)],
    ]);
    const metadata = { epoch: '12', config: JSON.stringify({ a: [1, 2], s: 'ü ✓' }) };
    const dir = await mkdtemp(path.join(os.tmpdir(), 'anoseg-st-'));
    try {
      const file = path.join(dir, 'ckpt.safetensors');
      await saveSafetensors(file, tensors, metadata);
      const back = await loadSafetensors(file);
      expect(back.metadata).toEqual(metadata);
      expect(await readSafetensorsMetadata(file)).toEqual(metadata); // from the header alone
      expect([...back.tensors.keys()].sort()).toEqual([...tensors.keys()].sort());
      for (const [name, t] of tensors) {
        const u = back.tensors.get(name)!;
        expect(u.dtype, name).toBe(t.dtype);
        expect(u.shape, name).toEqual(t.shape);
        expect(Array.from(u.toArray() as ArrayLike<unknown>), name).toEqual(
          Array.from(t.toArray() as ArrayLike<unknown>),
        );
      }
      expect(Object.is(back.tensors.get('f32')!.toArray()[1], -0)).toBe(true);
      // The same bytes decode from memory.
      const mem = decodeSafetensors(encodeSafetensors(tensors, metadata));
      expect(values(mem.tensors.get('view')!)).toEqual([1, 4, 2, 5, 3, 6]);
      await expect(loadSafetensors(path.join(dir, 'missing.safetensors'))).rejects.toThrow(
        /cannot read checkpoint .*ENOENT/,
      );
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
    expect(() => encodeSafetensors(new Map([['h', Tensor.zeros([1], { dtype: 'float16' })]]))).toThrow(
      /dtype float16 of 'h' is not supported/,
    );
  });

  // I8 entries are written with one byte per element (toArray returns an Int8Array for int8).
  it('round trips int8', () => {
    const t = Tensor.from(Int8Array.of(-128, 0, 127), [3]);
    const back = decodeSafetensors(encodeSafetensors(new Map([['i8', t]]))).tensors.get('i8')!;
    expect(back.dtype).toBe('int8');
    expect(Array.from(back.toArray() as ArrayLike<number>)).toEqual([-128, 0, 127]);
  });

  // A zero-size tensor may share its offset with a non-empty one (the spec only forbids holes and overlaps).
  it('accepts a zero-size tensor at the offset of the next tensor, whatever the header order', () => {
    const file = build(
      {
        b: { dtype: 'F32', shape: [1], data_offsets: [0, 4] },
        a: { dtype: 'F32', shape: [0], data_offsets: [0, 0] },
      },
      [0, 0, 0x80, 0x3f],
    );
    const t = decodeSafetensors(file).tensors;
    expect(values(t.get('b')!)).toEqual([1]);
    expect(t.get('a')!.shape).toEqual([0]);
  });

  it('decodes int8 from a hand-built file', () => {
    const t = decodeSafetensors(
      build({ x: { dtype: 'I8', shape: [3], data_offsets: [0, 3] } }, [0x80, 0, 0x7f]),
    ).tensors.get('x')!;
    expect(t.dtype).toBe('int8');
    expect(Array.from(t.toArray() as ArrayLike<number>)).toEqual([-128, 0, 127]);
  });

  describe('rejects corrupt files with a SafetensorsError naming the problem', () => {
    const good = (): Buffer =>
      encodeSafetensors(
        new Map([
          ['a', Tensor.from(Float32Array.of(1, 2, 3), [3])],
          ['b', Tensor.from(Float32Array.of(4), [1])],
        ]),
      );
    const f32Entry = (begin: number, end: number, shape = [(end - begin) / 4]): unknown => ({
      dtype: 'F32',
      shape,
      data_offsets: [begin, end],
    });
    const cases: [string, () => Uint8Array, RegExp][] = [
      [
        'a file shorter than the size field',
        () => Buffer.from([1, 2, 3]),
        /file is 3 bytes, shorter than the 8-byte header length/,
      ],
      [
        'a truncated file',
        () => good().subarray(0, good().length - 3),
        /tensor 'b' ends at byte 16 beyond the data \(13 bytes\): truncated file\?/,
      ],
      ['a header cut off', () => good().subarray(0, 20), /header length \d+ exceeds the file size 20/],
      [
        'a header length larger than the file',
        () => Buffer.concat([le64(1000), Buffer.from('{}')]),
        /header length 1000 exceeds the file size 10/,
      ],
      [
        'a huge header length',
        () => Buffer.concat([le64(2 ** 52), Buffer.from('{}')]),
        /header length 4503599627370496 exceeds/,
      ],
      ['invalid JSON', () => build('{"a": {"dtype": "F32",'), /header is not JSON/],
      ['a JSON header that is not an object', () => build('[1, 2]'), /header is not a JSON object/],
      [
        'an unknown dtype',
        () => build({ a: { dtype: 'F17', shape: [1], data_offsets: [0, 4] } }, [0, 0, 0, 0]),
        /tensor 'a' has unsupported dtype "F17"/,
      ],
      [
        'a missing dtype',
        () => build({ a: { shape: [1], data_offsets: [0, 4] } }, [0, 0, 0, 0]),
        /tensor 'a' has unsupported dtype undefined/,
      ],
      [
        'a negative dimension',
        () => build({ a: { dtype: 'F32', shape: [-1], data_offsets: [0, 4] } }, [0, 0, 0, 0]),
        /tensor 'a' has a bad shape/,
      ],
      [
        'reversed data_offsets',
        () => build({ a: f32Entry(4, 0, [1]) }, [0, 0, 0, 0]),
        /tensor 'a' has bad data_offsets/,
      ],
      [
        'non-integer data_offsets',
        () => build({ a: { dtype: 'F32', shape: [1], data_offsets: [0.5, 4.5] } }, [0, 0, 0, 0, 0]),
        /bad data_offsets/,
      ],
      [
        'a size that disagrees with the shape',
        () => build({ a: f32Entry(0, 8, [3]) }, new Array(8).fill(0)),
        /tensor 'a' holds 8 bytes, its shape needs 12/,
      ],
      [
        'overlapping tensors',
        () => build({ a: f32Entry(0, 8), b: f32Entry(4, 12) }, new Array(12).fill(0)),
        /tensor '(a|b)' starts at 4, expected 8 \(overlap or gap\)/,
      ],
      [
        'a gap between tensors',
        () => build({ a: f32Entry(0, 4), b: f32Entry(8, 12) }, new Array(12).fill(0)),
        /tensor 'b' starts at 8, expected 4 \(overlap or gap\)/,
      ],
      [
        'data not starting at offset 0',
        () => build({ a: f32Entry(4, 8) }, new Array(8).fill(0)),
        /tensor 'a' starts at 4, expected 0/,
      ],
      [
        'offsets beyond the data',
        () => build({ a: f32Entry(0, 8) }, new Array(4).fill(0)),
        /tensor 'a' ends at byte 8 beyond the data \(4 bytes\)/,
      ],
      ['trailing bytes', () => Buffer.concat([good(), Buffer.from([0, 0])]), /2 trailing bytes after the last tensor/],
      ['non-string metadata', () => build({ __metadata__: { epoch: 3 } }), /metadata 'epoch' is not a string/],
      ['null metadata', () => build({ __metadata__: null }), /__metadata__ is not an object/],
    ];
    for (const [what, make, message] of cases) {
      it(what, () => {
        const buf = make();
        let err: unknown = null;
        try {
          decodeSafetensors(buf, 'model.safetensors');
        } catch (e) {
          err = e;
        }
        expect(err).toBeInstanceOf(SafetensorsError);
        expect((err as Error).message).toMatch(/^model\.safetensors: not a valid safetensors file: /);
        expect((err as Error).message).toMatch(message);
      });
    }

    it('from disk, naming the file', async () => {
      const dir = await mkdtemp(path.join(os.tmpdir(), 'anoseg-st-'));
      try {
        const file = path.join(dir, 'bad.safetensors');
        await writeFile(file, good().subarray(0, 30));
        await expect(loadSafetensors(file)).rejects.toThrow(SafetensorsError);
        await expect(loadSafetensors(file)).rejects.toThrow(`${file}: not a valid safetensors file`);
        // the header alone: a cut header, a header that is not JSON
        await writeFile(file, good().subarray(0, 12));
        await expect(readSafetensorsMetadata(file)).rejects.toThrow(
          `${file}: not a valid safetensors file: header length`,
        );
        const notJson = Buffer.concat([Buffer.from([3, 0, 0, 0, 0, 0, 0, 0]), Buffer.from('{x}')]);
        await writeFile(file, notJson);
        await expect(readSafetensorsMetadata(file)).rejects.toThrow(/header is not JSON/);
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    });
  });
});
