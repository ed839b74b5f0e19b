/** `anoseg serve`: the HTTP inspection service with its web page. */
import { promises as fs } from 'node:fs';
import { modelFileKind } from '../../methods/load.js';
import { formatExportCheck } from '../../onnx/check.js';
import { integer, number, parseCommand, text, type Command, type CommandSpec, type Options } from '../options.js';
import { openPredictor, workersOption } from '../predictor-workers.js';

/** What the command passes when an option is absent (stated in the help). */
const DEFAULTS = { port: 8080, host: '127.0.0.1', maxQueue: 16, workers: 1, timeout: 120 } as const;

export const SERVE = {
  name: 'serve',
  summary: 'HTTP inspection service with a web page',
  about: `The model runs in --workers worker threads (the cores divided among them), so the service keeps answering while
it computes. An inspection not answered within --timeout seconds gets 504 and its worker is replaced. The page can
also inspect in the browser with the model as ONNX (the .onnx file itself, or an export checked against the model).`,
  options: {
    model: text('MODEL', 'model file (.safetensors or .onnx)', { required: true }),
    port: integer('PORT', 'TCP port (0 = any free one)', { min: 0, max: 65535 }, { default: DEFAULTS.port }),
    host: text('HOST', 'address to listen on', { default: DEFAULTS.host }),
    'max-queue': integer('N', 'inspections waiting at most; more get 503', {}, { default: DEFAULTS.maxQueue }),
    workers: workersOption('worker threads running the model', DEFAULTS.workers),
    timeout: number(
      'S',
      'seconds an inspection may take before it gets 504',
      { above: 0 },
      {
        default: DEFAULTS.timeout,
      },
    ),
  },
} satisfies CommandSpec<Options>;

export interface ServeInvocation {
  model: string;
  port: number;
  host: string;
  maxQueue: number;
  workers: number;
  timeoutSeconds: number;
}

/** `anoseg serve ARGS` resolved without starting anything. */
export function resolveServe(args: string[]): ServeInvocation {
  const { values: v } = parseCommand(SERVE, args);
  return {
    model: v.model as string,
    port: v.port ?? DEFAULTS.port,
    host: v.host ?? DEFAULTS.host,
    maxQueue: v['max-queue'] ?? DEFAULTS.maxQueue,
    workers: v.workers ?? DEFAULTS.workers,
    timeoutSeconds: v.timeout ?? DEFAULTS.timeout,
  };
}

/**
 * The served model as ONNX for the page's in-browser mode: the file itself, or an export checked against the
 * model; null (with the reason on stderr) when it cannot be exported.
 */
async function browserModelFor(model: string): Promise<{ onnx: Uint8Array; name: string } | null> {
  if ((await modelFileKind(model)) === 'onnx') return { onnx: await fs.readFile(model), name: model };
  try {
    const { exportAndCheck } = await import('../../onnx/export-checked.js');
    const { onnx, check, passed } = await exportAndCheck(model, 2);
    if (!passed) throw new Error(`the export does not reproduce the model: ${formatExportCheck(check)}`);
    return { onnx: onnx.bytes, name: `${model} (exported)` };
  } catch (e) {
    process.stderr.write(`in-browser inspection off: ${(e as Error).message}\n`);
    return null;
  }
}

async function run(args: string[]): Promise<void> {
  const o = resolveServe(args);
  const { createInspectionServer } = await import('../../service/server.js');
  const { PredictorPool } = await import('../../models/predictor-pool.js');
  const predictor = await openPredictor(o.model, o.workers, true);
  const browserModel = await browserModelFor(o.model);
  const srv = createInspectionServer({
    predictor,
    maxQueue: o.maxQueue,
    inspectTimeoutMs: o.timeoutSeconds * 1000,
    browserModel: browserModel ?? undefined,
  });
  const url = await srv.listen(o.port, o.host);
  process.stdout.write(
    `serving ${o.model} on ${url}` +
      (predictor instanceof PredictorPool
        ? ` (${o.workers} worker(s) x ${predictor.stats().threadsPerWorker} libtorch thread(s))\n`
        : ' (on the server thread)\n') +
      (browserModel
        ? `in-browser inspection on: the page can run the ONNX model (${(browserModel.onnx.length / 1e6).toFixed(1)} MB)\n`
        : ''),
  );
  const stop = (): void => {
    void srv.close().then(() => {
      predictor.dispose();
      process.exit(0);
    });
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
}

export const serveCommand: Command = { spec: SERVE, run };
