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
