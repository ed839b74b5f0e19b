/**
 * The inspection service's request handlers: the page, health and model info, and the two inspection endpoints.
 * An upload is received within the limits and checked (upload.ts) before it is queued; decoding, prediction and
 * rendering (render.ts) then run as one job of the scheduler (scheduler.ts).
 */
import type http from 'node:http';
import type { Image } from '../image/types.js';
import type { AnomalyPrediction, AnomalyPredictor } from '../models/predictor.js';
import type { PoolStats, PredictorPool } from '../models/predictor-pool.js';
import { errorMessage, HttpError, readBody, sendJson, throwIfAborted, toHttpError } from './http.js';
import type { InspectionPage } from './page.js';
import { renderInspection, type InspectResult } from './render.js';
import type { InspectionScheduler } from './scheduler.js';
import {
  ACCEPTED_TYPES_TEXT,
  ALLOWED_TYPES,
  checkBodyHeaders,
  checkUpload,
  decodeUpload,
  filesFromMultipart,
  mediaType,
  requestBoundary,
  type CheckedUpload,
  type Upload,
} from './upload.js';

/** One entry of POST /api/inspect/batch's `results`. */
export type BatchEntry =
  | ({ index: number; file: string; ok: true } & InspectResult)
  | { index: number; file: string; ok: false; status: number; error: string };

/** Everything the handlers share: the model, the scheduler, the limits and the page. */
export interface Service {
  predictor: AnomalyPredictor;
  /** The predictor when it is a PredictorPool (its workers are reported by /api/health). */
  pool: PredictorPool | null;
  scheduler: InspectionScheduler;
  page: InspectionPage;
  startedAt: number;
  maxUploadBytes: number;
  maxPixels: number;
  maxBatchFiles: number;
  overlayAlpha: number;
}

export interface RequestContext {
  req: http.IncomingMessage;
  res: http.ServerResponse;
  url: URL;
}

export async function handlePage(svc: Service, { req, res }: RequestContext): Promise<void> {
  res.writeHead(200, {
    'Content-Type': 'text/html; charset=utf-8',
    'Content-Length': svc.page.html.length,
    'Content-Security-Policy': svc.page.csp,
    'Cache-Control': 'no-store',
    'Referrer-Policy': 'no-referrer',
    'X-Frame-Options': 'DENY',
  });
  res.end(req.method === 'HEAD' ? undefined : svc.page.html);
}

export async function handleHealth(svc: Service, { req, res }: RequestContext): Promise<void> {
  const stats = svc.scheduler.queue.stats();
  const body: Record<string, unknown> = {
    status: 'ok',
    uptime: (Date.now() - svc.startedAt) / 1000,
    queueDepth: stats.active + stats.waiting,
    uploading: svc.scheduler.receiving,
    queue: stats,
  };
  if (svc.pool) body.workers = svc.pool.stats() satisfies PoolStats;
  sendJson(req, res, 200, body);
}

export async function handleModel(svc: Service, { req, res }: RequestContext): Promise<void> {
  const { method, resolution, channels, imageThreshold, pixelThreshold, meta } = svc.predictor.info;
  sendJson(req, res, 200, { method, resolution, channels, imageThreshold, pixelThreshold, meta });
}

/** POST /api/inspect: one image, as a raw body or as the only file of a multipart body. */
export async function handleInspect(svc: Service, ctx: RequestContext): Promise<void> {
  const { req, res, url } = ctx;
  const contentType = req.headers['content-type'];
  const boundary = requestBoundary(contentType);
  const declared = boundary === undefined ? mediaType(contentType) : undefined;
  if (boundary === undefined && (!declared || ALLOWED_TYPES[declared] === undefined)) {
    throw new HttpError(
      415,
      `unsupported Content-Type ${declared ?? '(none)'}: send ${ACCEPTED_TYPES_TEXT} with one file`,
    );
  }
  const body = await receiveBody(svc, req);
  let upload: Upload;
  if (boundary === undefined) {
    upload = { name: 'upload', declared, data: body };
  } else {
    const files = await filesFromMultipart(body, boundary, svc.maxBatchFiles, svc.maxUploadBytes);
    if (files.length !== 1) {
      throw new HttpError(
        400,
        `expected exactly one file part, got ${files.length}` +
          (files.length > 1 ? ' (use /api/inspect/batch for several images)' : ' (no file field in the form)'),
      );
    }
    upload = files[0];
  }
  const checked = checkUpload(upload, boundary === undefined, svc.maxPixels);
  const raw = wantsRaw(url);
  const result = await svc.scheduler.run(res, async (signal) => {
    const img = await decodeUpload(checked);
    throwIfAborted(signal);
    const [p] = await predict(svc.predictor, [img], signal);
    throwIfAborted(signal);
    return renderInspection(img, p, svc.predictor.info, svc.overlayAlpha, raw);
  });
  sendJson(req, res, 200, result);
}

