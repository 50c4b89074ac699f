/* Periodic refresh of htmx fragments: every few seconds while the tab is visible,
   slowly while it is hidden. Elements opt in with data-refresh-seconds and listen
   for "refresh from:body" in their hx-trigger. */
(function () {
  "use strict";
  var el = document.querySelector("[data-refresh-seconds]");
  if (!el || !window.htmx) return;
  var fast = (Number(el.dataset.refreshSeconds) || 5) * 1000;
  var slow = (Number(el.dataset.refreshHiddenSeconds) || 60) * 1000;
  var last = Date.now();
  function refresh() { last = Date.now(); htmx.trigger(document.body, "refresh"); }
  setInterval(function () {
    var wait = document.visibilityState === "hidden" ? slow : fast;
    if (Date.now() - last >= wait) refresh();
  }, 1000);
  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "visible" && Date.now() - last >= fast) refresh();
  });
})();
