// echovault viewer: one small single-page app, no framework, no build step.
// Routes on location.pathname: "/" search, "/study/{id}" study, "/ingest" ingest.
// Every API text reaches the DOM through textContent / createElement, never innerHTML.
'use strict';

// ---- small DOM helpers ---------------------------------------------------------------------

const $ = (sel, root = document) => root.querySelector(sel);
const SVG_NS = 'http://www.w3.org/2000/svg';

/** An element: props are attributes, except class, text, dataset and on* listeners. */
function el(tag, props = {}, ...children) {
  return build(document.createElement(tag), props, children);
}
function svg(tag, props = {}, ...children) {
  return build(document.createElementNS(SVG_NS, tag), props, children);
}
function build(node, props, children) {
  for (const [k, v] of Object.entries(props)) {
    if (v == null || v === false) continue;
    if (k === 'class') node.setAttribute('class', v);
    else if (k === 'text') node.textContent = String(v);
    else if (k === 'dataset') Object.assign(node.dataset, v);
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c == null || c === false) continue;
    node.append(c instanceof Node ? c : String(c));
  }
  return node;
}
const note = (text, cls = '') => el('p', { class: `note ${cls}`.trim(), text });

// ---- formatting ----------------------------------------------------------------------------

const KIND_PLURAL = { video: 'videos', study: 'studies', report: 'reports' };
const plural = (kind, n) => (n === 1 ? kind : KIND_PLURAL[kind] || `${kind}s`);
const fmtScore = (s) => (typeof s === 'number' ? s.toFixed(3) : '—');
const shortKey = (k) => (k && k.length > 10 ? `${k.slice(0, 10)}…` : k || '');
const humanTask = (t) => t.replace(/[_.-]+/g, ' ').replace(/^\w/, (c) => c.toUpperCase());
const studyHref = (study) => `/study/${encodeURIComponent(study)}`;
const dayOf = (date) => Date.parse(`${date}T00:00:00Z`) / 86400000;
const dateOfDay = (day) => new Date(day * 86400000).toISOString().slice(0, 10);
const mean = (xs) => xs.reduce((a, b) => a + b, 0) / xs.length;

/** The pseudonymous patient key, shortened, full key in title=. */
function patientSpan(key) {
  if (!key) return el('span', { class: 'patient', text: 'no patient' });
  return el('span', { class: 'patient', title: key, text: shortKey(key) });
}

// ---- state: server settings and the token --------------------------------------------------

const TOKEN_KEY = 'echovault.token';
let config = {
  show_paths: false, token_needed: false, admin: true, version: '', space: '',
  kinds: ['video', 'study', 'report'], thumb: { cell_width: 160, cell_height: 120, max_frames: 16 },
};

function getToken() {
  try { return sessionStorage.getItem(TOKEN_KEY) || ''; } catch { return ''; }
}
function setToken(t) {
  try { t ? sessionStorage.setItem(TOKEN_KEY, t) : sessionStorage.removeItem(TOKEN_KEY); } catch { /* storage off */ }
}

// ---- the JSON API --------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error) || `The server answered ${status}.`);
    this.status = status;
    this.field = body ? body.field ?? null : null;
    this.reason = body ? body.reason ?? null : null;
  }
}

/** fetch() with the bearer token; JSON in (json) or a FormData (form); JSON out, or the raw
 *  Response with raw: true. Throws ApiError with the API's own message. */
async function api(path, { method, json, form, raw = false, signal } = {}) {
  const headers = {};
  const token = getToken();
  if (token) headers.Authorization = `Bearer ${token}`;
  let body;
  if (json !== undefined) {
    headers['Content-Type'] = 'application/json';
    body = JSON.stringify(json);
  } else if (form) {
    body = form;
  }
  let res;
  try {
    res = await fetch(path, { method: method || (body ? 'POST' : 'GET'), headers, body, signal });
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, { error: 'The server did not answer: is echovault serve still running?' });
  }
  if (raw) return res;
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!res.ok) {
    throw new ApiError(res.status, data && typeof data === 'object' ? data : { error: text.trim() || `HTTP ${res.status}` });
  }
  return data;
}

function showError(e) {
  if (e && e.name === 'AbortError') return;
  $('#error').textContent = e instanceof Error ? e.message : String(e);
}
const clearError = () => { $('#error').textContent = ''; };

// ---- cine thumbnails: frame-strip sprites animated with CSS steps() ------------------------

const cineIds = new WeakMap(); // .cine element -> item id

/** At most 6 fetches at once; cards offscreen wait for the IntersectionObserver. */
const Thumbs = {
  max: 6, active: 0, queue: [], urls: [], io: null, abort: new AbortController(), onPlaying: null,

  reset() {
    this.abort.abort();
    this.abort = new AbortController();
    this.queue = [];
    this.active = 0;
    this.urls.forEach((u) => URL.revokeObjectURL(u));
    this.urls = [];
    if (this.io) this.io.disconnect();
    this.io = null;
  },

  /** Loads the cines on screen now, the others as they scroll near. */
  watch(cines) {
    const later = [];
    for (const c of cines) (onScreen(c) ? this.enqueue(c) : later.push(c));
    if (!later.length) return;
    if (!('IntersectionObserver' in window)) { later.forEach((c) => this.enqueue(c)); return; }
    if (!this.io) {
      this.io = new IntersectionObserver((entries) => {
        for (const en of entries) {
          if (!en.isIntersecting) continue;
          this.io.unobserve(en.target);
          this.enqueue(en.target);
        }
      }, { rootMargin: '300px 0px' });
    }
    later.forEach((c) => this.io.observe(c));
  },

  enqueue(cine) {
    if (cine.dataset.queued) return;
    cine.dataset.queued = '1';
    this.queue.push(cine);
    this.pump();
  },

  pump() {
    while (this.active < this.max && this.queue.length) {
      const cine = this.queue.shift();
      const signal = this.abort.signal;
      this.active++;
      loadThumb(cine, signal).catch(() => {}).finally(() => {
        if (signal.aborted) return; // reset() already zeroed the count
        this.active--;
        this.pump();
      });
    }
  },
};

function onScreen(node) {
  const r = node.getBoundingClientRect();
  return r.bottom > -50 && r.top < window.innerHeight + 50 && r.right > 0 && r.left < window.innerWidth;
}

/** A .cine box in state loading; scale 2 on the study page. */
function cineBox(id, scale = 1) {
  const c = el('div', { class: scale === 2 ? 'cine large' : 'cine', role: 'img', 'aria-label': 'Cine loop', dataset: { state: 'loading', scale: String(scale) } },
    el('span', { class: 'cine-caption' }));
  cineIds.set(c, id);
  return c;
}

