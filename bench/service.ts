/**
 * Inspection-service load benchmark.
 *
 *   npx tsx bench/service.ts [--model PATH | --seeded-model] [--workers W] [--image PATH] [--n 200]
 *                            [--concurrency 4] [--size 256] [--server-concurrency C] [--max-queue 64] [--raw]
 *                            [--batch K] [--warmup 10]
 *
 * Starts the inspection server on an ephemeral localhost port, with the predictor loaded from --model (through
 * loadPredictor in src/methods/load.ts), a seeded randomly initialised recipe-size AnoSeg model written to a
 * temporary file (--seeded-model: the real network and score, untrained weights), or, without either, the
 * reference predictor (colour distance to mid grey; see src/service/reference-predictor.ts). With --workers W the
 * model runs in a PredictorPool of W worker threads (the machine's cores divided among them), as `anoseg serve`
 * does; without it, on the server's own thread. While the requests run, GET /api/health is probed every 20 ms:
 * its latency shows whether the service still answers while it computes. Sends N POST /api/inspect requests (or /api/inspect/batch with
 * K files each when --batch is given) with C clients in parallel, each uploading the same image: --image, or a
 * synthetic size x size grey PNG with a red square. Prints latency percentiles, throughput, errors by status,
 * and the process RSS / heap before and after.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import v8 from 'node:v8';
import vm from 'node:vm';
import sharp from 'sharp';
import type { AnomalyPredictor } from '../src/models/predictor.js';
import { ReferencePredictor } from '../src/service/reference-predictor.js';
import { createInspectionServer } from '../src/service/server.js';

const { values: args } = parseArgs({
  options: {
    model: { type: 'string' },
    'seeded-model': { type: 'boolean', default: false },
    workers: { type: 'string', default: '0' },
    image: { type: 'string' },
    n: { type: 'string', default: '200' },
    concurrency: { type: 'string', default: '4' },
    size: { type: 'string', default: '256' },
    'server-concurrency': { type: 'string' },
    'max-queue': { type: 'string', default: '64' },
    raw: { type: 'boolean', default: false },
    batch: { type: 'string', default: '0' },
    warmup: { type: 'string', default: '10' },
    help: { type: 'boolean', short: 'h', default: false },
  },
});

if (args.help) {
  console.log(
    'usage: npx tsx bench/service.ts [--model PATH | --seeded-model] [--workers W] [--image PATH] [--n 200]\n' +
      '                               [--concurrency 4] [--size 256] [--server-concurrency C] [--max-queue 64]\n' +
      '                               [--raw] [--batch K] [--warmup 10]',
  );
  process.exit(0);
}

function intArg(name: string, value: string | undefined, min: number): number {
  const v = Number(value);
  if (!Number.isInteger(v) || v < min) {
    console.error(`--${name} must be an integer >= ${min}, got ${value}`);
    process.exit(2);
  }
  return v;
}

const n = intArg('n', args.n, 1);
const clients = intArg('concurrency', args.concurrency, 1);
const size = intArg('size', args.size, 8);
const workers = intArg('workers', args.workers, 0);
const serverConcurrency =
  args['server-concurrency'] === undefined ? undefined : intArg('server-concurrency', args['server-concurrency'], 1);
const maxQueue = intArg('max-queue', args['max-queue'], 0);
const batch = intArg('batch', args.batch, 0);
const warmup = intArg('warmup', args.warmup, 0);

async function loadModel(path: string): Promise<AnomalyPredictor> {
  // Resolved at run time so this file does not depend on the model code at compile time.
  const spec = new URL('../src/methods/load.js', import.meta.url).href;
  let mod: { loadPredictor?: (p: string) => Promise<AnomalyPredictor> | AnomalyPredictor };
  try {
    mod = (await import(spec)) as typeof mod;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ERR_MODULE_NOT_FOUND' && String(err).includes('load')) {
      throw new Error('--model needs src/methods/load.ts (loadPredictor), which is not in this checkout');
    }
    throw err;
  }
  if (typeof mod.loadPredictor !== 'function') throw new Error('src/methods/load.ts does not export loadPredictor');
  return mod.loadPredictor(path);
}

/** The recipe preset's AnoSeg model, seeded and untrained, written to a temporary file (removed at exit). */
async function writeSeededModel(): Promise<string> {
  const [{ manualSeed }, { AnoSegGenerator }, { saveAnoSegModel }, { presetConfig }] = await Promise.all([
    import('../src/engine/index.js'),
    import('../src/methods/anoseg/network.js'),
    import('../src/methods/anoseg/model-file.js'),
    import('../src/methods/anoseg/config.js'),
  ]);
  const dir = mkdtempSync(path.join(os.tmpdir(), 'anoseg-bench-service-'));
  process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'seeded-recipe.safetensors');
  const cfg = presetConfig('recipe');
  manualSeed(0);
  const generator = new AnoSegGenerator(cfg.arch);
  await saveAnoSegModel(file, generator, {
    arch: cfg.arch,
    aspect: cfg.aspect,
    score: { sigma: cfg.scoreSigma, reconstructionWeight: cfg.reconstructionScoreWeight },
    imageThreshold: 0.5,
    pixelThreshold: 0.5,
    facts: { seeded: 0, trained: false },
  });
  generator.dispose();
  return file;
}

