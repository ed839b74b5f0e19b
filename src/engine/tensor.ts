import os from 'node:os';
import { native, type NativeArg, type NativeObjectHandle, type NativeTensorHandle } from './native.js';

export type DType = 'float32' | 'float64' | 'float16' | 'bfloat16' | 'int32' | 'int64' | 'int8' | 'uint8' | 'bool';
export type Device = string; // 'cpu' | 'cuda' | 'cuda:0' ...
export type TypedData = Float32Array | Float64Array | Int32Array | BigInt64Array | Uint8Array | Int8Array;

const DTYPE_FROM_NATIVE: Record<string, DType> = {
  Float: 'float32',
  Double: 'float64',
  Half: 'float16',
  BFloat16: 'bfloat16',
  Int: 'int32',
  Long: 'int64',
  Char: 'int8',
  Byte: 'uint8',
  Bool: 'bool',
};

// ---------------------------------------------------------------------------------------------------------
// Memory scopes. Every tensor registers with the innermost open scope; `tidy` disposes what its function
// created except what it returns. Training loops must not rely on GC: libtorch memory is outside V8's heap
// (it is reported to V8, but finalisers only run when the event loop gets control).

type Scope = Set<Tensor>;
const scopes: Scope[] = [];
let liveCount = 0;

// V8 learns the native memory held by live tensors once per event-loop turn (and when it drifts by > 1 GiB),
// not per tensor: per-tensor reports made every training step start a major GC (see native/torch_addon.cc).
let externalMemorySyncScheduled = false;
function syncExternalMemory(): void {
  externalMemorySyncScheduled = false;
  native.syncExternalMemory();
}

function track(t: Tensor): void {
  liveCount++;
  if (!externalMemorySyncScheduled) {
    externalMemorySyncScheduled = true;
    setImmediate(syncExternalMemory);
  }
  const scope = scopes[scopes.length - 1];
  if (scope) scope.add(t);
}

/** Number of tensors created and not yet disposed (for leak checks). */
export function liveTensors(): number {
  return liveCount;
}

function collect(value: unknown, out: Set<Tensor>): void {
  if (value instanceof Tensor) out.add(value);
  else if (Array.isArray(value)) for (const v of value) collect(v, out);
  else if (value && typeof value === 'object' && Object.getPrototypeOf(value) === Object.prototype)
    for (const v of Object.values(value)) collect(v, out);
}

/**
 * Runs fn; disposes every tensor created inside it except those reachable from its return value
 * (tensors, arrays and plain objects of tensors), which move to the enclosing scope.
 */
export function tidy<T>(fn: () => T): T {
  const scope: Scope = new Set();
  scopes.push(scope);
  let result: T;
  try {
    result = fn();
  } catch (err) {
    scopes.pop();
    for (const t of scope) t.dispose();
    throw err;
  }
  scopes.pop();
  const keep = new Set<Tensor>();
  collect(result, keep);
  const parent = scopes[scopes.length - 1];
  for (const t of scope) {
    if (keep.has(t)) parent?.add(t);
    else t.dispose();
  }
  return result;
}

/**
 * Lets one event-loop turn pass so Node runs the finalisers of released tensor wrappers. dispose() frees a
 * tensor's storage at once, but each wrapper's small native allocation is only freed by its finaliser, which
 * Node runs from the event loop; in a loop that never yields those allocations pile up between freed tensor
 * blocks, the heap fragments, and every step grows it with fresh pages (measured on a 128 px AnoSeg generator
 * forward: +128 MB RSS and ~25k page faults per step without it; flat RSS and no faults with it). Await it once
 * per training or inference step; it costs a few microseconds.
 */
