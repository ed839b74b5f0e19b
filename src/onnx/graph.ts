/**
 * A small builder for ONNX graphs on top of the `onnx-proto` protobuf classes: nodes of a fixed operator set,
 * float32 / int64 initializers, graph inputs and outputs with symbolic batch dimensions, model metadata. The
 * exporter (export.ts) emits the project's networks through it; encoding is protobuf's, never hand-assembled.
 */
import onnxProto from 'onnx-proto';

const { onnx } = onnxProto;

/** ONNX operator set the exporter writes (opset 17 = IR version 8; onnxruntime and python onnx >= 1.12 read it). */
export const ONNX_OPSET = 17;
export const ONNX_IR_VERSION = 8;

/**
 * The operators the exported models use; nothing else can be emitted. Conv..MaxPool come from the layers,
 * the rest from the coordinate channels, score maps, Gaussian blurs and PaDiM's Mahalanobis distance.
 */
export const SUPPORTED_OPS = [
  'Conv',
  'ConvTranspose',
  'BatchNormalization',
  'Relu',
  'LeakyRelu',
  'Sigmoid',
  'MaxPool',
  'Resize',
  'Add',
  'Sub',
  'Mul',
  'Div',
  'Abs',
  'Sqrt',
  'Max',
  'Concat',
  'Gather',
  'Shape',
  'Slice',
  'Expand',
  'Reshape',
  'Transpose',
  'MatMul',
  'ReduceMean',
  'ReduceMax',
  'ReduceSum',
] as const;
export type OnnxOp = (typeof SUPPORTED_OPS)[number];

/** A node attribute with its ONNX type made explicit (a JS number alone does not say int or float). */
export type Attr =
  | { kind: 'int'; value: number }
  | { kind: 'ints'; value: readonly number[] }
  | { kind: 'float'; value: number }
  | { kind: 'string'; value: string };

export const int = (value: number): Attr => ({ kind: 'int', value });
export const ints = (value: readonly number[]): Attr => ({ kind: 'ints', value });
export const float = (value: number): Attr => ({ kind: 'float', value });
export const str = (value: string): Attr => ({ kind: 'string', value });

/** A graph input or output: float32 with fixed dims or named symbolic ones (the batch dimension). */
export interface TensorSpec {
  name: string;
  dims: readonly (number | string)[];
}

export interface ModelProps {
  inputs: readonly TensorSpec[];
  outputs: readonly TensorSpec[];
  /** Written to ModelProto.metadata_props. */
  metadata: Readonly<Record<string, string>>;
  docString: string;
  producerVersion: string;
}

/** Raised when a network or setting cannot be written as ONNX; the message names the part and the reason. */
export class OnnxExportError extends Error {
  override name = 'OnnxExportError';
}

function toAttribute(name: string, a: Attr): onnxProto.onnx.IAttributeProto {
  const T = onnx.AttributeProto.AttributeType;
  switch (a.kind) {
    case 'int':
      return { name, type: T.INT, i: a.value };
    case 'ints':
      return { name, type: T.INTS, ints: [...a.value] };
    case 'float':
      return { name, type: T.FLOAT, f: a.value };
    case 'string':
      return { name, type: T.STRING, s: new TextEncoder().encode(a.value) };
  }
}

export class GraphBuilder {
  private readonly nodes: onnxProto.onnx.INodeProto[] = [];
  private readonly initializers: onnxProto.onnx.ITensorProto[] = [];
  private readonly used = new Set<string>();
  private readonly opCounts = new Map<string, number>();

  /** A value name not used yet, derived from `base`. */
  fresh(base: string): string {
    const clean = base.replace(/[^A-Za-z0-9_./-]/g, '_') || 'v';
    let name = clean;
    for (let i = 1; this.used.has(name); i++) name = `${clean}_${i}`;
    this.used.add(name);
    return name;
  }

  private readonly sharedValues = new Map<object, string>();

  /** The value made for `key` the first time (a weight tensor emitted twice is stored once). */
  shared(key: object, make: () => string): string {
    let name = this.sharedValues.get(key);
    if (name === undefined) {
      name = make();
      this.sharedValues.set(key, name);
    }
    return name;
  }