async function openPredictor(): Promise<{ predictor: AnomalyPredictor; label: string }> {
  const file = args.model ?? (args['seeded-model'] ? await writeSeededModel() : null);
  if (!file) return { predictor: new ReferencePredictor(), label: 'reference predictor, no --model' };
  const label = args.model ?? 'seeded recipe model, untrained';
  if (workers === 0) return { predictor: await loadModel(file), label: `${label}, on the server thread` };
  const { PredictorPool } = await import('../src/models/predictor-pool.js');
  const pool = await PredictorPool.create(file, { workers });
  const { threadsPerWorker } = pool.stats();
  return { predictor: pool, label: `${label}, ${workers} worker(s) x ${threadsPerWorker} libtorch thread(s)` };
}

async function sampleImage(): Promise<{ bytes: Buffer; type: string; name: string }> {
  if (args.image) {
    const bytes = await readFile(args.image);
    const meta = await sharp(bytes)
      .metadata()
      .catch(() => null);
    const type = meta?.format === 'jpeg' ? 'image/jpeg' : meta?.format === 'tiff' ? 'image/tiff' : 'image/png';
    return { bytes, type: args.image.toLowerCase().endsWith('.bmp') ? 'image/bmp' : type, name: args.image };
  }
  const px = Buffer.alloc(size * size * 3, 128);
  const side = Math.max(2, Math.round(size / 8));
  const at = Math.round(size / 3);
  for (let y = at; y < at + side; y++) for (let x = at; x < at + side; x++) px.set([255, 0, 0], (y * size + x) * 3);
  const bytes = await sharp(px, { raw: { width: size, height: size, channels: 3 } })
    .png()
    .toBuffer();
  return { bytes, type: 'image/png', name: `synthetic ${size}x${size} PNG` };
}

/** A full garbage collection, so the memory figures compare live data rather than GC timing. */
function collectGarbage(): void {
  v8.setFlagsFromString('--expose-gc');
  const gc = vm.runInNewContext('gc') as () => void;
  gc();
  gc();
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i];
}

function mib(bytes: number): string {
  return `${(bytes / 2 ** 20).toFixed(1)} MiB`;
}