export function releaseDeferred(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/** Removes a tensor from automatic disposal by enclosing scopes (it must then be disposed explicitly). */
export function keep<T extends Tensor>(t: T): T {
  for (const s of scopes) s.delete(t);
  return t;
}

/** Runs fn with autograd recording off (gradients are not tracked for tensors made inside). */
export function noGrad<T>(fn: () => T): T {
  const prev = native.setGradEnabled(false);
  try {
    return fn();
  } finally {
    native.setGradEnabled(prev);
  }
}

export function isGradEnabled(): boolean {
  return native.isGradEnabled();
}

export function setNumThreads(n: number): void {
  native.setNumThreads(n);
}

export function getNumThreads(): number {
  return native.getNumThreads();
}

/** Seeds libtorch's global generator (randn, rand, dropout, initialisers). */
export function manualSeed(seed: number): void {
  native.manualSeed(seed);
}

export function cudaAvailable(): boolean {
  return native.cudaAvailable();
}

export interface EngineInfo {
  torchVersion: string;
  threads: number;
  mkldnn: boolean;
  cuda: boolean;
  /** Freed tensor memory is kept for reuse instead of being returned to the OS (ANOSEG_MALLOC_RETAIN=0: off). */
  retainFreedMemory: boolean;
}

export function engineInfo(): EngineInfo {
  const b = native.buildInfo();
  return {
    torchVersion: b.torchVersion,
    threads: native.getNumThreads(),
    mkldnn: b.mkldnn,
    cuda: b.cuda,
    retainFreedMemory: b.retainFreedMemory,
  };
}

// libtorch's OpenMP pool starts with one thread in some containers; use the machine's cores by default.
native.setNumThreads(Math.max(1, Number(process.env.ANOSEG_THREADS) || os.availableParallelism()));

// ---------------------------------------------------------------------------------------------------------
// Operator calls through the addon's boxed dispatcher, with handles cached by name.

const opIds = new Map<string, number>();

function opId(qualified: string): number {
  let id = opIds.get(qualified);
  if (id === undefined) {
    const dot = qualified.indexOf('.', 'aten::'.length);
    const name = dot < 0 ? qualified : qualified.slice(0, dot);
    const overload = dot < 0 ? '' : qualified.slice(dot + 1);
    id = native.opHandle(name, overload).id;
    opIds.set(qualified, id);
  }
  return id;
}

type Arg = Tensor | ScriptObject | number | boolean | string | null | undefined | readonly Arg[];

/**
 * An operator result that is not a tensor: a TorchScript custom-class object, such as the packed-weight context
 * of a prepacked convolution. Passed back to the operators that take it; not tracked by tidy (dispose it).
 */
export class ScriptObject {
  constructor(readonly handle: NativeObjectHandle) {}

  /** Its TorchScript class name. */
  get type(): string {
    return this.handle.type;
  }

  get disposed(): boolean {
    return this.handle.disposed;
  }

  dispose(): void {
    this.handle.dispose();
  }
}

function toNative(a: Arg): NativeArg {
  if (a instanceof Tensor || a instanceof ScriptObject) return a.handle;
  if (Array.isArray(a)) return a.map(toNative);
  return a as NativeArg;
}

function wrapResult(r: unknown): unknown {
  if (r === null || r === undefined) return r;
  if (Array.isArray(r)) return r.map(wrapResult);
  if (r instanceof native.ObjectHandle) return new ScriptObject(r);
  if (typeof r === 'object') return new Tensor(r as NativeTensorHandle);
  return r;
}

/** Calls an ATen operator, e.g. op('aten::add.Tensor', a, b). Returns Tensor(s) wrapped and tracked. */
export function op(qualified: string, ...args: Arg[]): unknown {
  return wrapResult(native.callOp(opId(qualified), args.map(toNative)));
}

function opT(qualified: string, ...args: Arg[]): Tensor {
  return op(qualified, ...args) as Tensor;
}

// ---------------------------------------------------------------------------------------------------------

export interface CreateOptions {
  dtype?: DType;
  device?: Device;
  requiresGrad?: boolean;
}

export type Shape = readonly number[];

function checkShape(shape: Shape, what: string): number[] {
  if (!Array.isArray(shape) || !shape.every((d) => Number.isInteger(d) && d >= 0)) {
    throw new Error(`${what}: shape must be an array of non-negative integers, got ${JSON.stringify(shape)}`);
  }
  return [...shape];
}

function finish(t: Tensor, opts: CreateOptions | undefined): Tensor {
  let out = t;
  if (opts?.device && opts.device !== 'cpu') {
    out = t.to(opts.device);
    t.dispose();
  }
  if (opts?.requiresGrad) out.requiresGrad = true;
  return out;
}

export class Tensor {
  private readonly h: NativeTensorHandle;

  /** Wraps a native handle; use the factory functions (tensor, zeros, ...) instead. */
  constructor(handle: NativeTensorHandle) {
    this.h = handle;
    track(this);
  }

  get handle(): NativeTensorHandle {
    return this.h;
  }

  // ---- creation -------------------------------------------------------------------------------------------

  /** Copies data into a new tensor. Plain number arrays become float32. */
  static from(data: TypedData | readonly number[], shape?: Shape, opts?: CreateOptions): Tensor {
    const arr = data instanceof Object && ArrayBuffer.isView(data) ? (data as TypedData) : Float32Array.from(data);
    const s = checkShape(shape ?? [arr.length], 'Tensor.from');
    const t = new Tensor(native.fromArray(arr, s, opts?.dtype));
    return finish(t, opts);
  }

  static zeros(shape: Shape, opts?: CreateOptions): Tensor {
    return finish(opT('aten::zeros', checkShape(shape, 'zeros'), opts?.dtype ?? 'float32'), opts);
  }

  static ones(shape: Shape, opts?: CreateOptions): Tensor {
    return finish(opT('aten::ones', checkShape(shape, 'ones'), opts?.dtype ?? 'float32'), opts);
  }

  static full(shape: Shape, value: number, opts?: CreateOptions): Tensor {
    return finish(opT('aten::full', checkShape(shape, 'full'), value, opts?.dtype ?? 'float32'), opts);
  }

  /** Standard normal samples from libtorch's generator (seed with manualSeed). */
  static randn(shape: Shape, opts?: CreateOptions): Tensor {
    return finish(opT('aten::randn', checkShape(shape, 'randn'), opts?.dtype ?? 'float32'), opts);
  }

  /** Uniform [0, 1) samples from libtorch's generator. */
  static rand(shape: Shape, opts?: CreateOptions): Tensor {
    return finish(opT('aten::rand', checkShape(shape, 'rand'), opts?.dtype ?? 'float32'), opts);
  }

  /** Zeros with the dtype and device of `like`. */
  static zerosLike(like: Tensor): Tensor {
    return opT('aten::zeros_like', like);
  }

  static arange(end: number, opts?: CreateOptions): Tensor {
    return finish(opT('aten::arange', end, opts?.dtype ?? 'int64'), opts);
  }

  static linspace(start: number, end: number, steps: number, opts?: CreateOptions): Tensor {
    return finish(opT('aten::linspace', start, end, steps, opts?.dtype ?? 'float32'), opts);
  }

  static cat(tensors: readonly Tensor[], dim = 0): Tensor {
    return opT('aten::cat', tensors, dim);
  }

  static stack(tensors: readonly Tensor[], dim = 0): Tensor {
    return opT('aten::stack', tensors, dim);
  }

  static where(condition: Tensor, a: Tensor, b: Tensor): Tensor {
    return opT('aten::where.self', condition, a, b);
  }

  // ---- facts ----------------------------------------------------------------------------------------------

  get shape(): number[] {
    return this.h.shape;
  }

  get ndim(): number {
    return this.h.shape.length;
  }

  get numel(): number {
    return this.h.shape.reduce((a, b) => a * b, 1);
  }

  get dtype(): DType {
    const d = DTYPE_FROM_NATIVE[this.h.dtype];
    if (!d) throw new Error(`unsupported dtype ${this.h.dtype}`);
    return d;
  }

  get device(): Device {
    return this.h.device;
  }

  get disposed(): boolean {
    return this.h.disposed;
  }

  get requiresGrad(): boolean {
    return this.h.requiresGrad;
  }

  set requiresGrad(v: boolean) {
    this.h.requiresGrad = v;
  }

  get isLeaf(): boolean {
    return this.h.isLeaf;
  }

  /** The accumulated gradient (a new handle sharing the gradient's memory), or null. */
  get grad(): Tensor | null {
    const g = this.h.grad();
    return g ? new Tensor(g) : null;
  }

  set grad(g: Tensor | null) {
    this.h.setGrad(g ? g.handle : null);
  }

  dispose(): void {
    if (!this.h.disposed) {
      this.h.dispose();
      liveCount--;
    }
  }

  // ---- export ---------------------------------------------------------------------------------------------

  /** A copy of the values, row-major. */
  toArray(): TypedData {
    return this.h.toArray();
  }

  toFloat32Array(): Float32Array {
    const a = this.h.toArray();
    return a instanceof Float32Array ? a : Float32Array.from(a as ArrayLike<number>, Number);
  }

  item(): number {
    return Number(this.h.item());
  }

  toString(): string {
    return `Tensor(shape=[${this.shape.join(', ')}], dtype=${this.dtype}, device=${this.device})`;
  }

  // ---- autograd -------------------------------------------------------------------------------------------

  backward(grad?: Tensor, retainGraph = false): void {
    native.backward([this.h], grad ? [grad.handle] : null, retainGraph);
  }

  detach(): Tensor {
    return opT('aten::detach', this);
  }

  // ---- conversion -----------------------------------------------------------------------------------------

  to(target: DType | Device): Tensor {
    if (target in DTYPE_TO_SCALAR) return opT('aten::to.dtype', this, target);
    return opT('aten::to.device', this, target, this.dtype);
  }

  clone(): Tensor {
    return opT('aten::clone', this);
  }

  contiguous(format: 'contiguous_format' | 'channels_last' = 'contiguous_format'): Tensor {
    return opT('aten::contiguous', this, format);
  }

  // ---- elementwise ----------------------------------------------------------------------------------------

  add(other: Tensor | number, alpha = 1): Tensor {
    return other instanceof Tensor
      ? opT('aten::add.Tensor', this, other, alpha)
      : opT('aten::add.Scalar', this, other, alpha);
  }

  sub(other: Tensor | number, alpha = 1): Tensor {
    return other instanceof Tensor
      ? opT('aten::sub.Tensor', this, other, alpha)
      : opT('aten::sub.Scalar', this, other, alpha);
  }

  /** other - this */
  rsub(other: number): Tensor {
    return opT('aten::rsub.Scalar', this, other);
  }

  mul(other: Tensor | number): Tensor {
    return other instanceof Tensor ? opT('aten::mul.Tensor', this, other) : opT('aten::mul.Scalar', this, other);
  }

  div(other: Tensor | number): Tensor {
    return other instanceof Tensor ? opT('aten::div.Tensor', this, other) : opT('aten::div.Scalar', this, other);
  }

  pow(exponent: number | Tensor): Tensor {
    return exponent instanceof Tensor
      ? opT('aten::pow.Tensor_Tensor', this, exponent)
      : opT('aten::pow.Tensor_Scalar', this, exponent);
  }

  neg(): Tensor {
    return opT('aten::neg', this);
  }

  abs(): Tensor {
    return opT('aten::abs', this);
  }

  sqrt(): Tensor {
    return opT('aten::sqrt', this);
  }

  rsqrt(): Tensor {
    return opT('aten::rsqrt', this);
  }

  square(): Tensor {
    return opT('aten::square', this);
  }

  exp(): Tensor {
    return opT('aten::exp', this);
  }

  log(): Tensor {
    return opT('aten::log', this);
  }

  sign(): Tensor {
    return opT('aten::sign', this);
  }

  clamp(min: number | null, max: number | null = null): Tensor {
    return opT('aten::clamp', this, min, max);
  }

  maximum(other: Tensor): Tensor {
    return opT('aten::maximum', this, other);
  }

  minimum(other: Tensor): Tensor {
    return opT('aten::minimum', this, other);
  }

  relu(): Tensor {
    return opT('aten::relu', this);
  }

  leakyRelu(slope = 0.01): Tensor {
    return opT('aten::leaky_relu', this, slope);
  }

  sigmoid(): Tensor {
    return opT('aten::sigmoid', this);
  }

  tanh(): Tensor {
    return opT('aten::tanh', this);
  }

  gt(other: Tensor | number): Tensor {
    return other instanceof Tensor ? opT('aten::gt.Tensor', this, other) : opT('aten::gt.Scalar', this, other);
  }

  lt(other: Tensor | number): Tensor {
    return other instanceof Tensor ? opT('aten::lt.Tensor', this, other) : opT('aten::lt.Scalar', this, other);
  }

  ge(other: Tensor | number): Tensor {
    return other instanceof Tensor ? opT('aten::ge.Tensor', this, other) : opT('aten::ge.Scalar', this, other);
  }

  eq(other: Tensor | number): Tensor {
    return other instanceof Tensor ? opT('aten::eq.Tensor', this, other) : opT('aten::eq.Scalar', this, other);
  }

  // ---- reductions -----------------------------------------------------------------------------------------

  sum(dims?: number | readonly number[], keepDim = false): Tensor {
    if (dims === undefined) return opT('aten::sum', this);
    return opT('aten::sum.dim_IntList', this, typeof dims === 'number' ? [dims] : dims, keepDim);
  }

  mean(dims?: number | readonly number[], keepDim = false): Tensor {
    if (dims === undefined) return opT('aten::mean', this);
    return opT('aten::mean.dim', this, typeof dims === 'number' ? [dims] : dims, keepDim);
  }

  /** Variance (unbiased by default, like torch.var). */
  var(dims: number | readonly number[], unbiased = true, keepDim = false): Tensor {
    return opT('aten::var.dim', this, typeof dims === 'number' ? [dims] : dims, unbiased, keepDim);
  }

  /** Maximum over all elements, or over dims (values only). */
  amax(dims?: number | readonly number[], keepDim = false): Tensor {
    return opT('aten::amax', this, dims === undefined ? [] : typeof dims === 'number' ? [dims] : dims, keepDim);
  }

  amin(dims?: number | readonly number[], keepDim = false): Tensor {
    return opT('aten::amin', this, dims === undefined ? [] : typeof dims === 'number' ? [dims] : dims, keepDim);
  }

  argmax(dim: number, keepDim = false): Tensor {
    return opT('aten::argmax', this, dim, keepDim);
  }

  // ---- linear algebra -------------------------------------------------------------------------------------

  matmul(other: Tensor): Tensor {
    return opT('aten::matmul', this, other);
  }

  // ---- shape ----------------------------------------------------------------------------------------------

  reshape(shape: Shape): Tensor {
    return opT('aten::reshape', this, shape);
  }

  view(shape: Shape): Tensor {
    return opT('aten::view', this, shape);
  }

  flatten(startDim = 0, endDim = -1): Tensor {
    return opT('aten::flatten.using_ints', this, startDim, endDim);
  }

  permute(dims: readonly number[]): Tensor {
    return opT('aten::permute', this, dims);
  }

  transpose(dim0: number, dim1: number): Tensor {
    return opT('aten::transpose.int', this, dim0, dim1);
  }

  unsqueeze(dim: number): Tensor {
    return opT('aten::unsqueeze', this, dim);
  }

  squeeze(dim?: number): Tensor {
    return dim === undefined ? opT('aten::squeeze', this) : opT('aten::squeeze.dim', this, dim);
  }

  expand(shape: Shape): Tensor {
    return opT('aten::expand', this, shape);
  }

  repeat(repeats: readonly number[]): Tensor {
    return opT('aten::repeat', this, repeats);
  }

  /** Elements start..end-1 (step) along dim; negative indices count from the end. */
  slice(dim: number, start: number, end?: number, step = 1): Tensor {
    return opT('aten::slice.Tensor', this, dim, start, end ?? null, step);
  }

  /** Pads the last dims: pads = [left, right, top, bottom, ...] like torch.nn.functional.pad. */
  pad(pads: readonly number[], mode: 'constant' | 'reflect' | 'replicate' = 'constant', value = 0): Tensor {
    if (mode === 'constant') return opT('aten::constant_pad_nd', this, pads, value);
    if (pads.length !== 4 || this.ndim !== 4) throw new Error(`pad: ${mode} padding supports 4-D input and 4 pads`);
    return mode === 'reflect' ? opT('aten::reflection_pad2d', this, pads) : opT('aten::replication_pad2d', this, pads);
  }

  indexSelect(dim: number, index: Tensor): Tensor {
    return opT('aten::index_select', this, dim, index);
  }

  gather(dim: number, index: Tensor): Tensor {
    return opT('aten::gather', this, dim, index);
  }

  // ---- in place (optimisers; relu_/leakyRelu_ also in graphs, where autograd tracks them) -----------------

  private inPlace(qualified: string, ...args: Arg[]): this {
    native.callOp(opId(qualified), [this.h, ...args.map(toNative)], true); // the result aliases this tensor
    return this;
  }

  add_(other: Tensor | number, alpha = 1): this {
    return other instanceof Tensor
      ? this.inPlace('aten::add_.Tensor', other, alpha)
      : this.inPlace('aten::add_.Scalar', other, alpha);
  }

  mul_(other: Tensor | number): this {
    return other instanceof Tensor
      ? this.inPlace('aten::mul_.Tensor', other)
      : this.inPlace('aten::mul_.Scalar', other);
  }

  div_(other: Tensor | number): this {
    return other instanceof Tensor
      ? this.inPlace('aten::div_.Tensor', other)
      : this.inPlace('aten::div_.Scalar', other);
  }

  /** this += value * t1 * t2 */
  addcmul_(t1: Tensor, t2: Tensor, value = 1): this {
    return this.inPlace('aten::addcmul_', t1, t2, value);
  }

  /** this += value * t1 / t2 */
  addcdiv_(t1: Tensor, t2: Tensor, value = 1): this {
    return this.inPlace('aten::addcdiv_', t1, t2, value);
  }

  /** this = this + weight * (end - this) */
  lerp_(end: Tensor, weight: number): this {
    return this.inPlace('aten::lerp_.Scalar', end, weight);
  }

  copy_(src: Tensor): this {
    return this.inPlace('aten::copy_', src);
  }

  /**
   * In-place ReLU. Under autograd the tensor's graph node becomes the ReLU's, so use it only where no backward
   * formula needs the values before it (after BatchNorm or an addition, as torch's ReLU(inplace=True)).
   */
  relu_(): this {
    return this.inPlace('aten::relu_');
  }

  /** In-place leaky ReLU (slope > 0 for autograd); same caveat as relu_. */
  leakyRelu_(slope = 0.01): this {
    return this.inPlace('aten::leaky_relu_', slope);
  }

  zero_(): this {
    return this.inPlace('aten::zero_');
  }

  fill_(value: number): this {
    return this.inPlace('aten::fill_.Scalar', value);
  }

  normal_(mean = 0, std = 1): this {
    return this.inPlace('aten::normal_', mean, std);
  }

  uniform_(from = 0, to = 1): this {
    return this.inPlace('aten::uniform_', from, to);
  }

  clamp_(min: number | null, max: number | null = null): this {
    return this.inPlace('aten::clamp_', min, max);
  }
}

const DTYPE_TO_SCALAR: Record<DType, true> = {
  float32: true,
  float64: true,
  float16: true,
  bfloat16: true,
  int32: true,
  int64: true,
  int8: true,
  uint8: true,
  bool: true,
};

export { opT as callOp };
