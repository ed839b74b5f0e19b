/**
 * The inspection web page: src/service/page/index.html with its stylesheet (page.css) and script (page.js) —
 * plain files that the formatter and the linter read (page.js as browser code). They are read once, when the
 * first server is created, and served as one self-contained document from memory: the stylesheet and the script
 * are inlined in place of their <link> and <script src> tags and pinned by hash in the Content-Security-Policy,
 * and the heatmap colour table the in-browser mode needs is filled in from src/image/visual.ts. No request path
 * ever reaches the file system. What the page does is described at the top of page.js.
 *
 * The folder is found relative to the package root, so the same files serve `anoseg serve` run from the sources
 * (tsx: src/service/page.ts) and from the build (dist/service/page.js); `npm run build` needs no copy step.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { heatmap } from '../image/visual.js';

export interface InspectionPage {
  /** The complete document, UTF-8. */
  html: Buffer;
  /** Its Content-Security-Policy header. */
  csp: string;
}

const STYLE_TAG = '<link rel="stylesheet" href="page.css" />';
const SCRIPT_TAG = '<script src="page.js"></script>';
const TABLE_MARKER = '/* @heatmap-table */ []';

/** The page's folder: <package>/src/service/page, from src/service (sources) and dist/service (build) alike. */
export function pageDir(): string {
  const here = path.dirname(fileURLToPath(import.meta.url));
  return path.resolve(here, '..', '..', 'src', 'service', 'page');
}

let cached: InspectionPage | undefined;

/** The page, read from pageDir() on first use (errors name the missing file or marker). */
export function inspectionPage(): InspectionPage {
  cached ??= buildPage(pageDir());
  return cached;
}

/** Assembles the page from the files in `dir` (exported for tests). */
export function buildPage(dir: string): InspectionPage {
  const read = (name: string): string => {
    try {
      return readFileSync(path.join(dir, name), 'utf8');
    } catch (err) {
      throw new Error(`inspection page: cannot read ${path.join(dir, name)} (${(err as Error).message})`);
    }
  };
  const style = read('page.css');
  const script = replaceOnce(read('page.js'), TABLE_MARKER, JSON.stringify(heatmapTable()), 'page.js');
  if (/<\/style/i.test(style) || /<\/script/i.test(script)) {
    throw new Error('inspection page: page.css / page.js must not contain a closing </style> or </script> tag');
  }
  let html = read('index.html');
  html = replaceOnce(html, STYLE_TAG, `<style>${style}</style>`, 'index.html');
  html = replaceOnce(html, SCRIPT_TAG, `<script>${script}</script>`, 'index.html');
  const csp = [
    "default-src 'none'",
    // 'self': onnxruntime-web's module from /ort/; 'wasm-unsafe-eval': compiling its WebAssembly (no JS eval)
    `script-src ${sha256(script)} 'self' 'wasm-unsafe-eval'`,
    `style-src ${sha256(style)}`,
    "img-src 'self' data: blob:",
    "connect-src 'self'",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
  ].join('; ');
  return { html: Buffer.from(html, 'utf8'), csp };
}

/** `text` with its one occurrence of `marker` replaced (literally: no `$` patterns) by `value`. */
function replaceOnce(text: string, marker: string, value: string, file: string): string {
  const at = text.indexOf(marker);
  if (at < 0 || text.indexOf(marker, at + 1) >= 0) {
    throw new Error(`inspection page: ${file} must contain ${marker} exactly once`);
  }
  return text.slice(0, at) + value + text.slice(at + marker.length);
}

/** The heatmap colours (1024 entries, RGB in [0, 1]) exactly as the server draws them, for the in-browser mode. */
function heatmapTable(): number[] {
  const ramp = Float32Array.from({ length: 1024 }, (_, i) => i / 1023);
  const rgb = heatmap({ channels: 1, height: 1, width: 1024, data: ramp }).data;
  const table: number[] = [];
  for (let i = 0; i < 1024; i++) table.push(rgb[i], rgb[1024 + i], rgb[2048 + i]);
  return table.map((v) => Math.round(v * 1e5) / 1e5);
}

function sha256(text: string): string {
  return `'sha256-${createHash('sha256').update(text, 'utf8').digest('base64')}'`;
}
