// The desk's issue list: poll /desk/issues.json every 2 s and update the progress bars.
// A new issue or a changed status reloads the page, so the row's buttons match its state.
(function () {
  "use strict";
  var table = document.getElementById("issues");
  if (!table) { return; }
  function tick() {
    fetch("/desk/issues.json", { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (data) {
        if (!data) { return; }
        var ids = data.issues.map(function (i) { return String(i.id); }).join(",");
        var statuses = data.issues.map(function (i) { return i.status; }).join(",");
        if (ids !== table.dataset.ids || statuses !== table.dataset.statuses) {
          window.location.replace("/desk");
          return;
        }
        data.issues.forEach(function (i) {
          var row = document.getElementById("issue-" + i.id);
          if (!row) { return; }
          row.querySelector("progress").value = i.percent;
          row.querySelector(".percent").textContent = Math.round(i.percent) + "%";
          var counts = row.querySelector(".counts");
          if (counts && counts.firstChild) { counts.firstChild.textContent = i.sent + " / " + i.total; }
        });
      })
      .catch(function () { /* the server is restarting: try again next time */ });
  }
  window.setInterval(tick, 2000);
})();

// The item editor's live preview: the Markdown, sanitised by the server as the item will be
// shown, a moment after the editor stops typing. Without script the preview shows on save.
(function () {
  "use strict";
  var body = document.querySelector("textarea[data-preview]");
  if (!body) { return; }
  var target = document.getElementById(body.getAttribute("data-target"));
  var csrf = body.form.querySelector("input[name=csrf]");
  var timer = null;
  function refresh() {
    var data = new URLSearchParams();
    data.set("csrf", csrf ? csrf.value : "");
    data.set("body", body.value);
    fetch(body.getAttribute("data-preview"), { method: "POST", body: data, credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) { if (html !== null && target) { target.innerHTML = html; } })
      .catch(function () { /* try again on the next keystroke */ });
  }
  body.addEventListener("input", function () {
    if (timer) { window.clearTimeout(timer); }
    timer = window.setTimeout(refresh, 300);
  });
})();