function setCineState(cine, state, caption = '') {
  cine.dataset.state = state;
  $('.cine-caption', cine).textContent = caption;
}

async function loadThumb(cine, signal) {
  const id = cineIds.get(cine);
  let res;
  try {
    res = await api(`/v1/items/${encodeURIComponent(id)}/thumb`, { raw: true, signal });
  } catch (e) {
    if (!signal.aborted) setCineState(cine, 'error', 'Thumbnail unavailable');
    return;
  }
  if (!res.ok) {
    let body = {};
    try { body = await res.json(); } catch { body = {}; }
    if (signal.aborted) return;
    if (res.status === 404 && body.reason === 'missing-source') {
      cine.prepend(el('img', { class: 'placeholder', src: '/assets/placeholder.svg', alt: '' }));
      setCineState(cine, 'missing', 'Source file not found');
    } else {
      setCineState(cine, 'error', thumbFailure(res.status, body));
    }
    return;
  }
  const frames = parseInt(res.headers.get('x-echovault-frames'), 10);
  const duration = parseInt(res.headers.get('x-echovault-duration-ms'), 10);
  const blob = await res.blob();
  if (signal.aborted) return;
  const url = URL.createObjectURL(blob);
  Thumbs.urls.push(url);
  const img = new Image();
  img.src = url;
  try { await img.decode(); } catch { setCineState(cine, 'error', 'Cannot show this thumbnail'); return; }
  if (signal.aborted) return;
  const scale = Number(cine.dataset.scale) || 1;
  const cw = config.thumb.cell_width || 160;
  const ch = config.thumb.cell_height || 120;
  const n = frames > 0 ? frames : Math.max(1, Math.round(img.naturalWidth / cw));
  cine.style.setProperty('--frames', String(n));
  cine.style.setProperty('--cell-w', `${cw * scale}px`);
  cine.style.setProperty('--cell-h', `${ch * scale}px`);
  cine.style.setProperty('--duration', `${duration > 0 ? duration : 1000}ms`);
  cine.style.backgroundImage = `url("${url}")`;
  cine.classList.add('is-playing');
  setCineState(cine, 'playing');
  if (Thumbs.onPlaying) Thumbs.onPlaying(cine);
}

function thumbFailure(status, body) {
  if (status === 404) return 'Not in the index';
  if (status === 415 || status === 422 || body.reason === 'undecodable') return 'Cannot decode this video';
  if (status === 401 || status === 403) return 'Token needed';
  return 'Thumbnail failed';
}

// ---- result cards --------------------------------------------------------------------------

/** One hit as a.result; its .cine (videos) or .snippet (studies, reports). */
function resultCard(hit, rank) {
  const href = hit.study ? studyHref(hit.study) : `/?like=${encodeURIComponent(hit.id)}&kind=${encodeURIComponent(hit.kind)}`;
  const visual = hit.kind === 'video'
    ? el('div', { class: 'well' }, cineBox(hit.id))
    : el('div', { class: 'snippet-box' }, el('p', { class: 'snippet', text: snippet(hit) }));
  const meta = el('div', { class: 'meta' },
    el('span', { class: 'score', title: 'similarity', text: fmtScore(hit.score) }),
    el('span', { class: 'rank', text: `#${rank}` }),
    el('span', { class: 'date', text: hit.date || 'undated' }),
    patientSpan(hit.patient),
    config.show_paths && hit.source ? el('span', { class: 'source', title: hit.source, text: hit.source }) : null);
  return el('a', {
    class: 'result', href,
    'aria-label': `${rank}. ${hit.kind}, score ${fmtScore(hit.score)}, ${hit.date || 'undated'}`,
    dataset: { id: hit.id, study: hit.study || '', kind: hit.kind, score: String(hit.score), rank: String(rank) },
  }, visual, meta);
}

function snippet(hit) {
  const t = (hit.text || '').replace(/\s+/g, ' ').trim();
  if (!t) return hit.kind === 'study' ? `Study ${hit.study || hit.id} (no report text)` : 'No report text';
  return t.length > 320 ? `${t.slice(0, 320)}…` : t;
}

// ---- search page ---------------------------------------------------------------------------

const DEFAULT_K = 24;
let searchSeq = 0;
let firstPlayingDone = false;
let lastFile = null;

function searchPage(view) {
  document.body.dataset.page = 'search';
  const params = new URLSearchParams(location.search);
  const kOptions = [12, 24, 48, 96];
  const k = parseInt(params.get('k'), 10) || DEFAULT_K;
  if (!kOptions.includes(k)) kOptions.push(k);

  const form = el('form', { id: 'search-form', role: 'search', 'aria-label': 'Search the archive' },
    el('div', { class: 'query-row' },
      el('div', { class: 'field' },
        el('label', { for: 'q', text: 'Search' }),
        el('input', { id: 'q', name: 'q', type: 'search', autocomplete: 'off', spellcheck: 'false',
          placeholder: 'e.g. pacemaker lead, severe mitral regurgitation' })),
      el('button', { id: 'search-go', class: 'primary', type: 'submit', text: 'Search' })),
    el('div', { class: 'filters' },
      field('kind', 'Kind', el('select', { id: 'kind', name: 'kind' },
        ...['video', 'study', 'report'].map((v) => el('option', { value: v, text: KIND_PLURAL[v].replace(/^\w/, (c) => c.toUpperCase()) })))),
      field('k', 'Results', el('select', { id: 'k', name: 'k' }, ...kOptions.map((n) => el('option', { value: n, text: n })))),
      field('since', 'From', el('input', { id: 'since', name: 'since', type: 'date' })),
      field('until', 'To', el('input', { id: 'until', name: 'until', type: 'date' })),
      field('patient', 'Patient key', el('input', { id: 'patient', name: 'patient', type: 'text', autocomplete: 'off', spellcheck: 'false' })),
      el('label', { class: 'check' }, el('input', { id: 'group-study', name: 'group', type: 'checkbox' }), 'Group by study')));

  const drop = el('div', { id: 'drop', role: 'button', tabindex: '0', 'aria-describedby': 'drop-file' },
    el('span', { class: 'drop-title', text: 'Drop a cine (DICOM, AVI, MP4) or choose a file' }),
    el('span', { id: 'drop-file', class: 'drop-file' }),
    el('input', { id: 'video-file', type: 'file', tabindex: '-1', 'aria-label': 'Video file to search by',
      accept: '.dcm,.dicom,.avi,.mp4,.m4v,.mov,video/*,application/dicom' }));

  view.replaceChildren(
    el('div', { class: 'search-panel' }, form, drop),
    el('div', { class: 'status-row' }, el('p', { id: 'status', 'aria-live': 'polite', text: 'Type a search, or drop a cine to find similar ones.' })),
    el('div', { id: 'results', class: 'grid', tabindex: '-1', 'aria-label': 'Results' }));

  // The URL's search, written back into the form.
  $('#q').value = params.get('q') || '';
  $('#kind').value = ['video', 'study', 'report'].includes(params.get('kind')) ? params.get('kind') : 'video';
  $('#k').value = String(k);
  $('#since').value = params.get('since') || '';
  $('#until').value = params.get('until') || '';
  $('#patient').value = params.get('patient') || '';
  $('#group-study').checked = params.get('group') === 'study';

  form.addEventListener('submit', (e) => {
    e.preventDefault();
    if (!$('#q').value.trim() && lastFile) runVideoSearch(lastFile);
    else runTextSearch();
  });
  for (const id of ['kind', 'k', 'group-study']) $(`#${id}`).addEventListener('change', rerun);
  wireDrop(drop, $('#video-file'));

  Thumbs.onPlaying = () => {
    const results = $('#results');
    if (!firstPlayingDone && results) {
      firstPlayingDone = true;
      results.dataset.firstPlayingMs = String(Math.round(performance.now()));
    }
  };

  if (params.get('q')) runTextSearch();
  else if (params.get('like')) runSearch({ like: params.get('like'), ...searchFilters() }, null);
}

