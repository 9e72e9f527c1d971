// Live job page: replaces the #live panel with server-rendered HTML pushed over
// Server-Sent Events. No inline scripts (CSP), no framework, nothing else.
(function () {
  "use strict";
  var panel = document.getElementById("live");
  if (!panel || !window.EventSource) {
    return;
  }
  var source = new EventSource(window.location.pathname + "/events");
  source.addEventListener("update", function (e) {
    panel.innerHTML = e.data;
  });
  source.addEventListener("done", function (e) {
    panel.innerHTML = e.data;
    panel.setAttribute("data-final", "true");
    source.close();
  });
})();
