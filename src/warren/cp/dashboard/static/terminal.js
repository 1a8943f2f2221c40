/* The sandbox page's tabs (Overview, Terminal) and the terminal itself: xterm.js (vendored in
 * static/vendor/xterm) on a WebSocket to /dashboard/sandboxes/{id}/terminal, which speaks the
 * PTY protocol (docs/networking.md §2): a JSON "start" (or "connect" with a pid) first, then
 * binary frames are terminal bytes both ways and text frames JSON control messages ("resize";
 * from the server "started", "exit", "error").
 *
 * The handshake carries the session's CSRF token as a subprotocol ("csrf.<token>"): a browser
 * cannot set headers on a WebSocket, and the server checks the token and the Origin before it
 * accepts (see dashboard/terminal.py).
 */
(function () {
  "use strict";

  var SUBPROTOCOL = "warren.terminal";
  // The server refuses input frames past 64 KiB; a paste is sent in pieces below that.
  var INPUT_CHUNK = 32 * 1024;

  /* ----------------------------------------------------------------------------- tabs */

  function initTabs(onShow) {
    var tabs = Array.prototype.slice.call(document.querySelectorAll('[role="tab"][data-tab]'));
    if (!tabs.length) return;

    function select(name, focus) {
      tabs.forEach(function (t) {
        var on = t.getAttribute("data-tab") === name;
        t.setAttribute("aria-selected", on ? "true" : "false");
        t.tabIndex = on ? 0 : -1;
        var panel = document.getElementById(t.getAttribute("aria-controls"));
        if (panel) panel.hidden = !on;
        if (on && focus) t.focus();
      });
      onShow(name);
    }

    tabs.forEach(function (t, i) {
      t.addEventListener("click", function () {
        var name = t.getAttribute("data-tab");
        history.replaceState(null, "", name === "overview" ? window.location.pathname + window.location.search : "#" + name);
        select(name, false);
      });
      t.addEventListener("keydown", function (e) {
        var step = e.key === "ArrowRight" ? 1 : e.key === "ArrowLeft" ? -1 : 0;
        if (!step) return;
        e.preventDefault();
        tabs[(i + step + tabs.length) % tabs.length].click();
        tabs.forEach(function (x) { if (x.getAttribute("aria-selected") === "true") x.focus(); });
      });
    });
    if (window.location.hash === "#terminal") select("terminal", false);
  }

  /* ----------------------------------------------------------------- CSP and xterm.js */

  /* xterm.js writes its computed styles (cell sizes, theme colours) into <style> elements of its
   * own. The dashboard's Content-Security-Policy applies only the styles that carry the page's
   * nonce (session 26; before it, no inline style at all, and this page mirrored xterm's text
   * into constructable stylesheets), so the <style> elements made after this script loads are
   * given the nonce its own tag carried. Only the page's own scripts run to make them, and
   * xterm's text is its own (no page or sandbox data). */
  var PAGE_NONCE = (document.currentScript && document.currentScript.nonce) || "";

  function noncedStyleElements() {
    if (!PAGE_NONCE) return;
    var create = Document.prototype.createElement;
    Document.prototype.createElement = function (name, options) {
      var el = create.call(this, name, options);
      if (String(name).toLowerCase() === "style") el.nonce = PAGE_NONCE;
      return el;
    };
  }

  /* A cell's 24-bit colour: xterm sets it with setAttribute("style", ...) on the cell's <span>,
   * which the CSP refuses as an inline style. On spans, that call is made through CSSOM instead,
   * which the CSP allows (it guards markup, not the page's own scripts). xterm writes only
   * colours there, from parsed numbers. */
  function spanStylesThroughCssom() {
    var proto = HTMLSpanElement.prototype;
    var original = proto.setAttribute;
    proto.setAttribute = function (name, value) {
      if (String(name).toLowerCase() === "style") { this.style.cssText = String(value); return; }
      original.call(this, name, value);
    };
  }

  /* -------------------------------------------------------------------------- terminal */

  function Session(card) {
    var url = card.getAttribute("data-url");
    var screen = document.getElementById("terminal-screen");
    var status = document.getElementById("terminal-status");
    var reconnectBtn = document.getElementById("terminal-reconnect");
    var newBtn = document.getElementById("terminal-new");
    var csrf = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";
    var encoder = new TextEncoder();

    var term = new window.Terminal({
      cursorBlink: true,
      convertEol: false,
      fontFamily: 'ui-monospace, SFMono-Regular, "SF Mono", Menlo, Consolas, "Liberation Mono", monospace',
      fontSize: 13,
      scrollback: 5000,
      theme: { background: "#111827", foreground: "#e5e7eb", cursor: "#e5e7eb" },
    });
    var fit = new window.FitAddon.FitAddon();
    term.loadAddon(fit);
    noncedStyleElements();
    spanStylesThroughCssom();
    term.open(screen);

    var ws = null;
    var pid = null;
    var exited = false;

    function setState(state, text) {
      card.setAttribute("data-state", state);
      status.textContent = text;
      reconnectBtn.hidden = !(state === "closed" && pid !== null && !exited);
      newBtn.hidden = !(state === "exited" || state === "error" || state === "closed");
    }

    function sendJSON(obj) {
      if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(obj));
    }

    function sendBytes(bytes) {
      if (!ws || ws.readyState !== WebSocket.OPEN) return;
      for (var i = 0; i < bytes.length; i += INPUT_CHUNK) ws.send(bytes.subarray(i, i + INPUT_CHUNK));
    }

    function onEvent(ev) {
      if (ev.type === "started") {
        pid = ev.pid;
        card.setAttribute("data-pid", String(pid));
        setState("open", "Connected · pid " + pid);
      } else if (ev.type === "exit") {
        exited = true;
        term.write("\r\n\x1b[2m[process exited with code " + ev.exit_code + "]\x1b[0m\r\n");
        setState("exited", "Exited with code " + ev.exit_code);
      } else if (ev.type === "error") {
        term.write("\r\n\x1b[31m" + String(ev.message || ev.code || "error").replace(/[\x00-\x1f\x7f]/g, " ") + "\x1b[0m\r\n");
        setState("error", "Error: " + (ev.message || ev.code || "unknown"));
      }
    }

    function connect(first) {
      if (ws) { ws.onclose = null; ws.close(); }
      exited = false;
      setState("connecting", "Connecting…");
      var scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
      var sock = new WebSocket(scheme + window.location.host + url, [SUBPROTOCOL, "csrf." + csrf]);
      sock.binaryType = "arraybuffer";
      ws = sock;
      sock.onopen = function () {
        fit.fit();
        first.cols = term.cols;
        first.rows = term.rows;
        card.setAttribute("data-size", term.rows + "x" + term.cols);
        sock.send(JSON.stringify(first));
        term.focus();
      };
      sock.onmessage = function (m) {
        if (m.data instanceof ArrayBuffer) { term.write(new Uint8Array(m.data)); return; }
        var ev;
        try { ev = JSON.parse(m.data); } catch (e) { return; }
        if (ev && typeof ev === "object") onEvent(ev);
      };
      sock.onclose = function () {
        if (ws !== sock) return;
        ws = null;
        var state = card.getAttribute("data-state");
        if (state === "exited" || state === "error") return;
        var text = pid !== null ? "Disconnected" : "Could not connect (is the sandbox still running?)";
        term.write("\r\n\x1b[2m[" + text + "]\x1b[0m\r\n");
        setState("closed", text);
      };
    }

    term.onData(function (data) { sendBytes(encoder.encode(data)); });
    term.onBinary(function (data) {
      var bytes = new Uint8Array(data.length);
      for (var i = 0; i < data.length; i++) bytes[i] = data.charCodeAt(i) & 0xff;
      sendBytes(bytes);
    });
    term.onResize(function (size) {
      card.setAttribute("data-size", size.rows + "x" + size.cols);
      sendJSON({ type: "resize", cols: size.cols, rows: size.rows });
    });

    var pending = false;
    function refit() {
      if (pending || screen.offsetParent === null) return;  // hidden: fit once shown
      pending = true;
      window.requestAnimationFrame(function () { pending = false; fit.fit(); });
    }
    window.addEventListener("resize", refit);

    reconnectBtn.addEventListener("click", function () { if (pid !== null) connect({ type: "connect", pid: pid }); });
    newBtn.addEventListener("click", function () {
      pid = null;
      card.removeAttribute("data-pid");
      term.reset();
      connect({ type: "start" });
    });

    return {
      show: function () {
        refit();
        if (ws === null && card.getAttribute("data-state") === "idle") connect({ type: "start" });
        else term.focus();
      },
    };
  }

  function init() {
    var card = document.getElementById("terminal");
    var session = null;
    initTabs(function (name) {
      if (name !== "terminal" || !card) return;
      if (!window.Terminal || !window.FitAddon) return;
      if (session === null) session = Session(card);
      session.show();
    });
  }

  document.addEventListener("DOMContentLoaded", init);
})();
