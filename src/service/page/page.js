/*
 * The inspection page's script (browser code, linted as such; see eslint.config.js). page.ts inlines it into
 * index.html at start-up, pinned by its hash in the Content-Security-Policy, and fills in the heatmap colour
 * table at the marker below.
 *
 * - Model info (GET /api/model) at the top.
 * - Drop images anywhere on the page or pick several with the file input; each is uploaded to
 *   POST /api/inspect?raw=1 (two at a time, retrying after 503 + Retry-After) and shown as a card with the
 *   original, the overlay with the defect outline, the heatmap, the score, the verdict and the mask area.
 * - A pixel-threshold slider (initialised to the model's pixelThreshold) recomputes every card's mask outline
 *   and mask area in the browser from the raw float map, live while it moves.
 * - When the server offers the model as ONNX (GET /api/model.onnx.json answers), "Inspect in this browser" runs it
 *   with onnxruntime-web (WebAssembly, served from the npm package under /ort/): images are decoded, fitted to the
 *   model input as the ONNX metadata describes (the same steps as src/image/io.ts fitImage / unfitMap), scored and
 *   drawn without leaving the browser; heatmap, overlay, score and verdict are made as the server makes them
 *   (src/image/anomaly-render.ts: colours over [0, max(1, 2 * pixelThreshold)]).
 *   Browsers decode PNG, JPEG and BMP at 8 bits (16-bit files lose precision; TIFF needs the server mode).
 *
 * Test hooks: each card carries data-state (pending | done | error), data-score, data-verdict,
 * data-mask-pixels (pixels of the full-resolution map at or above the slider threshold) and data-where
 * (server | browser); window.anosegInspection.map(fileName) returns a card's anomaly map as an array.
 */
