/**
 * What the inspection page needs to run the model in the visitor's browser (onnxruntime-web, WebAssembly): the
 * exported ONNX file, its metadata as JSON, and onnxruntime-web's own module and wasm binary served from the npm
 * package (no CDN). Only these fixed paths are answered; no request path reaches the file system.
 *
 *   GET /api/model.onnx       the ONNX model (anoseg export)
 *   GET /api/model.onnx.json  { info, preprocessing, overlayAlpha, bytes } read from the ONNX file's metadata
 *   GET /ort/<file>           onnxruntime-web's ES module bundle and its wasm binary
 */
import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import path from 'node:path';
import type http from 'node:http';
import { preprocessingRecipe, readOnnxModelFile } from '../onnx/model-file.js';

/** onnxruntime-web's WebAssembly-only build: the module the page imports, the wasm glue it loads, the binary. */
export const ORT_WEB_FILES: Readonly<Record<string, string>> = {
  'ort.wasm.min.mjs': 'text/javascript; charset=utf-8',
  'ort-wasm-simd-threaded.mjs': 'text/javascript; charset=utf-8',
  'ort-wasm-simd-threaded.wasm': 'application/wasm',
};

interface BrowserRoute {
  methods: string[];
  handler: (ctx: { req: http.IncomingMessage; res: http.ServerResponse }) => Promise<void>;
}

function send(req: http.IncomingMessage, res: http.ServerResponse, body: Uint8Array, type: string, cache: string) {
  res.writeHead(200, { 'Content-Type': type, 'Content-Length': body.length, 'Cache-Control': cache });
  res.end(req.method === 'HEAD' ? undefined : body);
}

/** The folder of onnxruntime-web's dist files, found through Node's resolution of the installed package. */
function ortWebDist(): string {
  return path.dirname(createRequire(import.meta.url).resolve('onnxruntime-web'));
}

/**
 * Routes for in-browser inspection of `onnx` (the served model as ONNX bytes). The file is checked here, so a
 * broken export fails when the server is set up rather than in a visitor's browser.
 */
export function browserInferenceRoutes(
  onnx: Uint8Array,
  name: string,
  overlayAlpha: number,
): Record<string, BrowserRoute> {
  const file = readOnnxModelFile(onnx, name);
  const description = Buffer.from(
    JSON.stringify({
      info: file.info,
      preprocessing: preprocessingRecipe(file.info),
      overlayAlpha,
      bytes: onnx.length,
    }),
  );
  const dist = ortWebDist();
  const cached = new Map<string, Promise<Buffer>>();
  const routes: Record<string, BrowserRoute> = {
    '/api/model.onnx': {
      methods: ['GET', 'HEAD'],
      handler: async ({ req, res }) => send(req, res, onnx, 'application/octet-stream', 'no-store'),
    },
    '/api/model.onnx.json': {
      methods: ['GET', 'HEAD'],
      handler: async ({ req, res }) => send(req, res, description, 'application/json; charset=utf-8', 'no-store'),
    },
  };
  for (const [fileName, type] of Object.entries(ORT_WEB_FILES)) {
    routes[`/ort/${fileName}`] = {
      methods: ['GET', 'HEAD'],
      handler: async ({ req, res }) => {
        let body = cached.get(fileName);
        if (!body) {
          body = readFile(path.join(dist, fileName));
          cached.set(fileName, body);
          body.catch(() => cached.delete(fileName));
        }
        send(req, res, await body, type, 'public, max-age=86400');
      },
    };
  }
  return routes;
}