  /** A float32 initializer (weights, constants); returns its value name. */
  floats(base: string, data: Float32Array, dims: readonly number[]): string {
    const count = dims.reduce((a, b) => a * b, 1);
    if (data.length !== count)
      throw new OnnxExportError(`initializer '${base}': ${data.length} values for dims [${dims}]`);
    const name = this.fresh(base);
    const raw = new Uint8Array(data.buffer, data.byteOffset, data.byteLength).slice();
    this.initializers.push({ name, dims: [...dims], dataType: onnx.TensorProto.DataType.FLOAT, rawData: raw });
    return name;
  }

  /** A 1-D int64 initializer (shapes, axes, indices). */
  int64s(base: string, values: readonly number[]): string {
    const name = this.fresh(base);
    this.initializers.push({
      name,
      dims: [values.length],
      dataType: onnx.TensorProto.DataType.INT64,
      int64Data: [...values],
    });
    return name;
  }

  /** Adds one node of a supported operator; returns its output names (`outputs` of them). */
  node(
    op: OnnxOp,
    inputs: readonly string[],
    attrs: Record<string, Attr> = {},
    base: string = op,
    outputs = 1,
  ): string[] {
    if (!(SUPPORTED_OPS as readonly string[]).includes(op)) {
      throw new OnnxExportError(`operator '${op}' is not in the exporter's operator set (${SUPPORTED_OPS.join(', ')})`);
    }
    const names = Array.from({ length: outputs }, (_, i) => this.fresh(outputs > 1 ? `${base}_${i}` : base));
    this.nodes.push({
      name: this.fresh(`${base}_node`),
      opType: op,
      input: [...inputs],
      output: names,
      attribute: Object.entries(attrs).map(([k, v]) => toAttribute(k, v)),
    });
    this.opCounts.set(op, (this.opCounts.get(op) ?? 0) + 1);
    return names;
  }

  /** One-output shorthand of node(). */
  op(op: OnnxOp, inputs: readonly string[], attrs: Record<string, Attr> = {}, base: string = op): string {
    return this.node(op, inputs, attrs, base)[0];
  }

  /** Nodes per operator type, for the export summary. */
  get operatorCounts(): ReadonlyMap<string, number> {
    return this.opCounts;
  }

  get nodeCount(): number {
    return this.nodes.length;
  }

  /** Reserves a graph input name (so no node output takes it). */
  input(name: string): string {
    if (this.used.has(name)) throw new OnnxExportError(`graph input name '${name}' is taken`);
    this.used.add(name);
    return name;
  }

  /** Renames the value `from` to the graph output name `to` (through an Identity-free rename of its producer). */
  rename(from: string, to: string): void {
    if (this.used.has(to)) throw new OnnxExportError(`graph output name '${to}' is taken`);
    const producer = this.nodes.find((n) => n.output?.includes(from));
    if (!producer?.output) throw new OnnxExportError(`value '${from}' is not produced by a node`);
    producer.output = producer.output.map((o) => (o === from ? to : o));
    for (const n of this.nodes) n.input = n.input?.map((i) => (i === from ? to : i));
    this.used.add(to);
  }

  /** The encoded ModelProto. */
  encode(props: ModelProps): Uint8Array {
    const valueInfo = (spec: TensorSpec): onnxProto.onnx.IValueInfoProto => ({
      name: spec.name,
      type: {
        tensorType: {
          elemType: onnx.TensorProto.DataType.FLOAT,
          shape: { dim: spec.dims.map((d) => (typeof d === 'number' ? { dimValue: d } : { dimParam: d })) },
        },
      },
    });
    const model = onnx.ModelProto.create({
      irVersion: ONNX_IR_VERSION,
      opsetImport: [{ domain: '', version: ONNX_OPSET }],
      producerName: 'anoseg.ts',
      producerVersion: props.producerVersion,
      docString: props.docString,
      graph: {
        name: 'anoseg',
        node: this.nodes,
        initializer: this.initializers,
        input: props.inputs.map(valueInfo),
        output: props.outputs.map(valueInfo),
      },
      metadataProps: Object.entries(props.metadata).map(([key, value]) => ({ key, value })),
    });
    const problem = onnx.ModelProto.verify(model);
    if (problem) throw new OnnxExportError(`invalid ONNX model: ${problem}`);
    return onnx.ModelProto.encode(model).finish();
  }
}