function field(id, label, control) {
  return el('div', { class: 'field' }, el('label', { for: id, text: label }), control);
}

function rerun() {
  if ($('#q').value.trim()) runTextSearch();
  else if (lastFile) runVideoSearch(lastFile);
}

function wireDrop(drop, input) {
  const choose = () => input.click();
  drop.addEventListener('click', (e) => { if (e.target !== input) choose(); });
  drop.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); choose(); }
  });
  input.addEventListener('change', () => {
    const f = input.files[0];
    input.value = ''; // choosing the same file again searches again
    if (f) runVideoSearch(f);
  });
  drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('dragover'); });
  drop.addEventListener('dragleave', () => drop.classList.remove('dragover'));
  drop.addEventListener('drop', (e) => {
    e.preventDefault();
    drop.classList.remove('dragover');
    const f = e.dataTransfer && e.dataTransfer.files[0];
    if (f) runVideoSearch(f);
  });
}

/** The filters of the form as the API's fields. */
function searchFilters() {
  const f = { kind: $('#kind').value, k: parseInt($('#k').value, 10) || DEFAULT_K };
  for (const id of ['since', 'until', 'patient']) {
    const v = $(`#${id}`).value.trim();
    if (v) f[id] = v;
  }
  if ($('#group-study').checked) f.group_by = 'study';
  return f;
}

/** The search as a link: q and the filters that differ from the defaults. */
function writeUrl(f, q) {
  const p = new URLSearchParams();
  if (q) p.set('q', q);
  if (f.kind !== 'video') p.set('kind', f.kind);
  if (f.k !== DEFAULT_K) p.set('k', String(f.k));
  for (const id of ['since', 'until', 'patient']) if (f[id]) p.set(id, f[id]);
  if (f.group_by) p.set('group', 'study');
  const s = p.toString();
  history.replaceState(null, '', s ? `/?${s}` : '/');
}

function runTextSearch() {
  const q = $('#q').value.trim();
  const f = searchFilters();
  if (!q) {
    $('#status').textContent = 'Type a search, or drop a cine to find similar ones.';
    return;
  }
  lastFile = null;
  $('#drop-file').textContent = '';
  writeUrl(f, q);
  runSearch({ text: q, ...f }, null);
}

function runVideoSearch(file) {
  lastFile = file;
  const f = searchFilters();
  writeUrl(f, '');
  const form = new FormData();
  form.append('video', file, file.name);
  for (const [k, v] of Object.entries(f)) form.append(k, String(v));
  runSearch(form, file.name);
}

/** Runs one search (a JSON body or a multipart form) and renders its answer. */
async function runSearch(body, byName) {
  const seq = ++searchSeq;
  const results = $('#results');
  const status = $('#status');
  const drop = $('#drop');
  clearError();
  results.dataset.done = '0';
  status.textContent = byName ? `Searching by ${byName}…` : 'Searching…';
  $('#drop-file').textContent = byName && body instanceof FormData ? `Searching by ${byName}…` : '';
  drop.classList.toggle('busy', body instanceof FormData);
  const t0 = performance.now();
  try {
    const data = body instanceof FormData ? await api('/v1/search', { form: body }) : await api('/v1/search', { json: body });
    if (seq !== searchSeq) return;
    renderResults(data, (performance.now() - t0) / 1000);
    if (body instanceof FormData) $('#drop-file').textContent = `Searched by ${byName}`;
  } catch (e) {
    if (seq !== searchSeq) return;
    Thumbs.reset();
    results.replaceChildren();
    results.dataset.count = '0';
    results.dataset.done = '1';
    status.textContent = 'The search failed.';
    $('#drop-file').textContent = byName && body instanceof FormData ? `Could not search by ${byName}` : '';
    showError(e);
  } finally {
    if (seq === searchSeq) drop.classList.remove('busy');
  }
}

function renderResults(data, secs) {
  const results = $('#results');
  Thumbs.reset();
  results.replaceChildren();
  const kind = data.kind || 'video';
  let rank = 0;
  if (Array.isArray(data.groups)) {
    results.className = 'groups';
    for (const g of data.groups) {
      const key = g.study ?? g.patient ?? '';
      const first = g.hits[0] || {};
      const head = el('div', { class: 'group-head' },
        el('h3', {}, g.study != null ? el('a', { href: studyHref(g.study), class: 'mono', text: g.study }) : el('span', { class: 'mono', text: shortKey(key) })),
        el('span', { class: 'muted', text: first.date || 'undated' }),
        el('span', { class: 'muted' }, 'patient ', patientSpan(first.patient)),
        el('span', { class: 'muted', text: `best ${fmtScore(first.score)}` }));
      const grid = el('div', { class: 'grid' }, g.hits.map((h) => resultCard(h, ++rank)));
      results.append(el('section', { class: 'group', dataset: { study: key }, 'aria-label': `Study ${key}` }, head, grid));
    }
    status(`${data.groups.length} ${plural('study', data.groups.length)}, ${rank} ${plural(kind, rank)} in ${secs.toFixed(2)} s`);
  } else {
    results.className = 'grid';
    const hits = data.hits || [];
    results.append(...hits.map((h) => resultCard(h, ++rank)));
    status(`${rank} ${plural(kind, rank)} in ${secs.toFixed(2)} s`);
  }
  if (rank === 0) results.append(note('Nothing matched. Try other words or fewer filters.'));
  results.dataset.count = String(rank);
  results.dataset.done = '1';
  Thumbs.watch([...results.querySelectorAll('.cine')]);

  function status(text) { $('#status').textContent = text; }
}

