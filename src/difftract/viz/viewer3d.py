"""An interactive 3D view for the report: streamlines over three colour-FA slices, in WebGL.

A small hand-written WebGL 1 scene (no library, nothing fetched at view time), embedded in
the report's one HTML file:

- a subsample of each method's streamlines (at most ``max_streamlines`` per method, each
  resampled along its length to at most ``max_points`` points), coloured by local direction
  (|x| red, |y| green, |z| blue, as MRtrix and TrackVis do);
- the colour FA in three orthogonal textured slices through the mask's centre (the same
  slices as the colour-FA figure);
- drag to rotate, wheel to zoom, a reset button, a checkbox for the slices and, with several
  methods, a menu to choose one.

Everything is drawn in voxel space scaled by the voxel size (the space of the figures above:
first array axis x, second y, third z up), so streamlines and slices line up without the
affine. Positions travel as little-endian int16 (``1/scale`` voxel steps) and the slices as
raw RGB bytes, both base64 in one JSON block. Without WebGL the section says so and the rest
of the page is unaffected.

For tests and screenshots the page reads ``#view3d=AZ,EL`` from its URL (degrees; the view
is scrolled to the top of the window) and exposes ``window.difftractView`` with
``setAngles(az, el)``, ``reset()``, ``view`` (its ``az``, ``el`` and ``dist``) and ``status`` (``"drawn"`` once a frame is drawn,
``"no-webgl"`` or ``"error: ..."``); the section's ``data-status`` attribute mirrors it.
"""

from __future__ import annotations

import base64
import html
import json

import numpy as np

from .qc import _centre

MAX_STREAMLINES = 5000
MAX_POINTS = 24


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")


def resample(streamline: np.ndarray, max_points: int = MAX_POINTS) -> np.ndarray:
    """At most ``max_points`` points evenly spaced along the streamline's length (ends kept)."""
    s = np.asarray(streamline, dtype=np.float64)
    if len(s) <= max_points:
        return s
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(s, axis=0), axis=1))])
    if arc[-1] <= 0:
        return s[[0, -1]]
    t = np.linspace(0.0, arc[-1], max_points)
    return np.stack([np.interp(t, arc, s[:, k]) for k in range(3)], axis=1)


def subsample(streamlines, max_streamlines: int = MAX_STREAMLINES) -> list[np.ndarray]:
    """At most ``max_streamlines`` streamlines with two points or more, evenly spread over the list."""
    kept = [s for s in streamlines if len(s) > 1]
    if len(kept) <= max_streamlines:
        return kept
    idx = np.unique(np.linspace(0, len(kept) - 1, max_streamlines).round().astype(int))
    return [kept[i] for i in idx]


