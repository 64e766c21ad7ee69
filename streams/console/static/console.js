// Governor console: keyboard shortcuts ("/" jumps to the first filter, "g o" / "g s" / "g c" /
// "g p" / "g d" / "g i" go to the overview / sessions / cost / PII / drift / incidents), the
// overview's live decisions feed (polls /api/decisions every 5 s) and the time the page was
// rendered. Every page works without it but the live feed.
"use strict";
(function () {
  const root = document.body.dataset.root || "";
  const pages = { o: "/", s: "/sessions", c: "/cost", p: "/pii", d: "/drift", i: "/incidents" };
  let pending = null;
  document.addEventListener("keydown", function (event) {
    const target = event.target;
    if (target instanceof HTMLInputElement || target instanceof HTMLSelectElement) return;
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    if (event.key === "/") {
      const first = document.querySelector(".filters select, .filters input");
      if (first) { event.preventDefault(); first.focus(); }
    } else if (pending === "g" && Object.prototype.hasOwnProperty.call(pages, event.key)) {
      window.location.href = root + pages[event.key];
    }
    pending = event.key === "g" ? "g" : null;
  });
  const stamp = document.getElementById("rendered");
  if (stamp) {
    stamp.dataset.rendered = new Date().toISOString();
    stamp.textContent = "read-only · rendered " + new Date().toLocaleTimeString();
  }
  const feed = document.getElementById("feed");
  if (feed) {
    const item = function (text, cls) {
      const li = document.createElement("li");
      li.textContent = text;
      if (cls) li.className = cls;
      return li;
    };
    const refresh = function () {
      fetch(feed.dataset.src, { headers: { Accept: "application/json" } })
        .then(function (r) { return r.json().then(function (body) { return [r.ok, body]; }); })
        .then(function (pair) {
          const ok = pair[0], body = pair[1];
          feed.replaceChildren();
          if (!ok) { feed.appendChild(item(body.error || "no answer", "warn")); return; }
          if (!body.decisions.length) {
            feed.appendChild(item("no decision in the last " + body.minutes + " min", "muted"));
          }
          body.decisions.forEach(function (d) {
            const at = new Date(d.issued_at_us / 1000).toISOString().slice(11, 19);
            const li = item(at + " " + d.action + " " + d.target + " (" + d.policy_id + "): " + d.reason);
            li.className = "action-" + String(d.action).toLowerCase();
            feed.appendChild(li);
          });
          feed.dataset.loaded = String(body.decisions.length);
        })
        .catch(function () { feed.replaceChildren(item("cannot reach the console", "warn")); });
    };
    refresh();
    window.setInterval(refresh, 5000);
  }
})();
