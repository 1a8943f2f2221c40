/* A template build's log, live while the build runs: poll the dashboard's log endpoint with the
 * byte offset reached, append each piece as text (never as HTML: the log is the build's own
 * output), and reload once the build has ended so the page shows its final state.
 */
(function () {
  "use strict";

  function init() {
    var pre = document.getElementById("build-log");
    if (!pre || pre.getAttribute("data-done") === "1") return;
    var url = pre.getAttribute("data-url");
    var offset = parseInt(pre.getAttribute("data-offset"), 10) || 0;
    var errBox = document.getElementById("build-log-error");
    var stepField = document.querySelector('[data-build-field="step"]');
    var delay = 500;

    function showStatus(d) {
      document.querySelectorAll("[data-build-status]").forEach(function (b) {
        if (b.getAttribute("data-status") === d.status) return;
        b.setAttribute("data-status", d.status);
        b.className = "badge " + ({ queued: "warn", running: "info", ready: "ok", failed: "danger" }[d.status] || "");
        b.textContent = d.status.charAt(0).toUpperCase() + d.status.slice(1);
      });
      if (stepField && d.steps) {
        stepField.textContent = d.step + "/" + d.steps + (d.cached_steps ? " (" + d.cached_steps + " cached)" : "");
      }
    }

    function poll() {
      fetch(url + "?offset=" + offset, { credentials: "same-origin", headers: { "Accept": "application/json" } })
        .then(function (resp) {
          if (resp.status === 401) { window.location.href = "/login"; throw new Error("signed out"); }
          if (!resp.ok) throw new Error("Could not read the log (HTTP " + resp.status + ")");
          return resp.json();
        })
        .then(function (d) {
          errBox.hidden = true;
          if (d.data) {
            var atBottom = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 40;
            pre.appendChild(document.createTextNode(d.data));
            if (atBottom) pre.scrollTop = pre.scrollHeight;
            delay = 500;
          } else {
            delay = Math.min(delay * 1.5, 3000);
          }
          offset = d.next_offset;
          showStatus(d);
          if (d.done) {
            pre.setAttribute("data-done", "1");
            window.location.reload();
            return;
          }
          setTimeout(poll, delay);
        }, function (e) {
          if (e.message === "signed out") return;
          errBox.textContent = e.message || "Something went wrong";
          errBox.hidden = false;
          setTimeout(poll, 3000);
        });
    }
    setTimeout(poll, 300);
  }

  document.addEventListener("DOMContentLoaded", init);
})();
