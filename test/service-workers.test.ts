/**
 * The service with its predictor in worker threads (PredictorPool): predictions equal the in-process predictor's,
 * the event loop stays free while every worker computes, and a job past its deadline is abandoned (504) by
 * terminating its worker while the next job runs on a fresh one.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Tensor, manualSeed, tidy } from '../src/engine/index.js';
import type { Image } from '../src/image/types.js';
import { AnoSegGenerator, PAPER_ARCHITECTURE, type AnoSegArchitecture } from '../src/methods/anoseg/network.js';
import { AnoSegPredictor, saveAnoSegModel } from '../src/methods/anoseg/model-file.js';
import { PredictionAbortedError, PredictorPool } from '../src/models/predictor-pool.js';
import { createInspectionServer } from '../src/service/server.js';
import { BUSY_MS, BUSY_WIDTH, STALLING_WIDTH } from './fixtures/stalling-loader.js';

const stallingLoader = new URL('./fixtures/stalling-loader.ts', import.meta.url);
const arch: AnoSegArchitecture = { ...PAPER_ARCHITECTURE, resolution: 32, width: 0.125, skips: true };

let dir: string;
let modelFile: string;

beforeAll(async () => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'anoseg-workers-'));
  modelFile = path.join(dir, 'model.safetensors');
  manualSeed(3);
  const g = new AnoSegGenerator(arch);
  await saveAnoSegModel(modelFile, g, {
    arch,
    aspect: 'stretch',
    score: { sigma: 2, reconstructionWeight: 1 },
    imageThreshold: 0.5,
    pixelThreshold: 0.5,
    facts: { seed: 3 },
  });
  g.dispose();
});

afterAll(() => rmSync(dir, { recursive: true, force: true }));

function randomImage(height: number, width: number, seed: number): Image {
  manualSeed(seed);
  return { channels: 3, height, width, data: tidy(() => Tensor.rand([3, height, width]).toFloat32Array()) };
}

async function waitFor(condition: () => boolean): Promise<void> {
  while (!condition()) await new Promise((r) => setTimeout(r, 20));
}

function png(width: number, height: number, value: number): Promise<Buffer> {
  return sharp(Buffer.alloc(width * height * 3, value), { raw: { width, height, channels: 3 } })
    .png()
    .toBuffer();
}

async function post(url: string, body: Buffer): Promise<{ status: number; ms: number }> {
  const t0 = performance.now();
  const res = await fetch(`${url}/api/inspect`, {
    method: 'POST',
    body: new Uint8Array(body),
    headers: { 'Content-Type': 'image/png' },
  });
  await res.arrayBuffer();
  return { status: res.status, ms: performance.now() - t0 };
}

describe('PredictorPool', () => {
  it('predicts in a worker exactly what the predictor predicts in process', async () => {
    const pool = await PredictorPool.create(modelFile, { workers: 1, threadsPerWorker: 1 });
    const local = await AnoSegPredictor.load(modelFile);
    try {
      expect(pool.info).toEqual(local.info);
      const images = [randomImage(40, 56, 1), randomImage(32, 32, 2)];
      const [remote, here] = [await pool.predict(images), await local.predict(images)];
      expect(remote.map((p) => p.score)).toEqual(here.map((p) => p.score));
      remote.forEach((p, i) => {
        expect([p.map.height, p.map.width]).toEqual([images[i].height, images[i].width]);
        expect(p.map.data).toEqual(here[i].map.data);
      });
    } finally {
      local.dispose();
      await pool.close();
    }
  });

  it('abandons a running job by terminating its worker; the next job runs on a fresh worker', async () => {
    const pool = await PredictorPool.create('unused', { workers: 1, loaderModule: stallingLoader });
    try {
      const stall = randomImage(16, STALLING_WIDTH, 4);
      const ac = new AbortController();
      const abandoned = pool.predict([stall], { signal: ac.signal });
      setTimeout(() => ac.abort(new Error('deadline passed')), 100);
      const t0 = performance.now();
      await expect(abandoned).rejects.toBeInstanceOf(PredictionAbortedError);
      expect(performance.now() - t0).toBeLessThan(5_000); // the stalled call would hold the worker for a minute
      const [next] = await pool.predict([randomImage(16, 16, 5)]);
      expect(Number.isFinite(next.score)).toBe(true);
      expect(pool.stats()).toMatchObject({ restarts: 1, busy: 0, waiting: 0 });
    } finally {
      await pool.close();
    }
  });

  it('refuses work after close and a model that cannot load', async () => {
    await expect(PredictorPool.create(path.join(dir, 'missing.safetensors'))).rejects.toThrow(/missing\.safetensors/);
    const pool = await PredictorPool.create('unused', { loaderModule: stallingLoader });
    await pool.close();
    await expect(pool.predict([randomImage(16, 16, 6)])).rejects.toThrow(/closed/);
  });
});

describe('inspection service on a predictor pool', () => {
  it('answers health checks at once while more clients than workers keep every worker busy', async () => {
    // Each job holds its worker for BUSY_MS in one synchronous call, as a prediction does: a health check that waited
    // for a job would take up to that long (a median near BUSY_MS / 4 or more, with two workers). The bounds leave
    // room for a loaded machine's scheduling delays: p99 is ~2 ms on a quiet one, and reached 201 ms once while another
    // test suite ran beside this one, while the median stayed low; bench:service measures the real model.
    const pool = await PredictorPool.create('unused', {
      workers: 2,
      threadsPerWorker: 1,
      loaderModule: stallingLoader,
    });
    const svc = createInspectionServer({ predictor: pool, maxQueue: 16 });
    const url = await svc.listen();
    try {
      const body = await png(BUSY_WIDTH, 16, 140);
      const statuses: number[] = [];
      let running = true;
      const client = async (): Promise<void> => {
        while (running) statuses.push((await post(url, body)).status);
      };
      const clients = Array.from({ length: 5 }, client);
      const health: number[] = [];
      let mostActive = 0;
      await new Promise((r) => setTimeout(r, 300));
      const until = performance.now() + 2_500;
      while (performance.now() < until) {
        const t0 = performance.now();
        const res = await fetch(`${url}/api/health`);
        const h = (await res.json()) as { queue: { active: number; waiting: number }; workers: { busy: number } };
        health.push(performance.now() - t0);
        mostActive = Math.max(mostActive, h.workers.busy);
        await new Promise((r) => setTimeout(r, 10));
      }
      running = false;
      await Promise.all(clients);
      health.sort((a, b) => a - b);
      const quantile = (q: number): number => health[Math.ceil(q * health.length) - 1];
      expect(health.length).toBeGreaterThan(50);
      expect(quantile(0.5)).toBeLessThan(BUSY_MS / 8);
      expect(quantile(0.99)).toBeLessThan(BUSY_MS);
      expect(mostActive).toBe(2); // both workers computed at once
      expect(statuses.length).toBeGreaterThanOrEqual(6); // 2.8 s of two workers at 400 ms a job
      expect(new Set(statuses)).toEqual(new Set([200]));
    } finally {
      await svc.close();
      await pool.close();
    }
  });

  it('answers 504 for a job past its deadline and runs the next job on a fresh worker', async () => {
    const pool = await PredictorPool.create('unused', { workers: 1, loaderModule: stallingLoader });
    await waitFor(() => pool.stats().standby);
    const svc = createInspectionServer({ predictor: pool, inspectTimeoutMs: 1_500 });
    const url = await svc.listen();
    try {
      const stalled = post(url, await png(STALLING_WIDTH, 16, 128));
      // the stalled job holds the only worker; the next one waits for it, and its own deadline is 500 ms later
      await new Promise((r) => setTimeout(r, 500));
      const next = post(url, await png(16, 16, 128));
      const [a, b] = await Promise.all([stalled, next]);
      expect(a.status).toBe(504);
      expect(a.ms).toBeLessThan(5_000);
      expect(b.status).toBe(200);
      const h = (await (await fetch(`${url}/api/health`)).json()) as { workers: { restarts: number } };
      expect(h.workers.restarts).toBe(1);
    } finally {
      await svc.close();
      await pool.close();
    }
  });
});
