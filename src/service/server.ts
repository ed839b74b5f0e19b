/**
 * The inspection service: an HTTP server (node:http only) that runs an AnomalyPredictor on uploaded images
 * and serves a small web page to drive it.
 *
 *   GET  /                     the web page (an in-memory string; no request path ever reaches the file system)
 *   GET  /api/health           { status: 'ok', uptime, queueDepth, uploading, queue: {...} }
 *   GET  /api/model            the predictor's ModelInfo
 *   POST /api/inspect          one image: raw bytes (Content-Type image/png|jpeg|bmp|tiff) or multipart/form-data
 *                              with exactly one file part. ?raw=1 adds the float anomaly map.
 *   POST /api/inspect/batch    multipart/form-data with several file parts; one result (or error entry) per file,
 *                              in upload order. ?raw=1 as above.
 *   GET  /api/model.onnx, /api/model.onnx.json, /ort/...   with `browserModel`: in-browser inspection
 *
 * Hardening: the body limit is enforced while streaming (413, reading stops, the connection is closed); the
 * declared Content-Type and the magic bytes are checked (415); the pixel count declared in the image header is
 * checked before any decoder runs (413); undecodable data is 422; every error is JSON `{ error }` with a 4xx/5xx
 * code; unknown routes are 404 and wrong methods 405 (with Allow). Decoding, prediction and rendering run inside a
 * BoundedQueue so memory and CPU stay bounded: when it is full the answer is 503 with Retry-After. Receiving a
 * request, waiting in the queue and predicting all have time limits. A throwing predictor gives a 500 and the
 * server keeps serving.
 *
 * With a PredictorPool as the predictor (anoseg serve), the network runs in worker threads: this thread keeps
 * answering (health checks, uploads, timeouts) while jobs compute, the queue runs one job per worker, and a job
 * past its deadline is abandoned: the pool terminates its worker and starts a fresh one, the client gets 504 and
 * the next job takes the slot at once. An in-process predictor blocks this thread while it computes, and a started
 * job then runs to its end (its answer is dropped).
 */
import http from 'node:http';
import os from 'node:os';
import type { AddressInfo } from 'node:net';
import {
  decodeImage,
  encodePng,
  ImageReadError,
  MAX_INPUT_PIXELS,
  sniffFormat,
  type ImageFormat,
} from '../image/io.js';
import type { Image } from '../image/types.js';
import { heatmap, overlay } from '../image/visual.js';
import type { AnomalyPrediction, AnomalyPredictor } from '../models/predictor.js';
import { PredictorPool, type PoolStats } from '../models/predictor-pool.js';
import { readImageSize } from './image-header.js';
import {
  DEFAULT_MULTIPART_LIMITS,
  MultipartError,
  multipartBoundary,
  parseHeaderValue,
  parseMultipart,
} from './multipart.js';
import { browserInferenceRoutes } from './browser-inference.js';
import { PAGE_CSP, PAGE_HTML } from './page.js';
import { BoundedQueue, QueueAbortedError, QueueFullError } from './queue.js';

export interface InspectionServerOptions {
  predictor: AnomalyPredictor;
  /** Largest accepted request body in bytes (whole multipart body for uploads). Default 20 MB. */
  maxUploadBytes?: number;
  /** Largest accepted image, in pixels, read from the image header before decoding. Default 40e6 (capped at the
   * decoder's MAX_INPUT_PIXELS). */
  maxPixels?: number;
  /** Requests allowed to wait for a prediction slot; more get 503. Default 16. */
  maxQueue?: number;
  /** Predictions (decode + predict + render) running at the same time. Default: the pool's workers, or 1. */
  concurrency?: number;
  /** Most files in one batch request. Default 16. */
  maxBatchFiles?: number;
  /** Time allowed to receive the request headers, ms. Default 15 s. */
  headersTimeoutMs?: number;
  /** Time allowed to receive a whole request (headers and body), ms. Default 60 s. */
  requestTimeoutMs?: number;
  /** Time allowed from a received upload to its answer (queue wait + prediction), ms. Default 120 s. */
  inspectTimeoutMs?: number;
  /** Heatmap opacity in the overlay image, in [0, 1]. Default 0.5. */
  overlayAlpha?: number;
  /** The served model as ONNX (anoseg export): enables the page's in-browser mode (see browser-inference.ts). */
  browserModel?: { onnx: Uint8Array; name: string };
}

