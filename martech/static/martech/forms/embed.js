/* Embedded capture forms: fill in what only the visitor's browser knows.
   The form works without this script (it is a plain HTML post); with it the
   submission carries the page address (kept with the consent) and an id that
   makes a double click one submission. */
(function () {
  "use strict";
  function uuid() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    return "xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx".replace(/[xy]/g, function (c) {
      var r = Math.random() * 16 | 0; return (c === "x" ? r : (r & 0x3 | 0x8)).toString(16);
    });
  }
  function prepare(form) {
    var page = form.querySelector("input[name=page_url]");
    if (page && !page.value) page.value = window.location.href.slice(0, 2000);
    var id = form.querySelector("input[name=submission_id]");
    if (id && !id.value) id.value = uuid();
    var params = new URLSearchParams(window.location.search);
    ["utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content"].forEach(function (name) {
      if (params.get(name) && !form.querySelector("input[name=" + name + "]")) {
        var input = document.createElement("input");
        input.type = "hidden"; input.name = name; input.value = params.get(name);
        form.appendChild(input);
      }
    });
  }
  function run() {
    Array.prototype.forEach.call(document.querySelectorAll("form[data-martech-form]"), prepare);
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", run);
  else run();
})();