// ---- study page ----------------------------------------------------------------------------

async function studyPage(view, id) {
  document.body.dataset.page = 'study';
  const panel = (title, ...content) => el('section', { class: 'panel', 'aria-label': title }, el('h2', { text: title }), ...content);
  view.replaceChildren(
    el('div', { class: 'study-head' },
      el('h1', { id: 'study-title', text: `Study ${id}` }),
      el('span', { id: 'study-patient', class: 'patient-line' })),
    el('div', { class: 'study-grid' },
      panel('Videos', el('div', { id: 'study-videos' }, note('Loading…'))),
      el('div', { class: 'study-side' },
        panel('Report', el('div', { id: 'report-text' }, 'Loading…')),
        panel('Zero-shot readings', el('div', { id: 'readings' }, note('Loading…'))))),
    el('section', { class: 'panel full', 'aria-label': 'Patient timeline' },
      el('h2', { text: 'Patient timeline' }), el('div', { id: 'timeline' }, note('Loading…'))),
    el('div', { class: 'study-lower' },
      panel('Same patient, other studies?', el('ul', { id: 'reid' }, el('li', {}, note('Loading…')))),
      panel('More like this', el('div', { id: 'more-like', class: 'grid' }, note('Loading…')))));

  let data;
  try {
    data = await api(`/v1/studies/${encodeURIComponent(id)}`);
  } catch (e) {
    showError(e);
    for (const sel of ['#study-videos', '#readings', '#timeline', '#more-like']) $(sel).replaceChildren(note('—'));
    $('#reid').replaceChildren();
    $('#report-text').textContent = 'No report in the index for this study';
    return;
  }
  const items = data.items || [];
  const videos = items.filter((r) => r.kind === 'video');
  const report = items.find((r) => r.kind === 'report' && r.text);
  const rec = items.find((r) => r.kind === 'study') || {};
  const date = rec.date || (items.find((r) => r.date) || {}).date || null;
  const patient = rec.patient || (items.find((r) => r.patient) || {}).patient || null;

  $('#study-title').textContent = `Study ${id}`;
  $('#study-title').append(' ', el('span', { class: 'title-date', text: date || 'undated' }));
  document.title = `Study ${date || id} · echovault`;
  $('#study-patient').replaceChildren('Patient ', patientSpan(patient), ` · ${videos.length} ${plural('video', videos.length)}`);

  renderStudyVideos(videos);
  const rt = $('#report-text');
  rt.textContent = report ? report.text : 'No report in the index for this study';
  rt.classList.toggle('empty', !report);

  loadReadings($('#readings'), videos);
  loadTimeline($('#timeline'), patient, id, date);
  loadReid($('#reid'), id);
  loadMoreLike($('#more-like'), videos, id);
}

function renderStudyVideos(videos) {
  const box = $('#study-videos');
  if (!videos.length) { box.replaceChildren(note('No videos of this study in the index.')); return; }
  box.replaceChildren(...videos.map((v, i) => el('figure', { class: 'video', dataset: { id: v.id } },
    cineBox(v.id, 2),
    el('figcaption', {},
      `Video ${i + 1}`,
      v.frames ? ` · ${v.frames} frames` : '',
      v.fps ? ` · ${Math.round(v.fps)} fps` : '',
      ' · ', el('a', { href: `/?like=${encodeURIComponent(v.id)}`, text: 'similar videos' }),
      config.show_paths && v.source ? el('div', { class: 'mono', title: v.source, text: v.source }) : null))));
  Thumbs.watch([...box.querySelectorAll('.cine')]);
}

// ---- study page: zero-shot readings --------------------------------------------------------

const UNIT_FALLBACK = { ejection_fraction: '%', lvef: '%', pulmonary_artery_pressure: 'mmHg' };
const unitOf = (task, units) => (units && units[task]) || UNIT_FALLBACK[task] || (/ejection|lvef/i.test(task) ? '%' : '');

async function loadReadings(box, videos) {
  if (!videos.length) { box.replaceChildren(note('No videos: no readings.')); return; }
  const stored = storedReadings(videos);
  if (stored) { renderReadings(box, stored); return; }
  box.replaceChildren(note(`Reading ${videos.length} ${plural('video', videos.length)}…`));
  try {
    const r = await api('/v1/zero-shot', { json: { ids: videos.map((v) => v.id) } });
    renderReadings(box, zeroShotReadings(r));
  } catch (e) {
    box.replaceChildren(note(`Readings unavailable: ${e.message}`, 'bad'));
  }
}

/** Readings the index keeps in the videos' records ("zero_shot.TASK"), averaged. */
function storedReadings(videos) {
  const per = new Map();
  let model = '';
  let n = 0;
  for (const v of videos) {
    let any = false;
    for (const [k, val] of Object.entries(v.extra || {})) {
      if (!k.startsWith('zero_shot.')) continue;
      if (k === 'zero_shot.model') { model = val; continue; }
      any = true;
      const task = k.slice(10);
      if (!per.has(task)) per.set(task, []);
      per.get(task).push(val);
    }
    if (any) n++;
  }
  if (!per.size) return null;
  const list = [];
  for (const [task, vals] of per) {
    const nums = vals.map(Number);
    const unit = unitOf(task);
    if (nums.every(Number.isFinite)) {
      const m = mean(nums);
      list.push(unit || nums.some((x) => Math.abs(x) > 1) ? { task, mode: 'regression', value: m, unit } : { task, mode: 'binary', score: m });
    } else {
      const counts = {};
      vals.forEach((c) => { counts[c] = (counts[c] || 0) + 1; });
      const best = Object.keys(counts).sort((a, b) => counts[b] - counts[a])[0];
      list.push({ task, mode: 'categorical', cls: best, score: counts[best] / vals.length, agree: `${counts[best]} of ${vals.length} videos` });
    }
  }
  const src = `Stored readings${model ? ` (${model})` : ''}: mean of ${n} ${plural('video', n)}.`;
  return { src, list };
}