export interface InspectionServer {
  server: http.Server;
  /** The prediction queue (for monitoring). */
  queue: BoundedQueue;
  /** Starts listening; resolves with the base URL, e.g. http://127.0.0.1:41234. Port 0 = any free port. */
  listen(port?: number, host?: string): Promise<string>;
  /**
   * Stops accepting connections, rejects waiting jobs, lets running ones finish and closes all connections.
   * The predictor belongs to the caller and is not disposed.
   */
  close(): Promise<void>;
}

/** Result of inspecting one image (the JSON body of POST /api/inspect). */
export interface InspectResult {
  score: number;
  verdict: 'defective' | 'good';
  /** The image-score threshold the verdict used (ModelInfo.imageThreshold). */
  threshold: number;
  /** The pixel threshold the mask used (ModelInfo.pixelThreshold). */
  pixelThreshold: number;
  width: number;
  height: number;
  /** Fraction of pixels in the mask (map >= pixelThreshold). */
  maskFraction: number;
  /** Map values shown from the first to the last heatmap colour (see heatmapRange()). */
  heatmapRange: [number, number];
  /** Base64 PNGs at the input size: turbo-coloured map, the map blended over the image, the binary mask. */
  heatmapPng: string;
  overlayPng: string;
  maskPng: string;
  /** Only with ?raw=1: the anomaly map as little-endian float32, row-major, shape [height, width]. */
  rawMap?: RawMap;
}

export interface RawMap {
  shape: [number, number];
  dtype: 'float32';
  byteOrder: 'little';
  min: number;
  max: number;
  /** Base64 of height * width little-endian float32 values. */
  data: string;
}

/** One entry of POST /api/inspect/batch's `results`. */
export type BatchEntry =
  | ({ index: number; file: string; ok: true } & InspectResult)
  | { index: number; file: string; ok: false; status: number; error: string };

const MB = 1024 * 1024;
const ALLOWED_TYPES: Record<string, ImageFormat> = {
  'image/png': 'png',
  'image/jpeg': 'jpeg',
  'image/jpg': 'jpeg',
  'image/pjpeg': 'jpeg',
  'image/bmp': 'bmp',
  'image/x-bmp': 'bmp',
  'image/x-ms-bmp': 'bmp',
  'image/tiff': 'tiff',
  'image/tif': 'tiff',
};
const FORMAT_NAMES: Record<ImageFormat, string> = { png: 'PNG', jpeg: 'JPEG', bmp: 'BMP', tiff: 'TIFF' };
const ACCEPTED_TYPES_TEXT = 'image/png, image/jpeg, image/bmp, image/tiff or multipart/form-data';

/** An error that becomes a JSON response with this status. */
export class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
    this.name = 'HttpError';
  }
}

class ClientGoneError extends Error {}

interface Upload {
  name: string;
  /** Declared type, lower-cased without parameters (header or part Content-Type). */
  declared?: string;
  data: Buffer;
}

interface CheckedUpload extends Upload {
  format: ImageFormat;
  width: number;
  height: number;
}

interface Route {
  methods: string[];
  handler: (ctx: RequestContext) => Promise<void>;
}

interface RequestContext {
  req: http.IncomingMessage;
  res: http.ServerResponse;
  url: URL;
}

