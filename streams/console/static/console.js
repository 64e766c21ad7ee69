// Governor console: keyboard shortcuts ("/" jumps to the first filter, "g o" / "g s" go to the
// overview / sessions) and the time the page was rendered. Everything works without it.
"use strict";
(function () {
  let pending = null;
  document.addEventListener("keydown", function (event) {
    const target = event.target;
    if (target instanceof HTMLInputElement || target instanceof HTMLSelectElement) return;
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    if (event.key === "/") {
      const first = document.querySelector(".filters select, .filters input");
      if (first) { event.preventDefault(); first.focus(); }
    } else if (pending === "g" && (event.key === "o" || event.key === "s")) {
      window.location.href = event.key === "o" ? "/" : "/sessions";
    }
    pending = event.key === "g" ? "g" : null;
  });
  const stamp = document.getElementById("rendered");
  if (stamp) {
    stamp.dataset.rendered = new Date().toISOString();
    stamp.textContent = "read-only · rendered " + new Date().toLocaleTimeString();
  }
})();