/** POST /v1/zero-shot's answer, each task averaged over the study's videos. */
function zeroShotReadings(r) {
  const results = (r.results || []).filter((x) => x.readings);
  const tasks = r.tasks && r.tasks.length ? r.tasks : [...new Set(results.flatMap((x) => Object.keys(x.readings)))];
  const list = [];
  for (const task of tasks) {
    const rs = results.map((x) => x.readings[task]).filter(Boolean);
    if (!rs.length) continue;
    const r0 = rs[0];
    if ('value' in r0) {
      list.push({ task, mode: 'regression', value: mean(rs.map((x) => x.value)), unit: unitOf(task, r.units) });
    } else if ('class' in r0) {
      const sums = new Map();
      for (const x of rs) {
        const pairs = Array.isArray(x.scores) ? x.scores : Object.entries(x.scores || {});
        for (const [c, s] of pairs) sums.set(c, (sums.get(c) || 0) + s / rs.length);
      }
      const classes = [...sums];
      const best = classes.reduce((a, b) => (b[1] > a[1] ? b : a), classes[0] || [r0.class, 0]);
      list.push({ task, mode: 'categorical', cls: best[0], score: best[1], classes });
    } else if ('score' in r0) {
      const votes = rs.filter((x) => typeof x.present === 'boolean');
      const yes = votes.filter((x) => x.present).length;
      list.push({ task, mode: 'binary', score: mean(rs.map((x) => x.score)),
        present: votes.length ? { yes, n: votes.length, is: yes * 2 >= votes.length } : null });
    }
  }
  const n = results.length;
  const failed = (r.failed || []).length;
  // The prompt file by its name only (the server's directories are not the viewer's business).
  const prompts = r.prompts ? r.prompts.split('/').pop() : '';
  const src = `${r.model || 'Zero-shot'}${prompts ? `, ${prompts} prompts` : ''}: mean of ${n} ${plural('video', n)}`
    + (failed ? ` (${failed} could not be read).` : '.');
  return { src, list };
}

function renderReadings(box, { src, list }) {
  if (!list.length) { box.replaceChildren(note('No readings for these videos.')); return; }
  box.replaceChildren(el('p', { class: 'readings-source', text: src }), ...list.map(readingRow));
}

function readingRow(r) {
  let share = 0;
  let value = '';
  let detail = '';
  let extra = null;
  if (r.mode === 'regression') {
    const max = r.unit === '%' ? 100 : Math.max(100, Math.ceil(r.value / 10) * 10);
    share = r.value / max;
    value = r.unit === '%' ? `${Math.round(r.value)} %` : `${Math.round(r.value * 10) / 10}${r.unit ? ` ${r.unit}` : ''}`;
    detail = `scale 0–${max}${r.unit ? ` ${r.unit}` : ''}`;
  } else if (r.mode === 'binary') {
    share = r.score;
    value = r.present ? (r.present.is ? 'present' : 'absent') : r.score.toFixed(2);
    // A binary score is a mean cosine similarity (-1..1; findings read ~0.2-0.4): the bar
    // shows its positive part.
    detail = r.present
      ? `similarity ${r.score.toFixed(2)} · present in ${r.present.yes} of ${r.present.n} ${plural('video', r.present.n)}`
      : 'cosine similarity to the finding\'s prompts';
  } else {
    share = r.score;
    value = r.cls;
    detail = r.agree ? `read in ${r.agree}` : `similarity ${r.score.toFixed(2)}`;
    if (r.classes) {
      extra = el('details', {}, el('summary', { text: 'all classes' }), el('div', { class: 'classes' }, r.classes.flatMap(([c, s]) => [
        el('span', { text: c }), el('span', { text: s.toFixed(2) }),
        barOf(s, c === r.cls ? 'class-bar best' : 'class-bar', 'class-fill')])));
    }
  }
  const cls = r.mode === 'binary' && r.present && r.present.is ? 'value present' : 'value';
  return el('div', { class: 'reading', dataset: { task: r.task, mode: r.mode } },
    el('span', { class: 'label', title: r.task, text: humanTask(r.task) }),
    el('span', { class: cls, text: value }),
    barOf(share, 'bar', 'fill'),
    el('span', { class: 'detail', text: detail }),
    extra);
}

function barOf(share, cls, fillCls) {
  const fill = el('div', { class: fillCls });
  fill.style.width = `${(Math.min(1, Math.max(0, share || 0)) * 100).toFixed(1)}%`;
  return el('div', { class: cls, 'aria-hidden': 'true' }, fill);
}

// ---- study page: more like this, reid ------------------------------------------------------

async function loadMoreLike(box, videos, studyId) {
  if (!videos.length) { box.replaceChildren(note('No video to search with.')); return; }
  try {
    const r = await api('/v1/search', { json: { like: videos[0].id, k: 9 } });
    const hits = (r.hits || []).filter((h) => h.study !== studyId).slice(0, 8);
    if (!hits.length) { box.replaceChildren(note('No similar videos of other studies.')); return; }
    box.replaceChildren(...hits.map((h, i) => resultCard(h, i + 1)));
    Thumbs.watch([...box.querySelectorAll('.cine')]);
  } catch (e) {
    box.replaceChildren(note(`Unavailable: ${e.message}`, 'bad'));
  }
}

async function loadReid(list, studyId) {
  try {
    const r = await api('/v1/reid', { json: { study_id: studyId, k: 5 } });
    const cands = r.candidates || [];
    if (!cands.length) { list.replaceChildren(el('li', {}, note('No studies of other dates found.'))); return; }
    list.replaceChildren(...cands.map((c, i) => {
      const study = c.study || c.id.replace(/^study:/, '');
      const same = c.same_patient === true ? ['yes', 'Same patient'] : c.same_patient === false ? ['no', 'Other patient'] : ['', 'Patient unknown'];
      return el('li', {}, el('a', {
        class: 'result', href: studyHref(study),
        dataset: { id: c.id, study, kind: 'study', score: String(c.score), rank: String(i + 1) },
      },
      el('span', { class: 'reid-main' },
        el('span', { class: 'reid-study', title: study, text: study }),
        el('span', { class: 'reid-sub' },
          el('span', { class: 'date', text: c.date || 'undated' }),
          patientSpan(c.patient),
          el('span', { class: `same ${same[0]}`.trim(), text: same[1] }))),
      el('span', { class: 'score', text: fmtScore(c.score) })));
    }));
  } catch (e) {
    list.replaceChildren(el('li', {}, note(`Unavailable: ${e.message}`, 'bad')));
  }
}

// ---- study page: the patient timeline (hand-built SVG) -------------------------------------

