/**
 * The service's fixed route table and the dispatch from a request to its handler: unknown paths are 404, wrong
 * methods 405 with Allow. Only these exact paths are answered; no request path ever reaches the file system.
 */
import type http from 'node:http';
import { browserInferenceRoutes } from './browser-inference.js';
import {
  handleBatch,
  handleHealth,
  handleInspect,
  handleModel,
  handlePage,
  type RequestContext,
  type Service,
} from './handlers.js';
import { HttpError, truncate } from './http.js';

export interface Route {
  methods: string[];
  handler: (ctx: RequestContext) => Promise<void>;
}

export type Routes = Readonly<Record<string, Route>>;

/** The routes of a service; with `browserModel`, also those of the page's in-browser mode. */
export function serviceRoutes(svc: Service, browserModel?: { onnx: Uint8Array; name: string }): Routes {
  const bind =
    (handler: (svc: Service, ctx: RequestContext) => Promise<void>) =>
    (ctx: RequestContext): Promise<void> =>
      handler(svc, ctx);
  return {
    '/': { methods: ['GET', 'HEAD'], handler: bind(handlePage) },
    '/api/health': { methods: ['GET', 'HEAD'], handler: bind(handleHealth) },
    '/api/model': { methods: ['GET', 'HEAD'], handler: bind(handleModel) },
    '/api/inspect': { methods: ['POST'], handler: bind(handleInspect) },
    '/api/inspect/batch': { methods: ['POST'], handler: bind(handleBatch) },
    ...(browserModel ? browserInferenceRoutes(browserModel.onnx, browserModel.name, svc.overlayAlpha) : {}),
  };
}

/** Finds the request's route and runs its handler; throws HttpError 400/404/405. */
export async function dispatch(routes: Routes, req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
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