export function createInspectionServer(opts: InspectionServerOptions): InspectionServer {
  const predictor = opts.predictor;
  if (!predictor || typeof predictor.predict !== 'function' || !predictor.info) {
    throw new TypeError('createInspectionServer: a predictor (AnomalyPredictor) is required');
  }
  const maxUploadBytes = positive('maxUploadBytes', opts.maxUploadBytes ?? 20 * MB);
  // The decoder has its own hard cap; a larger maxPixels could never be honoured.
  const maxPixels = Math.min(positive('maxPixels', opts.maxPixels ?? 40e6), MAX_INPUT_PIXELS);
  const maxBatchFiles = positive('maxBatchFiles', opts.maxBatchFiles ?? 16);
  const requestTimeoutMs = positive('requestTimeoutMs', opts.requestTimeoutMs ?? 60_000);
  // node:http requires headersTimeout <= requestTimeout.
  const headersTimeoutMs = Math.min(positive('headersTimeoutMs', opts.headersTimeoutMs ?? 15_000), requestTimeoutMs);
  const inspectTimeoutMs = positive('inspectTimeoutMs', opts.inspectTimeoutMs ?? 120_000);
  const overlayAlpha = opts.overlayAlpha ?? 0.5;
  if (!(overlayAlpha >= 0 && overlayAlpha <= 1)) throw new RangeError('overlayAlpha must be in [0, 1]');
  const pool = predictor instanceof PredictorPool ? predictor : null;
  const queue = new BoundedQueue({ concurrency: opts.concurrency ?? pool?.size ?? 1, maxQueue: opts.maxQueue ?? 16 });
  const startedAt = Date.now();
  /** Requests being answered, and whether close() was called (then the last answer closes all connections). */
  let inFlight = 0;
  let closing = false;
  /** Request bodies being received. */
  let receiving = 0;
  /** Moving average of job durations, for Retry-After. */
  let avgJobMs = 1000;

  const runJob = <T>(job: () => Promise<T>, signal: AbortSignal): Promise<T> =>
    queue.run(async () => {
      const t0 = Date.now();
      try {
        return await job();
      } finally {
        avgJobMs = 0.8 * avgJobMs + 0.2 * (Date.now() - t0);
      }
    }, signal);

  const retryAfterSeconds = (): string => {
    const ahead = queue.active + queue.waiting;
    const seconds = Math.ceil((avgJobMs * Math.max(1, ahead)) / queue.concurrency / 1000);
    return String(Math.min(60, Math.max(1, seconds)));
  };

  const busyError = (): HttpError =>
    new HttpError(503, `server busy: ${queue.active} running, ${queue.waiting} waiting; retry later`, {
      'Retry-After': retryAfterSeconds(),
    });

  // ------------------------------------------------------------------------------------------- upload checks

  /** Magic bytes, declared type and header-declared size; throws HttpError 415/413/422. Cheap, runs before queueing. */
  const checkUpload = (u: Upload, requireDeclaredMatch: boolean): CheckedUpload => {
    if (u.data.length === 0) throw new HttpError(400, `${u.name}: empty upload`);
    const format = sniffFormat(u.data);
    if (format === null) {
      throw new HttpError(
        415,
        `${u.name}: not a PNG, JPEG, BMP or TIFF image (unrecognised magic bytes ${hexPrefix(u.data)})`,
      );
    }
    const declaredFormat = u.declared ? ALLOWED_TYPES[u.declared] : undefined;
    if (u.declared && declaredFormat === undefined && u.declared !== 'application/octet-stream') {
      throw new HttpError(415, `${u.name}: unsupported content type ${u.declared} (expected ${ACCEPTED_TYPES_TEXT})`);
    }
    if (requireDeclaredMatch && declaredFormat !== undefined && declaredFormat !== format) {
      throw new HttpError(
        415,
        `${u.name}: Content-Type ${u.declared} does not match the data, which is ${FORMAT_NAMES[format]}`,
      );
    }
    const size = readImageSize(u.data, format);
    if (size === null) throw new HttpError(422, `${u.name}: corrupt ${FORMAT_NAMES[format]} header (no image size)`);
    const pixels = size.width * size.height;
    if (pixels > maxPixels) {
      throw new HttpError(
        413,
        `${u.name}: image of ${size.width}x${size.height} = ${pixels} pixels exceeds the limit of ${maxPixels} pixels`,
      );
    }
    return { ...u, format, width: size.width, height: size.height };
  };

  const decode = async (u: CheckedUpload): Promise<Image> => {
    try {
      const img = await decodeImage(u.data, { name: u.name });
      if (img.width !== u.width || img.height !== u.height) {
        throw new HttpError(422, `${u.name}: decoded size ${img.width}x${img.height} differs from its header`);
      }
      return img;
    } catch (err) {
      if (err instanceof HttpError) throw err;
      if (err instanceof ImageReadError) {
        const status = err.reason.startsWith('too large')
          ? 413
          : err.reason.startsWith('unsupported format')
            ? 415
            : 422;
        throw new HttpError(status, `${u.name}: ${err.reason}`);
      }
      throw new HttpError(422, `${u.name}: cannot decode image (${errorMessage(err)})`);
    }
  };

  const predict = async (images: Image[], signal: AbortSignal): Promise<AnomalyPrediction[]> => {
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
  };

  const render = async (img: Image, p: AnomalyPrediction, raw: boolean): Promise<InspectResult> => {
    const info = predictor.info;
    const map = p.map.height === img.height && p.map.width === img.width ? p.map : resizeMap(p.map, img);
    const n = map.width * map.height;
    const mask: Image = { channels: 1, height: map.height, width: map.width, data: new Float32Array(n) };
    let inMask = 0;
    let min = Infinity;
    let max = -Infinity;
    for (let i = 0; i < n; i++) {
      const v = map.data[i];
      if (v >= info.pixelThreshold) {
        mask.data[i] = 1;
        inMask++;
      }
      if (v < min) min = v;
      if (v > max) max = v;
    }
    let heatPng: Buffer, overPng: Buffer, maskPng: Buffer;
    try {
      const shown = scaleMap(map, heatmapRange(info.pixelThreshold));
      [heatPng, overPng, maskPng] = await Promise.all([
        encodePng(heatmap(shown)),
        encodePng(overlay(img, shown, overlayAlpha)),
        encodePng(mask),
      ]);
    } catch (err) {
      throw new HttpError(500, `rendering failed: ${errorMessage(err)}`);
    }
    const result: InspectResult = {
      score: p.score,
      verdict: p.score >= info.imageThreshold ? 'defective' : 'good',
      threshold: info.imageThreshold,
      pixelThreshold: info.pixelThreshold,
      width: img.width,
      height: img.height,
      maskFraction: inMask / n,
      heatmapRange: [0, heatmapRange(info.pixelThreshold)],
      heatmapPng: heatPng.toString('base64'),
      overlayPng: overPng.toString('base64'),
      maskPng: maskPng.toString('base64'),
    };
    if (raw) {
      result.rawMap = {
        shape: [map.height, map.width],
        dtype: 'float32',
        byteOrder: 'little',
        min: Number.isFinite(min) ? min : 0,
        max: Number.isFinite(max) ? max : 0,
        data: float32LeBase64(map.data),
      };
    }
    return result;
  };

  /**
   * Runs `job` through the queue under the inspect deadline. Waiting is cancelled when the client goes away or
   * the deadline passes; a started job gets the aborted signal (a pool abandons its prediction and frees the slot;
   * an in-process predictor runs to its end and its result is dropped).
   */
  const inQueue = async <T>(ctx: RequestContext, job: (signal: AbortSignal) => Promise<T>): Promise<T> => {
    const ac = new AbortController();
    let started = false;
    const onClose = (): void => {
      if (!ctx.res.writableFinished) ac.abort(new ClientGoneError('client went away'));
    };
    ctx.res.on('close', onClose);
    const timer = setTimeout(() => {
      ac.abort(
        started
          ? new HttpError(504, `inspection timed out after ${inspectTimeoutMs} ms`)
          : new HttpError(503, `timed out after ${inspectTimeoutMs} ms waiting in the queue`, {
              'Retry-After': retryAfterSeconds(),
            }),
      );
    }, inspectTimeoutMs);
    timer.unref();
    try {
      const running = runJob(() => {
        started = true;
        return job(ac.signal);
      }, ac.signal);
      running.catch(() => undefined); // settled later when abandoned: never an unhandled rejection
      return await raceAbort(running, ac.signal);
    } catch (err) {
      if (err instanceof QueueFullError) throw busyError();
      if (err instanceof QueueAbortedError && !ac.signal.aborted) throw new HttpError(503, err.message);
      throw err;
    } finally {
      clearTimeout(timer);
      ctx.res.off('close', onClose);
    }
  };

  // ------------------------------------------------------------------------------------------- handlers

  const handlePage = async ({ res, req }: RequestContext): Promise<void> => {
    const body = Buffer.from(PAGE_HTML, 'utf8');
    res.writeHead(200, {
      'Content-Type': 'text/html; charset=utf-8',
      'Content-Length': body.length,
      'Content-Security-Policy': PAGE_CSP,
      'Cache-Control': 'no-store',
      'Referrer-Policy': 'no-referrer',
      'X-Frame-Options': 'DENY',
    });
    res.end(req.method === 'HEAD' ? undefined : body);
  };

  const handleHealth = async ({ req, res }: RequestContext): Promise<void> => {
    const stats = queue.stats();
    const body: Record<string, unknown> = {
      status: 'ok',
      uptime: (Date.now() - startedAt) / 1000,
      queueDepth: stats.active + stats.waiting,
      uploading: receiving,
      queue: stats,
    };
    if (pool) body.workers = pool.stats() satisfies PoolStats;
    sendJson(req, res, 200, body);
  };

  const handleModel = async ({ req, res }: RequestContext): Promise<void> => {
    const { method, resolution, channels, imageThreshold, pixelThreshold, meta } = predictor.info;
    sendJson(req, res, 200, { method, resolution, channels, imageThreshold, pixelThreshold, meta });
  };

  const handleInspect = async (ctx: RequestContext): Promise<void> => {
    const { req, res, url } = ctx;
    const raw = wantsRaw(url);
    const contentType = req.headers['content-type'];
    const boundary = parseMultipartType(contentType);
    let declared: string | undefined;
    if (boundary === undefined) {
      declared = contentType ? safeType(contentType) : undefined;
      if (!declared || ALLOWED_TYPES[declared] === undefined) {
        throw new HttpError(
          415,
          `unsupported Content-Type ${declared ?? '(none)'}: send ${ACCEPTED_TYPES_TEXT} with one file`,
        );
      }
    }
    precheckBody(req);
    const body = await receive(req);
    let upload: Upload;
    if (boundary === undefined) {
      upload = { name: 'upload', declared, data: body };
    } else {
      const files = filesFromMultipart(body, boundary, maxBatchFiles);
      if (files.length !== 1) {
        throw new HttpError(
          400,
          `expected exactly one file part, got ${files.length}` +
            (files.length > 1 ? ' (use /api/inspect/batch for several images)' : ''),
        );
      }
      upload = files[0];
    }
    const checked = checkUpload(upload, boundary === undefined);
    const result = await inQueue(ctx, async (signal) => {
      const img = await decode(checked);
      throwIfAborted(signal);
      const [p] = await predict([img], signal);
      throwIfAborted(signal);
      return render(img, p, raw);
    });
    sendJson(req, res, 200, result);
  };

  const handleBatch = async (ctx: RequestContext): Promise<void> => {
    const { req, res, url } = ctx;
    const raw = wantsRaw(url);
    const boundary = parseMultipartType(req.headers['content-type']);
    if (boundary === undefined) {
      throw new HttpError(415, 'batch uploads must be multipart/form-data with one file part per image');
    }
    precheckBody(req);
    const body = await receive(req);
    const files = filesFromMultipart(body, boundary, maxBatchFiles);
    if (files.length === 0) throw new HttpError(400, 'no file parts in the batch');
    const results: BatchEntry[] = new Array(files.length);
    const fail = (i: number, err: unknown): void => {
      const e = toHttpError(err);
      results[i] = { index: i, file: files[i].name, ok: false, status: e.status, error: e.message };
    };
    const checked: Array<CheckedUpload | null> = files.map((f, i) => {
      try {
        return checkUpload(f, false);
      } catch (err) {
        fail(i, err);
        return null;
      }
    });
    if (checked.some((c) => c !== null)) {
      await inQueue(ctx, async (signal) => {
        // Decoded images are predicted in chunks of at most maxPixels pixels in total: batching without
        // letting a large batch hold every decoded image in memory at once.
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
              items.map((it) => it.img),
              signal,
            );
          } catch (err) {
            if (items.length === 1) fail(items[0].i, err);
          }
          for (let k = 0; k < items.length; k++) {
            const { i, img } = items[k];
            if (results[i]) continue;
            try {
              // A failed multi-image call is retried image by image so the error lands on the right file.
              const p = preds ? preds[k] : (await predict([img], signal))[0];
              results[i] = { index: i, file: files[i].name, ok: true, ...(await render(img, p, raw)) };
            } catch (err) {
              fail(i, err);
            }
          }
        };
        for (let i = 0; i < checked.length; i++) {
          const c = checked[i];
          if (c === null) continue;
          const px = c.width * c.height;
          if (chunk.length > 0 && chunkPixels + px > maxPixels) await flush();
          throwIfAborted(signal);
          try {
            chunk.push({ i, img: await decode(c) });
            chunkPixels += px;
          } catch (err) {
            fail(i, err);
          }
        }
        await flush();
      });
    }
    sendJson(req, res, 200, { count: results.length, results });
  };

  const routes: Record<string, Route> = {
    '/': { methods: ['GET', 'HEAD'], handler: handlePage },
    '/api/health': { methods: ['GET', 'HEAD'], handler: handleHealth },
    '/api/model': { methods: ['GET', 'HEAD'], handler: handleModel },
    '/api/inspect': { methods: ['POST'], handler: handleInspect },
    '/api/inspect/batch': { methods: ['POST'], handler: handleBatch },
    ...(opts.browserModel ? browserInferenceRoutes(opts.browserModel.onnx, opts.browserModel.name, overlayAlpha) : {}),
  };

  // ------------------------------------------------------------------------------------------- plumbing

  async function receive(req: http.IncomingMessage): Promise<Buffer> {
    receiving++;
    try {
      return await readBody(req, maxUploadBytes);
    } finally {
      receiving--;
    }
  }

  /** Rejections that need no body: encoded bodies, declared oversize, full queue. */
  function precheckBody(req: http.IncomingMessage): void {
    const encoding = req.headers['content-encoding'];
    if (encoding && encoding.trim().toLowerCase() !== 'identity') {
      throw new HttpError(415, `Content-Encoding ${encoding} is not supported; send the image bytes unencoded`);
    }
    const length = req.headers['content-length'];
    if (length !== undefined && Number(length) > maxUploadBytes) {
      throw new HttpError(413, `request body of ${length} bytes exceeds the upload limit of ${maxUploadBytes} bytes`);
    }
    // Uploads being received count against the queue too: at most concurrency + maxQueue request bodies are held
    // in memory at once (each <= maxUploadBytes), however many clients connect.
    if (queue.full || receiving + queue.active + queue.waiting >= queue.concurrency + queue.maxQueue) throw busyError();
  }

  function filesFromMultipart(body: Buffer, boundary: string, maxFiles: number): Upload[] {
    let parts;
    try {
      parts = parseMultipart(body, boundary, { ...DEFAULT_MULTIPART_LIMITS, maxParts: maxFiles });
    } catch (err) {
      if (err instanceof MultipartError) {
        const tooMany = err.message.startsWith('too many multipart parts');
        throw new HttpError(
          tooMany ? 413 : 400,
          tooMany ? `too many files: at most ${maxFiles} per request` : `bad multipart body: ${err.message}`,
        );
      }
      throw err;
    }
    return parts.map((p, i) => {
      if (p.filename === undefined) {
        throw new HttpError(400, `multipart field '${p.name}' is not a file; only file parts are accepted`);
      }
      return { name: p.filename || `file ${i + 1}`, declared: p.contentType, data: p.data };
    });
  }

  async function handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    let url: URL;
    try {
      url = new URL(req.url ?? '/', 'http://localhost');
    } catch {
      throw new HttpError(400, 'malformed request URL');
    }
    const route = Object.prototype.hasOwnProperty.call(routes, url.pathname) ? routes[url.pathname] : undefined;
    if (!route) throw new HttpError(404, `not found: ${truncate(url.pathname, 200)}`);
    const method = req.method ?? 'GET';
    if (!route.methods.includes(method)) {
      throw new HttpError(405, `method ${truncate(method, 20)} not allowed on ${url.pathname}`, {
        Allow: route.methods.join(', '),
      });
    }
    await route.handler({ req, res, url });
  }

  const server = http.createServer(
    {
      maxHeaderSize: 16 * 1024,
      requestTimeout: requestTimeoutMs,
      headersTimeout: headersTimeoutMs,
      // How often node:http looks for requests past their timeouts (its default, 30 s, would stretch short limits).
      connectionsCheckingInterval: Math.max(50, Math.min(1000, Math.floor(headersTimeoutMs / 4))),
    },
    (req, res) => {
      inFlight++;
      res.once('close', () => {
        inFlight--;
        if (closing && inFlight === 0) server.closeAllConnections();
      });
      res.setHeader('X-Content-Type-Options', 'nosniff');
      handle(req, res).catch((err: unknown) => {
        if (err instanceof ClientGoneError || res.destroyed) {
          req.destroy();
          return;
        }
        const e = toHttpError(err);
        if (e.status >= 500 && !(err instanceof HttpError)) console.error('inspection server: unexpected error', err);
        sendError(req, res, e);
      });
    },
  );
  server.maxHeadersCount = 64;
  server.keepAliveTimeout = 5000;
  // Malformed requests and receive timeouts: answer JSON like every other error. As node:http's default handler
  // does, only when nothing of a response has been written to the socket yet.
  server.on('clientError', (err: NodeJS.ErrnoException, socket) => {
    const inProgress = (socket as { _httpMessage?: { headersSent?: boolean } })._httpMessage;
    if (!socket.writable || inProgress?.headersSent) {
      socket.destroy();
      return;
    }
    const status = err.code === 'HPE_HEADER_OVERFLOW' ? 431 : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 408 : 400;
    const text = status === 431 ? 'request headers too large' : status === 408 ? 'request timed out' : 'bad request';
    const body = JSON.stringify({ error: text });
    socket.end(
      `HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\nContent-Type: application/json; charset=utf-8\r\n` +
        `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
    );
  });

  return {
    server,
    queue,
    listen(port = 0, host = '127.0.0.1') {
      return new Promise((resolve, reject) => {
        const onError = (err: Error): void => reject(err);
        server.once('error', onError);
        server.listen(port, host, () => {
          server.off('error', onError);
          const addr = server.address() as AddressInfo;
          const h = addr.family === 'IPv6' || addr.address.includes(':') ? `[${addr.address}]` : addr.address;
          resolve(`http://${h}:${addr.port}`);
        });
      });
    },
    close() {
      closing = true;
      queue.drainWaiting();
      return new Promise((resolve) => {
        if (!server.listening) {
          server.closeAllConnections();
          resolve();
          return;
        }
        server.close(() => resolve());
        if (inFlight === 0) {
          server.closeAllConnections();
          return;
        }
        // Requests still being answered get a grace period (their connections close when the last one is done),
        // then every connection is cut.
        server.closeIdleConnections();
        const t = setTimeout(() => server.closeAllConnections(), 5000);
        t.unref();
        server.once('close', () => clearTimeout(t));
      });
    },
  };
}

