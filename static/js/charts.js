/* Draws the monitoring charts with Chart.js from JSON the server rendered with
   json_script (id chart-data-json, refreshed by htmx) or, for a single chart,
   from a JSON endpoint named in data-chart-url. Failed is red, successful green. */
(function () {
  "use strict";
  var FAILED = "#c0392b", SUCCESS = "#1e8449";
  var charts = {};

  function shortLabel(iso, bucketSeconds) {
    var d = new Date(iso);
    var pad = function (n) { return String(n).padStart(2, "0"); };
    var hm = pad(d.getUTCHours()) + ":" + pad(d.getUTCMinutes());
    if (bucketSeconds >= 86400) return d.getUTCFullYear() + "-" + pad(d.getUTCMonth() + 1) + "-" + pad(d.getUTCDate());
    if (bucketSeconds >= 3600) return pad(d.getUTCMonth() + 1) + "-" + pad(d.getUTCDate()) + " " + hm;
    return hm;
  }

  function config(data) {
    if (data.kind === "line") {
      var bucket = data.range ? data.range.bucket_seconds : 60;
      return {
        type: "line",
        data: {
          labels: data.labels.map(function (l) { return shortLabel(l, bucket); }),
          datasets: [
            { label: "Failed", data: data.series.failed, borderColor: FAILED, backgroundColor: FAILED + "33", fill: true, pointRadius: 0, tension: 0.2 },
            { label: "Successful", data: data.series.success, borderColor: SUCCESS, backgroundColor: SUCCESS + "33", fill: true, pointRadius: 0, tension: 0.2 }
          ]
        },
        options: { animation: false, maintainAspectRatio: false, interaction: { mode: "index", intersect: false },
                   scales: { y: { beginAtZero: true, ticks: { precision: 0 } } } }
      };
    }
    return {
      type: "bar",
      data: { labels: data.labels, datasets: [{ label: "Failures", data: data.series.failed, backgroundColor: FAILED }] },
      options: { animation: false, maintainAspectRatio: false, indexAxis: "y", plugins: { legend: { display: false } },
                 scales: { x: { beginAtZero: true, ticks: { precision: 0 } } } }
    };
  }

  function draw(canvas, data) {
    var box = canvas.closest(".card-body") || canvas.parentElement;
    var empty = box.querySelector(".chart-empty");
    var isEmpty = !data || data.empty;
    canvas.parentElement.classList.toggle("d-none", isEmpty);
    if (empty) empty.classList.toggle("d-none", !isEmpty);
    if (isEmpty) return;
    var existing = Chart.getChart(canvas);
    var cfg = config(data);
    if (existing) {
      existing.data.labels = cfg.data.labels;
      cfg.data.datasets.forEach(function (ds, i) { existing.data.datasets[i].data = ds.data; });
      existing.update("none");
    } else {
      charts[canvas.dataset.chart] = new Chart(canvas, cfg);
    }
  }

  function fromScript() {
    var script = document.getElementById("chart-data-json");
    if (!script) return;
    var all = JSON.parse(script.textContent);
    document.querySelectorAll("canvas[data-chart]").forEach(function (canvas) {
      if (all[canvas.dataset.chart]) draw(canvas, all[canvas.dataset.chart]);
    });
  }

  function fromUrls() {
    document.querySelectorAll("canvas[data-chart-url]").forEach(function (canvas) {
      fetch(canvas.dataset.chartUrl, { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (r) { return r.json(); })
        .then(function (data) { draw(canvas, data); });
    });
  }

  document.addEventListener("DOMContentLoaded", function () { fromScript(); fromUrls(); });
  document.body.addEventListener("htmx:afterSettle", fromScript);
})();