def _rgb_bytes(rgb: np.ndarray) -> np.ndarray:
    if rgb.dtype == np.uint8:
        return rgb
    return (np.clip(np.nan_to_num(rgb.astype(np.float32)), 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def scene_data(rgb: np.ndarray, mask: np.ndarray | None, results, max_streamlines: int = MAX_STREAMLINES,
               max_points: int = MAX_POINTS) -> dict:
    """The JSON the page's script reads: grid, slices and each method's encoded streamlines."""
    shape = tuple(int(n) for n in rgb.shape[:3])
    voxel = float(results[0].voxel_size) if results else 1.0
    scale = 32000.0 / max(max(shape), 1)                 # int16 step: voxel / scale
    centre = _centre(mask, shape)
    colours = _rgb_bytes(np.asarray(rgb)[..., :3])
    slices = []
    # (fixed axis, texture width axis, texture height axis); texture rows run along the height axis
    for fixed, a, b in ((2, 0, 1), (1, 0, 2), (0, 1, 2)):
        index = [slice(None)] * 3
        index[fixed] = centre[fixed]
        plane = colours[tuple(index)]                    # (shape[a], shape[b], 3)
        slices.append({"fixed": fixed, "at": int(centre[fixed]), "a": a, "b": b, "w": shape[a], "h": shape[b],
                       "rgb": _b64(np.transpose(plane, (1, 0, 2)))})
    methods = []
    for r in results:
        sample = [resample(s, max_points) for s in subsample(r.streamlines, max_streamlines)]
        if sample:
            points = np.concatenate(sample)
            q = np.clip(np.round(points * scale), -32768, 32767).astype("<i2")
            lengths = np.array([len(s) for s in sample], dtype="<u2")
        else:
            q, lengths = np.zeros((0, 3), "<i2"), np.zeros(0, "<u2")
        methods.append({"name": str(r.name), "shown": len(sample), "total": len(r.streamlines),
                        "points": _b64(q), "lengths": _b64(lengths)})
    return {"shape": shape, "voxel": voxel, "scale": scale, "centre": [int(c) for c in centre],
            "slices": slices, "methods": methods}


SCRIPT = r"""(function () {
'use strict';
var root = document.getElementById('dt3d');
var canvas = document.getElementById('dt3d-canvas');
var note = document.getElementById('dt3d-note');
var api = {status: 'starting', setAngles: function () {}, reset: function () {}};
window.difftractView = api;
function setStatus(s) { api.status = s; root.setAttribute('data-status', s); }
function fail(message) {
  setStatus(message === 'no-webgl' ? 'no-webgl' : 'error: ' + message);
  canvas.style.display = 'none';
  note.textContent = message === 'no-webgl'
    ? '3D view unavailable: this browser has no WebGL. The figures above show the same streamlines.'
    : '3D view failed: ' + message;
}
function bytes(b64) {
  var s = atob(b64), out = new Uint8Array(s.length);
  for (var i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}
var D = JSON.parse(document.getElementById('dt3d-data').textContent);
var gl = null;
try {
  gl = canvas.getContext('webgl', {antialias: true}) ||
       canvas.getContext('experimental-webgl');
} catch (e) { gl = null; }
if (!gl) { fail('no-webgl'); return; }

function shader(type, src) {
  var s = gl.createShader(type);
  gl.shaderSource(s, src); gl.compileShader(s);
  if (!gl.getShaderParameter(s, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(s));
  return s;
}
function program(vs, fs, attribs) {
  var p = gl.createProgram();
  gl.attachShader(p, shader(gl.VERTEX_SHADER, vs)); gl.attachShader(p, shader(gl.FRAGMENT_SHADER, fs));
  gl.linkProgram(p);
  if (!gl.getProgramParameter(p, gl.LINK_STATUS)) throw new Error(gl.getProgramInfoLog(p));
  var o = {p: p, m: gl.getUniformLocation(p, 'm')};
  attribs.forEach(function (a) { o[a] = gl.getAttribLocation(p, a); });
  return o;
}
function buffer(data) {
  var b = gl.createBuffer(); gl.bindBuffer(gl.ARRAY_BUFFER, b);
  gl.bufferData(gl.ARRAY_BUFFER, data, gl.STATIC_DRAW); return b;
}

var lineProg, quadProg, methods = [], quads = [];
try {
  lineProg = program(
    'attribute vec3 ap; attribute vec3 ac; uniform mat4 m; varying vec3 v;' +
    'void main(){ v = ac; gl_Position = m * vec4(ap, 1.0); }',
    'precision mediump float; varying vec3 v; void main(){ gl_FragColor = vec4(v, 1.0); }', ['ap', 'ac']);
  quadProg = program(
    'attribute vec3 ap; attribute vec2 at; uniform mat4 m; varying vec2 v;' +
    'void main(){ v = at; gl_Position = m * vec4(ap, 1.0); }',
    'precision mediump float; varying vec2 v; uniform sampler2D s;' +
    'void main(){ gl_FragColor = vec4(texture2D(s, v).rgb, 1.0); }', ['ap', 'at']);

  // streamlines: segments as vertex pairs, each coloured by |direction|
  D.methods.forEach(function (M) {
    var q = new Int16Array(bytes(M.points).buffer), n = new Uint16Array(bytes(M.lengths).buffer);
    var segs = 0, i, k;
    for (i = 0; i < n.length; i++) segs += n[i] - 1;
    var pos = new Float32Array(segs * 6), col = new Float32Array(segs * 6), o = 0, base = 0;
    for (i = 0; i < n.length; i++) {
      for (k = 0; k < n[i] - 1; k++) {
        var a = (base + k) * 3, b = a + 3;
        var dx = (q[b] - q[a]), dy = (q[b + 1] - q[a + 1]), dz = (q[b + 2] - q[a + 2]);
        var len = Math.sqrt(dx * dx + dy * dy + dz * dz) || 1;
        for (var j = 0; j < 3; j++) { pos[o + j] = q[a + j] / D.scale; pos[o + 3 + j] = q[b + j] / D.scale; }
        col[o] = col[o + 3] = Math.abs(dx) / len;
        col[o + 1] = col[o + 4] = Math.abs(dy) / len;
        col[o + 2] = col[o + 5] = Math.abs(dz) / len;
        o += 6;
      }
      base += n[i];
    }
    methods.push({pos: buffer(pos), col: buffer(col), count: segs * 2});
  });

  // colour-FA slices: one textured quad each, corners at the grid's outer voxel edges
  D.slices.forEach(function (S) {
    var tex = gl.createTexture();
    gl.bindTexture(gl.TEXTURE_2D, tex);
    gl.pixelStorei(gl.UNPACK_ALIGNMENT, 1);
    gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGB, S.w, S.h, 0, gl.RGB, gl.UNSIGNED_BYTE, bytes(S.rgb));
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MIN_FILTER, gl.NEAREST);
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MAG_FILTER, gl.NEAREST);
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_S, gl.CLAMP_TO_EDGE);
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_T, gl.CLAMP_TO_EDGE);
    var corners = [[0, 0], [1, 0], [0, 1], [1, 1]], pos = [], uv = [];
    corners.forEach(function (c) {
      var p = [0, 0, 0];
      p[S.fixed] = S.at; p[S.a] = c[0] ? S.w - 0.5 : -0.5; p[S.b] = c[1] ? S.h - 0.5 : -0.5;
      pos.push(p[0], p[1], p[2]); uv.push(c[0], c[1]);
    });
    quads.push({tex: tex, pos: buffer(new Float32Array(pos)), uv: buffer(new Float32Array(uv))});
  });
} catch (e) { fail(e.message || String(e)); return; }

// column-major 4x4 matrices
function mul(a, b) {
  var r = new Float32Array(16);
  for (var i = 0; i < 4; i++) for (var j = 0; j < 4; j++) {
    var s = 0; for (var k = 0; k < 4; k++) s += a[k * 4 + j] * b[i * 4 + k]; r[i * 4 + j] = s;
  }
  return r;
}
function ident() { var r = new Float32Array(16); r[0] = r[5] = r[10] = r[15] = 1; return r; }
function translate(x, y, z) { var r = ident(); r[12] = x; r[13] = y; r[14] = z; return r; }
function scale(s) { var r = ident(); r[0] = r[5] = r[10] = s; return r; }
function rotX(t) { var r = ident(), c = Math.cos(t), s = Math.sin(t); r[5] = c; r[6] = s; r[9] = -s; r[10] = c; return r; }
function rotZ(t) { var r = ident(), c = Math.cos(t), s = Math.sin(t); r[0] = c; r[1] = s; r[4] = -s; r[5] = c; return r; }
function perspective(fovy, aspect, near, far) {
  var f = 1 / Math.tan(fovy / 2), r = new Float32Array(16);
  r[0] = f / aspect; r[5] = f; r[10] = (far + near) / (near - far); r[11] = -1; r[14] = 2 * far * near / (near - far);
  return r;
}

var sx = D.shape[0], sy = D.shape[1], sz = D.shape[2];
var radius = 0.5 * D.voxel * Math.sqrt(sx * sx + sy * sy + sz * sz);
var FOV = 40 * Math.PI / 180, HOME = {az: -30, el: 25, dist: 1.1 * radius / Math.sin(FOV / 2)};
var view = {az: HOME.az, el: HOME.el, dist: HOME.dist}, current = 0;
var model = mul(scale(D.voxel), translate(-(sx - 1) / 2, -(sy - 1) / 2, -(sz - 1) / 2));

function draw() {
  var dpr = window.devicePixelRatio || 1;
  var w = Math.max(1, Math.round(canvas.clientWidth * dpr)), h = Math.max(1, Math.round(canvas.clientHeight * dpr));
  if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
  gl.viewport(0, 0, w, h);
  gl.clearColor(0.08, 0.08, 0.1, 1); gl.enable(gl.DEPTH_TEST);
  gl.clear(gl.COLOR_BUFFER_BIT | gl.DEPTH_BUFFER_BIT);
  // z up; el = 90 looks down the z axis, az turns about it
  var cam = mul(translate(0, 0, -view.dist),
                mul(rotX(-(90 - view.el) * Math.PI / 180), rotZ(-view.az * Math.PI / 180)));
  var m = mul(perspective(FOV, w / h, radius * 0.05, view.dist + 4 * radius), mul(cam, model));
  if (document.getElementById('dt3d-slices').checked) {
    gl.useProgram(quadProg.p); gl.uniformMatrix4fv(quadProg.m, false, m);
    quads.forEach(function (Q) {
      gl.bindTexture(gl.TEXTURE_2D, Q.tex);
      gl.bindBuffer(gl.ARRAY_BUFFER, Q.pos); gl.enableVertexAttribArray(quadProg.ap);
      gl.vertexAttribPointer(quadProg.ap, 3, gl.FLOAT, false, 0, 0);
      gl.bindBuffer(gl.ARRAY_BUFFER, Q.uv); gl.enableVertexAttribArray(quadProg.at);
      gl.vertexAttribPointer(quadProg.at, 2, gl.FLOAT, false, 0, 0);
      gl.drawArrays(gl.TRIANGLE_STRIP, 0, 4);
    });
    gl.disableVertexAttribArray(quadProg.at);
  }
  var M = methods[current];
  if (M && M.count) {
    gl.useProgram(lineProg.p); gl.uniformMatrix4fv(lineProg.m, false, m);
    gl.bindBuffer(gl.ARRAY_BUFFER, M.pos); gl.enableVertexAttribArray(lineProg.ap);
    gl.vertexAttribPointer(lineProg.ap, 3, gl.FLOAT, false, 0, 0);
    gl.bindBuffer(gl.ARRAY_BUFFER, M.col); gl.enableVertexAttribArray(lineProg.ac);
    gl.vertexAttribPointer(lineProg.ac, 3, gl.FLOAT, false, 0, 0);
    gl.drawArrays(gl.LINES, 0, M.count);
    gl.disableVertexAttribArray(lineProg.ac);
  }
  var err = gl.getError();
  if (err !== gl.NO_ERROR) { setStatus('error: WebGL error ' + err); return; }
  setStatus('drawn');
}

api.setAngles = function (az, el) {
  view.az = az; view.el = Math.max(-90, Math.min(90, el)); draw();
};
api.reset = function () { view.az = HOME.az; view.el = HOME.el; view.dist = HOME.dist; draw(); };
api.draw = draw; api.view = view;
document.getElementById('dt3d-reset').addEventListener('click', api.reset);
document.getElementById('dt3d-slices').addEventListener('change', draw);
var menu = document.getElementById('dt3d-method');
if (menu) menu.addEventListener('change', function () { current = +menu.value; draw(); });
var drag = null;
canvas.addEventListener('pointerdown', function (e) {
  drag = {x: e.clientX, y: e.clientY}; canvas.style.cursor = 'grabbing';
  try { canvas.setPointerCapture(e.pointerId); } catch (err) { /* a synthetic pointer: no capture */ }
});
canvas.addEventListener('pointermove', function (e) {
  if (!drag) return;
  api.setAngles(view.az - 0.4 * (e.clientX - drag.x), view.el + 0.4 * (e.clientY - drag.y));
  drag = {x: e.clientX, y: e.clientY};
});
function release() { drag = null; canvas.style.cursor = 'grab'; }
canvas.addEventListener('pointerup', release); canvas.addEventListener('pointercancel', release);
canvas.addEventListener('wheel', function (e) {
  e.preventDefault();
  view.dist = Math.max(0.2 * radius, Math.min(10 * radius, view.dist * Math.exp(0.001 * e.deltaY))); draw();
}, {passive: false});
window.addEventListener('resize', draw);
var hash = /^#view3d=(-?[\d.]+),(-?[\d.]+)$/.exec(window.location.hash);
if (hash) {                     // a view to show alone (screenshots): the section fills the window
  view.az = parseFloat(hash[1]); view.el = parseFloat(hash[2]);
  root.style.cssText = 'position:fixed;left:0;top:0;width:100%;height:100%;z-index:10;background:#fff;padding:0 .5em';
  canvas.style.maxWidth = 'none'; canvas.style.height = 'calc(100% - 3em)';
}
try { draw(); } catch (e) { fail(e.message || String(e)); }
})();
"""


def viewer_section(rgb: np.ndarray, mask: np.ndarray | None, results, max_streamlines: int = MAX_STREAMLINES,
                   max_points: int = MAX_POINTS) -> str:
    """The report's "3D view" section: heading, controls, canvas, data and script (one HTML string)."""
    data = scene_data(rgb, mask, results, max_streamlines, max_points)
    options = "".join(f'<option value="{k}">{html.escape(m["name"])}: {m["shown"]} of {m["total"]} streamlines'
                      f"</option>" for k, m in enumerate(data["methods"]))
    if len(data["methods"]) > 1:
        menu = f'<select id="dt3d-method">{options}</select>'
    else:
        menu = "".join(f'<span>{html.escape(m["name"])}: {m["shown"]} of {m["total"]} streamlines</span>'
                       for m in data["methods"])
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    return ('<h2>3D view</h2><div id="dt3d" data-status="loading">'
            '<div style="font-size:.85em;margin:.3em 0"><button type="button" id="dt3d-reset">reset view</button> '
            '<label><input type="checkbox" id="dt3d-slices" checked> colour-FA slices</label> '
            f"{menu} <span style=\"color:#555\">drag to rotate, wheel to zoom; colour = direction "
            "(|x| red, |y| green, |z| blue)</span></div>"
            '<canvas id="dt3d-canvas" style="width:100%;max-width:900px;height:600px;display:block;'
            'background:#141419;cursor:grab;touch-action:none"></canvas>'
            '<p id="dt3d-note" style="font-size:.85em;color:#555"></p></div>'
            f'<script type="application/json" id="dt3d-data">{payload}</script>'
            f"<script>{SCRIPT}</script>")
