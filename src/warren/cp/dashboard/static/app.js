/* Warren dashboard: small hand-written progressive enhancement. No framework, no build step.
 *
 * Every state-changing request goes through api(), which sends the session's CSRF token in the
 * X-CSRF-Token header (the server also checks Origin). Errors show error.message from the
 * server's envelope, or "Something went wrong".
 */
(function () {
  "use strict";

  var CSRF = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";
  var GENERIC_ERROR = "Something went wrong";

  function $(sel, root) { return (root || document).querySelector(sel); }
  function $$(sel, root) { return Array.prototype.slice.call((root || document).querySelectorAll(sel)); }

  // ------------------------------------------------------------------ API
  function envelopeMessage(text) {
    try { var data = JSON.parse(text); } catch (e) { return GENERIC_ERROR; }
    return data && data.error && data.error.message ? data.error.message : GENERIC_ERROR;
  }
  function api(url, options) {
    options = options || {};
    var method = options.method || (options.body !== undefined ? "POST" : "GET");
    var headers = { "Accept": "application/json" };
    if (method !== "GET") headers["X-CSRF-Token"] = CSRF;
    var init = { method: method, headers: headers, credentials: "same-origin" };
    if (options.body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(options.body);
    }
    return fetch(url, init).then(function (resp) {
      if (resp.status === 204) return {};
      return resp.text().then(function (text) {
        var data = null;
        try { data = text ? JSON.parse(text) : {}; } catch (e) { data = null; }
        if (!resp.ok) {
          var msg = data && data.error && data.error.message ? data.error.message : GENERIC_ERROR;
          var err = new Error(msg);
          err.status = resp.status;
          err.data = data;
          if (resp.status === 401) { window.location.href = "/login"; }
          throw err;
        }
        return data || {};
      });
    }, function () { throw new Error(GENERIC_ERROR); });
  }
  window.warrenApi = api;

  // ------------------------------------------------------------------ toasts
  function toast(message, kind) {
    var box = $("#toasts");
    if (!box) return;
    var el = document.createElement("div");
    el.className = "toast" + (kind ? " " + kind : "");
    el.textContent = message;
    box.appendChild(el);
    setTimeout(function () { el.remove(); }, kind === "error" ? 7000 : 4000);
  }
  function toastAfterReload(message, kind) {
    try { sessionStorage.setItem("warren_toast", JSON.stringify({ m: message, k: kind || "ok" })); } catch (e) { /* ignore */ }
  }
  function reloadWithToast(message) {
    if (message) toastAfterReload(message);
    window.location.reload();
  }
  function showPendingToast() {
    try {
      var raw = sessionStorage.getItem("warren_toast");
      if (raw) { sessionStorage.removeItem("warren_toast"); var t = JSON.parse(raw); toast(t.m, t.k); }
    } catch (e) { /* ignore */ }
  }
  window.warrenToast = toast;

  // ------------------------------------------------------------------ dialogs
  var openers = new WeakMap();
  function openDialog(dialog, opener) {
    if (!dialog || dialog.open) return;
    openers.set(dialog, opener || document.activeElement);
    $$(".form-error", dialog).forEach(function (e) { e.hidden = true; e.textContent = ""; });
    dialog.showModal();
    var focus = $("[autofocus]", dialog) || $("input:not([type=hidden]):not([disabled]), select, textarea", dialog) ||
      $(".dialog-foot .btn-primary, .dialog-foot .btn-danger", dialog);
    if (focus) focus.focus();
  }
  function closeDialog(dialog) { if (dialog && dialog.open) dialog.close(); }
  document.addEventListener("close", function (ev) {
    var dialog = ev.target;
    if (!(dialog instanceof HTMLDialogElement)) return;
    var opener = openers.get(dialog);
    if (opener && document.contains(opener) && typeof opener.focus === "function") opener.focus();
  }, true);
  document.addEventListener("click", function (ev) {
    var t = ev.target;
    var open = t.closest("[data-dialog-open]");
    if (open && !open.disabled && open.getAttribute("aria-disabled") !== "true") {
      ev.preventDefault();
      closeMenus();
      var d = document.getElementById(open.getAttribute("data-dialog-open"));
      if (d) {
        var form = $("form", d);
        if (form && !open.hasAttribute("data-keep-form")) form.reset();
        d.dispatchEvent(new CustomEvent("dialog:opening", { detail: { opener: open } }));
        openDialog(d, open);
      }
      return;
    }
    var close = t.closest("[data-dialog-close]");
    if (close) { ev.preventDefault(); closeDialog(close.closest("dialog")); return; }
    // A click on the backdrop (the dialog element itself, outside its box) closes it.
    if (t instanceof HTMLDialogElement && t.open) {
      var r = t.getBoundingClientRect();
      if (ev.clientX < r.left || ev.clientX > r.right || ev.clientY < r.top || ev.clientY > r.bottom) t.close();
    }
  });

  /* confirmAction({title, message, confirm, danger}, run) → opens the shared confirm dialog;
   * run() returns a promise; errors are shown inside the dialog. */
  function confirmAction(opts, run) {
    var d = $("#confirm-dialog");
    $("#confirm-dialog-title").textContent = opts.title || "Are you sure?";
    $("#confirm-dialog-message").textContent = opts.message || "";
    var ok = $("#confirm-dialog-ok");
    ok.textContent = opts.confirm || "Confirm";
    ok.className = "btn " + (opts.danger === false ? "btn-primary" : "btn-danger");
    ok.disabled = false;
    var err = $(".form-error", d);
    ok.onclick = function () {
      ok.disabled = true;
      err.hidden = true;
      Promise.resolve().then(run).then(function () { closeDialog(d); }, function (e) {
        err.textContent = e && e.message ? e.message : GENERIC_ERROR;
        err.hidden = false;
        ok.disabled = false;
      });
    };
    openDialog(d, document.activeElement);
    ok.focus();
  }
  window.warrenConfirm = confirmAction;

  // ------------------------------------------------------------------ API forms
  function formBody(form) {
    var body = {};
    $$("input, select, textarea", form).forEach(function (el) {
      if (!el.name || el.disabled || el.name === "csrf_token") return;
      if ((el.type === "checkbox" || el.type === "radio") && !el.checked) return;
      if (el.type === "number") { body[el.name] = el.value === "" ? null : Number(el.value); return; }
      if (el.type === "checkbox") { body[el.name] = true; return; }
      body[el.name] = el.value;
    });
    return body;
  }
  function showFormError(form, message) {
    var box = $(".form-error", form);
    if (box) { box.textContent = message; box.hidden = false; box.focus && box.setAttribute("tabindex", "-1"); }
    else toast(message, "error");
  }
  var successHandlers = {
    reload: function (form) { reloadWithToast(form.getAttribute("data-toast")); },
    redirect: function (form, data) { window.location.href = data.redirect || form.getAttribute("data-redirect") || "/"; },
    reveal: function (form, data) {
      var d = document.getElementById(form.getAttribute("data-reveal"));
      closeDialog(form.closest("dialog"));
      $$("[data-reveal-field]", d).forEach(function (el) {
        var v = data[el.getAttribute("data-reveal-field")];
        el.textContent = v === undefined || v === null ? "" : String(v);
      });
      d.setAttribute("data-reload-on-close", "1");
      openDialog(d, null);
    },
  };
  document.addEventListener("submit", function (ev) {
    var form = ev.target;
    var url = form.getAttribute("data-api");
    if (!url) return;
    ev.preventDefault();
    if (!form.checkValidity()) { form.reportValidity(); return; }
    var submit = $("[type=submit]", form);
    if (submit) submit.disabled = true;
    var errBox = $(".form-error", form);
    if (errBox) errBox.hidden = true;
    api(url, { body: formBody(form) }).then(function (data) {
      var how = form.getAttribute("data-success") || "reload";
      var handler = successHandlers[how];
      if (handler) handler(form, data);
      else form.dispatchEvent(new CustomEvent("api:success", { detail: data, bubbles: true }));
    }, function (e) {
      showFormError(form, e.message || GENERIC_ERROR);
    }).then(function () { if (submit) submit.disabled = false; });
  });
  // Reveal dialogs reload the page when they close, so the new row shows up.
  document.addEventListener("close", function (ev) {
    var d = ev.target;
    if (d instanceof HTMLDialogElement && d.getAttribute("data-reload-on-close") === "1") {
      d.removeAttribute("data-reload-on-close");
      var flash = d.getAttribute("data-flash-on-reload");
      if (flash) { try { sessionStorage.setItem("warren_flash", flash); } catch (e) { /* ignore */ } }
      window.location.reload();
    }
  }, true);

  // ------------------------------------------------------------------ action buttons
  /* <button data-action="/url" data-confirm-title=".." data-confirm-message=".." data-confirm-label=".."
   *         data-toast=".." data-body='{"k":"v"}'> — POSTs (after confirming) and reloads. */
  document.addEventListener("click", function (ev) {
    var btn = ev.target.closest("[data-action]");
    if (!btn || btn.disabled) return;
    ev.preventDefault();
    closeMenus();
    var url = btn.getAttribute("data-action");
    var body = {};
    try { body = JSON.parse(btn.getAttribute("data-body") || "{}"); } catch (e) { body = {}; }
    var run = function () {
      return api(url, { body: body }).then(function (data) {
        if (data && data.redirect) { toastAfterReload(btn.getAttribute("data-toast") || data.message || ""); window.location.href = data.redirect; return; }
        if (btn.hasAttribute("data-refresh") && window.warrenRefresh) { window.warrenRefresh(); toast(btn.getAttribute("data-toast") || "Done", "ok"); return; }
        reloadWithToast(btn.getAttribute("data-toast") || (data && data.message));
      });
    };
    if (btn.hasAttribute("data-confirm-title")) {
      confirmAction({
        title: btn.getAttribute("data-confirm-title"),
        message: btn.getAttribute("data-confirm-message"),
        confirm: btn.getAttribute("data-confirm-label"),
        danger: btn.getAttribute("data-confirm-danger") !== "false",
      }, run);
    } else {
      btn.disabled = true;
      run().catch(function (e) { toast(e.message || GENERIC_ERROR, "error"); btn.disabled = false; });
    }
  });

  // ------------------------------------------------------------------ menus (team switcher, row menus)
  function closeMenus(except) {
    $$("[aria-expanded='true'][aria-controls]").forEach(function (b) {
      var m = document.getElementById(b.getAttribute("aria-controls"));
      if (m && m !== except && m.classList.contains("popover")) { m.hidden = true; b.setAttribute("aria-expanded", "false"); }
    });
  }
  document.addEventListener("click", function (ev) {
    var b = ev.target.closest("[aria-haspopup][aria-controls]");
    if (b) {
      var m = document.getElementById(b.getAttribute("aria-controls"));
      if (!m) return;
      var opening = m.hidden;
      closeMenus(m);
      m.hidden = !opening;
      b.setAttribute("aria-expanded", opening ? "true" : "false");
      if (opening) { var first = $("[role=menuitem]:not([disabled])", m); if (first) first.focus(); }
      return;
    }
    if (!ev.target.closest(".popover")) closeMenus();
  });
  document.addEventListener("keydown", function (ev) {
    var m = ev.target.closest && ev.target.closest(".popover");
    if (ev.key === "Escape") {
      if (m && !m.hidden) {
        var owner = $("[aria-controls='" + m.id + "']");
        closeMenus();
        if (owner) owner.focus();
      }
      var app = $("#app");
      if (app && app.classList.contains("nav-open")) setNavOpen(false);
      return;
    }
    if (m && (ev.key === "ArrowDown" || ev.key === "ArrowUp")) {
      ev.preventDefault();
      var items = $$("[role=menuitem]:not([disabled])", m);
      var i = items.indexOf(document.activeElement);
      var next = ev.key === "ArrowDown" ? (i + 1) % items.length : (i - 1 + items.length) % items.length;
      items[next].focus();
    }
  });

  // team switch
  document.addEventListener("click", function (ev) {
    var b = ev.target.closest("[data-switch-team]");
    if (!b) return;
    ev.preventDefault();
    api("/dashboard/actions/switch-team", { body: { team_id: b.getAttribute("data-switch-team") } }).then(function () {
      toastAfterReload("Switched to " + b.getAttribute("data-team-name"));
      window.location.reload();
    }, function (e) { toast(e.message || GENERIC_ERROR, "error"); });
  });

  // ------------------------------------------------------------------ sidebar (collapse + mobile)
  function setNavOpen(open) {
    var app = $("#app");
    var toggle = $("#nav-toggle");
    if (!app) return;
    app.classList.toggle("nav-open", open);
    $("#scrim").hidden = !open;
    if (toggle) toggle.setAttribute("aria-expanded", open ? "true" : "false");
    if (open) { var first = $("#sidebar a, #sidebar button"); if (first) first.focus(); }
    else if (toggle) toggle.focus();
  }
  function initSidebar() {
    var app = $("#app");
    if (!app) return;
    var collapse = $("#collapse-toggle");
    var stored = null;
    try { stored = localStorage.getItem("warren_sidebar_collapsed"); } catch (e) { /* ignore */ }
    if (stored === "1") { app.classList.add("collapsed"); if (collapse) collapse.setAttribute("aria-pressed", "true"); }
    if (collapse) collapse.addEventListener("click", function () {
      var c = app.classList.toggle("collapsed");
      collapse.setAttribute("aria-pressed", c ? "true" : "false");
      collapse.setAttribute("aria-label", c ? "Expand sidebar" : "Collapse sidebar");
      try { localStorage.setItem("warren_sidebar_collapsed", c ? "1" : "0"); } catch (e) { /* ignore */ }
    });
    var toggle = $("#nav-toggle");
    if (toggle) toggle.addEventListener("click", function () { setNavOpen(!app.classList.contains("nav-open")); });
    var scrim = $("#scrim");
    if (scrim) scrim.addEventListener("click", function () { setNavOpen(false); });
  }

  // ------------------------------------------------------------------ copy buttons
  function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) return navigator.clipboard.writeText(text);
    return new Promise(function (resolve, reject) {
      var ta = document.createElement("textarea");
      ta.value = text; ta.setAttribute("readonly", ""); ta.className = "sr-only";
      document.body.appendChild(ta); ta.select();
      var ok = false;
      try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
      ta.remove();
      if (ok) resolve(); else reject(new Error("copy failed"));
    });
  }
  document.addEventListener("click", function (ev) {
    var b = ev.target.closest("[data-copy]");
    if (!b) return;
    ev.preventDefault();
    var src = document.querySelector(b.getAttribute("data-copy"));
    var text = src ? src.textContent.trim() : (b.getAttribute("data-copy-text") || "");
    copyText(text).then(function () {
      var old = b.getAttribute("data-label") || b.textContent;
      b.setAttribute("data-label", old);
      b.textContent = "Copied";
      setTimeout(function () { b.textContent = old; }, 1600);
    }, function () { toast("Could not copy — select the text and copy it by hand.", "error"); });
  });

  // ------------------------------------------------------------------ login page
  function initLogin() {
    var form = $("#login-form");
    if (!form) return;
    var toggle = $("#mode-toggle");
    var pw = $("#password");
    var pwToggle = $("#password-toggle");
    pwToggle.addEventListener("click", function () {
      var show = pw.type === "password";
      pw.type = show ? "text" : "password";
      pwToggle.textContent = show ? "Hide" : "Show";
      pwToggle.setAttribute("aria-pressed", show ? "true" : "false");
      pwToggle.setAttribute("aria-label", show ? "Hide password" : "Show password");
    });
    toggle.addEventListener("click", function (ev) {
      ev.preventDefault();
      var signup = $("#login-mode").value !== "signup";
      var key = signup ? "data-signup" : "data-signin";
      $("#login-mode").value = signup ? "signup" : "login";
      $("#name-field").hidden = !signup;
      $("#name").required = signup;
      $("#password-hint").hidden = !signup;
      pw.minLength = signup ? 8 : 1;
      pw.autocomplete = signup ? "new-password" : "current-password";
      ["#auth-title", "#auth-sub", "#login-submit", "#switch-text", "#mode-toggle"].forEach(function (s) {
        var el = $(s); el.textContent = el.getAttribute(key);
      });
      document.title = (signup ? "Create account" : "Sign in") + " · Warren";
      toggle.setAttribute("href", "/login?mode=" + (signup ? "login" : "signup"));
      var err = $("#login-error"); if (err) err.hidden = true;
      (signup ? $("#name") : $("#email")).focus();
    });
    form.addEventListener("submit", function (ev) {
      if (!form.checkValidity()) { ev.preventDefault(); form.reportValidity(); return; }
      $("#login-submit").disabled = true;
    });
  }

  // ------------------------------------------------------------------ launch dialog
  function initLaunchDialog() {
    var d = $("#launch-dialog");
    if (!d) return;
    var sel = $("#launch-template", d);
    var vcpus = $("#launch-vcpus", d);
    var mem = $("#launch-memory", d);
    var hint = $("[data-snapshot-hint]", d);
    var runtime = $("#launch-runtime", d);
    var memoryHint = $("[data-memory-snapshot-hint]", d);
    var chosen = "";  // the runtime the user picked, given back when a memory snapshot is left
    if (runtime) runtime.addEventListener("change", function () { chosen = runtime.value; });
    function sync() {
      var opt = sel.options[sel.selectedIndex];
      var snap = opt && opt.getAttribute("data-type") === "snapshot";
      if (snap) {
        if (opt.getAttribute("data-vcpus")) vcpus.value = opt.getAttribute("data-vcpus");
        if (opt.getAttribute("data-memory")) mem.value = opt.getAttribute("data-memory");
      }
      vcpus.readOnly = snap; mem.readOnly = snap;
      hint.hidden = !snap;
      // A memory snapshot starts on gVisor only: the choice is made for the user.
      var memory = snap && opt.getAttribute("data-kind") === "memory";
      if (runtime) {
        runtime.value = memory ? "gvisor" : chosen;
        runtime.disabled = memory;
        memoryHint.hidden = !memory;
      }
    }
    sel.addEventListener("change", sync);
    d.addEventListener("dialog:opening", function (ev) {
      var opener = ev.detail.opener;
      var preset = opener && opener.getAttribute("data-template");
      setTimeout(function () {
        if (preset) sel.value = preset;
        if (runtime) chosen = runtime.value;
        sync();
      }, 0);
    });
    $("form", d).addEventListener("api:success", function (ev) {
      var s = ev.detail;
      try { sessionStorage.setItem("warren_flash", s.id); } catch (e) { /* ignore */ }
      toastAfterReload("Sandbox " + s.id + " launched");
      if (document.body.getAttribute("data-page") === "sandboxes") window.location.reload();
      else window.location.href = "/dashboard/sandboxes";
    });
  }

  // flash a row after reload (new sandbox, new key)
  function flashRow() {
    var id = null;
    try { id = sessionStorage.getItem("warren_flash"); sessionStorage.removeItem("warren_flash"); } catch (e) { id = null; }
    if (!id) return;
    var row = document.querySelector('[data-row-id="' + (window.CSS && CSS.escape ? CSS.escape(id) : id) + '"]');
    if (row) row.classList.add("flash");
  }

  // ------------------------------------------------------------------ sandboxes list
  function initSandboxList() {
    var body = $("#sandbox-rows");
    if (!body) return;
    var search = $("#sandbox-search");
    var countdown = $("#refresh-countdown");
    var auto = $("#auto-refresh");
    var refreshBtn = $("#refresh-button");
    var PERIOD = 30;
    var left = PERIOD;

    function applySearch() {
      var q = (search.value || "").trim().toLowerCase();
      var shown = 0;
      $$("tr[data-row-id]", body).forEach(function (tr) {
        var id = tr.getAttribute("data-row-id");
        var cell = $(".sandbox-id", tr);
        var match = !q || id.toLowerCase().indexOf(q) !== -1;
        tr.hidden = !match;
        if (match) shown++;
        // highlight the match
        cell.textContent = id;
        if (q && match) {
          var i = id.toLowerCase().indexOf(q);
          cell.textContent = "";
          cell.appendChild(document.createTextNode(id.slice(0, i)));
          var mk = document.createElement("mark"); mk.textContent = id.slice(i, i + q.length);
          cell.appendChild(mk);
          cell.appendChild(document.createTextNode(id.slice(i + q.length)));
        }
      });
      var none = $("#search-empty");
      if (none) none.hidden = !(q && shown === 0 && $$("tr[data-row-id]", body).length > 0);
    }
    // Refreshes can overlap (the 30 s timer fires while an action's refresh is in flight); only
    // the latest one may draw, or an older answer (read before a destroy committed) would put
    // the destroyed row back until the next refresh.
    var latest = 0;
    function refresh() {
      var seq = ++latest;
      if (refreshBtn) refreshBtn.disabled = true;
      // X-Requested-With: a refusal comes as the API's envelope, not as an error page.
      var asks = { "Accept": "text/html", "X-Requested-With": "fetch" };
      return fetch("/dashboard/sandboxes/rows", { credentials: "same-origin", headers: asks })
        .then(function (r) {
          if (r.status === 401) { window.location.href = "/login"; throw new Error("signed out"); }
          // A refusal says why in the API's envelope (e.g. 503 database_busy: "retry shortly"),
          // as api() shows it; only an answer without one is "Something went wrong".
          if (!r.ok) return r.text().then(function (text) { throw new Error(envelopeMessage(text)); });
          return r.text();
        })
        .then(function (html) {
          if (seq !== latest) return;  // superseded by a newer refresh
          var tpl = document.createElement("template");
          tpl.innerHTML = html;
          var fresh = tpl.content.querySelector("#sandbox-list");
          var old = $("#sandbox-list");
          if (fresh && old) {
            old.replaceWith(fresh);
            var rc = $("#running-count");
            if (rc) rc.textContent = fresh.getAttribute("data-running") + " running · " + fresh.getAttribute("data-count") + " total";
          }
          body = $("#sandbox-rows") || body;
          applySearch();
          var stamp = $("#last-refreshed");
          if (stamp) stamp.textContent = "Updated " + new Date().toLocaleTimeString();
        })
        .catch(function (e) { if (e.message !== "signed out") toast(e.message || GENERIC_ERROR, "error"); })
        .then(function () { if (seq === latest) { if (refreshBtn) refreshBtn.disabled = false; left = PERIOD; tick(); } });
    }
    window.warrenRefresh = refresh;
    function tick() {
      if (!countdown) return;
      countdown.textContent = auto.checked ? "in " + left + "s" : "off";
    }
    if (search) search.addEventListener("input", applySearch);
    if (refreshBtn) refreshBtn.addEventListener("click", refresh);
    if (auto) {
      var saved = null;
      try { saved = localStorage.getItem("warren_auto_refresh"); } catch (e) { saved = null; }
      if (saved === "0") auto.checked = false;
      auto.addEventListener("change", function () {
        try { localStorage.setItem("warren_auto_refresh", auto.checked ? "1" : "0"); } catch (e) { /* ignore */ }
        left = PERIOD; tick();
      });
      setInterval(function () {
        if (!auto.checked || document.hidden) { tick(); return; }
        left -= 1;
        if (left <= 0) { left = PERIOD; refresh(); }
        tick();
      }, 1000);
    }
    tick();
    applySearch();

  }

  // ------------------------------------------------------------------ snapshot dialog (list + detail)
  function initSnapshotDialog() {
    var snap = $("#snapshot-dialog");
    if (!snap) return;
    snap.addEventListener("dialog:opening", function (ev) {
      var id = ev.detail.opener.getAttribute("data-sandbox-id");
      $("form", snap).setAttribute("data-api", "/dashboard/actions/sandboxes/" + id + "/snapshot");
      $("#snapshot-target").textContent = id;
    });
  }

  // ------------------------------------------------------------------ metrics charts (inline SVG)
  var SVGNS = "http://www.w3.org/2000/svg";
  function svgEl(name, attrs) {
    var el = document.createElementNS(SVGNS, name);
    Object.keys(attrs || {}).forEach(function (k) { el.setAttribute(k, attrs[k]); });
    return el;
  }
  function niceMax(v) {
    if (v <= 0) return 1;
    var p = Math.pow(10, Math.floor(Math.log10(v)));
    var n = v / p;
    return (n <= 1 ? 1 : n <= 2 ? 2 : n <= 5 ? 5 : 10) * p;
  }
  function drawChart(svg, points, opts) {
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    // Drawn in the SVG's own pixel size, so text and strokes are never stretched.
    var W = Math.max(Math.round(svg.getBoundingClientRect().width) || 600, 200), H = 180, L = 50, R = 8, T = 10, B = 22;
    svg.setAttribute("viewBox", "0 0 " + W + " " + H);
    var title = svgEl("title"); title.textContent = opts.label; svg.appendChild(title);
    var maxV = opts.max || niceMax(Math.max.apply(null, points.map(function (p) { return p.v; }).concat([0])) * 1.1);
    var now = opts.end, start = opts.start;
    for (var i = 0; i <= 4; i++) {
      var y = T + (H - T - B) * (i / 4);
      svg.appendChild(svgEl("line", { x1: L, x2: W - R, y1: y, y2: y, "class": "grid-line" }));
      var lab = svgEl("text", { x: L - 6, y: y + 3, "text-anchor": "end", "class": "axis-label" });
      lab.textContent = opts.fmt(maxV * (1 - i / 4));
      svg.appendChild(lab);
    }
    [0, 0.5, 1].forEach(function (f) {
      var t = new Date(start + (now - start) * f);
      var lab = svgEl("text", { x: L + (W - L - R) * f, y: H - 6, "text-anchor": f === 0 ? "start" : f === 1 ? "end" : "middle", "class": "axis-label" });
      lab.textContent = t.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
      svg.appendChild(lab);
    });
    if (!points.length) {
      var e = svgEl("text", { x: W / 2, y: H / 2, "text-anchor": "middle", "class": "chart-empty" });
      e.textContent = "No data yet";
      svg.appendChild(e);
      return;
    }
    function X(t) { return L + (W - L - R) * Math.min(1, Math.max(0, (t - start) / (now - start))); }
    function Y(v) { return T + (H - T - B) * (1 - Math.min(v, maxV) / maxV); }
    var d = points.map(function (p, i) { return (i ? "L" : "M") + X(p.t).toFixed(1) + " " + Y(p.v).toFixed(1); }).join(" ");
    var area = d + " L" + X(points[points.length - 1].t).toFixed(1) + " " + Y(0) + " L" + X(points[0].t).toFixed(1) + " " + Y(0) + " Z";
    svg.appendChild(svgEl("path", { d: area, "class": "area " + (opts.cls || "") }));
    svg.appendChild(svgEl("path", { d: d, "class": "line " + (opts.cls || "") }));
    var lp = points[points.length - 1];
    svg.appendChild(svgEl("circle", { cx: X(lp.t).toFixed(1), cy: Y(lp.v).toFixed(1), r: 3.5, "class": "point " + (opts.cls || "") }));
  }
  function initMetrics() {
    var root = $("#metrics");
    if (!root) return;
    var url = root.getAttribute("data-url");
    var cpuSvg = $("#cpu-chart"), memSvg = $("#mem-chart");
    var cpuNow = $("#cpu-now"), memNow = $("#mem-now");
    var memLimit = Number(root.getAttribute("data-memory-mb")) || 0;
    var range = root.getAttribute("data-range");
    var spans = { "5m": 300, "10m": 600, "1h": 3600, "2h": 7200, "6h": 21600, "12h": 43200, "24h": 86400 };
    var last = null;
    function draw(data) {
      last = data;
      var pts = data.points || [];
      var end = Date.now(), start = end - (spans[range] || 600) * 1000;
      var cpu = pts.map(function (p) { return { t: Date.parse(p.ts), v: p.cpu_pct }; });
      var mem = pts.map(function (p) { return { t: Date.parse(p.ts), v: p.mem_mb }; });
      drawChart(cpuSvg, cpu, { start: start, end: end, max: 100, label: "CPU usage (%)",
        fmt: function (v) { return Math.round(v) + "%"; } });
      drawChart(memSvg, mem, { start: start, end: end, cls: "mem", label: "Memory (MB)",
        fmt: function (v) { return (v < 10 ? v.toFixed(1) : Math.round(v)) + " MB"; } });
      var latest = pts[pts.length - 1];
      cpuNow.textContent = latest ? latest.cpu_pct.toFixed(1) + "%" : "—";
      memNow.textContent = latest ? Math.round(latest.mem_mb) + " MB" + (memLimit ? " of " + memLimit + " MB" : "") : "—";
      root.setAttribute("data-loaded", String(pts.length));
    }
    var msg = $("#metrics-error");
    function load() {
      api(url + "?range=" + encodeURIComponent(range)).then(function (data) {
        msg.hidden = true;  // a failed read's reason goes once a later one succeeds
        draw(data);
      }, function (e) {
        root.setAttribute("data-loaded", "error");
        msg.textContent = e.message || GENERIC_ERROR;
        msg.hidden = false;
      });
    }
    load();
    setInterval(function () { if (!document.hidden) load(); }, 10000);
    var resizeTimer = null;
    window.addEventListener("resize", function () {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(function () { if (last) draw(last); }, 150);
    });
  }

  // ------------------------------------------------------------------ team page
  function initTeam() {
    // inline rename: click the name; Enter saves, Escape cancels
    var nameBtn = $("#team-name-edit");
    if (nameBtn) {
      var form = $("#team-rename-form");
      var input = $("#team-rename-input");
      nameBtn.addEventListener("click", function () {
        nameBtn.hidden = true; form.hidden = false; input.value = nameBtn.getAttribute("data-name"); input.focus(); input.select();
      });
      function cancel() { form.hidden = true; nameBtn.hidden = false; $(".form-error", form).hidden = true; nameBtn.focus(); }
      input.addEventListener("keydown", function (ev) { if (ev.key === "Escape") { ev.preventDefault(); cancel(); } });
      $("#team-rename-cancel").addEventListener("click", cancel);
    }

    // add member typeahead: 3+ chars, 300 ms debounce, /v1/users/search via the dashboard
    var email = $("#member-email");
    var list = $("#member-suggestions");
    if (email && list) {
      var timer = null, seq = 0, active = -1;
      function hide() { list.hidden = true; list.innerHTML = ""; active = -1; email.setAttribute("aria-expanded", "false"); }
      function choose(li) { email.value = li.getAttribute("data-email"); hide(); email.focus(); }
      email.addEventListener("input", function () {
        clearTimeout(timer);
        var q = email.value.trim();
        if (q.length < 3) { hide(); return; }
        timer = setTimeout(function () {
          var mine = ++seq;
          api("/dashboard/actions/users/search?email=" + encodeURIComponent(q)).then(function (users) {
            if (mine !== seq) return;
            list.innerHTML = "";
            (users || []).forEach(function (u, i) {
              var li = document.createElement("li");
              li.setAttribute("role", "option"); li.id = "sugg-" + i;
              // The id and whether the address is verified beside it: two accounts made before
              // session 14's email rule may look alike, and only a verified one can accept.
              li.setAttribute("data-email", u.email);
              li.textContent = u.email + " · " + (u.verified ? "verified" : "unverified") + " · " + u.user_id;
              li.addEventListener("mousedown", function (e) { e.preventDefault(); choose(li); });
              list.appendChild(li);
            });
            list.hidden = !users || users.length === 0;
            email.setAttribute("aria-expanded", list.hidden ? "false" : "true");
            active = -1;
          }, function () { hide(); });
        }, 300);
      });
      email.addEventListener("keydown", function (ev) {
        var items = $$("li", list);
        if (list.hidden || !items.length) return;
        if (ev.key === "ArrowDown" || ev.key === "ArrowUp") {
          ev.preventDefault();
          active = ev.key === "ArrowDown" ? Math.min(active + 1, items.length - 1) : Math.max(active - 1, 0);
          items.forEach(function (li, i) { li.setAttribute("aria-selected", i === active ? "true" : "false"); });
          email.setAttribute("aria-activedescendant", items[active].id);
        } else if (ev.key === "Enter" && active >= 0) {
          ev.preventDefault(); choose(items[active]);
        } else if (ev.key === "Escape") { ev.preventDefault(); hide(); }
      });
      email.addEventListener("blur", function () { setTimeout(hide, 150); });
    }

    // delete / leave: after success, switch to the next team or say none remain (never log out)
    var dz = $("#danger-action");
    if (dz) dz.addEventListener("click", function () {
      confirmAction({
        title: dz.getAttribute("data-confirm-title"),
        message: dz.getAttribute("data-confirm-message"),
        confirm: dz.getAttribute("data-confirm-label"),
      }, function () {
        return api(dz.getAttribute("data-url"), { body: {} }).then(function (data) {
          if (data.next_team) toastAfterReload(data.message);
          else toastAfterReload(data.message, "ok");
          window.location.href = "/dashboard/team";
        });
      });
    });
  }

  // ------------------------------------------------------------------ hosts: delete with preview
  function initHostDelete() {
    var d = $("#host-delete-dialog");
    if (!d) return;
    var hostId = null;
    var status = $("#host-delete-status"), list = $("#host-delete-sandboxes"), ok = $("#host-delete-ok");
    var err = $(".form-error", d);
    d.addEventListener("dialog:opening", function (ev) {
      hostId = ev.detail.opener.getAttribute("data-host-id");
      $("#host-delete-name").textContent = hostId;
      status.textContent = "Checking active sandboxes…";
      list.innerHTML = ""; list.hidden = true;
      ok.disabled = true; ok.textContent = "Delete host"; ok.setAttribute("data-force", "0");
      api("/dashboard/actions/hosts/" + hostId + "/delete-preview").then(function (data) {
        var ids = data.sandbox_ids || [];
        if (ids.length) {
          status.textContent = ids.length + " active sandbox" + (ids.length === 1 ? "" : "es") +
            " will be destroyed if you force delete this host:";
          ids.forEach(function (id) { var li = document.createElement("li"); li.innerHTML = ""; var c = document.createElement("code"); c.textContent = id; li.appendChild(c); list.appendChild(li); });
          list.hidden = false;
          ok.textContent = "Force delete"; ok.setAttribute("data-force", "1");
        } else {
          status.textContent = "No active sandboxes on this host. It will stop serving and be removed.";
        }
        ok.disabled = false;
      }, function (e) { err.textContent = e.message || GENERIC_ERROR; err.hidden = false; status.textContent = ""; });
    });
    ok.addEventListener("click", function () {
      ok.disabled = true; err.hidden = true;
      api("/dashboard/actions/hosts/" + hostId + "/delete", { body: { force: ok.getAttribute("data-force") === "1" } }).then(function () {
        reloadWithToast("Host deleted");
      }, function (e) { err.textContent = e.message || GENERIC_ERROR; err.hidden = false; ok.disabled = false; });
    });
  }

  // ------------------------------------------------------------------ boot
  document.addEventListener("DOMContentLoaded", function () {
    initSidebar();
    initLogin();
    initLaunchDialog();
    initSandboxList();
    initSnapshotDialog();
    initMetrics();
    initTeam();
    initHostDelete();
    showPendingToast();
    flashRow();
  });
})();
