/* Knowledge Portal: notices, confirmations and htmx glue shared by every page. No dependency. */
(function () {
  "use strict";
  document.documentElement.classList.add("js");

  /** Show a short message in the live region (read out by screen readers), gone after a while. */
  function notify(text, kind) {
    const area = document.getElementById("notices");
    if (!area || !text) return;
    const item = document.createElement("p");
    item.className = "notice notice-" + (kind || "info");
    item.textContent = text;
    area.appendChild(item);
    setTimeout(() => item.remove(), 6000);
  }
  window.portalNotify = notify;

  // Server-rendered messages fade away too, so they do not pile up above the page.
  document.querySelectorAll("#notices .notice").forEach((item) => setTimeout(() => item.remove(), 8000));

  // Plain forms that need a confirmation (htmx forms use hx-confirm).
  document.addEventListener("submit", (event) => {
    const form = event.target;
    if (form instanceof HTMLFormElement && form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
      event.preventDefault();
    }
  });

  document.body.addEventListener("portal:notice", (event) => notify(event.detail && event.detail.value));
  document.body.addEventListener("htmx:responseError", () => notify(document.body.dataset.textRequestFailed, "error"));
  document.body.addEventListener("htmx:sendError", () => notify(document.body.dataset.textOffline, "error"));
})();
