// Live password-policy feedback on mailbox forms: posts the form (with its CSRF
// token) to the feedback endpoint and shows the policy's messages under the field.
(function () {
  var script = document.currentScript;
  var url = script && script.dataset.url;
  var form = document.getElementById("mailbox-form");
  if (!url || !form || !form.elements.password) return;
  var target = document.getElementById("password-feedback");
  var timer = null;
  function check() {
    var data = new FormData(form);
    fetch(url, { method: "POST", body: data, credentials: "same-origin", headers: { "X-Requested-With": "fetch" } })
      .then(function (r) { return r.ok ? r.text() : ""; })
      .then(function (html) { if (target) target.innerHTML = html; });
  }
  form.elements.password.addEventListener("input", function () {
    clearTimeout(timer);
    timer = setTimeout(check, 400);
  });
})();