// ------------------------------------------------------------------------------------------- helpers

/**
 * The map range the heatmap colours span: [0, max(1, 2 * pixelThreshold)]. Maps in [0, 1] (the usual case) are
 * shown as they are; unbounded maps (e.g. Mahalanobis distances) get a fixed, model-wide scale with the pixel
 * threshold in the middle, so colours mean the same on every image (no per-image normalisation).
 */
export function heatmapRange(pixelThreshold: number): number {
  return Math.max(1, 2 * pixelThreshold);
}

function scaleMap(map: Image, range: number): Image {
  if (range === 1) return map;
  const data = new Float32Array(map.data.length);
  for (let i = 0; i < data.length; i++) data[i] = map.data[i] / range;
  return { channels: 1, height: map.height, width: map.width, data };
}

function positive(name: string, v: number): number {
  if (!(Number.isFinite(v) && v > 0)) throw new RangeError(`createInspectionServer: ${name} must be > 0, got ${v}`);
  return v;
}

function errorMessage(err: unknown): string {
  const msg = err instanceof Error ? err.message : String(err);
  return truncate(msg.split('\n')[0], 500);
}

function truncate(s: string, n: number): string {
  return s.length > n ? `${s.slice(0, n)}...` : s;
}

function hexPrefix(buf: Buffer): string {
  return buf.subarray(0, 8).toString('hex').replace(/(..)/g, '$1 ').trim();
}