async function main(): Promise<void> {
  const { predictor, label } = await openPredictor();
  const image = await sampleImage();
  const svc = createInspectionServer({ predictor, concurrency: serverConcurrency, maxQueue });
  const url = await svc.listen(0, '127.0.0.1');

  let body: Uint8Array<ArrayBuffer>;
  let contentType: string;
  let endpoint = `${url}/api/inspect${args.raw ? '?raw=1' : ''}`;
  if (batch > 0) {
    const form = new FormData();
    for (let i = 0; i < batch; i++) form.append('files', new Blob([new Uint8Array(image.bytes)]), `img${i}`);
    const req = new Request('http://x/', { method: 'POST', body: form });
    body = new Uint8Array(await req.arrayBuffer());
    contentType = req.headers.get('content-type') ?? '';
    endpoint = `${url}/api/inspect/batch${args.raw ? '?raw=1' : ''}`;
  } else {
    body = new Uint8Array(image.bytes);
    contentType = image.type;
  }

  const statuses = new Map<string, number>();
  const latencies: number[] = [];
  let responseBytes = 0;
  const send = async (record: boolean): Promise<void> => {
    const t0 = performance.now();
    let key: string;
    try {
      const res = await fetch(endpoint, { method: 'POST', body, headers: { 'Content-Type': contentType } });
      const text = await res.text();
      key = String(res.status);
      if (record) responseBytes += text.length;
      if (res.ok && batch > 0) {
        const failed = (JSON.parse(text) as { results: Array<{ ok: boolean }> }).results.filter((r) => !r.ok);
        if (failed.length > 0) key = '200 with failed files';
      }
    } catch (err) {
      key = `network error (${(err as Error).message})`;
    }
    if (!record) return;
    latencies.push(performance.now() - t0);
    statuses.set(key, (statuses.get(key) ?? 0) + 1);
  };
  const run = async (count: number, record: boolean): Promise<void> => {
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < count) {
        next++;
        await send(record);
      }
    };
    await Promise.all(Array.from({ length: Math.min(clients, count) }, worker));
  };

  console.log(
    `model: ${predictor.info.method} (${label}), server concurrency ${svc.queue.concurrency}, max queue ${maxQueue}`,
  );
  console.log(
    `image: ${image.name}, ${image.bytes.length} bytes; ${batch > 0 ? `batches of ${batch}` : 'single images'}` +
      `${args.raw ? ' with raw map' : ''}; ${n} requests, ${clients} clients, ${warmup} warm-up`,
  );
  await run(warmup, false);
  collectGarbage();
  const before = process.memoryUsage();
  const t0 = performance.now();
  const health: number[] = [];
  let probing = true;
  const probe = (async () => {
    while (probing) {
      const h0 = performance.now();
      await (await fetch(`${url}/api/health`)).arrayBuffer();
      health.push(performance.now() - h0);
      await new Promise((r) => setTimeout(r, 20));
    }
  })();
  await run(n, true);
  const seconds = (performance.now() - t0) / 1000;
  probing = false;
  await probe;
  collectGarbage();
  const after = process.memoryUsage();
  await svc.close();
  predictor.dispose();

  const sorted = latencies.slice().sort((a, b) => a - b);
  const ok = statuses.get('200') ?? 0;
  const errors = n - ok;
  const fmt = (ms: number) => `${ms.toFixed(1)} ms`;
  console.log(
    `latency: p50 ${fmt(percentile(sorted, 50))}, p90 ${fmt(percentile(sorted, 90))}, ` +
      `p99 ${fmt(percentile(sorted, 99))}, max ${fmt(sorted[sorted.length - 1])}`,
  );
  console.log(
    `throughput: ${(n / seconds).toFixed(1)} requests/s` +
      (batch > 0 ? ` (${((n * batch) / seconds).toFixed(1)} images/s)` : '') +
      ` over ${seconds.toFixed(2)} s; mean response ${(responseBytes / Math.max(1, ok) / 1024).toFixed(1)} KiB`,
  );
  const healthSorted = health.sort((a, b) => a - b);
  console.log(
    `health while loaded: p50 ${fmt(percentile(healthSorted, 50))}, p99 ${fmt(percentile(healthSorted, 99))}, ` +
      `max ${fmt(healthSorted[healthSorted.length - 1])} (${health.length} probes)`,
  );
  console.log(
    `errors: ${errors}` +
      (errors > 0
        ? ` (${[...statuses]
            .filter(([k]) => k !== '200')
            .map(([k, v]) => `${k}: ${v}`)
            .join(', ')})`
        : ''),
  );
  console.log(
    `memory: rss ${mib(before.rss)} -> ${mib(after.rss)}, heap ${mib(before.heapUsed)} -> ${mib(after.heapUsed)}, ` +
      `array buffers ${mib(before.arrayBuffers)} -> ${mib(after.arrayBuffers)}` +
      ' (after full GC)',
  );
  process.exitCode = errors > 0 ? 1 : 0;
}

main().catch((err: unknown) => {
  console.error(err instanceof Error ? `bench/service: ${err.message}` : err);
  process.exit(1);
});
