/**
 * The inspection service: an HTTP server (node:http only) that runs an AnomalyPredictor on uploaded images
 * and serves a small web page to drive it.
 *
 *   GET  /                     the web page (src/service/page/, read once at start-up; no request path ever
 *                              reaches the file system)
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
 * Modules: upload.ts (limits, image header checks, decoding; multipart bodies via multipart.ts, i.e. busboy),
 * render.ts (the JSON result and its PNGs; heatmaps drawn by src/image/anomaly-render.ts, shared with
 * `anoseg predict`), scheduler.ts over queue.ts (admission, deadlines, 503/504), handlers.ts and routes.ts (the
 * endpoints), http.ts (errors, bodies, JSON answers), page.ts (the web page). This file puts them together.
 *
 * With a PredictorPool as the predictor (anoseg serve), the network runs in worker threads: this thread keeps
 * answering (health checks, uploads, timeouts) while jobs compute, the queue runs one job per worker, and a job
 * past its deadline is abandoned: the pool terminates its worker and starts a fresh one, the client gets 504 and
 * the next job takes the slot at once. An in-process predictor blocks this thread while it computes, and a started
 * job then runs to its end (its answer is dropped).
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { DEFAULT_OVERLAY_ALPHA } from '../image/anomaly-render.js';
import { MAX_INPUT_PIXELS } from '../image/io.js';
import type { AnomalyPredictor } from '../models/predictor.js';
import { PredictorPool } from '../models/predictor-pool.js';
import type { Service } from './handlers.js';
import { answerClientError, ClientGoneError, HttpError, sendError, toHttpError } from './http.js';
import { inspectionPage } from './page.js';
import type { BoundedQueue } from './queue.js';
import { dispatch, serviceRoutes } from './routes.js';
import { InspectionScheduler } from './scheduler.js';

export { heatmapRange } from '../image/anomaly-render.js';
export type { BatchEntry } from './handlers.js';
export { HttpError } from './http.js';
export type { InspectResult, RawMap } from './render.js';

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
  /** Heatmap opacity in the overlay image, in [0, 1]. Default 0.5 (as `anoseg predict` draws it). */
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

const MB = 1024 * 1024;

interface Timeouts {
  headersTimeoutMs: number;
  requestTimeoutMs: number;
}

/** The options checked and completed with their defaults. */
function resolveOptions(opts: InspectionServerOptions): { service: Service; timeouts: Timeouts } {
  const predictor = opts.predictor;
  if (!predictor || typeof predictor.predict !== 'function' || !predictor.info) {
    throw new TypeError('createInspectionServer: a predictor (AnomalyPredictor) is required');
  }
  const requestTimeoutMs = positive('requestTimeoutMs', opts.requestTimeoutMs ?? 60_000);
  // node:http requires headersTimeout <= requestTimeout.
  const headersTimeoutMs = Math.min(positive('headersTimeoutMs', opts.headersTimeoutMs ?? 15_000), requestTimeoutMs);
  const inspectTimeoutMs = positive('inspectTimeoutMs', opts.inspectTimeoutMs ?? 120_000);
  const overlayAlpha = opts.overlayAlpha ?? DEFAULT_OVERLAY_ALPHA;
  if (!(overlayAlpha >= 0 && overlayAlpha <= 1)) throw new RangeError('overlayAlpha must be in [0, 1]');
  const pool = predictor instanceof PredictorPool ? predictor : null;
  const service: Service = {
    predictor,
    pool,
    scheduler: new InspectionScheduler(opts.concurrency ?? pool?.size ?? 1, opts.maxQueue ?? 16, inspectTimeoutMs),
    page: inspectionPage(),
    startedAt: Date.now(),
    maxUploadBytes: positive('maxUploadBytes', opts.maxUploadBytes ?? 20 * MB),
    // The decoder has its own hard cap; a larger maxPixels could never be honoured.
    maxPixels: Math.min(positive('maxPixels', opts.maxPixels ?? 40e6), MAX_INPUT_PIXELS),
    maxBatchFiles: positive('maxBatchFiles', opts.maxBatchFiles ?? 16),
    overlayAlpha,
  };
  return { service, timeouts: { headersTimeoutMs, requestTimeoutMs } };
}

export function createInspectionServer(opts: InspectionServerOptions): InspectionServer {
  const { service, timeouts } = resolveOptions(opts);
  const routes = serviceRoutes(service, opts.browserModel);
  /** Requests being answered, and whether close() was called (then the last answer closes all connections). */
  let inFlight = 0;
  let closing = false;

  const server = http.createServer(
    {
      maxHeaderSize: 16 * 1024,
      requestTimeout: timeouts.requestTimeoutMs,
      headersTimeout: timeouts.headersTimeoutMs,
      // How often node:http looks for requests past their timeouts (its default, 30 s, would stretch short limits).
      connectionsCheckingInterval: Math.max(50, Math.min(1000, Math.floor(timeouts.headersTimeoutMs / 4))),
    },
    (req, res) => {
      inFlight++;
      res.once('close', () => {
        inFlight--;
        if (closing && inFlight === 0) server.closeAllConnections();
      });
      res.setHeader('X-Content-Type-Options', 'nosniff');
      dispatch(routes, req, res).catch((err: unknown) => {
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
  server.on('clientError', answerClientError);

  return {
    server,
    queue: service.scheduler.queue,
    listen: (port = 0, host = '127.0.0.1') => listen(server, port, host),
    close() {
      closing = true;
      service.scheduler.queue.drainWaiting();
      return closeServer(server, inFlight);
    },
  };
}

function listen(server: http.Server, port: number, host: string): Promise<string> {
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
}

/**
 * Stops listening. Idle connections close at once; requests still being answered get a grace period (their
 * connections close when the last one is done, see createInspectionServer), then every connection is cut.
 */
function closeServer(server: http.Server, inFlight: number): Promise<void> {
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
    server.closeIdleConnections();
    const t = setTimeout(() => server.closeAllConnections(), 5000);
    t.unref();
    server.once('close', () => clearTimeout(t));
  });
}

function positive(name: string, v: number): number {
  if (!(Number.isFinite(v) && v > 0)) throw new RangeError(`createInspectionServer: ${name} must be > 0, got ${v}`);
  return v;
}
