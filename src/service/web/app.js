// dwflow serve: the web page. Plain JavaScript, no framework, no build step.
//
// One page for two routes, chosen by location.pathname:
//   /              pipelines (with a run form each), invalid files, recent runs
//   /runs/<id>     one run: header, DAG of its steps, step table, attempts
//
// Every piece of data is inserted as text (DOM nodes / textContent), never as HTML.
'use strict';

(function () {
  const TOKEN_KEY = 'dwflow.apiToken';
  const RUN_FINISHED = new Set(['succeeded', 'failed', 'canceled', 'timed_out', 'interrupted', 'skipped']);
  const RUN_STATES = ['queued', 'running', 'succeeded', 'failed', 'canceled', 'timed_out', 'interrupted', 'skipped'];
  const STEP_STATES = ['waiting', 'running', 'succeeded', 'failed', 'timed_out', 'canceled', 'skipped', 'not_run'];
  const SVG_NS = 'http://www.w3.org/2000/svg';

  // ---------------------------------------------------------------- DOM helpers

  // h('div', {class: 'x', onclick: fn, dataset: {step: 'a'}}, 'text', node, [more])
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    setAttrs(el, attrs);
    append(el, children);
    return el;
  }

  function s(tag, attrs, ...children) {
    const el = document.createElementNS(SVG_NS, tag);
    setAttrs(el, attrs);
    append(el, children);
    return el;
  }

  function setAttrs(el, attrs) {
    if (!attrs) return;
    for (const [k, v] of Object.entries(attrs)) {
      if (v === undefined || v === null || v === false) continue;
      if (k.startsWith('on') && typeof v === 'function') {
        el.addEventListener(k.slice(2), v);
      } else if (k === 'dataset') {
        for (const [dk, dv] of Object.entries(v)) el.dataset[dk] = String(dv);
      } else if (k === 'text') {
        el.textContent = String(v);
      } else if (k === 'value' && 'value' in el && el.namespaceURI !== SVG_NS) {
        el.value = String(v);
      } else if (k === 'checked' || k === 'disabled' || k === 'open') {
        el[k] = Boolean(v);
      } else {
        el.setAttribute(k, v === true ? '' : String(v));
      }
    }
  }

  function append(el, children) {
    for (const c of children) {
      if (c === undefined || c === null || c === false) continue;
      if (Array.isArray(c)) append(el, c);
      else if (c instanceof Node) el.appendChild(c);
      else el.appendChild(document.createTextNode(String(c)));
    }
  }

  function clear(el) {
    while (el.firstChild) el.removeChild(el.firstChild);
    return el;
  }

  function replace(el, ...children) {
    clear(el);
    append(el, children);
    return el;
  }

  // ---------------------------------------------------------------- formatting

  function stateClass(state) {
    return 's-' + String(state || 'unknown').replace(/[^a-z_]/gi, '');
  }

  function badge(state) {
    return h('span', {class: 'badge ' + stateClass(state), 'data-state': state}, String(state || 'unknown').replace(/_/g, ' '));
  }

  function pad(n) { return String(n).padStart(2, '0'); }

  function fmtTime(iso) {
    if (!iso) return '';
    const d = new Date(iso);
    if (isNaN(d)) return String(iso);
    const now = new Date();
    const hms = pad(d.getHours()) + ':' + pad(d.getMinutes()) + ':' + pad(d.getSeconds());
    if (d.toDateString() === now.toDateString()) return hms;
    return d.getFullYear() + '-' + pad(d.getMonth() + 1) + '-' + pad(d.getDate()) + ' ' + hms;
  }

  function timeEl(iso) {
    if (!iso) return h('span', {class: 'muted'}, '–');
    return h('time', {datetime: iso, title: iso}, fmtTime(iso));
  }

  function fmtDuration(ms) {
    if (ms === undefined || ms === null || isNaN(ms)) return '';
    ms = Math.max(0, Math.round(ms));
    if (ms < 1000) return ms + ' ms';
    const sec = ms / 1000;
    if (sec < 60) return (sec < 10 ? sec.toFixed(2) : sec.toFixed(1)) + ' s';
    const total = Math.floor(sec);
    const hrs = Math.floor(total / 3600);
    const min = Math.floor((total % 3600) / 60);
    const rest = total % 60;
    if (hrs > 0) return hrs + ' h ' + pad(min) + ' m';
    return min + ' m ' + pad(rest) + ' s';
  }

  // A duration cell: the recorded duration, or (while it runs) the time since it started,
  // kept current by tickLive().
  function durationEl(obj, live) {
    if (!obj.started_at && !obj.duration_ms) return h('span', {class: 'muted'}, '–');
    if (obj.duration_ms !== undefined && obj.duration_ms !== null) {
      return h('span', {class: 'nowrap'}, fmtDuration(obj.duration_ms));
    }
    if (live && obj.started_at && !obj.finished_at) {
      const el = h('span', {class: 'nowrap live', 'data-since': obj.started_at});
      el.textContent = fmtDuration(Date.now() - Date.parse(obj.started_at));
      return el;
    }
    return h('span', {class: 'muted'}, '–');
  }

  function tickLive() {
    for (const el of document.querySelectorAll('.live[data-since]')) {
      const t = Date.parse(el.dataset.since);
      if (!isNaN(t)) el.textContent = fmtDuration(Date.now() - t);
    }
  }
  setInterval(tickLive, 1000);

  function shortId(id) {
    id = String(id || '');
    return id.length > 28 ? id.slice(0, 8) + '…' + id.slice(-4) : id;
  }

  function paramValue(v) {
    if (v === null || v === undefined) return '';
    if (typeof v === 'object') return JSON.stringify(v);
    return String(v);
  }

  function kvTable(obj) {
    const entries = Object.entries(obj || {});
    if (entries.length === 0) return h('div', {class: 'muted small'}, 'none');
    return h('table', {class: 'kv'},
      h('tbody', null, entries.map(([k, v]) => h('tr', null, h('th', null, k), h('td', null, paramValue(v))))));
  }

  function chips(obj) {
    const entries = Object.entries(obj || {});
    if (entries.length === 0) return h('span', {class: 'muted'}, 'none');
    return h('span', {class: 'chips'}, entries.map(([k, v]) => h('span', {class: 'chip'}, k + '=' + paramValue(v))));
  }

  function problemText(p) {
    if (typeof p === 'string') return p;
    if (!p || typeof p !== 'object') return String(p);
    let t = '';
    if (p.file) t += p.file;
    if (p.line) t += (t ? ':' : 'line ') + p.line + (p.column ? ':' + p.column : '');
    t += (t ? ' ' : '') + (p.severity && p.severity !== 'error' ? p.severity + ' ' : '') + (p.code ? p.code + ': ' : '') + (p.message || '');
    return t;
  }

  function problemList(problems, file, cls) {
    return h('ul', {class: 'problems' + (cls ? ' ' + cls : '')},
      (problems || []).map((p) => {
        const item = typeof p === 'object' && p !== null && file && !p.file ? Object.assign({file}, p) : p;
        return h('li', null, problemText(item),
          p && p.hint ? h('div', {class: 'hint'}, 'hint: ' + p.hint) : null);
      }));
  }

  // ---------------------------------------------------------------- API access

  class ApiError extends Error {
    constructor(status, body, message) {
      super(message);
      this.status = status;
      this.body = body;
    }
  }

  function token() {
    try { return sessionStorage.getItem(TOKEN_KEY) || ''; } catch (_) { return ''; }
  }

  async function api(method, path, body) {
    const headers = {Accept: 'application/json'};
    const t = token();
    if (t) headers.Authorization = 'Bearer ' + t;
    const init = {method, headers, cache: 'no-store'};
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let res;
    try {
      res = await fetch(path, init);
    } catch (e) {
      showBanner('Cannot reach the dwflow service (' + (e && e.message ? e.message : e) + '). Retrying…');
      throw new ApiError(0, null, 'network error');
    }
    let data = null;
    const text = await res.text();
    if (text) {
      try { data = JSON.parse(text); } catch (_) { data = {error: text.slice(0, 500)}; }
    }
    if (res.status === 401) {
      showTokenPrompt(t ? 'The token was refused.' : 'This service requires an API token.');
      throw new ApiError(401, data, (data && data.error) || 'unauthorized');
    }
    if (res.status >= 500) {
      showBanner('Service error ' + res.status + ': ' + ((data && data.error) || res.statusText));
    } else {
      hideBanner();
    }
    if (!res.ok) {
      throw new ApiError(res.status, data, (data && data.error) || (res.status + ' ' + res.statusText));
    }
    return data;
  }

  function showBanner(text) {
    const b = document.getElementById('banner');
    b.textContent = text;
    b.hidden = false;
  }

  function hideBanner() {
    document.getElementById('banner').hidden = true;
  }

  function showTokenPrompt(message) {
    hideBanner();
    const box = document.getElementById('auth');
    if (!box.hidden && box.querySelector('input')) {
      box.querySelector('.msg').textContent = message;
      return;
    }
    const input = h('input', {type: 'password', id: 'api-token', autocomplete: 'off', placeholder: 'Bearer token', 'data-testid': 'api-token'});
    const form = h('form', {class: 'auth', onsubmit: (ev) => {
      ev.preventDefault();
      const v = input.value.trim();
      if (!v) return;
      try { sessionStorage.setItem(TOKEN_KEY, v); } catch (_) { /* private mode */ }
      location.reload();
    }},
      h('span', {class: 'msg'}, message),
      h('label', {for: 'api-token'}, 'API token'),
      input,
      h('button', {type: 'submit'}, 'Use'));
    replace(box, form);
    box.hidden = false;
    input.focus();
  }

  function showTokenState() {
    const box = document.getElementById('auth');
    if (!token()) return;
    replace(box,
      h('span', {class: 'muted'}, 'token set'),
      h('button', {type: 'button', class: 'link-button', onclick: () => {
        try { sessionStorage.removeItem(TOKEN_KEY); } catch (_) { /* ignore */ }
        location.reload();
      }}, 'forget'));
    box.hidden = false;
  }

  // Calls fn now and then every `ms` after each call settles, until stop() or fn returns false.
  function poll(fn, ms) {
    let timer = null;
    let stopped = false;
    async function once() {
      if (stopped) return;
      let again = true;
      try {
        again = (await fn()) !== false;
      } catch (e) {
        if (!(e instanceof ApiError)) console.error(e);
      }
      if (!stopped && again) timer = setTimeout(once, ms);
    }
    once();
    return {
      stop() { stopped = true; clearTimeout(timer); },
      now() { clearTimeout(timer); once(); },
    };
  }

  // ---------------------------------------------------------------- home page

  function triggersSummary(tr) {
    if (!tr || typeof tr !== 'object') return 'manual';
    const parts = [];
    for (const sch of tr.schedule || []) parts.push('schedule ' + sch.cron + (sch.timezone ? ' (' + sch.timezone + ')' : ''));
    for (const ev of tr.event || []) parts.push('event ' + ev.type);
    for (const ds of tr.dataset || []) parts.push('dataset ' + ds.pattern);
    if (parts.length === 0) parts.push('manual');
    if (tr.concurrency) parts.push('concurrency ' + String(tr.concurrency).replace(/_/g, '-'));
    return parts.join(' · ');
  }

  function pipelineCard(p) {
    const name = p.name;
    const params = Object.entries(p.params || {});
    const problemsBox = h('div', {'data-testid': 'problems-' + name});
    const inputs = [];
    const fields = params.map(([pname, spec]) => {
      spec = spec || {};
      const id = 'param-' + name + '-' + pname;
      const title = [spec.type || 'string', spec.description].filter(Boolean).join(': ');
      if (spec.type === 'boolean') {
        const input = h('input', {type: 'checkbox', id, name: pname, checked: spec.default === true || spec.default === 'true', 'data-testid': id});
        inputs.push({pname, spec, input});
        return h('label', {class: 'field check', title}, input, h('span', null, pname));
      }
      const hasDefault = spec.default !== undefined && spec.default !== null;
      const input = h('input', {
        type: spec.secret ? 'password' : 'text',
        id, name: pname,
        placeholder: hasDefault ? paramValue(spec.default) : (spec.type || 'string'),
        autocomplete: 'off',
        spellcheck: 'false',
        inputmode: spec.type === 'integer' ? 'numeric' : spec.type === 'number' ? 'decimal' : null,
        'data-testid': id,
      });
      inputs.push({pname, spec, input});
      return h('label', {class: 'field', title},
        h('span', null, pname, hasDefault ? null : h('span', {class: 'req', title: 'required'}, ' *'),
          spec.type && spec.type !== 'string' ? h('span', {class: 'muted'}, ' (' + spec.type + ')') : null),
        input);
    });

    const button = h('button', {type: 'submit', class: 'primary', 'data-testid': 'run-' + name}, 'Run');
    const form = h('form', {class: 'run-form', onsubmit: async (ev) => {
      ev.preventDefault();
      const values = {};
      for (const {pname, spec, input} of inputs) {
        if (input.type === 'checkbox') {
          const def = spec.default === true || spec.default === 'true';
          if (input.checked !== def || spec.default === undefined) values[pname] = input.checked ? 'true' : 'false';
        } else if (input.value.trim() !== '') {
          values[pname] = spec.secret ? input.value : input.value.trim();
        }
      }
      button.disabled = true;
      replace(problemsBox, h('div', {class: 'note'}, 'Starting…'));
      try {
        const r = await api('POST', '/api/pipelines/' + encodeURIComponent(name) + '/runs', {params: values});
        location.assign(r && r.url ? r.url : '/runs/' + encodeURIComponent(r.run_id));
        return;
      } catch (e) {
        if (!(e instanceof ApiError)) throw e;
        const b = e.body || {};
        if (e.status === 409 && b.run_id) {
          replace(problemsBox, h('div', {class: 'problems warn'}, (b.error || 'Not started') + ' ',
            h('a', {href: '/runs/' + encodeURIComponent(b.run_id)}, 'run ' + shortId(b.run_id)),
            b.state ? [' ', badge(b.state)] : null));
        } else if (e.status === 401) {
          replace(problemsBox, h('div', {class: 'problems'}, 'An API token is required (top right).'));
        } else if (e.status === 0) {
          replace(problemsBox, h('div', {class: 'problems'}, 'The service cannot be reached.'));
        } else {
          const list = Array.isArray(b.problems) && b.problems.length ? b.problems : null;
          replace(problemsBox,
            list ? h('div', null, h('div', {class: 'note err'}, b.error || 'Invalid parameters'), problemList(list))
              : h('div', {class: 'problems'}, b.error || e.message));
        }
      } finally {
        button.disabled = false;
      }
    }}, fields, button);

    const steps = p.steps || [];
    return h('article', {class: 'pipeline', 'data-pipeline': name},
      h('h3', null, name),
      p.description ? h('p', {class: 'desc'}, p.description) : null,
      h('div', {class: 'meta'},
        h('span', {class: 'mono'}, p.file),
        h('span', {title: steps.map((st) => st.id + ' (' + st.job + ')').join(', ')}, steps.length + (steps.length === 1 ? ' step' : ' steps')),
        h('span', null, 'triggers: ' + triggersSummary(p.triggers)),
        h('a', {href: '/?pipeline=' + encodeURIComponent(name) + '#runs'}, 'runs')),
      form,
      problemsBox,
      (p.problems || []).length ? problemList(p.problems, p.file, 'warn') : null);
  }

  function renderPipelines(box, data) {
    const pipelines = (data && data.pipelines) || [];
    const valid = pipelines.filter((p) => p.valid && p.name);
    const invalid = pipelines.filter((p) => !(p.valid && p.name));
    const list = h('div', {class: 'pipelines', 'data-testid': 'pipelines'},
      valid.length ? valid.map(pipelineCard) : h('div', {class: 'empty'}, 'No valid pipelines.'));
    const out = [list];
    if (invalid.length) {
      out.push(h('div', {class: 'panel-head sub-head'},
        h('h2', null, 'Invalid files'), h('span', {class: 'muted small'}, 'not started until fixed')));
      out.push(h('div', {'data-testid': 'invalid'}, invalid.map((p) =>
        h('div', {class: 'invalid-file'},
          h('div', null, h('span', {class: 'mono'}, p.file), p.name ? h('span', {class: 'muted'}, ' (' + p.name + ')') : null),
          problemList(p.problems, p.file)))));
    }
    replace(box, out);
  }

  function runsTable(runs, filtered) {
    if (!runs.length) return h('div', {class: 'empty'}, filtered ? 'No runs match.' : 'No runs yet.');
    return h('table', {class: 'grid runs', 'data-testid': 'runs'},
      h('thead', null, h('tr', null,
        h('th', null, 'Run'), h('th', null, 'Pipeline'), h('th', null, 'State'), h('th', null, 'Trigger'),
        h('th', null, 'Params'), h('th', null, 'Started'), h('th', {class: 'num'}, 'Duration'))),
      h('tbody', null, runs.map((r) => h('tr', {'data-run': r.run_id},
        h('td', null, h('a', {href: '/runs/' + encodeURIComponent(r.run_id), class: 'mono', title: r.run_id}, shortId(r.run_id))),
        h('td', null, r.pipeline),
        h('td', {title: r.error || ''}, badge(r.state)),
        h('td', {title: r.trigger_detail || ''}, r.trigger, r.trigger_detail ? h('span', {class: 'muted'}, ' · ' + r.trigger_detail) : null),
        h('td', {class: 'small'}, chips(r.params)),
        h('td', {class: 'nowrap'}, timeEl(r.started_at || r.created_at)),
        h('td', {class: 'num'}, durationEl(r, true))))));
  }

  function homePage(app) {
    document.title = 'dwflow';
    const qs = new URLSearchParams(location.search);
    const filter = {pipeline: qs.get('pipeline') || '', state: qs.get('state') || ''};

    const pipelinesBody = h('div', {class: 'panel-body flush'}, h('div', {class: 'empty'}, 'Loading…'));
    const pipelinesInfo = h('span', {class: 'muted small'});
    const reloadNote = h('span', {class: 'note'});
    const reloadBtn = h('button', {type: 'button', 'data-testid': 'reload', onclick: reload}, 'Reload');

    const runsBody = h('div', {class: 'panel-body flush'}, h('div', {class: 'empty'}, 'Loading…'));
    const pipelineSelect = h('select', {'aria-label': 'pipeline', onchange: onFilter}, h('option', {value: ''}, 'all pipelines'));
    const stateSelect = h('select', {'aria-label': 'state', onchange: onFilter},
      h('option', {value: ''}, 'all states'), RUN_STATES.map((st) => h('option', {value: st}, st.replace(/_/g, ' '))));
    stateSelect.value = filter.state;

    replace(app,
      h('section', {class: 'panel', id: 'pipelines'},
        h('div', {class: 'panel-head'}, h('h2', null, 'Pipelines'), pipelinesInfo, h('span', {class: 'spacer'}), reloadNote, reloadBtn),
        pipelinesBody),
      h('section', {class: 'panel', id: 'runs'},
        h('div', {class: 'panel-head'}, h('h2', null, 'Recent runs'), h('span', {class: 'spacer'}),
          h('span', {class: 'filters'}, pipelineSelect, stateSelect)),
        runsBody));

    function setPipelineOptions(names) {
      const all = new Set(names);
      if (filter.pipeline) all.add(filter.pipeline);
      replace(pipelineSelect, h('option', {value: ''}, 'all pipelines'),
        [...all].sort().map((n) => h('option', {value: n}, n)));
      pipelineSelect.value = filter.pipeline;
    }
    setPipelineOptions([]);

    async function loadPipelines() {
      try {
        const data = await api('GET', '/api/pipelines');
        renderPipelines(pipelinesBody, data);
        const bits = [];
        const n = (data.pipelines || []).filter((p) => p.valid).length;
        bits.push(n + (n === 1 ? ' pipeline' : ' pipelines'));
        if (data.commit) bits.push('commit ' + String(data.commit).slice(0, 7));
        if (data.loaded_at) bits.push('loaded ' + fmtTime(data.loaded_at));
        pipelinesInfo.textContent = bits.join(' · ');
        pipelinesInfo.title = data.commit || '';
        setPipelineOptions((data.pipelines || []).filter((p) => p.valid && p.name).map((p) => p.name));
      } catch (e) {
        if (e instanceof ApiError && e.status === 401) {
          replace(pipelinesBody, h('div', {class: 'empty'}, 'Enter the API token (top right) to see the pipelines.'));
        } else if (e instanceof ApiError) {
          replace(pipelinesBody, h('div', {class: 'empty'}, 'Could not load the pipelines: ' + e.message));
        } else {
          throw e;
        }
      }
    }

    async function reload() {
      reloadBtn.disabled = true;
      reloadNote.className = 'note';
      reloadNote.textContent = 'Reloading…';
      try {
        const r = await api('POST', '/api/reload', {});
        const bad = (r.invalid || []).length;
        reloadNote.className = 'note ' + (bad ? 'err' : 'ok');
        reloadNote.textContent = 'Reloaded: ' + r.pipelines + (r.pipelines === 1 ? ' pipeline' : ' pipelines') +
          (bad ? ', ' + bad + ' invalid' : '') + '.';
        await loadPipelines();
      } catch (e) {
        if (!(e instanceof ApiError)) throw e;
        reloadNote.className = 'note err';
        reloadNote.textContent = 'Reload failed: ' + e.message;
      } finally {
        reloadBtn.disabled = false;
      }
    }

    let lastRuns = null;
    const runsPoll = poll(async () => {
      const q = new URLSearchParams({limit: '50'});
      if (filter.pipeline) q.set('pipeline', filter.pipeline);
      if (filter.state) q.set('state', filter.state);
      try {
        const data = await api('GET', '/api/runs?' + q.toString());
        const key = JSON.stringify(data);
        if (key !== lastRuns) {
          lastRuns = key;
          replace(runsBody, runsTable((data && data.runs) || [], Boolean(filter.pipeline || filter.state)));
        }
      } catch (e) {
        if (e instanceof ApiError && e.status === 401) {
          lastRuns = null;
          replace(runsBody, h('div', {class: 'empty'}, 'Enter the API token (top right) to see the runs.'));
        } else if (e instanceof ApiError && e.status !== 0) {
          lastRuns = null;
          replace(runsBody, h('div', {class: 'empty'}, 'Could not load the runs: ' + e.message));
        }
        // 401 stops nothing: once a token is entered the page reloads.
      }
    }, 2000);

    function onFilter() {
      filter.pipeline = pipelineSelect.value;
      filter.state = stateSelect.value;
      const q = new URLSearchParams();
      if (filter.pipeline) q.set('pipeline', filter.pipeline);
      if (filter.state) q.set('state', filter.state);
      const qsText = q.toString();
      history.replaceState(null, '', '/' + (qsText ? '?' + qsText : '') + location.hash);
      lastRuns = null;
      runsPoll.now();
    }

    loadPipelines();
  }

  // ---------------------------------------------------------------- run page

  const NODE_W = 184;
  const NODE_H = 46;
  const COL_GAP = 64;
  const ROW_GAP = 18;
  const PAD = 10;

  // Shortens an SVG <text> (already in the document) with an ellipsis to fit maxWidth.
  function fitText(el, maxWidth) {
    const full = el.textContent;
    if (typeof el.getComputedTextLength !== 'function' || el.getComputedTextLength() <= maxWidth) return;
    let lo = 0, hi = full.length;
    while (lo < hi) {
      const mid = Math.ceil((lo + hi) / 2);
      el.textContent = full.slice(0, mid) + '…';
      if (el.getComputedTextLength() <= maxWidth) lo = mid; else hi = mid - 1;
    }
    el.textContent = full.slice(0, lo) + '…';
  }

  function fitDagLabels(root) {
    for (const t of root.querySelectorAll('svg.dag .node text')) fitText(t, NODE_W - 20);
  }

  // Columns by wave, rows by order within the wave; edges from each need to the step.
  function dagSvg(steps, onNode) {
    const waves = new Map();
    const pos = new Map();
    let maxRows = 0;
    steps.forEach((st) => {
      const w = Number.isFinite(st.wave) ? st.wave : 0;
      if (!waves.has(w)) waves.set(w, []);
      waves.get(w).push(st);
    });
    const cols = [...waves.keys()].sort((a, b) => a - b);
    cols.forEach((w, ci) => {
      const col = waves.get(w);
      maxRows = Math.max(maxRows, col.length);
      col.forEach((st, ri) => {
        pos.set(st.id, {x: PAD + ci * (NODE_W + COL_GAP), y: PAD + ri * (NODE_H + ROW_GAP)});
      });
    });
    // Centre shorter columns vertically.
    const height = PAD * 2 + Math.max(1, maxRows) * NODE_H + Math.max(0, maxRows - 1) * ROW_GAP;
    cols.forEach((w) => {
      const col = waves.get(w);
      const colH = col.length * NODE_H + (col.length - 1) * ROW_GAP;
      const off = (height - PAD * 2 - colH) / 2;
      for (const st of col) pos.get(st.id).y += off;
    });
    const width = PAD * 2 + Math.max(1, cols.length) * NODE_W + Math.max(0, cols.length - 1) * COL_GAP;

    const byId = new Map(steps.map((st) => [st.id, st]));
    const edges = [];
    for (const st of steps) {
      const to = pos.get(st.id);
      for (const need of st.needs || []) {
        const from = pos.get(need);
        if (!from || !to) continue;
        const x1 = from.x + NODE_W, y1 = from.y + NODE_H / 2;
        const x2 = to.x - 2, y2 = to.y + NODE_H / 2;
        const dx = Math.max(24, (x2 - x1) / 2);
        const done = byId.get(need) && byId.get(need).state === 'succeeded';
        edges.push(s('path', {
          class: 'edge' + (done ? ' done' : ''),
          d: `M${x1},${y1} C${x1 + dx},${y1} ${x2 - dx},${y2} ${x2},${y2}`,
          'marker-end': 'url(#dag-arrow)',
          'data-from': need, 'data-to': st.id,
        }));
      }
    }

    const nodes = steps.map((st) => {
      const p = pos.get(st.id);
      const tip = [st.id + ' (' + st.job + '): ' + st.state];
      if (st.attempts > 1) tip.push(st.attempts + ' attempts');
      if (st.duration_ms !== undefined && st.duration_ms !== null) tip.push(fmtDuration(st.duration_ms));
      if (st.message) tip.push(st.message);
      return s('g', {
        class: 'node ' + stateClass(st.state),
        'data-step': st.id,
        'data-state': st.state,
        transform: `translate(${p.x},${p.y})`,
        tabindex: '0',
        role: 'button',
        'aria-label': st.id + ' ' + st.state,
        onclick: () => onNode(st.id),
        onkeydown: (ev) => { if (ev.key === 'Enter' || ev.key === ' ') { ev.preventDefault(); onNode(st.id); } },
      },
      s('title', null, tip.join('\n')),
      s('rect', {width: NODE_W, height: NODE_H, rx: 8, ry: 8}),
      s('text', {class: 'label', x: 12, y: 19}, st.id),
      s('text', {class: 'sub', x: 12, y: 35}, String(st.state).replace(/_/g, ' ') +
        (st.attempts > 1 ? ' ×' + st.attempts : '') + ' · ' + st.job));
    });

    return s('svg', {
      class: 'dag', xmlns: SVG_NS, width, height, viewBox: `0 0 ${width} ${height}`,
      role: 'img', 'aria-label': 'pipeline steps', 'data-testid': 'dag',
    },
    s('defs', null, s('marker', {id: 'dag-arrow', viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse'},
      s('path', {class: 'arrow', d: 'M0,0 L10,5 L0,10 z'}))),
    s('g', {class: 'edges'}, edges),
    s('g', {class: 'nodes'}, nodes));
  }

  function stepsTable(steps, openSteps) {
    if (!steps.length) return h('div', {class: 'empty'}, 'This run has no steps recorded.');
    return h('table', {class: 'grid steps', 'data-testid': 'steps'},
      h('thead', null, h('tr', null,
        h('th', null, 'Step'), h('th', null, 'Job'), h('th', null, 'State'), h('th', {class: 'num'}, 'Attempts'),
        h('th', null, 'Remote run ids'), h('th', {class: 'num'}, 'Duration'), h('th', null, 'Message'),
        h('th', null, 'Params / outputs'))),
      h('tbody', null, steps.map((st) => {
        const nParams = Object.keys(st.params || {}).length;
        const nOutputs = Object.keys(st.outputs || {}).length;
        const details = h('details', {open: openSteps.has(st.id), 'data-testid': 'io-' + st.id},
          h('summary', null, nParams + (nParams === 1 ? ' param' : ' params') + ' · ' + nOutputs + (nOutputs === 1 ? ' output' : ' outputs')),
          h('div', {class: 'kv-title'}, 'params'), kvTable(st.params),
          h('div', {class: 'kv-title'}, 'outputs'), h('div', {'data-testid': 'outputs-' + st.id}, kvTable(st.outputs)));
        details.addEventListener('toggle', () => {
          if (details.open) openSteps.add(st.id); else openSteps.delete(st.id);
        });
        const rids = st.remote_run_ids || [];
        return h('tr', {id: 'step-' + st.id, 'data-step-row': st.id},
          h('td', null, h('strong', {class: 'mono'}, st.id),
            (st.needs || []).length ? h('div', {class: 'muted small'}, 'needs ' + st.needs.join(', ')) : null),
          h('td', null, st.job),
          h('td', null, badge(st.state)),
          h('td', {class: 'num'}, String(st.attempts ?? 0)),
          h('td', {class: 'mono small', 'data-testid': 'rids-' + st.id},
            rids.length ? h('div', {class: 'rids'}, rids.map((id) => h('span', null, id))) : h('span', {class: 'muted'}, '–')),
          h('td', {class: 'num'}, durationEl(st, st.state === 'running')),
          h('td', {class: 'msg small'}, st.message || ''),
          h('td', {class: 'io'}, details));
      })));
  }

  function attemptsTable(attempts) {
    return h('table', {class: 'grid attempts', 'data-testid': 'attempts'},
      h('thead', null, h('tr', null,
        h('th', null, 'Instance'), h('th', {class: 'num'}, 'Attempt'), h('th', null, 'State'), h('th', null, 'Remote run id'),
        h('th', null, 'Started'), h('th', null, 'Finished'), h('th', {class: 'num'}, 'Duration'), h('th', null, 'Message'))),
      h('tbody', null, attempts.map((a) => {
        const ms = a.finished_at && a.started_at ? Date.parse(a.finished_at) - Date.parse(a.started_at) : null;
        return h('tr', null,
          h('td', {class: 'mono'}, a.instance),
          h('td', {class: 'num'}, String(a.attempt)),
          h('td', null, badge(a.state)),
          h('td', {class: 'mono small'}, a.remote_run_id || h('span', {class: 'muted'}, '–')),
          h('td', {class: 'nowrap'}, timeEl(a.started_at)),
          h('td', {class: 'nowrap'}, timeEl(a.finished_at)),
          h('td', {class: 'num'}, ms === null || isNaN(ms) ? durationEl(a, !a.finished_at) : fmtDuration(ms)),
          h('td', {class: 'msg small'}, a.message || ''));
      })));
  }

  function runPage(app, runId) {
    document.title = 'run ' + shortId(runId) + ' · dwflow';
    const openSteps = new Set();
    const openSections = new Set();
    let last = null;
    let cancelNote = null;

    function focusStep(id) {
      const row = document.getElementById('step-' + id);
      if (!row) return;
      row.scrollIntoView({behavior: 'smooth', block: 'center'});
      row.classList.remove('flash');
      void row.offsetWidth; // restart the animation
      row.classList.add('flash');
    }

    function section(key, title, body) {
      const d = h('details', {class: 'section', open: openSections.has(key)}, h('summary', null, title), body);
      d.addEventListener('toggle', () => { if (d.open) openSections.add(key); else openSections.delete(key); });
      return h('section', {class: 'panel'}, d);
    }

    async function cancel(btn) {
      if (!confirm('Cancel this run? Remote runs it started are cancelled too.')) return;
      btn.disabled = true;
      try {
        const r = await api('POST', '/api/runs/' + encodeURIComponent(runId) + '/cancel', {});
        cancelNote = 'Cancel requested (' + (r && r.state ? r.state : 'canceling') + ').';
      } catch (e) {
        if (!(e instanceof ApiError)) throw e;
        cancelNote = e.status === 409 ? 'The run has already finished.' : 'Cancel failed: ' + e.message;
        btn.disabled = false;
      }
      last = null;
      runPoll.now();
    }

    function render(run) {
      const finished = RUN_FINISHED.has(run.state) && !run.in_flight;
      const steps = run.steps || [];
      const attempts = run.attempts || [];

      const cancelBtn = (run.state === 'queued' || run.state === 'running')
        ? h('button', {type: 'button', class: 'danger', 'data-testid': 'cancel', onclick: (ev) => cancel(ev.currentTarget)}, 'Cancel')
        : null;

      const facts = [
        ['Trigger', [run.trigger, run.trigger_detail ? h('span', {class: 'muted'}, ' · ' + run.trigger_detail) : null]],
        ['Params', chips(run.params)],
        ['Created', timeEl(run.created_at)],
        ['Started', timeEl(run.started_at)],
        ['Finished', timeEl(run.finished_at)],
        ['Duration', durationEl(run, !finished)],
        ['Target', run.target ? h('span', {class: 'mono'}, run.target) : h('span', {class: 'muted'}, '–')],
        ['File', h('span', {class: 'mono', title: run.source_sha256 ? 'sha256 ' + run.source_sha256 : ''}, run.file || '')],
        ['Git commit', run.git_commit ? h('span', {class: 'mono', title: run.git_commit}, String(run.git_commit).slice(0, 7)) : h('span', {class: 'muted'}, '–')],
      ];

      const counts = {};
      for (const st of steps) counts[st.state] = (counts[st.state] || 0) + 1;

      replace(app,
        h('div', {class: 'crumbs'}, h('a', {href: '/'}, 'dwflow'), ' / ',
          h('a', {href: '/?pipeline=' + encodeURIComponent(run.pipeline) + '#runs'}, 'runs of ' + run.pipeline), ' / ',
          h('span', {class: 'mono'}, shortId(run.run_id))),
        h('div', {class: 'run-title'},
          h('h1', null, run.pipeline),
          h('span', {'data-testid': 'run-state'}, badge(run.state)),
          h('span', {class: 'run-id', title: 'run id'}, run.run_id),
          h('span', {class: 'spacer'}),
          cancelNote && !finished ? h('span', {class: 'note'}, cancelNote) : null,
          cancelBtn),
        h('section', {class: 'panel'},
          h('div', {class: 'panel-body'},
            h('dl', {class: 'facts'}, facts.map(([k, v]) => h('div', null, h('dt', null, k), h('dd', null, v)))),
            run.error ? h('div', {class: 'error-box' + (run.state === 'failed' || run.state === 'timed_out' ? '' : ' warn'), 'data-testid': 'run-error'}, run.error) : null)),
        h('section', {class: 'panel'},
          h('div', {class: 'panel-head'}, h('h2', null, 'Steps'),
            h('span', {class: 'legend'}, Object.entries(counts).map(([st, n]) => h('span', null, badge(st), ' ', h('span', {class: 'muted small'}, String(n))))),
            h('span', {class: 'spacer'}),
            finished ? null : h('span', {class: 'muted small'}, 'updating every second')),
          steps.length ? h('div', {class: 'dag-wrap'}, dagSvg(steps, focusStep)) : null,
          h('div', {class: 'panel-body flush'}, stepsTable(steps, openSteps))),
        attempts.length ? section('attempts', 'Attempts (' + attempts.length + ')', h('div', {class: 'panel-body flush'}, attemptsTable(attempts))) : null,
        run.event !== null && run.event !== undefined && !(typeof run.event === 'object' && Object.keys(run.event).length === 0)
          ? section('event', 'Trigger event', h('div', {class: 'panel-body'}, h('pre', {class: 'json'}, JSON.stringify(run.event, null, 2))))
          : null);
      fitDagLabels(app);
      document.title = run.pipeline + ' ' + run.state + ' · dwflow';
    }

    replace(app, h('p', {class: 'muted'}, 'Loading run ', h('span', {class: 'mono'}, runId), '…'));

    const runPoll = poll(async () => {
      let run;
      try {
        run = await api('GET', '/api/runs/' + encodeURIComponent(runId));
      } catch (e) {
        if (e instanceof ApiError && e.status === 404) {
          replace(app, h('section', {class: 'panel'}, h('div', {class: 'panel-body'},
            h('p', null, 'No run ', h('span', {class: 'mono'}, runId), '.'), h('p', null, h('a', {href: '/'}, '← all runs')))));
          return false;
        }
        if (e instanceof ApiError && e.status === 401 && !last) {
          replace(app, h('p', {class: 'muted'}, 'Enter the API token (top right) to see this run.'));
        }
        throw e;
      }
      const key = JSON.stringify(run) + (cancelNote || '');
      if (key !== last) {
        last = key;
        render(run);
      }
      return !(RUN_FINISHED.has(run.state) && !run.in_flight);
    }, 1000);
  }

  // ---------------------------------------------------------------- router

  function notFound(app) {
    replace(app, h('section', {class: 'panel'}, h('div', {class: 'panel-body'},
      h('p', null, 'Nothing here: ', h('span', {class: 'mono'}, location.pathname)),
      h('p', null, h('a', {href: '/'}, '← pipelines and runs')))));
  }

  function route() {
    const app = document.getElementById('app');
    showTokenState();
    const path = location.pathname.replace(/\/+$/, '') || '/';
    const m = path.match(/^\/runs\/([^/]+)$/);
    if (path === '/') homePage(app);
    else if (m) runPage(app, decodeURIComponent(m[1]));
    else notFound(app);
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', route);
  else route();

  // Exposed for the browser test and for debugging in the console.
  window.dwflow = {STEP_STATES, RUN_STATES};
})();