'use strict';
(function () {
  var MAX_VIEW = 768;
  var MIN_VIEW = 384;
  var PARALLEL = 2;
  var OUTLINE = [0, 229, 255];
  var $ = function (id) {
    return document.getElementById(id);
  };
  var slider = $('threshold');
  var sliderValue = $('threshold-value');
  var cardsEl = $('cards');
  var model = null;
  var cards = [];
  var pending = [];
  var running = 0;
  var redrawQueued = false;
  var littleEndian = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
  var TURBO = /* @heatmap-table */ [];
  var inBrowser = $('in-browser');
  var browserStatus = $('browser-status');
  var onnxInfo = null;
  var runtime = null;

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function fmt(v) {
    if (!isFinite(v)) return String(v);
    var a = Math.abs(v);
    return a !== 0 && (a < 0.001 || a >= 10000) ? v.toExponential(3) : String(+v.toFixed(4));
  }
  function threshold() {
    return parseFloat(slider.value);
  }

  function loadModel() {
    fetch('/api/model')
      .then(function (r) {
        if (!r.ok) throw new Error('HTTP ' + r.status);
        return r.json();
      })
      .then(function (info) {
        model = info;
        var box = $('model');
        box.textContent = '';
        var items = [
          ['method', info.method],
          ['input', info.resolution + ' px, ' + info.channels + ' ch'],
          ['image threshold', fmt(info.imageThreshold)],
          ['pixel threshold', fmt(info.pixelThreshold)],
        ];
        Object.keys(info.meta || {}).forEach(function (k) {
          items.push([k, String(info.meta[k])]);
        });
        items.forEach(function (it) {
          var s = el('span');
          s.appendChild(document.createTextNode(it[0] + ': '));
          s.appendChild(el('b', '', it[1]));
          box.appendChild(s);
        });
        setRange(Math.max(1, 2 * info.pixelThreshold));
        slider.value = String(info.pixelThreshold);
        slider.disabled = false;
        $('reset').disabled = false;
        showThreshold();
      })
      .catch(function (err) {
        $('model').textContent = 'Model info unavailable (' + err.message + ')';
      });
  }

  function setRange(max) {
    var v = slider.value;
    slider.max = String(max);
    slider.step = String(max / 1000);
    slider.value = v;
  }
  function showThreshold() {
    sliderValue.textContent = fmt(threshold());
  }

  function addFiles(list) {
    var files = Array.prototype.slice.call(list || []);
    if (files.length === 0) return;
    var empty = cardsEl.querySelector('.empty');
    if (empty) empty.remove();
    files.forEach(function (file) {
      var card = makeCard(file);
      cards.push(card);
      cardsEl.appendChild(card.root);
      pending.push(card);
    });
    updateSummary();
    pump();
  }

  function makeCard(file) {
    var root = el('article', 'card pending');
    root.dataset.state = 'pending';
    var head = el('div', 'card-head');
    var name = el('span', 'name', file.name || 'image');
    name.title = file.name || '';
    var badge = el('span', 'badge', 'queued');
    head.appendChild(name);
    head.appendChild(el('span', 'spinner'));
    head.appendChild(badge);
    var stats = el('div', 'stats');
    var score = el('span', 'score');
    var area = el('span', 'area');
    var size = el('span', 'size');
    stats.appendChild(score);
    stats.appendChild(area);
    stats.appendChild(size);
    var panels = el('div', 'panels');
    var original = el('figure');
    var url = URL.createObjectURL(file);
    var img = el('img', 'original');
    img.alt = 'original';
    img.src = url;
    img.addEventListener('error', function () {
      var nv = el('div', 'noview', 'no browser preview for this format');
      original.replaceChild(nv, img);
    });
    original.appendChild(img);
    original.appendChild(el('figcaption', '', 'Original'));
    var over = el('figure');
    var canvas = el('canvas', 'overlay');
    canvas.width = 1;
    canvas.height = 1;
    over.appendChild(canvas);
    over.appendChild(el('figcaption', '', 'Overlay + mask outline'));
    var heat = el('figure');
    var heatImg = el('img', 'heatmap');
    heatImg.alt = 'heatmap';
    heat.appendChild(heatImg);
    heat.appendChild(el('figcaption', '', 'Heatmap'));
    panels.appendChild(original);
    panels.appendChild(over);
    panels.appendChild(heat);
    root.appendChild(head);
    root.appendChild(stats);
    root.appendChild(panels);
    return {
      root: root,
      file: file,
      url: url,
      badge: badge,
      score: score,
      area: area,
      size: size,
      canvas: canvas,
      heatImg: heatImg,
      result: null,
      map: null,
      view: null,
    };
  }

  function pump() {
    while (running < PARALLEL && pending.length > 0) {
      var card = pending.shift();
      running++;
      card.badge.textContent = 'analysing';
      card.root.dataset.where = inBrowser.checked ? 'browser' : 'server';
      (inBrowser.checked ? inspectHere(card) : upload(card, 0)).then(function () {
        running--;
        pump();
      });
    }
  }

  function upload(card, attempt) {
    var form = new FormData();
    form.append('image', card.file, card.file.name || 'image');
    return fetch('/api/inspect?raw=1', { method: 'POST', body: form })
      .then(function (r) {
        return r
          .json()
          .catch(function () {
            return { error: 'HTTP ' + r.status };
          })
          .then(function (body) {
            if (r.status === 503 && attempt < 5) {
              var wait = Math.min(10, parseInt(r.headers.get('Retry-After') || '1', 10) || 1);
              card.badge.textContent = 'busy, retrying';
              return new Promise(function (res) {
                setTimeout(res, wait * 1000);
              }).then(function () {
                return upload(card, attempt + 1);
              });
            }
            if (!r.ok) throw new Error(body.error || 'HTTP ' + r.status);
            return showResult(card, body, body.rawMap ? decodeMap(body.rawMap) : null);
          });
      })
      .catch(function (err) {
        showError(card, err.message || String(err));
      });
  }

  function showError(card, message) {
    card.root.classList.remove('pending');
    card.root.dataset.state = 'error';
    var sp = card.root.querySelector('.spinner');
    if (sp) sp.remove();
    card.badge.className = 'badge error';
    card.badge.textContent = 'error';
    card.canvas.parentNode.remove();
    card.heatImg.parentNode.remove();
    card.root.appendChild(el('p', 'error-text', message));
    updateSummary();
  }

  function decodeMap(raw) {
    var bin = atob(raw.data);
    var bytes = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    if (littleEndian) return new Float32Array(bytes.buffer);
    var dv = new DataView(bytes.buffer);
    var out = new Float32Array(bytes.length / 4);
    for (var j = 0; j < out.length; j++) out[j] = dv.getFloat32(4 * j, true);
    return out;
  }

  function loadImage(src) {
    return new Promise(function (res, rej) {
      var im = new Image();
      im.onload = function () {
        res(im);
      };
      im.onerror = function () {
        rej(new Error('cannot display result image'));
      };
      im.src = src;
    });
  }

  function showResult(card, r, map) {
    card.result = r;
    var w = r.width;
    var h = r.height;
    card.map = map;
    // Display grid: large images are shown at most MAX_VIEW wide, each view pixel holding the maximum of the map
    // over its source block (small defects keep their outline); small images are enlarged by an integer factor
    // (nearest), so the outline stays thin and sharp.
    var big = Math.max(w, h);
    var scale = big > MAX_VIEW ? MAX_VIEW / big : Math.max(1, Math.floor(MIN_VIEW / big));
    var vw = Math.max(1, Math.round(w * scale));
    var vh = Math.max(1, Math.round(h * scale));
    var vmap = new Float32Array(vw * vh);
    var m = card.map;
    if (m && scale < 1) {
      vmap.fill(-Infinity);
      for (var y = 0; y < h; y++) {
        var vy = Math.min(vh - 1, Math.floor((y * vh) / h));
        for (var x = 0; x < w; x++) {
          var k = vy * vw + Math.min(vw - 1, Math.floor((x * vw) / w));
          if (m[y * w + x] > vmap[k]) vmap[k] = m[y * w + x];
        }
      }
    } else if (m) {
      for (var yy = 0; yy < vh; yy++) {
        var row = Math.min(h - 1, Math.floor(yy / scale)) * w;
        for (var xx = 0; xx < vw; xx++) vmap[yy * vw + xx] = m[row + Math.min(w - 1, Math.floor(xx / scale))];
      }
    }
    if (m) {
      var top = -Infinity;
      for (var q = 0; q < m.length; q++) if (m[q] > top) top = m[q];
      if (top > parseFloat(slider.max)) setRange(top);
    }
    card.heatImg.src = 'data:image/png;base64,' + r.heatmapPng;
    return loadImage('data:image/png;base64,' + r.overlayPng).then(function (im) {
      card.canvas.width = vw;
      card.canvas.height = vh;
      var ctx = card.canvas.getContext('2d');
      ctx.imageSmoothingEnabled = scale < 1;
      ctx.drawImage(im, 0, 0, vw, vh);
      card.view = { w: vw, h: vh, base: ctx.getImageData(0, 0, vw, vh), vmap: vmap };
      card.root.classList.remove('pending');
      var sp = card.root.querySelector('.spinner');
      if (sp) sp.remove();
      card.root.dataset.state = 'done';
      card.root.dataset.score = String(r.score);
      card.root.dataset.verdict = r.verdict;
      card.badge.className = 'badge ' + r.verdict;
      card.badge.textContent = r.verdict;
      card.score.textContent = '';
      card.score.appendChild(document.createTextNode('score '));
      card.score.appendChild(el('b', '', fmt(r.score)));
      card.score.appendChild(document.createTextNode(' / threshold ' + fmt(r.threshold)));
      card.size.textContent = w + ' x ' + h;
      var noview = card.root.querySelector('.noview');
      if (noview) noview.style.aspectRatio = w + ' / ' + h;
      drawCard(card, threshold());
      updateSummary();
    });
  }

  // ------------------------------------------------------------------ in-browser inspection (onnxruntime-web)
  // Images as { c, h, w, d }: channel-major float32 samples in [0, 1], as src/image/types.ts.

  function resizeBilinear(src, H, W) {
    // F.interpolate(bilinear, align_corners=False, no antialias), as resizeImage in src/image/io.ts
    var out = new Float32Array(src.c * H * W);
    if (src.h === H && src.w === W) {
      out.set(src.d);
      return { c: src.c, h: H, w: W, d: out };
    }
    function axis(outLen, inLen) {
      var i0 = new Int32Array(outLen),
        i1 = new Int32Array(outLen),
        t = new Float32Array(outLen);
      var scale = inLen / outLen;
      for (var o = 0; o < outLen; o++) {
        var x = Math.max((o + 0.5) * scale - 0.5, 0);
        var lo = Math.min(Math.floor(x), inLen - 1);
        i0[o] = lo;
        i1[o] = Math.min(lo + 1, inLen - 1);
        t[o] = x - lo;
      }
      return { i0: i0, i1: i1, t: t };
    }
    var ay = axis(H, src.h),
      ax = axis(W, src.w);
    for (var c = 0; c < src.c; c++) {
      var so = c * src.h * src.w,
        doff = c * H * W;
      for (var y = 0; y < H; y++) {
        var r0 = so + ay.i0[y] * src.w,
          r1 = so + ay.i1[y] * src.w,
          ty = ay.t[y];
        for (var x = 0; x < W; x++) {
          var x0 = ax.i0[x],
            x1 = ax.i1[x],
            tx = ax.t[x];
          var top = src.d[r0 + x0] * (1 - tx) + src.d[r0 + x1] * tx;
          var bot = src.d[r1 + x0] * (1 - tx) + src.d[r1 + x1] * tx;
          out[doff + y * W + x] = top * (1 - ty) + bot * ty;
        }
      }
    }
    return { c: src.c, h: H, w: W, d: out };
  }

  function cropRect(src, rect) {
    var out = new Float32Array(src.c * rect.height * rect.width);
    for (var c = 0; c < src.c; c++) {
      for (var y = 0; y < rect.height; y++) {
        var s = c * src.h * src.w + (rect.top + y) * src.w + rect.left;
        out.set(src.d.subarray(s, s + rect.width), c * rect.height * rect.width + y * rect.width);
      }
    }
    return { c: src.c, h: rect.height, w: rect.width, d: out };
  }

  function placeWithEdges(content, H, W, at) {
    // content at rect 'at' of an H x W image; outside it, the nearest edge pixel (fitImage's pad, unfitMap's fill)
    var out = new Float32Array(content.c * H * W);
    for (var c = 0; c < content.c; c++) {
      for (var y = 0; y < H; y++) {
        var cy = Math.min(Math.max(y - at.top, 0), content.h - 1);
        for (var x = 0; x < W; x++) {
          var cx = Math.min(Math.max(x - at.left, 0), content.w - 1);
          out[c * H * W + y * W + x] = content.d[c * content.h * content.w + cy * content.w + cx];
        }
      }
    }
    return { c: content.c, h: H, w: W, d: out };
  }

  function fitToModel(img, size, aspect) {
    var full = { top: 0, left: 0, height: img.h, width: img.w };
    var square = { top: 0, left: 0, height: size, width: size };
    if (aspect === 'crop') {
      var side = Math.min(img.h, img.w);
      var src = {
        top: Math.floor((img.h - side) / 2),
        left: Math.floor((img.w - side) / 2),
        height: side,
        width: side,
      };
      return { image: resizeBilinear(cropRect(img, src), size, size), src: src, dst: square };
    }
    if (aspect === 'pad') {
      var scale = size / Math.max(img.h, img.w);
      var nh = Math.max(1, Math.min(size, Math.round(img.h * scale)));
      var nw = Math.max(1, Math.min(size, Math.round(img.w * scale)));
      var dst = { top: Math.floor((size - nh) / 2), left: Math.floor((size - nw) / 2), height: nh, width: nw };
      return { image: placeWithEdges(resizeBilinear(img, nh, nw), size, size, dst), src: full, dst: dst };
    }
    return { image: resizeBilinear(img, size, size), src: full, dst: square };
  }

  function mapBack(map, fit, h, w) {
    var part = resizeBilinear(cropRect(map, fit.dst), fit.src.height, fit.src.width);
    return fit.src.height === h && fit.src.width === w ? part : placeWithEdges(part, h, w, fit.src);
  }

  // src/image/tiles.ts's tileRects: near-square tiles across the longer side ('long-side'), else the whole image
  function tileRects(h, w, tiling) {
    var n = 1;
    var long = Math.max(h, w);
    if (tiling === 'long-side') while (long / Math.min(h, w) >= Math.sqrt(n * (n + 1))) n++;
    var rects = [];
    for (var k = 0; k < n; k++) {
      var a = Math.floor((k * long) / n),
        b = Math.floor(((k + 1) * long) / n);
      rects.push(h >= w ? { top: a, left: 0, height: b - a, width: w } : { top: 0, left: a, height: h, width: b - a });
    }
    return rects;
  }

  // predictFitted: each tile fitted and scored, its map put back in place; the score is the largest tile score
  function predictHere(rt, img, info) {
    var size = info.resolution;
    var rects = tileRects(img.h, img.w, info.tiling);
    var map = new Float32Array(img.h * img.w);
    var score = -Infinity;
    return rects
      .reduce(function (done, rect) {
        return done.then(function () {
          var tile = rects.length === 1 ? img : cropRect(img, rect);
          var fit = fitToModel(tile, size, info.aspect);
          var input = new rt.ort.Tensor('float32', fit.image.d, [1, info.channels, size, size]);
          return rt.session.run({ image: input }).then(function (out) {
            var back = mapBack({ c: 1, h: size, w: size, d: out.anomaly_map.data }, fit, rect.height, rect.width).d;
            for (var y = 0; y < rect.height; y++)
              map.set(back.subarray(y * rect.width, (y + 1) * rect.width), (rect.top + y) * img.w + rect.left);
            score = Math.max(score, out.score.data[0]);
          });
        });
      }, Promise.resolve())
      .then(function () {
        return { map: map, score: score };
      });
  }

  function toModelChannels(rgb, channels) {
    if (channels === 3) return rgb;
    var n = rgb.h * rgb.w,
      d = new Float32Array(n);
    for (var i = 0; i < n; i++) d[i] = 0.299 * rgb.d[i] + 0.587 * rgb.d[n + i] + 0.114 * rgb.d[2 * n + i];
    return { c: 1, h: rgb.h, w: rgb.w, d: d };
  }

  function decodeHere(file) {
    return createImageBitmap(file, { colorSpaceConversion: 'none', premultiplyAlpha: 'none' }).then(
      function (bmp) {
        var cv = document.createElement('canvas');
        cv.width = bmp.width;
        cv.height = bmp.height;
        var ctx = cv.getContext('2d', { willReadFrequently: true });
        ctx.drawImage(bmp, 0, 0);
        var px = ctx.getImageData(0, 0, bmp.width, bmp.height).data;
        var n = bmp.width * bmp.height,
          d = new Float32Array(3 * n);
        for (var i = 0; i < n; i++) {
          d[i] = px[4 * i] / 255;
          d[n + i] = px[4 * i + 1] / 255;
          d[2 * n + i] = px[4 * i + 2] / 255;
        }
        return { c: 3, h: bmp.height, w: bmp.width, d: d };
      },
      function () {
        throw new Error(
          'this browser cannot decode ' + (file.name || 'the file') + ' (TIFF and 16-bit files: server mode)',
        );
      },
    );
  }

  function pngOf(w, h, pixel) {
    var cv = document.createElement('canvas');
    cv.width = w;
    cv.height = h;
    var ctx = cv.getContext('2d');
    var im = ctx.createImageData(w, h);
    for (var i = 0; i < w * h; i++) {
      var rgb = pixel(i);
      im.data[4 * i] = Math.round(rgb[0] * 255);
      im.data[4 * i + 1] = Math.round(rgb[1] * 255);
      im.data[4 * i + 2] = Math.round(rgb[2] * 255);
      im.data[4 * i + 3] = 255;
    }
    ctx.putImageData(im, 0, 0);
    return cv.toDataURL('image/png').slice('data:image/png;base64,'.length);
  }

  function resultHere(rgb, map, score) {
    // the server's InspectResult, drawn the same way (heatmap over [0, max(1, 2 * pixel threshold)])
    var info = onnxInfo.info,
      n = rgb.h * rgb.w,
      range = Math.max(1, 2 * info.pixelThreshold),
      a = onnxInfo.overlayAlpha;
    var colour = function (i) {
      var k = 3 * Math.round(Math.min(1, Math.max(0, map[i] / range)) * 1023);
      return [TURBO[k], TURBO[k + 1], TURBO[k + 2]];
    };
    var inMask = 0;
    for (var i = 0; i < n; i++) if (map[i] >= info.pixelThreshold) inMask++;
    return {
      score: score,
      verdict: score >= info.imageThreshold ? 'defective' : 'good',
      threshold: info.imageThreshold,
      pixelThreshold: info.pixelThreshold,
      width: rgb.w,
      height: rgb.h,
      maskFraction: inMask / n,
      heatmapRange: [0, range],
      heatmapPng: pngOf(rgb.w, rgb.h, colour),
      overlayPng: pngOf(rgb.w, rgb.h, function (j) {
        var c = colour(j),
          out = [0, 0, 0];
        for (var ch = 0; ch < 3; ch++) out[ch] = (1 - a) * Math.min(1, Math.max(0, rgb.d[ch * n + j])) + a * c[ch];
        return out;
      }),
    };
  }

  function loadRuntime() {
    if (!runtime) {
      browserStatus.textContent = 'loading the model into this browser...';
      runtime = import('/ort/ort.wasm.min.mjs').then(function (ort) {
        ort.env.wasm.wasmPaths = '/ort/';
        ort.env.wasm.numThreads = 1;
        return fetch('/api/model.onnx')
          .then(function (r) {
            if (!r.ok) throw new Error('model download failed: HTTP ' + r.status);
            return r.arrayBuffer();
          })
          .then(function (buf) {
            return ort.InferenceSession.create(new Uint8Array(buf), { executionProviders: ['wasm'] });
          })
          .then(function (session) {
            browserStatus.textContent = 'model loaded: images are inspected in this browser and never uploaded';
            return { ort: ort, session: session };
          });
      });
      runtime.catch(function (err) {
        runtime = null;
        browserStatus.textContent = 'in-browser model failed to load: ' + (err.message || String(err));
      });
    }
    return runtime;
  }

  function inspectHere(card) {
    return Promise.all([loadRuntime(), decodeHere(card.file)])
      .then(function (both) {
        var rt = both[0],
          rgb = both[1],
          info = onnxInfo.info;
        return predictHere(rt, toModelChannels(rgb, info.channels), info).then(function (p) {
          return showResult(card, resultHere(rgb, p.map, p.score), p.map);
        });
      })
      .catch(function (err) {
        showError(card, err.message || String(err));
      });
  }

  function offerBrowserMode() {
    fetch('/api/model.onnx.json')
      .then(function (r) {
        if (r.status === 404) throw new Error('not offered for this model (serve an ONNX model or an exportable one)');
        if (!r.ok) throw new Error('HTTP ' + r.status);
        return r.json();
      })
      .then(function (desc) {
        onnxInfo = desc;
        inBrowser.disabled = false;
        browserStatus.textContent = 'ONNX model of ' + (desc.bytes / 1e6).toFixed(1) + ' MB; images would stay here';
      })
      .catch(function (err) {
        browserStatus.textContent = 'In-browser inspection ' + err.message;
      });
  }

  window.anosegInspection = {
    map: function (name) {
      var c = cards.filter(function (k) {
        return k.file.name === name && k.map;
      })[0];
      return c ? Array.prototype.slice.call(c.map) : null;
    },
  };

  function drawCard(card, t) {
    if (!card.view) return;
    var view = card.view;
    var vw = view.w;
    var vh = view.h;
    var count = 0;
    if (card.map) {
      var m = card.map;
      for (var i = 0; i < m.length; i++) if (m[i] >= t) count++;
    } else {
      count = Math.round(card.result.maskFraction * card.result.width * card.result.height);
    }
    var total = card.result.width * card.result.height;
    card.root.dataset.maskPixels = String(count);
    card.area.textContent = '';
    card.area.appendChild(document.createTextNode('mask '));
    card.area.appendChild(el('b', '', ((100 * count) / total).toFixed(2) + '%'));
    var ctx = card.canvas.getContext('2d');
    var out = new ImageData(new Uint8ClampedArray(view.base.data), vw, vh);
    if (card.map) {
      var vm = view.vmap;
      var thick = Math.max(1, Math.round(Math.max(vw, vh) / 256));
      var inside = function (yy, xx) {
        return yy >= 0 && yy < vh && xx >= 0 && xx < vw && vm[yy * vw + xx] >= t;
      };
      var d = out.data;
      for (var y = 0; y < vh; y++) {
        for (var x = 0; x < vw; x++) {
          if (!inside(y, x)) continue;
          if (inside(y - 1, x) && inside(y + 1, x) && inside(y, x - 1) && inside(y, x + 1)) continue;
          for (var dy = 1 - thick; dy < thick; dy++) {
            for (var dx = 1 - thick; dx < thick; dx++) {
              var yy = y + dy;
              var xx = x + dx;
              if (yy < 0 || yy >= vh || xx < 0 || xx >= vw) continue;
              var p = 4 * (yy * vw + xx);
              d[p] = OUTLINE[0];
              d[p + 1] = OUTLINE[1];
              d[p + 2] = OUTLINE[2];
              d[p + 3] = 255;
            }
          }
        }
      }
    }
    ctx.putImageData(out, 0, 0);
  }

  function redrawAll() {
    redrawQueued = false;
    var t = threshold();
    cards.forEach(function (c) {
      drawCard(c, t);
    });
  }

  function updateSummary() {
    var done = 0,
      bad = 0,
      errors = 0,
      waiting = 0;
    cards.forEach(function (c) {
      var s = c.root.dataset.state;
      if (s === 'done') {
        done++;
        if (c.result.verdict === 'defective') bad++;
      } else if (s === 'error') errors++;
      else waiting++;
    });
    var parts = [];
    if (cards.length) parts.push(cards.length + ' image' + (cards.length === 1 ? '' : 's'));
    if (done) parts.push(bad + ' defective', done - bad + ' good');
    if (errors) parts.push(errors + ' failed');
    if (waiting) parts.push(waiting + ' in progress');
    $('summary').textContent = parts.join(' \u00b7 ');
    $('clear').disabled = cards.length === 0 || waiting > 0;
  }

  slider.addEventListener('input', function () {
    showThreshold();
    if (!redrawQueued) {
      redrawQueued = true;
      requestAnimationFrame(redrawAll);
    }
  });
  $('reset').addEventListener('click', function () {
    if (!model) return;
    slider.value = String(model.pixelThreshold);
    showThreshold();
    redrawAll();
  });
  $('clear').addEventListener('click', function () {
    cards.forEach(function (c) {
      URL.revokeObjectURL(c.url);
    });
    cards = [];
    cardsEl.textContent = '';
    cardsEl.appendChild(el('p', 'empty', 'No images yet.'));
    updateSummary();
  });
  $('file').addEventListener('change', function (e) {
    addFiles(e.target.files);
    e.target.value = '';
  });
  var depth = 0;
  document.addEventListener('dragenter', function (e) {
    e.preventDefault();
    depth++;
    document.body.classList.add('dragging');
  });
  document.addEventListener('dragleave', function () {
    depth = Math.max(0, depth - 1);
    if (depth === 0) document.body.classList.remove('dragging');
  });
  document.addEventListener('dragover', function (e) {
    e.preventDefault();
  });
  document.addEventListener('drop', function (e) {
    e.preventDefault();
    depth = 0;
    document.body.classList.remove('dragging');
    if (e.dataTransfer) addFiles(e.dataTransfer.files);
  });
  inBrowser.addEventListener('change', function () {
    if (inBrowser.checked) loadRuntime();
  });
  updateSummary();
  loadModel();
  offerBrowserMode();
})();