async function loadTimeline(box, patient, studyId, studyDate) {
  if (!patient) { box.replaceChildren(note('This study has no patient key: no timeline.')); return; }
  const event = new URLSearchParams(location.search).get('event') || '';
  const input = el('input', { id: 'event-date', type: 'date', value: event });
  const controls = el('form', { class: 'tl-controls' },
    field('event-date', 'Event (e.g. a procedure)', input),
    el('button', { type: 'submit', text: 'Mark event' }));
  controls.addEventListener('submit', (e) => {
    e.preventDefault();
    const p = new URLSearchParams(location.search);
    input.value ? p.set('event', input.value) : p.delete('event');
    history.replaceState(null, '', `${location.pathname}${p.toString() ? `?${p}` : ''}`);
    loadTimeline(box, patient, studyId, studyDate);
  });
  box.replaceChildren(note('Loading…'));
  try {
    const q = event ? `?event=${encodeURIComponent(event)}` : '';
    const t = await api(`/v1/patients/${encodeURIComponent(patient)}${q}`);
    // replaceChildren would print a null as "null": leave absent parts out.
    box.replaceChildren(...[drawTimeline(t, studyId), legend(t), undatedNote(t, studyDate), controls].filter(Boolean));
  } catch (e) {
    const msg = e.status === 404 ? 'No dated studies of this patient in the index.' : `Unavailable: ${e.message}`;
    box.replaceChildren(...[note(msg, e.status === 404 ? '' : 'bad'), undatedNote({ undated: 0 }, studyDate), controls].filter(Boolean));
  }
}

function legend(t) {
  const item = (cls, text) => el('span', {}, el('span', { class: `sw ${cls}`.trim() }), text);
  return el('div', { class: 'tl-legend' },
    item('', 'study (similarity to the previous one)'), item('cur', 'this study'),
    item('flag', 'flagged drop'), item('ref', 'first study (the reference)'),
    t.event ? item('ev', `event ${t.event}`) : null);
}

function undatedNote(t, studyDate) {
  const lines = [];
  if (!studyDate) lines.push('This study is undated: it is not on the plot.');
  if (t.undated) lines.push(`${t.undated} undated ${plural('study', t.undated)} of this patient not plotted.`);
  return lines.length ? el('p', { class: 'tl-undated', text: lines.join(' ') }) : null;
}

const TL = { w: 720, h: 240, l: 52, r: 18, t: 18, b: 34 };

function drawTimeline(t, studyId) {
  const pts = (t.studies || []).filter((s) => s.date).map((s) => ({ ...s, day: dayOf(s.date) }));
  if (!pts.length) return note('No dated studies of this patient.');
  const days = pts.map((p) => p.day);
  if (t.event) days.push(dayOf(t.event));
  let x0 = Math.min(...days);
  let x1 = Math.max(...days);
  if (x1 - x0 < 60) { x0 -= 30; x1 += 30; }
  const padX = (x1 - x0) * 0.04;
  x0 -= padX; x1 += padX;
  const sims = pts.map((p) => p.similarity).filter((s) => typeof s === 'number');
  let y0 = sims.length ? Math.min(...sims) : 0.9;
  let y1 = sims.length ? Math.max(...sims) : 1;
  const padY = Math.max((y1 - y0) * 0.15, 0.02);
  y0 -= padY; y1 += padY;
  const X = (d) => TL.l + ((d - x0) / (x1 - x0)) * (TL.w - TL.l - TL.r);
  const Y = (s) => TL.t + (1 - (s - y0) / (y1 - y0)) * (TL.h - TL.t - TL.b);
  const bottom = TL.h - TL.b;

  const root = svg('svg', { viewBox: `0 0 ${TL.w} ${TL.h}`, role: 'group', 'aria-label': `Similarity against date for patient ${shortKey(t.patient)}` },
    svg('rect', { class: 'tl-frame', x: TL.l, y: TL.t, width: TL.w - TL.l - TL.r, height: bottom - TL.t }));

  // y axis: similarity ticks and grid lines.
  const yAxis = svg('g', { class: 'tl-axis' });
  for (const v of niceTicks(y0, y1, 4)) {
    yAxis.append(svg('line', { class: 'tl-grid', x1: TL.l, x2: TL.w - TL.r, y1: Y(v), y2: Y(v) }),
      svg('text', { x: TL.l - 6, y: Y(v) + 4, 'text-anchor': 'end', text: v.toFixed(2) }));
  }
  yAxis.append(svg('text', { x: 12, y: (TL.t + bottom) / 2, 'text-anchor': 'middle', transform: `rotate(-90 12 ${(TL.t + bottom) / 2})`, text: 'similarity' }));
  // x axis: month ticks (YYYY-MM).
  const xAxis = svg('g', { class: 'tl-axis' });
  for (const d of monthTicks(x0, x1)) {
    xAxis.append(svg('line', { class: 'tl-grid', x1: X(d), x2: X(d), y1: bottom, y2: bottom + 5 }),
      svg('text', { x: X(d), y: bottom + 18, 'text-anchor': 'middle', text: dateOfDay(d).slice(0, 7) }));
  }
  root.append(yAxis, xAxis);

  // The median similarity, dashed: flags are drops below it.
  if (sims.length > 1) {
    const s = [...sims].sort((a, b) => a - b);
    const med = s[Math.floor((s.length - 1) / 2)];
    root.append(svg('line', { class: 'tl-median', x1: TL.l, x2: TL.w - TL.r, y1: Y(med), y2: Y(med) }),
      svg('text', { class: 'tl-label', x: TL.w - TL.r - 4, y: Y(med) - 4, 'text-anchor': 'end', text: `median ${med.toFixed(3)}` }));
  }
  if (t.event) {
    const ex = X(dayOf(t.event));
    root.append(svg('line', { class: 'event', x1: ex, x2: ex, y1: TL.t, y2: bottom }),
      svg('text', { class: 'tl-event-label', x: ex + 4, y: TL.t + 12, text: `event ${t.event}` }));
  }
  const line = pts.filter((p) => typeof p.similarity === 'number');
  if (line.length > 1) {
    root.append(svg('polyline', { class: 'tl-line', points: line.map((p) => `${X(p.day).toFixed(1)},${Y(p.similarity).toFixed(1)}`).join(' ') }));
  }
  for (const p of pts) root.append(timelinePoint(p, X(p.day), typeof p.similarity === 'number' ? Y(p.similarity) : TL.t + 2, p.study === studyId));
  return root;
}

