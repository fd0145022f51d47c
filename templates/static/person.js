// Evidence that a person is on the vote page: a trusted pointer, key or touch event.
// Mail scanners that load pages in a headless browser run this script but generate no
// such events, so their visits stay uncounted (docs/votes.md). Without JavaScript the
// vote still counts, once the quiet period has passed.
// The sign-in page uses the same sign: its form's person field.
(function () {
  "use strict";
  var url = document.body.getAttribute("data-person");
  var sent = false;
  function seen(event) {
    if (!event.isTrusted) { return; }
    var field = document.querySelector("input[name=person]");
    if (field) { field.value = "1"; }
    if (sent || !url) { return; }
    sent = true;
    fetch(url, { method: "POST", credentials: "omit", keepalive: true }).catch(function () {});
  }
  ["pointerdown", "keydown", "touchstart"].forEach(function (name) {
    window.addEventListener(name, seen, { capture: true, passive: true });
  });
})();
