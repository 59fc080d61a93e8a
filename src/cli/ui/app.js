// dockhand dashboard: keep the parts marked data-live fresh without a
// full reload. Served from this origin only (the page's CSP allows no
// inline script); it reads pages, never writes.
(function () {
  "use strict";
  var EVERY_MS = 1000;
  // A page that takes long to compute (a text search over a huge table) is
  // asked for at most a tenth of the time.
  var COST_FACTOR = 10;
  var busy = false;
  var nextAt = 0;

  function editing() {
    var active = document.activeElement;
    return active && active.closest && active.closest("[data-live] form");
  }

  function refresh() {
    if (busy || document.hidden || editing() || Date.now() < nextAt) return;
    if (!document.querySelector("[data-live]")) return;
    busy = true;
    var started = Date.now();
    fetch(location.href, {
      credentials: "same-origin",
      headers: { "X-Dockhand-Live": "1" },
    })
      .then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.text();
      })
      .then(function (text) {
        var fresh = new DOMParser().parseFromString(text, "text/html");
        document.querySelectorAll("[data-live]").forEach(function (old) {
          var next = fresh.getElementById(old.id);
          if (next) old.replaceWith(document.importNode(next, true));
        });
        document.body.dataset.refreshed = String(Date.now());
        document.body.classList.remove("stale");
      })
      .catch(function () {
        // The dashboard stopped or the network went away: say so, keep trying.
        document.body.classList.add("stale");
      })
      .finally(function () {
        busy = false;
        var took = Date.now() - started;
        nextAt = Date.now() + Math.max(EVERY_MS - took, took * COST_FACTOR);
      });
  }

  setInterval(refresh, EVERY_MS / 4);
})();
