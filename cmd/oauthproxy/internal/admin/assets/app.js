// oauthproxy admin page: renders /tokens, /routes and /status every few
// seconds, updating the DOM in place, and runs the actions. Whatever the
// server sends is inserted as text, never as HTML (the page's CSP turns
// on Trusted Types, so an HTML sink would throw).
"use strict";
(function () {
  const POLL_MS = 5000;
  const STATES = ["pending", "valid", "renewing", "refresh_failing", "failing", "expired", "login_required", "device_pending"];
  const SIGN_IN = { authorization_code: "link", device_code: "post" };
  const meta = document.querySelector('meta[name="oauthproxy-csrf"]');
  const csrf = meta ? meta.content : "";
  const cards = new Map(); // entry name -> its card
  let skew = 0; // the server's clock minus this browser's, in ms, when they differ
  let timer = 0, inflight = null, again = false;

  const $ = (id) => document.getElementById(id);
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text != null) e.textContent = String(text);
    return e;
  }
  function setText(e, s) {
    s = s == null ? "" : String(s);
    if (e.textContent !== s) e.textContent = s;
  }
  function show(e, on) {
    if (e.hidden === !!on) e.hidden = !on;
  }
  const words = (s) => String(s == null ? "" : s).replace(/_/g, " ");

  // Times: absolute in the browser's time zone, and relative, ticking.
  const fmt = new Intl.DateTimeFormat(undefined, {
    year: "numeric", month: "short", day: "numeric",
    hour: "2-digit", minute: "2-digit", second: "2-digit", timeZoneName: "short",
  });
  function when(iso) {
    const d = new Date(iso);
    return isNaN(d) ? String(iso) : fmt.format(d);
  }
  function span(ms) {
    let s = Math.round(Math.abs(ms) / 1000);
    const units = [[86400, "d"], [3600, "h"], [60, "m"], [1, "s"]];
    const out = [];
    for (const [n, u] of units) {
      const q = Math.floor(s / n);
      s -= q * n;
      if (q || out.length) out.push(q + u);
      if (out.length === 2) break;
    }
    if (out.length === 2 && /^0/.test(out[1])) out.pop();
    return out.join(" ") || "0s";
  }
  function rel(at) {
    if (isNaN(at)) return "";
    const ms = at - (Date.now() + skew);
    if (Math.abs(ms) < 1000) return "now";
    return ms > 0 ? "in " + span(ms) : span(ms) + " ago";
  }
  function tickOne(r) {
    setText(r, r.dataset.pre + rel(+r.dataset.at) + r.dataset.post);
  }
  function relNode(iso, pre, post) {
    const r = el("span", "rel");
    r.dataset.at = String(Date.parse(iso));
    r.dataset.pre = pre == null ? "(" : pre;
    r.dataset.post = post == null ? ")" : post;
    tickOne(r);
    return r;
  }
  function timeNodes(iso) {
    const t = el("time", null, when(iso));
    t.setAttribute("datetime", iso);
    return [t, " ", relNode(iso)];
  }

  // A link only where following it is safe: https, or http to this machine.
  function linkable(u) {
    try {
      const x = new URL(u);
      if (x.protocol === "https:") return true;
      const h = x.hostname;
      return x.protocol === "http:" && (h === "localhost" || h.endsWith(".localhost") || /^127\./.test(h) || h === "[::1]");
    } catch (e) {
      return false;
    }
  }
  function linkOrText(u, text) {
    if (!linkable(u)) return el("span", null, text || u);
    const a = el("a", null, text || u);
    a.href = u;
    a.target = "_blank";
    a.rel = "noopener noreferrer";
    return a;
  }

  // put fills a row from key (rebuilding it only when key changed, so that
  // nothing flickers); a null key hides the row.
  function put(row, key, build) {
    show(row.row, key != null);
    if (key == null) return;
    const k = JSON.stringify(key);
    if (row.dd.dataset.k !== k) {
      row.dd.dataset.k = k;
      row.dd.replaceChildren(...build());
    }
  }

  const ROWS = [
    ["expires", "Expires"], ["renew", "Next renewal"], ["last", "Last renewal"], ["error", "Last error"],
    ["refresh", "Refresh token"], ["subject", "Signed in as"], ["scopes", "Scopes"], ["cache", "Cache"], ["url", "Token URL"],
  ];

  function newCard(name) {
    const c = { name: name, root: el("article", "entry"), rows: {} };
    const hd = c.root.appendChild(el("header"));
    hd.appendChild(el("h3", null, name));
    c.grant = hd.appendChild(el("span", "grant"));
    c.state = hd.appendChild(el("span", "state"));
    const dl = c.root.appendChild(el("dl"));
    for (const [k, label] of ROWS) {
      const row = dl.appendChild(el("div"));
      row.appendChild(el("dt", null, label));
      c.rows[k] = { row: row, dd: row.appendChild(el("dd")) };
    }
    c.device = c.root.appendChild(el("div", "device"));
    c.device.hidden = true;
    const acts = c.root.appendChild(el("div", "actions"));
    c.renew = acts.appendChild(el("button", null, "Get token"));
    c.renew.dataset.action = "renew";
    c.renew.type = "button";
    c.renew.addEventListener("click", () => renew(c));
    c.signinLink = acts.appendChild(el("a", "button", "Sign in"));
    c.signinLink.dataset.action = "login";
    c.signinLink.href = "/oauth2/" + encodeURIComponent(name) + "/login";
    c.signinBtn = acts.appendChild(el("button", null, "Sign in"));
    c.signinBtn.dataset.action = "device-login";
    c.signinBtn.type = "button";
    c.signinBtn.addEventListener("click", () => deviceSignIn(c));
    c.revoke = acts.appendChild(el("button", "danger", "Revoke"));
    c.revoke.dataset.action = "revoke";
    c.revoke.type = "button";
    c.revoke.addEventListener("click", () => revoke(c));
    c.outcome = c.root.appendChild(el("div", "outcome"));
    c.outcome.setAttribute("role", "status");
    c.outcome.setAttribute("aria-live", "polite");
    return c;
  }

  function updateCard(c, st) {
    c.st = st;
    const state = STATES.includes(st.state) ? st.state : "unknown";
    const cls = "entry s-" + state;
    if (c.root.className !== cls) c.root.className = cls;
    setText(c.state, words(st.state || "unknown"));
    setText(c.grant, st.grant_type);
    const r = c.rows;
    put(r.expires, st.expires_at ? [st.expires_at, st.expiry_from] : null, () =>
      timeNodes(st.expires_at).concat(st.expiry_from ? [" ", el("span", "rel", "from " + st.expiry_from)] : []));
    put(r.renew, st.renew_at || null, () => timeNodes(st.renew_at));
    put(r.last, st.last_refresh || null, () => timeNodes(st.last_refresh));
    put(r.error, st.last_error ? [st.last_error, st.last_error_at, st.consecutive_failures, st.next_attempt] : null, () => {
      const out = [el("span", null, st.last_error)];
      const more = [];
      if (st.last_error_at) more.push("at ", ...timeNodes(st.last_error_at));
      if (st.consecutive_failures) more.push((more.length ? "; " : "") + st.consecutive_failures + " consecutive failure" + (st.consecutive_failures === 1 ? "" : "s"));
      if (st.next_attempt) more.push((more.length ? "; " : "") + "next attempt ", relNode(st.next_attempt, "", ""));
      if (more.length) {
        const d = el("div", "rel");
        d.append(...more);
        out.push(d);
      }
      return out;
    });
    put(r.refresh, typeof st.refresh_token_stored === "boolean" ? st.refresh_token_stored : null, () =>
      [st.refresh_token_stored ? "stored" : "not stored"]);
    put(r.subject, st.subject || null, () => [st.subject]);
    put(r.scopes, st.scopes && st.scopes.length ? st.scopes : null, () => [st.scopes.join(" ")]);
    const cache = st.cache_mode || st.cache;
    put(r.cache, typeof cache === "string" && cache ? cache : null, () => [cache]);
    put(r.url, st.token_url || null, () => [st.token_url]);

    const dev = st.state === "device_pending" && st.device && st.device.user_code ? st.device : null;
    show(c.device, dev);
    if (dev) {
      const k = JSON.stringify(dev);
      if (c.device.dataset.k !== k) {
        c.device.dataset.k = k;
        const p1 = el("p");
        p1.append("To sign in, open ", linkOrText(dev.verification_uri), " on any device and enter the code ", el("strong", "code", dev.user_code), ".");
        const parts = [p1];
        if (dev.verification_uri_complete && linkable(dev.verification_uri_complete)) {
          const p2 = el("p");
          p2.append("Or open ", linkOrText(dev.verification_uri_complete, "the link with the code filled in"), ".");
          parts.push(p2);
        }
        if (dev.expires_at) {
          const p3 = el("p", "rel");
          p3.append("The code expires ", relNode(dev.expires_at, "", ""), ".");
          parts.push(p3);
        }
        c.device.replaceChildren(...parts);
      }
    }
    const how = SIGN_IN[st.grant_type];
    show(c.signinLink, how === "link");
    show(c.signinBtn, how === "post");
  }

  function renderTokens(list) {
    const box = $("entries");
    const seen = new Set();
    list.forEach((st, i) => {
      const name = String(st.oauth2);
      seen.add(name);
      let c = cards.get(name);
      if (!c) {
        c = newCard(name);
        cards.set(name, c);
      }
      updateCard(c, st);
      if (box.children[i] !== c.root) box.insertBefore(c.root, box.children[i] || null);
    });
    for (const [name, c] of cards) {
      if (!seen.has(name)) {
        c.root.remove();
        cards.delete(name);
      }
    }
    show($("entries-empty"), list.length === 0);
  }

  function renderRoutes(data) {
    const body = $("routes").tBodies[0];
    const routes = data.routes || [];
    routes.forEach((rt, i) => {
      const tr = body.rows[i] || body.insertRow();
      while (tr.cells.length < 5) tr.insertCell();
      const n = (v) => (typeof v === "number" ? v.toLocaleString() : "—");
      setText(tr.cells[0], rt.prefix);
      setText(tr.cells[1], rt.upstream);
      setText(tr.cells[2], rt.oauth2);
      setText(tr.cells[3], n(rt.requests));
      setText(tr.cells[4], n(rt.retries));
      tr.cells[3].className = tr.cells[4].className = "num";
      const codes = Object.entries(rt.requests_by_code || {}).sort().map(([k, v]) => k + ": " + v).join(", ");
      if (tr.cells[3].title !== codes) tr.cells[3].title = codes;
    });
    while (body.rows.length > routes.length) body.deleteRow(-1);
    const note = $("routes-note");
    setText(note, data.counts ? "" : "Request and retry counts are unavailable: the metrics could not be read.");
    show(note, !data.counts);
  }

  function renderStatus(s) {
    const box = $("status");
    const tz = Intl.DateTimeFormat().resolvedOptions().timeZone || "the browser's time zone";
    const key = JSON.stringify([s, tz]);
    if (box.dataset.k === key) return;
    box.dataset.k = key;
    const out = [];
    if (s && s.config_file) out.push("Config " + s.config_file);
    if (s && s.loaded_at) out.push((out.length ? ", loaded " : "Loaded "), ...timeNodes(s.loaded_at));
    if (s && s.reloads) out.push(" · reloads: " + s.reloads.success + " applied, " + s.reloads.error + " refused");
    if (s && s.serving === false) out.push(" · shutting down");
    out.push((out.length ? " · " : "") + "times in " + tz);
    box.replaceChildren(...out);
  }

  async function getJSON(path) {
    const r = await fetch(path, { cache: "no-store", headers: { Accept: "application/json" } });
    if (!r.ok) throw new Error(path + " answered " + r.status);
    const d = Date.parse(r.headers.get("Date") || "");
    if (!isNaN(d)) {
      const s = d - Date.now();
      skew = Math.abs(s) > 2000 ? s : 0; // Date has whole seconds: only a real difference counts
    }
    return r.json();
  }

  async function load() {
    try {
      const [tokens, routes, status] = await Promise.all([
        getJSON("/tokens"), getJSON("/routes").catch(() => null), getJSON("/status").catch(() => null),
      ]);
      renderTokens(Array.isArray(tokens) ? tokens : []);
      if (routes) renderRoutes(routes);
      renderStatus(status);
      setText($("conn"), "");
    } catch (e) {
      setText($("conn"), "Cannot read the proxy's state (" + e.message + "); retrying.");
    }
  }

  // refresh reads everything now, once at a time; a call during a read
  // reads again after it, so that an action's outcome always shows.
  function refresh() {
    if (inflight) {
      again = true;
      return inflight;
    }
    clearTimeout(timer);
    inflight = load().finally(() => {
      inflight = null;
      if (again) {
        again = false;
        refresh();
      } else if (!document.hidden) {
        timer = setTimeout(refresh, POLL_MS);
      }
    });
    return inflight;
  }

  async function post(path) {
    const r = await fetch(path, {
      method: "POST", cache: "no-store",
      headers: { Accept: "application/json", "X-CSRF-Token": csrf },
    });
    const text = await r.text();
    let body = null;
    try {
      body = JSON.parse(text);
    } catch (e) {
      body = null;
    }
    return { ok: r.ok, status: r.status, body: body, text: text.trim().slice(0, 300) };
  }

  function failure(what, res) {
    const msg = res.body && res.body.message ? res.body.message : res.text || "HTTP " + res.status;
    const code = res.body && res.body.error ? " (" + res.body.error + ")" : "";
    return [what + " failed" + code + ": " + msg];
  }

  function outcome(c, ok, nodes) {
    c.outcome.className = "outcome " + (ok ? "ok" : "err");
    c.outcome.replaceChildren(...nodes);
  }

  async function run(c, btn, what, path, good) {
    btn.disabled = true;
    c.root.setAttribute("aria-busy", "true");
    outcome(c, true, [what + "…"]);
    try {
      const res = await post(path);
      outcome(c, res.ok, res.ok ? good(res.body || {}) : failure(what, res));
    } catch (e) {
      outcome(c, false, [what + " failed: " + e.message]);
    } finally {
      btn.disabled = false;
      c.root.removeAttribute("aria-busy");
      refresh();
    }
  }

  function path(c, action) {
    return "/oauth2/" + encodeURIComponent(c.name) + "/" + action;
  }

  const TIME_CLAIMS = ["exp", "iat", "nbf", "auth_time"];

  function renew(c) {
    run(c, c.renew, "Get token", path(c, "renew"), (b) => {
      const p = el("p");
      p.append(el("strong", null, "New token"), " (" + (b.token_type || "token") + "), expires ");
      if (b.expires_at) p.append(...timeNodes(b.expires_at));
      else p.append("at an unknown time");
      if (b.expiry_from) p.append(" from " + b.expiry_from);
      p.append(". Scopes: " + (b.scopes && b.scopes.length ? b.scopes.join(" ") : "none named") + ".");
      const out = [p];
      if (b.claims_unverified && typeof b.claims_unverified === "object") {
        const d = el("details");
        d.appendChild(el("summary", null, "Claims (decoded, not verified)"));
        const dl = d.appendChild(el("dl"));
        for (const [k, v] of Object.entries(b.claims_unverified)) {
          const row = dl.appendChild(el("div"));
          row.appendChild(el("dt", null, k));
          let text = typeof v === "string" ? v : JSON.stringify(v);
          if (TIME_CLAIMS.includes(k) && typeof v === "number") text += " (" + when(new Date(v * 1000).toISOString()) + ")";
          row.appendChild(el("dd", null, text));
        }
        out.push(d);
      }
      out.push(el("p", "note", "The token itself is never shown."));
      return out;
    });
  }

  function deviceSignIn(c) {
    run(c, c.signinBtn, "Sign in", path(c, "login"), () => ["A new device code is on its way; it shows here in a moment."]);
  }

  function revoke(c) {
    const person = SIGN_IN[c.st && c.st.grant_type];
    const q = 'Revoke the tokens of oauth2 entry "' + c.name + '" at its authorization server?\n\n' +
      (person ? "Someone must sign in again before its routes work." : "Its routes then fetch a new token.");
    if (!window.confirm(q)) return;
    run(c, c.revoke, "Revoke", path(c, "revoke"), (b) => {
      const what = [];
      if (b.revoked_refresh_token) what.push("the refresh token");
      if (b.revoked_access_token) what.push("the access token");
      return ["Revoked " + (what.length ? what.join(" and ") : "nothing") + "."];
    });
  }

  setInterval(() => document.querySelectorAll(".rel[data-at]").forEach(tickOne), 1000);
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) refresh();
  });
  refresh();
})();