function timelinePoint(p, x, y, current) {
  const sim = typeof p.similarity === 'number';
  const cls = ['point', current && 'current', p.flagged && 'flagged', !sim && 'reference'].filter(Boolean).join(' ');
  const title = `${p.date} — ${sim ? `similarity ${p.similarity.toFixed(3)}` : 'first study (reference)'}`
    + `${p.flagged ? ' — flagged drop' : ''}${current ? ' — this study' : ''}`;
  const circle = svg('circle', {
    class: cls, cx: x.toFixed(1), cy: y.toFixed(1), r: current ? 9 : 6,
    dataset: { study: p.study || '', date: p.date, flagged: p.flagged ? 'true' : 'false' },
  }, svg('title', { text: title }));
  return p.study ? svg('a', { href: studyHref(p.study), 'aria-label': title }, circle) : circle;
}

function niceTicks(lo, hi, count) {
  const raw = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9; v += step) out.push(Math.round(v / step) * step);
  return out;
}

/** First days of months between d0 and d1 (days since 1970), every 1, 2, 3, 6, 12… months. */
function monthTicks(d0, d1) {
  const a = new Date(d0 * 86400000);
  const b = new Date(d1 * 86400000);
  const m0 = a.getUTCFullYear() * 12 + a.getUTCMonth() + 1;
  const m1 = b.getUTCFullYear() * 12 + b.getUTCMonth();
  const step = [1, 2, 3, 6, 12, 24, 60].find((s) => (m1 - m0) / s <= 7) || 120;
  const out = [];
  for (let m = Math.ceil(m0 / step) * step; m <= m1; m += step) out.push(Date.UTC(Math.floor(m / 12), m % 12, 1) / 86400000);
  return out.length ? out : [Math.round((d0 + d1) / 2)];
}

// ---- ingest page ---------------------------------------------------------------------------

let pollTimer = null;
let currentJob = null;

function ingestPage(view) {
  document.body.dataset.page = 'ingest';
  const form = el('form', { id: 'ingest-form' },
    field('token', 'Token (kept in this browser tab only)', el('input', { id: 'token', type: 'password', autocomplete: 'off', value: getToken() })),
    field('ingest-path', 'Server path (a DICOM folder, DICOMDIR or video folder, as the server sees it)',
      el('input', { id: 'ingest-path', type: 'text', placeholder: '/exports/echo', autocomplete: 'off', spellcheck: 'false' })),
    field('ingest-reports', 'Reports manifest on the server (optional)',
      el('input', { id: 'ingest-reports', type: 'text', placeholder: '/exports/reports.jsonl', autocomplete: 'off', spellcheck: 'false' })),
    el('div', {}, el('button', { id: 'ingest-start', class: 'primary', type: 'submit', text: 'Start ingest' })),
    el('p', { id: 'ingest-help', class: 'note warn', 'aria-live': 'polite' }));
  const counts = el('dl', { class: 'counts', id: 'job-counts' });
  const job = el('div', { id: 'job', 'aria-live': 'polite' },
    el('div', { class: 'job-line' }, el('strong', { id: 'job-title', text: 'No job yet' }), el('span', { id: 'job-state', text: '—' })),
    el('progress', { id: 'job-progress', max: '1', value: '0', 'aria-label': 'Files done' }),
    el('p', { id: 'job-count', class: 'muted', text: '' }),
    counts,
    el('p', { id: 'job-message', class: 'note bad', hidden: true }),
    el('table', { id: 'job-errors' }, el('caption', { text: 'Errors: file, reason' }), el('tbody')));
  view.replaceChildren(
    el('h1', { text: 'Ingest' }),
    el('p', { class: 'muted page-intro', text: 'Index DICOM files, DICOMDIRs or videos from a folder on the server, with their reports. For the holder of the server token.' }),
    el('div', { class: 'ingest-grid' },
      el('section', { class: 'panel', 'aria-label': 'Start a job' }, el('h2', { text: 'Start a job' }), form),
      el('section', { class: 'panel', 'aria-label': 'Job' }, el('h2', { text: 'Job' }), job)),
    el('section', { class: 'panel full', 'aria-label': 'Jobs' }, el('h2', { text: 'Jobs' }), el('ul', { id: 'jobs' })));

  $('#token').addEventListener('input', (e) => setToken(e.target.value.trim()));
  $('#token').addEventListener('change', () => { if (getToken()) listJobs(true); });
  form.addEventListener('submit', (e) => { e.preventDefault(); startIngest(); });

  if (!config.admin) authHelp(403);
  else if (!getToken()) $('#ingest-help').textContent = 'Enter the server’s token to start jobs and see the job list.';
  else listJobs(true);
}

/** 401/403 in plain words, beside the token field. */
function authHelp(status) {
  const help = $('#ingest-help');
  if (status === 403) {
    help.textContent = 'Ingest is switched off: this server was started without a token. Restart it with --token TOKEN (or the ECHOVAULT_TOKEN variable) and enter that token here.';
  } else if (status === 401) {
    help.textContent = getToken()
      ? 'Wrong token: the server refused it. Enter the token the server was started with.'
      : 'No token: ingest needs the server’s token. Enter it in the Token field.';
  } else {
    help.textContent = '';
  }
}

async function startIngest() {
  clearError();
  const path = $('#ingest-path').value.trim();
  const reports = $('#ingest-reports').value.trim();
  if (!path) { $('#ingest-help').textContent = 'Give a file or folder path on the server.'; $('#ingest-path').focus(); return; }
  const btn = $('#ingest-start');
  btn.disabled = true;
  try {
    const job = await api('/v1/ingest', { json: reports ? { paths: [path], reports } : { paths: [path] } });
    authHelp(0);
    showJob(job);
    listJobs(false);
  } catch (e) {
    showError(e);
    authHelp(e.status);
  } finally {
    btn.disabled = false;
  }
}

async function listJobs(selectLatest) {
  try {
    const r = await api('/v1/ingest');
    authHelp(0);
    const jobs = r.jobs || [];
    renderJobList(jobs);
    if (selectLatest && jobs.length && !currentJob) showJob(jobs[jobs.length - 1]);
  } catch (e) {
    showError(e);
    authHelp(e.status);
  }
}

function renderJobList(jobs) {
  const ul = $('#jobs');
  if (!ul) return;
  if (!jobs.length) { ul.replaceChildren(el('li', {}, note('No jobs on this server yet.'))); return; }
  ul.replaceChildren(...[...jobs].reverse().map((j) => {
    const p = j.progress || {};
    const when = j.submitted_at ? new Date(j.submitted_at * 1000).toLocaleString() : '';
    const b = el('button', { type: 'button', 'aria-current': String(currentJob === j.id), dataset: { job: String(j.id) } },
      el('span', { text: `#${j.id} · ${(j.request && j.request.paths || []).join(', ')}` }),
      el('span', { class: 'muted', text: `${j.state} · ${p.done || 0}/${p.found || 0} · ${when}` }));
    b.addEventListener('click', () => showJob(j));
    return el('li', {}, b);
  }));
}

