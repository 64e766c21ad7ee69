// Governor console: keyboard shortcuts ("/" jumps to the first filter, "g o" / "g s" / "g c" /
// "g p" / "g d" / "g i" go to the overview / sessions / cost / PII / drift / incidents), the
// overview's live decisions feed (polls /api/decisions every 5 s) and the time the page was
// rendered. Every page works without it but the live feed.
// The two mutation forms (rollback, open an incident) are sent with fetch() and the token the
// user typed as an "Authorization: Bearer" header, not in the body: the worker's web port, which
// mounts the console at /console/, takes a token only that way. The token lives in the form's
// field only (never stored). Without the script the forms post the field, as the standalone
// console takes it.
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
  document.querySelectorAll("form.mutation").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      const data = new FormData(form);
      const token = String(data.get("token") || "").trim();
      data.delete("token");
      const headers = { Accept: "text/html" };
      if (token) headers.Authorization = "Bearer " + token;
      const button = form.querySelector("button");
      if (button) button.disabled = true;
      const say = function (text) {
        let note = form.querySelector(".mutation-error");
        if (!note) {
          note = document.createElement("p");
          note.className = "warn mutation-error";
          note.setAttribute("role", "alert");
          form.appendChild(note);
        }
        note.textContent = text;
        if (button) button.disabled = false;
      };
      fetch(form.action, {
        method: "POST", headers: headers, body: new URLSearchParams(data),
        credentials: "same-origin",
      })
        .then(function (r) {
          if (r.redirected) { window.location.assign(r.url); return; }
          const type = r.headers.get("Content-Type") || "";
          return r.text().then(function (text) {
            if (type.indexOf("text/html") === 0) {
              // the console's own page (the result, or the error saying the fix)
              document.open(); document.write(text); document.close();
              return;
            }
            // the worker's guard answers JSON ({"error": ...}) before the console sees it
            let error = "HTTP " + r.status;
            try { error += ": " + (JSON.parse(text).error || text); } catch (e) { error += ": " + text; }
            say(error);
          });
        })
        .catch(function () { say("cannot reach the console"); });
    });
  });
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