/** POST /api/inspect/batch: several file parts; one result or error entry per file, in upload order. */
export async function handleBatch(svc: Service, ctx: RequestContext): Promise<void> {
  const { req, res, url } = ctx;
  const boundary = requestBoundary(req.headers['content-type']);
  if (boundary === undefined) {
    throw new HttpError(415, 'batch uploads must be multipart/form-data with one file part per image');
  }
  const body = await receiveBody(svc, req);
  const files = await filesFromMultipart(body, boundary, svc.maxBatchFiles, svc.maxUploadBytes);
  if (files.length === 0) throw new HttpError(400, 'no file parts in the batch (no file field in the form)');
  const results: BatchEntry[] = new Array(files.length);
  const fail = (i: number, err: unknown): void => {
    const e = toHttpError(err);
    results[i] = { index: i, file: files[i].name, ok: false, status: e.status, error: e.message };
  };
  const checked: Array<CheckedUpload | null> = files.map((f, i) => {
    try {
      return checkUpload(f, false, svc.maxPixels);
    } catch (err) {
      fail(i, err);
      return null;
    }
  });
  if (checked.some((c) => c !== null)) {
    const raw = wantsRaw(url);
    await svc.scheduler.run(ctx.res, (signal) =>
      inspectChecked(svc, checked, signal, raw, {
        done: (i, r) => (results[i] = { index: i, file: files[i].name, ok: true, ...r }),
        fail,
      }),
    );
  }
  sendJson(req, res, 200, { count: results.length, results });
}

/**
 * Decodes, predicts and renders the checked uploads of a batch (null entries were refused already). Decoded
 * images are predicted in chunks of at most maxPixels pixels in total: batching without letting a large batch
 * hold every decoded image in memory at once. A failed multi-image call is retried image by image, so an error
 * lands on the right file.
 */
async function inspectChecked(
  svc: Service,
  checked: Array<CheckedUpload | null>,
  signal: AbortSignal,
  raw: boolean,
  out: { done: (i: number, r: InspectResult) => void; fail: (i: number, err: unknown) => void },
): Promise<void> {
  let chunk: Array<{ i: number; img: Image }> = [];
  let chunkPixels = 0;
  const flush = async (): Promise<void> => {
    const items = chunk;
    chunk = [];
    chunkPixels = 0;
    if (items.length === 0) return;
    throwIfAborted(signal);
    let preds: AnomalyPrediction[] | null = null;
    try {
      preds = await predict(
        svc.predictor,
        items.map((it) => it.img),
        signal,
      );
    } catch (err) {
      if (items.length === 1) return out.fail(items[0].i, err);
    }
    for (let k = 0; k < items.length; k++) {
      const { i, img } = items[k];
      try {
        const p = preds ? preds[k] : (await predict(svc.predictor, [img], signal))[0];
        out.done(i, await renderInspection(img, p, svc.predictor.info, svc.overlayAlpha, raw));
      } catch (err) {
        out.fail(i, err);
      }
    }
  };
  for (let i = 0; i < checked.length; i++) {
    const c = checked[i];
    if (c === null) continue;
    const px = c.width * c.height;
    if (chunk.length > 0 && chunkPixels + px > svc.maxPixels) await flush();
    throwIfAborted(signal);
    try {
      chunk.push({ i, img: await decodeUpload(c) });
      chunkPixels += px;
    } catch (err) {
      out.fail(i, err);
    }
  }
  await flush();
}

/**
 * Receives a request body after the checks that need none (Content-Encoding, declared length, a free queue
 * slot); the body limit is enforced while streaming.
 */
async function receiveBody(svc: Service, req: http.IncomingMessage): Promise<Buffer> {
  checkBodyHeaders(req, svc.maxUploadBytes);
  svc.scheduler.admit();
  return svc.scheduler.whileReceiving(() => readBody(req, svc.maxUploadBytes));
}

/** The predictor's answer for `images`, checked: a throwing or malformed predictor is 500. */
async function predict(
  predictor: AnomalyPredictor,
  images: Image[],
  signal: AbortSignal,
): Promise<AnomalyPrediction[]> {
  let out: AnomalyPrediction[];
  try {
    out = await predictor.predict(images, { signal });
  } catch (err) {
    throwIfAborted(signal);
    throw new HttpError(500, `prediction failed: ${errorMessage(err)}`);
  }
  if (!Array.isArray(out) || out.length !== images.length) {
    throw new HttpError(500, `prediction failed: predictor returned ${out?.length} results for ${images.length}`);
  }
  for (const p of out) {
    if (!p || !Number.isFinite(p.score) || !p.map || p.map.channels !== 1) {
      throw new HttpError(500, 'prediction failed: predictor returned a malformed prediction (score/map)');
    }
  }
  return out;
}

function wantsRaw(url: URL): boolean {
  const v = url.searchParams.get('raw');
  return v === '1' || v === 'true';
}