function toHttpError(err: unknown): HttpError {
  if (err instanceof HttpError) return err;
  return new HttpError(500, `internal error: ${errorMessage(err)}`);
}

function wantsRaw(url: URL): boolean {
  const v = url.searchParams.get('raw');
  return v === '1' || v === 'true';
}

function safeType(contentType: string): string | undefined {
  try {
    return parseHeaderValue(contentType).type || undefined;
  } catch {
    return undefined;
  }
}

function parseMultipartType(contentType: string | undefined): string | undefined {
  try {
    return multipartBoundary(contentType);
  } catch (err) {
    throw new HttpError(400, `bad multipart Content-Type: ${errorMessage(err)}`);
  }
}

function throwIfAborted(signal: AbortSignal): void {
  if (signal.aborted) throw signal.reason instanceof Error ? signal.reason : new ClientGoneError('aborted');
}

function raceAbort<T>(p: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
    p.then(
      (v) => {
        signal.removeEventListener('abort', onAbort);
        resolve(v);
      },
      (err: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(err);
      },
    );
  });
}

/** Bilinear resize of a map whose size differs from its image (the contract says it should not, but be tolerant). */
function resizeMap(map: Image, img: Image): Image {
  const out = new Float32Array(img.width * img.height);
  const sx = map.width / img.width;
  const sy = map.height / img.height;
  for (let y = 0; y < img.height; y++) {
    const fy = Math.min(Math.max((y + 0.5) * sy - 0.5, 0), map.height - 1);
    const y0 = Math.floor(fy);
    const y1 = Math.min(y0 + 1, map.height - 1);
    const ty = fy - y0;
    for (let x = 0; x < img.width; x++) {
      const fx = Math.min(Math.max((x + 0.5) * sx - 0.5, 0), map.width - 1);
      const x0 = Math.floor(fx);
      const x1 = Math.min(x0 + 1, map.width - 1);
      const tx = fx - x0;
      const d = map.data;
      const top = d[y0 * map.width + x0] * (1 - tx) + d[y0 * map.width + x1] * tx;
      const bottom = d[y1 * map.width + x0] * (1 - tx) + d[y1 * map.width + x1] * tx;
      out[y * img.width + x] = top * (1 - ty) + bottom * ty;
    }
  }
  return { channels: 1, height: img.height, width: img.width, data: out };
}