/** Shows a job and, while it is queued or running, polls it every 500 ms. */
function showJob(job) {
  currentJob = job.id;
  clearTimeout(pollTimer);
  renderJob(job);
  $('#jobs').querySelectorAll('button').forEach((b) => b.setAttribute('aria-current', String(b.dataset.job === String(job.id))));
  if (job.state === 'queued' || job.state === 'running') pollJob(job.id, job.state);
}

function pollJob(id, lastState) {
  pollTimer = setTimeout(async () => {
    if (currentJob !== id || document.body.dataset.page !== 'ingest') return;
    try {
      const job = await api(`/v1/ingest/${id}`);
      if (currentJob !== id) return;
      renderJob(job);
      if (job.state !== lastState) listJobs(false);
      if (job.state === 'queued' || job.state === 'running') pollJob(id, job.state);
    } catch (e) {
      showError(e);
      authHelp(e.status);
      // A passing failure (a restart, a dropped connection) must not end the watch: retry
      // unless the token was refused.
      if (e.status !== 401 && e.status !== 403) pollJob(id, lastState);
    }
  }, 500);
}

let shownJob = null;

function renderJob(job) {
  const p = job.progress || {};
  // Another job's rows must not stay in the table.
  if (shownJob !== job.id) { $('#job-errors tbody').replaceChildren(); shownJob = job.id; }
  const ended = !['queued', 'running'].includes(job.state);
  $('#job-title').textContent = `Job #${job.id}`;
  const state = $('#job-state');
  state.textContent = job.state;
  state.className = job.state;
  const bar = $('#job-progress');
  const total = p.found || 0;
  const done = p.done || 0;
  if (total > 0) {
    bar.max = total;
    bar.value = Math.min(done, total);
  } else if (ended) {
    bar.max = 1;
    bar.value = 1;
  } else {
    bar.removeAttribute('value'); // indeterminate until files are found
  }
  $('#job-count').textContent = total ? `${done} of ${total} files done` : (ended ? 'No files found.' : 'Looking for files…');
  $('#job-counts').replaceChildren(...['found', 'done', 'ingested', 'skipped', 'failed', 'frames', 'reports'].map((k) =>
    el('div', {}, el('dt', { text: k }), el('dd', { text: String(p[k] ?? 0) }))));
  const msg = $('#job-message');
  msg.hidden = !job.error;
  msg.textContent = job.error || '';
  renderJobErrors(jobErrors(job), job.summary ? 0 : job.errors_omitted || 0);
}

/** The job's failed inputs: live ones when the server lists them, else its summary's. */
function jobErrors(job) {
  // The live list holds the first 500; an ended run's summary holds them all (and jobs saved
  // before the live list existed have only the summary): the longer one.
  const live = job.errors || [];
  const all = (job.summary && job.summary.failed) || [];
  const list = all.length > live.length ? all : live;
  return list.map((e) => ({ file: e.file ?? e.input ?? e.path ?? '', reason: e.reason ?? e.error ?? '' }));
}

function renderJobErrors(errors, omitted = 0) {
  const tbody = $('#job-errors tbody');
  if (errors.length < tbody.rows.length) tbody.replaceChildren();
  for (const e of errors.slice(tbody.rows.length)) {
    tbody.append(el('tr', {}, el('td', { text: e.file }), el('td', { text: e.reason })));
  }
  const more = omitted ? ` and ${omitted} more (listed when the run ends)` : '';
  $('#job-errors caption').textContent = errors.length ? `Errors (${errors.length}${more}): file, reason` : 'Errors: none so far';
}

// ---- token prompt, routing, start ----------------------------------------------------------

function tokenPrompt(message) {
  delete document.body.dataset.page;
  const form = el('form', { id: 'token-form', class: 'panel token-card' },
    el('h1', { text: 'Token needed' }),
    el('p', { class: 'muted', text: 'This server answers only with its token (it listens beyond this computer). The token is kept in this browser tab only.' }),
    field('token', 'Server token', el('input', { id: 'token', type: 'password', autocomplete: 'off', required: true })),
    el('div', {}, el('button', { class: 'primary', type: 'submit', text: 'Continue' })),
    message ? note(message, 'bad') : null);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    setToken($('#token').value.trim());
    await start();
  });
  $('#view').replaceChildren(form);
  $('#token').focus();
}

async function loadConfig() {
  try {
    const defaults = config.thumb;
    config = { ...config, ...(await api('/v1/viewer')) };
    config.thumb = { ...defaults, ...(config.thumb || {}) };
    return null;
  } catch (e) {
    if (e.status === 401) return e;
    if (e.status !== 404) showError(e); // 404: an older server; keep the defaults
    return null;
  }
}

function route() {
  const path = location.pathname.replace(/\/+$/, '') || '/';
  const view = $('#view');
  const skip = $('#skip-link');
  Thumbs.reset();
  clearError();
  for (const a of document.querySelectorAll('.mainnav a')) a.removeAttribute('aria-current');
  if (path === '/' || path === '/index.html') {
    $('#nav-search').setAttribute('aria-current', 'page');
    searchPage(view);
    return;
  }
  skip.textContent = 'Skip to content';
  skip.setAttribute('href', '#app');
  if (path.startsWith('/study/')) {
    let id;
    try { id = decodeURIComponent(path.slice(7)); } catch { id = path.slice(7); }
    studyPage(view, id).catch(showError);
  } else if (path === '/ingest') {
    $('#nav-ingest').setAttribute('aria-current', 'page');
    ingestPage(view);
  } else {
    view.replaceChildren(el('h1', { text: 'Not found' }), note('No such page. Go to the search page.'));
  }
}

async function start() {
  const refused = await loadConfig();
  if (refused) {
    tokenPrompt(getToken() ? 'The server refused this token.' : '');
    return;
  }
  if (config.token_needed && !getToken()) { tokenPrompt(''); return; }
  const info = [config.version && `v${config.version}`, config.space].filter(Boolean).join(' · ');
  $('#server-info').textContent = info;
  route();
}

// Drops outside the drop zone must not open the file in the tab.
window.addEventListener('dragover', (e) => e.preventDefault());
window.addEventListener('drop', (e) => e.preventDefault());
start().catch(showError);
