/**
 * HTTP plumbing of the inspection service: the error type every failure becomes, receiving a body within a
 * limit, JSON answers, and the answer to malformed requests that never reach a handler.
 */
import http from 'node:http';
import type { Duplex } from 'node:stream';

/** An error that becomes a JSON response `{ error }` with this status (and these extra headers). */
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

/** The client went away (aborted upload, closed connection): nobody to answer. */
export class ClientGoneError extends Error {}

export function errorMessage(err: unknown): string {
  const msg = err instanceof Error ? err.message : String(err);
  return truncate(msg.split('\n')[0], 500);
}

export function truncate(s: string, n: number): string {
  return s.length > n ? `${s.slice(0, n)}...` : s;
}

export function toHttpError(err: unknown): HttpError {
  if (err instanceof HttpError) return err;
  return new HttpError(500, `internal error: ${errorMessage(err)}`);
}

export function throwIfAborted(signal: AbortSignal): void {
  if (signal.aborted) throw signal.reason instanceof Error ? signal.reason : new ClientGoneError('aborted');
}

/** `p`, or the signal's reason as soon as it aborts (p keeps running; its outcome is then ignored). */
export function raceAbort<T>(p: Promise<T>, signal: AbortSignal): Promise<T> {
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

/**
 * Collects a request body, enforcing `limit` while streaming: the moment it is exceeded, reading stops and the
 * promise rejects with 413 (the error response then closes the connection).
 */
export function readBody(req: http.IncomingMessage, limit: number): Promise<Buffer> {
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

export function sendJson(req: http.IncomingMessage, res: http.ServerResponse, status: number, value: unknown): void {
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
export function sendError(req: http.IncomingMessage, res: http.ServerResponse, err: HttpError): void {
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

/**
 * node:http's 'clientError' (malformed requests, receive timeouts): answers JSON like every other error. As
 * node:http's default handler does, only when nothing of a response has been written to the socket yet.
 */
export function answerClientError(err: NodeJS.ErrnoException, socket: Duplex): void {
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
}