function float32LeBase64(data: Float32Array): string {
  if (os.endianness() === 'LE') return Buffer.from(data.buffer, data.byteOffset, data.byteLength).toString('base64');
  const buf = Buffer.alloc(data.length * 4);
  for (let i = 0; i < data.length; i++) buf.writeFloatLE(data[i], i * 4);
  return buf.toString('base64');
}

/**
 * Collects a request body, enforcing `limit` while streaming: the moment it is exceeded, reading stops and the
 * promise rejects with 413 (the error response then closes the connection).
 */
function readBody(req: http.IncomingMessage, limit: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let settled = false;
    const cleanup = (): void => {
      req.off('data', onData);
      req.off('end', onEnd);
      req.off('error', onError);
      req.off('close', onClose);
    };
    const settle = (fn: () => void): void => {
      if (settled) return;
      settled = true;
      cleanup();
      fn();
    };
    const onData = (chunk: Buffer): void => {
      size += chunk.length;
      if (size > limit) {
        req.pause();
        chunks.length = 0;
        settle(() =>
          reject(new HttpError(413, `request body exceeds the upload limit of ${limit} bytes; upload stopped`)),
        );
        return;
      }
      chunks.push(chunk);
    };
    const onEnd = (): void => settle(() => resolve(Buffer.concat(chunks, size)));
    const onError = (): void => settle(() => reject(new ClientGoneError('request stream error')));
    const onClose = (): void => {
      if (!req.complete) settle(() => reject(new ClientGoneError('client aborted the upload')));
    };
    req.on('data', onData);
    req.on('end', onEnd);
    req.on('error', onError);
    req.on('close', onClose);
  });
}

function sendJson(req: http.IncomingMessage, res: http.ServerResponse, status: number, value: unknown): void {
  const body = Buffer.from(JSON.stringify(value), 'utf8');
  res.writeHead(status, {
    'Content-Type': 'application/json; charset=utf-8',
    'Content-Length': body.length,
    'Cache-Control': 'no-store',
  });
  res.end(req.method === 'HEAD' ? undefined : body);
}

/**
 * Sends `{ error }`. When the request body was not (fully) read, the connection is closed after the answer, so a
 * client still uploading is cut off instead of the server reading (or the socket buffering) the rest.
 */
function sendError(req: http.IncomingMessage, res: http.ServerResponse, err: HttpError): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  for (const [k, v] of Object.entries(err.headers)) res.setHeader(k, v);
  const unread = !req.complete;
  if (unread) res.setHeader('Connection', 'close');
  sendJson(req, res, err.status, { error: err.message });
  if (unread) {
    res.on('finish', () => {
      // Give the client a moment to read the answer before the socket (with unread upload data) is destroyed.
      const t = setTimeout(() => req.socket.destroy(), 500);
      t.unref();
      req.socket.once('close', () => clearTimeout(t));
    });
  }
}
