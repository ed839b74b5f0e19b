/** `anoseg export`: an AnoSeg or PaDiM model as ONNX, checked against libtorch before it is written. */
import { MAP_TOLERANCE, formatExportCheck } from '../../onnx/check.js';
import { writeFileAtomic } from '../../util/atomic.js';
import { integer, parseCommand, text, type Command, type CommandSpec, type Options } from '../options.js';

const DEFAULTS = { check: 4, seed: 0 } as const;

export const EXPORT = {
  name: 'export',
  summary: 'write an AnoSeg or PaDiM model as ONNX (checked against libtorch on seeded inputs)',
  about: `Writes the model as an ONNX graph (opset 17) from fitted image batch to anomaly map and image score, with the
preprocessing, score and thresholds in its metadata. Before writing, onnxruntime-node runs the graph on N seeded
inputs next to the libtorch predictor and the maximum differences are printed; the file is written only when maps
agree within ${MAP_TOLERANCE} (relative to the map's scale where values exceed 1) and every verdict is the same.`,
  options: {
    model: text('MODEL', 'AnoSeg or PaDiM model file (.safetensors) to export', { required: true }),
    out: text('FILE', 'ONNX file to write', { default: 'MODEL with the extension .onnx', synopsis: true }),
    check: integer(
      'N',
      'seeded inputs the exported graph is checked on',
      {},
      { default: DEFAULTS.check, synopsis: true },
    ),
    seed: integer('S', 'seed of those inputs', { min: 0 }, { default: DEFAULTS.seed, synopsis: true }),
  },
} satisfies CommandSpec<Options>;

export interface ExportInvocation {
  model: string;
  out: string;
  check: number;
  seed: number;
}

/** `anoseg export ARGS` resolved without reading anything. */
export function resolveExport(args: string[]): ExportInvocation {
  const { values: v } = parseCommand(EXPORT, args);
  const model = v.model as string;
  return {
    model,
    out: v.out ?? model.replace(/(\.safetensors)?$/, '.onnx'),
    check: v.check ?? DEFAULTS.check,
    seed: v.seed ?? DEFAULTS.seed,
  };
}

async function run(args: string[]): Promise<void> {
  const o = resolveExport(args);
  const { exportAndCheck } = await import('../../onnx/export-checked.js');
  const { onnx, info, check, passed } = await exportAndCheck(o.model, o.check, o.seed);
  const ops = [...onnx.operators].map(([op, n]) => `${op} ${n}`).join(', ');
  process.stdout.write(
    `${o.model} (${info.method}, ${info.resolution} px, ${info.channels} ch): ${onnx.nodeCount} nodes (${ops}), ` +
      `${(onnx.bytes.length / 1e6).toFixed(2)} MB\n` +
      `check, onnxruntime-node vs libtorch, ${formatExportCheck(check)}\n`,
  );
  if (!passed) {
    throw new Error(`the exported graph does not reproduce the model (see the check above); ${o.out} was not written`);
  }
  await writeFileAtomic(o.out, onnx.bytes);
  process.stdout.write(`wrote ${o.out}\n`);
}

export const exportCommand: Command = { spec: EXPORT, run };
